package agent

import (
	"context"
	"math/rand"
	"sort"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/optimize"
)

// TestAllNFs runs every sample NF under the agent without an interface:
// the entry program in a prog-array slot added for the test, and every
// tail-call target in its own object's prog array. A cycle must end
// without error for every program, whatever it decides, and afterwards
// the running programs must answer like the originals.
func TestAllNFs(t *testing.T) {
	kerneltest.Require(t)
	type nfCase struct {
		name  string
		spec  func() (*ebpf.CollectionSpec, error)
		state func() (*mapstate.State, error)
		main  string
	}
	for _, tc := range []nfCase{
		{"router", router.Spec, router.ExampleConfig().State, router.Program},
		{"firewall", firewall.Spec, firewall.ExampleConfig().State, firewall.Program},
		{"lb", lb.Spec, lb.ExampleConfig().State, lb.Program},
		{"ddos", ddos.Spec, ddos.ExampleConfig().State, ddos.Program},
		{"l2switch", l2switch.Spec, l2switch.ExampleConfig().State, l2switch.Program},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			spec, err := tc.spec()
			if err != nil {
				t.Fatal(err)
			}
			st, err := tc.state()
			if err != nil {
				t.Fatal(err)
			}
			atts := tailCallAttachments(spec, tc.main)
			nf, err := Load(ctx, spec, st, atts, Options{Name: tc.name, Generated: 200, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer nf.Close()
			cs, err := nf.Cycle(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, pc := range cs.Programs {
				t.Logf("%s: %s %s (%d -> %d insns, %d rewrites)", pc.Program, pc.Outcome, pc.Reason, pc.InstructionsBefore, pc.InstructionsAfter, pc.Applied)
				if pc.Outcome == OutcomeError || pc.Outcome == OutcomeRaced {
					t.Errorf("%s: %s: %s", pc.Program, pc.Outcome, pc.Reason)
				}
				// Every slot of a swapped program holds the optimized
				// one (loading another candidate must not have
				// repopulated the live prog arrays).
				if ps, _ := nf.Program(pc.Program); pc.Outcome == OutcomeSwapped {
					for _, at := range nf.progs[pc.Program].atts {
						if id, err := at.current(); err != nil || id == ps.OriginalID {
							t.Errorf("%s: %s runs %d (original %d, err %v) after the swap", pc.Program, at.spec(), id, ps.OriginalID, err)
						}
					}
				}
			}
			// The entry point answers like the original on generated
			// packets (each run from the same maps: the NFs' per-packet
			// state lives in per-CPU counters and conntrack, which both
			// share).
			ps, err := nf.Program(tc.main)
			if err != nil {
				t.Fatal(err)
			}
			pkts := optimize.Generate(spec, st, nil, 50, rand.New(rand.NewSource(1)))
			for i, pkt := range pkts {
				got, want := runID(t, ps.RunningID, pkt), runID(t, ps.OriginalID, pkt)
				if got.verdict != want.verdict {
					t.Fatalf("packet %d: running program %d, original %d", i, got.verdict, want.verdict)
				}
			}
			if err := nf.Stop(); err != nil {
				t.Fatal(err)
			}
			for _, ps := range nf.Programs() {
				if ps.RunningID != ps.OriginalID {
					t.Errorf("%s: after Stop %d runs, not the original %d", ps.Name, ps.RunningID, ps.OriginalID)
				}
			}
		})
	}
}

func sortedMapNames(spec *ebpf.CollectionSpec) []string {
	var out []string
	for n := range spec.Maps {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
