package passes

import (
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
)

// # Lookups whose value is written
//
// A lookup whose returned value the code writes (a timestamp refreshed
// now and then, a learned port that moves) can still be cached when the
// writes are rare. On a hit, a copy of the code after the lookup, the hit
// tail, runs on the cached value until it would do anything the cache
// cannot stand for: a store (through the value or anywhere else), a call,
// a legacy packet load, a loop back, or a write to a register that the
// code after the lookup reads before redefining. There the hit tail bails:
// it redoes the lookup with the same key and continues in the original
// code right after the call, as if the lookup had only happened then.
//
// Up to a bail the hit tail has done nothing the original could observe:
// it read memory and wrote only registers the original code after the
// lookup redefines before reading (R0 is the lookup's result, R1-R5 are
// dead after any call), and no store changed the key. So every run is a
// run of the original: either the lookup returned the cached value and
// the hit tail reached an exit having only read it (the guard vouches for
// the cached value, as for a read-only pointer), or the lookup happened
// at the bail. The data-plane writes of the map keep their tripwires in
// the original code, which is where every write now runs.
//
// A site pays only if a hit can finish without bailing: some exit must be
// reachable from the lookup, on the side of every NULL check where the
// value was found, without a bail; a value written on every hit (a
// counter) is left alone.

// hitTailMax bounds the instructions a hit tail copies; the rest bails.
const hitTailMax = 256

// hitTailWalk bounds the path steps of the search for an exit a hit
// reaches without bailing.
const hitTailWalk = 4096

// hitTail is how a cached site with a written value redoes its lookup.
type hitTail struct {
	// live are the registers the code after the lookup reads before
	// redefining them, R0 aside: the hit tail must not write them.
	live analysis.RegSet
	// key is where the bail finds the key: R10+off for a key in the
	// function's frame, or a callee-saved register that held the key
	// pointer at the call and that the hit tail must not write either.
	key keyAddr
}

// planHitTail checks that the lookup at s, whose value is written, can be
// cached with a hit tail, or says why not.
func (c *Context) planHitTail(res *analysis.Result, s lookupSite) (*hitTail, string) {
	ht := &hitTail{live: res.LiveOut(s.block, s.index) &^ analysis.RegSet(0).Add(asm.R0)}
	switch {
	case s.keyOff != nil:
		ht.key = stackKey(*s.keyOff)
	case s.parentKeyOff != nil:
		r, ok := keyCopy(s.block, s.index)
		if !ok {
			return nil, "the value is written and the key pointer is not kept in a callee-saved register for the lookup to be redone"
		}
		ht.key = keyAddr{reg: r, frameOff: *s.parentKeyOff}
		ht.live = ht.live.Add(r)
	default:
		return nil, "key is not at a known stack offset"
	}
	if !ht.hitCanFinish(s.block, s.index+1) {
		return nil, "the value is written on every path of a hit (or too far from the lookup): a cache would always redo the lookup"
	}
	return ht, ""
}

// keyCopy finds the callee-saved register R2 was copied from right before
// the call at index i of b (mov r2, rK with rK not redefined in between).
func keyCopy(b *program.Block, i int) (asm.Register, bool) {
	for j := i - 1; j >= 0; j-- {
		ins := b.Insns[j]
		if !writesReg(ins, asm.R2) {
			continue
		}
		if ins.OpCode.Class() != asm.ALU64Class || ins.OpCode.ALUOp() != asm.Mov || ins.OpCode.Source() != asm.RegSource ||
			ins.Src < asm.R6 || ins.Src > asm.R9 {
			return 0, false
		}
		for _, later := range b.Insns[j+1 : i] {
			if writesReg(later, ins.Src) {
				return 0, false
			}
		}
		return ins.Src, true
	}
	return 0, false
}

// writesReg reports whether ins may write r (calls clobber R0-R5).
func writesReg(ins asm.Instruction, r asm.Register) bool {
	_, def := useDef(ins)
	return def&regBit(r) != 0
}

// bails reports whether the hit tail must redo the lookup before ins.
func (ht *hitTail) bails(ins asm.Instruction) bool {
	switch cls := ins.OpCode.Class(); {
	case cls == asm.StClass, cls == asm.StXClass:
		return true // stores and atomics: an effect, or a changed key
	case cls == asm.LdClass && ins.OpCode.Mode() != asm.ImmMode:
		return true // legacy packet loads clobber R0-R5 and may exit
	case isCall(ins):
		return true
	}
	_, def := useDef(ins)
	return def&^regBit(asm.R0)&(regSet(ht.live)|regBit(ht.key.reg)) != 0
}

