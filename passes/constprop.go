package passes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// constPropRounds bounds the fold/re-analyse iterations; every round that
// changes something makes more values constant, and real programs settle
// in a handful.
const constPropRounds = 12

// constProp is constant propagation and folding on the lifted program,
// driven by the analysis (run with .rodata constants):
//   - loads from frozen .rodata become immediates, without a guard: the
//     kernel freezes .rodata at load, so the value holds for the program's
//     lifetime;
//   - loads at a known offset from an element of an array map that only
//     the control plane writes (a lookup with a constant index, or a direct
//     value pointer into a single-element array) become immediates of the
//     snapshot value, behind the map's guard;
//   - ALU operations, stack reloads and 64-bit immediates whose result
//     the analysis knows become a mov of that constant;
//   - conditional jumps the operands decide become a goto or fall
//     through, and so does the NULL check of an array lookup with a
//     constant in-range index (such a lookup never fails).
//
// Guards: when any guarded value was folded, the entry function checks the
// guard of every map it relied on once, at its entry, and on a version
// mismatch runs an unmodified copy of the code as it was before this pass.
// Specialized functions and their callers get unmodified clones for that
// path, so the fallback never enters specialized code.
func constProp(c *Context) error {
	if fn, why := coreImmediates(c.Prog); why != "" {
		c.skipped(fn, -1, "", "%s", why)
		return nil
	}
	cp := &propagator{c: c, guarded: map[string]bool{}, touched: map[string]bool{}, skips: map[Remark]bool{}, plain: map[string]int{}}
	before := c.unduplicated
	c.unduplicated = nil
	if before == nil {
		before = c.Prog.Clone()
	}
	// else taildup ran right before: its copies change no behaviour, and
	// a fallback without them halves what the verifier walks.
	cp.sharedBefore = c.Guards.Guarded()
	cp.written = c.writtenByOthers()
	frozen := c.frozen
	c.frozen = nil
	if _, err := cp.rounds(analysis.Options{}, frozen); err != nil {
		return err
	}
	if err := cp.specializeIngress(); err != nil {
		return err
	}
	if len(cp.touched) > 0 {
		// The verifier rejects unreachable code: do not leave it to dce,
		// which may not be selected. Functions go only once the fallback
		// (which may still call them) is in place.
		for _, f := range c.Prog.Funcs {
			removeUnreachable(f)
		}
	}
	if len(cp.guarded) > 0 || cp.ingress != 0 {
		if err := cp.addFallback(before); err != nil {
			return err
		}
	}
	if len(cp.touched) > 0 {
		for _, name := range removeUncalled(c.Prog) {
			c.changed(name, -1, "", "function removed: folding left no call or reference to it")
		}
	}
	for _, f := range c.Prog.Funcs {
		if n := cp.plain[f.Name]; n > 0 {
			c.Remarks = append(c.Remarks, Remark{Pass: c.pass, Func: f.Name, Block: f.Blocks[0].ID, Applied: true,
				Message: fmt.Sprintf("%d instructions with a known result became a mov of the constant", n)})
		}
	}
	skips := make([]Remark, 0, len(cp.skips))
	for r := range cp.skips {
		skips = append(skips, r)
	}
	sort.Slice(skips, func(i, j int) bool { return skips[i].String() < skips[j].String() })
	c.Remarks = append(c.Remarks, skips...)
	return nil
}

// propagator is the state of one constprop run.
type propagator struct {
	c *Context
	// written names maps another program of the collection may write.
	written map[string]bool
	// guarded names the maps whose snapshot values were folded.
	guarded map[string]bool
	// touched names the functions the pass changed.
	touched      map[string]bool
	sharedBefore []string
	// origRefs names what the original instructions reference.
	origRefs map[string]bool
	skips    map[Remark]bool
	// plain counts, per function, the folds without a remark of their own.
	plain map[string]int
	// ingress is the ingress_ifindex the code was specialized to, 0 if
	// none: the entry then checks the context.
	ingress uint32
}

