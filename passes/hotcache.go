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

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// hotCache is the cached-computation pass. For a lookup in a hash or LPM
// map too large to inline, the hottest keys of the heatmap are compiled
// in front of the lookup: each hot key's result (the value the lookup
// would return, or a miss) is precomputed from the snapshot. The cache
// sits behind the map's guard; any other key, or a changed map, runs the
// original lookup.
//
// # Layout and cost model
//
// A few keys are tested one after another, hottest first (a compare
// chain); more keys are found by a balanced binary search over the keys
// sorted as byte strings: the key is cut into aligned 8-, 4-, 2- and
// 1-byte chunks (bytes the site always passes as constants are skipped),
// each loaded once from the stack and byte-swapped to big endian, so that
// unsigned compares (jlt, jgt) order chunks like bytes; with too few dead
// registers the chunks are reloaded per compare. Or the keys go into a
// hashed probe (probe.go): the same chunks hashed into a collision-free
// table of 2^b slots, one load of the key's slot and one compare per
// chunk, whatever K; beyond probePlainMaxKeys keys the table is displaced
// (probe_chd.go), one more load. Options.TopK is the maximum number of
// keys (at most maxHotKeys, and maxSearchKeys for a chain or a tree). How
// many are compiled, and which layout, is decided per site by an expected
// cost per lookup, in units of one compare-and-branch:
//
//	cost(K)  = hotCostGuard + min(chain(K), tree(K), probe(K)) + (1 - coverage(K)) * lookup
//	chain(K) = Σ_{i<K} p_i (i + chunks) + (1 - coverage(K)) K
//	tree(K)  = 2 chunks + 1.5 ⌈log2(K+1)⌉ + 2 chunks
//	probe(K) = 3 chunks + probeHashCost (+ chunks/2 with two slots a
//	           bucket, + 1 when a cached result is a miss, + chdCost
//	           when displaced)
//
// where p_i is the share of the site's heatmap counts on the i-th
// hottest key, coverage(K) the share of the top K, and lookup the cost of
// the helper (costHashLookup, costLPMLookup). The K with the lowest cost
// wins; if even that is not below lookup (the hot keys cover too little
// of the traffic, as with no locality) the site is left alone, so a flat
// heatmap never pays for a cache that rarely hits. The probe's cost does
// not grow with K, so where it wins it takes every key it may; its
// placement is searched only then, and if none is found within the
// search's budget the best chain or tree stands. The chain and the tree
// pay mispredicted branches that grow with K (which of K keys a lookup
// hits is data, not history); the probe's branches go the same way for
// every hit.
//
// # Maps the data plane writes
//
// A site of a map the data plane writes is cached only if every
// data-plane write of the map (update,
// delete and other writing helper calls on it, stores and atomics through
// a value pointer into it) gets a tripwire injected right before it:
//
//	rX = map_value(morpheus_guards, 8*slot)   // rX dead at the write
//	*(u64 *)(rX + 0) = -1                     // guard.Tripped
//
// Versions are never all ones, so from that write on every cached site of
// the map takes the original lookup, until the agent re-arms the slot
// (guard.Table.Rearm) and re-specializes to a fresh snapshot. A write site
// with no dead register, a map another program of the collection also
// references (its writes would carry no tripwire), or a map whose
// pointers the analysis does not all follow makes the map's sites
// ineligible; so does a write that may run after the site in the same
// run (the original's pointer would read what it wrote, a pointer into
// the cache would not). A site whose value is itself written gets a hit
// tail instead (hotcache_tail.go): its hits bail to the original code
// before any write.
func hotCache(c *Context) error {
	if c.Heat == nil {
		return nil
	}
	res, err := c.Analysis()
	if err != nil {
		return err
	}
	sites, err := c.lookupSites()
	if err != nil {
		return err
	}
	sort.SliceStable(sites, func(i, j int) bool { return sites[i].index > sites[j].index })
	ans := answers{}
	maxK := min(c.Opts.TopK, maxHotKeys)
	var plans []*hotPlan
	trips := map[string]*tripPlan{}
	for _, s := range sites {
		ms := c.Coll.Maps[s.mapName]
		if len(c.Heat.Top(s.mapName, 1)) == 0 {
			continue // no traffic seen: nothing to say about the site
		}
		if why := hotRewritable(s, ms); why != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
			continue
		}
		var tail *hitTail
		if !s.valueReadOnly {
			var why string
			if tail, why = c.planHitTail(res, s); why != "" {
				c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
				continue
			}
		}
		if s.readOnlyMap {
			if n := len(c.entries(s.mapName)); n <= c.Opts.MaxInline {
				// mapinline compiles the whole table; caching keys in
				// front of its fallback lookup would only add a guard.
				c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d entries: small enough to inline whole", n)
				continue
			}
		} else {
			tp := trips[s.mapName]
			if tp == nil {
				tp = c.planTripwires(res, s.mapName)
				trips[s.mapName] = tp
			}
			if tp.why != "" {
				c.skipped(s.fn.Name, s.block.ID, s.mapName, "the data plane writes this map: %s", tp.why)
				continue
			}
			if w := c.writeAfter(s, tp); w != "" && tail == nil {
				// The original's pointer would see that write; a
				// pointer into the cache would not.
				c.skipped(s.fn.Name, s.block.ID, s.mapName, "the data plane writes this map: a write (%s) may run after this lookup", w)
				continue
			}
		}
		plan, why := c.planHot(res, s, ms, maxK, ans)
		if why != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
			continue
		}
		if !s.readOnlyMap {
			trips[s.mapName].used = true
		}
		plan.tail = tail
		plans = append(plans, plan)
	}
	if err := c.injectTripwires(trips, plans); err != nil {
		return err
	}
	for _, pl := range plans {
		if err := c.emitHot(pl); err != nil {
			return err
		}
	}
	return nil
}

