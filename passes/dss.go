package passes

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"math/bits"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// dataStructSpec is the data structure specialization pass (DSS). It looks
// at the snapshot of every read-only hash and LPM map too large for
// mapinline and, where the contents allow a cheaper structure with the same
// answers, gives the lookup site a new map of that structure:
//
//   - an LPM trie becomes a hash on the first ceil(P/8) bytes of the key
//     data, masked to P bits, for one prefix length P (each length present
//     is costed, the cheapest wins; it is the dominant one in practice).
//     The program's key is copied to a free stack slot (its own key stays
//     as it was) and masked there. An entry of length L matches a search
//     key iff the key's prefixlen field is >= L and the first L bits
//     agree, and the kernel answers NULL to a prefixlen above the trie's
//     maximum: both are decided at compile time when the site passes a
//     constant prefixlen, tested at run time otherwise. Entries of other
//     lengths are answered in longest-prefix order around the hash, in one
//     of three plans (lpmView.plans, costed without building them):
//     complete: a compare chain over the longer entries (longest first,
//     one group per length behind its prefixlen test), the hash, a chain
//     over the shorter ones, then a miss; at most MaxInline chained
//     entries, and no trie call at all;
//     chained: the longer chain and the hash, then the original lookup;
//     trie: the hash without the /P entries that have a longer entry
//     inside them, then the original lookup (a hash hit is then the
//     longest match: nothing longer lies under it).
//     With a heatmap of the map, the hottest exact keys (prefixlen field
//     included) with their precomputed answers may go in front as a
//     compare chain (chooseHot). The hash holds the original value bytes,
//     and chained entries point into a frozen cache map holding them, so
//     the returned pointer reads the same data.
//   - an IPv4 trie (u32 prefix length and 4 data bytes) of at least
//     dirMinEntries entries may instead become DIR-16-8-8 tables in the
//     manner of DPDK's rte_lpm (dir.go): direct-indexed levels by the
//     top 16 bits, the third and the fourth byte, 2-4 dependent loads
//     and no helper call, for lookups with prefix length 32 (a constant
//     32, or tested at run time with the original lookup for any other).
//   - a hash with integer keys (1, 2, 4 or 8 bytes) spanning at most
//     maxArraySlots values becomes an array indexed by key - min: one
//     frozen single-element array map holding every slot, addressed through
//     a direct value pointer (no helper call at all). A slot is the value
//     bytes, a presence byte and padding to 8 bytes; a key outside the span
//     or an absent slot is a miss, as it was in the hash.
//
// Every rewrite sits behind the original map's guard: when the control
// plane changes the map it bumps the guard first and the original lookup
// runs until the optimizer has re-decided from the new snapshot. The pass
// is a pure function of the snapshot, so that re-run may specialize
// differently or not at all. Only lookups whose returned pointer is only
// read qualify (the new maps are BPF_F_RDONLY_PROG, so the verifier would
// also reject a write), and only maps the data plane never writes.
//
// Cost function. A specialization is made only if its estimated cost per
// lookup, guard included, is at most dssMargin of the original's. The
// estimates are rough nanoseconds on the reference machine class; they only
// need to rank structures:
//
//	LPM trie:  call + depth × (node load + prefix compare),
//	           depth = min(P, ceil(log2 N)) + 1 (the kernel trie is path
//	           compressed: about one node per bit of branching, never more
//	           than one per prefix bit), compare = 1 per 8 data bytes
//	hash:      call + jhash (2 + 2 per 4 key bytes) + bucket and element
//	           loads + key compare (1 per 8 bytes)
//	our array: a handful of instructions + one slot load
//
//	chain:     per entry one compare of its first data chunk (+1 load
//	           when the key does not fit R3-R5, +2 to mask a partial
//	           chunk), per length group 2 for its prefixlen test
//	hot chain: 2 per entry (4 for keys beyond three chunks)
//	DIR:       guard + 13 instructions + 1 load at level 1, +10
//	           instructions and 1 load per further level (weighted by
//	           the level each traffic key ends at), + costPerMiB per MiB
//	           of tables (at most dirMaxBytes = 4 MiB); a key with another
//	           prefix length than 32 pays the test and the trie
//
// with call = 5, a dependent load into a large table = 8 and an instruction
// = 0.5. For 2,592 /24 routes this estimates the trie at 122 ns, close to the
// ~110 ns measured over the replay floor (design.md), and the guarded hash
// path at 31 ns; the replay harness measured the router's own cost go from
// 162-177 to 72-76 ns per packet with it.
// A plan costs guard + prefixlen checks + longer chain + hash path for
// every lookup, plus, for the share of lookups the hash does not answer,
// the shorter chain (complete) or the original trie lookup. That share
// comes from the heatmap's key counts when there is one, otherwise from
// the entries, each assumed equally likely to be the answer. A hot chain
// is put in front only if the heat-weighted saving of its hits exceeds
// what every other lookup pays to run through it by hotMinGain. The DIR
// plan is weighed with the same traffic and replaces the best hash plan
// (hot chain included) only if it is estimated cheaper; for the
// benchmark's 2,592 routes it estimates 32 ns against 122 for the trie.
// An array must also not outgrow the hash it replaces: its bytes may not
// exceed the estimated footprint of the original hash (its elements, all
// max_entries of them unless BPF_F_NO_PREALLOC, and its bucket array), so
// a sparse key set stays a hash.
func dataStructSpec(c *Context) error {
	sites, err := c.lookupSites()
	if err != nil {
		return err
	}
	res, err := c.Analysis()
	if err != nil {
		return err
	}
	// Rewrite from the last site of a block to the first so that earlier
	// instruction indices stay valid.
	sort.SliceStable(sites, func(i, j int) bool { return sites[i].index > sites[j].index })
	d := &dss{c: c, res: res, taken: map[string][]int{}, made: map[string]string{}, dirs: map[string][4]string{}}
	for _, s := range sites {
		ms := c.Coll.Maps[s.mapName]
		if ms == nil || (ms.Type != ebpf.Hash && ms.Type != ebpf.LPMTrie) {
			continue // not a structure this pass converts
		}
		// Size first: the fallback lookup of a table mapinline compiled
		// is no longer rewritable, and its size says why better.
		entries := c.entries(s.mapName)
		if len(entries) == 0 || len(entries) <= c.Opts.MaxInline {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d entries: left to mapinline", len(entries))
			continue
		}
		if why := c.tableRewritable(s, ms); why != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
			continue
		}
		if bad := badEntry(entries, ms); bad != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", bad)
			continue
		}
		if ms.Type == ebpf.LPMTrie {
			err = d.lpmToHash(s, ms, entries)
		} else {
			err = d.hashToArray(s, ms, entries)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Per-lookup cost estimates in rough nanoseconds; see dataStructSpec.
const (
	costCall  = 5.0 // helper call and argument setup
	costLoad  = 8.0 // dependent load into a table larger than L1
	costInsn  = 0.5 // one straight-line instruction
	costGuard = 4 * costInsn
	// dssMargin is the largest ratio of new to old estimated cost at
	// which a specialization pays for its guard and code size.
	dssMargin = 0.75
	// maxArraySlots bounds the key span of a hash turned into an array,
	// maxArrayBytes its size.
	maxArraySlots = 4096
	maxArrayBytes = 1 << 20
)

// lpmCost estimates a trie lookup over n entries of length plen with
// dataBytes bytes of key data.
func lpmCost(n int, plen uint32, dataBytes int) float64 {
	depth := min(int(plen), bits.Len(uint(max(n-1, 0)))) + 1
	return costCall + float64(depth)*(costLoad+math.Ceil(float64(dataBytes)/8))
}

// hashCost estimates a hash lookup with a key of keyBytes bytes.
func hashCost(keyBytes int) float64 {
	return costCall + 2 + 2*math.Ceil(float64(keyBytes)/4) + 2*costLoad + math.Ceil(float64(keyBytes)/8)
}

// arrayCost is the array path: load the key, rebase, range check, scale,
// address, presence load and test, then one load of the slot.
const arrayCost = costGuard + 8*costInsn + costLoad

// hashBytes estimates the kernel memory of a hash map holding n entries:
// its elements (a 48-byte header, key and value rounded to 8), one per max
// entry unless BPF_F_NO_PREALLOC, and a bucket array of 16-byte heads
// rounded to a power of two.
func hashBytes(ms *ebpf.MapSpec, n int) uint64 {
	elem := 48 + roundUp(uint64(ms.KeySize), 8) + roundUp(uint64(ms.ValueSize), 8)
	elems := uint64(ms.MaxEntries)
	if ms.Flags&bpfFNoPrealloc != 0 {
		elems = uint64(n)
	}
	buckets := uint64(1) << bits.Len64(uint64(max(ms.MaxEntries, 1))-1)
	return elems*elem + 16*buckets
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC: hash elements are allocated on
// insertion.
const bpfFNoPrealloc = 1

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// badEntry reports snapshot entries whose sizes do not fit the map.
func badEntry(entries []mapstate.Entry, ms *ebpf.MapSpec) string {
	for i, e := range entries {
		if uint32(len(e.Key)) != ms.KeySize || uint32(len(e.Value)) != ms.ValueSize {
			return fmt.Sprintf("snapshot entry %d has a %d-byte key and %d-byte value, the map %d and %d", i, len(e.Key), len(e.Value), ms.KeySize, ms.ValueSize)
		}
	}
	return ""
}

// dss holds the state of one run of the pass.
type dss struct {
	c   *Context
	res *analysis.Result
	// taken lists the scratch stack slots handed out per function in this
	// run: the analysis is not recomputed between sites.
	taken map[string][]int
	// made maps an original map to the specialized map built for it, so
	// that several lookup sites of one table share one copy.
	made map[string]string
	// dirs maps an original map to the names of its DIR tables.
	dirs map[string][4]string
}

// lpmNode is one node of an LPM trie snapshot: its prefix length, its key
// (prefix length field included) with the data masked to that length, and
// its value.
type lpmNode struct {
	plen  uint32
	key   []byte
	value []byte
}

// lpmNodes turns snapshot entries into trie nodes, longest prefix first
// (ties by key bytes, for deterministic output). Keys equal under their
// mask are one node in the kernel (an update replaces it), so the last
// write wins. It reports an entry longer than the trie's maximum, which
// the kernel never stores.
func lpmNodes(entries []mapstate.Entry, maxPlen uint32) ([]lpmNode, string) {
	// The masked keys, one after the other in one buffer.
	size := 0
	for _, e := range entries {
		size += len(e.Key)
	}
	buf := make([]byte, 0, size)
	at := make([]int, len(entries)+1)
	same := true // every key has the first one's size
	for i, e := range entries {
		plen := binary.LittleEndian.Uint32(e.Key)
		if plen > maxPlen {
			return nil, fmt.Sprintf("snapshot entry %d has prefix length /%d, beyond the trie's /%d", i, plen, maxPlen)
		}
		buf = append(buf, e.Key...)
		at[i+1] = len(buf)
		maskData(buf[at[i]+4:], plen)
		same = same && len(e.Key) == len(entries[0].Key)
	}
	key := func(i int32) []byte { return buf[at[i]:at[i+1]:at[i+1]] }
	plen := func(i int32) uint32 { return binary.LittleEndian.Uint32(buf[at[i]:]) }
	// Sort by length (longest first), key and position, then keep one
	// node per key with the last position's value.
	type ranked struct {
		rank uint64 // length and data, when they fit
		i    int32
	}
	order := make([]ranked, len(entries))
	packed := same && len(entries) > 0 && len(entries[0].Key) <= 4+7
	for i := range order {
		order[i].i = int32(i)
		if packed {
			// 255-plen in the top byte, then the data bytes.
			k := key(int32(i))
			r := uint64(255 - plen(int32(i)))
			for _, b := range k[4:] {
				r = r<<8 | uint64(b)
			}
			order[i].rank = r << (8 * (7 - (len(k) - 4)))
		}
	}
	slices.SortFunc(order, func(a, b ranked) int {
		if a.rank != b.rank {
			return cmp.Compare(a.rank, b.rank)
		}
		if !packed {
			if x, y := plen(a.i), plen(b.i); x != y {
				return cmp.Compare(y, x)
			}
			if c := bytes.Compare(key(a.i), key(b.i)); c != 0 {
				return c
			}
		}
		return cmp.Compare(a.i, b.i)
	})
	out := make([]lpmNode, 0, len(entries))
	for k, o := range order {
		if k > 0 && (packed && o.rank == order[k-1].rank || !packed && bytes.Equal(key(o.i), key(order[k-1].i))) {
			out[len(out)-1].value = entries[o.i].Value
			continue
		}
		out = append(out, lpmNode{plen: plen(o.i), key: key(o.i), value: entries[o.i].Value})
	}
	return out, ""
}

// maskData clears the bits of LPM key data after its first plen.
func maskData(data []byte, plen uint32) {
	for j := range data {
		switch {
		case plen >= 8:
			plen -= 8
		case plen > 0:
			data[j] &= byte(0xff << (8 - plen))
			plen = 0
		default:
			data[j] = 0
		}
	}
}

// lpmPlan is one way to answer a trie lookup: a hash on the key masked to
// one prefix length P, compare chains for nodes of other lengths, and,
// unless the plan is complete, the original lookup for whatever the fast
// stages leave open.
type lpmPlan struct {
	plen     uint32
	keyBytes int
	// longer are the nodes longer than P chained in front of the hash,
	// longest first; nil when chainLonger is false.
	longer      []lpmNode
	chainLonger bool
	// shorter are the nodes shorter than P chained after the hash
	// (complete plans only).
	shorter []lpmNode
	// hashed are the /P blocks the hash holds, each with the value of
	// the longest node of at most P bits covering it: the /P nodes and,
	// expanded into their /P blocks, the shorter nodes of at least lo
	// bits (expanded counts those). With longer nodes not chained, a
	// block with a longer node inside it is left out, so that keys under
	// it reach the trie (excluded counts the /P nodes left out). Costing
	// needs only their number, nHashed: hashed is built by build for
	// the plan that is made (see blocks).
	hashed         []lpmNode
	nHashed        int
	build          func() []lpmNode
	lo             uint32
	expanded       int
	expandedBlocks int
	excluded       int
	// complete: a key no stage matches misses; otherwise the original
	// lookup answers it.
	complete bool
	// stage cost estimates: every key pays base (guard, prefix length
	// checks, longer chain, hash); rest is added for the share restShare
	// of the traffic the hash does not answer.
	base, rest, restShare float64
	// holds says whether the hash holds the /P block of a traffic key.
	holds func(*trafficKey) bool
	// hot are the hot keys compiled in front, with their results, and
	// hotGain the estimated saving per lookup they bring.
	hot     []trafficKey
	hotGain float64
}

// cost is the plan's estimated cost per lookup, with costKiBlocks for
// every 1,024 blocks in the hash.
func (pl *lpmPlan) cost() float64 {
	return pl.base + pl.restShare*pl.rest - pl.hotGain + costKiBlocks*float64(pl.nHashed)/1024
}

// blocks returns the hash's blocks, building them on first use.
func (pl *lpmPlan) blocks() []lpmNode {
	if pl.hashed == nil && pl.build != nil {
		pl.hashed, pl.build = pl.build(), nil
	}
	return pl.hashed
}

// costKiBlocks charges a hash's size: more blocks, more cache and TLB
// misses on its elements, more kernel memory and a longer load of the
// map at every swap. It is what stops prefix expansion where it only
// saves a little: expanding a prefix must save about a quarter of a
// nanosecond per lookup for every 1,024 blocks it adds.
const costKiBlocks = 0.25

// trafficKey is a key the cost model weighs plans with (see lpmTraffic),
// with the trie's answer to it and its weight; hot keys are trafficKeys
// too.
type trafficKey struct {
	key    []byte
	result *lpmNode
	weight float64
	// idx is the key's position in the site's traffic.
	idx int
}

// lpmTraffic is the traffic the cost model weighs the plans with: the
// site's heatmap keys when there are any (their counts are the measured
// shares), else one address per node, each equally likely, on the
// assumption that every prefix is as likely to be the route of a
// destination as any other. Those addresses carry the site's constant
// prefix length, or the full length (a host) when it is not constant.
// The trie's answers come from v (the nodes in address order), which
// also records every key's covering nodes for the plan costing.
func lpmTraffic(c *Context, s lookupSite, ms *ebpf.MapSpec, v *lpmView) (tr *lpmKeys, measured bool) {
	nodes := v.nodes
	var keys []trafficKey
	if c.Heat != nil {
		for _, h := range c.Heat.Maps[s.mapName] {
			if uint32(len(h.Key)) != ms.KeySize || !s.keyCompatible(h.Key) || h.Count == 0 {
				continue
			}
			keys = append(keys, trafficKey{key: h.Key, weight: float64(h.Count), idx: len(keys)})
		}
	}
	measured = len(keys) > 0
	if !measured {
		plen, ok := s.lpmPrefixLen()
		if !ok {
			plen = v.bits
		}
		keys = make([]trafficKey, len(nodes))
		buf := make([]byte, len(nodes)*len(nodes[0].key))
		for i := range nodes {
			// An address inside the node: host bits from a fixed
			// pattern, so that it is not always the first address of
			// the prefix.
			k := buf[:len(nodes[i].key):len(nodes[i].key)]
			buf = buf[len(k):]
			copy(k, nodes[i].key)
			binary.LittleEndian.PutUint32(k, plen)
			mask := lpmMask(len(k), nodes[i].plen)
			for j := 4; j < len(k); j++ {
				k[j] |= 0xa5 &^ mask[j]
			}
			keys[i] = trafficKey{key: k, weight: 1, idx: i}
		}
	}
	return v.answer(keys), measured
}

// chainCost estimates a key running through a compare chain over nodes
// (longest first) without a match: per node one compare of its first data
// chunk (plus the load when the key does not stay in registers, plus the
// mask of a partial chunk), per length group a prefix length test when the
// key's prefix length is not constant, and the key's load into registers.
func chainCost(nodes []lpmNode, keySize int, plenConst bool) float64 {
	if len(nodes) == 0 {
		return 0
	}
	nch := len(chunks(0, keySize))
	resident := nch <= 3
	insns := 0
	if resident {
		insns += nch
	}
	for i, n := range nodes {
		if !plenConst && n.plen > 0 && (i == 0 || nodes[i-1].plen != n.plen) {
			insns += 2
		}
		switch {
		case n.plen == 0:
			continue // matches without a compare
		case !resident:
			insns++
		}
		insns++
		if n.plen < 32 {
			insns += 2
		}
	}
	return costInsn * float64(insns)
}

// hotEntryCost estimates one exact-key entry of the hot chain that does
// not match: hot keys usually share their prefix length word, so the
// mismatch shows in the second chunk.
func hotEntryCost(keySize int) float64 {
	if len(chunks(0, keySize)) <= 3 {
		return 2 * costInsn
	}
	return 4 * costInsn
}

// hotMinGain is the smallest estimated saving per lookup, in ns, for
// which a hot chain goes in front of a specialized trie: below it the
// chain only adds code.
const hotMinGain = 1.0

// maxLPMHashEntries bounds the /P blocks of one specialized hash, and so
// the expansion of shorter prefixes into it: 64 Ki elements of a few
// dozen bytes each, a few MiB of kernel memory at most. maxLPMExpansion
// bounds them relative to the trie's entries, so that a small table does
// not become a large hash for a saving within the estimates' noise.
const (
	maxLPMHashEntries = 1 << 16
	maxLPMExpansion   = 32
)

// setBits sets the n bits of data after its first from bits (most
// significant first, as prefixes count them) to v's low n bits.
func setBits(data []byte, from, n uint32, v uint64) {
	for i := range n {
		bit := from + i
		mask := byte(0x80 >> (bit % 8))
		if v>>(n-1-i)&1 != 0 {
			data[bit/8] |= mask
		} else {
			data[bit/8] &^= mask
		}
	}
}

// Stages of a plan that answer a key.
const (
	stageChain = iota // the longer chain
	stageHash         // the hash
	stageRest         // the shorter chain, a miss or the trie
)

// stage says which stage of pl answers the traffic key t.
func (pl *lpmPlan) stage(t trafficKey) int {
	r := t.result
	switch {
	case r != nil && r.plen > pl.plen && pl.chainLonger:
		return stageChain
	case binary.LittleEndian.Uint32(t.key) >= pl.plen && r != nil && pl.holds(&t):
		return stageHash
	}
	return stageRest
}

// pathCost estimates the lookup of a key under pl without a hot chain.
func (pl *lpmPlan) pathCost(t trafficKey, maxPlen uint32) float64 {
	if binary.LittleEndian.Uint32(t.key) > maxPlen {
		return costGuard + 2*costInsn // the range check misses it
	}
	if pl.stage(t) == stageRest {
		return pl.base + pl.rest
	}
	return pl.base
}

// chooseHot picks the prefix of the hottest keys (most frequent first)
// whose exact-key chain in front of pl saves the most per lookup, from
// the measured shares: a hot key hit at position i costs the guard and i+1
// entries instead of its path under pl, every other key pays the whole
// chain on top of its path. Keys past TopK are not considered.
func (pl *lpmPlan) chooseHot(traffic []trafficKey, topK, keySize int, maxPlen uint32) {
	hot := slices.Clone(traffic)
	sort.SliceStable(hot, func(i, j int) bool {
		if hot[i].weight != hot[j].weight {
			return hot[i].weight > hot[j].weight
		}
		return bytes.Compare(hot[i].key, hot[j].key) < 0
	})
	if len(hot) > topK {
		hot = hot[:topK]
	}
	var total float64
	for _, t := range traffic {
		total += t.weight
	}
	if total == 0 {
		return
	}
	entry := hotEntryCost(keySize)
	load := 0.0
	if len(chunks(0, keySize)) <= 3 {
		load = costInsn * float64(len(chunks(0, keySize)))
	}
	best, bestK := 0.0, 0
	var saved, covered float64
	for k := 1; k <= len(hot); k++ {
		t := hot[k-1]
		saved += t.weight * (pl.pathCost(t, maxPlen) - (costGuard + load + float64(k)*entry))
		covered += t.weight
		gain := (saved - (total-covered)*(load+float64(k)*entry)) / total
		if gain > best {
			best, bestK = gain, k
		}
	}
	if best < hotMinGain {
		return
	}
	pl.hot, pl.hotGain = hot[:bestK], best
}

// planFilter, when set, restricts the plans lpmToHash chooses from. Tests
// set it to run every plan shape through the kernel, whichever the cost
// model prefers for their tables.
var planFilter func(*lpmPlan) bool

// lpmChoose is the plan costing of lpmToHash, chooseLPMPlan; a variable
// so that tests can run the reference costing in its place.
var lpmChoose = chooseLPMPlan

// chooseLPMPlan costs, for every prefix length P present, the plans of
// lpmView.plans and returns the cheapest (nil if there is none), with a chain
// of hot keys in front when the heatmap has the site's traffic, and the
// traffic it weighed them with.
func chooseLPMPlan(c *Context, s lookupSite, ms *ebpf.MapSpec, nodes []lpmNode, lengths map[uint32]int, keyPlen uint32, plenConst bool, oldCost float64) (*lpmPlan, []trafficKey) {
	v := newLPMView(nodes)
	tr, measured := lpmTraffic(c, s, ms, v)
	var best *lpmPlan
	for p := range lengths {
		if p == 0 || (plenConst && p > keyPlen) {
			continue // a /0 hash would have no key bytes
		}
		for _, pl := range v.plans(c, s, tr, p, plenConst, oldCost) {
			if planFilter != nil && !planFilter(pl) {
				continue
			}
			if best == nil || pl.cost() < best.cost() || (pl.cost() == best.cost() && pl.plen > best.plen) {
				best = pl
			}
		}
	}
	// Hot keys go on top of the structure chosen without them: a chain
	// covering the measured traffic must not make a useless structure
	// look cheap (keys the heatmap missed would pay for it), and caching
	// alone is hotcache's job.
	if measured && best != nil {
		best.chooseHot(tr.keys, min(c.Opts.TopK, maxSearchKeys), int(ms.KeySize), v.bits)
	}
	return best, tr.keys
}

// lpmToHash specializes a lookup in an LPM trie. It costs, for every
// prefix length P present, the plans of lpmView.plans (hash on the P-masked
// key, compare chains for the other lengths in longest-prefix order, the
// trie behind them where they are not complete) and, with a heatmap, a
// chain of the hottest exact keys in front; the cheapest plan is made if it
// is within the margin. A trie whose entries all have one length gets the
// plain hash: both chains are empty and the plan complete.
func (d *dss) lpmToHash(s lookupSite, ms *ebpf.MapSpec, entries []mapstate.Entry) error {
	c := d.c
	dataBytes := int(ms.KeySize) - 4
	if dataBytes <= 0 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "LPM key of %d bytes has no data", ms.KeySize)
		return nil
	}
	if *s.keyOff%4 != 0 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "LPM key at fp%+d is not 4-byte aligned", *s.keyOff)
		return nil
	}
	maxPlen := uint32(dataBytes * 8)
	nodes, bad := lpmNodes(entries, maxPlen)
	if bad != "" {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", bad)
		return nil
	}
	lengths := map[uint32]int{}
	for _, n := range nodes {
		lengths[n.plen]++
	}
	oldCost := lpmCost(len(nodes), nodes[0].plen, dataBytes)
	keyPlen, plenConst := s.lpmPrefixLen()
	if plenConst {
		// A node longer than the lookup's constant prefix length never
		// matches, and above the trie's maximum nothing does.
		// Nodes are longest first: the usable ones are a suffix.
		var usable []lpmNode
		if keyPlen <= maxPlen {
			usable = nodes[sort.Search(len(nodes), func(i int) bool { return nodes[i].plen <= keyPlen }):]
		}
		if len(usable) == 0 {
			miss := c.Prog.NewBlock()
			if err := d.emit(s, []*program.Block{miss}, miss); err != nil {
				return err
			}
			c.changed(s.fn.Name, s.block.ID, s.mapName, "lookup prefix length %d never matches an entry (%s) of a %d-bit trie: constant miss behind guard", keyPlen, lengthSummary(lengths), maxPlen)
			return nil
		}
		nodes = usable
	}

	best, traffic := lpmChoose(c, s, ms, nodes, lengths, keyPlen, plenConst, oldCost)
	// An IPv4 trie may do better still as DIR tables (dir.go), unless a
	// test asked for a particular hash plan.
	if planFilter == nil {
		bestCost := math.Inf(1)
		if best != nil {
			bestCost = best.cost()
		}
		if done, err := d.tryDIR(s, ms, nodes, lengths, traffic, keyPlen, plenConst, oldCost, bestCost); err != nil || done {
			return err
		}
	}
	if best == nil {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "no plan for prefix lengths (%s)", lengthSummary(lengths))
		return nil
	}
	newCost := best.cost()
	if newCost > dssMargin*oldCost {
		if len(lengths) == 1 {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "estimated %.0f ns per lookup as a hash vs %.0f as a trie: below the margin", newCost, oldCost)
		} else {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "entries have %d prefix lengths (%s): the best plan, %s, is estimated at %.0f ns per lookup vs %.0f as a trie: below the margin",
				len(lengths), lengthSummary(lengths), best.describe(), newCost, oldCost)
		}
		return nil
	}
	slot, ok := d.scratch(s.fn.Name, best.keyBytes)
	if !ok {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "no free stack slot for the %d-byte masked key", best.keyBytes)
		return nil
	}
	hashName := d.lpmHash(s.mapName, ms, best)
	if err := d.emitLPM(s, ms, best, plenConst, hashName, slot); err != nil {
		return err
	}
	if len(best.longer)+len(best.shorter)+len(best.hot)+best.expanded == 0 && best.complete {
		c.changed(s.fn.Name, s.block.ID, s.mapName, "%d /%d prefixes as hash %s on the %d-byte masked key behind guard (est. %.0f -> %.0f ns per lookup)",
			best.nHashed, best.plen, hashName, best.keyBytes, oldCost, newCost)
		return nil
	}
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d prefix lengths (%s) as %s, hash %s, behind guard (est. %.0f -> %.0f ns per lookup)",
		len(lengths), lengthSummary(lengths), best.describe(), hashName, oldCost, newCost)
	return nil
}

