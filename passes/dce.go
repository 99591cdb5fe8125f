package passes

import (
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
)

// deadCode cleans up after the rewriting passes, to a fixpoint:
//   - conditional jumps whose two outcomes lead to the same block go;
//   - jumps to an empty block or to a lone goto are threaded through it;
//   - blocks no path reaches are removed (the verifier rejects unreachable
//     code), and so are functions no reachable code calls or references;
//   - register definitions no instruction reads are removed (ALU, loads,
//     ld_imm64), and so are lookups in maps whose lookup has no side effect
//     when nothing reads the result, and plain stores to the stack frame
//     no instruction, helper or callee can read afterwards; stores to any
//     other memory, atomics, other calls and legacy packet loads are
//     always kept;
//   - a block that falls into a block with no other predecessor absorbs it,
//     and a goto to the next block becomes a fall-through.
//
// Folding (constprop) turns decided branches into gotos; this pass is what
// makes the untaken side disappear. Function symbols, func info and the
// first line info live on program.Func and are re-attached by Lower, so
// removing or merging instructions never loses them.
func deadCode(c *Context) error {
	var st dceStats
	for round := 0; round < 16; round++ {
		n, err := c.deadCodeRound(&st)
		if err != nil {
			return err
		}
		c.analysis = nil
		if n == 0 {
			break
		}
	}
	for _, name := range st.funcsRemoved {
		c.changed(name, -1, "", "function removed: no reachable code calls or references it")
	}
	for _, f := range c.Prog.Funcs {
		s := st.per[f.Name]
		if s == (funcStats{}) {
			continue
		}
		msg := fmt.Sprintf("removed %d unreachable blocks, %d dead register definitions, %d dead stack stores, %d unused lookups; threaded or dropped %d jumps; merged %d blocks",
			s.blocks, s.insns, s.stores, s.lookups, s.jumps, s.merged)
		if s.nullChecks > 0 {
			msg += fmt.Sprintf("; decided %d NULL checks of array lookups that cannot fail", s.nullChecks)
		}
		c.changed(f.Name, f.Blocks[0].ID, "", "%s", msg)
	}
	return nil
}

type funcStats struct{ blocks, insns, lookups, stores, nullChecks, jumps, merged int }

type dceStats struct {
	per          map[string]funcStats
	funcsRemoved []string
}

// deadCodeRound runs one analysis and removes the dead lookups and stores
// it finds, then the analysis-free cleanups to their fixpoint. It returns
// how many changes may enable more analysis-driven removals: those, and
// removed blocks (the analysis takes code it found unreachable to read the
// whole frame) and removed definitions (a removed stack load or use of a
// lookup result). Jump threading, merging and layout only move code, so a
// round that made nothing else needs no further analysis.
func (c *Context) deadCodeRound(st *dceStats) (int, error) {
	if st.per == nil {
		st.per = map[string]funcStats{}
	}
	total := 0
	// dce solves its own liveness (with callArgs): the analysis' is not
	// needed. A result still valid from an earlier pass is reused.
	res := c.analysis
	if res == nil {
		var err error
		res, err = analysis.Analyze(c.Coll, c.Prog, analysis.Options{NoLiveness: true})
		if err != nil {
			return 0, err
		}
		// Only this round uses it (decisions come before any change).
		defer res.Release()
	}
	// Both removals below read the analysis, so both are decided before
	// either changes an instruction index.
	args := callArgs(c.Prog)
	checks := c.neverNull(res)
	lookups := c.deadLookups(res, args)
	stores := map[*program.Block][]int{}
	for _, f := range c.Prog.Funcs {
		deadStores(res, f, args, stores)
	}
	marks := map[*program.Block][]int{}
	for _, m := range []map[*program.Block][]int{lookups, stores} {
		for b, idx := range m {
			marks[b] = append(marks[b], idx...)
		}
	}
	for _, f := range c.Prog.Funcs {
		s := st.per[f.Name]
		l := 0
		for _, b := range f.Blocks {
			s.lookups += len(lookups[b])
			s.stores += len(stores[b])
			l += len(lookups[b]) + len(stores[b])
		}
		removeMarked(f, marks)
		for _, b := range f.Blocks {
			taken, ok := checks[b]
			if !ok {
				continue
			}
			if taken {
				j := b.Insns[len(b.Insns)-1]
				j.OpCode, j.Src, j.Dst, j.Offset, j.Constant = gotoOpCode, 0, 0, 0, 0
				b.Insns[len(b.Insns)-1] = clearRef(j)
				b.Next = nil
			} else {
				b.Insns = b.Insns[:len(b.Insns)-1]
				b.Target = nil
			}
			s.nullChecks++
			l++
		}
		// The cleanups enable each other (a removed definition can
		// empty a block, a threaded jump can make a conditional jump's
		// targets equal): run them to their fixpoint here, without the
		// analysis, instead of one step per analysed round.
		var b, d int
		for k := 0; k < 16; k++ {
			j := simplifyJumps(f)
			j += bypassEmpty(f)
			rb := removeUnreachable(f)
			rd := removeDeadDefs(f, args)
			m := mergeBlocks(f)
			j += dropJumpsToNext(f)
			s.jumps += j
			s.merged += m
			b += rb
			d += rd
			if j+rb+rd+m == 0 {
				break
			}
		}
		s.blocks += b
		s.insns += d
		st.per[f.Name] = s
		total += l + b + d
	}
	removed := removeUncalled(c.Prog)
	st.funcsRemoved = append(st.funcsRemoved, removed...)
	return total + len(removed), nil
}

