package analysis

import (
	"math"

	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// branch handles a block's terminator and returns the feasible edges with
// the state refined for each.
func (a *analyzer) branch(at loc, st *State, ins asm.Instruction) []edge {
	b := at.block
	op := ins.OpCode.JumpOp()
	switch op {
	case asm.Exit:
		a.exit(at, st)
		return nil
	case asm.Ja:
		return []edge{{b.Target, st}}
	case asm.JCOND: // may_goto
		return a.edges(b, st, a.copyOf(st), true, true)
	}

	is32 := ins.OpCode.Class() == asm.Jump32Class
	dst := st.regs[ins.Dst]
	var src Value
	srcReg := ins.OpCode.Source() == asm.RegSource
	if srcReg {
		src = st.regs[ins.Src]
	} else {
		src = constant(uint64(ins.Constant))
	}
	if a.rec != nil {
		a.rec.compare(at, dst, src)
	}

	taken, fall := true, true
	if outcome, ok := decide(op, dst, src, is32); ok {
		taken, fall = outcome, !outcome
	}
	var ts, fs *State
	if taken {
		ts = a.copyOf(st)
	}
	if fall {
		fs = st
	}

	// Refinement on equality with a constant. A null check splits a
	// maybe-null pointer (and every copy sharing its ID) into NULL and
	// non-NULL; an equality test of a number makes it a constant.
	if (op == asm.JEq || op == asm.JNE) && !is32 && src.Kind == Const {
		eq, ne := ts, fs
		if op == asm.JNE {
			eq, ne = fs, ts
		}
		switch {
		case dst.MaybeNull && src.Const == 0:
			refineNull(eq, ins.Dst, dst, true)
			refineNull(ne, ins.Dst, dst, false)
		case dst.Kind == Scalar && eq != nil:
			eq.regs[ins.Dst] = constant(src.Const)
		}
	}
	return a.edges(b, ts, fs, ts != nil, fs != nil)
}

// edges builds the outgoing edges of b that can be taken.
func (a *analyzer) edges(b *program.Block, ts, fs *State, taken, fall bool) []edge {
	var out []edge
	if taken && b.Target != nil {
		out = append(out, edge{b.Target, ts})
	}
	if fall && b.Next != nil {
		out = append(out, edge{b.Next, fs})
	}
	return out
}

// refineNull marks reg (and copies of its value) NULL or non-NULL in st.
func refineNull(st *State, reg asm.Register, v Value, isNull bool) {
	if st == nil {
		return
	}
	apply := func(w Value) Value {
		if isNull {
			return constant(0)
		}
		w.MaybeNull = false
		return w
	}
	st.regs[reg] = apply(st.regs[reg])
	if v.ID == 0 {
		return
	}
	for r := range st.regs {
		if st.regs[r].ID == v.ID && st.regs[r].MaybeNull {
			st.regs[r] = apply(st.regs[r])
		}
	}
	for slot := range numSlots {
		if st.frame.isSpill(slot) && st.frame.spill(slot).ID == v.ID && st.frame.spill(slot).MaybeNull {
			st.frame.setSpill(slot, apply(st.frame.spill(slot)))
		}
	}
}

// decide evaluates a condition when the operands determine it.
func decide(op asm.JumpOp, dst, src Value, is32 bool) (bool, bool) {
	if dst.Kind == Const && src.Kind == Const {
		return CompareConst(op, dst.Const, src.Const, is32)
	}
	// A pointer that cannot be NULL is never equal to zero.
	if !is32 && (op == asm.JEq || op == asm.JNE) {
		nonNull := func(v Value) bool {
			return v.Kind.IsPointer() && !v.MaybeNull && v.Kind != PtrParentStack
		}
		if (nonNull(dst) && src.isNull()) || (nonNull(src) && dst.isNull()) {
			return op == asm.JNE, true
		}
	}
	return false, false
}

// CompareConst evaluates the BPF conditional jump op on the constants x
// (dst) and y (src). 32-bit jumps (JMP32) compare the low halves only,
// signed ones as two's complement of the width compared; JSet tests
// x&y != 0. ok is false for ops that are not comparisons (Ja, Call,
// Exit, ...). It is exported so that passes fold branches with exactly
// the semantics the analysis prunes them with.
func CompareConst(op asm.JumpOp, x, y uint64, is32 bool) (taken, ok bool) {
	sx, sy := int64(x), int64(y)
	if is32 {
		x, y = x&math.MaxUint32, y&math.MaxUint32
		sx, sy = int64(int32(uint32(x))), int64(int32(uint32(y)))
	}
	switch op {
	case asm.JEq:
		return x == y, true
	case asm.JNE:
		return x != y, true
	case asm.JGT:
		return x > y, true
	case asm.JGE:
		return x >= y, true
	case asm.JLT:
		return x < y, true
	case asm.JLE:
		return x <= y, true
	case asm.JSet:
		return x&y != 0, true
	case asm.JSGT:
		return sx > sy, true
	case asm.JSGE:
		return sx >= sy, true
	case asm.JSLT:
		return sx < sy, true
	case asm.JSLE:
		return sx <= sy, true
	}
	return false, false
}
