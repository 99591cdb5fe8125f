package passes

import (
	"slices"

	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
)

// inlineCall replaces the BPF-to-BPF call at instruction i of block b of f
// by the body of g, a static function called from nowhere else: a
// duplicated tail's callee clone has that one call site, and once inlined
// constprop folds across what was the call boundary, and the call's frame
// setup goes. It changes nothing and returns false when g does something
// the rewrite does not handle (calls, tail calls, legacy packet loads, a
// frame pointer used other than as a load or store base or copied with a
// 64-bit mov) or when the frames would not fit in the 512-byte stack.
//
// The caller's frame is used down to callerDepth bytes; below it come
// spill slots for the callee-saved registers R6-R9 that g writes and the
// caller still needs after the call, then g's frame (calleeDepth bytes),
// its frame-pointer offsets shifted down by that base. g's exits become
// jumps to the rest of b, which reloads the spilled registers first. R0
// carries the return value as before; R1-R5 hold whatever g left in them,
// which the caller never reads (the verifier treats them as clobbered by
// the call). otherDepth bounds the frames of the functions f still calls.
func inlineCall(p *program.Program, f *program.Func, b *program.Block, i int, g *program.Func, callerDepth, calleeDepth, otherDepth int) bool {
	var writes regSet
	for _, gb := range g.Blocks {
		for _, ins := range gb.Insns {
			if !inlinable(ins) {
				return false
			}
			_, def := useDef(ins)
			writes |= def
		}
	}
	live := computeLive(f).after(b, i)
	init := definitelyWritten(f)[b]
	for k := 0; k < i; k++ {
		init = writtenAfter(init, b.Insns[k])
	}
	var spill []asm.Register
	for r := asm.R6; r <= asm.R9; r++ {
		if writes&live&regBit(r) == 0 {
			continue
		}
		if init&regBit(r) == 0 {
			// The verifier refuses to spill a register that may
			// hold nothing yet.
			return false
		}
		spill = append(spill, r)
	}
	callerDepth = (callerDepth + 7) &^ 7
	base := callerDepth + 8*len(spill)
	// The verifier rounds every frame up to 32 bytes.
	if roundFrame(base+calleeDepth)+otherDepth > analysis.StackSize {
		return false
	}

	cont := p.NewBlock()
	for k, r := range spill {
		cont.Insns = append(cont.Insns, asm.LoadMem(r, asm.R10, int16(-callerDepth-8*(k+1)), asm.DWord))
	}
	cont.Insns = append(cont.Insns, b.Insns[i+1:]...)
	cont.Target, cont.Next = b.Target, b.Next

	body := cloneBlocks(p, g.Blocks, nil)
	for _, nb := range body {
		var out []asm.Instruction
		for _, ins := range nb.Insns {
			switch cls := ins.OpCode.Class(); {
			case cls == asm.LdXClass && ins.Src == asm.R10,
				(cls == asm.StClass || cls == asm.StXClass) && ins.Dst == asm.R10:
				ins.Offset -= int16(base)
				out = append(out, ins)
			case cls.IsALU() && ins.Src == asm.R10 && ins.OpCode.Source() == asm.RegSource:
				// A 64-bit mov of the frame pointer (inlinable
				// checked it): point at the shifted frame.
				out = append(out, ins, asm.Add.Imm(ins.Dst, int32(-base)))
			case cls.IsJump() && ins.OpCode.JumpOp() == asm.Exit:
				j := asm.Instruction{OpCode: gotoOpCode}
				out = append(out, j.WithMetadata(ins.Metadata))
				nb.Target, nb.Next = cont, nil
			default:
				out = append(out, ins)
			}
		}
		nb.Insns = out
	}

	b.Insns = b.Insns[:i:i]
	for k, r := range spill {
		b.Insns = append(b.Insns, asm.StoreMem(asm.R10, int16(-callerDepth-8*(k+1)), r, asm.DWord))
	}
	b.Target, b.Next = nil, body[0]
	at := slices.Index(f.Blocks, b) + 1
	f.Blocks = slices.Insert(f.Blocks, at, append(body, cont)...)
	return true
}

