package program

import (
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// Lower turns the model back into instructions: blocks in layout order, a
// goto added wherever a block's fall-through successor is not the next
// block, jump offsets computed, and jumps too long for 16 bits rewritten as
// gotol. Function symbols, func info and the first line info of every
// function are put back on the function's first instruction.
func (p *Program) Lower() (asm.Instructions, error) {
	var out asm.Instructions
	for _, f := range p.Funcs {
		insns, err := f.lower()
		if err != nil {
			return nil, fmt.Errorf("function %s: %w", f.Name, err)
		}
		out = append(out, insns...)
	}
	return out, nil
}

// LoweredSpec returns a copy of the program's spec whose instructions are the
// lowered model.
func (p *Program) LoweredSpec() (*ebpf.ProgramSpec, error) {
	insns, err := p.Lower()
	if err != nil {
		return nil, err
	}
	spec := p.Spec.Copy()
	spec.Instructions = insns
	return spec, nil
}

// siteKey identifies a jump the layout emits: a block's own terminator or
// the goto added after it to reach its fall-through successor.
type siteKey struct {
	block *Block
	fall  bool
}

// jumpSite is a jump whose offset is filled in once the layout is known.
type jumpSite struct {
	key    siteKey
	index  int    // instruction index in the lowered function
	raw    int64  // raw slot offset of that instruction
	target *Block // destination
	long   bool   // emitted as gotol
}

var (
	gotoOp  = asm.OpCode(asm.JumpClass).SetJumpOp(asm.Ja)
	gotolOp = asm.OpCode(asm.Jump32Class).SetJumpOp(asm.Ja)
)

func (f *Func) lower() (asm.Instructions, error) {
	if len(f.Blocks) == 0 {
		return nil, fmt.Errorf("no blocks")
	}
	// longs marks jumps that need the wide form; it only grows, so the
	// loop terminates.
	longs := map[siteKey]bool{}
	for round := 0; ; round++ {
		insns, sites, starts, err := f.layout(longs)
		if err != nil {
			return nil, err
		}
		grew := false
		for _, s := range sites {
			delta := starts[s.target] - (s.raw + 1)
			switch {
			case s.long:
				insns[s.index].Constant = delta
			case delta < math.MinInt16 || delta > math.MaxInt16:
				longs[s.key] = true
				grew = true
			default:
				insns[s.index].Offset = int16(delta)
			}
		}
		if !grew {
			f.decorate(insns)
			return insns, nil
		}
		if round > 2*len(f.Blocks) {
			return nil, fmt.Errorf("jump layout did not converge")
		}
	}
}

// layout emits the blocks of f in order and records where each jump sits.
func (f *Func) layout(longs map[siteKey]bool) (asm.Instructions, []jumpSite, map[*Block]int64, error) {
	var (
		insns  asm.Instructions
		sites  []jumpSite
		starts = make(map[*Block]int64, len(f.Blocks))
		raw    int64
	)
	emit := func(ins asm.Instruction) {
		insns = append(insns, ins)
		raw += int64(ins.Size() / asm.InstructionSize)
	}
	jump := func(key siteKey, ins asm.Instruction, target *Block) {
		long := longs[key]
		if long {
			ins = asm.Instruction{OpCode: gotolOp}.WithMetadata(ins.Metadata)
		}
		sites = append(sites, jumpSite{key: key, index: len(insns), raw: raw, target: target, long: long})
		emit(ins)
	}
	for k, b := range f.Blocks {
		starts[b] = raw
		term := b.Term()
		for _, ins := range b.Body() {
			if ins.IsFunctionReference() {
				ins.Constant = -1 // resolved by symbol when marshalled
			}
			emit(ins)
		}
		var next *Block
		if k+1 < len(f.Blocks) {
			next = f.Blocks[k+1]
		}
		switch {
		case term == nil:
		case term.OpCode.JumpOp() == asm.Exit:
			emit(*term)
		case b.Target == nil:
			return nil, nil, nil, fmt.Errorf("block %s ends in a jump without a target", b.Label())
		case isUnconditional(*term):
			j := *term
			j.OpCode, j.Offset, j.Constant = gotoOp, 0, 0
			jump(siteKey{block: b}, j, b.Target)
		case longs[siteKey{block: b}]:
			// if cond goto +1; goto +1; gotol target
			j := *term
			j.Offset = 1
			emit(j)
			emit(asm.Instruction{OpCode: gotoOp, Offset: 1})
			jump(siteKey{block: b}, asm.Instruction{OpCode: gotolOp}, b.Target)
		default:
			j := *term
			j.Offset = 0
			sites = append(sites, jumpSite{key: siteKey{block: b}, index: len(insns), raw: raw, target: b.Target})
			emit(j)
		}
		if b.Next != nil && b.Next != next {
			jump(siteKey{block: b, fall: true}, asm.Instruction{OpCode: gotoOp}, b.Next)
		}
		if b.Next == nil && (term == nil || !(isUnconditional(*term) || term.OpCode.JumpOp() == asm.Exit)) {
			return nil, nil, nil, fmt.Errorf("block %s falls through to nothing", b.Label())
		}
	}
	return insns, sites, starts, nil
}

// decorate moves the function's identity onto its first instruction.
func (f *Func) decorate(insns asm.Instructions) {
	first := insns[0].WithSymbol(f.Name)
	if f.BTF != nil {
		first = btf.WithFuncMetadata(first, f.BTF)
	}
	if first.Source() == nil && f.Source != nil {
		first = first.WithSource(f.Source)
	}
	insns[0] = first
}
