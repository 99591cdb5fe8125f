//go:build linux

package instrument_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/instrument"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// loIfindex is the loopback interface, the generated router's ingress.
const loIfindex = 1

// entryCounts gives the number of entries the control plane put in each
// map (Options.Entries).
func entryCounts(st *mapstate.State) map[string]int {
	out := map[string]int{}
	for name, m := range st.Maps {
		out[name] = len(m.Entries)
	}
	return out
}

// overheadVariants are the instrumented routers BenchmarkOverhead measures
// next to the original, by name.
var overheadVariants = []struct {
	name string
	opts instrument.Options
}{
	{"count-1e-6", instrument.Options{Rate: 1e-6}}, // the unsampled path alone
	{"count-1%", instrument.Options{Rate: 0.01}},
	{"count-5%", instrument.Options{Rate: 0.05}},
	{"count-25%", instrument.Options{Rate: 0.25}},
	{"ring-1%", instrument.Options{Rate: 0.01, Recorder: instrument.RecorderRing}},
	{"ring-5%", instrument.Options{Rate: 0.05, Recorder: instrument.RecorderRing}},
	{"ring-25%", instrument.Options{Rate: 0.25, Recorder: instrument.RecorderRing}},
	{"prandom-5%", instrument.Options{Rate: 0.05, Sampler: instrument.SamplerPrandom}},
	{"all-100%", instrument.Options{Rate: 1}},
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
		v, err := instrument.Instrument(spec, router.Program, o)
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
		res, err = h.Measure(context.Background(), progs, bench.Options{Rounds: 25, Repeat: 1 << 18, Warmup: 1 << 16})
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
	// Paired ABBA runs against the original, many short ones: the load
	// of a busy machine changes within a Measure round, much less between
	// two adjacent 10 ms runs.
	table += "\npaired ABBA runs (2 x 2 x 2^15 packets per pair, 300 pairs): overhead = trimmed mean of (variant - router) / router net\n\n"
	table += "| program | ns/pkt added | overhead |\n|---|---|---|\n"
	for _, n := range names {
		d, err := pairedDiff(h, progs["router"], progs[n], 300, 1<<15)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(100*d/base.NsPerPacket, n+"-paired-%")
		table += fmt.Sprintf("| %s | %+.2f | %+.2f%% |\n", n, d, 100*d/base.NsPerPacket)
	}
	a, slope := fitOverhead(res)
	b.ReportMetric(100*(a+0.05*slope), "fit-5%-overhead-%")
	table += fmt.Sprintf("\nlinear fit over the countdown variants: overhead(rate) = %.2f%% + rate x %.1f%%; at 5%%: %.2f%%\n",
		100*a, 100*slope, 100*(a+0.05*slope))
	// Printed, not logged: the benchmark log keeps only a few lines.
	fmt.Printf("%s\n%s", res, table)
}

// pairedDiff runs a, b, b, a for each of pairs pairs and returns the
// interquartile mean of the per-pair differences (b - a) in ns/packet.
func pairedDiff(h *bench.Harness, a, b *ebpf.Program, pairs, repeat int) (float64, error) {
	var diffs []float64
	for range pairs {
		var t [4]float64
		for i, p := range []*ebpf.Program{a, b, b, a} {
			d, err := h.Run(p, repeat)
			if err != nil {
				return 0, err
			}
			t[i] = float64(d.Nanoseconds())
		}
		diffs = append(diffs, (t[1]+t[2]-t[0]-t[3])/2)
	}
	sort.Float64s(diffs)
	q := diffs[len(diffs)/4 : len(diffs)-len(diffs)/4]
	var sum float64
	for _, d := range q {
		sum += d
	}
	return sum / float64(len(q)), nil
}

