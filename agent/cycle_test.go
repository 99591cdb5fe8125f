package agent

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/firewall"
)

// TestCycleProgramsSideBySide runs cycles of the firewall, whose three
// programs the agent optimizes side by side: the profiler is still
// asked for one program at a time, every program gets its outcome in the
// order of NF.Programs, and a cycle after a change of a map checks and
// swaps the programs that depend on it like a cycle of one program.
func TestCycleProgramsSideBySide(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	spec, err := firewall.Spec()
	if err != nil {
		t.Fatal(err)
	}
	st, err := firewall.ExampleConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	var inFlight, most atomic.Int32
	profiler := ProfilerFunc(func(context.Context, string) (*heatmap.Heatmap, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		return nil, nil
	})
	nf, err := Load(ctx, spec, st, tailCallAttachments(spec, firewall.Program),
		Options{Name: "firewall", Generated: 200, Profiler: profiler, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	var want []string
	for _, ps := range nf.Programs() {
		want = append(want, ps.Name)
	}
	if len(want) < 3 {
		t.Fatalf("firewall has %d programs, want 3", len(want))
	}
	for i := range 3 {
		if i > 0 {
			// A control-plane change: a guard bump, every program
			// optimized again.
			m, err := nf.Map("src_lpm")
			if err != nil {
				t.Fatal(err)
			}
			e := st.Maps["src_lpm"].Entries[0]
			if err := m.Update([]byte(e.Key), []byte(e.Value), 0); err != nil {
				t.Fatal(err)
			}
		}
		cs, err := nf.Cycle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, pc := range cs.Programs {
			got = append(got, pc.Program)
			if pc.Outcome == OutcomeError || pc.Outcome == OutcomeRaced {
				t.Errorf("cycle %d: %s: %s: %s", i, pc.Program, pc.Outcome, pc.Reason)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("cycle %d: outcomes for %v, want %v", i, got, want)
		}
	}
	if most.Load() != 1 {
		t.Errorf("the profiler was asked for %d programs at once, want one at a time", most.Load())
	}
	if s := nf.Stats(); s.Swaps == 0 || s.Errors != 0 {
		t.Errorf("stats %+v: want swaps and no errors", s)
	}
}
