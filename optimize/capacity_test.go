package optimize

import (
	"maps"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// TestInsertBounds checks the inserts per packet the analysis bounds for
// the sample NFs' hash maps (firewall: an entry program and two tail
// call stages, each counted as a possible entry with its chain) and that
// loops, dereferenced map pointers and other helpers leave a map out.
func TestInsertBounds(t *testing.T) {
	// loop updates "h" in a loop of up to 4 iterations when loop is set;
	// with deref it reads a field of h's struct bpf_map.
	prog := func(loop, deref bool) *ebpf.CollectionSpec {
		insns := asm.Instructions{
			asm.Mov.Imm(asm.R6, 0),
			asm.StoreMem(asm.RFP, -8, asm.R6, asm.DWord),
			asm.LoadMapPtr(asm.R1, 0).WithReference("h"),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -8),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -8),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
			asm.Add.Imm(asm.R6, 1),
		}
		if loop {
			// Back to the store: a numeric offset as the ELF reader
			// leaves it (a symbol would start a function), over 10 slots.
			insns = append(insns, asm.Instruction{
				OpCode: asm.OpCode(asm.JumpClass).SetJumpOp(asm.JLT).SetSource(asm.ImmSource),
				Dst:    asm.R6, Constant: 4, Offset: -11,
			})
		}
		if deref {
			insns = append(insns,
				asm.LoadMapPtr(asm.R1, 0).WithReference("h"),
				asm.LoadMem(asm.R0, asm.R1, 36, asm.Word),
				asm.Return(),
			)
		} else {
			insns = append(insns, asm.Mov.Imm(asm.R0, 2), asm.Return())
		}
		return &ebpf.CollectionSpec{
			Maps: map[string]*ebpf.MapSpec{
				"h": {Name: "h", Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 65536},
			},
			Programs: map[string]*ebpf.ProgramSpec{
				"p": {Name: "p", Type: ebpf.XDP, License: "GPL", Instructions: insns},
			},
		}
	}
	nfSpec := func(c nfCase) func(t *testing.T) *ebpf.CollectionSpec {
		return func(t *testing.T) *ebpf.CollectionSpec { return must[*ebpf.CollectionSpec](t)(c.spec()) }
	}
	tests := []struct {
		name string
		spec func(t *testing.T) *ebpf.CollectionSpec
		want map[string]int
	}{
		{"router", nfSpec(routerCase(16)), map[string]int{}},
		{"firewall", nfSpec(firewallCase("f", 10, 10, true, nil)), map[string]int{"ct": 3, "rules": 0}},
		{"lb", nfSpec(lbCase(2)), map[string]int{"conns": 1, "vips": 0}},
		{"l2switch", nfSpec(l2switchCase()), map[string]int{"fdb": 1, "stats": 2, "vlans": 0}},
		{"ddos", nfSpec(ddosCase()), map[string]int{"blocklist": 0, "rate": 1}},
		{"straight", func(*testing.T) *ebpf.CollectionSpec { return prog(false, false) }, map[string]int{"h": 1}},
		{"update in a loop", func(*testing.T) *ebpf.CollectionSpec { return prog(true, false) }, map[string]int{}},
		{"map pointer dereferenced", func(*testing.T) *ebpf.CollectionSpec { return prog(false, true) }, map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.spec(t)
			for _, ps := range spec.Programs {
				// A map left out must be left out by the rules, not
				// because the program cannot be analysed.
				p, err := program.Lift(ps)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := analysis.Analyze(spec, p, analysis.Options{}); err != nil {
					t.Fatal(err)
				}
			}
			got := insertBounds(spec, "", nil, mapstate.New())
			if got == nil {
				got = map[string]int{}
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("insertBounds = %v, want %v", got, tt.want)
			}
		})
	}
}