// hitCanFinish reports whether some exit is reachable from instruction i
// of b without a bail, taking the found side of every NULL check of the
// lookup's result (or a copy of it).
func (ht *hitTail) hitCanFinish(b *program.Block, i int) bool {
	steps := 0
	var walk func(b *program.Block, i int, ptrs analysis.RegSet, depth int) bool
	walk = func(b *program.Block, i int, ptrs analysis.RegSet, depth int) bool {
		if depth > hitTailMax {
			return false
		}
		for ; i < len(b.Insns); i++ {
			if steps++; steps > hitTailWalk {
				return false
			}
			ins := b.Insns[i]
			if ins.OpCode.JumpOp() == asm.Exit {
				return true
			}
			if ht.bails(ins) {
				return false
			}
			if _, def := useDef(ins); def != 0 {
				copied := ins.OpCode.Class() == asm.ALU64Class && ins.OpCode.ALUOp() == asm.Mov &&
					ins.OpCode.Source() == asm.RegSource && ptrs.Has(ins.Src)
				ptrs &^= analysis.RegSet(def)
				if copied {
					ptrs = ptrs.Add(ins.Dst)
				}
			}
		}
		term := b.Term()
		if term != nil && term.OpCode.Class().IsJump() && ptrs.Has(term.Dst) &&
			term.OpCode.Source() == asm.ImmSource && term.Constant == 0 {
			// A NULL check of the value: a hit goes the found way.
			switch term.OpCode.JumpOp() {
			case asm.JEq:
				return b.Next != nil && walk(b.Next, 0, ptrs, depth+1)
			case asm.JNE:
				return b.Target != nil && walk(b.Target, 0, ptrs, depth+1)
			}
		}
		for _, s := range b.Succs() {
			if walk(s, 0, ptrs, depth+1) {
				return true
			}
		}
		return false
	}
	return walk(b, i, analysis.RegSet(0).Add(asm.R0), 0)
}

// emitHitTail copies the code from after (the block right after the
// isolated lookup call) into a hit tail for f, with every bail going to a
// block that reloads the lookup's arguments and runs call again. It
// returns the hit tail's entry.
func (c *Context) emitHitTail(ht *hitTail, f *program.Func, mapName string, call, after *program.Block) *program.Block {
	p := c.Prog
	bail := p.NewBlock()
	bail.Insns = []asm.Instruction{asm.LoadMapPtr(asm.R1, 0).WithReference(mapName), asm.Mov.Reg(asm.R2, ht.key.reg)}
	if ht.key.reg == asm.R10 {
		bail.Insns = append(bail.Insns, asm.Add.Imm(asm.R2, int32(ht.key.off)))
	}
	bail.Next = call

	copies := map[*program.Block]*program.Block{}
	onPath := map[*program.Block]bool{}
	var blocks []*program.Block
	n := 0
	var copyBlock func(b *program.Block) *program.Block
	copyBlock = func(b *program.Block) *program.Block {
		if onPath[b] {
			return bail // a loop back: the hit tail is straight-line code
		}
		if nb, ok := copies[b]; ok {
			return nb
		}
		nb := p.NewBlock()
		copies[b] = nb
		blocks = append(blocks, nb)
		for _, ins := range b.Insns {
			if n >= hitTailMax || ht.bails(ins) {
				nb.Insns = append(nb.Insns, clearRef(asm.Ja.Label("")))
				nb.Target = bail
				return nb
			}
			nb.Insns = append(nb.Insns, ins)
			n++
		}
		onPath[b] = true
		if b.Target != nil {
			nb.Target = copyBlock(b.Target)
		}
		if b.Next != nil {
			nb.Next = copyBlock(b.Next)
		}
		onPath[b] = false
		return nb
	}
	entry := copyBlock(after)
	f.Blocks = append(f.Blocks, blocks...)
	f.Blocks = append(f.Blocks, bail)
	return entry
}

// isCall reports whether ins is a call of any kind: helper, function,
// kfunc or tail call.
func isCall(ins asm.Instruction) bool {
	return ins.OpCode.Class().IsJump() && ins.OpCode.JumpOp() == asm.Call
}
