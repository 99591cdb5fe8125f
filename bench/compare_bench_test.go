//go:build linux

package bench

import (
	"context"
	"testing"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/traffic"
)

// BenchmarkOriginalVsOptimized measures every NF at every locality the way
// `morpheus bench` does: optimizer once per sub-benchmark (not timed),
// then every iteration one alternated measurement of the original, the
// optimized program and the floor. The metrics are what matters, not
// ns/op (which is the time of a whole measurement):
//
//	orig-ns/pkt, opt-ns/pkt  the NFs' own cost (floor removed), medians
//	floor-ns/pkt             the harness floor
//	speedup                  orig-ns/pkt / opt-ns/pkt of the last iteration
//
// Run one NF with -bench 'OriginalVsOptimized/router/' -benchtime 1x.
func BenchmarkOriginalVsOptimized(b *testing.B) {
	kerneltest.Require(b)
	for _, nf := range NFs {
		for _, loc := range traffic.Localities {
			b.Run(nf+"/"+string(loc), func(b *testing.B) {
				sc, err := NewScenario(ScenarioOptions{NF: nf, Trace: traffic.Options{
					Packets: 16384, Locality: loc, MissShare: 0.1, Seed: 1,
				}})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				p, err := Optimize(ctx, sc, CompareOptions{Seed: 1})
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				h, err := New(sc.Frames, Config{IngressIfindex: sc.Ingress})
				if err != nil {
					b.Fatal(err)
				}
				defer h.Close()
				var last *Comparison
				b.ResetTimer()
				for b.Loop() {
					if last, err = p.Measure(ctx, h, Options{Rounds: 3, Repeat: 1 << 18, Warmup: 1 << 14}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(last.OriginalNs, "orig-ns/pkt")
				b.ReportMetric(last.OptimizedNs, "opt-ns/pkt")
				b.ReportMetric(last.FloorNs, "floor-ns/pkt")
				b.ReportMetric(last.Speedup, "speedup")
			})
		}
	}
}
