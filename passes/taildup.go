package passes

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
)

// Budgets of taildup. The verifier walks every copy, and constprop's
// guarded fallback doubles what it walks again, so the pass stays far
// below the kernel's limits (1M verified instructions, 8K states per
// instruction); beyond them optimize retries without constprop, and
// taildup, which only pays through constprop, goes with it.
const (
	// tailDupMaxAdded is the most instructions the pass adds in all.
	tailDupMaxAdded = 4096
	// tailDupMaxRegion is the largest tail (with its callees) copied.
	tailDupMaxRegion = 1024
	// tailDupMaxCopies is the most copies of one merge point.
	tailDupMaxCopies = 16
	// tailDupMaxConstRegion is the largest tail copied for constant
	// gains alone: a known number (a parsed header offset, a flag, a
	// missed lookup's NULL) usually decides a branch or two, which does
	// not pay for copying much code, where a pointer into a value cache
	// turns every field load of the tail into an immediate.
	tailDupMaxConstRegion = 64
	// tailDupRounds bounds the duplicate/re-analyse iterations.
	tailDupRounds = 8
)

// tailDup is tail duplication for constant propagation. At a block where
// paths with different known values meet (a compare chain of inlined
// entries merging into the code after the lookup: each hit yields its own
// pointer into the frozen value cache), the analysis joins the values and
// constprop can fold nothing downstream. tailDup gives every such
// predecessor its own copy of the rest of the function from the merge
// point on (every block reachable from it, which must not loop back), so
// that in each copy the value is the predecessor's and constprop folds
// the loads, branches and constant-key lookups that depend on it. The
// static functions the tail calls are cloned per copy too, since the
// analysis joins a callee's call sites. Duplication changes no behaviour:
// every path executes the same instructions as before.
//
// A merge is worth it when some register live into it is sharper on the
// edge from a predecessor than at the merge (a constant, or a pointer at a
// known offset into an array value) and the tail reads it before
// redefining it: as a load's base, a branch operand or a call argument.
// Merges with pointer gains go first; constant gains alone only pay for
// short tails. Budgets: tailDupMaxAdded, tailDupMaxRegion,
// tailDupMaxConstRegion, tailDupMaxCopies. The pass runs only when constprop
// is selected: nothing else folds what it exposes.
func tailDup(c *Context) error {
	if c.Opts.Passes != nil && !slices.Contains(c.Opts.Passes, "constprop") {
		c.skipped(c.Prog.Funcs[0].Name, -1, "", "constprop is not selected: duplicated tails would fold nothing")
		return nil
	}
	td := &tailDuplicator{c: c}
	for round := 0; round < tailDupRounds; round++ {
		res, err := analysis.Analyze(frozenOnly(c.Coll), c.Prog, analysis.Options{ConstRodata: true})
		if err != nil {
			return err
		}
		m, ok := td.pick(res)
		if !ok {
			// Nothing changes the program from here to constprop's
			// first analysis, the same one.
			c.frozen = res
			break
		}
		td.duplicate(m, res)
		res.Release() // the next round analyses the changed program
	}
	for _, s := range td.skips {
		c.skipped(s.fn, s.block, "", "%s", s.msg)
	}
	return nil
}

type tailDuplicator struct {
	c     *Context
	added int
	seq   int
	skips []tdSkip
	// tried marks merge blocks already decided, so that a merge left
	// alone is reported once.
	tried map[*program.Block]bool
}

type tdSkip struct {
	fn    string
	block int
	msg   string
}

// tdMerge is one merge point and the predecessors that get a copy.
type tdMerge struct {
	f      *program.Func
	m      *program.Block
	preds  []*program.Block
	gains  []string // per predecessor, what it knows
	region []*program.Block
	callee []*program.Func
	size   int
	ptr    bool
}

