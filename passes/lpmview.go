package passes

import (
	"cmp"
	"encoding/binary"
	"slices"
	"sort"
)

// Plan costing for dss's LPM plans by counting instead of building.
//
// A plan's cost needs two numbers per expansion depth: how many /P blocks
// its hash holds and which traffic keys the hash answers. Both follow
// from the prefix tree alone. The nodes are nested or disjoint, so in
// address order (shorter first among equal addresses, a preorder of the
// tree) a node's descendants follow it, and a stack walk finds each
// node's children. Expanding a node n of length l < P adds its 2^(P-l)
// blocks less those already held, and the blocks under n already held
// (or, when longer nodes are left to the trie, kept out for them) are
// exactly the union of its descendants cut to P bits: the sum of its
// children's blocks (under). A traffic key's block enters the hash with
// the expansion of the longest node of at most P bits covering it, unless
// a longer node lies in the block and is left to the trie (crowded). Only
// the plan that is made builds its blocks (expand), in the order the
// expansion produced them.

// lpmView is a site's trie nodes in address order.
type lpmView struct {
	// nodes are as lpmNodes returns them: longest first, ties by key.
	nodes []lpmNode
	// bits is the trie's maximum prefix length.
	bits uint32
	// w is the number of 64-bit words of an address; node i's data bits
	// are addr[i*w:(i+1)*w], most significant first.
	w    int
	addr []uint64
	// ord lists the node indices by address, shorter first among equal
	// addresses; pos is its inverse.
	ord, pos []int32
}

func newLPMView(nodes []lpmNode) *lpmView {
	dataBytes := len(nodes[0].key) - 4
	w := (dataBytes + 7) / 8
	v := &lpmView{nodes: nodes, bits: uint32(8 * dataBytes), w: w, addr: make([]uint64, len(nodes)*w),
		ord: make([]int32, len(nodes)), pos: make([]int32, len(nodes))}
	for i := range nodes {
		loadAddr(v.at(int32(i)), nodes[i].key[4:])
		v.ord[i] = int32(i)
	}
	slices.SortFunc(v.ord, func(a, b int32) int {
		if c := cmpAddr(v.at(a), v.at(b)); c != 0 {
			return c
		}
		return cmp.Compare(nodes[a].plen, nodes[b].plen)
	})
	for k, i := range v.ord {
		v.pos[i] = int32(k)
	}
	return v
}

// at is node i's address.
func (v *lpmView) at(i int32) []uint64 { return v.addr[int(i)*v.w : int(i+1)*v.w] }

// loadAddr packs LPM key data into big-endian words (dst's length).
func loadAddr(dst []uint64, data []byte) {
	clear(dst)
	for j, b := range data {
		dst[j/8] |= uint64(b) << (56 - 8*(j%8))
	}
}

// setAddrBits sets the n bits of a after its first from to x's low n bits,
// as setBits does on bytes.
func setAddrBits(a []uint64, from, n uint32, x uint64) {
	for i := range n {
		bit := from + i
		m := uint64(1) << (63 - bit%64)
		if x>>(n-1-i)&1 != 0 {
			a[bit/64] |= m
		} else {
			a[bit/64] &^= m
		}
	}
}

func cmpAddr(a, b []uint64) int {
	for k := range a {
		if a[k] != b[k] {
			return cmp.Compare(a[k], b[k])
		}
	}
	return 0
}

// prefixWord is word k's part of the mask of the first plen bits.
func prefixWord(k int, plen uint32) uint64 {
	lo := uint32(64 * k)
	switch {
	case plen >= lo+64:
		return ^uint64(0)
	case plen <= lo:
		return 0
	}
	return ^uint64(0) << (64 - (plen - lo))
}

// cmpPrefix compares the first plen bits of a and b.
func cmpPrefix(a, b []uint64, plen uint32) int {
	for k := range a {
		m := prefixWord(k, plen)
		if m == 0 {
			return 0
		}
		if x, y := a[k]&m, b[k]&m; x != y {
			return cmp.Compare(x, y)
		}
	}
	return 0
}

// samePrefix reports whether a and b agree in their first plen bits.
func samePrefix(a, b []uint64, plen uint32) bool {
	for k := range a {
		m := prefixWord(k, plen)
		if m == 0 {
			return true
		}
		if (a[k]^b[k])&m != 0 {
			return false
		}
	}
	return true
}

