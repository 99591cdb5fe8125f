package analysis

import (
	"math"
	"math/bits"

	"github.com/cilium/ebpf/asm"
)

// alu applies an ALU or ALU64 instruction.
func (a *analyzer) alu(at loc, st *State, ins asm.Instruction) {
	is64 := ins.OpCode.Class() == asm.ALU64Class
	op := ins.OpCode.ALUOp()
	dst := st.regs[ins.Dst]

	if op == asm.Swap {
		st.regs[ins.Dst] = swap(dst, ins, is64)
		a.loseALU(at, dst)
		return
	}

	var src Value
	if ins.OpCode.Source() == asm.RegSource {
		src = st.regs[ins.Src]
	} else {
		src = constant(uint64(ins.Constant)) // the immediate is sign-extended
	}

	switch op {
	case asm.Mov:
		if is64 {
			st.regs[ins.Dst] = src
			return
		}
		st.regs[ins.Dst] = truncate32(src)
		a.loseALU(at, src)
		return
	case asm.MovSX8, asm.MovSX16, asm.MovSX32:
		st.regs[ins.Dst] = movsx(src, op, is64)
		a.loseALU(at, src)
		return
	case asm.Neg:
		src = dst // unary
	}

	// Pointer arithmetic: only 64-bit add and subtract keep a pointer.
	if is64 && (op == asm.Add || op == asm.Sub) && (dst.Kind.IsPointer() || src.Kind.IsPointer()) {
		st.regs[ins.Dst] = a.ptrArith(at, op, dst, src)
		return
	}
	if dst.Kind.IsPointer() || src.Kind.IsPointer() || dst.taints() || src.taints() {
		a.loseALU(at, dst)
		a.loseALU(at, src)
		st.regs[ins.Dst] = scalar()
		return
	}

	if dst.Kind == Const && src.Kind == Const {
		if c, ok := foldALU(op, dst.Const, src.Const, is64); ok {
			st.regs[ins.Dst] = constant(c)
			return
		}
	}
	if src.Kind == Const && (src.Const == 0 || !is64 && uint32(src.Const) == 0) {
		switch op {
		case asm.Div, asm.SDiv:
			st.regs[ins.Dst] = constant(0)
			return
		case asm.Mod, asm.SMod:
			// Modulo by zero leaves the destination unchanged (its low
			// half, zero-extended, for 32-bit operations).
			if !is64 {
				st.regs[ins.Dst] = truncate32(dst)
			}
			return
		}
	}
	if is64 && (op == asm.Add || op == asm.Sub) && (dst.Kind == Unknown || src.Kind == Unknown) {
		st.regs[ins.Dst] = tainted(dst, src) // may still be a pointer
		return
	}
	v := scalar()
	// Provenance survives arithmetic with constants and other packet data.
	pk := func(x Value) bool { return x.Kind == Scalar && x.Packet }
	okOther := func(x Value) bool { return x.Kind == Const || pk(x) }
	if (pk(dst) && okOther(src)) || (pk(src) && okOther(dst)) {
		v.Packet = true
	}
	st.regs[ins.Dst] = v
}

// loseALU records that a pointer was turned into a number.
func (a *analyzer) loseALU(at loc, v Value) {
	a.lose(at, v, "pointer used in arithmetic")
}

func (a *analyzer) ptrArith(at loc, op asm.ALUOp, dst, src Value) Value {
	switch {
	case dst.Kind.IsPointer() && src.Kind.IsPointer():
		if op == asm.Sub && dst.Kind != Unknown && src.Kind != Unknown {
			// Pointer difference, e.g. data_end - data.
			if dst.Kind == src.Kind && dst.Map == src.Map && dst.OffKnown && src.OffKnown {
				return constant(uint64(dst.Off - src.Off))
			}
			return scalar()
		}
		return tainted(dst, src)
	case dst.Kind.IsPointer():
		return a.moveBy(at, dst, src, op == asm.Sub)
	default:
		if op == asm.Sub {
			a.lose(at, src, "pointer subtracted from a number")
			return scalar()
		}
		return a.moveBy(at, src, dst, false)
	}
}

// moveBy displaces pointer p by the number d.
func (a *analyzer) moveBy(at loc, p, d Value, neg bool) Value {
	if p.Kind == PtrMap || p.Kind == PtrFunc {
		a.lose(at, p, "arithmetic on a map or function pointer")
		return unknown()
	}
	if d.Kind == Unknown {
		return tainted(p, d)
	}
	if d.Kind == Const {
		off := int64(d.Const)
		if neg {
			off = -off
		}
		return p.addOff(off)
	}
	if p.Kind == PtrMapValue && a.rec != nil {
		a.rec.siteEscape(at, p, "pointer arithmetic with an unknown offset")
	}
	return p.withUnknownOff()
}