// fitOverhead fits overhead = a + slope·rate by least squares to the
// countdown variants' ratios (hash recorder): every variant runs the same unsampled path
// and adds rate × the cost of recording, so the fit pools all of them
// against the noise of any single ratio.
func fitOverhead(res *bench.Result) (a, slope float64) {
	var xs, ys []float64
	for _, ov := range overheadVariants {
		if ov.opts.Sampler != instrument.SamplerCountdown || ov.opts.Recorder != instrument.RecorderHash {
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

// ampSites is the number of lookups per packet in the amplified program.
const ampSites = 16

// ampSpec returns the router's routes map and an XDP program "amp" that
// builds the router's LPM key from the packet's IPv4 destination and looks
// it up ampSites times: the per-site cost of instrumentation multiplied
// far above the noise of a busy machine.
func ampSpec(tb testing.TB) *ebpf.CollectionSpec {
	tb.Helper()
	rs, err := router.Spec()
	if err != nil {
		tb.Fatal(err)
	}
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word).WithSymbol("amp"), // data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),                   // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 34),
		// Short frames skip to the exit past the 3 key stores and the
		// lookups (5 slots each).
		{OpCode: asm.JGT.Op(asm.RegSource), Dst: asm.R4, Src: asm.R3, Offset: 3 + 5*ampSites},
		asm.LoadMem(asm.R5, asm.R2, 30, asm.Word), // IPv4 daddr
		asm.StoreImm(asm.R10, -8, 32, asm.Word),
		asm.StoreMem(asm.R10, -4, asm.R5, asm.Word),
	}
	for range ampSites {
		insns = append(insns,
			asm.LoadMapPtr(asm.R1, 0).WithReference(router.MapRoutes),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -8),
			asm.FnMapLookupElem.Call(),
		)
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 1), asm.Return()) // XDP_DROP
	return &ebpf.CollectionSpec{
		Maps:     map[string]*ebpf.MapSpec{router.MapRoutes: rs.Maps[router.MapRoutes]},
		Programs: map[string]*ebpf.ProgramSpec{"amp": {Name: "amp", Type: ebpf.XDP, License: "GPL", Instructions: insns}},
	}
}

// BenchmarkSiteCost measures what instrumentation adds per lookup site
// execution, on a program doing ampSites LPM lookups per packet into the
// router's 2,592 routes with the high-locality trace's destinations:
// paired ABBA runs of each variant against the original, divided by the
// number of sites. count-1e-6 is the unsampled path alone;
// count-5%-norecord samples 5% but records nothing (the sampler's whole
// cost); all-100% records every execution (hot keys: heat map hit and
// atomic add, always in cache).
//
//	CI=1 go test -run '^$' -bench SiteCost -benchtime 1x ./instrument
func BenchmarkSiteCost(b *testing.B) {
	kerneltest.Require(b)
	cfg, err := traffic.RouterConfig(0, []uint32{loIfindex, 2}, 1)
	if err != nil {
		b.Fatal(err)
	}
	st, err := cfg.State()
	if err != nil {
		b.Fatal(err)
	}
	set, err := traffic.RouterFlows(cfg, loIfindex, 1000, 2)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: 8192, Locality: traffic.LocalityHigh, MissShare: 0.2, Seed: 3})
	if err != nil {
		b.Fatal(err)
	}
	routes := mapstate.New()
	routes.Maps[router.MapRoutes] = st.Maps[router.MapRoutes]
	orig, err := routes.Load(ampSpec(b), ebpf.CollectionOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	progs := map[string]*ebpf.Program{"orig": orig.Programs["amp"]}
	variants := []struct {
		name     string
		opts     instrument.Options
		noRecord bool
	}{
		{"count-1e-6", instrument.Options{Rate: 1e-6}, false},
		{"count-5%-norecord", instrument.Options{Rate: 0.05}, true},
		{"count-5%", instrument.Options{Rate: 0.05}, false},
		{"ring-5%", instrument.Options{Rate: 0.05, Recorder: instrument.RecorderRing}, false},
		{"prandom-5%", instrument.Options{Rate: 0.05, Sampler: instrument.SamplerPrandom}, false},
		{"all-100%", instrument.Options{Rate: 1}, false},
	}
	for _, vr := range variants {
		instrument.SetSkipRecording(vr.noRecord)
		v, err := instrument.Instrument(ampSpec(b), "amp", vr.opts)
		instrument.SetSkipRecording(false)
		if err != nil {
			b.Fatal(err)
		}
		coll, err := v.Load(orig.Maps)
		if err != nil {
			b.Fatal(err)
		}
		defer coll.Close()
		progs[vr.name] = coll.Programs["amp"]
	}
	h, err := bench.New(tr.Frames, bench.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	b.ResetTimer()
	table := fmt.Sprintf("| variant | ns per site execution (%d sites/packet, 100 ABBA pairs) |\n|---|---|\n", ampSites)
	for _, vr := range variants {
		d, err := pairedDiff(h, progs["orig"], progs[vr.name], 100, 1<<15)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(d/ampSites, vr.name+"-ns/site")
		table += fmt.Sprintf("| %s | %+.2f |\n", vr.name, d/ampSites)
	}
	b.StopTimer()
	fmt.Print(table)
}