// describe renders a plan for remarks.
func (pl *lpmPlan) describe() string {
	var parts []string
	if len(pl.hot) > 0 {
		parts = append(parts, fmt.Sprintf("%d hot keys", len(pl.hot)))
	}
	if len(pl.longer) > 0 {
		parts = append(parts, fmt.Sprintf("%d longer prefixes chained", len(pl.longer)))
	}
	h := fmt.Sprintf("%d /%d prefixes hashed on the %d-byte masked key", pl.nHashed, pl.plen, pl.keyBytes)
	if pl.expanded > 0 {
		h = fmt.Sprintf("%d /%d prefixes and %d of /%d../%d expanded into %d /%d blocks hashed on the %d-byte masked key",
			pl.nHashed-pl.expandedBlocks, pl.plen, pl.expanded, pl.lo, pl.plen-1, pl.expandedBlocks, pl.plen, pl.keyBytes)
	}
	if pl.excluded > 0 {
		h += fmt.Sprintf(" (%d with longer prefixes inside left to the trie)", pl.excluded)
	}
	parts = append(parts, h)
	if len(pl.shorter) > 0 {
		parts = append(parts, fmt.Sprintf("%d shorter prefixes chained", len(pl.shorter)))
	}
	if pl.complete {
		parts = append(parts, "then miss")
	} else {
		parts = append(parts, fmt.Sprintf("then the trie (est. %.0f%% of lookups)", 100*pl.restShare))
	}
	return strings.Join(parts, ", ")
}