// maxHotKeys bounds Options.TopK for the hashed probe, whose cost does
// not grow with the keys; its table stays within probeMaxBytes.
const maxHotKeys = 1024

// maxSearchKeys bounds the keys of a compare chain or search tree: beyond
// it a search is deeper than most of what it saves, and the verifier's
// budget grows with every key.
const maxSearchKeys = 64

// Cost model constants, in compare-and-branch units (see hotCache),
// calibrated with `morpheus bench` on this machine class (about 0.5 ns a
// unit): the L2 switch's fdb lookup (a hash, 8-byte keys) saves nothing
// measurable when a cache covers 29% of its lookups and about 15 ns per
// covered lookup, so a hash lookup is about 30 units; the router's LPM
// trie (2,592 prefixes) saves about 55 ns per covered lookup, about 120
// units.
const (
	hotCostGuard   = 3 // load the guard, compare, the jump into the cache
	costHashLookup = 30
	costLPMLookup  = 120
)

// hotRewritable says why no cache may precede the lookup at s, or "" if
// one may: hash and LPM maps whose value pointer is only read and whose
// key sits at a known stack offset. Maps the data plane writes are
// checked further by planTripwires.
func hotRewritable(s lookupSite, ms *ebpf.MapSpec) string {
	switch {
	case s.ineligible != "":
		return s.ineligible
	case ms.Type != ebpf.Hash && ms.Type != ebpf.LPMTrie:
		return fmt.Sprintf("%s maps are not rewritten", ms.Type)
	case !s.hasKey():
		return "key is not at a known stack offset"
	}
	return ""
}

// hotPlan is a decided cache in front of one lookup.
type hotPlan struct {
	s        lookupSite
	ms       *ebpf.MapSpec
	matchers []matcher
	values   [][]byte
	tree     bool
	chunks   []keyChunk     // the tree's chunks
	regs     []asm.Register // registers dead at the lookup, for the tree
	coverage float64
	cost     float64 // expected cost per lookup, lookup = lookupCost
	lookup   float64
	probe    *probePlan // the hashed probe, if that is the layout
	nkeys    int        // keys in the probe
	tail     *hitTail   // set when the value is written: hits run a hit tail
}