// neverNull finds the NULL checks of pointers that only come from array
// lookups with a constant in-range index and that nothing else uses (the
// verifier wants the check only before a dereference): such a lookup
// never fails. It maps each block ending in one to whether its jump is
// taken. Constprop decides the same checks; here they are decided again
// once dead definitions (such as the argument a specialized callee no
// longer reads) have gone.
func (c *Context) neverNull(res *analysis.Result) map[*program.Block]bool {
	out := map[*program.Block]bool{}
	var spare *analysis.Walker
	for _, f := range c.Prog.Funcs {
		for _, b := range f.Blocks {
			t := b.Term()
			if t == nil || t.OpCode.Class() != asm.JumpClass || t.OpCode.Source() != asm.ImmSource || t.Constant != 0 {
				continue
			}
			op := t.OpCode.JumpOp()
			if op != asm.JEq && op != asm.JNE {
				continue
			}
			w := res.Rewalk(spare, b) // StateBefore without a copy per block
			if w == nil {
				continue
			}
			spare = w
			v := w.At(len(b.Insns) - 1).Reg(t.Dst)
			if v.Kind == analysis.PtrMapValue && v.MaybeNull && c.inRangeArrayLookup(res, v) {
				out[b] = op == asm.JNE
			}
		}
	}
	return out
}

// pureLookup lists the map types whose lookup only reads: removing an
// unused one changes nothing (an LRU lookup would refresh the entry).
var pureLookup = map[ebpf.MapType]bool{
	ebpf.Array: true, ebpf.PerCPUArray: true, ebpf.Hash: true, ebpf.PerCPUHash: true, ebpf.LPMTrie: true,
}

// deadLookups finds bpf_map_lookup_elem calls on maps with a pure lookup
// whose result no instruction reads.
func (c *Context) deadLookups(a *analysis.Result, args map[string]regSet) map[*program.Block][]int {
	out := map[*program.Block][]int{}
	for _, f := range c.Prog.Funcs {
		live := computeLiveWith(f, args)
		for _, b := range f.Blocks {
			var w *analysis.Walker
			for i, ins := range b.Insns {
				if !ins.IsBuiltinCall() || asm.BuiltinFunc(ins.Constant) != asm.FnMapLookupElem {
					continue
				}
				if live.after(b, i)&regBit(asm.R0) != 0 {
					continue
				}
				if w == nil {
					w = a.Walk(b)
				}
				s := w.At(i)
				if s == nil {
					continue
				}
				m := s.Reg(asm.R1)
				ms := c.Coll.Maps[m.Map]
				if m.Kind != analysis.PtrMap || ms == nil || !pureLookup[ms.Type] {
					continue
				}
				out[b] = append(out[b], i)
			}
		}
	}
	return out
}