// lpmHash adds the hash map holding a plan's /P nodes: key = the first
// keyBytes data bytes masked to P bits, value = the node's value.
func (d *dss) lpmHash(of string, ms *ebpf.MapSpec, pl *lpmPlan) string {
	// Sites of one table share the hash when their plans hash the same
	// nodes.
	hashed := pl.blocks()
	f := fnv.New64a()
	for _, n := range hashed {
		f.Write(n.key)
		f.Write(n.value)
	}
	id := fmt.Sprintf("%s/%d/%x", of, pl.plen, f.Sum64())
	if name, ok := d.made[id]; ok {
		return name
	}
	contents := make([]ebpf.MapKV, 0, len(hashed))
	for _, n := range hashed {
		contents = append(contents, ebpf.MapKV{Key: slices.Clone(n.key[4 : 4+pl.keyBytes]), Value: n.value})
	}
	name := d.mapName("dh", of)
	d.c.Coll.Maps[name] = &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.Hash,
		KeySize:    uint32(pl.keyBytes),
		ValueSize:  ms.ValueSize,
		MaxEntries: uint32(max(len(contents), 1)),
		Flags:      bpfFRdonlyProg,
		Contents:   contents,
	}
	d.made[id] = name
	return name
}

// emitLPM puts a plan in front of the lookup at s, behind the map's guard:
//
//	hot chain (exact keys) → prefix length above the maximum: miss →
//	longer chain → hash on the masked key → shorter chain → miss
//	                                      ↘ (incomplete) the original lookup
//
// Chains are grouped by length, longest first, each group behind a test
// that the key's prefix length reaches it, as the kernel requires; the
// hash only for prefix lengths of at least P. Every hit continues after
// the lookup with R0 pointing at identical value bytes: the hash's own
// copy, or a frozen cache map for chain entries.
func (d *dss) emitLPM(s lookupSite, ms *ebpf.MapSpec, pl *lpmPlan, plenConst bool, hashName string, slot int) error {
	c := d.c
	p := c.Prog
	keySize := int(ms.KeySize)
	keyOff := *s.keyOff
	maxPlen := uint32(8 * (keySize - 4))
	call, after := isolateCall(p, s.fn, s.block, s.index)
	g, err := c.guardCheck(p, s.mapName, asm.R3, call)
	if err != nil {
		return err
	}

	// Chain values, in one frozen cache map.
	var values [][]byte
	valueIndex := func(n *lpmNode) int {
		if n == nil {
			return -1
		}
		values = append(values, n.value)
		return len(values) - 1
	}
	hotM := make([]matcher, len(pl.hot))
	for i, h := range pl.hot {
		hotM[i] = matcher{key: h.key, valueIndex: valueIndex(h.result)}
	}
	index := func(nodes []lpmNode) []int {
		out := make([]int, len(nodes))
		for i := range nodes {
			out[i] = valueIndex(&nodes[i])
		}
		return out
	}
	longerIdx, shorterIdx := index(pl.longer), index(pl.shorter)
	cache := ""
	if len(values) > 0 {
		cache = c.addCacheMap(s.mapName, ms.ValueSize, values)
	}
	plenLoad := func() asm.Instruction { return asm.LoadMem(asm.R3, asm.R10, keyOff, asm.Word) }

	miss := p.NewBlock()
	miss.Insns = []asm.Instruction{asm.Mov.Imm(asm.R0, 0)}
	miss.Next = after

	var layout []*program.Block
	// What the hash leaves open.
	var rest *program.Block
	var restBlocks []*program.Block
	if pl.complete {
		rest, restBlocks = d.lengthGroups(s, keySize, pl.shorter, shorterIdx, cache, ms.ValueSize, plenConst, after, miss)
	} else {
		// R1 and R2 went to the hash lookup: set them up again.
		rest = p.NewBlock()
		rest.Insns = []asm.Instruction{
			asm.LoadMapPtr(asm.R1, 0).WithReference(s.mapName),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, int32(keyOff)),
		}
		rest.Next = call
		restBlocks = []*program.Block{rest}
	}

	// The hash on the P-masked key, for prefix lengths of at least P.
	look := p.NewBlock()
	copies := copyChunks(int(keyOff)+4, 0, pl.keyBytes, keySize-4, 8*((pl.keyBytes+7)/8))
	for _, ch := range copies {
		look.Insns = append(look.Insns,
			asm.LoadMem(asm.R3, asm.R10, int16(int(keyOff)+4+ch.off), ch.size),
			asm.StoreMem(asm.R10, int16(slot+ch.off), asm.R3, ch.size))
	}
	if pl.plen%8 != 0 {
		last := int16(slot + pl.keyBytes - 1)
		look.Insns = append(look.Insns,
			asm.LoadMem(asm.R3, asm.R10, last, asm.Byte),
			asm.And.Imm32(asm.R3, int32(byte(0xff<<(8-pl.plen%8)))),
			asm.StoreMem(asm.R10, last, asm.R3, asm.Byte))
	}
	look.Insns = append(look.Insns,
		asm.LoadMapPtr(asm.R1, 0).WithReference(hashName),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, int32(slot)),
		asm.FnMapLookupElem.Call(),
	)
	hashEntry := look
	var hashBlocks []*program.Block
	if !plenConst {
		chk := p.NewBlock()
		chk.Insns = []asm.Instruction{plenLoad(), clearRef(asm.JLT.Imm(asm.R3, int32(pl.plen), ""))}
		chk.Target, chk.Next = rest, look
		hashEntry = chk
		hashBlocks = append(hashBlocks, chk)
	}
	hashBlocks = append(hashBlocks, look)
	if rest == miss {
		look.Next = after // a miss of the hash is the answer
	} else {
		test := p.NewBlock()
		test.Insns = []asm.Instruction{clearRef(asm.JNE.Imm(asm.R0, 0, ""))}
		test.Target, test.Next = after, rest
		look.Next = test
		hashBlocks = append(hashBlocks, test)
	}

	entry, longBlocks := d.lengthGroups(s, keySize, pl.longer, longerIdx, cache, ms.ValueSize, plenConst, after, hashEntry)
	if !plenConst {
		// The kernel answers NULL to a prefix length above the trie's.
		mx := p.NewBlock()
		mx.Insns = []asm.Instruction{plenLoad(), clearRef(asm.JGT.Imm(asm.R3, int32(maxPlen), ""))}
		mx.Target, mx.Next = miss, entry
		entry = mx
		longBlocks = append([]*program.Block{mx}, longBlocks...)
	}
	var hotBlocks []*program.Block
	if len(hotM) > 0 {
		hotBlocks = compareChain(p, stackKey(keyOff), keySize, hotM, cache, ms.ValueSize, after, entry)
		entry = hotBlocks[0]
	}
	g.Next = entry

	layout = append(layout, g)
	layout = append(layout, hotBlocks...)
	layout = append(layout, longBlocks...)
	layout = append(layout, hashBlocks...)
	layout = append(layout, restBlocks...)
	layout = append(layout, miss)
	// The kernel rejects unreachable code: keep only what g reaches.
	mine := map[*program.Block]bool{}
	for _, b := range layout {
		mine[b] = true
	}
	reached := map[*program.Block]bool{}
	work := []*program.Block{g}
	for len(work) > 0 {
		b := work[len(work)-1]
		work = work[:len(work)-1]
		if b == nil || !mine[b] || reached[b] {
			continue
		}
		reached[b] = true
		work = append(work, b.Next, b.Target)
	}
	layout = slices.DeleteFunc(layout, func(b *program.Block) bool { return !reached[b] })
	s.block.Next = g
	insertAfter(s.fn, s.block, layout...)
	return nil
}

