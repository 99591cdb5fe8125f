package passes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// mapInline is the seed's "JIT" pass. For every eligible lookup:
//   - a lookup in a single-element array with constant index 0 becomes a
//     direct pointer to the element (no guard: it is the live element),
//     and an out-of-range constant index a constant miss;
//   - a lookup in an empty read-only hash or LPM map becomes a constant
//     miss, behind the map's guard;
//   - a lookup in a read-only hash or LPM map with at most MaxInline
//     entries becomes a compare chain on the key, longest prefix first for
//     LPM, hottest first for a hash with a heatmap, whose hits point into a
//     frozen read-only copy of the values, behind the map's guard; a hash
//     becomes a hashed probe (probe.go) instead where the cost model
//     (inlineProbe) prefers it: many entries, flat traffic. On guard
//     mismatch the original lookup runs.
func mapInline(c *Context) error {
	sites, err := c.lookupSites()
	if err != nil {
		return err
	}
	// Rewrite from the last site of a block to the first so that earlier
	// instruction indices stay valid.
	sort.SliceStable(sites, func(i, j int) bool { return sites[i].index > sites[j].index })
	for _, s := range sites {
		ms := c.Coll.Maps[s.mapName]
		if s.ineligible == "" && ms.Type == ebpf.Array {
			c.inlineArray(s, ms)
			continue
		}
		if why := c.tableRewritable(s, ms); why != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
			continue
		}
		entries := c.entries(s.mapName)
		if len(entries) > c.Opts.MaxInline {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d entries, more than the inline limit %d", len(entries), c.Opts.MaxInline)
			continue
		}
		if err := c.inlineTable(s, ms, entries); err != nil {
			return err
		}
	}
	return nil
}

// tableRewritable says why a compare chain may not replace or precede the
// lookup at s, or "" if it may: only read-only hash and LPM maps whose value
// pointer is only read and whose key sits at a known stack offset.
func (c *Context) tableRewritable(s lookupSite, ms *ebpf.MapSpec) string {
	switch {
	case s.ineligible != "":
		return s.ineligible
	case ms.Type != ebpf.Hash && ms.Type != ebpf.LPMTrie:
		return fmt.Sprintf("%s maps are not rewritten", ms.Type)
	case !s.readOnlyMap:
		return "the data plane writes this map"
	case !s.valueReadOnly:
		return "the value pointer is written or escapes"
	case s.keyOff == nil:
		return "key is not at a known stack offset"
	}
	return ""
}

// inlineArray turns a constant-index array lookup into a value pointer.
func (c *Context) inlineArray(s lookupSite, ms *ebpf.MapSpec) {
	if s.constKey == nil {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "array index is not constant")
		return
	}
	idx := binary.LittleEndian.Uint32(s.constKey)
	if idx < ms.MaxEntries && ms.MaxEntries != 1 {
		// The kernel hands out direct value pointers only into
		// single-element arrays.
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "constant index %d into a %d-element array: no direct pointer", idx, ms.MaxEntries)
		return
	}
	if idx >= ms.MaxEntries {
		// Out of range: the lookup always misses.
		s.block.Insns[s.index] = asm.Mov.Imm(asm.R0, 0)
		c.changed(s.fn.Name, s.block.ID, s.mapName, "index %d out of range: constant miss", idx)
		return
	}
	s.block.Insns[s.index] = asm.LoadMapValue(asm.R0, 0, idx*ms.ValueSize).WithReference(s.mapName)
	c.changed(s.fn.Name, s.block.ID, s.mapName, "constant index %d: direct value pointer", idx)
}

// inlineTable replaces a lookup with a guarded compare chain over all
// entries of a small read-only map.
func (c *Context) inlineTable(s lookupSite, ms *ebpf.MapSpec, entries []mapstate.Entry) error {
	var matchers []matcher
	var values [][]byte
	if ms.Type == ebpf.LPMTrie {
		plen, ok := s.lpmPrefixLen()
		if !ok {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "LPM lookup prefix length is not constant")
			return nil
		}
		for _, e := range lpmOrder(entries) {
			ep := binary.LittleEndian.Uint32(e.Key)
			if ep > plen {
				continue // longer than the lookup key: can never match
			}
			matchers = append(matchers, matcher{key: e.Key, mask: lpmMask(len(e.Key), ep), valueIndex: len(values)})
			values = append(values, e.Value)
		}
	} else {
		entries = c.hashOrder(s, lastWrites(entries))
		if done, err := c.inlineProbe(s, ms, entries); done || err != nil {
			return err
		}
		for _, e := range entries {
			matchers = append(matchers, matcher{key: e.Key, valueIndex: len(values)})
			values = append(values, e.Value)
		}
	}
	if err := c.emitChain(s, ms, matchers, values, false); err != nil {
		return err
	}
	if len(entries) == 0 {
		c.changed(s.fn.Name, s.block.ID, s.mapName, "empty map: constant miss behind guard")
	} else {
		c.changed(s.fn.Name, s.block.ID, s.mapName, "%d entries inlined as a compare chain behind guard", len(matchers))
	}
	return nil
}

