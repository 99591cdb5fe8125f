package analysis

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf/asm"
)

// StackSize is the size of a BPF stack frame in bytes. Offsets into the
// frame are relative to R10 and lie in [-StackSize, 0).
const StackSize = 512

const numSlots = StackSize / 8

// ByteKind classifies what the analysis knows about one stack byte.
type ByteKind uint8

// Stack byte kinds.
const (
	ByteUnknown ByteKind = iota // anything (never written, clobbered, or unknown data)
	ByteConst                   // a known byte value
	BytePacket                  // a byte copied from (or computed from) packet data
	ByteSpill                   // part of an 8-byte register spill; see State.Stack
)

func (k ByteKind) String() string {
	switch k {
	case ByteConst:
		return "const"
	case BytePacket:
		return "packet"
	case ByteSpill:
		return "spill"
	}
	return "unknown"
}

// StackByte is the abstract content of one stack byte.
type StackByte struct {
	Kind ByteKind
	// Value is the byte of a ByteConst.
	Value uint8
	// PktOff is the packet offset a BytePacket was copied from, or -1 when
	// the byte was computed from packet data or its offset is unknown.
	PktOff int16
}

var unknownByte = StackByte{Kind: ByteUnknown, PktOff: -1}

// spillMark is each byte of a spill slot.
var spillMark = StackByte{Kind: ByteSpill, PktOff: -1}

// frame is the abstract stack of one function invocation. An aligned
// 8-byte store of a register spills the whole register value (pointer
// identity included) into spills; all other stores are tracked per byte.
//
// The bytes and the spills are copy-on-write: a State copy shares them
// (they are most of a state's size, the fixpoint copies states at every
// block visit and branch, and most blocks write neither), and the first
// write of either after a copy gives the writer its own. The bytes are
// shared in chunks of 64, so that a store copies only its chunk. The
// spills are a short list: few slots of a frame hold spilled registers.
type frame struct {
	chunks [numChunks]*byteChunk
	// spills are the values of the spill slots that are not the zero
	// Value, by slot.
	spills []spillSlot
	// sharedBytes (a bit per chunk) and sharedSpills are set on both
	// sides of a copy: the chunk or the list may be referenced by another
	// frame and must be copied before a write.
	sharedBytes  uint8
	sharedSpills bool
}

// Stack bytes are shared in chunks of chunkSize.
const (
	chunkSize = 64
	numChunks = StackSize / chunkSize
	allShared = 1<<numChunks - 1
)

type byteChunk [chunkSize]StackByte

// raw returns byte i of the frame (0 is the lowest, at R10-512) as
// stored, spills not expanded.
func (f *frame) raw(i int) StackByte { return f.chunks[i/chunkSize][i%chunkSize] }

// set writes byte i, first taking a private copy of a shared chunk, if
// the byte changes.
func (f *frame) set(i int, b StackByte) {
	c := i / chunkSize
	if f.chunks[c][i%chunkSize] == b {
		return
	}
	if f.sharedBytes&(1<<c) != 0 {
		own := *f.chunks[c]
		f.chunks[c] = &own
		f.sharedBytes &^= 1 << c
	}
	f.chunks[c][i%chunkSize] = b
}

// slotBytes returns the 8 bytes of a slot (slots never straddle chunks).
func (f *frame) slotBytes(slot int) [8]StackByte {
	i := slot * 8
	return [8]StackByte(f.chunks[i/chunkSize][i%chunkSize : i%chunkSize+8])
}

// sameBytes reports whether f and g hold equal bytes.
func sameBytes(f, g *frame) bool {
	for c := range numChunks {
		if f.chunks[c] != g.chunks[c] && *f.chunks[c] != *g.chunks[c] {
			return false
		}
	}
	return true
}

// spillSlot is the value spilled to one slot.
type spillSlot struct {
	slot int
	v    Value
}

// sameSpills reports whether f and g hold the very same spills (a copy
// not written since).
func sameSpills(f, g *frame) bool {
	if len(f.spills) != len(g.spills) {
		return false
	}
	return len(f.spills) == 0 || &f.spills[0] == &g.spills[0]
}