// lengthGroups emits compare chains over nodes (longest first), one per
// prefix length, each behind a test that the key's prefix length is at
// least that length unless it is constant (then nodes longer than it are
// already gone). A match continues at after, a key matching none at next.
// It returns the first block and all blocks in layout order.
func (d *dss) lengthGroups(s lookupSite, keySize int, nodes []lpmNode, idx []int, cache string, valueSize uint32, plenConst bool, after, next *program.Block) (*program.Block, []*program.Block) {
	p := d.c.Prog
	entry := next
	var out []*program.Block
	// From the shortest group up, so that each knows its successor.
	for end := len(nodes); end > 0; {
		start := end - 1
		for start > 0 && nodes[start-1].plen == nodes[end-1].plen {
			start--
		}
		plen := nodes[start].plen
		ms := make([]matcher, 0, end-start)
		for i := start; i < end; i++ {
			ms = append(ms, matcher{key: nodes[i].key, mask: lpmMask(keySize, plen), valueIndex: idx[i]})
		}
		var blocks []*program.Block
		if plen == 0 {
			// The /0 node matches every key: no key load, no compare.
			hit := p.NewBlock()
			hit.Insns = []asm.Instruction{
				asm.LoadMapValue(asm.R0, 0, uint32(idx[start])*valueSize).WithReference(cache),
				clearRef(asm.Ja.Label("")),
			}
			hit.Target = after
			blocks = []*program.Block{hit}
		} else {
			blocks = compareChain(p, stackKey(*s.keyOff), keySize, ms, cache, valueSize, after, entry)
		}
		first := blocks[0]
		if !plenConst && plen > 0 {
			chk := p.NewBlock()
			chk.Insns = []asm.Instruction{
				asm.LoadMem(asm.R3, asm.R10, *s.keyOff, asm.Word),
				clearRef(asm.JLT.Imm(asm.R3, int32(plen), "")),
			}
			chk.Target, chk.Next = entry, first
			blocks = append([]*program.Block{chk}, blocks...)
			first = chk
		}
		out = append(blocks, out...)
		entry = first
		end = start
	}
	return entry, out
}

