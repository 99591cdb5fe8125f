package optimize

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// maxTailCalls is the kernel's MAX_TAIL_CALL_CNT: one run of a program
// makes at most this many tail calls.
const maxTailCalls = 33

// insertBounds returns, for the hash maps of coll whose test copies may
// be created smaller (verify.DiffOptions.InsertBounds), an upper bound on
// the elements one packet can insert into each: every program of coll
// is analysed (program name with insns instead of its own instructions
// if insns is not nil), and a map is named only if
//
//   - no program loses track of it or of its values (MapInfo.Untracked),
//     and every site of it is a lookup, update or delete helper call or
//     an access through a value pointer: nothing else (another helper, a
//     kfunc, a load through the map pointer such as reading its
//     max_entries) could observe its capacity;
//   - every update call site is counted: per program, the most update
//     calls on any path through its entry function, a BPF-to-BPF call
//     counting as its callee's most; a function with a loop (a cycle in
//     its blocks) that contains an update or a call that updates, or a
//     program with callbacks (bpf_loop, for_each and the like), has no
//     bound and the map is not named;
//   - tail calls are followed: a program with a tail call site may chain
//     into any program of the collection (the test's program arrays hold
//     only those), up to maxTailCalls times;
//   - a packet runs every entry program once, and the entry programs are
//     a subset of the collection's XDP and TC programs: the bound is the
//     sum of their chains' bounds.
//
// A deletion never adds an element and an update of an existing key does
// not need a new one, so counting update calls over-approximates the
// inserts. state must not set entries of program arrays (then the
// arrays could hold other programs): nil is returned.
func insertBounds(coll *ebpf.CollectionSpec, name string, insns asm.Instructions, state *mapstate.State) map[string]int {
	progs, ok := analyseAll(coll, name, insns)
	if !ok {
		return nil
	}
	return boundsOf(coll, progs, state)
}

// analysed is one program of a collection, lifted and analysed.
type analysed struct {
	spec *ebpf.ProgramSpec
	p    *program.Program
	res  *analysis.Result
}

// analyse lifts and analyses ps, a program of coll.
func analyse(coll *ebpf.CollectionSpec, ps *ebpf.ProgramSpec) (*analysed, bool) {
	p, err := program.Lift(ps)
	if err != nil {
		return nil, false
	}
	res, err := analysis.Analyze(coll, p, analysis.Options{})
	if err != nil {
		return nil, false
	}
	return &analysed{spec: ps, p: p, res: res}, true
}

// analyseAll analyses every program of coll, program name with insns
// instead of its own instructions if insns is not nil; false if one
// cannot be analysed.
func analyseAll(coll *ebpf.CollectionSpec, name string, insns asm.Instructions) (map[string]*analysed, bool) {
	out := map[string]*analysed{}
	for pname, ps := range coll.Programs {
		if pname == name && insns != nil {
			ps = ps.Copy()
			ps.Instructions = insns
		}
		a, ok := analyse(coll, ps)
		if !ok {
			return nil, false
		}
		out[pname] = a
	}
	return out, true
}

// boundsOf is insertBounds for the analysed programs of coll.
func boundsOf(coll *ebpf.CollectionSpec, progs map[string]*analysed, state *mapstate.State) map[string]int {
	if state == nil {
		state = mapstate.New()
	}
	for m := range state.Maps {
		if ms := coll.Maps[m]; ms != nil && ms.Type == ebpf.ProgramArray {
			return nil
		}
	}
	type progInfo struct {
		runnable bool
		tail     bool
		run      map[string]int // per map, -1 unknown
	}
	bad := map[string]bool{}
	var candidates []string
	for m, ms := range coll.Maps {
		switch ms.Type {
		case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash:
			candidates = append(candidates, m)
		}
	}
	if len(candidates) == 0 {
		return nil
	}
	infos := map[string]*progInfo{}
	for pname, a := range progs {
		ps, p, res := a.spec, a.p, a.res
		pi := &progInfo{run: map[string]int{}}
		switch ps.Type {
		case ebpf.XDP, ebpf.SchedCLS, ebpf.SchedACT:
			pi.runnable = true
		}
		markUses(p, res, bad)
		callbacks := false
		for _, f := range p.Funcs {
			for _, b := range f.Blocks {
				for _, ins := range b.Insns {
					if ins.IsLoadOfFunctionPointer() {
						callbacks = true
					}
				}
			}
		}
		updates := map[string]map[blockKey]int{} // map -> block -> update calls
		for _, s := range res.Sites {
			if s.Kind == analysis.SiteTailCall {
				pi.tail = true
			}
			if s.Kind == analysis.SiteUpdate && s.Map != "" {
				if updates[s.Map] == nil {
					updates[s.Map] = map[blockKey]int{}
				}
				updates[s.Map][blockKey{s.Func, s.Block}]++
			}
		}
		for _, m := range candidates {
			switch {
			case len(updates[m]) == 0:
				pi.run[m] = 0
			case callbacks:
				pi.run[m] = -1
			default:
				pi.run[m] = maxPathUpdates(p, updates[m])
			}
		}
		infos[pname] = pi
	}
	out := map[string]int{}
	for _, m := range candidates {
		if bad[m] {
			continue
		}
		// chain[k][p]: the most inserts of a run of p that may make up
		// to k more tail calls.
		chain := map[string]int{}
		for pname, pi := range infos {
			chain[pname] = pi.run[m]
		}
		for range maxTailCalls {
			most := 0
			for _, c := range chain {
				if c < 0 {
					most = -1
					break
				}
				most = max(most, c)
			}
			next := map[string]int{}
			for pname, pi := range infos {
				switch {
				case pi.run[m] < 0 || (pi.tail && most < 0):
					next[pname] = -1
				case pi.tail:
					next[pname] = pi.run[m] + most
				default:
					next[pname] = pi.run[m]
				}
			}
			chain = next
		}
		total, known := 0, true
		for pname, pi := range infos {
			if !pi.runnable {
				continue
			}
			if chain[pname] < 0 {
				known = false
				break
			}
			total += chain[pname]
		}
		if known {
			out[m] = total
		}
	}
	return out
}