// inlinable reports whether inlineCall can move ins into its caller.
func inlinable(ins asm.Instruction) bool {
	cls := ins.OpCode.Class()
	switch {
	case ins.IsFunctionReference() || ins.IsFunctionCall():
		return false
	case ins.IsBuiltinCall() && asm.BuiltinFunc(ins.Constant) == asm.FnTailCall:
		return false
	case cls == asm.LdClass && !ins.OpCode.IsDWordLoad():
		return false // legacy packet loads use the context in R6
	case cls.IsJump() && ins.OpCode.JumpOp() == asm.JCOND:
		return false // may_goto: loop accounting per frame
	}
	src := ins.OpCode.Source() == asm.RegSource || cls == asm.LdXClass || cls == asm.StXClass
	usesFP := (src && ins.Src == asm.R10) || ins.Dst == asm.R10
	if !usesFP {
		return true
	}
	switch {
	case cls == asm.LdXClass && ins.Src == asm.R10 && ins.Dst != asm.R10:
		return true
	case (cls == asm.StClass || cls == asm.StXClass) && ins.Dst == asm.R10 && !(cls == asm.StXClass && ins.Src == asm.R10):
		return ins.OpCode.Mode() != asm.AtomicMode || ins.Src != asm.R10
	case cls == asm.ALU64Class && ins.OpCode.ALUOp() == asm.Mov && ins.OpCode.Source() == asm.RegSource && ins.Src == asm.R10 && ins.Dst != asm.R10:
		return true
	}
	return false
}

// roundFrame rounds a frame size up as the verifier does when it adds up
// the frames of a call chain.
func roundFrame(n int) int { return (n + 31) &^ 31 }

// writtenAfter returns the registers certainly holding a value after ins,
// given those before it: a call leaves R1-R5 empty.
func writtenAfter(set regSet, ins asm.Instruction) regSet {
	_, def := useDef(ins)
	if ins.OpCode.JumpOp() == asm.Call {
		return set&^argRegSet | regBit(asm.R0)
	}
	return set | def
}

// definitelyWritten solves, per block of f, the registers written on every
// path from the entry (R1, the context or first argument, and R10 on
// entry; a function's other arguments may be empty). The iteration starts
// from "all" and shrinks to the greatest fixpoint, which is the must-set.
func definitelyWritten(f *program.Func) map[*program.Block]regSet {
	const all = regSet(1<<11 - 1)
	in := map[*program.Block]regSet{}
	for _, b := range f.Blocks {
		in[b] = all
	}
	in[f.Blocks[0]] = regBit(asm.R1) | regBit(asm.R10)
	preds := f.Preds()
	// A block's writtenAfter over all its instructions is
	// out = (in &^ kill) | gen, built once instead of per visit.
	type summary struct{ kill, gen regSet }
	sum := make(map[*program.Block]summary, len(f.Blocks))
	for _, b := range f.Blocks {
		var sm summary
		for _, ins := range b.Insns {
			if ins.OpCode.JumpOp() == asm.Call {
				sm.kill |= argRegSet
				sm.gen = sm.gen&^argRegSet | regBit(asm.R0)
				continue
			}
			_, def := useDef(ins)
			sm.gen |= def
		}
		sum[b] = sm
	}
	for changed := true; changed; {
		changed = false
		for _, b := range f.Blocks[1:] {
			s := all
			if len(preds[b]) == 0 {
				s = regBit(asm.R10)
			}
			for _, p := range preds[b] {
				sm, ok := sum[p]
				if !ok {
					// Not laid out in f: the original walk.
					out := in[p]
					for _, ins := range p.Insns {
						out = writtenAfter(out, ins)
					}
					s &= out
					continue
				}
				s &= in[p]&^sm.kill | sm.gen
			}
			if s != in[b] {
				in[b] = s
				changed = true
			}
		}
	}
	return in
}
