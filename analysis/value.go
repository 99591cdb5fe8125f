package analysis

import (
	"fmt"
	"slices"
)

// Kind classifies an abstract value.
type Kind uint8

// The abstract value kinds. Unknown is the top of the lattice: the register
// may hold anything, a number or a pointer of any kind.
const (
	Unknown        Kind = iota // anything; the analysis lost track
	Scalar                     // a number with an unknown value
	Const                      // a number with a known 64-bit value
	PtrStack                   // pointer into the current function's frame
	PtrParentStack             // pointer into a caller's frame
	PtrCtx                     // pointer to the program context
	PtrPacket                  // pointer into the packet
	PtrPacketEnd               // the packet's end pointer (data_end)
	PtrMap                     // a map object (ld_imm64 with BPF_PSEUDO_MAP_FD)
	PtrMapValue                // a value returned by a lookup-like helper
	PtrMapData                 // a direct value address (BPF_PSEUDO_MAP_VALUE), e.g. .rodata
	PtrFunc                    // the address of a BPF function (callback)
	PtrOther                   // a pointer to memory the analysis does not model
	// Uninit is a register that holds nothing yet (before its first write,
	// or R1-R5 after a call). The verifier rejects every read of one, so
	// on a merge it gives way to the other side's value.
	Uninit
)