// pick returns the most promising merge point that fits the budget:
// the first in layout order with a pointer gain, else the first with a
// constant gain.
func (td *tailDuplicator) pick(res *analysis.Result) (tdMerge, bool) {
	if td.tried == nil {
		td.tried = map[*program.Block]bool{}
	}
	var best tdMerge
	found := false
	for _, f := range td.c.Prog.Funcs {
		preds := f.Preds()
		for _, m := range f.Blocks {
			if len(preds[m]) < 2 || m == f.Blocks[0] || td.tried[m] {
				continue
			}
			cand, ok := td.candidate(res, f, m, preds[m])
			if !ok {
				continue
			}
			if !found || (cand.ptr && !best.ptr) {
				best, found = cand, true
			}
			if best.ptr {
				return best, true
			}
		}
	}
	return best, found
}

// candidate evaluates merge block m of f.
func (td *tailDuplicator) candidate(res *analysis.Result, f *program.Func, m *program.Block, preds []*program.Block) (tdMerge, bool) {
	in := res.StateBefore(m, 0)
	if in == nil {
		return tdMerge{}, false
	}
	live := res.BlockLiveIn(m)
	type gain struct {
		pred *program.Block
		what string
		ptr  bool
	}
	var gains []gain
	var region []*program.Block
	useless := false
	var spare *analysis.Walker
	for _, p := range preds {
		// StateBefore(p, len(p.Insns)) in one reused state.
		w := res.Rewalk(spare, p)
		if w == nil {
			continue
		}
		spare = w
		out := w.At(len(p.Insns))
		g := gain{pred: p}
		var what []string
		var ptrs, consts regSet
		for r := asm.R0; r < asm.R10; r++ {
			if live&(1<<r) == 0 {
				continue
			}
			v, w := out.Reg(r), in.Reg(r)
			isPtr, sharp := td.sharper(res, v, w)
			if !sharp {
				continue
			}
			if region == nil {
				var ok bool
				if region, ok = tailRegion(f, m); !ok {
					td.leave(f, m, "its tail loops back to it or contains a loop")
					return tdMerge{}, false
				}
			}
			if !usedBeforeRedef(region[0], r, isPtr) {
				continue
			}
			what = append(what, fmt.Sprintf("r%d=%v", r, v))
			g.ptr = g.ptr || isPtr
			if isPtr {
				ptrs |= regBit(r)
			} else {
				consts |= regBit(r)
			}
		}
		if len(what) > 0 && foldScore(region, ptrs, consts) == 0 {
			useless = true
			continue
		}
		if len(what) > 0 {
			g.what = strings.Join(what, ",")
			gains = append(gains, g)
		}
	}
	if len(gains) == 0 {
		if useless {
			td.leave(f, m, "the known values decide no branch and feed no key, argument or store in the tail")
		}
		return tdMerge{}, false
	}
	cand := tdMerge{f: f, m: m, region: region}
	for _, b := range region {
		cand.size += len(b.Insns)
	}
	cand.callee = staticCallees(td.c.Prog, region)
	for _, g := range cand.callee {
		for _, b := range g.Blocks {
			cand.size += len(b.Insns)
		}
	}
	// Constants alone pay only for a short tail.
	kept := gains[:0:0]
	for _, g := range gains {
		if g.ptr || cand.size <= tailDupMaxConstRegion {
			kept = append(kept, g)
		}
	}
	if len(kept) == 0 {
		td.leave(f, m, fmt.Sprintf("only constants are known and the tail has %d instructions, over the %d-instruction limit for them", cand.size, tailDupMaxConstRegion))
		return tdMerge{}, false
	}
	if len(kept) == len(preds) {
		// One predecessor keeps the original tail: one that knows
		// only constants if there is one, else the last.
		drop := len(kept) - 1
		for i, g := range kept {
			if !g.ptr {
				drop = i
			}
		}
		kept = slices.Delete(kept, drop, drop+1)
	}
	for _, g := range kept {
		cand.preds = append(cand.preds, g.pred)
		cand.gains = append(cand.gains, g.what)
		cand.ptr = cand.ptr || g.ptr
	}
	switch {
	case cand.size > tailDupMaxRegion:
		td.leave(f, m, fmt.Sprintf("tail of %d instructions is over the %d-instruction limit", cand.size, tailDupMaxRegion))
		return tdMerge{}, false
	case len(cand.preds) > tailDupMaxCopies:
		td.leave(f, m, fmt.Sprintf("%d predecessors with known values, more than %d copies", len(cand.preds), tailDupMaxCopies))
		return tdMerge{}, false
	case td.added+cand.size*len(cand.preds) > tailDupMaxAdded:
		td.leave(f, m, fmt.Sprintf("%d copies of %d instructions would exceed the budget of %d added instructions (%d used)", len(cand.preds), cand.size, tailDupMaxAdded, td.added))
		return tdMerge{}, false
	}
	return cand, true
}