// specializeIngress folds, once everything else is folded, what the
// program derives from the ingress interface it is attached to
// (Options.Ingress): every rewrite from here on relies on it, so any fold
// makes the entry check ctx->ingress_ifindex (addFallback).
func (cp *propagator) specializeIngress() error {
	c := cp.c
	in := c.Opts.Ingress
	if in == 0 || c.Prog.Spec == nil || c.Prog.Spec.Type != ebpf.XDP || in > math.MaxInt32 {
		return nil
	}
	n, err := cp.rounds(analysis.Options{Ingress: in}, nil)
	if n > 0 {
		cp.ingress = in
	}
	return err
}

// rounds runs folding rounds until one changes nothing (or constPropRounds),
// each on a fresh analysis with .rodata constants and opts; first, if not
// nil, is the first round's. It returns how many rewrites it made.
func (cp *propagator) rounds(opts analysis.Options, first *analysis.Result) (int, error) {
	opts.ConstRodata, opts.NoLiveness = true, true // folding asks for no liveness
	total := 0
	for round := 0; round < constPropRounds; round++ {
		res := first
		if round > 0 || res == nil {
			var err error
			if res, err = analysis.Analyze(frozenOnly(cp.c.Coll), cp.c.Prog, opts); err != nil {
				return total, err
			}
		}
		// Only the last round's reasons hold for the final code: a load
		// an early round could not fold may fold once its index does.
		clear(cp.skips)
		n := cp.round(res)
		res.Release() // this pass's own, used by no one else
		total += n
		if n == 0 {
			break
		}
	}
	return total, nil
}

// edit is one rewrite decided from one analysis result.
type edit struct {
	f     *program.Func
	b     *program.Block
	i     int
	ins   asm.Instruction // the replacement, for instruction folds
	jump  int             // 0: instruction fold; 1: branch always taken; -1: never taken
	mapNm string
	msg   string // remark; empty for plain arithmetic folds
	guard string // the map whose guard the fold relies on
}

// round folds everything one analysis result proves and reports how many
// rewrites it made.
func (cp *propagator) round(res *analysis.Result) int {
	var edits []edit
	var spare *analysis.Walker
	for _, f := range cp.c.Prog.Funcs {
		for _, b := range f.Blocks {
			// One walk per block (fold asks for the states of the
			// block's instructions in increasing order), all in one
			// reused state.
			w := res.Rewalk(spare, b)
			if w == nil {
				continue
			}
			spare = w
			for i := range b.Insns {
				if e, ok := cp.fold(res, w, f, b, i); ok {
					edits = append(edits, e)
				}
			}
		}
	}
	// Apply from the end of each block so that indices stay valid.
	sort.SliceStable(edits, func(i, j int) bool { return edits[i].i > edits[j].i })
	for _, e := range edits {
		cp.touched[e.f.Name] = true
		if e.guard != "" {
			cp.guarded[e.guard] = true
		}
		switch e.jump {
		case 0:
			e.b.Insns[e.i] = e.ins
		case 1:
			j := e.b.Insns[e.i]
			j.OpCode, j.Src, j.Dst, j.Offset, j.Constant = gotoOpCode, 0, 0, 0, 0
			e.b.Insns[e.i] = clearRef(j)
			e.b.Next = nil
		case -1:
			e.b.Insns = e.b.Insns[:e.i]
			e.b.Target = nil
		}
		if e.msg != "" {
			cp.c.changed(e.f.Name, e.b.ID, e.mapNm, "%s", e.msg)
		} else {
			cp.plain[e.f.Name]++
			cp.c.changes++
			cp.c.analysis = nil
		}
	}
	return len(edits)
}

var gotoOpCode = asm.OpCode(asm.JumpClass).SetJumpOp(asm.Ja)

