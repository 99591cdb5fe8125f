package passes

import (
	"math"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// cpLoadProgram reads 4 bytes at offset 0 of element idx of mapName (a
// lookup with a constant key, or with the packet's key when idx < 0) and
// returns them; extra instructions run on the value pointer in R0 first.
func cpLoadProgram(mapName string, idx int32, extra ...asm.Instruction) asm.Instructions {
	g := newGoldenAsm()
	goldenPrologue(g)
	if idx < 0 {
		g.add(asm.StoreMem(asm.R10, -8, asm.R5, asm.Word))
	} else {
		g.add(asm.StoreImm(asm.R10, -8, int64(idx), asm.Word))
	}
	goldenLookup(g, mapName, -8)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
	g.add(extra...)
	g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
	goldenDrop(g)
	return g.done()
}

// cpDirectProgram reads 4 bytes through a direct value pointer into mapName.
func cpDirectProgram(mapName string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapValue(asm.R1, 0, 0).WithReference(mapName),
		asm.LoadMem(asm.R0, asm.R1, 0, asm.Word),
		asm.Return(),
	}
}

func cpArray(name string, typ ebpf.MapType, entries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: name, Type: typ, KeySize: 4, ValueSize: 4, MaxEntries: entries}
}

func cpState(mapName string, idx, v uint32) *mapstate.State {
	st := mapstate.New()
	st.Put(mapName, goldenU32(idx), goldenU32(v))
	return st
}

// TestConstPropDecisions checks which loads constprop folds and the reason
// it gives for every load it leaves alone.
func TestConstPropDecisions(t *testing.T) {
	writer := asm.Instructions{ // another program updating "cfg"
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference("cfg"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, -4),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, 2),
		asm.Return(),
	}
	for _, tc := range []struct {
		name   string
		insns  asm.Instructions
		maps   []*ebpf.MapSpec
		state  *mapstate.State
		other  asm.Instructions // a second program of the collection
		folded bool
		guard  bool   // a guard check was added for "cfg"
		remark string // expected in some remark
	}{
		{name: "control-plane-only array", insns: cpLoadProgram("cfg", 1), maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Array, 4)},
			state: cpState("cfg", 1, 7), folded: true, guard: true, remark: "folded to snapshot value 0x7 behind guard"},
		{name: "element the snapshot does not name is zero", insns: cpLoadProgram("cfg", 2), maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Array, 4)},
			state: cpState("cfg", 1, 7), folded: true, guard: true, remark: "folded to snapshot value 0x0 behind guard"},
		{name: "written through the value pointer", insns: cpLoadProgram("cfg", 1, asm.StoreImm(asm.R0, 0, 1, asm.Word)),
			maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Array, 4)}, state: cpState("cfg", 1, 7), remark: "the data plane may write this map"},
		{name: "written by another program", insns: cpLoadProgram("cfg", 1), other: writer, maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Array, 4)},
			state: cpState("cfg", 1, 7), remark: "another program of the collection may write this map"},
		{name: "per-CPU array", insns: cpLoadProgram("cfg", 1), maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.PerCPUArray, 4)},
			state: cpState("cfg", 1, 7), remark: "per-CPU array: every CPU has its own value"},
		{name: "hash", insns: cpLoadProgram("cfg", 1), maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Hash, 4)},
			state: cpState("cfg", 1, 7), remark: "a Hash lookup's value depends on which keys exist"},
		{name: "index from the packet", insns: cpLoadProgram("cfg", -1), maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Array, 4)},
			state: cpState("cfg", 1, 7), remark: "different or non-constant indices"},
		{name: "no snapshot", insns: cpLoadProgram("cfg", 1), maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Array, 4)},
			remark: "no map snapshot"},
		{name: "direct pointer into a single-element array", insns: cpDirectProgram("cfg"), maps: []*ebpf.MapSpec{cpArray("cfg", ebpf.Array, 1)},
			state: cpState("cfg", 0, 9), folded: true, guard: true, remark: "folded to snapshot value 0x9 behind guard"},
		{name: "writable global data", insns: cpDirectProgram(".data"), maps: []*ebpf.MapSpec{cpArray(".data", ebpf.Array, 1)},
			state: mapstate.New(), remark: "global data other than .rodata"},
		{name: "guard map", insns: cpDirectProgram(guard.MapName), maps: []*ebpf.MapSpec{guard.Spec()}, state: mapstate.New()},
		{name: "program-read-only map a pass added", insns: cpDirectProgram("mc1_x"),
			maps:  []*ebpf.MapSpec{{Name: "mc1_x", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1, Flags: bpfFRdonlyProg, Contents: []ebpf.MapKV{{Key: uint32(0), Value: goldenU32(5)}}}},
			state: mapstate.New(), folded: true, remark: "guard elided: a program-read-only map added by an earlier pass"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := goldenCollection(tc.insns, tc.maps...)
			if tc.other != nil {
				spec.Programs["writer"] = &ebpf.ProgramSpec{Name: "writer", Type: ebpf.XDP, License: "GPL", Instructions: tc.other}
			}
			orig := spec.Programs[goldenProg]
			lifted, err := program.Lift(orig)
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "program-read-only map a pass added" {
				// As if an earlier pass had added the reference: the
				// original instructions do not mention the map.
				lifted.Spec = &ebpf.ProgramSpec{Name: goldenProg, Type: ebpf.XDP, Instructions: asm.Instructions{asm.Return()}}
			}
			c := &Context{Coll: spec, Prog: lifted, State: tc.state, Guards: guard.NewTable(), Opts: DefaultOptions()}
			c.Opts.Passes = []string{"constprop"}
			if err := Run(c); err != nil {
				t.Fatal(err)
			}
			var all []string
			folded, found := false, tc.remark == ""
			for _, r := range c.Remarks {
				all = append(all, r.String())
				if r.Applied && strings.Contains(r.Message, "folded") && r.Map != "" {
					folded = true
				}
				if tc.remark != "" && strings.Contains(r.Message, tc.remark) {
					found = true
				}
			}
			if folded != tc.folded || !found {
				t.Errorf("folded %v (want %v), remark %q found %v; remarks:\n%s", folded, tc.folded, tc.remark, found, strings.Join(all, "\n"))
			}
			guarded := len(c.Guards.Guarded()) > 0
			if guarded != tc.guard {
				t.Errorf("guards %v, want guard %v", c.Guards.Guarded(), tc.guard)
			}
		})
	}
}