// lastWrites keeps one entry per key, with the value of its last write,
// at the position of its first.
func lastWrites(entries []mapstate.Entry) []mapstate.Entry {
	at := map[string]int{}
	var out []mapstate.Entry
	for _, e := range entries {
		if i, ok := at[string(e.Key)]; ok {
			out[i].Value = e.Value
			continue
		}
		at[string(e.Key)] = len(out)
		out = append(out, e)
	}
	return out
}

// hashOrder puts the entries of a hash the heatmap saw at s hottest first
// (a chain tests them in that order), the others after them in snapshot
// order.
func (c *Context) hashOrder(s lookupSite, entries []mapstate.Entry) []mapstate.Entry {
	counts := c.siteHeat(s)
	if len(counts) == 0 {
		return entries
	}
	out := slices.Clone(entries)
	sort.SliceStable(out, func(i, j int) bool { return counts[string(out[i].Key)] > counts[string(out[j].Key)] })
	return out
}

// siteHeat returns the heatmap counts of the keys s can look up.
func (c *Context) siteHeat(s lookupSite) map[string]uint64 {
	if c.Heat == nil {
		return nil
	}
	counts := map[string]uint64{}
	for _, h := range c.Heat.Top(s.mapName, math.MaxInt) {
		if s.keyCompatible(h.Key) {
			counts[string(h.Key)] += h.Count
		}
	}
	return counts
}

// inlineProbe compiles the entries of a read-only hash (one per key, in
// chain order) as a hashed probe instead of a compare chain when the cost
// model prefers it and a placement exists; it reports whether it did.
//
// Both are costed per lookup in compare-and-branch units, as in hotcache:
// the chain tests entry i after i others, each test costing one compare
// per 4-byte chunk of the key on a match, and a key the map does not hold
// runs through all of them; the probe costs probeCost whatever the
// number of keys. Both add costMispredict per expected mispredicted
// branch, counting a branch as predicted its more frequent way: test i
// of the chain, reached by a share r_i of the lookups and matching p_i,
// mispredicts min(p_i, r_i - p_i); the probe's found-or-not branch
// min(hits, misses). Which entry a lookup finds is data, not history, so
// a chain over many equally likely entries mispredicts almost every
// lookup, while one hot entry first costs nearly nothing. The traffic is the heatmap's counts of the keys the
// site can look up when it has some (misses included), otherwise every
// entry equally likely and no misses. Entries whose key contradicts the
// bytes the site passes as constants can never be found there and are
// left out of the probe; those bytes are not compared.
func (c *Context) inlineProbe(s lookupSite, ms *ebpf.MapSpec, entries []mapstate.Entry) (bool, error) {
	keySize := int(ms.KeySize)
	var keys, results [][]byte
	for _, e := range entries {
		if len(e.Key) == keySize && s.keyCompatible(e.Key) {
			keys, results = append(keys, e.Key), append(results, e.Value)
		}
	}
	constByte := func(i int) bool { return i < len(s.keyBytes) && s.keyBytes[i].Kind == "const" }
	if forceLayout != "" && forceLayout != "probe" {
		return false, nil // a test wants the chain
	}
	if len(keys) == 0 || s.constKey != nil {
		return false, nil // nothing to find, or a constant key: the chain folds
	}
	chs := probeChunks(*s.keyOff, keySize, constByte)
	chain, hits := inlineChainCost(keys, c.siteHeat(s), len(chunks(0, keySize)))
	// The probe's one data-dependent branch: found or not.
	probeMiss := costMispredict * min(hits, 1-hits)
	if probeCost(len(chs), 1, false)+probeMiss >= chain && forceLayout != "probe" {
		return false, nil
	}
	pp := planProbe(keys, results, chs, *s.keyOff, keySize, int(ms.ValueSize))
	if pp == nil {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "no hashed probe placement for %d keys within the search budget", len(keys))
		return false, nil
	}
	cost := probeCost(len(chs), pp.t.ways, false) + probeMiss
	if cost >= chain && forceLayout != "probe" {
		return false, nil
	}
	if err := c.emitProbe(s, pp, false); err != nil {
		return false, err
	}
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d entries inlined as a %s behind guard (cost %.1f vs %.1f for a compare chain)",
		len(keys), pp.t.describe(pp.l), cost, chain)
	return true, nil
}