// fold decides the rewrite of instruction i of b, if any; w is the walker
// over b, not yet past the state before instruction i+1.
func (cp *propagator) fold(res *analysis.Result, w *analysis.Walker, f *program.Func, b *program.Block, i int) (edit, bool) {
	ins := b.Insns[i]
	e := edit{f: f, b: b, i: i}
	if i == len(b.Insns)-1 && b.Term() != nil {
		taken, why, ok := cp.decide(res, w.At(len(b.Insns)-1), b)
		if !ok {
			return e, false
		}
		e.jump, e.msg = -1, "branch never taken ("+why+"): falls through"
		if taken {
			e.jump, e.msg = 1, "branch always taken ("+why+"): goto"
		}
		return e, true
	}
	cls := ins.OpCode.Class()
	switch {
	case ins.OpCode.IsDWordLoad():
		if ins.Src != asm.R0 || ins.Reference() != "" {
			return e, false
		}
	case cls.IsALU():
	case cls == asm.LdXClass && (ins.OpCode.Mode() == asm.MemMode || ins.OpCode.Mode() == asm.MemSXMode):
		if m, ok := cp.mapLoad(res, f, b, i); ok {
			return m, true
		}
	default:
		return e, false
	}
	fromCtx := false
	if cls == asm.LdXClass {
		if st := w.At(i); st != nil {
			fromCtx = st.Reg(ins.Src).Kind == analysis.PtrCtx
		}
	}
	after := w.At(i + 1)
	if after == nil {
		return e, false
	}
	v := after.Reg(ins.Dst)
	if !v.IsConst() {
		return e, false
	}
	mov, ok := movImm(ins.Dst, v.Const)
	if !ok || sameMov(ins, mov) {
		return e, false
	}
	e.ins = mov.WithMetadata(ins.Metadata)
	if cls == asm.LdXClass {
		for _, s := range res.SitesAt(b, i) {
			if s.Kind == analysis.SiteLoad && isRodata(s.Map) {
				e.mapNm = s.Map
				e.msg = fmt.Sprintf("load of %d bytes at offset %d folded to %#x; guard elided: .rodata is frozen", s.Size, s.Offset, v.Const)
			}
		}
		if e.msg == "" {
			e.msg = fmt.Sprintf("reload of a constant stack slot folded to %#x", v.Const)
			if fromCtx {
				e.msg = fmt.Sprintf("load of ingress_ifindex folded to %d", v.Const)
			}
		}
	}
	return e, true
}

// mapLoad folds a load through a pointer into a control-plane-only array
// element to the snapshot value. A load it cannot fold gets a remark.
func (cp *propagator) mapLoad(res *analysis.Result, f *program.Func, b *program.Block, i int) (edit, bool) {
	ins := b.Insns[i]
	var s *analysis.Site
	for _, x := range res.SitesAt(b, i) {
		if x.Kind == analysis.SiteLoad {
			s = x
		}
	}
	if s == nil || s.Map == "" || isRodata(s.Map) || s.Map == guard.MapName {
		// Not map memory, a .rodata constant (folded from the analysis),
		// or a guard: reading the live version is the guard's whole point.
		return edit{}, false
	}
	skip := func(format string, args ...any) (edit, bool) {
		cp.skips[Remark{Pass: cp.c.pass, Func: f.Name, Block: b.ID, Map: s.Map, Message: "load not folded: " + fmt.Sprintf(format, args...)}] = true
		return edit{}, false
	}
	ms := cp.c.Coll.Maps[s.Map]
	mi := res.Maps[s.Map]
	switch {
	case ms == nil || mi == nil:
		return skip("map not in the collection")
	case strings.HasPrefix(s.Map, "."):
		return skip("global data other than .rodata can be written from user space without the guard API")
	case !mi.ReadOnly:
		return skip("the data plane may write this map")
	case cp.written[s.Map]:
		return skip("another program of the collection may write this map")
	case ms.Type == ebpf.PerCPUArray:
		return skip("per-CPU array: every CPU has its own value")
	case ms.Type != ebpf.Array:
		return skip("only array values are folded: a %s lookup's value depends on which keys exist", ms.Type)
	case !s.OffsetKnown:
		return skip("offset in the value is not known")
	case cp.c.State == nil:
		return skip("no map snapshot")
	}
	idx, ok := uint32(0), true
	if len(s.Origins) == 0 {
		// A direct value pointer (ld_imm64 BPF_PSEUDO_MAP_VALUE), which
		// the kernel allows into single-element arrays only.
		if ms.MaxEntries != 1 {
			return skip("direct value pointer into a %d-element array", ms.MaxEntries)
		}
	} else {
		idx, ok = cp.commonIndex(res, s)
		if !ok {
			return skip("the value pointer may come from lookups with different or non-constant indices")
		}
	}
	size := ins.OpCode.Size().Sizeof()
	if idx >= ms.MaxEntries || s.Offset < 0 || s.Offset+int64(size) > int64(ms.ValueSize) {
		return skip("index %d, offset %d out of the array", idx, s.Offset)
	}
	val, ok := arrayValue(cp.c.State, s.Map, ms, idx)
	if !ok {
		return skip("snapshot has no usable value for index %d", idx)
	}
	var c uint64
	for k := range size {
		c |= uint64(val[int(s.Offset)+k]) << (8 * k)
	}
	if ins.OpCode.Mode() == asm.MemSXMode && size < 8 {
		shift := uint(64 - 8*size)
		c = uint64(int64(c<<shift) >> shift)
	}
	mov, ok := movImm(ins.Dst, c)
	if !ok {
		return skip("value %#x does not fit a 32-bit immediate", c)
	}
	e := edit{f: f, b: b, i: i, ins: mov.WithMetadata(ins.Metadata), mapNm: s.Map, guard: s.Map,
		msg: fmt.Sprintf("load of element %d offset %d (%d bytes) folded to snapshot value %#x behind guard", idx, s.Offset, size, c)}
	if cp.ownMap(s.Map, ms) {
		e.guard = ""
		e.msg = fmt.Sprintf("load of element %d offset %d (%d bytes) folded to %#x; guard elided: a program-read-only map added by an earlier pass, whose contents only this candidate sets", idx, s.Offset, size, c)
	}
	return e, true
}

