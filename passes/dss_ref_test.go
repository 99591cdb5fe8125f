package passes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
)

// The reference LPM plan costing: the computation dss used before it
// costed plans arithmetically (lpmview.go). It expands every plan's
// shorter prefixes into a set of /P block keys and looks every traffic key
// up in it. Tests run it side by side with the pass's costing and require
// the same plans, costs and code (refChoose stands in for chooseLPMPlan).

// lpmResult is the node the kernel's trie returns for key, or nil: the
// longest node no longer than the key's prefix length whose bits agree,
// and nothing at all for a prefix length above the trie's maximum
// (trie_lookup_elem checks that first). nodes are longest first.
func lpmResult(nodes []lpmNode, key []byte, maxPlen uint32) *lpmNode {
	kplen := binary.LittleEndian.Uint32(key)
	if kplen > maxPlen {
		return nil
	}
	for i := range nodes {
		if nodes[i].plen <= kplen && nodes[i].covers(key) {
			return &nodes[i]
		}
	}
	return nil
}

// covers reports whether the node's prefix matches key's data bits. The
// key's own prefix length is the caller's business.
func (n *lpmNode) covers(key []byte) bool {
	mask := lpmMask(len(key), n.plen)
	for j := 4; j < len(key); j++ {
		if key[j]&mask[j] != n.key[j] {
			return false
		}
	}
	return true
}

// maskKey masks an LPM key's data in place to plen bits and returns it.
func maskKey(k []byte, plen uint32) []byte {
	mask := lpmMask(len(k), plen)
	for j := 4; j < len(k); j++ {
		k[j] &= mask[j]
	}
	return k
}

// refTraffic is the reference lpmTraffic: trie answers by linear search.
func refTraffic(c *Context, s lookupSite, ms *ebpf.MapSpec, nodes []lpmNode, maxPlen uint32) (keys []trafficKey, measured bool) {
	if c.Heat != nil {
		for _, h := range c.Heat.Maps[s.mapName] {
			if uint32(len(h.Key)) != ms.KeySize || !s.keyCompatible(h.Key) || h.Count == 0 {
				continue
			}
			keys = append(keys, trafficKey{key: h.Key, result: lpmResult(nodes, h.Key, maxPlen), weight: float64(h.Count), idx: len(keys)})
		}
	}
	if len(keys) > 0 {
		return keys, true
	}
	plen, ok := s.lpmPrefixLen()
	if !ok {
		plen = maxPlen
	}
	for i := range nodes {
		k := slices.Clone(nodes[i].key)
		binary.LittleEndian.PutUint32(k, plen)
		mask := lpmMask(len(k), nodes[i].plen)
		for j := 4; j < len(k); j++ {
			k[j] |= 0xa5 &^ mask[j]
		}
		keys = append(keys, trafficKey{key: k, result: lpmResult(nodes, k, maxPlen), weight: 1, idx: len(keys)})
	}
	return keys, false
}

