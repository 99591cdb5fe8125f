package passes

import (
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// TestDeadStoresConservative checks that dce keeps every stack store some
// instruction may read: through a spilled frame pointer, in a called
// function, or by a helper; and removes the store nothing reads.
func TestDeadStoresConservative(t *testing.T) {
	marker := func(v int32) asm.Instruction { return asm.StoreImm(asm.R10, -16, int64(v), asm.Word) }
	for _, tc := range []struct {
		name  string
		insns asm.Instructions
		kept  bool // the marker store survives
	}{
		{name: "never read", kept: false, insns: asm.Instructions{
			marker(7),
			asm.Mov.Imm(asm.R0, 2),
			asm.Return(),
		}},
		{name: "frame pointer spilled and reloaded", kept: true, insns: asm.Instructions{
			marker(7),
			asm.Mov.Reg(asm.R1, asm.R10),
			asm.Add.Imm(asm.R1, -16),
			asm.StoreMem(asm.R10, -8, asm.R1, asm.DWord),
			asm.LoadMem(asm.R2, asm.R10, -8, asm.DWord),
			asm.LoadMem(asm.R0, asm.R2, 0, asm.DWord),
			asm.Return(),
		}},
		{name: "read by a called function", kept: true, insns: asm.Instructions{
			marker(7),
			asm.Mov.Reg(asm.R1, asm.R10),
			asm.Add.Imm(asm.R1, -16),
			asm.Call.Label("reader"),
			asm.Return(),
			asm.LoadMem(asm.R0, asm.R1, 0, asm.DWord).WithSymbol("reader"),
			asm.Return(),
		}},
		{name: "read by a helper", kept: true, insns: asm.Instructions{
			marker(7),
			asm.LoadMapPtr(asm.R1, 0).WithReference("table"),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -16),
			asm.Mov.Reg(asm.R3, asm.R2),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 2),
			asm.Return(),
		}},
		{name: "overwritten before the helper reads it", kept: false, insns: asm.Instructions{
			marker(7),
			asm.StoreImm(asm.R10, -16, 1, asm.Word),
			asm.LoadMapPtr(asm.R1, 0).WithReference("table"),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -16),
			asm.Mov.Reg(asm.R3, asm.R2),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 2),
			asm.Return(),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := runDCE(t, tc.insns)
			kept := strings.Contains(c.Prog.String(), "off: -16 imm: 7")
			if kept != tc.kept {
				t.Errorf("marker store kept %v, want %v:\n%s", kept, tc.kept, c.Prog)
			}
		})
	}
}

// TestDeadArguments checks which argument-register definitions dce removes
// before a call: a known helper reads only its declared arguments and a
// static function only those its body reads; an unknown helper reads all
// five. The marker is "r5 = 7" (or r3/r4 where the callee takes fewer).
func TestDeadArguments(t *testing.T) {
	lookup := []asm.Instruction{
		asm.StoreImm(asm.R10, -8, 0, asm.Word),
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference("table"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -8),
	}
	for _, tc := range []struct {
		name   string
		insns  asm.Instructions
		marker string
		kept   bool
	}{
		{name: "lookup takes two arguments", marker: "MovImm dst: r3 imm: 7", kept: false, insns: slices.Concat(lookup, asm.Instructions{
			asm.Mov.Imm(asm.R3, 7),
			asm.FnMapLookupElem.Call(),
			asm.Mov.Imm(asm.R0, 2),
			asm.Return(),
		})},
		{name: "update takes four", marker: "MovImm dst: r4 imm: 7", kept: true, insns: slices.Concat(lookup, asm.Instructions{
			asm.Mov.Reg(asm.R3, asm.R2),
			asm.Mov.Imm(asm.R4, 7),
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 2),
			asm.Return(),
		})},
		{name: "unlisted helper reads all five", marker: "MovImm dst: r5 imm: 7", kept: true, insns: asm.Instructions{
			asm.Mov.Imm(asm.R5, 7),
			asm.FnGetCurrentPidTgid.Call(),
			asm.Mov.Imm(asm.R0, 2),
			asm.Return(),
		}},
		{name: "static function ignores r3", marker: "MovImm dst: r3 imm: 7", kept: false, insns: asm.Instructions{
			asm.Mov.Imm(asm.R1, 2),
			asm.Mov.Imm(asm.R3, 7),
			asm.Call.Label("fn"),
			asm.Return(),
			asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("fn"),
			asm.Return(),
		}},
		{name: "static function reads r3", marker: "MovImm dst: r3 imm: 7", kept: true, insns: asm.Instructions{
			asm.Mov.Imm(asm.R3, 7),
			asm.Call.Label("fn"),
			asm.Return(),
			asm.Mov.Reg(asm.R0, asm.R3).WithSymbol("fn"),
			asm.And.Imm(asm.R0, 3),
			asm.Return(),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := runDCE(t, tc.insns)
			if kept := strings.Contains(c.Prog.String(), tc.marker); kept != tc.kept {
				t.Errorf("%q kept %v, want %v:\n%s", tc.marker, kept, tc.kept, c.Prog)
			}
			goldenKernel(t, c, goldenCase{name: tc.name})
		})
	}
}

// runDCE runs dce alone on insns, a program of the golden collection with
// an 8-byte hash map "table".
func runDCE(t *testing.T, insns asm.Instructions) *Context {
	t.Helper()
	table := &ebpf.MapSpec{Name: "table", Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 4}
	spec := goldenCollection(insns, table)
	prog, err := program.Lift(spec.Programs[goldenProg])
	if err != nil {
		t.Fatal(err)
	}
	c := &Context{Coll: spec, Prog: prog, State: mapstate.New(), Guards: guard.NewTable(), Opts: DefaultOptions()}
	c.Opts.Passes = []string{"dce"}
	if err := Run(c); err != nil {
		t.Fatal(err)
	}
	return c
}