type blockKey struct {
	fn    string
	block int
}

// markUses adds to bad every map that a site other than a lookup, update
// or delete helper call or a value access uses, that the analysis lost
// track of, or whose map pointer (not a value pointer) is dereferenced.
func markUses(p *program.Program, res *analysis.Result, bad map[string]bool) {
	for m, mi := range res.Maps {
		if mi.Untracked || mi.Missing {
			bad[m] = true
		}
	}
	for _, s := range res.Sites {
		switch s.Kind {
		case analysis.SiteLookup, analysis.SiteUpdate, analysis.SiteDelete,
			analysis.SiteLoad, analysis.SiteStore, analysis.SiteAtomic, analysis.SiteValueHelper:
		default:
			if s.Map != "" {
				bad[s.Map] = true
			}
		}
		if s.Kind == analysis.SiteUpdate && s.Helper != asm.FnMapUpdateElem.String() && s.Map != "" {
			bad[s.Map] = true
		}
	}
	for _, f := range p.Funcs {
		for _, b := range f.Blocks {
			w := res.Walk(b)
			if w == nil {
				continue
			}
			for i, ins := range b.Insns {
				var base asm.Register
				switch ins.OpCode.Class() {
				case asm.LdXClass:
					base = ins.Src
				case asm.StClass, asm.StXClass:
					base = ins.Dst
				default:
					continue
				}
				st := w.At(i)
				if st == nil {
					continue
				}
				if v := st.Reg(base); v.Kind == analysis.PtrMap {
					// A field of struct bpf_map (its max_entries, say).
					bad[v.Map] = true
				}
			}
		}
	}
}

// maxPathUpdates returns the most update calls (updates per block) on
// any path of one run of p's entry function, callees included; -1 if a
// loop could repeat one.
func maxPathUpdates(p *program.Program, updates map[blockKey]int) int {
	memo := map[string]int{}
	var fn func(name string, depth int) int
	fn = func(name string, depth int) int {
		if v, ok := memo[name]; ok {
			return v
		}
		f := p.Func(name)
		if f == nil || depth > len(p.Funcs) {
			return -1
		}
		weight := map[*program.Block]int{}
		total := 0
		for _, b := range f.Blocks {
			w := updates[blockKey{f.Name, b.ID}]
			for _, ins := range b.Insns {
				if ins.IsFunctionCall() {
					c := fn(ins.Reference(), depth+1)
					if c < 0 {
						memo[name] = -1
						return -1
					}
					w += c
				}
			}
			weight[b] = w
			total += w
		}
		// Longest path over the blocks; a cycle matters only if some
		// block has a weight (then it could repeat).
		const (
			white = iota
			grey
			black
		)
		color := map[*program.Block]int{}
		best := map[*program.Block]int{}
		cyclic := false
		var visit func(b *program.Block) int
		visit = func(b *program.Block) int {
			switch color[b] {
			case grey:
				cyclic = true
				return 0
			case black:
				return best[b]
			}
			color[b] = grey
			most := 0
			for _, s := range b.Succs() {
				most = max(most, visit(s))
			}
			color[b] = black
			best[b] = weight[b] + most
			return best[b]
		}
		v := 0
		if len(f.Blocks) > 0 {
			v = visit(f.Blocks[0])
		}
		if cyclic && total > 0 {
			v = -1
		}
		memo[name] = v
		return v
	}
	return fn(p.Funcs[0].Name, 0)
}

// maxBounds returns, for the maps both a and b bound, the larger bound:
// the candidate's copy is sized for the originals' inserts and its own.
func maxBounds(a, b map[string]int) map[string]int {
	out := map[string]int{}
	for m, x := range a {
		if y, ok := b[m]; ok {
			out[m] = max(x, y)
		}
	}
	return out
}

// testPacketCount is the most packets RunLive's differential test runs:
// the trace's, the generated ones and a quarter as many edge cases.
func testPacketCount(opts Options) int {
	gen := opts.Generated
	if gen == 0 {
		gen = 2000
	}
	return len(opts.Packets) + gen + gen/4
}
