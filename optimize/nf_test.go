package optimize

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
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
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/traffic"
)

// xdpContext is kerneltest.XDPContext under the name the cycle benchmarks
// use.
var xdpContext = kerneltest.XDPContext

// nfCase is one NF with one configuration.
type nfCase struct {
	name  string
	spec  func() (*ebpf.CollectionSpec, error)
	setup func(t testing.TB, spec *ebpf.CollectionSpec) (*mapstate.State, traffic.FlowSet)
	// keys maps a trace flow to the keys it looks up, per map: the
	// heatmap is the count of these keys over the trace.
	keys    func(f traffic.Flow) map[string][]byte
	ingress uint32
	// malformed is the share of broken frames in the trace.
	malformed float64
	// wantRewrite names a map some pass must rewrite a lookup of.
	wantRewrite string
}

// lpmHostKey is the key of a host lookup in the NFs' LPM tries: prefix
// length 32 and the address in network order.
func lpmHostKey(a netip.Addr) []byte {
	b := a.As4()
	return append(binary.LittleEndian.AppendUint32(nil, 32), b[:]...)
}

func must[T any](t testing.TB) func(v T, err error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// routerCase is the router with n routes from traffic.RouterConfig.
func routerCase(n int) nfCase {
	return nfCase{
		name: fmt.Sprintf("router/%d-routes", n),
		spec: router.Spec,
		setup: func(t testing.TB, _ *ebpf.CollectionSpec) (*mapstate.State, traffic.FlowSet) {
			cfg := must[*router.Config](t)(traffic.RouterConfig(n, []uint32{kerneltest.LoIfindex, 2, 3}, uint64(n)))
			state := must[*mapstate.State](t)(cfg.State())
			set := must[traffic.FlowSet](t)(traffic.RouterFlows(cfg, kerneltest.LoIfindex, min(n, 256), 7))
			return state, set
		},
		keys: func(f traffic.Flow) map[string][]byte {
			return map[string][]byte{router.MapRoutes: lpmHostKey(f.DstIP)}
		},
		ingress:     kerneltest.LoIfindex,
		malformed:   0.02,
		wantRewrite: router.MapRoutes,
	}
}

// bigRouterCase is a router with more routes than the object's trie
// holds (router.MaxRoutes): the trie is enlarged in the spec, which is
// what an operator rebuilding the NF for a full table would do, and the
// routes are written straight into the map state.
func bigRouterCase(n int) nfCase {
	return nfCase{
		name: fmt.Sprintf("router/%d-routes", n),
		spec: func() (*ebpf.CollectionSpec, error) {
			spec, err := router.Spec()
			if err != nil {
				return nil, err
			}
			spec.Maps[router.MapRoutes].MaxEntries = uint32(n + 1)
			return spec, nil
		},
		setup: func(t testing.TB, _ *ebpf.CollectionSpec) (*mapstate.State, traffic.FlowSet) {
			cfg := must[*router.Config](t)(traffic.RouterConfig(8, []uint32{kerneltest.LoIfindex, 2, 3}, 1))
			state := must[*mapstate.State](t)(cfg.State())
			delete(state.Maps, router.MapRoutes)
			// Distinct /24s below 100.0.0.0 plus a default route; every
			// route forwards to a next hop on interface 2 or 3.
			var set traffic.FlowSet
			in := cfg.Interfaces[0]
			dmac := must[net.HardwareAddr](t)(net.ParseMAC(in.MAC))
			state.Put(router.MapRoutes, lpmKey(0, netip.IPv4Unspecified()), routeValue(8))
			for i := range n {
				a := netip.AddrFrom4([4]byte{byte(1 + i>>16), byte(i >> 8), byte(i), 0})
				state.Put(router.MapRoutes, lpmKey(24, a), routeValue(uint32(8+i%16)))
				if i%(n/256) == 0 {
					dst := a.As4()
					dst[3] = byte(1 + i%250)
					set.Hit = append(set.Hit, traffic.Flow{
						SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, DstMAC: dmac,
						SrcIP: netip.MustParseAddr("198.18.0.1"), DstIP: netip.AddrFrom4(dst),
						Proto: traffic.ProtoUDP, SrcPort: uint16(1024 + i%1000), DstPort: 53,
					})
				}
			}
			return state, set
		},
		keys: func(f traffic.Flow) map[string][]byte {
			return map[string][]byte{router.MapRoutes: lpmHostKey(f.DstIP)}
		},
		ingress:     kerneltest.LoIfindex,
		wantRewrite: router.MapRoutes,
	}
}

func lpmKey(bits uint32, a netip.Addr) []byte {
	b := a.As4()
	return append(binary.LittleEndian.AppendUint32(nil, bits), b[:]...)
}

func routeValue(nexthop uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, nexthop), 0)
}