// leave records a merge point the pass does not duplicate.
func (td *tailDuplicator) leave(f *program.Func, m *program.Block, why string) {
	td.tried[m] = true
	td.skips = append(td.skips, tdSkip{fn: f.Name, block: m.ID, msg: "merge point not duplicated: " + why})
}

// sharper reports whether v, a register's value on the edge from a
// predecessor, says more than w, its value at the merge, in a way
// constprop can use: a constant, or a non-NULL pointer at a known offset
// into an array value (a frozen cache or an element looked up with a
// constant index).
func (td *tailDuplicator) sharper(res *analysis.Result, v, w analysis.Value) (isPtr, ok bool) {
	switch {
	case v.IsConst():
		return false, !w.IsConst()
	case (v.Kind == analysis.PtrMapData || v.Kind == analysis.PtrMapValue) && v.OffKnown && !v.MaybeNull:
		ms := td.c.Coll.Maps[v.Map]
		if ms == nil || ms.Type != ebpf.Array {
			return true, false
		}
		if v.Kind == analysis.PtrMapValue {
			os := res.Origins(v)
			if len(os) == 0 {
				return true, false
			}
			for _, o := range os {
				if o.Key == nil || !o.Key.Const {
					return true, false
				}
			}
		}
		same := w.Kind == v.Kind && w.Map == v.Map && w.OffKnown && w.Off == v.Off && !w.MaybeNull
		if same && v.Kind == analysis.PtrMapValue {
			same = slices.Equal(siteIDs(res.Origins(v)), siteIDs(res.Origins(w)))
		}
		return true, !same
	}
	return false, false
}

func siteIDs(s []*analysis.Site) []int {
	out := make([]int, len(s))
	for i, x := range s {
		out[i] = x.ID
	}
	return out
}

// tailRegion returns the blocks reachable from m in f's layout order, m
// first; ok is false when they contain a cycle.
func tailRegion(f *program.Func, m *program.Block) ([]*program.Block, bool) {
	const (
		white = iota
		grey
		black
	)
	color := map[*program.Block]int{}
	cyclic := false
	var visit func(b *program.Block)
	visit = func(b *program.Block) {
		color[b] = grey
		for _, s := range b.Succs() {
			switch color[s] {
			case grey:
				cyclic = true
			case white:
				visit(s)
			}
		}
		color[b] = black
	}
	visit(m)
	if cyclic {
		return nil, false
	}
	out := []*program.Block{m}
	for _, b := range f.Blocks {
		if b != m && color[b] == black {
			out = append(out, b)
		}
	}
	return out, true
}

