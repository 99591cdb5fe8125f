//go:build linux

package testbed

import (
	"context"
	"testing"
	"time"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

// BenchmarkLiveGenerator measures the live-frames generator into an
// XDP_DROP program on the testbed's veth: the rate the testbed can offer
// an NF on this machine (Mpps) and the share of frames the NF saw.
func BenchmarkLiveGenerator(b *testing.B) {
	kerneltest.Require(b)
	frames := testFrames(b)
	tb, err := New(context.Background(), Options{Frames: frames, MaxDuration: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer tb.Close()
	drop := dropProg(b, 0)
	if err := tb.Attach(drop); err != nil {
		b.Fatal(err)
	}
	const packets = 1 << 20
	var sent, seen uint64
	var elapsed time.Duration
	for b.Loop() {
		before, err := drop.Stats()
		if err != nil {
			b.Fatal(err)
		}
		if err := tb.Start(context.Background(), packets); err != nil {
			b.Fatal(err)
		}
		g, err := tb.Wait()
		if err != nil {
			b.Fatal(err)
		}
		after, err := drop.Stats()
		if err != nil {
			b.Fatal(err)
		}
		sent += g.Sent
		seen += after.RunCount - before.RunCount
		elapsed += g.Elapsed
	}
	b.ReportMetric(float64(sent)/elapsed.Seconds()/1e6, "Mpps")
	b.ReportMetric(float64(seen)/float64(sent), "delivered")
}