// removeMarked deletes the instructions listed for f's blocks.
func removeMarked(f *program.Func, marks map[*program.Block][]int) int {
	n := 0
	for _, b := range f.Blocks {
		idx := marks[b]
		if len(idx) == 0 {
			continue
		}
		kept := b.Insns[:0:0]
		for i, ins := range b.Insns {
			if !slices.Contains(idx, i) {
				kept = append(kept, ins)
			}
		}
		n += len(b.Insns) - len(kept)
		b.Insns = kept
	}
	return n
}

// simplifyJumps turns a conditional jump whose target is also its
// fall-through into nothing; BPF comparisons have no side effects.
func simplifyJumps(f *program.Func) int {
	n := 0
	for _, b := range f.Blocks {
		t := b.Term()
		if t == nil || t.OpCode.JumpOp() == asm.Exit || t.OpCode.JumpOp() == asm.Ja {
			continue
		}
		if t.OpCode.JumpOp() == asm.JCOND {
			continue // may_goto carries loop accounting for the verifier
		}
		if b.Target == b.Next {
			b.Insns = b.Insns[:len(b.Insns)-1]
			b.Target = nil
			n++
		}
	}
	return n
}

// bypassEmpty points every edge into an empty fall-through block, or into
// a block that is a lone goto, at the block it leads to.
func bypassEmpty(f *program.Func) int {
	resolve := func(b *program.Block) *program.Block {
		for i := 0; b != nil && b != f.Blocks[0] && i < len(f.Blocks); i++ {
			switch {
			case len(b.Insns) == 0 && b.Next != nil:
				b = b.Next
			case len(b.Insns) == 1 && b.Term() != nil && b.Term().OpCode.JumpOp() == asm.Ja && b.Target != nil:
				b = b.Target
			default:
				return b
			}
		}
		return b
	}
	n := 0
	for _, b := range f.Blocks {
		if t := resolve(b.Target); t != b.Target {
			b.Target = t
			n++
		}
		if nx := resolve(b.Next); nx != b.Next {
			b.Next = nx
			n++
		}
	}
	return n
}

// removeUnreachable drops blocks not reachable from the function's entry.
func removeUnreachable(f *program.Func) int {
	seen := map[*program.Block]bool{}
	stack := []*program.Block{f.Blocks[0]}
	for len(stack) > 0 {
		b := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[b] {
			continue
		}
		seen[b] = true
		stack = append(stack, b.Succs()...)
	}
	kept := f.Blocks[:0]
	for _, b := range f.Blocks {
		if seen[b] {
			kept = append(kept, b)
		}
	}
	removed := len(f.Blocks) - len(kept)
	f.Blocks = kept
	return removed
}

// removeDeadDefs removes instructions whose only effect is to define
// registers that are dead afterwards. One liveness solution suffices for a
// sweep: removing a dead definition only shrinks liveness.
func removeDeadDefs(f *program.Func, args map[string]regSet) int {
	live := computeLiveWith(f, args)
	n := 0
	for _, b := range f.Blocks {
		// Most sweeps remove nothing from most blocks: copy a block's
		// instructions only from its first removal on.
		var kept []asm.Instruction
		copying := false
		for i, ins := range b.Insns {
			if removableDef(ins) {
				if _, def := useDef(ins); def != 0 && live.after(b, i)&def == 0 {
					if !copying {
						kept = append(make([]asm.Instruction, 0, len(b.Insns)-1), b.Insns[:i]...)
						copying = true
					}
					n++
					continue
				}
			}
			if copying {
				kept = append(kept, ins)
			}
		}
		if copying {
			b.Insns = kept
		}
	}
	return n
}

// removableDef reports whether ins does nothing but write its destination
// register: ALU operations (division by zero does not trap in BPF), memory
// loads (the verifier proved them safe) and 64-bit immediate loads.
func removableDef(ins asm.Instruction) bool {
	switch cls := ins.OpCode.Class(); {
	case ins.OpCode.IsDWordLoad():
		return true
	case cls.IsALU():
		return ins.Dst != asm.R10
	case cls == asm.LdXClass:
		m := ins.OpCode.Mode()
		return m == asm.MemMode || m == asm.MemSXMode
	}
	return false
}

