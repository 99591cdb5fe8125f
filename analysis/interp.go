package analysis

import (
	"fmt"
	"math"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// loc is one instruction of the program.
type loc struct {
	fn    *funcState
	block *program.Block
	index int
}

// funcState is the analysis of one function: its entry state (joined over
// all call sites), the fixpoint state at every block entry, and the
// summary its callers use.
type funcState struct {
	f     *program.Func
	order int // position in Program.Funcs
	entry *State
	in    map[*program.Block]*State
	rpo   map[*program.Block]int

	// Summary for callers, accumulated over rounds.
	ret          Value
	retSet       bool
	writesParent bool // stores through a pointer into a caller's frame
	readsParent  bool // 8-byte loads through a pointer into a caller's frame
	callback     bool // entered by a helper, not by a call instruction

	// What the last fixpoint run started from: its entry state and the
	// summaries of the callees it used. A run from the same is the same
	// run (it is a function of these alone), so a later round skips it.
	ranEntry *State
	used     map[*funcState]calleeView

	// Filled by the reporting pass.
	stackUsed [StackSize]bool
	stackAll  bool // some access at an unknown frame offset
}

type analyzer struct {
	coll  *ebpf.CollectionSpec
	prog  *program.Program
	opts  Options
	funcs []*funcState
	byFn  map[string]*funcState
	// callNum numbers every call instruction of the program; lookups use
	// it as the origin of the values they return.
	callNum map[insnKey]int
	calls   []loc
	rodata  map[string][]byte // read-only global sections with their bytes
	dirty   bool              // a callee entry or a summary grew this round
	running bool              // in run: fixpoint runs record the callee summaries they use
	rec     *recorder         // non-nil only during the reporting pass
	// free holds states the fixpoint no longer references, for reuse: a
	// State is about 10 KiB, and allocating one per block visit, branch
	// and join dominated the analysis' cost (allocation and the GC's
	// write barriers on copies).
	free []*State
}

// copyOf returns a copy of s in a recycled state if there is one: one of
// this analysis, else one a released Result left.
func (a *analyzer) copyOf(s *State) *State {
	var c *State
	if n := len(a.free); n > 0 {
		c, a.free = a.free[n-1], a.free[:n-1]
	} else if p, ok := releasedStates.Get().(*State); ok {
		c = p
	} else {
		c = new(State)
	}
	c.copyFrom(s)
	return c
}

// releasedStates holds the states of released results (Result.Release)
// for the analyses that follow: a pass that re-analyses after each round
// of changes would otherwise allocate a state per block every time.
var releasedStates sync.Pool

// recycle hands states nothing references any more to copyOf.
func (a *analyzer) recycle(s ...*State) { a.free = append(a.free, s...) }

type insnKey struct {
	block *program.Block
	index int
}

func (a *analyzer) mapSpec(name string) *ebpf.MapSpec {
	if name == "" || a.coll == nil {
		return nil
	}
	return a.coll.Maps[name]
}

// run computes the interprocedural fixpoint.
func (a *analyzer) run() error {
	a.running = true
	defer func() { a.running = false }()
	limit := 4*len(a.funcs) + 8
	for round := 0; ; round++ {
		if round > limit {
			return fmt.Errorf("interprocedural analysis did not converge after %d rounds", limit)
		}
		a.dirty = false
		for _, fs := range a.funcs {
			if fs.entry == nil || a.unchanged(fs) {
				continue
			}
			if err := a.fixpoint(fs); err != nil {
				return fmt.Errorf("function %s: %w", fs.f.Name, err)
			}
		}
		if !a.dirty {
			return nil
		}
	}
}

// calleeView is what a call makes of the callee's summary.
type calleeView struct {
	r0            Value
	reads, writes bool
}

func (fs *funcState) view() calleeView {
	v := calleeView{r0: scalar(), reads: fs.readsParent, writes: fs.writesParent}
	if fs.retSet {
		v.r0 = fs.ret
	}
	return v
}

// unchanged reports whether fs's last fixpoint run had the entry state and
// callee summaries it would have now. Re-running it would change nothing:
// its states are the same, and so are the entries it joins into its
// callees and the summary it joins into its own.
func (a *analyzer) unchanged(fs *funcState) bool {
	if fs.in == nil || fs.ranEntry != fs.entry {
		return false
	}
	for callee, v := range fs.used {
		now := callee.view()
		if now.reads != v.reads || now.writes != v.writes || !now.r0.equal(v.r0) {
			return false
		}
	}
	return true
}

// fixpoint runs the forward dataflow of one function from its entry state.
// The lattice has finite height (constants widen to scalar, known offsets
// to unknown ones, everything to Unknown), so it terminates; the visit
// bound only guards against bugs.
func (a *analyzer) fixpoint(fs *funcState) error {
	blocks := fs.f.Blocks
	// A re-run (a later interprocedural round) starts afresh: the block
	// entry states of the previous run are referenced nowhere else.
	for _, st := range fs.in {
		a.recycle(st)
	}
	fs.in = make(map[*program.Block]*State, len(blocks))
	fs.ranEntry, fs.used = fs.entry, map[*funcState]calleeView{}
	fs.in[blocks[0]] = fs.entry.clone()
	work := newWorklist(fs.rpo)
	work.push(blocks[0])
	budget := a.opts.MaxBlockVisits
	if budget <= 0 {
		budget = 64*len(blocks) + 10000
	}
	for work.len() > 0 {
		if budget--; budget < 0 {
			return fmt.Errorf("dataflow did not converge within the visit budget")
		}
		b := work.pop()
		st := a.copyOf(fs.in[b])
		edges := a.block(fs, b, st)
		if len(edges) == 0 {
			a.recycle(st)
		}
		// Edge states are fresh copies (block and branch make them):
		// one the block entry does not keep is recycled, and so is a
		// block entry a join replaces. Nothing else points at them.
		for _, e := range edges {
			old := fs.in[e.to]
			if old == nil {
				fs.in[e.to] = e.st
				work.push(e.to)
				continue
			}
			j := a.copyOf(old)
			joinInto(j, old, e.st)
			if !j.equal(old) {
				fs.in[e.to] = j
				work.push(e.to)
				a.recycle(old, e.st)
			} else {
				a.recycle(j, e.st)
			}
		}
	}
	return nil
}

type edge struct {
	to *program.Block
	st *State
}

// block runs the instructions of b over st and returns the states on its
// outgoing edges that can be taken.
func (a *analyzer) block(fs *funcState, b *program.Block, st *State) []edge {
	term := b.Term()
	n := len(b.Insns)
	if term != nil {
		n--
	}
	for i := range n {
		a.step(loc{fs, b, i}, st)
	}
	if term == nil {
		if b.Next == nil {
			return nil
		}
		return []edge{{b.Next, st}}
	}
	return a.branch(loc{fs, b, len(b.Insns) - 1}, st, *term)
}

// step applies one non-terminator instruction to st.
func (a *analyzer) step(at loc, st *State) {
	ins := at.block.Insns[at.index]
	switch cls := ins.OpCode.Class(); {
	case ins.OpCode.IsDWordLoad():
		st.regs[ins.Dst] = a.ldImm64(ins)
	case cls.IsALU():
		a.alu(at, st, ins)
	case cls == asm.LdClass:
		// Legacy packet loads: R0 gets bytes of the packet in network
		// order; the instruction clobbers R1-R5 like a call.
		v := Value{Kind: Scalar, Packet: true}
		for r := asm.R1; r <= asm.R5; r++ {
			st.regs[r] = Value{Kind: Uninit}
		}
		st.regs[asm.R0] = v
	case cls == asm.LdXClass:
		a.load(at, st, ins.Dst, st.regs[ins.Src], int64(ins.Offset), ins.OpCode.Size().Sizeof(),
			ins.OpCode.Mode() == asm.MemSXMode)
	case cls == asm.StClass:
		a.store(at, st, st.regs[ins.Dst], int64(ins.Offset), ins.OpCode.Size().Sizeof(), constant(uint64(ins.Constant)))
	case cls == asm.StXClass && ins.OpCode.Mode() == asm.AtomicMode:
		a.atomic(at, st, ins)
	case cls == asm.StXClass:
		a.store(at, st, st.regs[ins.Dst], int64(ins.Offset), ins.OpCode.Size().Sizeof(), st.regs[ins.Src])
	case cls.IsJump() && ins.OpCode.JumpOp() == asm.Call:
		a.call(at, st, ins)
	default:
		// Lift rejects every other encoding; stay sound regardless.
		st.regs[ins.Dst] = unknown()
	}
}

func (a *analyzer) ldImm64(ins asm.Instruction) Value {
	switch ins.Src {
	case asm.PseudoMapFD:
		return Value{Kind: PtrMap, Map: ins.Reference()}
	case asm.PseudoMapValue:
		return Value{Kind: PtrMapData, Map: ins.Reference(), Off: int64(uint64(ins.Constant) >> 32), OffKnown: true}
	case asm.PseudoFunc:
		return Value{Kind: PtrFunc, Func: ins.Reference()}
	case asm.R0:
		return constant(uint64(ins.Constant))
	}
	// BTF ids, map indices and other pseudo loads: kernel objects.
	return unknown()
}

// lose records that the analysis no longer follows v: a map value or map
// pointer that reached somewhere it cannot see.
func (a *analyzer) lose(at loc, v Value, reason string) {
	if a.rec != nil && v.taints() {
		a.rec.lose(at, v, reason)
	}
}

// loseSpills loses every map-carrying value spilled in st's frame.
func (a *analyzer) loseSpills(at loc, st *State, reason string) {
	st.frame.spilled(func(v Value) { a.lose(at, v, reason) })
}

func (a *analyzer) clobberFrame(at loc, st *State, lo, hi int64, reason string) {
	st.frame.clobber(lo, hi, func(v Value) { a.lose(at, v, reason) })
	a.useStack(at, lo, hi)
}

func (a *analyzer) useStack(at loc, lo, hi int64) {
	if a.rec == nil {
		return
	}
	lo, hi = max(lo, -StackSize), min(hi, 0)
	for o := lo; o < hi; o++ {
		at.fn.stackUsed[idx(o)] = true
	}
}

func (a *analyzer) useWholeStack(at loc) {
	if a.rec != nil {
		at.fn.stackAll = true
	}
}

// inFrame reports whether [off, off+n) lies inside the frame.
func inFrame(off int64, n int) bool {
	return off >= -StackSize && off+int64(n) <= 0
}

// ingress reports whether a load of size bytes at off from the context
// reads the XDP ingress_ifindex that Options.Ingress gives.
func (a *analyzer) ingress(off int64, size int, sx bool) bool {
	return a.opts.Ingress != 0 && !sx && size == 4 && off == XDPIngressOff &&
		a.prog.Spec != nil && a.prog.Spec.Type == ebpf.XDP
}

// ctxPointerField returns the pointer a context load produces, if the
// field at off is one of the packet pointers of the program's context.
func (a *analyzer) ctxPointerField(off int64, size int) (Value, bool) {
	if size != 4 || a.prog.Spec == nil {
		return Value{}, false
	}
	switch a.prog.Spec.Type {
	case ebpf.XDP:
		switch off {
		case 0:
			return ptrAt(PtrPacket, 0), true
		case 4:
			return ptrAt(PtrPacketEnd, 0), true
		case 8:
			return Value{Kind: PtrPacket}, true // data_meta
		}
	case ebpf.SchedCLS, ebpf.SchedACT, ebpf.SocketFilter, ebpf.CGroupSKB, ebpf.SkSKB,
		ebpf.LWTIn, ebpf.LWTOut, ebpf.LWTXmit, ebpf.LWTSeg6Local:
		switch off {
		case 76:
			return ptrAt(PtrPacket, 0), true
		case 80:
			return ptrAt(PtrPacketEnd, 0), true
		case 140:
			return Value{Kind: PtrPacket}, true // data_meta
		}
	}
	return Value{}, false
}

func (a *analyzer) load(at loc, st *State, dst asm.Register, ptr Value, off int64, size int, sx bool) {
	var v Value
	switch ptr.Kind {
	case PtrStack:
		if !ptr.OffKnown {
			a.useWholeStack(at)
			v = scalar()
			if size == 8 {
				a.loseSpills(at, st, "8-byte load at a variable stack offset")
				v = unknown()
			}
			break
		}
		o := ptr.Off + off
		if !inFrame(o, size) {
			v = unknown()
			break
		}
		a.useStack(at, o, o+int64(size))
		v = st.frame.load(o, size, sx)
	case PtrParentStack:
		v = scalar()
		if size == 8 {
			at.fn.setReadsParent(a)
			v = unknown()
		}
	case PtrCtx:
		v = scalar()
		if ptr.OffKnown {
			if p, ok := a.ctxPointerField(ptr.Off+off, size); ok {
				v = p
			} else if a.ingress(ptr.Off+off, size, sx) {
				v = constant(uint64(a.opts.Ingress))
			} else if size == 8 {
				v = unknown() // pointer fields of other contexts
			}
		} else if size == 8 {
			v = unknown()
		}
	case PtrPacket:
		v = Value{Kind: Scalar, Packet: true}
		if ptr.OffKnown && !sx && ptr.Off+off >= 0 && ptr.Off+off <= math.MaxInt16 {
			v.PktOff, v.PktSize = int32(ptr.Off+off), uint8(size)
		}
	case PtrMapValue, PtrMapData:
		if a.rec != nil {
			a.rec.access(at, SiteLoad, ptr, off, size)
		}
		v = a.globalConst(ptr, off, size, sx)
	case PtrMap, PtrPacketEnd:
		v = scalar()
	default:
		// Through an untracked pointer: it may point into this frame and
		// reload a spilled map pointer we would then not follow.
		a.lose(at, ptr, "dereferenced after a merge with another value")
		v = scalar()
		if size == 8 {
			a.useWholeStack(at)
			a.loseSpills(at, st, "8-byte load through an untracked pointer")
			if ptr.Kind != PtrOther && ptr.Kind != PtrFunc {
				at.fn.setReadsParent(a)
			}
			v = unknown()
		}
	}
	st.regs[dst] = v
}

// globalConst gives loads from read-only global data their value when the
// options allow it.
func (a *analyzer) globalConst(ptr Value, off int64, size int, sx bool) Value {
	if !a.opts.ConstRodata || ptr.Kind != PtrMapData || !ptr.OffKnown {
		return scalar()
	}
	data, ok := a.rodata[ptr.Map]
	o := ptr.Off + off
	if !ok || o < 0 || o+int64(size) > int64(len(data)) {
		return scalar()
	}
	var c uint64
	for i := range size {
		c |= uint64(data[o+int64(i)]) << (8 * i)
	}
	if sx && size < 8 {
		shift := uint(64 - 8*size)
		c = uint64(int64(c<<shift) >> shift)
	}
	return constant(c)
}

func (fs *funcState) setReadsParent(a *analyzer) {
	if !fs.readsParent {
		fs.readsParent = true
		a.dirty = true
	}
}

func (fs *funcState) setWritesParent(a *analyzer) {
	if !fs.writesParent {
		fs.writesParent = true
		a.dirty = true
	}
}

func (a *analyzer) store(at loc, st *State, ptr Value, off int64, size int, v Value) {
	switch ptr.Kind {
	case PtrStack:
		if !ptr.OffKnown {
			a.useWholeStack(at)
			a.clobberFrame(at, st, -StackSize, 0, "store at a variable stack offset")
			a.lose(at, v, "stored at a variable stack offset")
			return
		}
		o := ptr.Off + off
		if !inFrame(o, size) {
			return
		}
		a.useStack(at, o, o+int64(size))
		if st.frame.store(o, size, v) {
			a.lose(at, v, "stored to the stack in pieces")
		}
		return
	case PtrMapValue, PtrMapData:
		if a.rec != nil {
			a.rec.access(at, SiteStore, ptr, off, size)
		}
		a.lose(at, v, "stored to map memory")
		return
	case PtrParentStack:
		at.fn.setWritesParent(a)
		a.lose(at, v, "stored into a caller's frame")
		return
	case PtrCtx, PtrPacket, PtrPacketEnd, PtrOther, PtrMap, PtrFunc:
		a.lose(at, v, "stored to memory")
		return
	}
	// An untracked pointer may point anywhere the analysis tracks.
	a.lose(at, ptr, "written through after a merge with another value")
	a.useWholeStack(at)
	a.clobberFrame(at, st, -StackSize, 0, "store through an untracked pointer")
	at.fn.setWritesParent(a)
	a.lose(at, v, "stored through an untracked pointer")
}

func (a *analyzer) atomic(at loc, st *State, ins asm.Instruction) {
	op := ins.OpCode.AtomicOp()
	size := ins.OpCode.Size().Sizeof()
	ptr := st.regs[ins.Dst]
	switch op {
	case asm.LoadAcquire(0, 0, asm.DWord, 0).OpCode.AtomicOp():
		a.load(at, st, ins.Dst, st.regs[ins.Src], int64(ins.Offset), size, false)
		return
	case asm.StoreRelease(0, 0, asm.DWord, 0).OpCode.AtomicOp():
		a.store(at, st, ptr, int64(ins.Offset), size, st.regs[ins.Src])
		return
	}
	switch ptr.Kind {
	case PtrStack:
		if ptr.OffKnown && inFrame(ptr.Off+int64(ins.Offset), size) {
			o := ptr.Off + int64(ins.Offset)
			a.clobberFrame(at, st, o, o+int64(size), "atomic operation on a spill slot")
		} else {
			a.useWholeStack(at)
			a.clobberFrame(at, st, -StackSize, 0, "atomic operation at a variable stack offset")
		}
	case PtrMapValue, PtrMapData:
		if a.rec != nil {
			a.rec.access(at, SiteAtomic, ptr, int64(ins.Offset), size)
		}
	case PtrParentStack:
		at.fn.setWritesParent(a)
	case PtrCtx, PtrPacket, PtrPacketEnd, PtrOther, PtrMap, PtrFunc:
	default:
		a.lose(at, ptr, "written through after a merge with another value")
		a.useWholeStack(at)
		a.clobberFrame(at, st, -StackSize, 0, "atomic operation through an untracked pointer")
		at.fn.setWritesParent(a)
	}
	a.lose(at, st.regs[ins.Src], "stored to memory by an atomic operation")
	switch {
	case op == asm.CmpXchg:
		a.lose(at, st.regs[asm.R0], "compared by an atomic operation")
		st.regs[asm.R0] = scalar()
	case op == asm.Xchg || op&0x100 != 0: // the fetch variants
		st.regs[ins.Src] = scalar()
	}
}

// call handles helper, BPF-to-BPF and kfunc calls.
func (a *analyzer) call(at loc, st *State, ins asm.Instruction) {
	switch {
	case ins.IsBuiltinCall():
		a.callHelper(at, st, asm.BuiltinFunc(ins.Constant))
	case ins.IsFunctionCall():
		a.callFunc(at, st, ins.Reference())
	default:
		// kfuncs and anything else: an unknown helper.
		a.callUnknown(at, st, "kfunc")
	}
}

// clobberArgs leaves R1-R5 uninitialised, as after every call.
func (a *analyzer) clobberArgs(st *State) {
	for r := asm.R1; r <= asm.R5; r++ {
		st.regs[r] = Value{Kind: Uninit}
	}
}

func (a *analyzer) callUnknown(at loc, st *State, what string) {
	h := helperFor(math.MaxUint32)
	a.memArgs(at, st, h, what, nil)
	for r := asm.R1; r <= asm.R5; r++ {
		a.lose(at, st.regs[r], "passed to "+what)
	}
	a.clobberArgs(st)
	st.regs[asm.R0] = unknown()
}

// resolveSize returns the byte count of a helper memory argument, or -1.
func (a *analyzer) resolveSize(st *State, s sizeSpec, ms *ebpf.MapSpec) int64 {
	switch {
	case s.reg != 0:
		if v := st.regs[s.reg]; v.Kind == Const && v.Const <= StackSize {
			return int64(v.Const)
		}
	case s.fixed > 0:
		return int64(s.fixed)
	case s.key && ms != nil:
		return int64(ms.KeySize)
	case s.value && ms != nil:
		return int64(ms.ValueSize)
	}
	return -1
}

// memArgs applies the memory effects of a helper's pointer arguments.
func (a *analyzer) memArgs(at loc, st *State, h helperInfo, what string, ms *ebpf.MapSpec) {
	args := h.mem
	if h.keyArg != 0 {
		args = append(args[:len(args):len(args)], memArg{reg: h.keyArg, size: sizeSpec{key: true}})
	}
	if h.valueArg != 0 {
		args = append(args[:len(args):len(args)], memArg{reg: h.valueArg, size: sizeSpec{value: true}})
	}
	if h.outArg != 0 {
		args = append(args[:len(args):len(args)], memArg{reg: h.outArg, size: sizeSpec{value: true}, write: true})
	}
	for _, m := range args {
		p := st.regs[m.reg]
		size := a.resolveSize(st, m.size, ms)
		switch p.Kind {
		case PtrStack:
			switch {
			case h.callback:
				// The callback may use the pointer at any offset.
				a.useWholeStack(at)
				a.clobberFrame(at, st, -StackSize, 0, "frame handed to a callback")
			case !p.OffKnown:
				a.useWholeStack(at)
				if m.write {
					a.clobberFrame(at, st, -StackSize, 0, "written by "+what+" at a variable offset")
				}
			case size >= 0:
				a.useStack(at, p.Off, p.Off+size)
				if m.write {
					a.clobberFrame(at, st, p.Off, p.Off+size, "written by "+what)
				}
			default:
				// A helper reaches forward from its pointer only.
				a.useStack(at, p.Off, 0)
				if m.write {
					a.clobberFrame(at, st, p.Off, 0, "written by "+what)
				}
			}
		case PtrParentStack:
			if m.write || h.callback {
				at.fn.setWritesParent(a)
			}
			if h.callback {
				at.fn.setReadsParent(a)
			}
		case PtrMapValue, PtrMapData:
			if a.rec != nil {
				a.rec.valueHelper(at, m.reg, p, m.write || !h.known, size, what)
			}
			if h.callback || !h.known {
				a.lose(at, p, "passed to "+what)
			}
		case PtrMap:
			a.lose(at, p, "passed to "+what)
		case Const:
			// NULL or a constant: nothing to reach.
		case Unknown, Scalar:
			a.lose(at, p, "passed to "+what+" after a merge with another value")
			if m.write {
				a.useWholeStack(at)
				a.clobberFrame(at, st, -StackSize, 0, "written by "+what+" through an untracked pointer")
				at.fn.setWritesParent(a)
			}
		}
	}
}

func (a *analyzer) callHelper(at loc, st *State, fn asm.BuiltinFunc) {
	h := helperFor(fn)
	what := "helper " + fn.String()
	var ms *ebpf.MapSpec
	mapVal := Value{}
	if h.mapArg != 0 {
		mapVal = st.regs[h.mapArg]
		if mapVal.Kind == PtrMap {
			ms = a.mapSpec(mapVal.Map)
		}
	}
	if a.rec != nil && h.mapArg != 0 {
		a.rec.helperSite(at, fn, h, st, ms)
	}
	if h.mapArg != 0 && mapVal.Kind != PtrMap {
		a.lose(at, mapVal, "used as the map of "+fn.String()+" after a merge with another value")
	}
	if h.exposes {
		a.lose(at, mapVal, "values handed to a callback by "+fn.String())
	}
	// Map pointers in argument registers the helper does not take as its
	// map escape to somewhere the analysis cannot follow.
	for r := asm.R1; r <= asm.R5 && int(r) <= h.args; r++ {
		if r == h.mapArg {
			continue
		}
		if v := st.regs[r]; v.Kind == PtrMap || v.Kind == Unknown {
			a.lose(at, v, "passed to "+what)
		} else if v.Kind == PtrMapValue || v.Kind == PtrMapData {
			if a.rec != nil && !h.hasMem(r) {
				a.rec.siteEscape(at, v, "passed to "+what+" as a scalar")
			}
		}
	}
	a.memArgs(at, st, h, what, ms)

	var r0 Value
	switch h.ret {
	case retScalar:
		r0 = scalar()
	case retOther:
		r0 = Value{Kind: PtrOther, OffKnown: true, MaybeNull: true}
	case retMapValue, retMapValue1:
		r0 = a.lookupResult(at, st, mapVal, ms, h.ret == retMapValue)
	default:
		r0 = unknown()
	}
	a.clobberArgs(st)
	st.regs[asm.R0] = r0
}

func (h helperInfo) hasMem(r asm.Register) bool {
	if r == h.keyArg || r == h.valueArg || r == h.outArg {
		return true
	}
	for _, m := range h.mem {
		if m.reg == r {
			return true
		}
	}
	return false
}

// lookupResult is R0 after a lookup-like helper.
func (a *analyzer) lookupResult(at loc, st *State, mapVal Value, ms *ebpf.MapSpec, maybeNull bool) Value {
	if mapVal.Kind != PtrMap {
		return unknown()
	}
	num := a.callNum[insnKey{at.block, at.index}]
	id := uint32(num + 1)
	// Copies of the value this site returned on an earlier pass through
	// a loop are a different value now.
	for r := range st.regs {
		if st.regs[r].ID == id {
			st.regs[r].ID = 0
		}
	}
	for slot := range numSlots {
		if st.frame.isSpill(slot) && st.frame.spill(slot).ID == id {
			v := st.frame.spill(slot)
			v.ID = 0
			st.frame.setSpill(slot, v)
		}
	}
	switch {
	case mapVal.Map == "" || ms == nil:
		// An inner map of a map-in-map or a map the collection does not
		// describe: nothing is known about what the lookup returns.
		return unknown()
	case isMapInMap(ms.Type):
		return Value{Kind: PtrMap, MaybeNull: true, ID: id}
	case !lookupReturnsValue(ms.Type):
		return Value{Kind: PtrOther, OffKnown: true, MaybeNull: true, ID: id}
	}
	return Value{Kind: PtrMapValue, Map: mapVal.Map, Off: 0, OffKnown: true, MaybeNull: maybeNull, ID: id}.withLists([]int{num}, nil)
}

// callFunc handles a BPF-to-BPF call: the callee's entry state is the join
// over its call sites, and its summary gives R0 and its effect on our frame.
func (a *analyzer) callFunc(at loc, st *State, name string) {
	callee := a.byFn[name]
	if callee == nil {
		a.callUnknown(at, st, "function "+name)
		return
	}
	entry := newState()
	passesFrame := false
	for r := asm.R1; r <= asm.R5; r++ {
		v := st.regs[r]
		switch v.Kind {
		case PtrStack:
			v = Value{Kind: PtrParentStack, Off: v.Off, OffKnown: v.OffKnown}
			passesFrame = true
		case PtrMapValue, PtrMapData:
			if a.rec != nil {
				a.rec.siteEscape(at, v, fmt.Sprintf("passed to function %s in r%d", name, r))
			}
		}
		entry.regs[r] = v
	}
	a.enter(callee, entry)
	if a.running {
		at.fn.used[callee] = callee.view()
	}
	if passesFrame && callee.writesParent {
		a.useWholeStack(at)
		a.clobberFrame(at, st, -StackSize, 0, "frame written by function "+name)
	} else if passesFrame {
		a.useWholeStack(at)
		if callee.readsParent {
			a.loseSpills(at, st, "frame read by function "+name)
		}
	}
	for r := asm.R1; r <= asm.R5; r++ {
		if st.regs[r].Kind == PtrParentStack {
			if callee.writesParent {
				at.fn.setWritesParent(a)
			}
			if callee.readsParent {
				at.fn.setReadsParent(a)
			}
		}
	}
	a.clobberArgs(st)
	if callee.retSet {
		st.regs[asm.R0] = callee.ret
	} else {
		st.regs[asm.R0] = scalar() // provisional until the callee is analysed
	}
}

// enter joins a new entry state into fs.
func (a *analyzer) enter(fs *funcState, entry *State) {
	if fs.entry == nil {
		fs.entry = entry
		a.dirty = true
		return
	}
	j := joinState(fs.entry, entry)
	if !j.equal(fs.entry) {
		fs.entry = j
		a.dirty = true
	}
}

// exit folds R0 into the function's summary.
func (a *analyzer) exit(at loc, st *State) {
	r0 := st.regs[asm.R0]
	fs := at.fn
	if fs.order == 0 && !fs.callback {
		a.lose(at, r0, "returned from the program")
		return
	}
	if r0.Kind == PtrStack || r0.Kind == PtrParentStack {
		r0 = unknown()
	}
	if r0.Kind == PtrMapValue && a.rec != nil {
		a.rec.siteEscape(at, r0, "returned from function "+fs.f.Name)
	}
	if fs.callback {
		a.lose(at, r0, "returned from a callback")
		return
	}
	if !fs.retSet {
		fs.ret, fs.retSet = r0, true
		a.dirty = true
		return
	}
	j := join(fs.ret, r0)
	if !j.equal(fs.ret) {
		fs.ret = j
		a.dirty = true
	}
}