// planHot picks the hot keys and the layout for site s, or says why not.
func (c *Context) planHot(res *analysis.Result, s lookupSite, ms *ebpf.MapSpec, maxK int, ans answers) (*hotPlan, string) {
	all := c.Heat.Top(s.mapName, math.MaxInt)
	var keys []heatmap.Key
	var total float64
	seen := map[string]bool{}
	for _, h := range all {
		if uint32(len(h.Key)) != ms.KeySize || !s.keyCompatible(h.Key) || seen[string(h.Key)] {
			continue // a key this site can never look up
		}
		seen[string(h.Key)] = true
		total += float64(h.Count)
		keys = append(keys, h)
	}
	if len(keys) == 0 {
		return nil, "no hot key matches this site's constant key bytes"
	}
	if total == 0 {
		total = 1
	}
	lookup := float64(costHashLookup)
	if ms.Type == ebpf.LPMTrie {
		lookup = costLPMLookup
	}
	constByte := func(i int) bool { return i < len(s.keyBytes) && s.keyBytes[i].Kind == "const" }
	key, _ := s.keyAt()
	tchs := treeChunks(key.frameOff, int(ms.KeySize), constByte)
	pchs := probeChunks(key.frameOff, int(ms.KeySize), constByte)
	cch := float64(len(chunks(0, int(ms.KeySize))))
	tch := float64(len(tchs))
	// The chain and the tree, and separately the probe: its placement
	// is only searched for the K it would take, and if none is found
	// the best of the other two stands.
	best, bestK, bestLayout := math.Inf(1), 0, "chain"
	bestProbe, probeK := math.Inf(1), 0
	var covered, chainHits float64
	cachedMiss := false
	at := map[string]float64{} // each layout's cost with the most keys
	for k := 1; k <= min(maxK, len(keys)); k++ {
		p := float64(keys[k-1].Count) / total
		covered += p
		chainHits += p * (float64(k-1) + cch)
		chain := chainHits + (1-covered)*float64(k)
		tree := 2*tch + 1.5*math.Ceil(math.Log2(float64(k+1))) + 2*tch
		cachedMiss = cachedMiss || ans.of(c, ms, keys[k-1].Key) == nil
		probe := probeCost(len(pchs), 1, cachedMiss)
		if k > probePlainMaxKeys {
			probe += chdCost
		}
		rest := hotCostGuard + (1-covered)*lookup
		at["chain"], at["tree"], at["probe"] = rest+chain, rest+tree, rest+probe
		if cost := rest + min(chain, tree); cost < best && k <= maxSearchKeys {
			best, bestK, bestLayout = cost, k, map[bool]string{true: "tree", false: "chain"}[tree < chain]
		}
		if cost := rest + probe; cost < bestProbe {
			bestProbe, probeK = cost, k
		}
	}
	if forceLayout != "" {
		// A test wants one layout with every key it offers.
		chs := tchs
		if forceLayout == "probe" {
			chs = pchs
		}
		pl, why := c.hotKeys(res, s, ms, keys, min(maxK, len(keys)), forceLayout, chs, total, at[forceLayout], lookup, ans)
		if pl == nil {
			return nil, "forced layout: " + why
		}
		return pl, ""
	}
	if bestProbe < min(best, lookup) {
		pl, why := c.hotKeys(res, s, ms, keys, probeK, "probe", pchs, total, bestProbe, lookup, ans)
		if pl != nil && pl.cost < min(best, lookup) {
			return pl, ""
		}
		if pl == nil {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
		}
	}
	if best >= lookup {
		return nil, fmt.Sprintf("hot keys cover too little: the best cache (%d keys, %.0f%% of lookups) would cost %.0f against %.0f for the lookup", bestK, 100*coverage(keys, bestK, total), best, lookup)
	}
	return c.hotKeys(res, s, ms, keys, bestK, bestLayout, tchs, total, best, lookup, ans)
}

// answers indexes the snapshot's hash entries by key, per map, built on
// first use, and remembers the longest matches found in LPM tries: hot
// keys are looked up in tables of many thousand entries, and the cost
// model and the plan ask for the same keys.
type answers map[string]map[string][]byte

// of is the snapshot's answer to a lookup of key in ms: the value bytes,
// or nil for a miss.
func (a answers) of(c *Context, ms *ebpf.MapSpec, key []byte) []byte {
	if ms.Type == ebpf.LPMTrie {
		memo := a["\x00lpm "+ms.Name]
		if memo == nil {
			memo = map[string][]byte{}
			a["\x00lpm "+ms.Name] = memo
		}
		v, ok := memo[string(key)]
		if !ok {
			v = longestMatch(c.entries(ms.Name), key)
			memo[string(key)] = v
		}
		return v
	}
	idx, ok := a[ms.Name]
	if !ok {
		idx = map[string][]byte{}
		for _, e := range c.entries(ms.Name) {
			idx[string(e.Key)] = e.Value // the last write of a key wins
		}
		a[ms.Name] = idx
	}
	return idx[string(key)]
}

