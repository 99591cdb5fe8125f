package analysis

import (
	"math/bits"
	"strings"

	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// RegSet is a set of registers R0-R10.
type RegSet uint16

// Has reports whether r is in the set.
func (s RegSet) Has(r asm.Register) bool { return s&(1<<r) != 0 }

// Add returns the set with r added.
func (s RegSet) Add(r asm.Register) RegSet { return s | 1<<r }

// Len is the number of registers in the set.
func (s RegSet) Len() int { return bits.OnesCount16(uint16(s)) }

// Free returns the registers among R0-R9 that are not in s, lowest first:
// the candidates for scratch registers.
func (s RegSet) Free() []asm.Register {
	var out []asm.Register
	for r := asm.R0; r <= asm.R9; r++ {
		if !s.Has(r) {
			out = append(out, r)
		}
	}
	return out
}

func (s RegSet) String() string {
	var parts []string
	for r := asm.R0; r <= asm.R10; r++ {
		if s.Has(r) {
			parts = append(parts, r.String())
		}
	}
	return "{" + strings.Join(parts, " ") + "}"
}

const (
	argRegs    RegSet = 1<<asm.R1 | 1<<asm.R2 | 1<<asm.R3 | 1<<asm.R4 | 1<<asm.R5
	callerRegs        = argRegs | 1<<asm.R0
	fpReg      RegSet = 1 << asm.R10
)

// liveness is the backward register liveness of the whole program.
type liveness struct {
	in      map[*program.Block][]RegSet // live-in of every instruction
	bin     map[*program.Block]RegSet   // live-in of every block
	out     map[*program.Block]RegSet   // live-out of every block
	entryIn map[string]RegSet           // live-in at function entry
}

func regsUpTo(n int) RegSet {
	var s RegSet
	for r := asm.R1; int(r) <= n && r <= asm.R5; r++ {
		s = s.Add(r)
	}
	return s
}

// useDef returns the registers ins reads and writes. Calls write (clobber)
// R0-R5.
func (l *liveness) useDef(ins asm.Instruction) (use, def RegSet) {
	reg := func(r asm.Register) RegSet { return 1 << r }
	switch cls := ins.OpCode.Class(); {
	case ins.OpCode.IsDWordLoad():
		return 0, reg(ins.Dst)
	case cls.IsALU():
		switch op := ins.OpCode.ALUOp(); {
		case op == asm.Swap || op == asm.Neg:
			return reg(ins.Dst), reg(ins.Dst)
		case op == asm.Mov || op == asm.MovSX8 || op == asm.MovSX16 || op == asm.MovSX32:
			if ins.OpCode.Source() == asm.RegSource {
				use = reg(ins.Src)
			}
			return use, reg(ins.Dst)
		}
		use = reg(ins.Dst)
		if ins.OpCode.Source() == asm.RegSource {
			use |= reg(ins.Src)
		}
		return use, reg(ins.Dst)
	case cls == asm.LdClass:
		use = reg(asm.R6)
		if ins.OpCode.Mode() == asm.IndMode {
			use |= reg(ins.Src)
		}
		return use, callerRegs
	case cls == asm.LdXClass:
		return reg(ins.Src), reg(ins.Dst)
	case cls == asm.StClass:
		return reg(ins.Dst), 0
	case cls == asm.StXClass && ins.OpCode.Mode() == asm.AtomicMode:
		op := ins.OpCode.AtomicOp()
		switch op {
		case asm.LoadAcquire(0, 0, asm.DWord, 0).OpCode.AtomicOp():
			return reg(ins.Src), reg(ins.Dst)
		case asm.CmpXchg:
			return reg(ins.Dst) | reg(ins.Src) | reg(asm.R0), reg(asm.R0)
		}
		use = reg(ins.Dst) | reg(ins.Src)
		if op == asm.Xchg || op&0x100 != 0 {
			def = reg(ins.Src)
		}
		return use, def
	case cls == asm.StXClass:
		return reg(ins.Dst) | reg(ins.Src), 0
	case cls.IsJump():
		switch op := ins.OpCode.JumpOp(); op {
		case asm.Call:
			switch {
			case ins.IsBuiltinCall():
				return regsUpTo(helperFor(asm.BuiltinFunc(ins.Constant)).args), callerRegs
			case ins.IsFunctionCall():
				in, ok := l.entryIn[ins.Reference()]
				if !ok {
					in = argRegs
				}
				return in & argRegs, callerRegs
			}
			return argRegs, callerRegs
		case asm.Exit:
			return reg(asm.R0), 0
		case asm.Ja, asm.JCOND:
			return 0, 0
		}
		use = reg(ins.Dst)
		if ins.OpCode.Source() == asm.RegSource {
			use |= reg(ins.Src)
		}
		return use, 0
	}
	return 0, 0
}

// computeLiveness iterates function liveness until the live-in sets of
// all function entries are stable (callers depend on their callees').
func computeLiveness(p *program.Program) *liveness {
	n := 0
	for _, f := range p.Funcs {
		n += len(f.Blocks)
	}
	l := &liveness{in: make(map[*program.Block][]RegSet, n), bin: make(map[*program.Block]RegSet, n), out: make(map[*program.Block]RegSet, n), entryIn: map[string]RegSet{}}
	for round := 0; round <= len(p.Funcs)+1; round++ {
		changed := false
		for _, f := range p.Funcs {
			l.function(f)
			entry := l.bin[f.Blocks[0]]
			if old, ok := l.entryIn[f.Name]; !ok || old != entry {
				l.entryIn[f.Name] = entry
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	return l
}

// function solves backward liveness of one function with a worklist.
// Blocks are handled by their position in f.Blocks; the per-instruction
// sets of a block are recomputed in place.
func (l *liveness) function(f *program.Func) {
	n := len(f.Blocks)
	pos := make(map[*program.Block]int32, n)
	for i, b := range f.Blocks {
		pos[b] = int32(i)
	}
	preds := make([][]int32, n)
	succs := make([][2]int32, n) // positions, -1: none or not in f
	for i, b := range f.Blocks {
		succs[i] = [2]int32{-1, -1}
		for k, s := range b.Succs() {
			if j, ok := pos[s]; ok {
				preds[j] = append(preds[j], int32(i))
				succs[i][k] = j
			}
		}
		l.out[b] = 0
		l.in[b] = nil
	}
	// Each block's transfer, live-in = (live-out &^ kill) | gen, is built
	// once, so that a visit touches no instruction; the per-instruction
	// sets are filled in at the end from the live-out of each block's
	// last visit, as that visit would have left them.
	type step struct{ use, def RegSet }
	total := 0
	for _, b := range f.Blocks {
		total += len(b.Insns)
	}
	steps := make([]step, total)
	first := make([]int, n+1)
	kill := make([]RegSet, n)
	gen := make([]RegSet, n)
	for i, b := range f.Blocks {
		first[i+1] = first[i] + len(b.Insns)
		var K RegSet
		G := fpReg
		for k := len(b.Insns) - 1; k >= 0; k-- {
			use, def := l.useDef(b.Insns[k])
			steps[first[i]+k] = step{use, def}
			K |= def
			G = (G &^ def) | use | fpReg
		}
		kill[i], gen[i] = K, G
	}
	visited := make([]bool, n)
	bin := make([]RegSet, n)
	for i := range bin {
		bin[i] = fpReg
	}
	work := make([]int32, n, 2*n)
	queued := make([]bool, n)
	for i := range f.Blocks {
		work[n-1-i] = int32(i) // reverse layout order converges faster
		queued[i] = true
	}
	// Every round strictly grows some set of 11 bits per block.
	for budget := 12*n*n + 64; len(work) > 0 && budget > 0; budget-- {
		i := work[0]
		work = work[1:]
		queued[i] = false
		b := f.Blocks[i]
		var out RegSet
		for _, j := range succs[i] {
			if j >= 0 {
				out |= bin[j]
			}
		}
		l.out[b] = out
		once := !visited[i]
		visited[i] = true
		live := (out &^ kill[i]) | gen[i]
		if live != bin[i] || once {
			bin[i] = live
			for _, p := range preds[i] {
				if !queued[p] {
					queued[p] = true
					work = append(work, p)
				}
			}
		}
	}
	sets := make([]RegSet, total)
	for i, b := range f.Blocks {
		l.bin[b] = bin[i]
		if !visited[i] {
			continue
		}
		ins := sets[first[i]:first[i+1]:first[i+1]]
		live := l.out[b] | fpReg
		for k := len(b.Insns) - 1; k >= 0; k-- {
			st := steps[first[i]+k]
			live = (live &^ st.def) | st.use | fpReg
			ins[k] = live
		}
		l.in[b] = ins
	}
}
