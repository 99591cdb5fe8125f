package instrument

import (
	"encoding/binary"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// Layout of the control map's single value: a header cache line whose
// first word is the constant 1 (the initial count the update helper
// copies), then one cache line per CPU slot holding the countdown and the
// generator state. Separate lines keep CPUs from sharing a written line.
const (
	lineSize    = 64
	oneOff      = 0 // u64 1, never written by the program
	slotBase    = lineSize
	countOff    = 0 // u32 countdown, within a slot
	stateOff    = 4 // u32 xorshift32 state, within a slot
	bpfNoexist  = 1 // BPF_NOEXIST
	maxSlotBits = 12
)

// controlSlots is the number of per-CPU slots: the possible CPUs rounded
// up to a power of two (so a mask bounds the index), at most 4096. CPUs
// beyond that share slots, which only perturbs the sampling intervals.
func controlSlots(cpus int) int {
	if cpus < 1 {
		cpus = 1
	}
	b := bits.Len(uint(cpus - 1))
	return 1 << min(b, maxSlotBits)
}

// controlSpec is the sampler's state: a single-element array, so that the
// code reaches it through a direct value pointer without a helper call.
// With slots = 0 (no countdown) it holds only the constant 1.
func controlSpec(name string, slots, n int, seed uint64) *ebpf.MapSpec {
	val := make([]byte, slotBase+slots*lineSize)
	binary.LittleEndian.PutUint64(val[oneOff:], 1)
	rng := rand.New(rand.NewPCG(seed, 0x696e737472756d))
	for i := range slots {
		slot := val[slotBase+i*lineSize:]
		// Start each CPU at a random point of an interval so that the
		// first executions are not all sampled.
		binary.LittleEndian.PutUint32(slot[countOff:], 1+uint32(rng.IntN(2*n-1)))
		state := rng.Uint32()
		if state == 0 {
			state = 1 // xorshift's only fixed point
		}
		binary.LittleEndian.PutUint32(slot[stateOff:], state)
	}
	return &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  uint32(len(val)),
		MaxEntries: 1,
		Contents:   []ebpf.MapKV{{Key: uint32(0), Value: val}},
	}
}

// skipRecording makes sampled executions record nothing, which isolates
// the sampler's own cost; only benchmarks set it (export_test.go).
var skipRecording bool

// emitter rewrites lookup sites of one program.
type emitter struct {
	prog     *program.Program
	rate     float64
	sampler  Sampler
	n        int    // countdown mean interval
	ctl      string // control map name
	slotMask uint32 // countdown slots - 1
	cpuSlots int    // per-CPU slots of the control map and the rings

	recorder    Recorder
	ringEntries uint32
}

// jmp returns a conditional jump without a label: blocks link targets.
func jmp(ins asm.Instruction) asm.Instruction {
	ins.Offset = 0
	return ins.WithReference("")
}

// site injects the recording code in front of the lookup at b.Insns[i].
// b keeps the instructions before the call and falls into the sampler;
// the call and everything after it move to a new block that inherits b's
// successors and first rematerializes R1 and R2.
func (e *emitter) site(f *program.Func, b *program.Block, s SiteInfo) {
	p := e.prog
	i := s.Index
	// key sets R2 to the key pointer: fp+KeyOff, or the value spilled to
	// the scratch slot before the injected code.
	key := func() []asm.Instruction {
		if s.KeySpill != 0 {
			return []asm.Instruction{asm.LoadMem(asm.R2, asm.R10, int16(s.KeySpill), asm.DWord)}
		}
		return []asm.Instruction{asm.Mov.Reg(asm.R2, asm.R10), asm.Add.Imm(asm.R2, int32(s.KeyOff))}
	}

	resume := p.NewBlock()
	resume.Insns = slices.Concat([]asm.Instruction{asm.LoadMapPtr(asm.R1, 0).WithReference(s.Map)}, key(), b.Insns[i:])
	resume.Target, resume.Next = b.Target, b.Next
	// The call keeps its metadata (line info) in the resume block.

	record := p.NewBlock()
	record.Insns = slices.Concat([]asm.Instruction{asm.LoadMapPtr(asm.R1, 0).WithReference(s.HeatMap)}, key(),
		[]asm.Instruction{asm.FnMapLookupElem.Call(), jmp(asm.JEq.Imm(asm.R0, 0, ""))})
	bump := p.NewBlock()
	bump.Insns = []asm.Instruction{
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0),
		jmp(asm.Ja.Label("")),
	}
	bump.Target = resume
	insert := p.NewBlock()
	insert.Insns = slices.Concat([]asm.Instruction{asm.LoadMapPtr(asm.R1, 0).WithReference(s.HeatMap)}, key(),
		[]asm.Instruction{e.onePtr(asm.R3), asm.Mov.Imm(asm.R4, bpfNoexist), asm.FnMapUpdateElem.Call()})
	insert.Next = resume
	record.Target, record.Next = insert, bump

	b.Insns = b.Insns[:i:i]
	if s.KeySpill != 0 {
		b.Insns = append(b.Insns, asm.StoreMem(asm.R10, int16(s.KeySpill), asm.R2, asm.DWord))
	}
	b.Target = nil
	blocks := []*program.Block{}
	switch {
	case e.rate >= 1:
		b.Next = record
	case e.sampler == SamplerPrandom:
		// Sampled when the draw is below rate·2³² (unsigned 32-bit).
		threshold := uint32(math.Min(e.rate*(1<<32), math.MaxUint32))
		draw := p.NewBlock()
		draw.Insns = []asm.Instruction{
			asm.FnGetPrandomU32.Call(),
			jmp(asm.JGE.Imm32(asm.R0, int32(threshold), "")),
		}
		draw.Target, draw.Next = resume, record
		b.Next = draw
		blocks = append(blocks, draw)
	default:
		count, reload := e.countdown(resume, record)
		b.Next = count
		blocks = append(blocks, count, reload)
	}
	blocks = append(blocks, record, bump, insert, resume)
	if e.recorder == RecorderRing {
		record.Insns, record.Target, record.Next = e.ringRecord(s, key), nil, resume
		blocks = slices.DeleteFunc(blocks, func(x *program.Block) bool { return x == bump || x == insert })
	}
	if skipRecording {
		record.Insns, record.Target, record.Next = nil, nil, resume
		blocks = slices.DeleteFunc(blocks, func(x *program.Block) bool { return x == bump || x == insert })
	}
	at := slices.Index(f.Blocks, b)
	f.Blocks = slices.Insert(f.Blocks, at+1, blocks...)
}