// mergeBlocks appends a block to its only predecessor when that
// predecessor falls through (or jumps) to it and nowhere else.
func mergeBlocks(f *program.Func) int {
	// Predecessor counts are kept up to date across merges instead of
	// being rebuilt after each one (quadratic on large functions). A merge
	// changes no block before the absorbing one, nor the count of any
	// remaining block, so the scan resumes at the absorbing block: the
	// same merges in the same order as a restart from the top.
	npreds := make(map[*program.Block]int, len(f.Blocks))
	for _, b := range f.Blocks {
		for _, s := range b.Succs() {
			npreds[s]++
		}
	}
	n := 0
	for k := 0; k < len(f.Blocks); {
		b := f.Blocks[k]
		s := b.Next
		t := b.Term()
		if t != nil && t.OpCode.JumpOp() == asm.Ja && b.Next == nil {
			s = b.Target
		} else if t != nil {
			k++
			continue
		}
		if s == nil || s == b || s == f.Blocks[0] || npreds[s] != 1 {
			k++
			continue
		}
		for _, x := range b.Succs() {
			npreds[x]--
		}
		for _, x := range s.Succs() {
			npreds[x]--
		}
		if t != nil {
			b.Insns = b.Insns[:len(b.Insns)-1]
		}
		// A fresh array: b's instructions may share one with the
		// blocks laid out after it.
		b.Insns = append(b.Insns[:len(b.Insns):len(b.Insns)], s.Insns...)
		b.Target, b.Next = s.Target, s.Next
		for _, x := range b.Succs() {
			npreds[x]++
		}
		delete(npreds, s)
		f.Blocks = slices.DeleteFunc(f.Blocks, func(x *program.Block) bool { return x == s })
		k = slices.Index(f.Blocks, b)
		n++
	}
	return n
}

// dropJumpsToNext turns a goto to the block laid out next into a
// fall-through.
func dropJumpsToNext(f *program.Func) int {
	n := 0
	for k, b := range f.Blocks {
		t := b.Term()
		if t == nil || t.OpCode.JumpOp() != asm.Ja || k+1 >= len(f.Blocks) || b.Target != f.Blocks[k+1] {
			continue
		}
		b.Insns = b.Insns[:len(b.Insns)-1]
		b.Next, b.Target = b.Target, nil
		n++
	}
	return n
}

// removeUncalled drops the functions that no code reachable from the entry
// function calls or references; the verifier rejects them. It returns the
// names of the removed functions.
func removeUncalled(p *program.Program) []string {
	if len(p.Funcs) == 0 {
		return nil
	}
	reached := map[string]bool{p.Funcs[0].Name: true}
	work := []*program.Func{p.Funcs[0]}
	for len(work) > 0 {
		f := work[len(work)-1]
		work = work[:len(work)-1]
		for _, b := range f.Blocks {
			for _, ins := range b.Insns {
				if !ins.IsFunctionReference() || reached[ins.Reference()] {
					continue
				}
				reached[ins.Reference()] = true
				if g := p.Func(ins.Reference()); g != nil {
					work = append(work, g)
				}
			}
		}
	}
	var removed []string
	kept := p.Funcs[:0]
	for _, f := range p.Funcs {
		if reached[f.Name] {
			kept = append(kept, f)
		} else {
			removed = append(removed, f.Name)
		}
	}
	p.Funcs = kept
	return removed
}

// callArgs gives, for every static function of p, the argument registers
// its code may read before writing them: a call to it reads only those, so
// the caller's definitions of the others are dead. The verifier checks the
// arguments of a global function (and of the entry function) against its
// BTF even when the body ignores them, so those are not listed. Calls
// cannot recurse in BPF, so the iteration from "all five" down is exact.
func callArgs(p *program.Program) map[string]regSet {
	args := map[string]regSet{}
	for _, f := range p.Funcs[1:] {
		if f.BTF == nil || f.BTF.Linkage == btf.StaticFunc {
			args[f.Name] = argRegSet
		}
	}
	for changed := true; changed; {
		changed = false
		for _, f := range p.Funcs[1:] {
			a, ok := args[f.Name]
			if !ok {
				continue
			}
			if in := computeLiveWith(f, args).entry(f) & argRegSet; in != a {
				args[f.Name] = in
				changed = true
			}
		}
	}
	return args
}