// forceLayout, set only by tests, overrides the cost models: "tree",
// "chain" or "probe" with as many keys as Options.TopK allows in
// hotcache, "probe" for any hash in mapinline.
var forceLayout string

// hotKeys builds the plan for the k hottest keys in the chosen layout
// ("chain", "tree" or "probe"; chs are the chunks the tree or the probe
// compares), or says why it cannot.
func (c *Context) hotKeys(res *analysis.Result, s lookupSite, ms *ebpf.MapSpec, keys []heatmap.Key, k int, layout string, tchs []keyChunk, total, cost, lookup float64, ans answers) (*hotPlan, string) {
	pl := &hotPlan{s: s, ms: ms, tree: layout == "tree", coverage: coverage(keys, k, total), cost: cost, lookup: lookup}
	hot := keys[:k]
	if layout == "probe" {
		var hk, results [][]byte
		for _, h := range hot {
			hk, results = append(hk, h.Key), append(results, ans.of(c, ms, h.Key))
		}
		key, _ := s.keyAt()
		pl.probe = planProbe(hk, results, tchs, key.frameOff, int(ms.KeySize), int(ms.ValueSize))
		if pl.probe == nil {
			return nil, fmt.Sprintf("no hashed probe placement for %d hot keys within the search budget", k)
		}
		if pl.probe.t.ways == 2 {
			// The second slot's compares: re-cost with them.
			pl.cost += probeCost(len(tchs), 2, pl.probe.flag) - probeCost(len(tchs), 1, pl.probe.flag)
		}
		if pl.probe.t.disp != nil && k <= probePlainMaxKeys {
			pl.cost += chdCost // displaced after all: pay its load
		}
		pl.nkeys = k
		return pl, ""
	}
	if pl.tree {
		hot = slices.Clone(hot)
		slices.SortFunc(hot, func(a, b heatmap.Key) int { return bytes.Compare(a.Key, b.Key) })
		pl.chunks = tchs
		for _, r := range res.LiveIn(s.block, s.index).Free() {
			if r != asm.R1 && r != asm.R2 {
				pl.regs = append(pl.regs, r)
			}
		}
		if len(pl.regs) < 2 {
			// R0 and R3-R5 are dead before any helper call.
			return nil, "fewer than two dead registers at the lookup"
		}
	}
	for _, h := range hot {
		v := ans.of(c, ms, h.Key)
		m := matcher{key: h.Key, valueIndex: -1}
		if v != nil {
			m.valueIndex = len(pl.values)
			pl.values = append(pl.values, v)
		}
		pl.matchers = append(pl.matchers, m)
	}
	return pl, ""
}

// coverage is the share of total the first k keys account for.
func coverage(keys []heatmap.Key, k int, total float64) float64 {
	var sum float64
	for _, h := range keys[:k] {
		sum += float64(h.Count)
	}
	return sum / total
}

// emitHot isolates the lookup and puts the guard and the cache in front
// of it; a key outside the cache, or a changed map, runs the lookup.
func (c *Context) emitHot(pl *hotPlan) error {
	s, p := pl.s, c.Prog
	call, after := isolateCall(p, s.fn, s.block, s.index)
	g, err := c.guardCheck(p, s.mapName, asm.R3, call)
	if err != nil {
		return err
	}
	rw := ""
	if !s.readOnlyMap {
		rw = ", data-plane writes trip the guard"
	}
	hit := after
	if pl.tail != nil {
		hit = c.emitHitTail(pl.tail, s.fn, s.mapName, call, after)
		rw += ", hits run a copy of the code after the lookup that redoes it before a write"
	}
	if pl.probe != nil {
		// The guard goes first, the probe after it; a key the probe
		// does not hold runs the call.
		if err := c.emitProbeAt(s, pl.probe, call, hit, g); err != nil {
			return err
		}
		c.changed(s.fn.Name, s.block.ID, s.mapName, "%d hot keys cached in front of the lookup behind guard (%s, %.0f%% of lookups, cost %.0f vs %.0f%s)",
			pl.nkeys, pl.probe.t.describe(pl.probe.l), 100*pl.coverage, pl.cost, pl.lookup, rw)
		return nil
	}
	cache := ""
	if len(pl.values) > 0 {
		cache = c.addCacheMap(s.mapName, pl.ms.ValueSize, pl.values)
	}
	var body []*program.Block
	key, _ := s.keyAt()
	layout := "compare chain"
	if pl.tree {
		c.readsWide(key, pl.chunks)
		body = searchTree(p, key, pl.chunks, pl.matchers, pl.regs, cache, pl.ms.ValueSize, hit, call)
		layout = "binary search"
	} else {
		body = compareChain(p, key, int(pl.ms.KeySize), pl.matchers, cache, pl.ms.ValueSize, hit, call)
	}
	g.Next = body[0]
	s.block.Next = g
	insertAfter(s.fn, s.block, append([]*program.Block{g}, body...)...)
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d hot keys cached in front of the lookup behind guard (%s, %.0f%% of lookups, cost %.0f vs %.0f%s)",
		len(pl.matchers), layout, 100*pl.coverage, pl.cost, pl.lookup, rw)
	return nil
}

