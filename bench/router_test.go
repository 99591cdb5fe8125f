//go:build linux

package bench

import (
	"context"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// loIfindex is the loopback interface: it exists in every namespace, and
// the router configurations below route frames arriving on it.
const loIfindex = 1

// routerSetup returns a router configuration with the seed's 2,592 routes
// and a trace of the given locality for it (20% misses, 1% malformed).
func routerSetup(tb testing.TB, loc traffic.Locality, packets int) (*router.Config, *traffic.Trace) {
	tb.Helper()
	cfg, err := traffic.RouterConfig(0, []uint32{loIfindex, 2}, 1)
	if err != nil {
		tb.Fatal(err)
	}
	set, err := traffic.RouterFlows(cfg, loIfindex, 1000, 2)
	if err != nil {
		tb.Fatal(err)
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: packets, Locality: loc, MissShare: 0.2, MalformedShare: 0.01, Seed: 3})
	if err != nil {
		tb.Fatal(err)
	}
	return cfg, tr
}

// slowed returns a copy of spec's program with a bounded loop of n
// iterations in front of its first instruction: the same NF, deliberately
// slower. The function's symbol and BTF function and line information
// move to the new first instruction, as the verifier requires.
func slowed(spec *ebpf.ProgramSpec, n int32) *ebpf.ProgramSpec {
	s := spec.Copy()
	first := s.Instructions[0]
	loop := asm.Instructions{
		asm.Mov.Imm(asm.R2, 0),
		asm.Add.Imm(asm.R2, 1).WithSymbol("bench_slow_loop"),
		asm.JLT.Imm(asm.R2, n, "bench_slow_loop"),
	}
	loop[0] = loop[0].WithMetadata(first.Metadata)
	rest := btf.WithFuncMetadata(first.WithSymbol(""), nil)
	s.Instructions = append(append(loop, rest), s.Instructions[1:]...)
	return s
}

// loadRouter loads the router for cfg; with slow > 0 its program is the
// slowed variant. The collection is closed at the end of the test.
func loadRouter(tb testing.TB, cfg *router.Config, slow int32) *ebpf.Program {
	tb.Helper()
	if slow == 0 {
		coll, err := router.Load(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { coll.Close() })
		return coll.Programs[router.Program]
	}
	spec, err := router.Spec()
	if err != nil {
		tb.Fatal(err)
	}
	st, err := cfg.State()
	if err != nil {
		tb.Fatal(err)
	}
	spec.Programs[router.Program] = slowed(spec.Programs[router.Program], slow)
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		tb.Fatalf("load slowed router: %v", err)
	}
	tb.Cleanup(func() { coll.Close() })
	if err := st.Apply(coll.Maps); err != nil {
		tb.Fatal(err)
	}
	return coll.Programs[router.Program]
}

// TestRouterReplay checks that the router really processes the replayed
// trace when the harness sets the ingress interface: its counters match
// what the trace holds.
func TestRouterReplay(t *testing.T) {
	kerneltest.Require(t)
	cfg, tr := routerSetup(t, traffic.LocalityHigh, 1024)
	coll, err := router.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	h, err := New(tr.Frames, Config{IngressIfindex: loIfindex})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const cycles = 3
	if _, err := h.Run(coll.Programs[router.Program], cycles*len(tr.Frames)); err != nil {
		t.Fatal(err)
	}
	var malformed uint64
	for _, bad := range tr.Malformed {
		if bad {
			malformed++
		}
	}
	c, err := router.ReadCounters(coll.Maps[router.MapCounters])
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(cycles * len(tr.Frames))
	if c[router.CounterRx].Packets != n {
		t.Errorf("router saw %d packets, want %d", c[router.CounterRx].Packets, n)
	}
	if got := c[router.CounterMalformed].Packets; got != cycles*malformed {
		t.Errorf("malformed %d, want %d", got, cycles*malformed)
	}
	if got := c[router.CounterForwarded].Packets + c[router.CounterTx].Packets; got != n-cycles*malformed {
		t.Errorf("forwarded+tx %d, want %d (counters %+v)", got, n-cycles*malformed, c)
	}
	if c[router.CounterSlowPath].Packets != 0 {
		t.Errorf("%d packets took the slow path: the ingress interface was not seen", c[router.CounterSlowPath].Packets)
	}
}

// TestRouterSlowedIsSlower measures the router against itself and a
// variant with 3,000 extra loop iterations per packet (over a microsecond,
// several times the router's own cost), side by side: the slowdown must
// show through the noise of a loaded 2-core machine, where a few hundred
// iterations (~100 ns) sometimes did not.
func TestRouterSlowedIsSlower(t *testing.T) {
	kerneltest.Require(t)
	cfg, tr := routerSetup(t, traffic.LocalityHigh, 4096)
	h, err := New(tr.Frames, Config{IngressIfindex: loIfindex})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	res, err := h.Measure(context.Background(), map[string]*ebpf.Program{
		"router":  loadRouter(t, cfg, 0),
		"router2": loadRouter(t, cfg, 0),
		"slowed":  loadRouter(t, cfg, 3000),
	}, Options{Rounds: 5, Repeat: 1 << 18, Warmup: 1 << 14})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res)
	if r := res.Ratio("slowed", "router"); !(r > 1.5) {
		t.Errorf("slowed/router = %.2f, want > 1.5", r)
	}
	if r := res.Ratio("router2", "router"); !(r > 0.6 && r < 1.6) {
		t.Errorf("router/router = %.2f, want about 1", r)
	}
}

// BenchmarkReplayRouter measures the router (2,592 routes) on traces of
// each locality: the router against a second copy of itself (the ratio
// shows the noise) and against a variant with 100 extra loop iterations.
// It reports the floor, the router's net ns/packet and both ratios.
//
//	go test -run '^$' -bench ReplayRouter -benchtime 1x ./bench
func BenchmarkReplayRouter(b *testing.B) {
	kerneltest.Require(b)
	for _, loc := range traffic.Localities {
		b.Run(fmt.Sprintf("locality=%s", loc), func(b *testing.B) {
			cfg, tr := routerSetup(b, loc, 8192)
			h, err := New(tr.Frames, Config{IngressIfindex: loIfindex})
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			progs := map[string]*ebpf.Program{
				"router":  loadRouter(b, cfg, 0),
				"router2": loadRouter(b, cfg, 0),
				"slowed":  loadRouter(b, cfg, 100),
			}
			var res *Result
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err = h.Measure(context.Background(), progs, Options{Rounds: 7, Repeat: 1 << 19, Warmup: 1 << 15})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			r, _ := res.Stat("router")
			b.ReportMetric(res.Floor.RawMedian, "floor-ns/pkt")
			b.ReportMetric(r.NsPerPacket, "router-ns/pkt")
			b.ReportMetric(res.Ratio("router2", "router"), "self-ratio")
			b.ReportMetric(res.Ratio("slowed", "router"), "slowed-ratio")
			b.Logf("\n%s", res)
		})
	}
}