// hashToArray specializes a lookup in a hash with small integer keys.
func (d *dss) hashToArray(s lookupSite, ms *ebpf.MapSpec, entries []mapstate.Entry) error {
	c := d.c
	var size asm.Size
	switch ms.KeySize {
	case 1:
		size = asm.Byte
	case 2:
		size = asm.Half
	case 4:
		size = asm.Word
	case 8:
		size = asm.DWord
	default:
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d-byte key is not an integer", ms.KeySize)
		return nil
	}
	if int(*s.keyOff)%int(ms.KeySize) != 0 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "key at fp%+d is not aligned for a %d-byte load", *s.keyOff, ms.KeySize)
		return nil
	}
	// Keys as the program loads them (little-endian), last write wins.
	values := map[uint64][]byte{}
	for _, e := range entries {
		k := make([]byte, 8)
		copy(k, e.Key)
		values[binary.LittleEndian.Uint64(k)] = e.Value
	}
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for k := range values {
		lo, hi = min(lo, k), max(hi, k)
	}
	if hi-lo >= maxArraySlots {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "keys span %d..%d, more than %d array slots", lo, hi, maxArraySlots)
		return nil
	}
	span := hi - lo + 1
	slotSize := roundUp(uint64(ms.ValueSize)+1, 8)
	if ms.ValueSize >= math.MaxInt16 || span*slotSize > maxArrayBytes {
		// The presence byte's offset must fit a load's 16-bit offset,
		// and one array value must stay far below kmalloc's limit.
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d slots of %d bytes are too large for one array value", span, slotSize)
		return nil
	}
	if arr, hb := span*slotSize, hashBytes(ms, len(values)); arr > hb {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d keys over a span of %d: the array (%d bytes) would outgrow the hash (~%d bytes)", len(values), span, arr, hb)
		return nil
	}
	oldCost, newCost := hashCost(int(ms.KeySize)), arrayCost
	if newCost > dssMargin*oldCost {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "estimated %.0f ns per lookup as an array vs %.0f as a hash: below the margin", newCost, oldCost)
		return nil
	}

	name, ok := d.made[s.mapName]
	if !ok {
		all := make([]byte, span*slotSize)
		for k, v := range values {
			at := (k - lo) * slotSize
			copy(all[at:], v)
			all[at+uint64(ms.ValueSize)] = 1
		}
		name = d.mapName("da", s.mapName)
		c.Coll.Maps[name] = frozenArray(name, all)
		d.made[s.mapName] = name
	}

	p := c.Prog
	miss := p.NewBlock()
	idx := p.NewBlock()
	idx.Insns = []asm.Instruction{asm.LoadMem(asm.R3, asm.R10, *s.keyOff, size)}
	switch {
	case lo == 0:
	case lo <= math.MaxInt32:
		idx.Insns = append(idx.Insns, asm.Sub.Imm(asm.R3, int32(lo)))
	default:
		idx.Insns = append(idx.Insns, asm.LoadImm(asm.R4, int64(lo), asm.DWord), asm.Sub.Reg(asm.R3, asm.R4))
	}
	// Unsigned: a key below lo wrapped around and is out of range too.
	idx.Insns = append(idx.Insns, clearRef(asm.JGE.Imm(asm.R3, int32(span), "")))
	idx.Target = miss
	slot := p.NewBlock()
	if bits.OnesCount64(slotSize) == 1 {
		slot.Insns = append(slot.Insns, asm.LSh.Imm(asm.R3, int32(bits.TrailingZeros64(slotSize))))
	} else {
		slot.Insns = append(slot.Insns, asm.Mul.Imm(asm.R3, int32(slotSize)))
	}
	slot.Insns = append(slot.Insns,
		asm.LoadMapValue(asm.R0, 0, 0).WithReference(name),
		asm.Add.Reg(asm.R0, asm.R3),
		asm.LoadMem(asm.R3, asm.R0, int16(ms.ValueSize), asm.Byte),
		clearRef(asm.JEq.Imm(asm.R3, 0, "")),
	)
	slot.Target = miss
	idx.Next = slot
	if err := d.emit(s, []*program.Block{idx, slot}, miss); err != nil {
		return err
	}
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d integer keys in %d..%d as array %s behind guard (est. %.0f -> %.0f ns per lookup)",
		len(values), lo, hi, name, oldCost, newCost)
	return nil
}

