package agent

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// benchNF is a sample NF at the seed evaluation's size: its spec, map
// state, flows, the lookup keys of a flow (for the heatmap) and the map
// a control-plane change writes.
type benchNF struct {
	name   string
	spec   func() (*ebpf.CollectionSpec, error)
	main   string // entry program
	setup  func() (*mapstate.State, traffic.FlowSet, error)
	keys   func(traffic.Flow) map[string][]byte
	change string
}

func lpmHost(a netip.Addr) []byte {
	b := a.As4()
	return append(binary.LittleEndian.AppendUint32(nil, 32), b[:]...)
}

func benchNFs() []benchNF {
	lo := uint32(kerneltest.LoIfindex)
	return []benchNF{
		{"router", router.Spec, router.Program, func() (*mapstate.State, traffic.FlowSet, error) {
			cfg, err := traffic.RouterConfig(2592, []uint32{lo, 2, 3}, 2592)
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			st, err := cfg.State()
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			set, err := traffic.RouterFlows(cfg, lo, 256, 7)
			return st, set, err
		}, func(f traffic.Flow) map[string][]byte {
			return map[string][]byte{router.MapRoutes: lpmHost(f.DstIP)}
		}, router.MapRoutes},
		{"firewall", firewall.Spec, firewall.Program, func() (*mapstate.State, traffic.FlowSet, error) {
			cfg, err := traffic.FirewallConfig(450, true, 3)
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			st, err := cfg.State()
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			set, err := traffic.FirewallFlows(cfg, 200, 4)
			return st, set, err
		}, func(f traffic.Flow) map[string][]byte {
			return map[string][]byte{"src_lpm": lpmHost(f.SrcIP), "dst_lpm": lpmHost(f.DstIP)}
		}, "src_lpm"},
		{"lb", lb.Spec, lb.Program, func() (*mapstate.State, traffic.FlowSet, error) {
			cfg, err := traffic.LBConfig(10, 100, 5)
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			st, err := cfg.State()
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			set, err := traffic.LBFlows(cfg, 200, 6)
			return st, set, err
		}, func(f traffic.Flow) map[string][]byte {
			a := f.DstIP.As4()
			k := binary.BigEndian.AppendUint16(a[:], f.DstPort)
			return map[string][]byte{"vips": append(k, f.Proto, 0)}
		}, "vips"},
		{"l2switch", l2switch.Spec, l2switch.Program, func() (*mapstate.State, traffic.FlowSet, error) {
			cfg, err := traffic.L2SwitchConfig([]uint32{lo, 2, 3, 4}, 4, 0, 8)
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			st, err := cfg.State()
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			set, err := traffic.L2SwitchFlows(cfg, lo, 200, 9)
			return st, set, err
		}, func(f traffic.Flow) map[string][]byte {
			k := append([]byte(nil), f.DstMAC...)
			return map[string][]byte{"fdb": binary.LittleEndian.AppendUint16(k, f.VLAN)}
		}, "fdb"},
		{"ddos", ddos.Spec, ddos.Program, func() (*mapstate.State, traffic.FlowSet, error) {
			cfg, err := traffic.DDoSConfig(0, 64, 1000, 10)
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			st, err := cfg.State()
			if err != nil {
				return nil, traffic.FlowSet{}, err
			}
			set, err := traffic.DDoSFlows(cfg, 200, 11)
			return st, set, err
		}, func(f traffic.Flow) map[string][]byte {
			a := f.SrcIP.As4()
			return map[string][]byte{"blocklist": a[:], "blocklist_lpm": lpmHost(f.SrcIP)}
		}, "blocklist"},
	}
}

// BenchmarkAgentCycle measures whole agent cycles, snapshot to swap, of
// every sample NF at the seed evaluation's sizes (router 2,592 routes,
// firewall 450 rules, load balancer 10 VIPs of 100 reals, switch, DDoS
// filter) with hot keys from a high-locality trace and the agent's
// default options. Each iteration rewrites one entry of the NF's main
// table through the agent (a guard bump, as a control-plane change) and
// runs a cycle, so every program gets a new candidate checked in full:
// ms/cycle is the whole cycle (all programs), ms/program per program;
// snapshot and swap are the agent's own parts.
//
//	go test ./agent -run XXX -bench AgentCycle -benchtime 5x
func BenchmarkAgentCycle(b *testing.B) {
	kerneltest.Require(b)
	for _, c := range benchNFs() {
		b.Run(c.name, func(b *testing.B) { benchAgentCycle(b, c) })
	}
}

func benchAgentCycle(b *testing.B, c benchNF) {
	ctx := context.Background()
	spec, err := c.spec()
	if err != nil {
		b.Fatal(err)
	}
	st, set, err := c.setup()
	if err != nil {
		b.Fatal(err)
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: 3000, Locality: traffic.LocalityHigh, Seed: 12})
	if err != nil {
		b.Fatal(err)
	}
	counts := map[string]map[string]uint64{}
	for i, fi := range tr.PacketFlow {
		if tr.Malformed[i] {
			continue
		}
		for m, k := range c.keys(tr.Flows[fi]) {
			if counts[m] == nil {
				counts[m] = map[string]uint64{}
			}
			counts[m][string(k)]++
		}
	}
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for m, ks := range counts {
		for k, n := range ks {
			heat.Maps[m] = append(heat.Maps[m], heatmap.Key{Key: []byte(k), Count: n})
		}
	}
	atts := tailCallAttachments(spec, c.main)
	nf, err := Load(ctx, spec, st, atts, Options{Name: c.name, Profiler: StaticProfiler{Heat: heat}, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer nf.Close()
	if _, err := nf.Cycle(ctx); err != nil {
		b.Fatal(err)
	}
	m, err := nf.Map(c.change)
	if err != nil {
		b.Fatal(err)
	}
	e := st.Maps[c.change].Entries[0]
	var total, snap, swap, cpu time.Duration
	progs, swaps := 0, 0
	for b.Loop() {
		b.StopTimer()
		if err := m.Update(e.Key, e.Value, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		cpu0 := processCPU(b)
		cs, err := nf.Cycle(ctx)
		cpu += processCPU(b) - cpu0
		if err != nil {
			b.Fatal(err)
		}
		total += cs.Duration
		snap += cs.SnapshotTime
		for _, pc := range cs.Programs {
			if pc.Outcome == OutcomeError || pc.Outcome == OutcomeRaced {
				b.Fatalf("%s: %s: %s", pc.Program, pc.Outcome, pc.Reason)
			}
			progs++
			swap += pc.SwapTime
			if pc.Outcome == OutcomeSwapped {
				swaps++
			}
		}
	}
	n := float64(b.N)
	ms := func(d time.Duration, per float64) float64 { return float64(d.Nanoseconds()) / per / 1e6 }
	b.ReportMetric(ms(total, n), "ms/cycle")
	b.ReportMetric(ms(total, float64(progs)), "ms/program")
	// The process's CPU time (all threads) during the cycles: what the
	// cycle costs on a machine whose other load stretches wall time.
	b.ReportMetric(ms(cpu, float64(progs)), "cpu-ms/program")
	b.ReportMetric(ms(snap, n), "snapshot-ms")
	b.ReportMetric(ms(swap, n), "swap-ms")
	b.ReportMetric(float64(swaps)/n, "swaps/cycle")
}

// processCPU is the user and system CPU time of the process so far.
func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
