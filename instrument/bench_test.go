//go:build linux

package instrument

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// overheadVariants are the instrumented routers BenchmarkOverhead measures
// next to the original, by name.
var overheadVariants = []struct {
	name string
	opts Options
}{
	{"count-1e-6", Options{Rate: 1e-6}}, // the unsampled path alone
	{"count-1%", Options{Rate: 0.01}},
	{"count-5%", Options{Rate: 0.05}},
	{"count-25%", Options{Rate: 0.25}},
	{"prandom-5%", Options{Rate: 0.05, Sampler: SamplerPrandom}},
	{"all-100%", Options{Rate: 1}},
}

// BenchmarkOverhead measures the cost of instrumentation on the router
// with the seed's 2,592 routes and a high-locality trace (8,192 packets,
// 20% misses, 1% malformed), in-kernel replay: the original, a second
// copy of the original (the noise of a ratio) and the variants, all
// sharing the original's maps, alternated in one bench.Measure call. It
// reports each program's ratio to the original twice: the ratio of the
// median net costs, and the median of the per-round ratios.
//
//	CI=1 go test -run '^$' -bench Overhead -benchtime 1x ./instrument
func BenchmarkOverhead(b *testing.B) {
	kerneltest.Require(b)
	cfg, err := traffic.RouterConfig(0, []uint32{loIfindex, 2}, 1)
	if err != nil {
		b.Fatal(err)
	}
	set, err := traffic.RouterFlows(cfg, loIfindex, 1000, 2)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: 8192, Locality: traffic.LocalityHigh,
		MissShare: 0.2, MalformedShare: 0.01, Seed: 3})
	if err != nil {
		b.Fatal(err)
	}
	orig, err := router.Load(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	again, err := router.Load(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer again.Close()
	progs := map[string]*ebpf.Program{
		"router":  orig.Programs[router.Program],
		"router2": again.Programs[router.Program],
	}
	st, err := cfg.State()
	if err != nil {
		b.Fatal(err)
	}
	for _, ov := range overheadVariants {
		spec, err := router.Spec()
		if err != nil {
			b.Fatal(err)
		}
		o := ov.opts
		o.Entries = entryCounts(st)
		v, err := Instrument(spec, router.Program, o)
		if err != nil {
			b.Fatal(err)
		}
		coll, err := v.Load(orig.Maps)
		if err != nil {
			b.Fatal(err)
		}
		defer coll.Close()
		progs[ov.name] = coll.Programs[router.Program]
	}
	h, err := bench.New(tr.Frames, bench.Config{IngressIfindex: loIfindex})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()

	var res *bench.Result
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err = h.Measure(context.Background(), progs, bench.Options{Rounds: 25, Repeat: 1 << 19, Warmup: 1 << 16})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	base, _ := res.Stat("router")
	b.ReportMetric(res.Floor.RawMedian, "floor-ns/pkt")
	b.ReportMetric(base.NsPerPacket, "router-ns/pkt")
	names := []string{"router2"}
	for _, ov := range overheadVariants {
		names = append(names, ov.name)
	}
	table := "| program | net ns/pkt | ratio of medians | median of per-round ratios |\n|---|---|---|---|\n"
	table += fmt.Sprintf("| router | %.1f | 1 | 1 |\n", base.NsPerPacket)
	for _, n := range names {
		s, _ := res.Stat(n)
		r := res.Ratio(n, "router")
		pr := roundRatios(s.Net, base.Net)
		b.ReportMetric(r, n+"-ratio")
		table += fmt.Sprintf("| %s | %.1f | %.3f | %.3f |\n", n, s.NsPerPacket, r, pr)
	}
	a, slope := fitOverhead(res)
	b.ReportMetric(100*(a+0.05*slope), "fit-5%-overhead-%")
	table += fmt.Sprintf("\nlinear fit over the countdown variants: overhead(rate) = %.2f%% + rate x %.1f%%; at 5%%: %.2f%%\n",
		100*a, 100*slope, 100*(a+0.05*slope))
	// Printed, not logged: the benchmark log keeps only a few lines.
	fmt.Printf("%s\n%s", res, table)
}

// fitOverhead fits overhead = a + slope·rate by least squares to the
// countdown variants' ratios: every variant runs the same unsampled path
// and adds rate × the cost of recording, so the fit pools all of them
// against the noise of any single ratio.
func fitOverhead(res *bench.Result) (a, slope float64) {
	var xs, ys []float64
	for _, ov := range overheadVariants {
		if ov.opts.Sampler != SamplerCountdown {
			continue
		}
		xs = append(xs, ov.opts.Rate)
		ys = append(ys, res.Ratio(ov.name, "router")-1)
	}
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	slope = (n*sxy - sx*sy) / (n*sxx - sx*sx)
	return (sy - slope*sx) / n, slope
}

// roundRatios is the median over rounds of a[i]/b[i]: both measured in
// the same round, so slow drifts of the machine cancel.
func roundRatios(a, b []float64) float64 {
	var r []float64
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			r = append(r, a[i]/b[i])
		}
	}
	if len(r) == 0 {
		return 0
	}
	sort.Float64s(r)
	r = slices.Clip(r)
	if len(r)%2 == 1 {
		return r[len(r)/2]
	}
	return (r[len(r)/2-1] + r[len(r)/2]) / 2
}