// ownMap reports whether name is a map an earlier pass added (the
// original program never references it) that programs cannot write:
// nobody but this candidate knows it, so its contents never change.
func (cp *propagator) ownMap(name string, ms *ebpf.MapSpec) bool {
	if ms.Flags&bpfFRdonlyProg == 0 || cp.c.Prog.Spec == nil {
		return false
	}
	if cp.origRefs == nil {
		cp.origRefs = map[string]bool{}
		for _, ins := range cp.c.Prog.Spec.Instructions {
			if r := ins.Reference(); r != "" {
				cp.origRefs[r] = true
			}
		}
	}
	return !cp.origRefs[name]
}

// commonIndex returns the index every lookup the load's pointer may come
// from uses, if they all use the same constant index into s's map.
func (cp *propagator) commonIndex(res *analysis.Result, s *analysis.Site) (uint32, bool) {
	var idx uint32
	for k, id := range s.Origins {
		o := res.Site(id)
		if o == nil || o.Kind != analysis.SiteLookup || o.Map != s.Map || o.Key == nil || !o.Key.Const || len(o.Key.Bytes) != 4 {
			return 0, false
		}
		var kb [4]byte
		for j := range kb {
			kb[j] = o.Key.Bytes[j].Value
		}
		v := binary.LittleEndian.Uint32(kb[:])
		if k > 0 && v != idx {
			return 0, false
		}
		idx = v
	}
	return idx, len(s.Origins) > 0
}

// decide evaluates the terminator of b when the analysis determines it;
// st is the state before the terminator.
func (cp *propagator) decide(res *analysis.Result, st *analysis.State, b *program.Block) (taken bool, why string, ok bool) {
	term := b.Insns[len(b.Insns)-1]
	op := term.OpCode.JumpOp()
	switch op {
	case asm.Exit, asm.Ja, asm.JCOND, asm.Call, asm.InvalidJumpOp:
		return false, "", false
	}
	if st == nil {
		return false, "", false
	}
	is32 := term.OpCode.Class() == asm.Jump32Class
	dst := st.Reg(term.Dst)
	srcConst, srcIsConst := uint64(term.Constant), true
	var src analysis.Value
	if term.OpCode.Source() == asm.RegSource {
		src = st.Reg(term.Src)
		srcConst, srcIsConst = src.Const, src.IsConst()
	}
	if dst.IsConst() && srcIsConst {
		t, ok := analysis.CompareConst(op, dst.Const, srcConst, is32)
		return t, fmt.Sprintf("%#x %v %#x", dst.Const, op, srcConst), ok
	}
	if is32 || (op != asm.JEq && op != asm.JNE) || !srcIsConst || srcConst != 0 {
		return false, "", false
	}
	// dst against NULL.
	switch {
	case dst.Kind.IsPointer() && !dst.MaybeNull && dst.Kind != analysis.PtrParentStack:
		return op == asm.JNE, dst.Kind.String() + " pointer is never NULL", true
	case dst.Kind == analysis.PtrMapValue && dst.MaybeNull && cp.c.inRangeArrayLookup(res, dst):
		return op == asm.JNE, "array lookup with a constant in-range index never fails", true
	}
	return false, "", false
}