// lpmKeys is a site's traffic with the trie's answers.
type lpmKeys struct {
	keys []trafficKey
	// cover lists, per key, the nodes covering its address, shortest
	// first; addr and order are the keys' addresses (as lpmView's) and
	// their indices in address order.
	cover [][]int32
	addr  []uint64
	order []int32
}

func (t *lpmKeys) at(i int32, w int) []uint64 { return t.addr[int(i)*w : int(i+1)*w] }

// answer sets each key's result, the node the kernel's trie returns for
// it: the longest node no longer than the key's prefix length covering
// its address, and nothing at all for a prefix length above the trie's
// maximum (trie_lookup_elem checks that first). The covering nodes come
// from one walk over nodes and keys in address order: a key's are the
// nodes open on the stack when it is reached.
func (v *lpmView) answer(keys []trafficKey) *lpmKeys {
	w := v.w
	t := &lpmKeys{keys: keys, addr: make([]uint64, len(keys)*w), order: make([]int32, len(keys)), cover: make([][]int32, len(keys))}
	for i := range keys {
		loadAddr(t.at(int32(i), w), keys[i].key[4:])
		t.order[i] = int32(i)
	}
	slices.SortFunc(t.order, func(a, b int32) int {
		if c := cmpAddr(t.at(a, w), t.at(b, w)); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	var stack, flat []int32
	span := make([][2]int, len(keys))
	popTo := func(a []uint64) {
		for len(stack) > 0 {
			top := stack[len(stack)-1]
			if samePrefix(v.at(top), a, v.nodes[top].plen) {
				return
			}
			stack = stack[:len(stack)-1]
		}
	}
	j := 0
	for _, k := range t.order {
		ka := t.at(k, w)
		for ; j < len(v.ord) && cmpAddr(v.at(v.ord[j]), ka) <= 0; j++ {
			popTo(v.at(v.ord[j]))
			stack = append(stack, v.ord[j])
		}
		popTo(ka)
		span[k] = [2]int{len(flat), len(flat) + len(stack)}
		flat = append(flat, stack...)
	}
	for i, sp := range span {
		t.cover[i] = flat[sp[0]:sp[1]:sp[1]]
		kplen := binary.LittleEndian.Uint32(keys[i].key)
		if kplen > v.bits {
			continue
		}
		c := t.cover[i]
		for k := len(c) - 1; k >= 0; k-- {
			if v.nodes[c[k]].plen <= kplen {
				keys[i].result = &v.nodes[c[k]]
				break
			}
		}
	}
	return t
}

// under counts, for every node shorter than p by at most 16 bits, the /p
// blocks under it that its descendants hold: those of at most p bits, and
// with withLonger also the longer ones cut to p bits. A node's
// descendants are the union of its children, which are disjoint.
func (v *lpmView) under(p uint32, withLonger bool) []int32 {
	u := make([]int32, len(v.nodes))
	type open struct {
		n int32
		l uint32 // its length, cut to p
	}
	var stack []open
	for _, n := range v.ord {
		l := v.nodes[n].plen
		if l > p {
			if !withLonger {
				continue
			}
			l = p
		}
		a := v.at(n)
		for len(stack) > 0 && !samePrefix(v.at(stack[len(stack)-1].n), a, stack[len(stack)-1].l) {
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 {
			top := stack[len(stack)-1]
			if top.l == l {
				continue // the same /p block
			}
			if p-top.l <= 16 {
				u[top.n] += 1 << (p - l)
			}
		}
		stack = append(stack, open{n, l})
	}
	return u
}

// crowded sets out[q] for the addresses of order (ascending, addr gives
// them): whether a node longer than p lies in q's /p block. One merge of
// both in address order.
func (v *lpmView) crowded(p uint32, order []int32, addr func(int32) []uint64, out []bool) {
	j := 0
	for _, q := range order {
		qa := addr(q)
		for ; j < len(v.ord); j++ {
			n := v.ord[j]
			if v.nodes[n].plen > p && cmpPrefix(v.at(n), qa, p) >= 0 {
				break
			}
		}
		out[q] = j < len(v.ord) && cmpPrefix(v.at(v.ord[j]), qa, p) == 0
	}
}

// plans lists the plans for hash length p over the view's nodes:
// complete (both other-length groups chained, at most MaxInline nodes
// together), longer nodes chained with the trie behind the hash, and no
// chain at all with the trie behind the hash; each of them also with the
// shorter nodes down to each shorter length expanded into the hash, while
// it stays within maxLPMHashEntries blocks. Each is costed with the
// traffic tr; trieCost is the original lookup's estimate.
//
// Shares of the traffic are sums of its weights, heatmap counts or 1: as
// long as they stay below 2^53 the sums are exact, whatever their order.
func (v *lpmView) plans(c *Context, s lookupSite, tr *lpmKeys, p uint32, plenConst bool, trieCost float64) []*lpmPlan {
	nodes := v.nodes
	keySize := len(nodes[0].key)
	dataBytes := keySize - 4
	keyBytes := int(p+7) / 8
	// Nodes are longest first: the groups are runs.
	a := sort.Search(len(nodes), func(i int) bool { return nodes[i].plen <= p })
	b := sort.Search(len(nodes), func(i int) bool { return nodes[i].plen < p })
	longer, same, shorter := nodes[:a:a], nodes[a:b:b], nodes[b:]
	if a == 0 {
		longer = nil
	}
	// The hash path as the single-length specialization costs it: guard,
	// copy and mask of the key, the hash lookup, prefix length checks.
	copies := copyChunks(int(*s.keyOff)+4, 0, keyBytes, dataBytes, 8*((keyBytes+7)/8))
	hashPath := costGuard + hashCost(keyBytes) + costInsn*float64(4+2*len(copies))
	if !plenConst {
		hashPath += 3 * costInsn
	}
	longerCost := chainCost(longer, keySize, plenConst)
	keys := tr.keys
	var total float64
	for _, t := range keys {
		total += t.weight
	}
	// enter is, per key, the length of the longest node of at most p
	// bits covering it (-1: none): its block is hashed from that node's
	// group on.
	enter := make([]int32, len(keys))
	for i := range keys {
		enter[i] = -1
		cv := tr.cover[i]
		for k := len(cv) - 1; k >= 0; k-- {
			if l := nodes[cv[k]].plen; l <= p {
				enter[i] = int32(l)
				break
			}
		}
	}
	var out []*lpmPlan
	// variant costs the plans of every shape in completes: the blocks
	// hashed depend only on chainLonger.
	variant := func(chainLonger bool, completes ...bool) {
		completes = slices.DeleteFunc(completes, func(complete bool) bool {
			return complete && len(longer) > c.Opts.MaxInline
		})
		if len(completes) == 0 {
			return
		}
		// With the longer nodes left to the trie, a /p block holding one
		// stays out of the hash: the /p node's own and the traffic's.
		var sameOut, keyOut []bool
		excluded := 0
		if !chainLonger {
			sameOut = make([]bool, len(same))
			seq := make([]int32, len(same))
			for k := range seq {
				seq[k] = int32(k)
			}
			v.crowded(p, seq, func(k int32) []uint64 { return v.at(int32(a) + k) }, sameOut)
			for _, x := range sameOut {
				if x {
					excluded++
				}
			}
			keyOut = make([]bool, len(keys))
			v.crowded(p, tr.order, func(k int32) []uint64 { return tr.at(k, v.w) }, keyOut)
		}
		hashedKey := func(i int) bool {
			return binary.LittleEndian.Uint32(keys[i].key) >= p && keys[i].result != nil && enter[i] >= 0 && (chainLonger || !keyOut[i])
		}
		// Traffic weights the hash answers from each expansion depth on
		// (by enter), and those it never answers.
		hist := make([]float64, p+1)
		var never float64
		for i, t := range keys {
			if r := t.result; chainLonger && r != nil && r.plen > p {
				continue // the longer chain answers it
			}
			if hashedKey(i) {
				hist[enter[i]] += t.weight
			} else {
				never += t.weight
			}
		}
		count := len(same) - excluded
		plan := func(complete bool, lo uint32, expanded, chainFrom int) *lpmPlan {
			pl := &lpmPlan{plen: p, keyBytes: keyBytes, chainLonger: chainLonger, complete: complete, base: hashPath,
				nHashed: count, lo: lo, expanded: expanded, excluded: excluded,
				expandedBlocks: count - (len(same) - excluded)}
			if chainLonger {
				pl.longer = longer
				pl.base += longerCost
			}
			if complete {
				// An expanded node answers every key of at least p bits
				// under it from the hash; shorter keys need the chain,
				// unless the prefix length is a constant (>= p).
				pl.shorter = append(pl.shorter, shorter[chainFrom:]...)
				pl.rest = chainCost(pl.shorter, keySize, plenConst)
			} else {
				pl.rest = 3*costInsn + trieCost // restore the arguments, call
			}
			if complete && len(pl.shorter) == 0 {
				pl.rest = 0 // a hash miss is the answer: no test after it
			} else {
				pl.base += costInsn // the hit test after the hash lookup
			}
			if total > 0 {
				rest := never
				for e := range lo {
					rest += hist[e]
				}
				pl.restShare = rest / total
			}
			pl.holds = func(t *trafficKey) bool { return enter[t.idx] >= int32(lo) && hashedKey(t.idx) }
			pl.build = func() []lpmNode { return v.expand(p, chainLonger, lo, a, b, sameOut) }
			return pl
		}
		// Plans are kept per shape, in the order of completes, so that
		// ties resolve as if each shape had been expanded on its own.
		bufs := make([][]*lpmPlan, len(completes))
		planEach := func(lo uint32, expanded, chainFrom int) {
			for i, complete := range completes {
				if !complete || len(longer)+len(shorter)-chainFrom <= c.Opts.MaxInline {
					bufs[i] = append(bufs[i], plan(complete, lo, expanded, chainFrom))
				}
			}
		}
		defer func() {
			for _, b := range bufs {
				out = append(out, b...)
			}
		}()
		planEach(p, 0, 0)
		// Expand the shorter nodes, longest first, one length at a
		// time: a block already held has a longer (or equal) answer.
		var u []int32
		expanded := 0
		limit := min(maxLPMHashEntries, maxLPMExpansion*len(nodes))
		for i := 0; i < len(shorter); {
			l := shorter[i].plen
			if l == 0 || p-l > 16 || count+(1<<(p-l)) > limit {
				break
			}
			if u == nil {
				u = v.under(p, !chainLonger)
			}
			j := i
			for ; j < len(shorter) && shorter[j].plen == l; j++ {
				count += 1<<(p-l) - int(u[b+j])
			}
			expanded += j - i
			if count > limit {
				break
			}
			i = j
			// With a constant prefix length (at least p), the expanded
			// nodes need no chain.
			chainFrom := 0
			if plenConst {
				chainFrom = j
			}
			planEach(l, expanded, chainFrom)
		}
	}
	if len(longer) <= c.Opts.MaxInline {
		variant(true, true, false)
	} else {
		variant(true, true)
	}
	if len(longer) > 0 {
		variant(false, false)
	}
	return out
}

// expand builds the blocks of a plan of plans: the /p nodes (nodes[a:b],
// less those out) and, for every shorter node down to length lo (longest
// first, ties by key), the /p blocks under it in address order that its
// descendants do not already hold or keep out, with its value. It is the
// order in which the expansion adds them.
func (v *lpmView) expand(p uint32, chainLonger bool, lo uint32, a, b int, out []bool) []lpmNode {
	nodes := v.nodes
	var hashed []lpmNode
	for k := a; k < b; k++ {
		if out == nil || !out[k-a] {
			hashed = append(hashed, nodes[k])
		}
	}
	blk := make([]uint64, v.w)
	for i := b; i < len(nodes) && nodes[i].plen >= lo; i++ {
		n := &nodes[i]
		l := n.plen
		na := v.at(int32(i))
		at := int(v.pos[i])
		end := at + 1
		for end < len(v.ord) && samePrefix(v.at(v.ord[end]), na, l) {
			end++
		}
		desc := v.ord[at+1 : end]
		d := 0
		for x := range uint64(1) << (p - l) {
			copy(blk, na)
			setAddrBits(blk, l, p-l, x)
			held := false
			for d < len(desc) {
				m := desc[d]
				ml := nodes[m].plen
				if ml > p {
					if chainLonger {
						d++ // chained, not in the hash's way
						continue
					}
					ml = p
				}
				if samePrefix(v.at(m), blk, ml) {
					held = true
					break
				}
				if cmpAddr(v.at(m), blk) > 0 {
					break // past the block
				}
				d++ // before the block, not around it
			}
			if held {
				continue
			}
			k := slices.Clone(n.key)
			binary.LittleEndian.PutUint32(k, p)
			setBits(k[4:], l, p-l, x)
			hashed = append(hashed, lpmNode{plen: p, key: k, value: n.value})
		}
	}
	return hashed
}