// truncate32 is a 32-bit move: the low half, zero-extended.
func truncate32(v Value) Value {
	switch v.Kind {
	case Const:
		return constant(v.Const & math.MaxUint32)
	case Scalar:
		out := Value{Kind: Scalar, Packet: v.Packet}
		if v.PktSize > 0 && v.PktSize <= 4 {
			out.PktOff, out.PktSize = v.PktOff, v.PktSize
		}
		return out
	}
	return scalar()
}

func movsx(v Value, op asm.ALUOp, is64 bool) Value {
	if v.Kind != Const {
		return Value{Kind: Scalar, Packet: v.Kind == Scalar && v.Packet}
	}
	var c uint64
	switch op {
	case asm.MovSX8:
		c = uint64(int64(int8(v.Const)))
	case asm.MovSX16:
		c = uint64(int64(int16(v.Const)))
	default:
		c = uint64(int64(int32(v.Const)))
	}
	if !is64 {
		c &= math.MaxUint32
	}
	return constant(c)
}

// swap implements BPF_END: to-little-endian truncates on this
// (little-endian) target, to-big-endian and the unconditional ALU64 form
// swap the low bytes.
func swap(v Value, ins asm.Instruction, is64 bool) Value {
	width := ins.Constant
	if v.Kind != Const {
		return Value{Kind: Scalar, Packet: v.Kind == Scalar && v.Packet}
	}
	c := v.Const
	doSwap := is64 || ins.OpCode.Endianness() == asm.BE
	switch width {
	case 16:
		c &= 0xffff
		if doSwap {
			c = uint64(bits.ReverseBytes16(uint16(c)))
		}
	case 32:
		c &= math.MaxUint32
		if doSwap {
			c = uint64(bits.ReverseBytes32(uint32(c)))
		}
	case 64:
		if doSwap {
			c = bits.ReverseBytes64(c)
		}
	default:
		return scalar()
	}
	return constant(c)
}

// foldALU evaluates op on constants with BPF semantics: 32-bit operations
// use and zero-extend the low halves, division by zero gives zero and
// modulo by zero leaves the destination unchanged, shift counts are masked
// like the interpreter does.
func foldALU(op asm.ALUOp, a, b uint64, is64 bool) (uint64, bool) {
	if !is64 {
		a, b = a&math.MaxUint32, b&math.MaxUint32
	}
	var r uint64
	switch op {
	case asm.Add:
		r = a + b
	case asm.Sub:
		r = a - b
	case asm.Mul:
		r = a * b
	case asm.Div:
		if b != 0 {
			r = a / b
		}
	case asm.Mod:
		r = a
		if b != 0 {
			r = a % b
		}
	case asm.SDiv, asm.SMod:
		r = signedDivMod(op, a, b, is64)
	case asm.Or:
		r = a | b
	case asm.And:
		r = a & b
	case asm.Xor:
		r = a ^ b
	case asm.LSh:
		r = a << (b & shiftMask(is64))
	case asm.RSh:
		r = a >> (b & shiftMask(is64))
	case asm.ArSh:
		if is64 {
			r = uint64(int64(a) >> (b & 63))
		} else {
			r = uint64(uint32(int32(uint32(a)) >> (b & 31)))
		}
	case asm.Neg:
		r = -a
	default:
		return 0, false
	}
	if !is64 {
		r &= math.MaxUint32
	}
	return r, true
}

func shiftMask(is64 bool) uint64 {
	if is64 {
		return 63
	}
	return 31
}

// signedDivMod follows the kernel: x/0 = 0, x%0 = x, MIN/-1 = MIN, MIN%-1 = 0.
func signedDivMod(op asm.ALUOp, a, b uint64, is64 bool) uint64 {
	if is64 {
		x, y := int64(a), int64(b)
		switch {
		case y == 0 && op == asm.SDiv:
			return 0
		case y == 0:
			return a
		case y == -1 && op == asm.SDiv:
			return uint64(-x)
		case y == -1:
			return 0
		case op == asm.SDiv:
			return uint64(x / y)
		}
		return uint64(x % y)
	}
	x, y := int32(uint32(a)), int32(uint32(b))
	switch {
	case y == 0 && op == asm.SDiv:
		return 0
	case y == 0:
		return uint64(uint32(x))
	case y == -1 && op == asm.SDiv:
		return uint64(uint32(-x))
	case y == -1:
		return 0
	case op == asm.SDiv:
		return uint64(uint32(x / y))
	}
	return uint64(uint32(x % y))
}