func TestMovImm(t *testing.T) {
	for _, tc := range []struct {
		v    uint64
		want asm.Instruction
		ok   bool
	}{
		{5, asm.Mov.Imm(asm.R1, 5), true},
		{math.MaxUint64, asm.Mov.Imm(asm.R1, -1), true}, // sign-extended
		{0xfffffffe, asm.Mov.Imm32(asm.R1, -2), true},   // zero-extended
		{1 << 40, asm.Instruction{}, false},
	} {
		got, ok := movImm(asm.R1, tc.v)
		if ok != tc.ok || (ok && (got.OpCode != tc.want.OpCode || got.Constant != tc.want.Constant)) {
			t.Errorf("movImm(%#x) = %v, %v; want %v, %v", tc.v, got, ok, tc.want, tc.ok)
		}
	}
}

func TestArrayValue(t *testing.T) {
	ms := &ebpf.MapSpec{Name: "a", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 4,
		Contents: []ebpf.MapKV{{Key: uint32(1), Value: goldenU32(10)}, {Key: uint32(2), Value: goldenU32(20)}}}
	st := mapstate.New()
	st.Put("a", goldenU32(2), goldenU32(21))
	st.Put("a", goldenU32(2), goldenU32(22)) // the last write wins
	for _, tc := range []struct {
		idx  uint32
		want uint32
	}{{0, 0}, {1, 10}, {2, 22}, {3, 0}} {
		v, ok := arrayValue(st, "a", ms, tc.idx)
		if !ok || len(v) != 4 || goldenLE(v) != tc.want {
			t.Errorf("element %d = %x, %v; want %d", tc.idx, v, ok, tc.want)
		}
	}
	bad := *ms
	bad.Contents = []ebpf.MapKV{{Key: "one", Value: goldenU32(1)}}
	if _, ok := arrayValue(mapstate.New(), "a", &bad, 1); ok {
		t.Error("an unreadable Contents key must make the value unknown")
	}
}

func goldenLE(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