func firewallCase(name string, rules, flows int, stateful bool, edit func(*firewall.Config)) nfCase {
	return nfCase{
		name: "firewall/" + name,
		spec: firewall.Spec,
		setup: func(t testing.TB, _ *ebpf.CollectionSpec) (*mapstate.State, traffic.FlowSet) {
			cfg := must[*firewall.Config](t)(traffic.FirewallConfig(rules, stateful, 3))
			if edit != nil {
				edit(cfg)
			}
			state := must[*mapstate.State](t)(cfg.State())
			set := must[traffic.FlowSet](t)(traffic.FirewallFlows(cfg, flows, 4))
			return state, set
		},
		keys: func(f traffic.Flow) map[string][]byte {
			return map[string][]byte{"src_lpm": lpmHostKey(f.SrcIP), "dst_lpm": lpmHostKey(f.DstIP)}
		},
		malformed: 0.02,
	}
}

func lbCase(vips int) nfCase {
	return nfCase{
		name: fmt.Sprintf("lb/%d-vips", vips),
		spec: lb.Spec,
		setup: func(t testing.TB, _ *ebpf.CollectionSpec) (*mapstate.State, traffic.FlowSet) {
			cfg := must[*lb.Config](t)(traffic.LBConfig(vips, 16, 5))
			state := must[*mapstate.State](t)(cfg.State())
			set := must[traffic.FlowSet](t)(traffic.LBFlows(cfg, 200, 6))
			return state, set
		},
		keys: func(f traffic.Flow) map[string][]byte {
			a := f.DstIP.As4()
			k := binary.BigEndian.AppendUint16(a[:], f.DstPort)
			return map[string][]byte{"vips": append(k, f.Proto, 0)}
		},
		malformed:   0.02,
		wantRewrite: "vips",
	}
}

func l2switchCase() nfCase {
	return nfCase{
		name: "l2switch/eval",
		spec: l2switch.Spec,
		setup: func(t testing.TB, _ *ebpf.CollectionSpec) (*mapstate.State, traffic.FlowSet) {
			cfg := must[*l2switch.Config](t)(traffic.L2SwitchConfig([]uint32{kerneltest.LoIfindex, 2, 3, 4}, 4, 0, 8))
			state := must[*mapstate.State](t)(cfg.State())
			set := must[traffic.FlowSet](t)(traffic.L2SwitchFlows(cfg, kerneltest.LoIfindex, 200, 9))
			return state, set
		},
		keys: func(f traffic.Flow) map[string][]byte {
			k := append([]byte(nil), f.DstMAC...)
			return map[string][]byte{"fdb": binary.LittleEndian.AppendUint16(k, f.VLAN)}
		},
		ingress: kerneltest.LoIfindex,
	}
}

func ddosCase() nfCase {
	return nfCase{
		name: "ddos/eval",
		spec: ddos.Spec,
		setup: func(t testing.TB, _ *ebpf.CollectionSpec) (*mapstate.State, traffic.FlowSet) {
			cfg := must[*ddos.Config](t)(traffic.DDoSConfig(0, 64, 1000, 10))
			state := must[*mapstate.State](t)(cfg.State())
			set := must[traffic.FlowSet](t)(traffic.DDoSFlows(cfg, 200, 11))
			return state, set
		},
		keys: func(f traffic.Flow) map[string][]byte {
			a := f.SrcIP.As4()
			return map[string][]byte{"blocklist": a[:], "blocklist_lpm": lpmHostKey(f.SrcIP)}
		},
		malformed: 0.02,
	}
}

// heatFromTrace counts the keys the trace's packets look up. It stands in
// for the heatmaps of the instrumented program (package instrument, built
// separately): the optimizer only sees the result, a count per key.
func heatFromTrace(tr *traffic.Trace, keys func(traffic.Flow) map[string][]byte) *heatmap.Heatmap {
	counts := map[string]map[string]uint64{}
	for i, fi := range tr.PacketFlow {
		if tr.Malformed[i] {
			continue
		}
		for m, k := range keys(tr.Flows[fi]) {
			if counts[m] == nil {
				counts[m] = map[string]uint64{}
			}
			counts[m][string(k)]++
		}
	}
	h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for m, ks := range counts {
		for k, n := range ks {
			h.Maps[m] = append(h.Maps[m], heatmap.Key{Key: []byte(k), Count: n})
		}
	}
	return h
}

