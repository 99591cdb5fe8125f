// Package analysis is the optimizer's static analysis of a lifted BPF
// program: an abstract interpretation of registers and stack slots over
// every function's control-flow graph, and from it every map access site,
// where its key lives and what is known about the key's bytes, which value
// offsets a lookup's result is read at, whether each map is written by the
// data plane, and register and stack liveness.
//
// The analysis is conservative: whatever it does not understand makes a
// site or a map ineligible, with a reason, instead of producing a fact
// that could be wrong. Facts hold for programs the kernel verifier
// accepts; the analysis leans on the verifier's rules (no pointers stored
// in map values, no NULL dereference, helpers only access their
// (pointer, size) arguments).
package analysis

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// Options tunes the analysis.
type Options struct {
	// ConstRodata makes loads from read-only global data (maps flagged
	// BPF_F_RDONLY_PROG, such as .rodata) produce the constant
	// held by the collection spec: the section contents with the spec's
	// Variables applied. Only set it when the program will be loaded
	// with exactly these values.
	ConstRodata bool
	// MaxBlockVisits bounds the work of one function's fixpoint; zero
	// picks a bound proportional to the function's size.
	MaxBlockVisits int
	// NoLiveness skips the register liveness (a sizeable part of the
	// work) for callers that never ask for it: LiveIn, LiveOut,
	// BlockLiveIn and BlockLiveOut then panic.
	NoLiveness bool
	// Ingress, when not zero, makes 4-byte loads of an XDP program's
	// ingress_ifindex (struct xdp_md offset 12) produce this constant.
	// Only set it for code that runs after a check that the context
	// holds exactly this value.
	Ingress uint32
}

// XDPIngressOff is the offset of ingress_ifindex in struct xdp_md.
const XDPIngressOff = 12

// Result is the analysis of one program. Its query methods do not change
// it and may be called concurrently.
type Result struct {
	// Sites are all map access sites in program order (function, block
	// layout, instruction). Site.ID is the index in this slice.
	Sites []*Site
	// Maps describes every map of the collection and every map the
	// program references, by name.
	Maps map[string]*MapInfo

	a      *analyzer
	byBlk  map[*program.Block]*funcState
	live   *liveness
	siteAt map[insnKey][]*Site
}

// Analyze analyses prog, which was lifted from one of coll's programs.
// coll provides the map specs (and, with Options.ConstRodata, the global
// data); it may be nil, which leaves every map unknown and ineligible.
func Analyze(coll *ebpf.CollectionSpec, prog *program.Program, opts Options) (*Result, error) {
	if prog == nil || len(prog.Funcs) == 0 {
		return nil, errors.New("analysis: empty program")
	}
	a := &analyzer{coll: coll, prog: prog, opts: opts, byFn: map[string]*funcState{}, callNum: map[insnKey]int{}}
	blocks := 0
	for _, f := range prog.Funcs {
		blocks += len(f.Blocks)
	}
	res := &Result{a: a, byBlk: make(map[*program.Block]*funcState, blocks), siteAt: map[insnKey][]*Site{}}

	called := map[string]bool{}
	referenced := map[string]bool{}
	for i, f := range prog.Funcs {
		if len(f.Blocks) == 0 {
			return nil, fmt.Errorf("analysis: function %s has no blocks", f.Name)
		}
		fs := &funcState{f: f, order: i, rpo: reversePostorder(f)}
		a.funcs = append(a.funcs, fs)
		a.byFn[f.Name] = fs
		for _, b := range f.Blocks {
			if res.byBlk[b] != nil {
				return nil, fmt.Errorf("analysis: block %s appears twice", b.Label())
			}
			res.byBlk[b] = fs
			for j, ins := range b.Insns {
				switch {
				case ins.OpCode.JumpOp() == asm.Call && ins.OpCode.Class() == asm.JumpClass:
					a.callNum[insnKey{b, j}] = len(a.calls)
					a.calls = append(a.calls, loc{fs, b, j})
					if ins.IsFunctionCall() {
						called[ins.Reference()] = true
					}
				case ins.IsLoadOfFunctionPointer():
					referenced[ins.Reference()] = true
				}
			}
		}
	}
	a.rodata = readOnlyData(coll)

	for i, fs := range a.funcs {
		switch {
		case i == 0:
			st := newState()
			st.regs[asm.R1] = ptrAt(PtrCtx, 0)
			fs.entry = st
		case referenced[fs.f.Name] || !called[fs.f.Name]:
			// A callback (or a function nothing calls): its arguments come
			// from the kernel and are not tracked.
			fs.callback = true
			fs.entry = newState()
			for r := asm.R1; r <= asm.R5; r++ {
				fs.entry.regs[r] = unknown()
			}
		}
	}
	if err := a.run(); err != nil {
		return nil, fmt.Errorf("analysis: %w", err)
	}

	// Reporting pass: replay every reachable block once from its fixpoint
	// state and record the facts.
	// The replay's states are thrown away after each block, so one
	// scratch state serves every block instead of a copy per block.
	a.rec = newRecorder(a)
	scratch := new(State)
	for _, fs := range a.funcs {
		if fs.entry == nil {
			continue
		}
		fs.entry.frame.share()
		for k, b := range fs.f.Blocks {
			in := fs.in[b]
			if in == nil {
				continue
			}
			scratch.copyFrom(in)
			a.rec.block, a.rec.pos = b, k
			a.block(fs, b, scratch)
		}
		a.markUnreachableStack(fs)
	}
	a.rec.finish(res)
	a.rec = nil
	for _, s := range res.Sites {
		k := insnKey{blockOf(res, s), s.Index}
		res.siteAt[k] = append(res.siteAt[k], s)
	}
	if !opts.NoLiveness {
		res.live = computeLiveness(prog)
	}
	return res, nil
}