// spill returns the value of spill slot i (the zero Value if none was
// set).
func (f *frame) spill(i int) Value {
	for _, s := range f.spills {
		if s.slot >= i {
			if s.slot == i {
				return s.v
			}
			break
		}
	}
	return Value{}
}

// setSpill writes spill slot i, first taking a private copy of shared
// spills.
func (f *frame) setSpill(i int, v Value) {
	at := 0
	for at < len(f.spills) && f.spills[at].slot < i {
		at++
	}
	present := at < len(f.spills) && f.spills[at].slot == i
	zero := v == Value{}
	if zero && !present {
		return
	}
	if f.sharedSpills {
		f.spills = append(make([]spillSlot, 0, len(f.spills)+1), f.spills...)
		f.sharedSpills = false
	}
	switch {
	case present && zero:
		f.spills = slices.Delete(f.spills, at, at+1)
	case present:
		f.spills[at].v = v
	default:
		f.spills = slices.Insert(f.spills, at, spillSlot{i, v})
	}
}

// share marks the frame's arrays shared: written only after a copy.
func (f *frame) share() { f.sharedBytes, f.sharedSpills = allShared, true }

// copyFrom makes s a copy of t that shares t's bytes and spills until
// either writes. t is only written when not yet marked: the analysis
// marks every state it keeps, so queries that copy them (which may run
// concurrently) only read.
func (s *State) copyFrom(t *State) {
	if t.frame.sharedBytes != allShared || !t.frame.sharedSpills {
		t.frame.share()
	}
	*s = *t
}

// State is the abstract machine state at one program point: registers
// R0-R10 and the function's stack frame. States handed out by Result are
// copies; changing them does not affect the analysis.
type State struct {
	regs  [asm.R10 + 1]Value
	frame frame
}

// unknownChunk is every chunk of a fresh frame, shared by every new
// state (and never written: states copy it first).
var unknownChunk = func() *byteChunk {
	var b byteChunk
	for i := range b {
		b[i] = unknownByte
	}
	return &b
}()

func newState() *State {
	s := &State{}
	for c := range s.frame.chunks {
		s.frame.chunks[c] = unknownChunk
	}
	s.frame.share()
	for r := range s.regs {
		s.regs[r] = Value{Kind: Uninit}
	}
	s.regs[asm.R10] = stackPtr(0)
	return s
}

func (s *State) clone() *State {
	c := new(State)
	c.copyFrom(s)
	return c
}

// Reg returns the abstract value of register r.
func (s *State) Reg(r asm.Register) Value {
	if int(r) >= len(s.regs) {
		return unknown()
	}
	return s.regs[r]
}

// StackBytes returns the abstract bytes [off, off+size) of the frame, off
// relative to R10. Bytes of spilled registers are expanded: a spilled
// constant gives its constant bytes, a spilled pointer gives ByteSpill.
func (s *State) StackBytes(off, size int) []StackByte {
	out := make([]StackByte, 0, max(size, 0))
	for o := off; o < off+size; o++ {
		if o < -StackSize || o >= 0 {
			out = append(out, unknownByte)
			continue
		}
		out = append(out, s.frame.byteAt(o))
	}
	return out
}

// Stack returns the value an aligned 8-byte load from offset off (relative
// to R10) would produce.
func (s *State) Stack(off int) Value {
	if off < -StackSize || off+8 > 0 {
		return unknown()
	}
	return s.frame.load(int64(off), 8, false)
}

// String lists the known registers and spills, for debugging and tests.
func (s *State) String() string {
	var parts []string
	for r, v := range s.regs {
		if v.Kind != Uninit {
			parts = append(parts, fmt.Sprintf("r%d=%v", r, v))
		}
	}
	for slot := range numSlots {
		off := slot*8 - StackSize
		if s.frame.isSpill(slot) {
			parts = append(parts, fmt.Sprintf("fp%d=%v", off, s.frame.spill(slot)))
		}
	}
	return strings.Join(parts, " ")
}

func (s *State) equal(t *State) bool {
	for i := range s.regs {
		if !s.regs[i].equal(t.regs[i]) {
			return false
		}
	}
	return s.frame.equal(&t.frame)
}

// joinState merges t into a copy of s.
func joinState(s, t *State) *State {
	out := s.clone()
	joinInto(out, s, t)
	return out
}