// foldScore estimates what constprop gains in a copy of the tail (region,
// acyclic, in layout order with the merge block first) when the registers
// ptrs hold known pointers into array values and consts known numbers at
// its start. Loads through a known pointer and ALU operations on known
// operands give known numbers; the score counts the conditional jumps such
// numbers decide (a known pointer's NULL check excepted: every chain hit
// has one) and the known numbers stored to the stack (lookup keys) or
// passed to a function. A value that only meets packet data folds one
// load and decides nothing: not worth a copy of the tail.
func foldScore(region []*program.Block, ptrs, consts regSet) int {
	type known struct{ ptr, num regSet }
	in := map[*program.Block]*known{region[0]: {ptrs, consts}}
	score := 0
	for _, b := range region {
		k := in[b]
		if k == nil {
			continue
		}
		ptr, num := k.ptr, k.num
		for _, ins := range b.Insns {
			cls := ins.OpCode.Class()
			srcKnown := ins.OpCode.Source() == asm.ImmSource || num&regBit(ins.Src) != 0
			_, def := useDef(ins)
			switch {
			case cls == asm.LdXClass && ptr&regBit(ins.Src) != 0:
				ptr, num = ptr&^def, num|def
				continue
			case cls.IsALU() && ins.OpCode.ALUOp() == asm.Mov && ins.OpCode.Source() == asm.RegSource:
				p, n := ptr&regBit(ins.Src) != 0, num&regBit(ins.Src) != 0
				ptr, num = ptr&^def, num&^def
				if p {
					ptr |= def
				}
				if n {
					num |= def
				}
				continue
			case cls.IsALU() && num&regBit(ins.Dst) != 0 && srcKnown:
				continue // stays known
			case cls == asm.StXClass && ins.Dst == asm.R10 && num&regBit(ins.Src) != 0:
				score++
			case cls.IsJump() && ins.OpCode.JumpOp() == asm.Call && ins.IsFunctionCall():
				if (ptr|num)&argRegSet != 0 {
					score++
				}
			case cls.IsJump() && ins.OpCode.JumpOp() != asm.Call && ins.OpCode.JumpOp() != asm.Exit && ins.OpCode.JumpOp() != asm.Ja:
				if num&regBit(ins.Dst) != 0 && srcKnown {
					score++
				}
			}
			ptr, num = ptr&^def, num&^def
			if ins.OpCode.JumpOp() == asm.Call {
				ptr, num = ptr&^callerRegSet, num&^callerRegSet
			}
		}
		for _, s := range b.Succs() {
			if t := in[s]; t == nil {
				in[s] = &known{ptr, num}
			} else {
				t.ptr &= ptr
				t.num &= num
			}
		}
	}
	return score
}

// usedBeforeRedef reports whether some path from the start of m reads r
// before writing it: as the base of a load (pointers), as a branch operand
// or as a call argument (both). It follows every path from m.
func usedBeforeRedef(m *program.Block, r asm.Register, isPtr bool) bool {
	seen := map[*program.Block]bool{}
	var walk func(b *program.Block) bool
	walk = func(b *program.Block) bool {
		if seen[b] {
			return false
		}
		seen[b] = true
		for _, ins := range b.Insns {
			cls := ins.OpCode.Class()
			switch {
			case cls == asm.LdXClass && ins.Src == r && isPtr:
				return true
			case cls.IsJump() && ins.OpCode.JumpOp() == asm.Call:
				if ins.IsFunctionCall() && r >= asm.R1 && r <= asm.R5 {
					return true
				}
			case cls.IsJump() && ins.OpCode.JumpOp() != asm.Exit && ins.OpCode.JumpOp() != asm.Ja:
				if ins.Dst == r || (ins.OpCode.Source() == asm.RegSource && ins.Src == r) {
					return true
				}
			case cls.IsALU() && !isPtr && ins.OpCode.ALUOp() != asm.Mov && ins.Dst == r:
				// Arithmetic on a known constant folds too; keep
				// following it through the redefinition below.
				return true
			}
			if _, def := useDef(ins); def&regBit(r) != 0 {
				return false
			}
		}
		for _, s := range b.Succs() {
			if walk(s) {
				return true
			}
		}
		return false
	}
	return walk(m)
}

// callSites finds the calls of function name in blocks: the last one's
// block and index, and how many there are.
func callSites(blocks []*program.Block, name string) (*program.Block, int, int) {
	var at *program.Block
	idx, n := 0, 0
	for _, b := range blocks {
		for i, ins := range b.Insns {
			if ins.IsFunctionCall() && ins.Reference() == name {
				at, idx = b, i
				n++
			}
		}
	}
	return at, idx, n
}