// tripPlan is where the tripwires of one map the data plane writes go.
type tripPlan struct {
	wires []tripwire
	why   string // non-empty: the map's sites may not be cached
	used  bool   // some site of the map is cached
}

// tripwire is one injected guard trip, before instruction index of block.
type tripwire struct {
	mapName string
	fn      *program.Func
	block   *program.Block
	index   int
	reg     asm.Register
	what    string
}

// planTripwires finds, for every data-plane write site of mapName, a
// register dead right before the write to carry the guard pointer.
func (c *Context) planTripwires(res *analysis.Result, mapName string) *tripPlan {
	mi := res.Maps[mapName]
	if mi == nil || mi.Untracked {
		return &tripPlan{why: "pointers to this map are not all followed"}
	}
	for name, ps := range c.Coll.Programs {
		if ps == nil || (c.Prog.Spec != nil && ps.Name == c.Prog.Spec.Name) {
			continue
		}
		for _, ins := range ps.Instructions {
			if ins.IsLoadFromMap() && ins.Reference() == mapName {
				return &tripPlan{why: fmt.Sprintf("program %s also uses it, and its writes would not trip the guard", name)}
			}
		}
	}
	blocks := map[int]*program.Block{}
	funcs := map[int]*program.Func{}
	for _, f := range c.Prog.Funcs {
		for _, b := range f.Blocks {
			blocks[b.ID], funcs[b.ID] = b, f
		}
	}
	tp := &tripPlan{}
	seen := map[[2]int]bool{}
	for _, id := range mi.WriteSites {
		ws := res.Site(id)
		if ws == nil || blocks[ws.Block] == nil {
			return &tripPlan{why: fmt.Sprintf("write site %d is not in the program", id)}
		}
		b := blocks[ws.Block]
		if seen[[2]int{ws.Block, ws.Index}] {
			continue // several operands of one instruction
		}
		seen[[2]int{ws.Block, ws.Index}] = true
		free := res.LiveIn(b, ws.Index).Free()
		if len(free) == 0 {
			return &tripPlan{why: fmt.Sprintf("no dead register for the guard tripwire before the write at %s:b%d:%d", ws.Func, ws.Block, ws.Index)}
		}
		what := ws.Helper
		if what == "" {
			what = string(ws.Kind)
		}
		tp.wires = append(tp.wires, tripwire{mapName: mapName, fn: funcs[ws.Block], block: b, index: ws.Index, reg: free[0], what: what})
	}
	return tp
}