// helperArgs is the number of arguments of common helpers, as their
// kernel prototypes declare them: a call reads R1 up to that many, and the
// verifier checks no other argument register. Helpers not listed read all
// five.
var helperArgs = map[asm.BuiltinFunc]int{
	asm.FnMapLookupElem: 2, asm.FnMapUpdateElem: 4, asm.FnMapDeleteElem: 2,
	asm.FnMapPushElem: 3, asm.FnMapPopElem: 2, asm.FnMapPeekElem: 2,
	asm.FnKtimeGetNs: 0, asm.FnKtimeGetBootNs: 0, asm.FnGetPrandomU32: 0, asm.FnGetSmpProcessorId: 0,
	asm.FnTailCall: 3, asm.FnRedirect: 2, asm.FnRedirectMap: 3,
	asm.FnXdpAdjustHead: 2, asm.FnXdpAdjustTail: 2, asm.FnXdpAdjustMeta: 2,
	asm.FnXdpLoadBytes: 4, asm.FnXdpStoreBytes: 4, asm.FnCsumDiff: 5, asm.FnFibLookup: 4,
}

// regSet is a set of registers R0-R10.
type regSet uint16

func regBit(r asm.Register) regSet { return 1 << r }

const (
	argRegSet    = regSet(1<<asm.R1 | 1<<asm.R2 | 1<<asm.R3 | 1<<asm.R4 | 1<<asm.R5)
	callerRegSet = argRegSet | 1<<asm.R0
)

// useDef returns the registers ins reads and writes. Every call is taken
// to read all five argument registers: a global function's arguments are
// checked by the verifier even when the callee ignores them.
func useDef(ins asm.Instruction) (use, def regSet) {
	reg := regBit
	switch cls := ins.OpCode.Class(); {
	case ins.OpCode.IsDWordLoad():
		return 0, reg(ins.Dst)
	case cls.IsALU():
		switch op := ins.OpCode.ALUOp(); {
		case op == asm.Swap || op == asm.Neg:
			return reg(ins.Dst), reg(ins.Dst)
		case op == asm.Mov || op == asm.MovSX8 || op == asm.MovSX16 || op == asm.MovSX32:
			if ins.OpCode.Source() == asm.RegSource {
				use = reg(ins.Src)
			}
			return use, reg(ins.Dst)
		}
		use = reg(ins.Dst)
		if ins.OpCode.Source() == asm.RegSource {
			use |= reg(ins.Src)
		}
		return use, reg(ins.Dst)
	case cls == asm.LdClass:
		use = reg(asm.R6)
		if ins.OpCode.Mode() == asm.IndMode {
			use |= reg(ins.Src)
		}
		return use, callerRegSet
	case cls == asm.LdXClass:
		return reg(ins.Src), reg(ins.Dst)
	case cls == asm.StClass:
		return reg(ins.Dst), 0
	case cls == asm.StXClass && ins.OpCode.Mode() == asm.AtomicMode:
		// Conservative: every atomic may read and write R0 and its
		// source (cmpxchg, fetch variants, load-acquire into Dst).
		return reg(ins.Dst) | reg(ins.Src) | reg(asm.R0), reg(ins.Dst) | reg(ins.Src) | reg(asm.R0)
	case cls == asm.StXClass:
		return reg(ins.Dst) | reg(ins.Src), 0
	case cls.IsJump():
		switch ins.OpCode.JumpOp() {
		case asm.Call:
			return argRegSet, callerRegSet
		case asm.Exit:
			return reg(asm.R0), 0
		case asm.Ja, asm.JCOND:
			return 0, 0
		}
		use = reg(ins.Dst)
		if ins.OpCode.Source() == asm.RegSource {
			use |= reg(ins.Src)
		}
		return use, 0
	}
	// Unknown encodings: assume they read everything.
	return 0x7ff, 0
}

// liveSets is the register liveness of one function, by block position.
type liveSets struct {
	at  map[*program.Block]int
	in  [][]regSet // before every instruction
	out []regSet
}

// after returns the registers live after instruction i of b.
func (l liveSets) after(b *program.Block, i int) regSet {
	k, ok := l.at[b]
	if !ok {
		return 0
	}
	if ins := l.in[k]; i+1 < len(ins) {
		return ins[i+1]
	}
	return l.out[k]
}

// entry returns the registers live at the function's entry.
func (l liveSets) entry(f *program.Func) regSet {
	k, ok := l.at[f.Blocks[0]]
	if !ok {
		return 0
	}
	if ins := l.in[k]; len(ins) > 0 {
		return ins[0]
	}
	return l.out[k]
}

