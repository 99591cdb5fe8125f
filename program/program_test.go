package program

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

// sample programs in the shape the ELF reader produces: numeric offsets
// inside functions, symbols on function starts, calls by reference.
func samplePrograms() map[string]asm.Instructions {
	return map[string]asm.Instructions{
		"straight": {
			asm.Mov.Imm(asm.R0, 2).WithSymbol("straight"),
			asm.Return(),
		},
		"branches": {
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word).WithSymbol("branches"),
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14),
			asm.Mov.Imm(asm.R0, 1),
			{OpCode: asm.JGT.Op(asm.RegSource), Dst: asm.R4, Src: asm.R3, Offset: 3},
			asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
			asm.Mov.Imm(asm.R0, 2),
			{OpCode: asm.JEq.Op(asm.ImmSource), Dst: asm.R5, Constant: 8, Offset: 1},
			asm.Mov.Imm(asm.R0, 3),
			asm.Return(),
		},
		"loop": {
			asm.Mov.Imm(asm.R0, 0).WithSymbol("loop"),
			asm.Mov.Imm(asm.R1, 10),
			asm.Add.Imm(asm.R0, 3),
			asm.Sub.Imm(asm.R1, 1),
			{OpCode: asm.JNE.Op(asm.ImmSource), Dst: asm.R1, Constant: 0, Offset: -3},
			asm.Mod.Imm(asm.R0, 4),
			asm.Return(),
		},
		"calls": {
			asm.Mov.Imm(asm.R1, 7).WithSymbol("calls"),
			asm.Call.Label("double"),
			asm.Mov.Reg(asm.R6, asm.R0),
			asm.Mov.Imm(asm.R1, 1),
			asm.Call.Label("double"),
			asm.Add.Reg(asm.R0, asm.R6),
			asm.Mod.Imm(asm.R0, 5),
			asm.Return(),
			asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("double"),
			{OpCode: asm.JGT.Op(asm.ImmSource), Dst: asm.R1, Constant: 5, Offset: 2},
			asm.Add.Reg(asm.R0, asm.R1),
			asm.Return(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		"imm64": {
			asm.LoadImm(asm.R2, 0x1122334455667788, asm.DWord).WithSymbol("imm64"),
			{OpCode: asm.JEq.Op(asm.ImmSource), Dst: asm.R2, Constant: 0, Offset: 3},
			asm.LoadImm(asm.R3, 0x0000000100000002, asm.DWord),
			asm.Mov.Reg(asm.R0, asm.R3),
			asm.And.Imm(asm.R0, 3),
			asm.Return(),
		},
	}
}

func marshal(t *testing.T, insns asm.Instructions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := insns.Marshal(&buf, binary.LittleEndian); err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return buf.Bytes()
}

func TestRoundTripIsIdentity(t *testing.T) {
	for name, insns := range samplePrograms() {
		t.Run(name, func(t *testing.T) {
			spec := &ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, License: "GPL", Instructions: insns}
			p, err := Lift(spec)
			if err != nil {
				t.Fatalf("lift: %v", err)
			}
			out, err := p.Lower()
			if err != nil {
				t.Fatalf("lower: %v", err)
			}
			want := marshal(t, slices.Clone(insns))
			got := marshal(t, out)
			if !bytes.Equal(want, got) {
				t.Fatalf("round trip changed the program:\nwant\n%v\ngot\n%v\nmodel\n%v", insns, out, p)
			}
		})
	}
}

func TestRoundTripRunsInKernel(t *testing.T) {
	kerneltest.Require(t)
	pkt := make([]byte, 64)
	pkt[12], pkt[13] = 0x08, 0x00
	for name, insns := range samplePrograms() {
		t.Run(name, func(t *testing.T) {
			orig := load(t, &ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, License: "GPL", Instructions: slices.Clone(insns)})
			p, err := Lift(&ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, License: "GPL", Instructions: slices.Clone(insns)})
			if err != nil {
				t.Fatalf("lift: %v", err)
			}
			// Reverse the non-entry blocks so Lower has to add gotos.
			for _, f := range p.Funcs {
				bs := f.Blocks[1:]
				for i, j := 0, len(bs)-1; i < j; i, j = i+1, j-1 {
					bs[i], bs[j] = bs[j], bs[i]
				}
			}
			spec, err := p.LoweredSpec()
			if err != nil {
				t.Fatalf("lower: %v", err)
			}
			low := load(t, spec)
			a, b := kerneltest.Run(t, orig, pkt), kerneltest.Run(t, low, pkt)
			if a.Verdict != b.Verdict || !bytes.Equal(a.Out, b.Out) {
				t.Fatalf("verdict %d vs %d after reordering blocks", a.Verdict, b.Verdict)
			}
		})
	}
}

