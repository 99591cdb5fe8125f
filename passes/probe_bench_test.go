package passes_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/traffic"
)

// BenchmarkLookupLayouts measures the NFs whose tables mapinline or
// hotcache compile with each lookup layout forced (and the cost models'
// choice), side by side in alternated rounds of one replay harness, so
// that the ratios between layouts are free of run-to-run noise:
//
//	go test ./passes -run '^$' -bench LookupLayouts -benchtime 1x
//
// It reports each variant's median ns per packet, floor removed. The
// environment variables MORPHEUS_LAYOUT_NFS and MORPHEUS_LAYOUT_LOCALITY
// (comma-separated) choose other NFs and localities than lb and
// l2switch at high and low locality.
func BenchmarkLookupLayouts(b *testing.B) {
	kerneltest.Require(b)
	nfs, locs := []string{"lb", "l2switch"}, []string{"high", "low"}
	if v := os.Getenv("MORPHEUS_LAYOUT_NFS"); v != "" {
		nfs = strings.Split(v, ",")
	}
	if v := os.Getenv("MORPHEUS_LAYOUT_LOCALITY"); v != "" {
		locs = strings.Split(v, ",")
	}
	for _, nf := range nfs {
		for _, l := range locs {
			loc := traffic.Locality(l)
			b.Run(fmt.Sprintf("%s/%s", nf, loc), func(b *testing.B) {
				ctx := context.Background()
				sc, err := bench.NewScenario(bench.ScenarioOptions{NF: nf, Trace: traffic.Options{Packets: 100000, Locality: loc, Seed: 1}})
				if err != nil {
					b.Fatal(err)
				}
				// The heatmap as the CLI's bench builds it: the
				// instrumented NF over the warmed-up state.
				if err := sc.Warm(ctx); err != nil {
					b.Fatal(err)
				}
				heat, _, err := sc.ProfileHeatmap(ctx, bench.ProfileOptions{})
				if err != nil {
					b.Fatal(err)
				}
				progs := map[string]*ebpf.Program{}
				for _, layout := range []string{"model", "chain", "tree", "probe"} {
					force := layout
					if layout == "model" {
						force = ""
					}
					restore := passes.SetForceLayout(force)
					pair, err := bench.Optimize(ctx, sc, bench.CompareOptions{Heat: heat, HeatSource: "instrument"})
					restore()
					if err != nil {
						b.Fatal(err)
					}
					defer pair.Close()
					if !pair.Accepted {
						b.Fatalf("%s: not accepted: %+v", layout, pair.Programs)
					}
					for _, o := range pair.Programs {
						for _, a := range o.Applied {
							b.Logf("%s: %s", layout, a)
						}
					}
					progs[layout] = pair.Optimized.Programs[sc.Program]
					progs["original"] = pair.Original.Programs[sc.Program]
				}
				h, err := bench.New(sc.Frames, bench.Config{IngressIfindex: sc.Ingress})
				if err != nil {
					b.Fatal(err)
				}
				defer h.Close()
				for b.Loop() {
					res, err := h.Measure(ctx, progs, bench.Options{Rounds: 15})
					if err != nil {
						b.Fatal(err)
					}
					for name := range progs {
						st, _ := res.Stat(name)
						b.ReportMetric(st.NsPerPacket, name+"-ns")
						b.Logf("%-8s %6.1f ns/packet net (spread %.2f)", name, st.NsPerPacket, st.Spread)
					}
				}
			})
		}
	}
}