// computeLive solves backward register liveness of f, every call
// reading all five argument registers.
func computeLive(f *program.Func) liveSets { return computeLiveWith(f, nil) }

// computeLiveWith solves backward register liveness of f; a call to a
// function named in args reads only the registers args gives for it (see
// callArgs). The lattice is finite and the transfer monotone, so the
// round-robin iteration ends.
func computeLiveWith(f *program.Func, args map[string]regSet) liveSets {
	// The uses and definitions of every instruction are decoded once and
	// each block is summarized as live-in = (live-out &^ kill) | gen, so
	// that the round-robin iteration (the same visiting order, hence the
	// same least solution) touches no instruction; the per-instruction
	// sets are filled in once at the end.
	type step struct{ use, def regSet }
	total := 0
	for _, b := range f.Blocks {
		total += len(b.Insns)
	}
	steps := make([]step, 0, total)
	at := make(map[*program.Block]int, len(f.Blocks))
	kill := make([]regSet, len(f.Blocks))
	gen := make([]regSet, len(f.Blocks))
	for k, b := range f.Blocks {
		at[b] = k
		first := len(steps)
		for _, in := range b.Insns {
			use, def := useDef(in)
			if in.IsFunctionCall() {
				if a, ok := args[in.Reference()]; ok {
					use = a
				}
			} else if in.IsBuiltinCall() {
				if n, ok := helperArgs[asm.BuiltinFunc(in.Constant)]; ok {
					use = argRegSet & (regSet(1)<<(asm.R1+asm.Register(n)) - regBit(asm.R1))
				}
			}
			steps = append(steps, step{use, def})
		}
		// live = (live &^ def) | use | R10, composed from the last
		// instruction back; the block starts from out | R10.
		var K regSet
		G := regBit(asm.R10)
		for i := len(steps) - 1; i >= first; i-- {
			st := steps[i]
			K |= st.def
			G = (G &^ st.def) | st.use | regBit(asm.R10)
		}
		kill[k], gen[k] = K, G
	}
	blockIn := make([]regSet, len(f.Blocks))
	succIn := func(b *program.Block) regSet {
		var out regSet
		if b.Target != nil {
			if j, ok := at[b.Target]; ok {
				out |= blockIn[j]
			}
		}
		if b.Next != nil && b.Next != b.Target {
			if j, ok := at[b.Next]; ok {
				out |= blockIn[j]
			}
		}
		return out
	}
	for changed := true; changed; {
		changed = false
		for k := len(f.Blocks) - 1; k >= 0; k-- {
			live := (succIn(f.Blocks[k]) &^ kill[k]) | gen[k]
			if live != blockIn[k] {
				blockIn[k] = live
				changed = true
			}
		}
	}
	l := liveSets{at: at, in: make([][]regSet, len(f.Blocks)), out: make([]regSet, len(f.Blocks))}
	sets := make([]regSet, total)
	pos := 0
	for k, b := range f.Blocks {
		out := succIn(b)
		l.out[k] = out
		ins := sets[pos : pos+len(b.Insns) : pos+len(b.Insns)]
		live := out | regBit(asm.R10)
		for i := len(b.Insns) - 1; i >= 0; i-- {
			st := steps[pos+i]
			live = (live &^ st.def) | st.use | regBit(asm.R10)
			ins[i] = live
		}
		pos += len(b.Insns)
		l.in[k] = ins
	}
	return l
}

// stackBits is a set of the 512 bytes of a stack frame; bit i is the byte
// at R10-512+i.
type stackBits [analysis.StackSize / 64]uint64

func (s *stackBits) addRange(lo, hi int64) {
	lo, hi = max(lo, -analysis.StackSize), min(hi, 0)
	for o := lo; o < hi; o++ {
		i := o + analysis.StackSize
		s[i/64] |= 1 << (i % 64)
	}
}

func (s *stackBits) removeRange(lo, hi int64) {
	lo, hi = max(lo, -analysis.StackSize), min(hi, 0)
	for o := lo; o < hi; o++ {
		i := o + analysis.StackSize
		s[i/64] &^= 1 << (i % 64)
	}
}

