package analysis

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// item is one line of a hand-written test program: an instruction, a
// jump to a label, or a label for the next instruction.
type item struct {
	ins   asm.Instruction
	label string // defines a label (no instruction)
	to    string // jump target label
}

func I(ins asm.Instruction) item               { return item{ins: ins} }
func L(name string) item                       { return item{label: name} }
func J(ins asm.Instruction, to string) item    { return item{ins: ins, to: to} }
func fn(name string, ins asm.Instruction) item { return item{ins: ins.WithSymbol(name)} }

// assemble resolves labels into jump offsets.
func assemble(t *testing.T, items []item) asm.Instructions {
	t.Helper()
	labels := map[string]int64{}
	var raw int64
	for _, it := range items {
		if it.label != "" {
			labels[it.label] = raw
			continue
		}
		raw += int64(it.ins.Size() / asm.InstructionSize)
	}
	var out asm.Instructions
	raw = 0
	for _, it := range items {
		if it.label != "" {
			continue
		}
		ins := it.ins
		raw += int64(ins.Size() / asm.InstructionSize)
		if it.to != "" {
			dst, ok := labels[it.to]
			if !ok {
				t.Fatalf("unknown label %q", it.to)
			}
			ins.Offset = int16(dst - raw)
			ins = ins.WithReference("")
		}
		out = append(out, ins)
	}
	return out
}

// testMaps is the collection used by the hand-written programs.
func testColl() *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"hash":  {Name: "hash", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 16},
			"other": {Name: "other", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 16},
			"lpm":   {Name: "lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 16, Flags: 1},
			".rodata": {Name: ".rodata", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1,
				Flags: bpfFRdonlyProg, Contents: []ebpf.MapKV{{Key: uint32(0), Value: []byte{1, 0, 0, 0, 0x2a, 0, 0, 0}}}},
			".data": {Name: ".data", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1,
				Contents: []ebpf.MapKV{{Key: uint32(0), Value: make([]byte, 8)}}},
		},
		Variables: map[string]*ebpf.VariableSpec{},
	}
}

// analyze lifts and analyses a hand-written XDP program.
func analyze(t *testing.T, coll *ebpf.CollectionSpec, items []item, opts Options) (*program.Program, *Result) {
	t.Helper()
	spec := &ebpf.ProgramSpec{Name: "test", Type: ebpf.XDP, License: "GPL", Instructions: assemble(t, items)}
	p, err := program.Lift(spec)
	if err != nil {
		t.Fatalf("lift: %v", err)
	}
	res, err := Analyze(coll, p, opts)
	if err != nil {
		t.Fatalf("analyze: %v", err)
	}
	return p, res
}

func mapPtr(dst asm.Register, name string) asm.Instruction {
	return asm.LoadMapPtr(dst, 0).WithReference(name)
}

func mapValue(dst asm.Register, name string, off uint32) asm.Instruction {
	return asm.LoadMapValue(dst, 0, off).WithReference(name)
}

// lookup emits r0 = bpf_map_lookup_elem(&m, fp+keyOff).
func lookup(m string, keyOff int32) []item {
	return []item{
		I(mapPtr(asm.R1, m)),
		I(asm.Mov.Reg(asm.R2, asm.R10)),
		I(asm.Add.Imm(asm.R2, keyOff)),
		I(asm.FnMapLookupElem.Call()),
	}
}

func seq(parts ...any) []item {
	var out []item
	for _, p := range parts {
		switch p := p.(type) {
		case item:
			out = append(out, p)
		case []item:
			out = append(out, p...)
		case asm.Instruction:
			out = append(out, I(p))
		default:
			panic("seq: bad part")
		}
	}
	return out
}

// retOK ends a program with return XDP_PASS.
var retOK = []item{I(asm.Mov.Imm(asm.R0, 2)), I(asm.Return())}

// findSite returns the only site of the given kind and map.
func findSite(t *testing.T, res *Result, kind SiteKind, m string) *Site {
	t.Helper()
	var found *Site
	for _, s := range res.Sites {
		if s.Kind == kind && s.Map == m {
			if found != nil {
				t.Fatalf("more than one %s site on %s", kind, m)
			}
			found = s
		}
	}
	if found == nil {
		t.Fatalf("no %s site on %s:\n%s", kind, m, res.Summary())
	}
	return found
}

// blockWith returns the block holding the instruction at label position:
// the first block whose first instruction equals ins.
func blockAt(p *program.Program, fn string, n int) *program.Block {
	return p.Func(fn).Blocks[n]
}
