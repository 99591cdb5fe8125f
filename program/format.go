package program

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf/asm"
)

// String renders the model as a listing with block labels; jumps name their
// target block. Golden files of the passes are written in this form.
func (p *Program) String() string {
	var sb strings.Builder
	for _, f := range p.Funcs {
		f.format(&sb)
	}
	return sb.String()
}

func (f *Func) format(sb *strings.Builder) {
	fmt.Fprintf(sb, "func %s:\n", f.Name)
	for k, b := range f.Blocks {
		fmt.Fprintf(sb, "%s:\n", b.Label())
		for i, ins := range b.Insns {
			if i == len(b.Insns)-1 && b.Term() != nil {
				fmt.Fprintf(sb, "\t%s\n", formatJump(ins, b.Target))
				continue
			}
			fmt.Fprintf(sb, "\t%v\n", ins)
		}
		if b.Next != nil && (k+1 >= len(f.Blocks) || f.Blocks[k+1] != b.Next) {
			fmt.Fprintf(sb, "\tfallthrough %s\n", b.Next.Label())
		}
	}
}

func formatJump(ins asm.Instruction, target *Block) string {
	op := ins.OpCode.JumpOp()
	if op == asm.Exit {
		return "Exit"
	}
	to := "?"
	if target != nil {
		to = target.Label()
	}
	if op == asm.Ja {
		return "goto " + to
	}
	width := ""
	if ins.OpCode.Class() == asm.Jump32Class {
		width = "32"
	}
	if ins.OpCode.Source() == asm.RegSource {
		return fmt.Sprintf("if%s %s %v %s goto %s", width, ins.Dst, op, ins.Src, to)
	}
	return fmt.Sprintf("if%s %s %v %d goto %s", width, ins.Dst, op, ins.Constant, to)
}