// joinInto sets out, which must hold a copy of s, to the join of s and t.
func joinInto(out, s, t *State) {
	for i := range out.regs {
		out.regs[i] = join(s.regs[i], t.regs[i])
	}
	out.frame.join(&t.frame)
}

func (f *frame) equal(g *frame) bool {
	if !sameBytes(f, g) {
		return false
	}
	if sameSpills(f, g) {
		return true
	}
	for slot := range numSlots {
		if f.isSpill(slot) && !f.spill(slot).equal(g.spill(slot)) {
			return false
		}
	}
	return true
}

func idx(off int64) int { return int(off) + StackSize }

func (f *frame) isSpill(slot int) bool { return f.raw(slot*8).Kind == ByteSpill }

// byteAt returns the byte at off with spills expanded.
func (f *frame) byteAt(off int) StackByte {
	i := off + StackSize
	b := f.raw(i)
	if b.Kind != ByteSpill {
		return b
	}
	return spillByte(f.spill(i/8), i%8)
}

// markSpill marks the bytes of slot as a spill's (writing only if they
// are not yet).
func (f *frame) markSpill(slot int) {
	for i := range 8 {
		f.set(slot*8+i, spillMark)
	}
}

// spillByte is byte i (little-endian) of v as stored to memory.
func spillByte(v Value, i int) StackByte {
	switch {
	case v.Kind == Const:
		return StackByte{Kind: ByteConst, Value: uint8(v.Const >> (8 * i)), PktOff: -1}
	case v.Kind == Scalar && v.PktSize > 0 && i < int(v.PktSize):
		return StackByte{Kind: BytePacket, PktOff: int16(int(v.PktOff) + i)}
	case v.Kind == Scalar && v.PktSize > 0:
		return StackByte{Kind: ByteConst, PktOff: -1} // zero extension of the load
	case v.Kind == Scalar && v.Packet:
		return StackByte{Kind: BytePacket, PktOff: -1}
	}
	return unknownByte
}

// bytesOf gives the little-endian bytes of the low n bytes of v as stored
// to memory. Pointers and unknown numbers give ByteUnknown.
func bytesOf(v Value, n int) []StackByte {
	out := make([]StackByte, n)
	for i := range out {
		out[i] = spillByte(v, i)
	}
	return out
}

// bytes8 is bytesOf(v, 8) without an allocation.
func bytes8(v Value) [8]StackByte {
	var out [8]StackByte
	for i := range out {
		out[i] = spillByte(v, i)
	}
	return out
}

// unspill turns the spill slots overlapping [lo, hi) into plain bytes so
// that a partial store can overwrite some of them.
func (f *frame) unspill(lo, hi int64) {
	for slot := idx(lo) / 8; slot <= (idx(hi)-1)/8 && slot < numSlots; slot++ {
		if !f.isSpill(slot) {
			continue
		}
		for i, b := range bytes8(f.spill(slot)) {
			f.set(slot*8+i, b)
		}
		f.setSpill(slot, Value{})
	}
}

// store writes the low n bytes of v at off. It reports whether a pointer
// that carries map identity was stored in a way that cannot be reloaded
// as that pointer.
func (f *frame) store(off int64, n int, v Value) (lost bool) {
	if n == 8 && idx(off)%8 == 0 {
		slot := idx(off) / 8
		f.setSpill(slot, v)
		f.markSpill(slot)
		return false
	}
	f.unspill(off, off+int64(n))
	b := bytes8(v)
	for i := range n {
		f.set(idx(off)+i, b[i])
	}
	return v.taints()
}