// TestNFMatrix optimizes every sample NF under several configurations with
// a heatmap from a generated trace and checks the candidate on the trace,
// generated packets and edge cases. MORPHEUS_BIG_ROUTER=N sets the size of
// the largest router table (default 100,000; -short uses 20,000).
func TestNFMatrix(t *testing.T) {
	kerneltest.Require(t)
	big := 100_000
	if testing.Short() {
		big = 20_000
	}
	if s := os.Getenv("MORPHEUS_BIG_ROUTER"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("MORPHEUS_BIG_ROUTER=%q: %v", s, err)
		}
		big = n
	}
	cases := nfCases(big)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := must[*ebpf.CollectionSpec](t)(c.spec())
			setupStart := time.Now()
			state, set := c.setup(t, spec)
			tr := must[*traffic.Trace](t)(traffic.Generate(set, traffic.Options{
				Packets: 3000, Locality: traffic.LocalityHigh, MalformedShare: c.malformed, Seed: 12,
			}))
			heat := heatFromTrace(tr, c.keys)
			opts := Options{Passes: passes.DefaultOptions(), Packets: tr.Frames, Generated: 1000, Seed: 13}
			if c.ingress != 0 {
				opts.Context = kerneltest.XDPContext(c.ingress)
			}
			setup := time.Since(setupStart)
			start := time.Now()
			rep, err := Run(context.Background(), spec, state, heat, opts)
			if err != nil {
				t.Fatal(err)
			}
			total := time.Since(start)
			rewrote := map[string]bool{}
			for _, p := range rep.Programs {
				for _, r := range p.Remarks {
					if r.Applied {
						rewrote[r.Map] = true
					}
				}
				diff := "-"
				if d := p.Differential; d != nil {
					diff = fmt.Sprintf("%d packets, %d runs, %d mismatches, maps %s", d.Packets, d.Runs, d.MismatchCount, d.MapCheck)
				}
				t.Logf("%s: %d -> %d insns, optimize %v, verifier %v, differential %v (%s), accepted %v %s",
					p.Program, p.InstructionsBefore, p.InstructionsAfter, p.OptimizeTime.Round(time.Microsecond),
					p.VerifyTime.Round(time.Millisecond), p.DifferentialNS.Round(time.Millisecond), diff, p.Accepted, p.Reason)
				if p.Differential != nil && p.Differential.MismatchCount > 0 {
					t.Errorf("%s: differential test found mismatches:\n%s", p.Program, p.Differential)
				}
				if !p.Accepted && p.Reason != "" && p.Differential != nil {
					t.Errorf("%s: candidate rejected: %s", p.Program, p.Reason)
				}
				if p.Verifier != "" && p.Verifier != "ok" {
					t.Errorf("%s: verifier: %s", p.Program, p.Verifier)
				}
			}
			if c.wantRewrite != "" && !rewrote[c.wantRewrite] {
				t.Errorf("no pass rewrote a lookup of %s", c.wantRewrite)
			}
			t.Logf("setup %v, run %v, %d trace packets", setup.Round(time.Millisecond), total.Round(time.Millisecond), len(tr.Frames))
		})
	}
}

// nfCases is the configuration matrix; big is the size of the largest
// router table.
func nfCases(big int) []nfCase {
	return []nfCase{
		routerCase(1),
		routerCase(8),
		routerCase(500),
		bigRouterCase(big),
		firewallCase("stateless-all-tables", 0, 200, false, nil),
		firewallCase("stateful-all-tables", 0, 200, true, nil),
		firewallCase("rules-only", 64, 16, false, func(c *firewall.Config) {
			c.SourcePrefixes, c.DestinationPrefixes = nil, nil
		}),
		firewallCase("prefixes-only", 64, 32, false, func(c *firewall.Config) { c.Rules = nil }),
		lbCase(1),
		lbCase(64),
		l2switchCase(),
		ddosCase(),
	}
}

// BenchmarkOptimize measures one optimization cycle of every NF
// configuration without the kernel: lift, analysis, passes and lower
// (Options.NoVerify). The target is below 50 ms per program.
//
//	go test ./optimize -run XXX -bench Optimize -benchtime 20x
func BenchmarkOptimize(b *testing.B) {
	for _, c := range nfCases(100_000) {
		b.Run(c.name, func(b *testing.B) {
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
			opts := Options{Passes: passes.DefaultOptions(), NoVerify: true}
			var progs int
			var insns int
			cpu0 := cpuTime(b)
			for b.Loop() {
				rep, err := Run(context.Background(), spec, state, heat, opts)
				if err != nil {
					b.Fatal(err)
				}
				progs, insns = len(rep.Programs), 0
				for _, p := range rep.Programs {
					insns += p.InstructionsAfter
				}
			}
			// CPU time (user and system, all threads: GC included) is the
			// cost on a loaded machine, where wall time counts waiting.
			b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N)/float64(progs)/1e6, "cpu-ms/program")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(progs)/1e6, "ms/program")
			b.ReportMetric(float64(insns), "insns")
		})
	}
}

// cpuTime is the process's CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