// staticCallees lists the static functions called from the blocks, which
// get a clone per copy: the analysis joins a function's call sites. A
// global function is verified on its own, with unknown arguments, so a
// clone of it would fold nothing.
func staticCallees(p *program.Program, blocks []*program.Block) []*program.Func {
	var out []*program.Func
	for _, b := range blocks {
		for _, ins := range b.Insns {
			if !ins.IsFunctionCall() {
				continue
			}
			g := p.Func(ins.Reference())
			if g == nil || g == p.Funcs[0] || slices.Contains(out, g) {
				continue
			}
			if g.BTF != nil && g.BTF.Linkage != btf.StaticFunc {
				continue
			}
			out = append(out, g)
		}
	}
	return out
}

// duplicate gives every chosen predecessor its own copy of the tail and
// of the static functions it calls.
func (td *tailDuplicator) duplicate(md tdMerge, res *analysis.Result) {
	p := td.c.Prog
	td.tried[md.m] = true
	if td.c.unduplicated == nil {
		td.c.unduplicated = p.Clone()
	}
	depth := func(name string) (int, bool) {
		u := res.Stack(name)
		if u == nil || u.All {
			return 0, false
		}
		return -u.Depth, true
	}
	callerDepth, callerOK := depth(md.f.Name)
	// Every other function's frame, as if they all nested below the
	// inlined one: a bound, not the verifier's exact sum along chains.
	others := 0
	for _, g := range p.Funcs {
		if g != md.f {
			d, ok := depth(g.Name)
			if !ok {
				callerOK = false
			}
			others += roundFrame(d)
		}
	}
	for k, pred := range md.preds {
		td.seq++
		rename := map[string]string{}
		for _, g := range md.callee {
			name := fmt.Sprintf("%s_td%d", g.Name, td.seq)
			for p.Func(name) != nil {
				td.seq++
				name = fmt.Sprintf("%s_td%d", g.Name, td.seq)
			}
			rename[g.Name] = name
		}
		copies := cloneBlocks(p, md.region, rename)
		if pred.Target == md.m {
			pred.Target = copies[0]
		}
		if pred.Next == md.m {
			pred.Next = copies[0]
		}
		// A predecessor that falls into the merge falls into its copy,
		// laid out right after it; one that jumps (a compare chain's
		// hit ends in a goto) jumps to its copy at the end of the
		// function, which keeps the chain's compares together.
		if pred.Next == copies[0] {
			at := slices.Index(md.f.Blocks, pred) + 1
			md.f.Blocks = slices.Insert(md.f.Blocks, at, copies...)
		} else {
			md.f.Blocks = append(md.f.Blocks, copies...)
		}
		// A callee called once in the copy is inlined there, else it
		// gets a clone of its own.
		var inlined, cloned []string
		for _, g := range md.callee {
			b, i, n := callSites(copies, rename[g.Name])
			gd, ok := depth(g.Name)
			if n == 1 && ok && callerOK && inlineCall(p, md.f, b, i, g, callerDepth, gd, others) {
				inlined = append(inlined, g.Name)
				continue
			}
			ng := cloneFunc(p, g, rename[g.Name], nil)
			p.Funcs = append(p.Funcs, ng)
			cloned = append(cloned, ng.Name)
		}
		n := md.size
		td.added += n
		msg := fmt.Sprintf("tail of %d instructions (%d blocks", n, len(md.region))
		if len(inlined) > 0 {
			msg += ", callee " + strings.Join(inlined, ", ") + " inlined"
		}
		if len(cloned) > 0 {
			msg += ", callee clones " + strings.Join(cloned, ", ")
		}
		msg += fmt.Sprintf(") duplicated for predecessor b%d, where %s", pred.ID, md.gains[k])
		td.c.changed(md.f.Name, md.m.ID, "", "%s", msg)
	}
}