// load reads n bytes at off.
func (f *frame) load(off int64, n int, signExtend bool) Value {
	if n == 8 && idx(off)%8 == 0 && f.isSpill(idx(off)/8) {
		return f.spill(idx(off) / 8)
	}
	var (
		c                uint64
		allConst, allPkt = true, true
		anyPkt           bool
		direct           = true
	)
	first := f.byteAt(int(off))
	for i := range n {
		b := f.byteAt(int(off) + i)
		switch b.Kind {
		case ByteConst:
			c |= uint64(b.Value) << (8 * i)
			allPkt = false
		case BytePacket:
			allConst = false
			anyPkt = true
			if b.PktOff < 0 || first.PktOff < 0 || int(b.PktOff) != int(first.PktOff)+i {
				direct = false
			}
		default:
			allConst, allPkt = false, false
		}
	}
	switch {
	case allConst:
		if signExtend && n < 8 {
			shift := uint(64 - 8*n)
			c = uint64(int64(c<<shift) >> shift)
		}
		return constant(c)
	case allPkt && direct && !signExtend:
		return Value{Kind: Scalar, Packet: true, PktOff: int32(first.PktOff), PktSize: uint8(n)}
	case allPkt || anyPkt && allConstOrPacket(f, off, n):
		return Value{Kind: Scalar, Packet: true}
	}
	return scalar()
}

func allConstOrPacket(f *frame, off int64, n int) bool {
	for i := range n {
		if k := f.byteAt(int(off) + i).Kind; k != ByteConst && k != BytePacket {
			return false
		}
	}
	return true
}

// clobber makes [lo, hi) unknown, as after an unknown write. Spilled
// values in the range are passed to lost.
func (f *frame) clobber(lo, hi int64, lost func(Value)) {
	lo, hi = max(lo, -StackSize), min(hi, 0)
	if lo >= hi {
		return
	}
	for slot := idx(lo) / 8; slot <= (idx(hi)-1)/8; slot++ {
		if f.isSpill(slot) {
			lost(f.spill(slot))
		}
	}
	f.unspill(lo, hi)
	for i := idx(lo); i < idx(hi); i++ {
		f.set(i, unknownByte)
	}
}

// spilled calls fn for every spilled value that carries map identity.
func (f *frame) spilled(fn func(Value)) {
	for slot := range numSlots {
		if f.isSpill(slot) && f.spill(slot).taints() {
			fn(f.spill(slot))
		}
	}
}

func (f *frame) join(g *frame) {
	if sameBytes(f, g) {
		// The same bytes, so the same spill slots, and joining equal
		// bytes changes nothing: only spilled values can change.
		if sameSpills(f, g) {
			return // the same frame: the join is idempotent
		}
		var buf [16]int
		slots := buf[:0]
		for _, s := range f.spills {
			slots = append(slots, s.slot)
		}
		for _, s := range g.spills {
			slots = append(slots, s.slot)
		}
		slices.Sort(slots)
		for _, slot := range slices.Compact(slots) {
			if f.isSpill(slot) {
				if v := join(f.spill(slot), g.spill(slot)); !v.equal(f.spill(slot)) {
					f.setSpill(slot, v)
				}
			}
		}
		return
	}
	for slot := range numSlots {
		fs, gs := f.isSpill(slot), g.isSpill(slot)
		switch {
		case fs && gs:
			// Most joins change nothing: writing only what changed
			// keeps the spills shared (a write copies all of them).
			if v := join(f.spill(slot), g.spill(slot)); !v.equal(f.spill(slot)) {
				f.setSpill(slot, v)
			}
			continue
		case fs && f.spill(slot).taints(), gs && g.spill(slot).taints():
			// A map pointer spilled on one path only: the slot may still
			// hold it, so keep it as a tainted spill.
			v := f.spill(slot)
			if gs {
				v = g.spill(slot)
			}
			if tv := tainted(v); !fs || !tv.equal(f.spill(slot)) {
				f.setSpill(slot, tv)
			}
			f.markSpill(slot)
			continue
		}
		if !fs && !gs && f.slotBytes(slot) == g.slotBytes(slot) {
			continue // equal plain bytes join to themselves
		}
		var gb [8]StackByte
		if gs {
			gb = bytes8(g.spill(slot))
		} else {
			gb = g.slotBytes(slot)
		}
		if fs {
			f.unspill(int64(slot*8-StackSize), int64(slot*8-StackSize+8))
		}
		for i := range 8 {
			f.set(slot*8+i, joinByte(f.raw(slot*8+i), gb[i]))
		}
	}
}

func joinByte(a, b StackByte) StackByte {
	switch {
	case a == b:
		return a
	case a.Kind == BytePacket && b.Kind == BytePacket:
		return StackByte{Kind: BytePacket, PktOff: -1}
	}
	return unknownByte
}