// inRangeArrayLookup reports whether v comes only from lookups in an array
// with constant indices below its size, which return an element pointer
// whatever the map holds, and whether nothing but NULL checks uses the
// pointer any more: the verifier still wants the check before a
// dereference.
func (c *Context) inRangeArrayLookup(res *analysis.Result, v analysis.Value) bool {
	origins := res.Origins(v)
	if len(origins) == 0 {
		return false
	}
	for _, o := range origins {
		ms := c.Coll.Maps[o.Map]
		if ms == nil || (ms.Type != ebpf.Array && ms.Type != ebpf.PerCPUArray) || o.Key == nil || !o.Key.Const || len(o.Key.Bytes) != 4 {
			return false
		}
		if len(o.Reads) > 0 || len(o.Writes) > 0 || len(o.Escapes) > 0 {
			return false
		}
		var kb [4]byte
		for j := range kb {
			kb[j] = o.Key.Bytes[j].Value
		}
		if binary.LittleEndian.Uint32(kb[:]) >= ms.MaxEntries {
			return false
		}
	}
	return true
}

// movImm returns a one-slot instruction setting all 64 bits of dst to v:
// a 64-bit mov sign-extends its immediate, a 32-bit mov zero-extends it.
func movImm(dst asm.Register, v uint64) (asm.Instruction, bool) {
	switch {
	case int64(v) >= math.MinInt32 && int64(v) <= math.MaxInt32:
		return asm.Mov.Imm(dst, int32(int64(v))), true
	case v <= math.MaxUint32:
		return asm.Mov.Imm32(dst, int32(uint32(v))), true
	}
	return asm.Instruction{}, false
}

// sameMov reports whether ins already is the mov that folding would emit.
func sameMov(ins, mov asm.Instruction) bool {
	return ins.OpCode == mov.OpCode && ins.Dst == mov.Dst && ins.Constant == mov.Constant
}

func isRodata(name string) bool { return strings.HasPrefix(name, ".rodata") }

// frozenOnly returns coll as the analysis should see it for folding: only
// .rodata sections, which the loader freezes, keep BPF_F_RDONLY_PROG, so
// that ConstRodata makes constants of them and of nothing user space may
// still change.
func frozenOnly(coll *ebpf.CollectionSpec) *ebpf.CollectionSpec {
	cs := *coll
	cs.Maps = make(map[string]*ebpf.MapSpec, len(coll.Maps))
	for name, ms := range coll.Maps {
		if ms.Flags&bpfFRdonlyProg != 0 && !isRodata(name) {
			cp := *ms
			cp.Flags &^= bpfFRdonlyProg
			ms = &cp
		}
		cs.Maps[name] = ms
	}
	return &cs
}

// coreImmediates reports a CO-RE relocation on an instruction whose
// immediate or offset the analysis would take at face value; the loader
// rewrites those for the running kernel, so nothing derived from them may
// be folded.
func coreImmediates(p *program.Program) (string, string) {
	for _, f := range p.Funcs {
		for _, b := range f.Blocks {
			for _, ins := range b.Insns {
				if btf.CORERelocationMetadata(&ins) != nil {
					return f.Name, fmt.Sprintf("CO-RE relocated instruction (%v): its value is only known at load", ins)
				}
			}
		}
	}
	return "", ""
}