func blockOf(r *Result, s *Site) *program.Block {
	fs := r.a.byFn[s.Func]
	for _, b := range fs.f.Blocks {
		if b.ID == s.Block {
			return b
		}
	}
	return nil
}

// readOnlyData returns the bytes of every read-only global section, with
// the spec's variables applied the way cilium/ebpf applies them at load.
func readOnlyData(coll *ebpf.CollectionSpec) map[string][]byte {
	out := map[string][]byte{}
	if coll == nil {
		return out
	}
	for name, ms := range coll.Maps {
		if ms.Type != ebpf.Array || ms.MaxEntries != 1 || len(ms.Contents) != 1 {
			continue
		}
		if ms.Flags&bpfFRdonlyProg == 0 {
			continue
		}
		data, ok := ms.Contents[0].Value.([]byte)
		if !ok || uint32(len(data)) != ms.ValueSize {
			continue
		}
		data = slices.Clone(data)
		valid := true
		for _, v := range coll.Variables {
			if v.SectionName != name || v.Value == nil {
				continue
			}
			if int(v.Offset)+len(v.Value) > len(data) {
				valid = false
				break
			}
			copy(data[v.Offset:], v.Value)
		}
		if valid {
			out[name] = data
		}
	}
	return out
}

// markUnreachableStack marks the stack bytes that blocks the fixpoint
// found unreachable address directly through R10, so that scratch space
// handed out by FreeStack never overlaps them either.
func (a *analyzer) markUnreachableStack(fs *funcState) {
	for _, b := range fs.f.Blocks {
		if fs.in[b] != nil {
			continue
		}
		for _, ins := range b.Insns {
			cls := ins.OpCode.Class()
			switch {
			case (cls == asm.LdXClass && ins.Src == asm.R10) || ((cls == asm.StClass || cls == asm.StXClass) && ins.Dst == asm.R10):
				o := int64(ins.Offset)
				for i := o; i < o+int64(ins.OpCode.Size().Sizeof()) && i < 0; i++ {
					if i >= -StackSize {
						fs.stackUsed[idx(i)] = true
					}
				}
			case cls.IsALU() && ins.OpCode.Source() == asm.RegSource && ins.Src == asm.R10:
				// A frame pointer copy: its uses are not followed here.
				fs.stackAll = true
			}
		}
	}
}