func (s stackBits) anyIn(lo, hi int64) bool {
	lo, hi = max(lo, -analysis.StackSize), min(hi, 0)
	for o := lo; o < hi; o++ {
		i := o + analysis.StackSize
		if s[i/64]&(1<<(i%64)) != 0 {
			return true
		}
	}
	return false
}

func (s *stackBits) or(t stackBits) {
	for i := range s {
		s[i] |= t[i]
	}
}

var allStack = func() stackBits {
	var s stackBits
	s.addRange(-analysis.StackSize, 0)
	return s
}()

// stackEffect is what one instruction does to the current frame.
type stackEffect struct {
	// reads is nil when the instruction reads no frame byte, &allStack
	// when it may read any (most instructions read none: a set per
	// instruction made most of dce's garbage).
	reads *stackBits
	// store is set for a plain store to known bytes [lo, hi), which a
	// later store of the same bytes makes dead.
	store  bool
	lo, hi int64
}

// addReads adds [lo, hi) to the bytes e reads.
func (e *stackEffect) addReads(lo, hi int64) {
	if e.reads == &allStack {
		return // every byte already
	}
	if e.reads == nil {
		e.reads = new(stackBits)
	}
	e.reads.addRange(lo, hi)
}

// touchesMemory reports whether stackEffects classifies ins: a load,
// store, atomic or call (every other instruction has no frame effect).
func touchesMemory(ins asm.Instruction) bool {
	switch cls := ins.OpCode.Class(); {
	case ins.OpCode.IsDWordLoad() || cls.IsALU() || cls == asm.LdClass:
		return false
	case cls == asm.LdXClass || cls == asm.StClass || cls == asm.StXClass:
		return true
	case cls.IsJump():
		return ins.OpCode.JumpOp() == asm.Call
	}
	return false
}

// stackEffects classifies the frame accesses of every instruction of f with
// the analysis' pointer values. ok is false when a pointer into the frame
// escapes where the classification cannot follow it (stored to memory).
func stackEffects(res *analysis.Result, f *program.Func, args map[string]regSet) (map[*program.Block][]stackEffect, bool) {
	out := map[*program.Block][]stackEffect{}
	var spare *analysis.Walker
	for _, b := range f.Blocks {
		effs := make([]stackEffect, len(b.Insns))
		out[b] = effs
		if !res.Reachable(b) {
			// No states: whatever it does, assume it reads everything.
			for i := range effs {
				effs[i].reads = &allStack
			}
			continue
		}
		// Only loads, stores and calls touch the frame: the walk stops
		// at the last of them, and a block without any needs none.
		if !slices.ContainsFunc(b.Insns, touchesMemory) {
			continue
		}
		w := res.Rewalk(spare, b)
		spare = w
		for i, ins := range b.Insns {
			if !touchesMemory(ins) {
				continue
			}
			st := w.At(i)
			if st == nil {
				effs[i].reads = &allStack
				continue
			}
			e := &effs[i]
			// base reports the frame bytes a pointer register reaches:
			// known when it is a frame pointer at a known offset; every
			// byte when it may point into the frame.
			base := func(r asm.Register, off int64, size int) (lo, hi int64, known, frame bool) {
				v := st.Reg(r)
				switch v.Kind {
				case analysis.PtrStack:
					if v.OffKnown {
						return v.Off + off, v.Off + off + int64(size), true, true
					}
					return 0, 0, false, true
				case analysis.PtrCtx, analysis.PtrPacket, analysis.PtrPacketEnd, analysis.PtrMap,
					analysis.PtrMapValue, analysis.PtrMapData, analysis.PtrParentStack, analysis.PtrFunc, analysis.PtrOther:
					return 0, 0, false, false
				}
				return 0, 0, false, true // unknown: may be the frame
			}
			cls := ins.OpCode.Class()
			size := ins.OpCode.Size().Sizeof()
			switch {
			case ins.OpCode.IsDWordLoad() || cls.IsALU() || cls == asm.LdClass:
			case cls == asm.LdXClass:
				if lo, hi, known, frame := base(ins.Src, int64(ins.Offset), size); known {
					e.addReads(lo, hi)
				} else if frame {
					e.reads = &allStack
				}
			case cls == asm.StXClass && ins.OpCode.Mode() == asm.AtomicMode:
				if lo, hi, known, frame := base(ins.Dst, int64(ins.Offset), size); known {
					e.addReads(lo, hi)
				} else if frame {
					e.reads = &allStack
				}
				if st.Reg(ins.Src).Kind == analysis.PtrStack {
					return nil, false
				}
			case cls == asm.StClass || cls == asm.StXClass:
				if cls == asm.StXClass && st.Reg(ins.Src).Kind == analysis.PtrStack {
					return nil, false // a frame pointer stored to memory
				}
				if lo, hi, known, _ := base(ins.Dst, int64(ins.Offset), size); known && lo >= -analysis.StackSize && hi <= 0 {
					e.store, e.lo, e.hi = true, lo, hi
				}
			case cls.IsJump() && ins.OpCode.JumpOp() == asm.Call:
				// Helpers reach forward from a frame pointer argument; a
				// function, or a helper's callback, may reach anywhere.
				callback := false
				for r := asm.R1; r <= asm.R5; r++ {
					callback = callback || st.Reg(r).Kind == analysis.PtrFunc
				}
				// A static function sees only the arguments it reads
				// (callArgs), a known helper only its declared ones
				// (helperArgs); whatever else the registers hold does
				// not reach them.
				read, static := args[ins.Reference()]
				static = static && ins.IsFunctionCall()
				if n, ok := helperArgs[asm.BuiltinFunc(ins.Constant)]; ok && ins.IsBuiltinCall() {
					read, static = argRegSet&(regSet(1)<<(asm.R1+asm.Register(n))-regBit(asm.R1)), true
				}
				for r := asm.R1; r <= asm.R5; r++ {
					if static && read&regBit(r) == 0 {
						continue
					}
					v := st.Reg(r)
					switch {
					case v.Kind == analysis.PtrStack && v.OffKnown && ins.IsBuiltinCall() && !callback:
						e.addReads(v.Off, 0)
					case v.Kind == analysis.PtrStack || v.Kind == analysis.Unknown:
						e.reads = &allStack
					}
				}
			}
		}
	}
	return out, true
}