// writtenByOthers names the maps some other program of the collection may
// write: the analysis of one program only sees its own writes.
func (c *Context) writtenByOthers() map[string]bool {
	out := map[string]bool{}
	for name, ps := range c.Coll.Programs {
		if ps == c.Prog.Spec || (c.Prog.Spec != nil && name == c.Prog.Spec.Name) {
			continue
		}
		p, err := program.Lift(ps)
		var res *analysis.Result
		if err == nil {
			res, err = analysis.Analyze(c.Coll, p, analysis.Options{})
		}
		if err != nil {
			// Unknown code: it may write any map.
			for m := range c.Coll.Maps {
				out[m] = true
			}
			return out
		}
		for m, mi := range res.Maps {
			if !mi.ReadOnly {
				out[m] = true
			}
		}
	}
	return out
}

// arrayValue returns element idx of an array as the snapshot has it: the
// last entry the state gives for it, else the spec's initial contents, else
// zeros (array elements always exist).
func arrayValue(st *mapstate.State, name string, ms *ebpf.MapSpec, idx uint32) ([]byte, bool) {
	key := binary.LittleEndian.AppendUint32(nil, idx)
	var val []byte
	if m := st.Maps[name]; m != nil {
		for _, e := range m.Entries {
			if bytes.Equal(e.Key, key) {
				if e.Values != nil {
					return nil, false
				}
				val = e.Value
			}
		}
	}
	if val == nil {
		for _, kv := range ms.Contents {
			k, ok := contentsIndex(kv.Key)
			if !ok {
				return nil, false // a key we cannot read may be this one
			}
			if k != idx {
				continue
			}
			v, ok := kv.Value.([]byte)
			if !ok {
				return nil, false
			}
			val = v
		}
	}
	if val == nil {
		val = make([]byte, ms.ValueSize)
	}
	return val, uint32(len(val)) == ms.ValueSize
}

// contentsIndex decodes the key of a MapSpec.Contents entry of an array.
func contentsIndex(k any) (uint32, bool) {
	switch k := k.(type) {
	case uint32:
		return k, true
	case int:
		return uint32(k), k >= 0 && k <= math.MaxUint32
	case int32:
		return uint32(k), k >= 0
	case []byte:
		if len(k) == 4 {
			return binary.LittleEndian.Uint32(k), true
		}
	}
	return 0, false
}