var kindNames = [...]string{
	Unknown:        "unknown",
	Scalar:         "scalar",
	Const:          "const",
	PtrStack:       "stack",
	PtrParentStack: "parent_stack",
	PtrCtx:         "ctx",
	PtrPacket:      "packet",
	PtrPacketEnd:   "packet_end",
	PtrMap:         "map",
	PtrMapValue:    "map_value",
	PtrMapData:     "map_data",
	PtrFunc:        "func",
	PtrOther:       "pointer",
	Uninit:         "uninit",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// IsPointer reports whether values of the kind are pointers.
func (k Kind) IsPointer() bool { return k >= PtrStack && k <= PtrOther }

// Value is the abstract value of a register or of a spilled stack slot.
// The zero Value is Unknown. Values are immutable: every operation returns
// a new one.
//
// The fields are ordered small first to keep a Value at 72 bytes: every
// state holds eleven registers and the fixpoint copies states at every
// block visit.
type Value struct {
	Kind Kind
	// OffKnown says that Off is meaningful.
	OffKnown bool
	// MaybeNull is set on pointers that may be NULL (lookup results before
	// their null check).
	MaybeNull bool
	// Packet is set on scalars derived from packet bytes on every path.
	Packet bool
	// PktOff and PktSize describe a scalar loaded directly (unmodified)
	// from the packet: PktSize bytes at offset PktOff. PktSize is 0 when
	// the value was transformed or its offset is unknown.
	PktSize uint8
	PktOff  int32
	// ID is shared by copies of one maybe-null pointer so that a null check
	// of one copy refines all of them. Zero means no identity.
	ID uint32
	// Const is the value of a Const.
	Const uint64
	// Off is the byte offset of a pointer from the start of the object it
	// points into (frame pointer for stack pointers, so usually negative),
	// meaningful when OffKnown.
	Off int64
	// Map names the map of PtrMap, PtrMapValue and PtrMapData as in
	// CollectionSpec.Maps. It is empty for an inner map of a map-in-map.
	Map string
	// Func names the function of a PtrFunc.
	Func string

	// lists holds the origins and maybe lists, nil when both are empty.
	lists *valueLists
}

// valueLists are the lists of a Value, out of line because few values
// have them. Shared lists are never modified.
type valueLists struct {
	// origins are the call numbers of the lookups a PtrMapValue may come
	// from, sorted.
	origins []int
	// maybe names the maps an Unknown may point into (or be): the value
	// is the merge of a map pointer with something else. Using such a
	// value loses track of those maps; merely dropping it does not.
	maybe []string
}

// origins returns v's origins list.
func (v Value) origins() []int {
	if v.lists == nil {
		return nil
	}
	return v.lists.origins
}

// maybe returns v's maybe list.
func (v Value) maybe() []string {
	if v.lists == nil {
		return nil
	}
	return v.lists.maybe
}

// withLists returns v with the given lists.
func (v Value) withLists(origins []int, maybe []string) Value {
	v.lists = nil
	if len(origins) > 0 || len(maybe) > 0 {
		v.lists = &valueLists{origins: origins, maybe: maybe}
	}
	return v
}

// Convenience constructors.

func unknown() Value           { return Value{} }
func scalar() Value            { return Value{Kind: Scalar} }
func constant(c uint64) Value  { return Value{Kind: Const, Const: c} }
func stackPtr(off int64) Value { return Value{Kind: PtrStack, Off: off, OffKnown: true} }
func ptrAt(k Kind, off int64) Value {
	return Value{Kind: k, Off: off, OffKnown: true}
}

// IsConst reports whether v is a known number.
func (v Value) IsConst() bool { return v.Kind == Const }

// String renders the value compactly for listings and test failures.
func (v Value) String() string {
	switch v.Kind {
	case Uninit:
		return "-"
	case Unknown:
		return "?"
	case Scalar:
		switch {
		case v.PktSize > 0:
			return fmt.Sprintf("scalar(pkt[%d:%d])", v.PktOff, int(v.PktOff)+int(v.PktSize))
		case v.Packet:
			return "scalar(pkt)"
		}
		return "scalar"
	case Const:
		return fmt.Sprintf("%#x", v.Const)
	}
	s := v.Kind.String()
	switch v.Kind {
	case PtrMap, PtrMapValue, PtrMapData:
		s += "(" + v.Map + ")"
	case PtrFunc:
		s += "(" + v.Func + ")"
	}
	if v.Kind != PtrMap && v.Kind != PtrFunc {
		if v.OffKnown {
			s += fmt.Sprintf("%+d", v.Off)
		} else {
			s += "+?"
		}
	}
	if v.MaybeNull {
		s += "|null"
	}
	if v.ID != 0 {
		s += fmt.Sprintf("#%d", v.ID)
	}
	return s
}

// equal is structural equality, used to detect the fixpoint.
func (v Value) equal(w Value) bool {
	return v.Kind == w.Kind && v.Const == w.Const && v.Off == w.Off && v.OffKnown == w.OffKnown &&
		v.Map == w.Map && v.Func == w.Func && v.MaybeNull == w.MaybeNull && v.ID == w.ID &&
		v.Packet == w.Packet && v.PktOff == w.PktOff && v.PktSize == w.PktSize &&
		(v.lists == w.lists || slices.Equal(v.origins(), w.origins()) && slices.Equal(v.maybe(), w.maybe()))
}

// taints reports whether v carries map identity: a map pointer, a map
// value pointer, or an Unknown that may be one.
func (v Value) taints() bool { return v.tracksMap() || len(v.maybe()) > 0 }

// mapsOf names the maps v may refer to.
func (v Value) mapsOf() []string {
	if v.tracksMap() {
		return []string{v.Map}
	}
	return v.maybe()
}

// tainted is an Unknown that remembers the map identity of the values it
// was merged from.
func tainted(vs ...Value) Value {
	var origins []int
	var maybe []string
	for _, v := range vs {
		maybe = unionStrings(maybe, v.mapsOf())
		origins = unionOrigins(origins, v.origins())
	}
	return unknown().withLists(origins, maybe)
}

func unionStrings(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// tracksMap reports whether v carries map identity that the analysis must
// not silently lose: losing it means a write through the pointer could go
// unseen.
func (v Value) tracksMap() bool {
	return v.Kind == PtrMap || v.Kind == PtrMapValue || v.Kind == PtrMapData
}

// addOff moves a pointer by a known displacement.
func (v Value) addOff(d int64) Value {
	if v.OffKnown {
		v.Off += d
	}
	return v
}

// withUnknownOff forgets a pointer's offset.
func (v Value) withUnknownOff() Value {
	v.Off, v.OffKnown = 0, false
	return v
}

// isNull reports whether v is the constant zero, which joins with any
// pointer into a maybe-null pointer.
func (v Value) isNull() bool { return v.Kind == Const && v.Const == 0 }

func unionOrigins(a, b []int) []int {
	if len(a) == 0 {
		return b
	}
	if len(b) == 0 || slices.Equal(a, b) {
		return a
	}
	out := make([]int, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// join is the least upper bound of two values. Map identity that the
// result cannot carry as a pointer is kept as taint on an Unknown.
func join(a, b Value) Value {
	if a.equal(b) {
		return a
	}
	switch {
	case a.Kind == Uninit:
		return b
	case b.Kind == Uninit:
		return a
	case a.Kind == b.Kind:
		return joinSameKind(a, b)
	case (a.Kind == Scalar || a.Kind == Const) && (b.Kind == Scalar || b.Kind == Const):
		return scalar()
	case a.isNull() && b.Kind.IsPointer():
		b.MaybeNull = true
		return b
	case b.isNull() && a.Kind.IsPointer():
		a.MaybeNull = true
		return a
	}
	return tainted(a, b)
}

func joinSameKind(a, b Value) Value {
	switch a.Kind {
	case Unknown:
		return tainted(a, b)
	case Const:
		return scalar()
	case Scalar:
		v := Value{Kind: Scalar, Packet: a.Packet && b.Packet}
		if v.Packet && a.PktOff == b.PktOff && a.PktSize == b.PktSize {
			v.PktOff, v.PktSize = a.PktOff, a.PktSize
		}
		return v
	}
	if a.Map != b.Map || a.Func != b.Func {
		return tainted(a, b)
	}
	v := a
	if !a.OffKnown || !b.OffKnown || a.Off != b.Off {
		v = v.withUnknownOff()
	}
	v.MaybeNull = a.MaybeNull || b.MaybeNull
	if a.ID != b.ID {
		v.ID = 0
	}
	return v.withLists(unionOrigins(a.origins(), b.origins()), v.maybe())
}