func load(t *testing.T, spec *ebpf.ProgramSpec) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		t.Fatalf("load %s: %v", spec.Name, err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// TestLongJumps builds a function whose jumps span more than 32767 slots and
// checks that Lower widens them and the kernel accepts and runs the result.
func TestLongJumps(t *testing.T) {
	kerneltest.Require(t)
	p := &Program{Spec: &ebpf.ProgramSpec{Name: "long", Type: ebpf.XDP, License: "GPL"}}
	entry, far, pass := p.NewBlock(), p.NewBlock(), p.NewBlock()
	entry.Insns = asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
		asm.Mov.Imm(asm.R0, 1),
		asm.JNE.Reg(asm.R2, asm.R3, ""), // data != data_end: always taken
	}
	entry.Target, entry.Next = pass, far
	for range 40000 {
		far.Insns = append(far.Insns, asm.Mov.Imm(asm.R0, 1))
	}
	far.Insns = append(far.Insns, asm.Return())
	pass.Insns = asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}
	p.Funcs = []*Func{{Name: "long", Blocks: []*Block{entry, far, pass}}}

	insns, err := p.Lower()
	if err != nil {
		t.Fatalf("lower: %v", err)
	}
	var longs int
	for _, ins := range insns {
		if isLongJump(ins) {
			longs++
		}
	}
	if longs != 1 {
		t.Fatalf("want 1 gotol for the conditional jump, got %d", longs)
	}
	prog := load(t, &ebpf.ProgramSpec{Name: "long", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if got := kerneltest.Run(t, prog, make([]byte, 64)).Verdict; got != 2 {
		t.Fatalf("verdict %d, want 2 (XDP_PASS)", got)
	}
	// And the widened program lifts back to the same model shape.
	q, err := Lift(&ebpf.ProgramSpec{Name: "long", Instructions: insns})
	if err != nil {
		t.Fatalf("re-lift: %v", err)
	}
	if q.NumInstructions() < p.NumInstructions() {
		t.Fatalf("re-lifted program lost instructions: %d < %d", q.NumInstructions(), p.NumInstructions())
	}
}

func TestLiftRejects(t *testing.T) {
	cases := []struct {
		name  string
		insns asm.Instructions
	}{
		{"jump out of function", asm.Instructions{
			asm.Mov.Imm(asm.R0, 0).WithSymbol("f"),
			{OpCode: asm.Ja.Op(asm.ImmSource), Offset: 5},
			asm.Return(),
		}},
		{"jump into ld_imm64", asm.Instructions{
			asm.Mov.Imm(asm.R0, 0).WithSymbol("f"),
			{OpCode: asm.JEq.Op(asm.ImmSource), Dst: asm.R0, Offset: 1},
			asm.LoadImm(asm.R1, 1<<40, asm.DWord),
			asm.Return(),
		}},
		{"falls off the end", asm.Instructions{
			asm.Mov.Imm(asm.R0, 0).WithSymbol("f"),
		}},
		{"unknown callee", asm.Instructions{
			asm.Call.Label("nowhere").WithSymbol("f"),
			asm.Return(),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Lift(&ebpf.ProgramSpec{Name: "f", Instructions: c.insns})
			var ue *UnsupportedError
			if !errors.As(err, &ue) {
				t.Fatalf("want *UnsupportedError, got %v", err)
			}
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	p, err := Lift(&ebpf.ProgramSpec{Name: "calls", Instructions: samplePrograms()["calls"]})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Clone()
	c.Funcs[0].Blocks[0].Insns[0] = asm.Mov.Imm(asm.R1, 99)
	if p.Funcs[0].Blocks[0].Insns[0].Constant != 7 {
		t.Fatal("editing the clone changed the original")
	}
	if p.String() == c.String() {
		t.Fatal("clone listing should differ after the edit")
	}
}

// FuzzLift feeds arbitrary instruction streams to the lifter: it must never
// panic, and what it accepts must lower and lift again to the same size.
func FuzzLift(f *testing.F) {
	for _, insns := range samplePrograms() {
		var buf bytes.Buffer
		if err := slices.Clone(insns).Marshal(&buf, binary.LittleEndian); err == nil {
			f.Add(buf.Bytes())
		}
	}
	f.Fuzz(liftArbitrary)
}

func liftArbitrary(t *testing.T, raw []byte) {
	{
		var insns asm.Instructions
		r := bytes.NewReader(raw)
		for r.Len() >= asm.InstructionSize && len(insns) < 512 {
			var ins asm.Instruction
			if err := ins.Unmarshal(r, binary.LittleEndian, ""); err != nil {
				break
			}
			insns = append(insns, ins)
		}
		if len(insns) == 0 {
			return
		}
		insns[0] = insns[0].WithSymbol("fuzz")
		p, err := Lift(&ebpf.ProgramSpec{Name: "fuzz", Instructions: insns})
		if err != nil {
			return
		}
		out, err := p.Lower()
		if err != nil {
			t.Fatalf("lifted program does not lower: %v\n%v", err, p)
		}
		q, err := Lift(&ebpf.ProgramSpec{Name: "fuzz", Instructions: out})
		if err != nil {
			t.Fatalf("lowered program does not lift: %v", err)
		}
		if q.NumInstructions() != p.NumInstructions() {
			t.Fatalf("instruction count changed: %d -> %d", p.NumInstructions(), q.NumInstructions())
		}
	}
}