// reversePostorder numbers f's blocks for the worklist.
func reversePostorder(f *program.Func) map[*program.Block]int {
	order := make(map[*program.Block]int, len(f.Blocks))
	seen := make(map[*program.Block]bool, len(f.Blocks))
	var post []*program.Block
	type frameT struct {
		b    *program.Block
		next int
	}
	stack := []frameT{{f.Blocks[0], 0}}
	seen[f.Blocks[0]] = true
	for len(stack) > 0 {
		top := &stack[len(stack)-1]
		succ := top.b.Succs()
		if top.next < len(succ) {
			s := succ[top.next]
			top.next++
			if !seen[s] {
				seen[s] = true
				stack = append(stack, frameT{s, 0})
			}
			continue
		}
		post = append(post, top.b)
		stack = stack[:len(stack)-1]
	}
	for i, b := range post {
		order[b] = len(post) - 1 - i
	}
	for _, b := range f.Blocks {
		if _, ok := order[b]; !ok {
			order[b] = len(order)
		}
	}
	return order
}

// worklist pops blocks in reverse postorder, each at most once at a time.
// The reverse postorder numbers of a function's blocks are 0..n-1, so the
// worklist is a binary min-heap of those numbers.
type worklist struct {
	rpo    map[*program.Block]int
	blocks []*program.Block // by number
	heap   []int
	queued []bool // by number
}

func newWorklist(rpo map[*program.Block]int) *worklist {
	w := &worklist{rpo: rpo, blocks: make([]*program.Block, len(rpo)), queued: make([]bool, len(rpo))}
	for b, n := range rpo {
		w.blocks[n] = b
	}
	return w
}

func (w *worklist) len() int { return len(w.heap) }

