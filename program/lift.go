package program

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// UnsupportedError reports an instruction the model cannot represent. The
// optimizer leaves such programs alone.
type UnsupportedError struct {
	Func   string
	Index  int // instruction index within the function
	Insn   asm.Instruction
	Reason string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("function %s, instruction %d (%v): %s", e.Func, e.Index, e.Insn, e.Reason)
}

// ErrEmpty is returned for a program without instructions.
var ErrEmpty = errors.New("program has no instructions")

// Lift builds the block model of spec's instructions. It fails with an
// *UnsupportedError for code it cannot represent faithfully: a jump out of
// its function or into the middle of an ld_imm64, a function that runs off
// its end, an invalid opcode, a call to an unknown function.
func Lift(spec *ebpf.ProgramSpec) (*Program, error) {
	insns := spec.Instructions
	if len(insns) == 0 {
		return nil, ErrEmpty
	}
	p := &Program{Spec: spec}

	// Split into functions at symbols; the first instruction always starts
	// the entry function even if the object left it unnamed.
	var starts []int
	for i, ins := range insns {
		if i == 0 || ins.Symbol() != "" {
			starts = append(starts, i)
		}
	}
	names := map[string]bool{}
	for k, start := range starts {
		end := len(insns)
		if k+1 < len(starts) {
			end = starts[k+1]
		}
		name := insns[start].Symbol()
		if name == "" {
			name = spec.Name
		}
		if names[name] {
			return nil, &UnsupportedError{Func: name, Index: 0, Insn: insns[start], Reason: "duplicate function symbol"}
		}
		names[name] = true
		f, err := p.liftFunc(name, insns[start:end])
		if err != nil {
			return nil, err
		}
		p.Funcs = append(p.Funcs, f)
	}

	for _, f := range p.Funcs {
		for _, b := range f.Blocks {
			for i := range b.Insns {
				ins := &b.Insns[i]
				if ins.IsFunctionReference() && !names[ins.Reference()] {
					return nil, &UnsupportedError{Func: f.Name, Index: i, Insn: *ins,
						Reason: fmt.Sprintf("reference to unknown function %q", ins.Reference())}
				}
			}
		}
	}
	return p, nil
}

func (p *Program) liftFunc(name string, insns asm.Instructions) (*Func, error) {
	f := &Func{Name: name, BTF: btf.FuncMetadata(&insns[0]), Source: insns[0].Source()}
	unsupported := func(i int, reason string) error {
		return &UnsupportedError{Func: name, Index: i, Insn: insns[i], Reason: reason}
	}

	// Raw slot offset of every instruction and the reverse index.
	raw := make([]int64, len(insns)+1)
	at := make(map[int64]int, len(insns))
	for i, ins := range insns {
		if ins.OpCode == asm.InvalidOpCode {
			return nil, unsupported(i, "invalid opcode")
		}
		if err := checkOpcode(ins); err != nil {
			return nil, unsupported(i, err.Error())
		}
		at[raw[i]] = i
		raw[i+1] = raw[i] + int64(ins.Size()/asm.InstructionSize)
	}

	// Jump targets as instruction indices.
	target := make(map[int]int)
	leader := make([]bool, len(insns)+1)
	leader[0] = true
	for i, ins := range insns {
		if !isTerminator(ins) {
			continue
		}
		leader[i+1] = true
		if ins.OpCode.JumpOp() == asm.Exit {
			continue
		}
		if ins.Reference() != "" && ins.Offset == -1 && !isLongJump(ins) {
			return nil, unsupported(i, "jump by symbol reference inside a function is not resolved")
		}
		delta := int64(ins.Offset)
		if isLongJump(ins) {
			delta = ins.Constant
		}
		dst := raw[i+1] + delta
		j, ok := at[dst]
		if !ok {
			if dst < 0 || dst >= raw[len(insns)] {
				return nil, unsupported(i, fmt.Sprintf("jump target %+d leaves the function", delta))
			}
			return nil, unsupported(i, "jump into the middle of a 64-bit immediate load")
		}
		target[i] = j
		leader[j] = true
	}

	// Cut blocks at leaders.
	blockAt := make(map[int]*Block)
	var order []int
	for i := range insns {
		if leader[i] {
			b := p.NewBlock()
			blockAt[i] = b
			order = append(order, i)
			f.Blocks = append(f.Blocks, b)
		}
	}
	for k, start := range order {
		end := len(insns)
		if k+1 < len(order) {
			end = order[k+1]
		}
		b := blockAt[start]
		for i := start; i < end; i++ {
			ins := insns[i]
			// Symbols and func info belong to the function, not to an
			// instruction that a pass might move or delete.
			ins = ins.WithSymbol("")
			ins = btf.WithFuncMetadata(ins, nil)
			if isTerminator(ins) {
				ins.Offset = 0
				if isLongJump(ins) {
					ins.Constant = 0
				}
			}
			b.Insns = append(b.Insns, ins)
		}
		last := insns[end-1]
		fallsThrough := !isTerminator(last) || !(last.OpCode.JumpOp() == asm.Exit || isUnconditional(last))
		if t, ok := target[end-1]; ok {
			b.Target = blockAt[t]
		}
		if fallsThrough {
			if end == len(insns) {
				return nil, unsupported(end-1, "control falls off the end of the function")
			}
			b.Next = blockAt[end]
		}
	}
	return f, nil
}

// checkOpcode rejects encodings the kernel does not define, so that the
// model never carries an instruction whose meaning it cannot know.
func checkOpcode(ins asm.Instruction) error {
	switch cls := ins.OpCode.Class(); {
	case cls.IsJump():
		op := ins.OpCode.JumpOp()
		if op == asm.InvalidJumpOp {
			return errors.New("invalid jump operation")
		}
		if cls == asm.Jump32Class && op == asm.Ja && ins.Offset != 0 {
			return errors.New("gotol with a non-zero 16-bit offset")
		}
		if op == asm.Ja && !isLongJump(ins) && ins.Constant != 0 {
			return errors.New("goto with a non-zero immediate")
		}
		if (op == asm.Ja && isLongJump(ins)) && (ins.Constant > math.MaxInt32 || ins.Constant < math.MinInt32) {
			return errors.New("gotol offset out of range")
		}
	case cls.IsALU():
		if ins.OpCode.ALUOp() == asm.InvalidALUOp {
			return errors.New("invalid ALU operation")
		}
	case cls == asm.LdClass:
		if !ins.OpCode.IsDWordLoad() && ins.OpCode.Mode() != asm.AbsMode && ins.OpCode.Mode() != asm.IndMode {
			return errors.New("invalid load class encoding")
		}
	}
	return nil
}
