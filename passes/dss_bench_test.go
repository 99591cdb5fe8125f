package passes

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/program"
	"github.com/morpheus-go/morpheus/traffic"
)

// benchRouter is a router configuration with the heatmap of a
// high-locality trace, as optimize's BenchmarkOptimize builds it: n routes
// from traffic.RouterConfig, or, above the object's trie, n distinct /24s
// and a default route in an enlarged trie.
func benchRouter(b testing.TB, n int) (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	b.Helper()
	spec, err := router.Spec()
	if err != nil {
		b.Fatal(err)
	}
	var state *mapstate.State
	var set traffic.FlowSet
	if n+1 < router.MaxRoutes {
		cfg, err := traffic.RouterConfig(n, []uint32{1, 2, 3}, uint64(n))
		if err != nil {
			b.Fatal(err)
		}
		if state, err = cfg.State(); err != nil {
			b.Fatal(err)
		}
		if set, err = traffic.RouterFlows(cfg, 1, min(n, 256), 7); err != nil {
			b.Fatal(err)
		}
	} else {
		spec.Maps[router.MapRoutes].MaxEntries = uint32(n + 1)
		cfg, err := traffic.RouterConfig(8, []uint32{1, 2, 3}, 1)
		if err != nil {
			b.Fatal(err)
		}
		if state, err = cfg.State(); err != nil {
			b.Fatal(err)
		}
		if set, err = traffic.RouterFlows(cfg, 1, 8, 7); err != nil {
			b.Fatal(err)
		}
		delete(state.Maps, router.MapRoutes)
		key := func(bits uint32, a [4]byte) []byte {
			return append(binary.LittleEndian.AppendUint32(nil, bits), a[:]...)
		}
		value := func(nh uint32) []byte {
			return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, nh), 0)
		}
		state.Put(router.MapRoutes, key(0, [4]byte{}), value(8))
		hit := set.Hit[0]
		set.Hit = nil
		for i := range n {
			a := [4]byte{byte(1 + i>>16), byte(i >> 8), byte(i), 0}
			state.Put(router.MapRoutes, key(24, a), value(uint32(8+i%16)))
			if i%(n/256) == 0 {
				f := hit
				a[3] = byte(1 + i%250)
				f.DstIP = netip.AddrFrom4(a)
				set.Hit = append(set.Hit, f)
			}
		}
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: 3000, Locality: traffic.LocalityHigh, MalformedShare: 0.02, Seed: 12})
	if err != nil {
		b.Fatal(err)
	}
	counts := map[[4]byte]uint64{}
	for i, fi := range tr.PacketFlow {
		if !tr.Malformed[i] {
			counts[tr.Flows[fi].DstIP.As4()]++
		}
	}
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for a, c := range counts {
		heat.Maps[router.MapRoutes] = append(heat.Maps[router.MapRoutes], heatmap.Key{Key: append(binary.LittleEndian.AppendUint32(nil, 32), a[:]...), Count: c})
	}
	return spec, state, heat
}

// cpuTime is the process's CPU time so far (user and system, all
// threads): on a loaded machine wall time also counts waiting.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRouterPasses runs the default pass pipeline (lift, passes,
// lower; no kernel) on the router at the sizes the optimizer's time target
// covers, and reports the time of each pass:
//
//	go test ./passes -run XXX -bench RouterPasses -benchtime 10x
func BenchmarkRouterPasses(b *testing.B) {
	for _, n := range []int{8, 500, traffic.EvalRouterRoutes, 100_000} {
		b.Run(fmt.Sprintf("%d-routes", n), func(b *testing.B) {
			spec, state, heat := benchRouter(b, n)
			coll := spec.Copy()
			if err := state.ApplySpec(coll); err != nil {
				b.Fatal(err)
			}
			per := map[string]time.Duration{}
			var lift, lower time.Duration
			cpu0 := cpuTime(b)
			for b.Loop() {
				t0 := time.Now()
				p, err := program.Lift(coll.Programs[router.Program])
				if err != nil {
					b.Fatal(err)
				}
				lift += time.Since(t0)
				c := &Context{Coll: coll.Copy(), Prog: p, State: state, Heat: heat, Guards: guard.NewTable(), Opts: DefaultOptions()}
				if err := Run(c); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := c.Prog.Lower(); err != nil {
					b.Fatal(err)
				}
				lower += time.Since(t1)
				for _, r := range c.Results {
					per[r.Name] += r.Duration
				}
			}
			ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) / 1e6 }
			b.ReportMetric(ms(b.Elapsed()), "ms/program")
			b.ReportMetric(ms(cpuTime(b)-cpu0), "cpu-ms/program")
			b.ReportMetric(ms(lift+lower), "lift+lower-ms")
			for name, d := range per {
				b.ReportMetric(ms(d), name+"-ms")
			}
		})
	}
}

// BenchmarkAnalyzeRouter measures one analysis of the router as the
// passes leave it (8 routes: inlined, tail-duplicated and folded; 2,592:
// DIR tables), the unit of work the passes repeat after every change:
//
//	go test ./passes -run XXX -bench AnalyzeRouter -count 5
func BenchmarkAnalyzeRouter(b *testing.B) {
	for _, n := range []int{8, traffic.EvalRouterRoutes} {
		b.Run(fmt.Sprintf("%d-routes", n), func(b *testing.B) {
			spec, state, heat := benchRouter(b, n)
			coll := spec.Copy()
			if err := state.ApplySpec(coll); err != nil {
				b.Fatal(err)
			}
			p, err := program.Lift(coll.Programs[router.Program])
			if err != nil {
				b.Fatal(err)
			}
			c := &Context{Coll: coll, Prog: p, State: state, Heat: heat, Guards: guard.NewTable(), Opts: DefaultOptions()}
			if err := Run(c); err != nil {
				b.Fatal(err)
			}
			cpu0 := cpuTime(b)
			for b.Loop() {
				if _, err := analysis.Analyze(c.Coll, c.Prog, analysis.Options{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N)/1e6, "cpu-ms/op")
		})
	}
}