func (w *worklist) push(b *program.Block) {
	n := w.rpo[b]
	if w.queued[n] {
		return
	}
	w.queued[n] = true
	h := append(w.heap, n)
	for i := len(h) - 1; i > 0; {
		p := (i - 1) / 2
		if h[p] <= h[i] {
			break
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
	w.heap = h
}

func (w *worklist) pop() *program.Block {
	h := w.heap
	n := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if c+1 < len(h) && h[c+1] < h[c] {
			c++
		}
		if h[i] <= h[c] {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	w.heap = h
	w.queued[n] = false
	return w.blocks[n]
}

// StateBefore returns the abstract state before instruction i of block b,
// or nil if the block is unreachable or not part of the analysed program.
// i may be len(b.Insns) for the state after a block without terminator.
func (r *Result) StateBefore(b *program.Block, i int) *State {
	r.mustLive()
	fs := r.byBlk[b]
	if fs == nil || fs.in[b] == nil || i < 0 || i > len(b.Insns) {
		return nil
	}
	st := fs.in[b].clone()
	for j := 0; j < i && j < len(b.Insns); j++ {
		if b.Term() != nil && j == len(b.Insns)-1 {
			break
		}
		r.a.step(loc{fs, b, j}, st)
	}
	return st
}

// A Walker hands out the abstract states before the instructions of one
// block in increasing order. It steps through the block once, where a
// StateBefore call per instruction would replay the block from its start
// (and copy a state) every time: passes that look at every instruction
// use a Walker.
type Walker struct {
	r  *Result
	fs *funcState
	b  *program.Block
	i  int
	st *State
}

// Walk returns a walker over block b, or nil if the block is unreachable
// or not part of the analysed program.
func (r *Result) Walk(b *program.Block) *Walker {
	r.mustLive()
	fs := r.byBlk[b]
	if fs == nil || fs.in[b] == nil {
		return nil
	}
	return &Walker{r: r, fs: fs, b: b, st: fs.in[b].clone()}
}

// Rewalk is Walk(b) reusing the state of w, a walker the caller is done
// with (nil allocates a new one): a pass that walks every block in turn
// copies the block's entry state into one state instead of allocating one
// per block. It returns nil as Walk does, leaving w unchanged.
func (r *Result) Rewalk(w *Walker, b *program.Block) *Walker {
	if w == nil || w.st == nil {
		return r.Walk(b)
	}
	r.mustLive()
	fs := r.byBlk[b]
	if fs == nil || fs.in[b] == nil {
		return nil
	}
	w.r, w.fs, w.b, w.i = r, fs, b, 0
	w.st.copyFrom(fs.in[b])
	return w
}

// Release hands the analysis' internal states to later analyses. The
// caller must be done with r and everything it handed out that is tied to
// it (walkers): r must not be used again. States a query returned
// (StateBefore) are copies and stay valid.
func (r *Result) Release() {
	if r == nil || r.a == nil {
		return
	}
	for _, fs := range r.a.funcs {
		for _, st := range fs.in {
			releasedStates.Put(st)
		}
		fs.in = nil
	}
	for _, st := range r.a.free {
		releasedStates.Put(st)
	}
	r.a.free = nil
	r.byBlk = nil
}

// mustLive panics on a released result: its states are another
// analysis' now.
func (r *Result) mustLive() {
	if r.byBlk == nil {
		panic("analysis: query on a released Result")
	}
}

// At returns the state before instruction i of the walker's block, the
// state StateBefore returns. i may be len(b.Insns) as for StateBefore; it
// must not be lower than in the previous call (nil then, and for an index
// out of range or a nil walker). The state belongs to the walker: it is
// valid until the next call and must not be modified. Concurrent use
// needs one walker per goroutine.
func (w *Walker) At(i int) *State {
	if w == nil || i < w.i || i > len(w.b.Insns) {
		return nil
	}
	last := len(w.b.Insns) - 1
	if w.b.Term() == nil {
		last = len(w.b.Insns)
	}
	// The terminator is never stepped: the state "after" it is the state
	// before it, as in StateBefore.
	for ; w.i < i && w.i < last; w.i++ {
		w.r.a.step(loc{w.fs, w.b, w.i}, w.st)
	}
	w.i = i
	return w.st
}

// Reachable reports whether the analysis found a path to block b.
func (r *Result) Reachable(b *program.Block) bool {
	r.mustLive()
	fs := r.byBlk[b]
	return fs != nil && fs.in[b] != nil
}

// SitesAt returns the sites at instruction i of block b.
func (r *Result) SitesAt(b *program.Block, i int) []*Site {
	return r.siteAt[insnKey{b, i}]
}

// Site returns the site with the given ID, or nil.
func (r *Result) Site(id int) *Site {
	if id < 0 || id >= len(r.Sites) {
		return nil
	}
	return r.Sites[id]
}

// LiveIn returns the registers live before instruction i of block b.
// R10 is always live.
func (r *Result) LiveIn(b *program.Block, i int) RegSet {
	ins := r.liveness().in[b]
	if i < 0 || i >= len(ins) {
		return r.LiveOut(b, i)
	}
	return ins[i]
}

// LiveOut returns the registers live after instruction i of block b.
func (r *Result) LiveOut(b *program.Block, i int) RegSet {
	ins := r.liveness().in[b]
	if i+1 < len(ins) && i >= 0 {
		return ins[i+1]
	}
	return r.liveness().out[b] | fpReg
}

// BlockLiveIn returns the registers live at the entry of b.
func (r *Result) BlockLiveIn(b *program.Block) RegSet { return r.liveness().bin[b] | fpReg }

// BlockLiveOut returns the registers live at the exit of b.
func (r *Result) BlockLiveOut(b *program.Block) RegSet { return r.liveness().out[b] | fpReg }

// liveness returns the register liveness, which Options.NoLiveness left
// out: computing it later could see a program changed since.
func (r *Result) liveness() *liveness {
	if r.live == nil {
		panic("analysis: liveness query on a result analysed with Options.NoLiveness")
	}
	return r.live
}

// StackUsage is how a function uses its 512-byte frame.
type StackUsage struct {
	Func string `json:"func"`
	// All is set when some access could not be bounded: no byte is free.
	All bool `json:"all"`
	// Depth is the lowest offset from R10 any access reaches (0 if none).
	Depth int `json:"depth"`
	// FreeSlots are the offsets from R10 of the 8-byte aligned slots that
	// no reachable instruction touches, highest first.
	FreeSlots []int `json:"free_slots,omitempty"`
}

// Stack returns the frame usage of function fn, or nil if it has none.
// The combined frames of a call chain must stay within 512 bytes, so a
// pass allocating scratch space should prefer slots above Depth.
func (r *Result) Stack(fn string) *StackUsage {
	fs := r.a.byFn[fn]
	if fs == nil {
		return nil
	}
	u := &StackUsage{Func: fn, All: fs.stackAll}
	for i, used := range fs.stackUsed {
		if used {
			u.Depth = i - StackSize
			break
		}
	}
	if u.All {
		u.Depth = -StackSize
		return u
	}
	for slot := numSlots - 1; slot >= 0; slot-- {
		if !slices.Contains(fs.stackUsed[slot*8:slot*8+8], true) {
			u.FreeSlots = append(u.FreeSlots, slot*8-StackSize)
		}
	}
	return u
}

// Summary renders the sites and maps as human-readable tables.
func (r *Result) Summary() string {
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tWHERE\tKIND\tMAP\tKEY\tINLINE\tHOTCACHE\tCONSTKEY")
	for _, s := range r.Sites {
		key := "-"
		if s.Key != nil {
			key = s.Key.String()
		} else if s.Kind == SiteLoad || s.Kind == SiteStore || s.Kind == SiteAtomic || s.Kind == SiteValueHelper {
			key = fmt.Sprintf("value[%s:%d]", offString(s.Offset, s.OffsetKnown), s.Size)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, siteWhere(s), siteWhat(s), s.Map, key,
			yes(s.Inline.OK), yes(s.HotCache.OK), yes(s.ConstKey.OK))
	}
	tw.Flush()
	sb.WriteString("\n")
	tw = tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAP\tTYPE\tACCESS\tSITES\tWRITES\tREASON")
	names := make([]string, 0, len(r.Maps))
	for n := range r.Maps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		mi := r.Maps[n]
		access := mi.Access()
		reason := ""
		if len(mi.Reasons) > 0 {
			reason = mi.Reasons[0]
			if len(mi.Reasons) > 1 {
				reason += fmt.Sprintf(" (+%d)", len(mi.Reasons)-1)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", n, mi.Type, access, len(mi.Sites), len(mi.WriteSites), reason)
	}
	tw.Flush()
	return sb.String()
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func offString(off int64, known bool) string {
	if !known {
		return "?"
	}
	return fmt.Sprint(off)
}

// String renders an operand compactly: its location and one character per
// byte (hex for constants, p for packet bytes, ? for unknown).
func (o *Operand) String() string {
	var sb strings.Builder
	sb.WriteString(o.Location)
	if o.OffKnown && (o.Location == "stack" || o.Location == "parent_stack") {
		fmt.Fprintf(&sb, "%d", o.StackOff)
	}
	if len(o.Bytes) > 0 {
		sb.WriteString("[")
		for i, b := range o.Bytes {
			if i > 0 {
				sb.WriteString(" ")
			}
			switch b.Kind {
			case "const":
				fmt.Fprintf(&sb, "%02x", b.Value)
			case "packet":
				if b.PktOff >= 0 {
					fmt.Fprintf(&sb, "p%d", b.PktOff)
				} else {
					sb.WriteString("p")
				}
			default:
				sb.WriteString("?")
			}
		}
		sb.WriteString("]")
	} else {
		fmt.Fprintf(&sb, "[%d]", o.Size)
	}
	return sb.String()
}

// Origins returns the lookup sites a map value pointer may come from (the
// same sites a load through it lists in Site.Origins); nil for any other
// value.
func (r *Result) Origins(v Value) []*Site {
	var out []*Site
	for _, o := range v.origins() {
		for _, s := range r.Sites {
			if s.call == o {
				out = append(out, s)
			}
		}
	}
	return out
}
