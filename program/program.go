// Package program is the optimizer's model of a BPF program: functions made
// of basic blocks whose jumps name their target blocks instead of holding
// instruction offsets.
//
// Lift builds the model from the instructions of a cilium/ebpf ProgramSpec
// and Lower turns it back into instructions. Lower(Lift(p)) is behaviourally
// identical to p and loads in the kernel; every pass of the optimizer edits
// the model in between, so it never has to fix up a jump offset by hand.
package program

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// Program is a lifted BPF program.
type Program struct {
	// Spec carries everything about the program that is not its code
	// (name, type, attach target, license, BTF). Its Instructions are the
	// ones the program was lifted from.
	Spec *ebpf.ProgramSpec
	// Funcs holds the entry function first, then the BPF-to-BPF callees in
	// the order they had in the object.
	Funcs []*Func

	nextID int
}

// Func is one BPF function: the program's entry point or a subprogram
// reached by a BPF-to-BPF call or a callback reference.
type Func struct {
	// Name is the function's symbol; calls refer to it by this name.
	Name string
	// Blocks are in layout order; Blocks[0] is the entry block.
	Blocks []*Block
	// BTF is the function's BTF description (func info), if the object had one.
	BTF *btf.Func
	// Source is the line info of the function's first instruction. The
	// kernel wants line info at the start of every function when a program
	// has any, so Lower re-attaches it if a pass removed that instruction.
	Source fmt.Stringer
}

// Block is a basic block: straight-line instructions, then at most one jump
// or exit as the last instruction.
type Block struct {
	// ID is unique within the program and survives passes, which makes it
	// a stable label for listings and golden files.
	ID int
	// Insns are the block's instructions. The last one may be a jump or an
	// exit; its offset field is meaningless here and recomputed by Lower.
	Insns []asm.Instruction
	// Target is where a terminating jump goes when taken.
	Target *Block
	// Next is the successor reached by falling through the last
	// instruction: after a conditional jump that is not taken, or after a
	// block that does not end in a jump. It is nil after exit or goto.
	Next *Block
}

// Label names the block in listings.
func (b *Block) Label() string { return fmt.Sprintf("b%d", b.ID) }

// Term returns the block's terminating jump or exit, or nil if the block
// simply falls through.
func (b *Block) Term() *asm.Instruction {
	if len(b.Insns) == 0 {
		return nil
	}
	last := &b.Insns[len(b.Insns)-1]
	if isTerminator(*last) {
		return last
	}
	return nil
}

// Body returns the block's instructions without its terminator.
func (b *Block) Body() []asm.Instruction {
	if b.Term() != nil {
		return b.Insns[:len(b.Insns)-1]
	}
	return b.Insns
}

// Succs returns the block's successors: the jump target first, then the
// fall-through block.
func (b *Block) Succs() []*Block {
	// Room for both from the start: inlined into a caller that only
	// ranges over the result, the slice stays on the caller's stack.
	s := make([]*Block, 0, 2)
	if b.Target != nil {
		s = append(s, b.Target)
	}
	if b.Next != nil && b.Next != b.Target {
		s = append(s, b.Next)
	}
	return s
}

// NewBlock allocates an empty block with a fresh ID. The caller places it
// in a function's Blocks.
func (p *Program) NewBlock() *Block {
	b := &Block{ID: p.nextID}
	p.nextID++
	return b
}

// Func returns the function with the given name, or nil.
func (p *Program) Func(name string) *Func {
	for _, f := range p.Funcs {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// NumInstructions counts the instructions in the model (an ld_imm64 counts
// once), not counting the gotos Lower may add.
func (p *Program) NumInstructions() int {
	n := 0
	for _, f := range p.Funcs {
		for _, b := range f.Blocks {
			n += len(b.Insns)
		}
	}
	return n
}

// NumBlocks counts the basic blocks of all functions.
func (p *Program) NumBlocks() int {
	n := 0
	for _, f := range p.Funcs {
		n += len(f.Blocks)
	}
	return n
}

// Preds computes the predecessors of every block of f.
func (f *Func) Preds() map[*Block][]*Block {
	preds := make(map[*Block][]*Block, len(f.Blocks))
	for _, b := range f.Blocks {
		for _, s := range b.Succs() {
			preds[s] = append(preds[s], b)
		}
	}
	return preds
}

// Clone returns a deep copy of p: passes work on a clone so that a rejected
// candidate leaves the original untouched.
func (p *Program) Clone() *Program {
	c := &Program{Spec: p.Spec, nextID: p.nextID}
	for _, f := range p.Funcs {
		nf := &Func{Name: f.Name, BTF: f.BTF, Source: f.Source}
		remap := make(map[*Block]*Block, len(f.Blocks))
		for _, b := range f.Blocks {
			nb := &Block{ID: b.ID, Insns: append([]asm.Instruction(nil), b.Insns...)}
			remap[b] = nb
			nf.Blocks = append(nf.Blocks, nb)
		}
		for _, b := range f.Blocks {
			remap[b].Target = remap[b.Target]
			remap[b].Next = remap[b.Next]
		}
		c.Funcs = append(c.Funcs, nf)
	}
	return c
}

// isTerminator reports whether ins ends a basic block: any jump or exit,
// but not a call, which returns to the next instruction.
func isTerminator(ins asm.Instruction) bool {
	op := ins.OpCode.JumpOp()
	if op == asm.InvalidJumpOp || op == asm.Call {
		return false
	}
	return true
}

// isUnconditional reports whether a terminator always jumps (goto, gotol).
func isUnconditional(ins asm.Instruction) bool {
	return ins.OpCode.JumpOp() == asm.Ja
}

// isLongJump reports whether ins is a gotol, whose offset lives in the
// 32-bit immediate instead of the 16-bit offset field.
func isLongJump(ins asm.Instruction) bool {
	return ins.OpCode.JumpOp() == asm.Ja && ins.OpCode.Class() == asm.Jump32Class
}