// inlineChainCost is the expected cost of a compare chain over keys, in
// chain order, with nch chunks per key (see inlineProbe), and the share
// of lookups that find a key. counts, if any, are the heatmap's counts
// per key.
func inlineChainCost(keys [][]byte, counts map[string]uint64, nch int) (cost, hits float64) {
	n := float64(len(keys))
	var total float64
	for _, cnt := range counts {
		total += float64(cnt)
	}
	p := func(k []byte) float64 { return 1 / n } // no traffic seen: uniform, no misses
	if total > 0 {
		p = func(k []byte) float64 { return float64(counts[string(k)]) / total }
	}
	rest := 1.0 // share of lookups reaching the test
	for i, k := range keys {
		pi := p(k)
		cost += pi*(float64(i)+float64(nch)) + costMispredict*min(pi, rest-pi)
		hits += pi
		rest -= pi
	}
	return cost + max(rest, 0)*n, hits
}

// emitChain isolates the lookup call and puts a guard and a compare chain
// in front of it. With fallbackOnMiss a key outside the chain runs the
// original lookup; otherwise the chain is complete and a miss is NULL.
func (c *Context) emitChain(s lookupSite, ms *ebpf.MapSpec, matchers []matcher, values [][]byte, fallbackOnMiss bool) error {
	p := c.Prog
	call, after := isolateCall(p, s.fn, s.block, s.index)
	g, err := c.guardCheck(p, s.mapName, asm.R3, call)
	if err != nil {
		return err
	}
	cache := ""
	if len(values) > 0 {
		cache = c.addCacheMap(s.mapName, ms.ValueSize, values)
	}
	miss := call
	if !fallbackOnMiss {
		miss = p.NewBlock()
		miss.Insns = []asm.Instruction{asm.Mov.Imm(asm.R0, 0), clearRef(asm.Ja.Label(""))}
		miss.Target = after
	}
	chain := compareChain(p, stackKey(*s.keyOff), int(ms.KeySize), matchers, cache, ms.ValueSize, after, miss)
	blocks := append([]*program.Block{g}, chain...)
	if miss != call {
		blocks = append(blocks, miss)
	}
	if len(chain) > 0 {
		g.Next = chain[0]
	} else {
		g.Next = miss
	}
	s.block.Next = g
	insertAfter(s.fn, s.block, blocks...)
	return nil
}

// lpmOrder sorts LPM entries longest prefix first, so the first match of a
// chain is the longest one.
func lpmOrder(entries []mapstate.Entry) []mapstate.Entry {
	out := append([]mapstate.Entry(nil), entries...)
	sort.SliceStable(out, func(i, j int) bool {
		pi, pj := binary.LittleEndian.Uint32(out[i].Key), binary.LittleEndian.Uint32(out[j].Key)
		if pi != pj {
			return pi > pj
		}
		return bytes.Compare(out[i].Key, out[j].Key) < 0
	})
	return out
}

// lpmMask is the compare mask of an LPM key of n bytes (4-byte prefix
// length, then data) with a prefix of plen bits: the prefix-length field
// is not compared, the data only over its first plen bits.
func lpmMask(n int, plen uint32) []byte {
	mask := make([]byte, n)
	for i := 4; i < n && plen > 0; i++ {
		if plen >= 8 {
			mask[i] = 0xff
			plen -= 8
		} else {
			mask[i] = byte(0xff << (8 - plen))
			plen = 0
		}
	}
	return mask
}

// entries returns the snapshot entries of a map.
func (c *Context) entries(name string) []mapstate.Entry {
	if c.State == nil || c.State.Maps[name] == nil {
		return nil
	}
	return c.State.Maps[name].Entries
}
