package passes

import (
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// deadCode removes blocks no path reaches, bypasses blocks that only fall
// through, and drops jumps whose both outcomes lead to the same place.
// Folding (constprop) turns decided branches into gotos; this pass is what
// makes the untaken side disappear.
func deadCode(c *Context) error {
	for _, f := range c.Prog.Funcs {
		n := simplifyJumps(f)
		n += bypassEmpty(f)
		removed := removeUnreachable(f)
		if n+removed > 0 {
			c.changed(f.Name, f.Blocks[0].ID, "", "removed %d unreachable blocks, simplified %d jumps", removed, n)
		}
	}
	return nil
}

// simplifyJumps turns a conditional jump whose target is also its
// fall-through into nothing; BPF comparisons have no side effects.
func simplifyJumps(f *program.Func) int {
	n := 0
	for _, b := range f.Blocks {
		t := b.Term()
		if t == nil || t.OpCode.JumpOp() == asm.Exit || t.OpCode.JumpOp() == asm.Ja {
			continue
		}
		if t.OpCode.JumpOp() == asm.JCOND {
			continue // may_goto carries loop accounting for the verifier
		}
		if b.Target == b.Next {
			b.Insns = b.Insns[:len(b.Insns)-1]
			b.Target = nil
			n++
		}
	}
	return n
}

// bypassEmpty points every edge into an empty fall-through block at that
// block's successor.
func bypassEmpty(f *program.Func) int {
	resolve := func(b *program.Block) *program.Block {
		for i := 0; b != nil && len(b.Insns) == 0 && b.Next != nil && b != f.Blocks[0] && i < len(f.Blocks); i++ {
			b = b.Next
		}
		return b
	}
	n := 0
	for _, b := range f.Blocks {
		if t := resolve(b.Target); t != b.Target {
			b.Target = t
			n++
		}
		if nx := resolve(b.Next); nx != b.Next {
			b.Next = nx
			n++
		}
	}
	return n
}

// removeUnreachable drops blocks not reachable from the function's entry.
func removeUnreachable(f *program.Func) int {
	seen := map[*program.Block]bool{}
	stack := []*program.Block{f.Blocks[0]}
	for len(stack) > 0 {
		b := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[b] {
			continue
		}
		seen[b] = true
		stack = append(stack, b.Succs()...)
	}
	kept := f.Blocks[:0]
	for _, b := range f.Blocks {
		if seen[b] {
			kept = append(kept, b)
		}
	}
	removed := len(f.Blocks) - len(kept)
	f.Blocks = kept
	return removed
}