// emit isolates the lookup call and puts the map's guard and spec in front
// of it. spec's blocks run in order, each falling through to the next; the
// last one leaves the lookup's result in R0 and continues after the
// lookup. miss, if any block jumps to it, gets R0 = NULL and continues
// there too. On guard mismatch the original call runs.
func (d *dss) emit(s lookupSite, spec []*program.Block, miss *program.Block) error {
	p := d.c.Prog
	call, after := isolateCall(p, s.fn, s.block, s.index)
	g, err := d.c.guardCheck(p, s.mapName, asm.R3, call)
	if err != nil {
		return err
	}
	blocks := []*program.Block{g}
	for _, b := range spec {
		if b != miss {
			blocks = append(blocks, b)
		}
	}
	for i, b := range blocks[:len(blocks)-1] {
		b.Next = blocks[i+1]
	}
	if last := blocks[len(blocks)-1]; last == g {
		g.Next = miss
	} else {
		last.Next = after // Lower adds the jump
	}
	// The kernel rejects unreachable code: miss only goes in if used.
	if slices.ContainsFunc(blocks, func(b *program.Block) bool { return b.Target == miss || b.Next == miss }) {
		miss.Insns = append(miss.Insns, asm.Mov.Imm(asm.R0, 0))
		miss.Next = after
		blocks = append(blocks, miss)
	}
	s.block.Next = g
	insertAfter(s.fn, s.block, blocks...)
	return nil
}