// addFallback puts the guard checks at the entry of the program and, on a
// mismatch, runs the code as it was before the pass. Functions the pass
// changed, and every function that reaches one of them, get an unmodified
// clone for that path.
func (cp *propagator) addFallback(before *program.Program) error {
	p := cp.c.Prog
	main := p.Funcs[0]
	// Close the changed set over callers and referencers.
	need := map[string]bool{main.Name: true}
	for n := range cp.touched {
		need[n] = true
	}
	for grown := true; grown; {
		grown = false
		for _, f := range before.Funcs {
			if need[f.Name] {
				continue
			}
			if slices.ContainsFunc(funcRefs(f), func(r string) bool { return need[r] }) {
				need[f.Name] = true
				grown = true
			}
		}
	}
	rename := map[string]string{}
	taken := map[string]bool{}
	for _, f := range p.Funcs {
		taken[f.Name] = true
	}
	for _, f := range before.Funcs {
		taken[f.Name] = true
	}
	for _, f := range before.Funcs {
		if !need[f.Name] || f == before.Funcs[0] {
			continue
		}
		n := f.Name + "_orig"
		for k := 2; taken[n]; k++ {
			n = fmt.Sprintf("%s_orig%d", f.Name, k)
		}
		taken[n] = true
		rename[f.Name] = n
	}
	for _, f := range before.Funcs {
		if !need[f.Name] || f == before.Funcs[0] {
			continue
		}
		p.Funcs = append(p.Funcs, cloneFunc(p, f, rename[f.Name], rename))
	}

	fallback := cloneBlocks(p, before.Funcs[0].Blocks, rename)
	live := computeLive(main).entry(main) | computeLive(before.Funcs[0]).entry(before.Funcs[0])
	scratch, ok := scratchPair(live)
	if !ok {
		return fmt.Errorf("no free register pair at the entry of %s for the guard check", main.Name)
	}
	maps := make([]string, 0, len(cp.guarded))
	for m := range cp.guarded {
		maps = append(maps, m)
	}
	sort.Strings(maps)
	var checks []*program.Block
	if cp.ingress != 0 {
		// R1 is the context at the entry; the checks only use scratch.
		g := p.NewBlock()
		g.Insns = []asm.Instruction{
			asm.LoadMem(scratch, asm.R1, analysis.XDPIngressOff, asm.Word),
			clearRef(asm.JNE.Imm(scratch, int32(cp.ingress), "")),
		}
		g.Target = fallback[0]
		checks = append(checks, g)
	}
	for _, m := range maps {
		g, err := cp.c.guardCheck(p, m, scratch, fallback[0])
		if err != nil {
			return err
		}
		if len(checks) > 0 {
			checks[len(checks)-1].Next = g
		}
		checks = append(checks, g)
	}
	checks[len(checks)-1].Next = main.Blocks[0]
	if cp.ingress != 0 {
		cp.c.changed(main.Name, checks[0].ID, "", "specialized to ingress_ifindex %d, checked once at program entry; frames from any other interface run the unmodified original code", cp.ingress)
	}
	main.Blocks = append(append(checks, main.Blocks...), fallback...)
	clones := make([]string, 0, len(rename))
	for _, n := range rename {
		clones = append(clones, n)
	}
	sort.Strings(clones)
	for _, m := range maps {
		slot, _ := cp.c.Guards.Slot(m)
		msg := fmt.Sprintf("guard slot %d (version %d) checked once at program entry; on mismatch the unmodified original code runs", slot, cp.c.Guards.Version(m))
		if len(clones) > 0 {
			msg += " (with original clones " + strings.Join(clones, ", ") + ")"
		}
		if slices.Contains(cp.sharedBefore, m) {
			msg += "; the same guard protects this map's inlined compare chains"
		}
		cp.c.changed(main.Name, checks[0].ID, m, "%s", msg)
	}
	return nil
}

// scratchPair finds registers r, r+1 (r+1 <= R9) free at the entry.
func scratchPair(live regSet) (asm.Register, bool) {
	for r := asm.R0; r < asm.R9; r++ {
		if live&(regBit(r)|regBit(r+1)) == 0 {
			return r, true
		}
	}
	return 0, false
}

// funcRefs lists the functions f calls or references.
func funcRefs(f *program.Func) []string {
	var out []string
	for _, b := range f.Blocks {
		for _, ins := range b.Insns {
			if ins.IsFunctionReference() {
				out = append(out, ins.Reference())
			}
		}
	}
	return out
}

// cloneFunc copies f under a new name (its BTF function info renamed with
// it), its calls retargeted as rename says.
func cloneFunc(p *program.Program, f *program.Func, name string, rename map[string]string) *program.Func {
	nf := &program.Func{Name: name, Blocks: cloneBlocks(p, f.Blocks, rename), Source: f.Source}
	if f.BTF != nil {
		fb := *f.BTF
		fb.Name = name
		nf.BTF = &fb
	}
	return nf
}

// cloneBlocks copies blocks with fresh IDs, pointing function references
// named in rename at the new names.
func cloneBlocks(p *program.Program, blocks []*program.Block, rename map[string]string) []*program.Block {
	remap := make(map[*program.Block]*program.Block, len(blocks))
	out := make([]*program.Block, len(blocks))
	for i, b := range blocks {
		nb := p.NewBlock()
		nb.Insns = slices.Clone(b.Insns)
		for k := range nb.Insns {
			if ins := &nb.Insns[k]; ins.IsFunctionReference() {
				if n, ok := rename[ins.Reference()]; ok {
					*ins = ins.WithReference(n)
				}
			}
		}
		remap[b], out[i] = nb, nb
	}
	for i, b := range blocks {
		out[i].Target, out[i].Next = remap[b.Target], remap[b.Next]
	}
	return out
}