// ringRecord appends the key to this CPU's ring of the site's map:
// entry[pos % entries] = key; pos++. The CPU's slot and the entry are
// bounded by masks, which is what lets the verifier accept the variable
// offsets into the array value.
func (e *emitter) ringRecord(s SiteInfo, key func() []asm.Instruction) []asm.Instruction {
	stride := ringStride(s.KeySize, e.ringEntries)
	padded := (s.KeySize + 7) &^ 7
	insns := []asm.Instruction{
		asm.FnGetSmpProcessorId.Call(),
		asm.And.Imm32(asm.R0, int32(e.cpuSlots-1)),
		asm.Mul.Imm(asm.R0, int32(stride)),
		asm.LoadMapValue(asm.R3, 0, 0).WithReference(s.HeatMap),
		asm.Add.Reg(asm.R3, asm.R0),
		asm.LoadMem(asm.R4, asm.R3, 0, asm.DWord),
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.Add.Imm(asm.R5, 1),
		asm.StoreMem(asm.R3, 0, asm.R5, asm.DWord),
		asm.And.Imm(asm.R4, int32(e.ringEntries-1)),
		asm.Mul.Imm(asm.R4, int32(padded)),
		asm.Add.Reg(asm.R3, asm.R4),
	}
	insns = append(insns, key()...)
	for off := uint32(0); off < s.KeySize; {
		size, n := asm.DWord, uint32(8)
		switch rest := s.KeySize - off; {
		case rest >= 8:
		case rest >= 4:
			size, n = asm.Word, 4
		case rest >= 2:
			size, n = asm.Half, 2
		default:
			size, n = asm.Byte, 1
		}
		insns = append(insns,
			asm.LoadMem(asm.R5, asm.R2, int16(off), size),
			asm.StoreMem(asm.R3, int16(lineSize+off), asm.R5, size))
		off += n
	}
	return insns
}

// countdown returns the blocks of the countdown sampler: count decrements
// this CPU's countdown and goes to resume while it stays positive; reload
// draws the next interval and falls into record.
func (e *emitter) countdown(resume, record *program.Block) (count, reload *program.Block) {
	p := e.prog
	count = p.NewBlock()
	count.Insns = []asm.Instruction{
		asm.FnGetSmpProcessorId.Call(),
		asm.And.Imm32(asm.R0, int32(e.slotMask)),
		asm.LSh.Imm(asm.R0, 6), // × lineSize
		asm.LoadMapValue(asm.R1, 0, slotBase).WithReference(e.ctl),
		asm.Add.Reg(asm.R1, asm.R0),
		asm.LoadMem(asm.R0, asm.R1, countOff, asm.Word),
		asm.Sub.Imm32(asm.R0, 1),
		asm.StoreMem(asm.R1, countOff, asm.R0, asm.Word),
		jmp(asm.JSGT.Imm32(asm.R0, 0, "")),
	}
	count.Target = resume
	// xorshift32 (Marsaglia): x ^= x<<13; x ^= x>>17; x ^= x<<5.
	reload = p.NewBlock()
	reload.Insns = []asm.Instruction{
		asm.LoadMem(asm.R0, asm.R1, stateOff, asm.Word),
		asm.Mov.Reg32(asm.R2, asm.R0),
		asm.LSh.Imm32(asm.R2, 13),
		asm.Xor.Reg32(asm.R0, asm.R2),
		asm.Mov.Reg32(asm.R2, asm.R0),
		asm.RSh.Imm32(asm.R2, 17),
		asm.Xor.Reg32(asm.R0, asm.R2),
		asm.Mov.Reg32(asm.R2, asm.R0),
		asm.LSh.Imm32(asm.R2, 5),
		asm.Xor.Reg32(asm.R0, asm.R2),
		asm.StoreMem(asm.R1, stateOff, asm.R0, asm.Word),
		// Interval 1 + ⌊x·(2N-1)/2³²⌋, uniform on [1, 2N-1]: a multiply
		// and a shift instead of a division (x < 2³², 2N-1 < 2³¹).
		asm.Mul.Imm(asm.R0, int32(2*e.n-1)),
		asm.RSh.Imm(asm.R0, 32),
		asm.Add.Imm32(asm.R0, 1),
		asm.StoreMem(asm.R1, countOff, asm.R0, asm.Word),
	}
	count.Next = reload
	reload.Next = record
	return count, reload
}

// onePtr loads a pointer to a u64 holding 1 into dst.
func (e *emitter) onePtr(dst asm.Register) asm.Instruction {
	return asm.LoadMapValue(dst, 0, oneOff).WithReference(e.ctl)
}