// writeAfter names a write of the map that may run after the lookup at s
// in the same program run (later in its block, in a block reachable from
// it, or in a function called from there), or returns "". Such a write
// could change what the lookup's pointer reads after it, which a cached
// value would not show, so the site is not cached.
func (c *Context) writeAfter(s lookupSite, tp *tripPlan) string {
	// Functions that may write the map, directly or through calls.
	writes := map[string]string{}
	at := map[*program.Block][]tripwire{}
	for _, w := range tp.wires {
		writes[w.fn.Name] = w.what
		at[w.block] = append(at[w.block], w)
	}
	for changed := true; changed; {
		changed = false
		for _, f := range c.Prog.Funcs {
			if writes[f.Name] != "" {
				continue
			}
			for _, b := range f.Blocks {
				for _, ins := range b.Insns {
					if w := writes[ins.Reference()]; ins.IsFunctionCall() && w != "" {
						writes[f.Name], changed = fmt.Sprintf("%s in %s", w, ins.Reference()), true
					}
				}
			}
		}
	}
	blockFrom := func(b *program.Block, from int) string {
		for _, w := range at[b] {
			if w.index >= from {
				return w.what
			}
		}
		for _, ins := range b.Insns[from:] {
			if w := writes[ins.Reference()]; ins.IsFunctionCall() && w != "" {
				return fmt.Sprintf("%s in %s", w, ins.Reference())
			}
		}
		return ""
	}
	if w := blockFrom(s.block, s.index+1); w != "" {
		return w
	}
	seen := map[*program.Block]bool{}
	work := slices.Clone(s.block.Succs())
	for len(work) > 0 {
		b := work[len(work)-1]
		work = work[:len(work)-1]
		if seen[b] {
			continue
		}
		seen[b] = true
		if w := blockFrom(b, 0); w != "" {
			return w
		}
		work = append(work, b.Succs()...)
	}
	return ""
}

// injectTripwires inserts the tripwires of every map with a cached site
// and moves the planned lookups that follow them in the same block.
func (c *Context) injectTripwires(trips map[string]*tripPlan, plans []*hotPlan) error {
	var wires []tripwire
	for _, tp := range trips {
		if tp.used {
			wires = append(wires, tp.wires...)
		}
	}
	if len(wires) == 0 {
		return nil
	}
	if _, ok := c.Coll.Maps[guard.MapName]; !ok {
		c.Coll.Maps[guard.MapName] = guard.Spec()
	}
	// Last instruction of a block first, so earlier indices stay valid;
	// then by map and position, so that the output is deterministic.
	sort.Slice(wires, func(a, b int) bool {
		wa, wb := wires[a], wires[b]
		if wa.index != wb.index {
			return wa.index > wb.index
		}
		if wa.mapName != wb.mapName {
			return wa.mapName < wb.mapName
		}
		return wa.block.ID < wb.block.ID
	})
	for _, w := range wires {
		name := w.mapName
		slot, err := c.Guards.Slot(name)
		if err != nil {
			return err
		}
		c.Guards.MarkDataPlane(name)
		trip := []asm.Instruction{
			asm.LoadMapValue(w.reg, 0, slot*8).WithReference(guard.MapName),
			// BPF_ST DW sign-extends the immediate: all ones.
			// (asm.StoreImm refuses DWord, so built by hand.)
			{OpCode: asm.StoreImmOp(asm.DWord), Dst: w.reg, Constant: -1},
		}
		// Keep the instruction's metadata (line info) on the write.
		w.block.Insns = slices.Insert(w.block.Insns, w.index, trip...)
		for _, pl := range plans {
			if pl.s.block == w.block && pl.s.index >= w.index {
				pl.s.index += len(trip)
			}
		}
		c.changed(w.fn.Name, w.block.ID, name, "guard tripwire in %s before the data-plane write (%s)", w.reg, w.what)
	}
	return nil
}

// exactMatch returns the value stored under key, or nil.
func exactMatch(entries []mapstate.Entry, key []byte) []byte {
	var v []byte
	for _, e := range entries {
		if bytes.Equal(e.Key, key) {
			v = e.Value // the last write of a key wins
		}
	}
	return v
}

// longestMatch returns the value of the longest prefix in entries that
// covers key, as BPF_MAP_TYPE_LPM_TRIE would.
func longestMatch(entries []mapstate.Entry, key []byte) []byte {
	kplen := binary.LittleEndian.Uint32(key)
	var best []byte
	bestLen := -1
	for _, e := range entries {
		plen := binary.LittleEndian.Uint32(e.Key)
		if plen > kplen || int(plen) <= bestLen || len(e.Key) != len(key) {
			continue
		}
		mask := lpmMask(len(key), plen)
		match := true
		for i := 4; i < len(key); i++ {
			if key[i]&mask[i] != e.Key[i]&mask[i] {
				match = false
				break
			}
		}
		if match {
			best, bestLen = e.Value, int(plen)
		}
	}
	return best
}