// scratch hands out n bytes of stack in fn that no instruction touches,
// as the offset from R10 of their lowest byte, preferring slots closest to
// R10 (they do not deepen the frame). A slot that deepens the frame is only
// taken while the frames of all functions together, each rounded up to 32
// bytes as the verifier does, stay within the 512 bytes a call chain may
// use: no chain can then exceed it, whatever the call graph. (A too deep
// chain would only get the candidate rejected by the verifier, but with
// every other rewrite of the run.)
func (d *dss) scratch(fn string, n int) (int, bool) {
	u := d.res.Stack(fn)
	if u == nil || u.All {
		return 0, false
	}
	need := (n + 7) / 8
	free := func(off int) bool {
		return slices.Contains(u.FreeSlots, off) && !slices.Contains(d.taken[fn], off)
	}
	for _, top := range u.FreeSlots {
		ok := true
		for k := range need {
			ok = ok && free(top-8*k)
		}
		low := top - 8*(need-1)
		if grown := d.frames(fn, low); !ok || (grown > d.frames(fn, 0) && grown > analysis.StackSize) {
			continue
		}
		for k := range need {
			d.taken[fn] = append(d.taken[fn], top-8*k)
		}
		return low, true
	}
	return 0, false
}

// frames is the sum of all functions' frame sizes if fn's frame reached
// down to offset low.
func (d *dss) frames(fn string, low int) int {
	total := 0
	for _, f := range d.c.Prog.Funcs {
		depth := 0
		if u := d.res.Stack(f.Name); u != nil {
			depth = u.Depth
		}
		for _, off := range d.taken[f.Name] {
			depth = min(depth, off)
		}
		if f.Name == fn {
			depth = min(depth, low)
		}
		total += int(roundUp(uint64(-depth), 32))
	}
	return total
}

