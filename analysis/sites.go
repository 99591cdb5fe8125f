package analysis

import (
	"fmt"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// Site is one map access: a helper call taking a map, or a load, store or
// atomic operation through a pointer into map memory. It refers to the
// program by function name, block ID and instruction index within the
// block, so it can be printed as JSON.
type Site struct {
	ID    int      `json:"id"`
	Func  string   `json:"func"`
	Block int      `json:"block"`
	Index int      `json:"index"`
	Kind  SiteKind `json:"kind"`
	// Helper is the helper's name for helper sites.
	Helper string `json:"helper,omitempty"`
	// Map is the map's name in CollectionSpec.Maps; empty when the
	// analysis could not tell which map (inner maps, lost map pointers).
	Map string `json:"map"`
	// Write is set when the site may change the map's contents.
	Write bool `json:"write"`

	// Offset and Size locate the accessed bytes in the value for load,
	// store, atomic and value_helper sites. Size is -1 if unknown.
	Offset      int64 `json:"offset,omitempty"`
	OffsetKnown bool  `json:"offset_known,omitempty"`
	Size        int   `json:"size,omitempty"`
	// Origins are the IDs of the lookup sites the accessed value pointer
	// may come from; empty for direct global data accesses.
	Origins []int `json:"origins,omitempty"`

	// Key is the key operand of helper sites that take one.
	Key *Operand `json:"key,omitempty"`
	// Value is the value a helper reads (update, push, storage get).
	Value *Operand `json:"value,omitempty"`

	// Reads and Writes are the accesses through the pointer a lookup
	// returned (and copies of it, in this or a called function).
	Reads  []Access `json:"reads,omitempty"`
	Writes []Access `json:"writes,omitempty"`
	// Escapes gives every use of the returned pointer the analysis cannot
	// turn into reads at known offsets.
	Escapes []string `json:"escapes,omitempty"`

	Inline   Eligibility `json:"inline"`
	HotCache Eligibility `json:"hotcache"`
	ConstKey Eligibility `json:"const_key"`

	order [4]int // function, block position, index, argument: sort key
	call  int    // call number of a helper site, -1 otherwise
	rawOr []int  // origins as call numbers
}

// Operand describes where a helper's key or value argument lives and what
// is known about its bytes at the call.
type Operand struct {
	// Location is one of stack, parent_stack, map_value, map_data,
	// packet, ctx, register (a scalar key passed by value) or unknown.
	Location string `json:"location"`
	// StackOff is the offset from R10 of a stack operand when OffKnown.
	StackOff int  `json:"stack_off,omitempty"`
	OffKnown bool `json:"off_known"`
	Size     int  `json:"size"`
	// Bytes are the operand's bytes for stack and register operands.
	Bytes []KeyByte `json:"bytes,omitempty"`
	// Const is set when every byte is a known constant.
	Const bool `json:"const"`
}

// KeyByte is one byte of an operand.
type KeyByte struct {
	Kind string `json:"kind"` // const, packet or unknown
	// Value is the byte of a const.
	Value uint8 `json:"value"`
	// PktOff is the packet offset a packet byte was copied from, -1 if
	// unknown or computed.
	PktOff int `json:"pkt_off"`
}

// Access is one load or store through a lookup's result.
type Access struct {
	Func        string `json:"func"`
	Block       int    `json:"block"`
	Index       int    `json:"index"`
	Offset      int64  `json:"offset"`
	OffsetKnown bool   `json:"offset_known"`
	Size        int    `json:"size"` // -1 if unknown
}

// Eligibility says whether a pass may use a site, and if not why.
type Eligibility struct {
	OK      bool     `json:"ok"`
	Reasons []string `json:"reasons,omitempty"`
}

func (e *Eligibility) no(reason string) {
	if !slices.Contains(e.Reasons, reason) {
		e.Reasons = append(e.Reasons, reason)
	}
	e.OK = false
}

type siteKey struct {
	insnKey
	arg int
}

// recorder collects facts during the reporting pass, which replays every
// reachable block once from its fixpoint state.
type recorder struct {
	a       *analyzer
	sites   map[siteKey]*Site
	byCall  map[int]*Site
	reads   map[int][]Access
	writes  map[int][]Access
	escapes map[int][]string
	lost    map[string][]string // map name -> reasons it is no longer followed
	inner   []string            // writes to inner maps of map-in-maps
	anyMap  []string            // writes through unresolved map pointers
	// block is the block being replayed, at position pos in its
	// function's layout (a site's sort key).
	block *program.Block
	pos   int
}

func newRecorder(a *analyzer) *recorder {
	return &recorder{
		a:       a,
		sites:   map[siteKey]*Site{},
		byCall:  map[int]*Site{},
		reads:   map[int][]Access{},
		writes:  map[int][]Access{},
		escapes: map[int][]string{},
		lost:    map[string][]string{},
	}
}

func where(at loc) string {
	return fmt.Sprintf("%s:%s:%d", at.fn.f.Name, at.block.Label(), at.index)
}

func addReason(list []string, r string) []string {
	if slices.Contains(list, r) {
		return list
	}
	return append(list, r)
}

func (r *recorder) newSite(at loc, arg int, kind SiteKind) *Site {
	pos := r.pos
	if at.block != r.block {
		pos = slices.Index(at.fn.f.Blocks, at.block)
	}
	s := &Site{Func: at.fn.f.Name, Block: at.block.ID, Index: at.index, Kind: kind, call: -1,
		order: [4]int{at.fn.order, pos, at.index, arg}}
	r.sites[siteKey{insnKey{at.block, at.index}, arg}] = s
	return s
}

// lose records that v is no longer followed.
func (r *recorder) lose(at loc, v Value, reason string) {
	msg := where(at) + ": " + reason
	for _, name := range v.mapsOf() {
		if name == "" {
			r.inner = addReason(r.inner, msg)
		} else {
			r.lost[name] = addReason(r.lost[name], msg)
		}
	}
	for _, o := range v.origins() {
		r.escapes[o] = addReason(r.escapes[o], msg)
	}
}

// siteEscape records a use of a lookup result that a pass cannot follow
// but that the analysis still tracks.
func (r *recorder) siteEscape(at loc, v Value, reason string) {
	if v.Kind != PtrMapValue {
		return
	}
	for _, o := range v.origins() {
		r.escapes[o] = addReason(r.escapes[o], where(at)+": "+reason)
	}
}

func (r *recorder) access(at loc, kind SiteKind, ptr Value, off int64, size int) {
	s := r.newSite(at, 0, kind)
	s.Map = ptr.Map
	s.Write = kind != SiteLoad
	s.Size = size
	if ptr.OffKnown {
		s.Offset, s.OffsetKnown = ptr.Off+off, true
	}
	s.rawOr = ptr.origins()
	acc := Access{Func: s.Func, Block: s.Block, Index: s.Index, Offset: s.Offset, OffsetKnown: s.OffsetKnown, Size: size}
	for _, o := range ptr.origins() {
		if kind == SiteLoad {
			r.reads[o] = append(r.reads[o], acc)
		} else {
			r.writes[o] = append(r.writes[o], acc)
		}
	}
}

// valueHelper records a map value pointer passed to a helper.
func (r *recorder) valueHelper(at loc, reg asm.Register, p Value, write bool, size int64, what string) {
	s := r.newSite(at, int(reg), SiteValueHelper)
	s.Helper = what
	s.Map = p.Map
	s.Write = write
	s.Size = int(size)
	if p.OffKnown {
		s.Offset, s.OffsetKnown = p.Off, true
	}
	s.rawOr = p.origins()
	acc := Access{Func: s.Func, Block: s.Block, Index: s.Index, Offset: s.Offset, OffsetKnown: s.OffsetKnown, Size: int(size)}
	for _, o := range p.origins() {
		r.escapes[o] = addReason(r.escapes[o], where(at)+": passed to "+what)
		if write {
			r.writes[o] = append(r.writes[o], acc)
		} else {
			r.reads[o] = append(r.reads[o], acc)
		}
	}
}

func (r *recorder) helperSite(at loc, fn asm.BuiltinFunc, h helperInfo, st *State, ms *ebpf.MapSpec) {
	s := r.newSite(at, 0, h.kind)
	s.Helper = fn.String()
	s.Write = h.writesMap
	s.call = r.a.callNum[insnKey{at.block, at.index}]
	r.byCall[s.call] = s
	mv := st.regs[h.mapArg]
	if mv.Kind == PtrMap {
		s.Map = mv.Map
	}
	if h.writesMap {
		switch {
		case mv.Kind == PtrMap && mv.Map == "":
			r.inner = addReason(r.inner, where(at)+": "+fn.String()+" on an inner map")
		case mv.Kind != PtrMap && !mv.taints():
			r.anyMap = addReason(r.anyMap, where(at)+": "+fn.String()+" on an unresolved map pointer")
		}
	}
	keySize := 0
	if ms != nil {
		keySize = int(ms.KeySize)
	}
	switch {
	case h.keyArg != 0:
		s.Key = operand(st, st.regs[h.keyArg], keySize)
	case h.keyReg != 0:
		s.Key = regOperand(st.regs[h.keyReg], 4)
	}
	if h.valueArg != 0 && ms != nil {
		s.Value = operand(st, st.regs[h.valueArg], int(ms.ValueSize))
	}
}

// compare records comparisons of lookup results against anything but
// NULL.
func (r *recorder) compare(at loc, dst, src Value) {
	if dst.Kind == PtrMapValue && !src.isNull() {
		r.siteEscape(at, dst, "compared with a value other than NULL")
	}
	if src.Kind == PtrMapValue && !dst.isNull() {
		r.siteEscape(at, src, "compared with a value other than NULL")
	}
}

// operand describes a pointer argument to size bytes.
func operand(st *State, p Value, size int) *Operand {
	op := &Operand{Size: size, OffKnown: p.OffKnown}
	switch p.Kind {
	case PtrStack:
		op.Location = "stack"
		if p.OffKnown && inFrame(p.Off, size) {
			op.StackOff = int(p.Off)
			op.Bytes, op.Const = describe(st.StackBytes(int(p.Off), size))
		} else {
			op.OffKnown = false
		}
	case PtrParentStack, PtrMapValue, PtrMapData, PtrPacket, PtrCtx:
		op.Location = p.Kind.String()
		if p.Kind == PtrParentStack {
			op.StackOff = int(p.Off)
		}
	default:
		op.Location = "unknown"
		op.OffKnown = false
	}
	return op
}

// regOperand describes a key passed by value in a register.
func regOperand(v Value, size int) *Operand {
	op := &Operand{Location: "register", Size: size}
	op.Bytes, op.Const = describe(bytesOf(v, size))
	return op
}

func describe(bs []StackByte) ([]KeyByte, bool) {
	out := make([]KeyByte, len(bs))
	all := len(bs) > 0
	for i, b := range bs {
		switch b.Kind {
		case ByteConst:
			out[i] = KeyByte{Kind: "const", Value: b.Value, PktOff: -1}
		case BytePacket:
			out[i] = KeyByte{Kind: "packet", PktOff: int(b.PktOff)}
			all = false
		default:
			out[i] = KeyByte{Kind: "unknown", PktOff: -1}
			all = false
		}
	}
	return out, all
}

// finish turns the recorded facts into the result's sites and maps.
func (r *recorder) finish(res *Result) {
	sites := make([]*Site, 0, len(r.sites))
	for _, s := range r.sites {
		sites = append(sites, s)
	}
	sort.Slice(sites, func(i, j int) bool {
		a, b := sites[i].order, sites[j].order
		return slices.Compare(a[:], b[:]) < 0
	})
	for i, s := range sites {
		s.ID = i
	}
	for _, s := range sites {
		for _, o := range s.rawOr {
			if l := r.byCall[o]; l != nil {
				s.Origins = append(s.Origins, l.ID)
			}
		}
		if s.call >= 0 {
			s.Reads = r.reads[s.call]
			s.Writes = r.writes[s.call]
			s.Escapes = r.escapes[s.call]
			slices.Sort(s.Escapes)
		}
	}
	res.Sites = sites
	res.Maps = r.maps(sites)
	for _, s := range sites {
		r.eligibility(s, res.Maps[s.Map])
	}
}
