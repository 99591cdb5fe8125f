package optimize

import (
	"context"
	"testing"
	"time"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/traffic"
)

// cycleCases are the sample NFs at the sizes the agent runs them: the
// router with 2,592 routes, the firewall with about 450 rules, the load
// balancer with 10 VIPs of 100 reals, the switch and the DDoS filter.
func cycleCases() []nfCase {
	return []nfCase{
		routerCase(2592),
		firewallCase("450-rules", 450, 200, true, nil),
		lbCase(10),
		l2switchCase(),
		ddosCase(),
	}
}

// BenchmarkCycle measures the optimizer's part of one agent cycle per
// program: what optimize.RunLive does for the agent (passes, the kernel
// verifier, the differential test with the agent's default budget and
// the guard check; the verifier's load of the candidate is the
// differential test's, and the test's copies of the original load while
// the passes run). The snapshot and the swap are the agent's and come on
// top; ms/cycle is per program, the phases are reported apart. "full" is
// a cycle whose candidate has a new shape, "steady" one whose candidate
// has the running candidate's shape (LiveOptions.SameShape), the common
// case of a cycle after a traffic or configuration change.
//
//	go test ./optimize -run XXX -bench Cycle -benchtime 5x
func BenchmarkCycle(b *testing.B) {
	kerneltest.Require(b)
	for _, c := range cycleCases() {
		for _, mode := range []string{"full", "steady"} {
			b.Run(c.name+"/"+mode, func(b *testing.B) { benchCycle(b, c, mode == "steady") })
		}
	}
}

func benchCycle(b *testing.B, c nfCase, steady bool) {
	spec, err := c.spec()
	if err != nil {
		b.Fatal(err)
	}
	state, set := c.setup(b, spec)
	tr, err := traffic.Generate(set, traffic.Options{Packets: 3000, Locality: traffic.LocalityHigh, MalformedShare: c.malformed, Seed: 12})
	if err != nil {
		b.Fatal(err)
	}
	heat := heatFromTrace(tr, c.keys)
	names := make([]string, 0, len(spec.Programs))
	for n := range spec.Programs {
		names = append(names, n)
	}
	// As the agent keeps them: the test's copies of the original stay
	// loaded from cycle to cycle.
	baseline := NewBaseline()
	defer baseline.Close()
	opts := func(name string) LiveOptions {
		return LiveOptions{
			Options:    Options{Program: name, Passes: passes.DefaultOptions(), Generated: 1000, Seed: 1, Context: xdpContext(c.ingress)},
			GuardCheck: true,
			Baseline:   baseline,
		}
	}
	// The shapes of the candidates, as the running ones.
	shapes := map[string][32]byte{}
	if steady {
		for _, name := range names {
			rep, err := RunLive(context.Background(), spec, state, heat, opts(name))
			if err != nil {
				b.Fatal(err)
			}
			if rep.Candidate != nil {
				shapes[name] = Shape(rep.Candidate.Spec.Programs[name].Instructions)
			}
		}
	}
	var opt, ver, diff, load, runsT, maps, gc, base time.Duration
	runs := 0
	cpu0 := cpuTime(b)
	for b.Loop() {
		for _, name := range names {
			o := opts(name)
			if steady {
				o.SameShape = func(s [32]byte) bool { return s == shapes[name] }
			}
			rep, err := RunLive(context.Background(), spec, state, heat, o)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Differential != nil && !rep.Differential.Passed() {
				b.Fatalf("%s: %s", name, rep.Reason)
			}
			opt += rep.OptimizeTime
			ver += rep.VerifyTime
			diff += rep.DifferentialNS
			gc += rep.GuardCheckTime
			base += rep.BaselineLoadTime
			if d := rep.Differential; d != nil {
				load += d.Timing.Load
				runsT += d.Timing.Runs
				maps += d.Timing.Maps
			}
			runs++
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(runs) / 1e6 }
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(runs)/1e6, "ms/cycle")
	// CPU time of the process (both cores, user and system): less at
	// the mercy of other load on the machine than wall time.
	b.ReportMetric(ms(cpuTime(b)-cpu0), "cpu-ms/cycle")
	b.ReportMetric(ms(opt), "opt-ms")
	b.ReportMetric(ms(ver), "verifier-ms")
	b.ReportMetric(ms(diff), "diff-ms")
	// The differential test's phases (the guard check apart).
	b.ReportMetric(ms(load), "diff-load-ms")
	b.ReportMetric(ms(runsT), "diff-runs-ms")
	b.ReportMetric(ms(maps), "diff-maps-ms")
	b.ReportMetric(ms(gc), "guard-ms")
	// The originals' load or reset, beside the passes.
	b.ReportMetric(ms(base), "orig-load-ms")
}