// deadStores finds the plain stores to the frame that no later
// instruction reads before the bytes are overwritten or the function
// returns, with a backward byte-level liveness over the frame, and adds
// them to marks.
func deadStores(res *analysis.Result, f *program.Func, args map[string]regSet, marks map[*program.Block][]int) {
	effs, ok := stackEffects(res, f, args)
	if !ok {
		return
	}
	// Each block's transfer is live-in = (live-out &^ kill) | gen, built
	// once from its instructions, so that the round-robin iteration (same
	// order, same least solution) touches no instruction; the dead stores
	// are picked in one last sweep.
	at := make(map[*program.Block]int, len(f.Blocks))
	kill := make([]stackBits, len(f.Blocks))
	gen := make([]stackBits, len(f.Blocks))
	for k, b := range f.Blocks {
		at[b] = k
		var K, G stackBits
		for i := len(b.Insns) - 1; i >= 0; i-- {
			e := &effs[b][i]
			if e.store {
				var st stackBits
				st.addRange(e.lo, e.hi)
				for w := range K {
					K[w] |= st[w]
					G[w] &^= st[w]
				}
			}
			if e.reads != nil {
				G.or(*e.reads)
			}
		}
		kill[k], gen[k] = K, G
	}
	in := make([]stackBits, len(f.Blocks))
	outOf := func(b *program.Block) stackBits {
		var out stackBits
		for _, s := range b.Succs() {
			if j, ok := at[s]; ok {
				out.or(in[j])
			}
		}
		return out
	}
	for changed := true; changed; {
		changed = false
		for k := len(f.Blocks) - 1; k >= 0; k-- {
			live := outOf(f.Blocks[k])
			for w := range live {
				live[w] = live[w]&^kill[k][w] | gen[k][w]
			}
			if live != in[k] {
				in[k] = live
				changed = true
			}
		}
	}
	for _, b := range f.Blocks {
		live := outOf(b)
		var dead []int
		for i := len(b.Insns) - 1; i >= 0; i-- {
			e := &effs[b][i]
			if e.store {
				if !live.anyIn(e.lo, e.hi) {
					dead = append(dead, i)
				}
				live.removeRange(e.lo, e.hi)
			}
			if e.reads != nil {
				live.or(*e.reads)
			}
		}
		marks[b] = append(marks[b], dead...)
	}
}