// refPlans is the reference lpmPlans: each variant's /P blocks are
// enumerated into a set, and each plan looks every traffic key's block up
// in the set as it is at the plan's expansion depth.
func refPlans(c *Context, s lookupSite, nodes []lpmNode, p uint32, plenConst bool, traffic []trafficKey, trieCost float64) []*lpmPlan {
	keySize := len(nodes[0].key)
	dataBytes := keySize - 4
	keyBytes := int(p+7) / 8
	var longer, same, shorter []lpmNode
	for _, n := range nodes {
		switch {
		case n.plen > p:
			longer = append(longer, n)
		case n.plen == p:
			same = append(same, n)
		default:
			shorter = append(shorter, n)
		}
	}
	copies := copyChunks(int(*s.keyOff)+4, 0, keyBytes, dataBytes, 8*((keyBytes+7)/8))
	hashPath := costGuard + hashCost(keyBytes) + costInsn*float64(4+2*len(copies))
	if !plenConst {
		hashPath += 3 * costInsn
	}
	block := func(key []byte) string {
		k := slices.Clone(key)
		binary.LittleEndian.PutUint32(k, p)
		return string(maskKey(k, p))
	}
	stage := func(pl *lpmPlan, t trafficKey, inHash map[string]bool) int {
		r := t.result
		switch {
		case r != nil && r.plen > pl.plen && pl.chainLonger:
			return stageChain
		case binary.LittleEndian.Uint32(t.key) >= pl.plen && r != nil && inHash[block(t.key)]:
			return stageHash
		}
		return stageRest
	}
	var out []*lpmPlan
	plan := func(chainLonger, complete bool, hashed []lpmNode, inHash map[string]bool, lo uint32, expanded, excluded int) *lpmPlan {
		pl := &lpmPlan{plen: p, keyBytes: keyBytes, chainLonger: chainLonger, complete: complete, base: hashPath,
			hashed: slices.Clip(hashed), nHashed: len(hashed), lo: lo, expanded: expanded, excluded: excluded,
			expandedBlocks: len(hashed) - (len(same) - excluded)}
		if chainLonger {
			pl.longer = longer
			pl.base += chainCost(longer, keySize, plenConst)
		}
		if complete {
			for _, n := range shorter {
				if !plenConst || n.plen < lo {
					pl.shorter = append(pl.shorter, n)
				}
			}
			pl.rest = chainCost(pl.shorter, keySize, plenConst)
		} else {
			pl.rest = 3*costInsn + trieCost
		}
		if complete && len(pl.shorter) == 0 {
			pl.rest = 0
		} else {
			pl.base += costInsn
		}
		var total, rest float64
		for _, t := range traffic {
			total += t.weight
			if stage(pl, t, inHash) == stageRest {
				rest += t.weight
			}
		}
		if total > 0 {
			pl.restShare = rest / total
		}
		// The plan's own set, for chooseHot: built on first use.
		var own map[string]bool
		pl.holds = func(t *trafficKey) bool {
			if own == nil {
				own = make(map[string]bool, len(pl.hashed))
				for _, n := range pl.hashed {
					own[string(n.key)] = true
				}
			}
			return own[block(t.key)]
		}
		return pl
	}
	variant := func(chainLonger bool, completes ...bool) {
		completes = slices.DeleteFunc(completes, func(complete bool) bool {
			return complete && len(longer) > c.Opts.MaxInline
		})
		if len(completes) == 0 {
			return
		}
		blocked := map[string]bool{}
		if !chainLonger {
			for _, n := range longer {
				blocked[block(n.key)] = true
			}
		}
		var hashed []lpmNode
		inHash := map[string]bool{}
		excluded := 0
		for _, n := range same {
			if blocked[string(n.key)] {
				excluded++
				continue
			}
			hashed = append(hashed, n)
			inHash[string(n.key)] = true
		}
		chained := func(lo uint32) int {
			n := 0
			for _, sh := range shorter {
				if !plenConst || sh.plen < lo {
					n++
				}
			}
			return n
		}
		bufs := make([][]*lpmPlan, len(completes))
		planEach := func(lo uint32, expanded, shorterChained int) {
			for i, complete := range completes {
				if !complete || len(longer)+shorterChained <= c.Opts.MaxInline {
					bufs[i] = append(bufs[i], plan(chainLonger, complete, hashed, inHash, lo, expanded, excluded))
				}
			}
		}
		defer func() {
			for _, b := range bufs {
				out = append(out, b...)
			}
		}()
		planEach(p, 0, chained(p))
		expanded := 0
		for i := 0; i < len(shorter); {
			l := shorter[i].plen
			limit := min(maxLPMHashEntries, maxLPMExpansion*len(nodes))
			if l == 0 || p-l > 16 || len(hashed)+(1<<(p-l)) > limit {
				break
			}
			j := i
			over := false
			for ; j < len(shorter) && shorter[j].plen == l; j++ {
				n := shorter[j]
				for v := range uint64(1) << (p - l) {
					k := slices.Clone(n.key)
					binary.LittleEndian.PutUint32(k, p)
					setBits(k[4:], l, p-l, v)
					if blocked[string(k)] || inHash[string(k)] {
						continue
					}
					hashed = append(hashed, lpmNode{plen: p, key: k, value: n.value})
					inHash[string(k)] = true
				}
				expanded++
				if len(hashed) > limit {
					over = true
					break
				}
			}
			if over {
				break
			}
			i = j
			planEach(l, expanded, chained(l))
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

// refChoose is the reference chooseLPMPlan.
func refChoose(c *Context, s lookupSite, ms *ebpf.MapSpec, nodes []lpmNode, lengths map[uint32]int, keyPlen uint32, plenConst bool, oldCost float64) (*lpmPlan, []trafficKey) {
	maxPlen := uint32(8 * (ms.KeySize - 4))
	traffic, measured := refTraffic(c, s, ms, nodes, maxPlen)
	var best *lpmPlan
	for p := range lengths {
		if p == 0 || (plenConst && p > keyPlen) {
			continue
		}
		for _, pl := range refPlans(c, s, nodes, p, plenConst, traffic, oldCost) {
			if planFilter != nil && !planFilter(pl) {
				continue
			}
			if best == nil || pl.cost() < best.cost() || (pl.cost() == best.cost() && pl.plen > best.plen) {
				best = pl
			}
		}
	}
	if measured && best != nil {
		best.chooseHot(traffic, min(c.Opts.TopK, maxSearchKeys), int(ms.KeySize), maxPlen)
	}
	return best, traffic
}

// refNodes is the reference lpmNodes: a map from masked key to position,
// then a stable sort.
func refNodes(entries []mapstate.Entry, maxPlen uint32) ([]lpmNode, string) {
	at := map[string]int{}
	var out []lpmNode
	for i, e := range entries {
		plen := binary.LittleEndian.Uint32(e.Key)
		if plen > maxPlen {
			return nil, fmt.Sprintf("snapshot entry %d has prefix length /%d, beyond the trie's /%d", i, plen, maxPlen)
		}
		mask := lpmMask(len(e.Key), plen)
		k := slices.Clone(e.Key)
		for j := 4; j < len(k); j++ {
			k[j] &= mask[j]
		}
		if i, ok := at[string(k)]; ok {
			out[i].value = e.Value
			continue
		}
		at[string(k)] = len(out)
		out = append(out, lpmNode{plen: plen, key: k, value: e.Value})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].plen != out[j].plen {
			return out[i].plen > out[j].plen
		}
		return bytes.Compare(out[i].key, out[j].key) < 0
	})
	return out, ""
}

// refDirSize is the reference dirSize (maps of blocks and values): it computes the tables' sizes for nodes before building them: the
// entry width, the number of level-2 and level-3 blocks and of distinct
// values, and the bytes of all tables with valueSize-byte values.
func refDirSize(nodes []lpmNode, valueSize int) (width, b2, b3, leaves int, total uint64) {
	need2, need3, vals := map[uint32]bool{}, map[uint32]bool{}, map[string]bool{}
	for _, n := range nodes {
		a := binary.BigEndian.Uint32(n.key[4:8])
		if n.plen > 16 {
			need2[a>>16] = true
		}
		if n.plen > 24 {
			need3[a>>8] = true
		}
		vals[string(n.value)] = true
	}
	b2, b3, leaves = len(need2), len(need3), len(vals)
	width = 2
	if leaves+max(b2, b3) > math.MaxUint16 {
		width = 4
	}
	total = uint64(width)*uint64(65536+256*(b2+b3)) + uint64(leaves+1)*uint64(valueSize)
	return width, b2, b3, leaves, total
}

// refBuildDIR is the reference buildDIR (maps of blocks and leaves, a
// stable sort by length): it builds the tables for IPv4 trie nodes (8-byte keys, data
// masked to their length, any order). It is deterministic: blocks are
// numbered in address order, leaves in value byte order.
func refBuildDIR(nodes []lpmNode) *dirTable {
	vs := 0
	if len(nodes) > 0 {
		vs = len(nodes[0].value)
	}
	width, _, _, _, _ := refDirSize(nodes, vs)
	t := &dirTable{width: width, l1: make([]uint32, 65536)}
	leafID := map[string]uint32{}
	for _, n := range nodes {
		if _, ok := leafID[string(n.value)]; !ok {
			leafID[string(n.value)] = 0
			t.leaves = append(t.leaves, n.value)
		}
	}
	slices.SortFunc(t.leaves, func(a, b []byte) int { return slices.Compare(a, b) })
	for i, v := range t.leaves {
		leafID[string(v)] = uint32(i + 1)
	}
	L := t.nLeaf()
	// Blocks, in address order: a /16 with a longer prefix inside gets a
	// level-2 block, a /24 with a longer prefix inside a level-3 block.
	var s2, s3 []uint32
	for _, n := range nodes {
		a := binary.BigEndian.Uint32(n.key[4:8])
		if n.plen > 16 {
			s2 = append(s2, a>>16)
		}
		if n.plen > 24 {
			s3 = append(s3, a>>8)
		}
	}
	slices.Sort(s2)
	slices.Sort(s3)
	s2, s3 = slices.Compact(s2), slices.Compact(s3)
	idx2, idx3 := map[uint32]uint32{}, map[uint32]uint32{}
	t.l2 = make([]uint32, 256*len(s2))
	t.l3 = make([]uint32, 256*len(s3))
	for b, x := range s2 {
		idx2[x] = uint32(b)
		t.l1[x] = L + 1 + uint32(b)
	}
	for b, x := range s3 {
		idx3[x] = uint32(b)
		t.l2[256*idx2[x>>8]+x&0xff] = L + 1 + uint32(b)
	}
	// Paint the nodes shortest first: a longer node covering an entry
	// overwrites a shorter one's leaf, as longest-prefix match requires.
	// Painting over a block reference paints the whole block instead.
	setL2 := func(i uint32, leaf uint32) {
		if e := t.l2[i]; e > L {
			b := e - L - 1
			for k := range uint32(256) {
				t.l3[256*b+k] = leaf
			}
			return
		}
		t.l2[i] = leaf
	}
	setL1 := func(i uint32, leaf uint32) {
		if e := t.l1[i]; e > L {
			b := e - L - 1
			for k := range uint32(256) {
				setL2(256*b+k, leaf)
			}
			return
		}
		t.l1[i] = leaf
	}
	order := slices.Clone(nodes)
	slices.SortStableFunc(order, func(a, b lpmNode) int { return int(a.plen) - int(b.plen) })
	for _, n := range order {
		a := binary.BigEndian.Uint32(n.key[4:8])
		leaf := leafID[string(n.value)]
		switch {
		case n.plen <= 16:
			for i := range uint32(1) << (16 - n.plen) {
				setL1(a>>16+i, leaf)
			}
		case n.plen <= 24:
			base := 256*idx2[a>>16] + (a>>8)&0xff
			for j := range uint32(1) << (24 - n.plen) {
				setL2(base+j, leaf)
			}
		default:
			base := 256*idx3[a>>8] + a&0xff
			for k := range uint32(1) << (32 - n.plen) {
				t.l3[base+k] = leaf
			}
		}
	}
	return t
}