// mapName names a map DSS adds for map of, unique in the collection and
// within the kernel's 15 characters.
func (d *dss) mapName(prefix, of string) string {
	for {
		d.c.cacheSeq++
		name := fmt.Sprintf("%s%d_%s", prefix, d.c.cacheSeq, of)
		if len(name) > 15 {
			name = name[:15]
		}
		if _, dup := d.c.Coll.Maps[name]; !dup {
			return name
		}
	}
}

// copyChunks splits a copy of n bytes from stack offset src to dst into
// loads and stores the verifier accepts (aligned on both sides). A chunk
// may run past n while it stays within srcLimit bytes of the source and
// dstLimit bytes of the destination, which saves instructions.
func copyChunks(src, dst, n, srcLimit, dstLimit int) []keyChunk {
	var out []keyChunk
	for off := 0; off < n; {
		for _, sz := range []asm.Size{asm.DWord, asm.Word, asm.Half, asm.Byte} {
			w := sz.Sizeof()
			if (src+off)%w != 0 || (dst+off)%w != 0 || off+w > srcLimit || off+w > dstLimit {
				continue
			}
			out = append(out, keyChunk{off, sz})
			off += w
			break
		}
	}
	return out
}

// lengthSummary renders prefix-length counts, shortest first.
func lengthSummary(lengths map[uint32]int) string {
	ls := make([]uint32, 0, len(lengths))
	for l := range lengths {
		ls = append(ls, l)
	}
	slices.Sort(ls)
	var parts []string
	for i, l := range ls {
		if i == 6 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("/%d x%d", l, lengths[l]))
	}
	return strings.Join(parts, ", ")
}
