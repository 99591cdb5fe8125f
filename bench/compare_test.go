//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/traffic"
)

// smallConfigs are configurations smaller than the evaluation's for the
// NFs whose differential test is slow at full size (it compares every map
// after every packet). They also exercise ScenarioOptions.Config.
var smallConfigs = map[string]func() (any, error){
	"router":   func() (any, error) { return traffic.RouterConfig(300, []uint32{DefaultIngress, 2}, 1) },
	"firewall": func() (any, error) { return traffic.FirewallConfig(90, false, 1) },
}

// TestCompareNFs runs the whole original-vs-optimized path on every NF
// with a short trace and few, short rounds: it checks that the optimized
// collection loads and replays the trace (tail calls included), not how
// fast it is.
func TestCompareNFs(t *testing.T) {
	kerneltest.Require(t)
	for _, nf := range NFs {
		t.Run(nf, func(t *testing.T) {
			var cfg []byte
			if gen := smallConfigs[nf]; gen != nil {
				c, err := gen()
				if err != nil {
					t.Fatal(err)
				}
				if cfg, err = json.Marshal(c); err != nil {
					t.Fatal(err)
				}
			}
			sc, err := NewScenario(ScenarioOptions{NF: nf, Config: cfg, Flows: 300, Trace: traffic.Options{
				Packets: 4096, Locality: traffic.LocalityHigh, MissShare: 0.1, Seed: 1,
			}})
			if err != nil {
				t.Fatal(err)
			}
			cmp, err := Compare(context.Background(), sc, CompareOptions{
				Measure:     Options{Rounds: 1, Repeat: 1 << 12},
				DiffPackets: 200, Generated: 200,
			})
			if err != nil {
				t.Fatal(err)
			}
			if !cmp.Accepted {
				t.Errorf("no program of %s was replaced", nf)
			}
			for _, p := range cmp.Programs {
				t.Logf("%s: accepted %v %q insns %d -> %d, xlated %d -> %d, %d rewrites", p.Program, p.Accepted, p.Reason,
					p.InsnsBefore, p.InsnsAfter, p.XlatedOriginal, p.XlatedOptimized, len(p.Applied))
				if p.XlatedOriginal == 0 || p.XlatedOptimized == 0 {
					t.Errorf("%s: no xlated instruction count", p.Program)
				}
			}
			t.Logf("floor %.1f original %.1f optimized %.1f speedup %.2f", cmp.FloorNs, cmp.OriginalNs, cmp.OptimizedNs, cmp.Speedup)
			if cmp.Packets != 4096 || cmp.Result == nil || len(cmp.Programs) == 0 {
				t.Errorf("comparison %+v", cmp)
			}
		})
	}
}

// TestProfileHeatmap cross-checks the two heatmap sources: the
// instrumented router, recording every lookup (rate 1), and the trace's
// key counts must agree on the hot routes and their counts.
func TestProfileHeatmap(t *testing.T) {
	kerneltest.Require(t)
	sc, err := NewScenario(ScenarioOptions{NF: "router", Flows: 300, Trace: traffic.Options{
		Packets: 5000, Locality: traffic.LocalityHigh, MissShare: 0.1, Seed: 3,
	}})
	if err != nil {
		t.Fatal(err)
	}
	got, src, err := sc.ProfileHeatmap(context.Background(), ProfileOptions{Rate: 1, Passes: 2})
	if err != nil {
		t.Fatal(err)
	}
	want, err := sc.TraceHeatmap()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source: %s", src)
	g, w := got.Top("routes", 8), want.Top("routes", 8)
	if len(g) != 8 || len(w) != 8 {
		t.Fatalf("top keys: instrumented %d, trace %d", len(g), len(w))
	}
	for i := range w {
		if !bytes.Equal(g[i].Key, w[i].Key) || g[i].Count != 2*w[i].Count {
			t.Errorf("rank %d: instrumented %x x%d, trace %x x%d (two passes)", i, g[i].Key, g[i].Count, w[i].Key, w[i].Count)
		}
	}
}

// TestFirewallStagesOptimized checks the tail-call plumbing of the
// optimized firewall: its stages prog array holds the optimized copies of
// the stage programs, not the originals, and the original's holds the
// originals.
func TestFirewallStagesOptimized(t *testing.T) {
	kerneltest.Require(t)
	c, err := smallConfigs["firewall"]()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewScenario(ScenarioOptions{NF: "firewall", Config: cfg, Flows: 200, Trace: traffic.Options{
		Packets: 2000, Locality: traffic.LocalityHigh, Seed: 4,
	}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Optimize(context.Background(), sc, CompareOptions{DiffPackets: 100, Generated: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	id := func(prog *ebpf.Program) ebpf.ProgramID {
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := info.ID()
		return n
	}
	for _, stage := range []struct {
		slot uint32
		name string
	}{{0, firewall.ConntrackProgram}, {1, firewall.ACLProgram}} {
		for _, tc := range []struct {
			which string
			coll  *ebpf.Collection
		}{{"original", p.Original}, {"optimized", p.Optimized}} {
			var got ebpf.ProgramID
			if err := tc.coll.Maps["stages"].Lookup(stage.slot, &got); err != nil {
				t.Fatalf("%s stages[%d]: %v", tc.which, stage.slot, err)
			}
			if want := id(tc.coll.Programs[stage.name]); got != want {
				t.Errorf("%s stages[%d] holds program %d, want its own %s (%d)", tc.which, stage.slot, got, stage.name, want)
			}
		}
	}
	for _, o := range p.Programs {
		if (o.Program == firewall.ACLProgram || o.Program == firewall.ConntrackProgram) && !o.Accepted {
			t.Errorf("%s not optimized (%s): the check above proves nothing for it", o.Program, o.Reason)
		}
	}
}
