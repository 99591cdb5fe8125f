//go:build linux

package traffic

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
)

// XDP verdicts.
const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

// loIfindex is the loopback interface, which exists in every network
// namespace: BPF_PROG_TEST_RUN resolves ingress_ifindex, so the NFs'
// ingress port is configured on it.
const loIfindex = 1

type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

type runResult struct {
	verdict uint32
	out     []byte
}

// runTrace runs every frame of tr through prog once, arriving on ingress.
func runTrace(t *testing.T, prog *ebpf.Program, frames [][]byte, ingress uint32) []runResult {
	t.Helper()
	res := make([]runResult, len(frames))
	for i, f := range frames {
		out := make([]byte, len(f)+256)
		opts := ebpf.RunOptions{Data: f, DataOut: out, Context: xdpMD{DataEnd: uint32(len(f)), IngressIfindex: ingress}}
		v, err := prog.Run(&opts)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		res[i] = runResult{v, opts.DataOut}
	}
	return res
}

func verdictMix(res []runResult) map[uint32]int {
	m := map[uint32]int{}
	for _, r := range res {
		m[r.verdict]++
	}
	return m
}

// perCPUCounter sums the first u64 (packets) of entry idx of a per-CPU
// array whose values start with a packet count.
func perCPUCounter(t *testing.T, m *ebpf.Map, idx uint32) uint64 {
	t.Helper()
	var vals [][]byte
	if err := m.Lookup(idx, &vals); err != nil {
		t.Fatalf("read %s[%d]: %v", m, idx, err)
	}
	var sum uint64
	for _, v := range vals {
		sum += binary.LittleEndian.Uint64(v)
	}
	return sum
}

const (
	testPackets = 1000
	testFlows   = 300
)

var testOpts = Options{Packets: testPackets, Locality: LocalityHigh, MissShare: 0.2, MalformedShare: 0.05, Seed: 11}

func TestRouterTrace(t *testing.T) {
	kerneltest.Require(t)
	cfg, err := RouterConfig(0, []uint32{loIfindex, 2}, 1)
	if err != nil {
		t.Fatal(err)
	}
	set, err := RouterFlows(cfg, loIfindex, testFlows, 2)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Generate(set, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := router.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	res := runTrace(t, coll.Programs[router.Program], tr.Frames, loIfindex)

	routes := prefixSet{}
	for i, r := range cfg.Routes {
		routes[netip.MustParsePrefix(r.Prefix)] = i
	}
	nh := map[string]router.NextHop{}
	for _, h := range cfg.NextHops {
		nh[h.Name] = h
	}
	var malformed, forwarded uint64
	for i, r := range res {
		f := tr.Flows[tr.PacketFlow[i]]
		if tr.Malformed[i] {
			malformed++
			if r.verdict != xdpDrop {
				t.Fatalf("malformed packet %d: verdict %d, want drop", i, r.verdict)
			}
			continue
		}
		p, ri, ok := routes.longest(f.DstIP)
		if !ok {
			t.Fatalf("packet %d: %s has no route, the default route is missing", i, f.DstIP)
		}
		if hit := tr.PacketFlow[i] < tr.Hits; hit != (p.Bits() > 0) {
			t.Fatalf("packet %d (hit=%v): %s matches %s", i, hit, f.DstIP, p)
		}
		h := nh[cfg.Routes[ri].Via]
		want := uint32(xdpRedirect)
		if h.Ifindex == loIfindex {
			want = xdpTX
		}
		if r.verdict != want {
			t.Fatalf("packet %d to %s via %s: verdict %d, want %d", i, f.DstIP, p, r.verdict, want)
		}
		if got := fmt.Sprintf("%x", r.out[:6]); got != strings.ReplaceAll(h.MAC, ":", "") {
			t.Fatalf("packet %d: destination MAC %s, want next hop %s", i, got, h.MAC)
		}
		forwarded++
	}
	c, err := router.ReadCounters(coll.Maps[router.MapCounters])
	if err != nil {
		t.Fatal(err)
	}
	if c[router.CounterMalformed].Packets != malformed || c[router.CounterForwarded].Packets+c[router.CounterTx].Packets != forwarded {
		t.Errorf("counters malformed=%d forwarded+tx=%d, want %d and %d", c[router.CounterMalformed].Packets,
			c[router.CounterForwarded].Packets+c[router.CounterTx].Packets, malformed, forwarded)
	}
	t.Logf("verdicts %v, malformed %d", verdictMix(res), malformed)
}

func TestLBTrace(t *testing.T) {
	kerneltest.Require(t)
	cfg, err := LBConfig(0, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	set, err := LBFlows(cfg, testFlows, 2)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Generate(set, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := lb.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	res := runTrace(t, coll.Programs[lb.Program], tr.Frames, 0)
	backends := map[netip.Addr]map[netip.Addr]bool{}
	for _, v := range cfg.VIPs {
		m := map[netip.Addr]bool{}
		for _, b := range v.Backends {
			m[netip.MustParseAddr(b.Address)] = true
		}
		backends[netip.MustParseAddr(v.Address)] = m
	}
	var hits uint64
	for i, r := range res {
		f := tr.Flows[tr.PacketFlow[i]]
		switch {
		case tr.Malformed[i]:
			if r.verdict != xdpDrop {
				t.Fatalf("malformed packet %d: verdict %d, want drop", i, r.verdict)
			}
		case tr.PacketFlow[i] < tr.Hits:
			hits++
			if r.verdict != xdpTX {
				t.Fatalf("packet %d to VIP %s: verdict %d, want tx", i, f, r.verdict)
			}
			outer := netip.AddrFrom4([4]byte(r.out[14+16 : 14+20]))
			if !backends[f.DstIP][outer] {
				t.Fatalf("packet %d to VIP %s encapsulated to %s, not one of its backends", i, f.DstIP, outer)
			}
		default:
			if r.verdict != xdpPass {
				t.Fatalf("miss packet %d (%s): verdict %d, want pass", i, f, r.verdict)
			}
		}
	}
	if got := perCPUCounter(t, coll.Maps["stats"], lb.StatTX); got != hits {
		t.Errorf("stats tx %d, want %d", got, hits)
	}
	t.Logf("verdicts %v", verdictMix(res))
}

func TestFirewallTrace(t *testing.T) {
	kerneltest.Require(t)
	cfg, err := FirewallConfig(0, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	set, err := FirewallFlows(cfg, testFlows, 2)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Generate(set, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := firewall.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	res := runTrace(t, coll.Programs[firewall.Program], tr.Frames, 0)

	// The firewall's decision, computed in Go.
	type tuple struct {
		s, d   netip.Addr
		sp, dp uint16
		p      uint8
	}
	rules := map[tuple]string{}
	for _, r := range cfg.Rules {
		p, _ := firewallProto(r.Protocol)
		rules[tuple{netip.MustParseAddr(r.Source), netip.MustParseAddr(r.Destination), r.SourcePort, r.DestinationPort, p}] = r.Action
	}
	src, dst := prefixSet{}, prefixSet{}
	for i, r := range cfg.SourcePrefixes {
		src[netip.MustParsePrefix(r.Prefix)] = i
	}
	for i, r := range cfg.DestinationPrefixes {
		dst[netip.MustParsePrefix(r.Prefix)] = i
	}
	decide := func(f Flow) (string, int) {
		if a, ok := rules[tuple{f.SrcIP, f.DstIP, f.SrcPort, f.DstPort, f.Proto}]; ok {
			return a, 0
		}
		if _, i, ok := src.longest(f.SrcIP); ok {
			return cfg.SourcePrefixes[i].Action, 1
		}
		if _, i, ok := dst.longest(f.DstIP); ok {
			return cfg.DestinationPrefixes[i].Action, 2
		}
		return cfg.DefaultPolicy, 3
	}
	var byTable [4]int
	for i, r := range res {
		f := tr.Flows[tr.PacketFlow[i]]
		if tr.Malformed[i] {
			if r.verdict != xdpDrop {
				t.Fatalf("malformed packet %d: verdict %d, want drop", i, r.verdict)
			}
			continue
		}
		action, table := decide(f)
		byTable[table]++
		if hit := tr.PacketFlow[i] < tr.Hits; hit == (table == 3) {
			t.Fatalf("packet %d (%s, hit=%v) decided by table %d", i, f, hit, table)
		}
		want := map[string]uint32{"allow": xdpPass, "deny": xdpDrop}[action]
		if r.verdict != want {
			t.Fatalf("packet %d (%s): verdict %d, want %d (%s by table %d)", i, f, r.verdict, want, action, table)
		}
	}
	for table, n := range byTable {
		if n == 0 {
			t.Errorf("no packet decided by table %d (rules, src, dst, default)", table)
		}
	}
	t.Logf("verdicts %v, decided by rules/src/dst/default: %v", verdictMix(res), byTable)
}

func TestDDoSTrace(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		name  string
		limit uint64
	}{{"blocklist", 0}, {"rate_limited", 20}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := DDoSConfig(0, 200, tc.limit, 1)
			if err != nil {
				t.Fatal(err)
			}
			set, err := DDoSFlows(cfg, testFlows, 2)
			if err != nil {
				t.Fatal(err)
			}
			opts := testOpts
			opts.MissShare = 0.5
			tr, err := Generate(set, opts)
			if err != nil {
				t.Fatal(err)
			}
			coll, err := ddos.Load(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer coll.Close()
			res := runTrace(t, coll.Programs[ddos.Program], tr.Frames, 0)
			missCount := map[int]int{}
			for i, r := range res {
				switch {
				case tr.Malformed[i] || tr.PacketFlow[i] < tr.Hits:
					if r.verdict != xdpDrop {
						t.Fatalf("packet %d (malformed=%v, blocked source): verdict %d, want drop", i, tr.Malformed[i], r.verdict)
					}
				case tc.limit == 0:
					if r.verdict != xdpPass {
						t.Fatalf("packet %d from an unblocked source: verdict %d, want pass", i, r.verdict)
					}
				default:
					// A source passes until it exceeds its limit (the whole
					// test runs within one window, on one CPU or two).
					missCount[tr.PacketFlow[i]]++
					if missCount[tr.PacketFlow[i]] <= int(tc.limit) && r.verdict != xdpPass {
						t.Fatalf("packet %d: source's packet %d dropped under a limit of %d", i, missCount[tr.PacketFlow[i]], tc.limit)
					}
				}
			}
			stats := coll.Maps["stats"]
			blocked := perCPUCounter(t, stats, ddos.StatDropBlocked) + perCPUCounter(t, stats, ddos.StatDropPrefix)
			if blocked == 0 || perCPUCounter(t, stats, ddos.StatDropBlocked) == 0 || perCPUCounter(t, stats, ddos.StatDropPrefix) == 0 {
				t.Errorf("blocked by address %d, by prefix %d: want both", perCPUCounter(t, stats, ddos.StatDropBlocked), perCPUCounter(t, stats, ddos.StatDropPrefix))
			}
			rate := perCPUCounter(t, stats, ddos.StatDropRate)
			if (tc.limit != 0) != (rate > 0) {
				t.Errorf("limit %d: %d packets dropped by the rate limit", tc.limit, rate)
			}
			t.Logf("verdicts %v, rate drops %d", verdictMix(res), rate)
		})
	}
}

func TestL2SwitchTrace(t *testing.T) {
	kerneltest.Require(t)
	cfg, err := L2SwitchConfig([]uint32{loIfindex, 2, 3, 4, 5}, 4, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	set, err := L2SwitchFlows(cfg, loIfindex, testFlows, 2)
	if err != nil {
		t.Fatal(err)
	}
	opts := testOpts
	opts.MalformedShare = 0 // a switch forwards frames whatever their IP header
	tr, err := Generate(set, opts)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := l2switch.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	res := runTrace(t, coll.Programs[l2switch.Program], tr.Frames, loIfindex)
	tagged := 0
	for i, r := range res {
		f := tr.Flows[tr.PacketFlow[i]]
		if f.VLAN != 0 {
			tagged++
		}
		want := uint32(xdpPass)
		if tr.PacketFlow[i] < tr.Hits {
			want = xdpRedirect
		}
		if r.verdict != want {
			t.Fatalf("packet %d (%s to %s): verdict %d, want %d", i, f, f.DstMAC, r.verdict, want)
		}
	}
	if tagged == 0 || tagged == len(res) {
		t.Errorf("%d of %d frames tagged: want a mix of the PVID and tagged VLANs", tagged, len(res))
	}
	t.Logf("verdicts %v, tagged %d", verdictMix(res), tagged)
}

func TestConfigGenerators(t *testing.T) {
	type gen struct {
		name  string
		make  func(seed uint64) (any, error)
		count func(any) int
		want  int
	}
	for _, g := range []gen{
		{"router", func(s uint64) (any, error) { return RouterConfig(0, []uint32{1, 2}, s) },
			func(c any) int { return len(c.(*router.Config).Routes) }, EvalRouterRoutes + 1},
		{"firewall", func(s uint64) (any, error) { return FirewallConfig(0, true, s) },
			func(c any) int {
				f := c.(*firewall.Config)
				return len(f.Rules) + len(f.SourcePrefixes) + len(f.DestinationPrefixes)
			}, EvalFirewallRules},
		{"lb", func(s uint64) (any, error) { return LBConfig(0, 0, s) },
			func(c any) int {
				n := 0
				for _, v := range c.(*lb.Config).VIPs {
					n += len(v.Backends)
				}
				return n
			}, EvalLBVIPs * EvalLBBackends},
		{"l2switch", func(s uint64) (any, error) { return L2SwitchConfig([]uint32{1, 2, 3, 4}, 3, 0, s) },
			func(c any) int { return len(c.(*l2switch.Config).StaticFDB) }, EvalL2SwitchMACs},
		{"ddos", func(s uint64) (any, error) { return DDoSConfig(0, 100, 1000, s) },
			func(c any) int { return len(c.(*ddos.Config).Blocklist) }, EvalDDoSBlockedHost + 100},
	} {
		t.Run(g.name, func(t *testing.T) {
			a, err := g.make(1)
			if err != nil {
				t.Fatal(err)
			}
			if n := g.count(a); n != g.want {
				t.Errorf("%d entries, want %d", n, g.want)
			}
			b, _ := g.make(1)
			c, _ := g.make(2)
			if !reflect.DeepEqual(a, b) {
				t.Error("same seed gave different configurations")
			}
			if reflect.DeepEqual(a, c) {
				t.Error("different seeds gave the same configuration")
			}
		})
	}
	for name, f := range map[string]func() error{
		"router no interfaces": func() error { _, err := RouterConfig(10, nil, 1); return err },
		"router too many":      func() error { _, err := RouterConfig(router.MaxRoutes, []uint32{1}, 1); return err },
		"lb too many":          func() error { _, err := LBConfig(100, 100, 1); return err },
		"l2switch one port":    func() error { _, err := L2SwitchConfig([]uint32{1}, 1, 10, 1); return err },
		"firewall too many":    func() error { _, err := FirewallConfig(firewall.MaxRules+1, false, 1); return err },
		"ddos too many":        func() error { _, err := DDoSConfig(ddos.MaxBlocked+1, 0, 0, 1); return err },
	} {
		if f() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestFlowGeneratorErrors(t *testing.T) {
	rcfg := router.ExampleConfig()
	if _, err := RouterFlows(rcfg, 9, 10, 1); err == nil || !strings.Contains(err.Error(), "ingress") {
		t.Errorf("router flows on an unknown ingress: %v", err)
	}
	if _, err := L2SwitchFlows(l2switch.ExampleConfig(), 99, 10, 1); err == nil {
		t.Error("l2switch flows on an unknown ingress succeeded")
	}
	if _, err := DDoSFlows(&ddos.Config{}, 10, 1); err == nil {
		t.Error("ddos flows with an empty blocklist succeeded")
	}
	if _, err := FirewallFlows(&firewall.Config{}, 10, 1); err == nil {
		t.Error("firewall flows without rules succeeded")
	}
	if _, err := LBFlows(lb.ExampleConfig(), 0, 1); err == nil {
		t.Error("lb flows with n=0 succeeded")
	}
	// Example configurations work too.
	if set, err := RouterFlows(rcfg, 2, 10, 1); err != nil || len(set.Hit) != 10 || len(set.Miss) != 10 {
		t.Errorf("router example: %v", err)
	}
	if _, err := L2SwitchFlows(l2switch.ExampleConfig(), 2, 10, 1); err != nil {
		t.Errorf("l2switch example: %v", err)
	}
	if _, err := FirewallFlows(firewall.ExampleConfig(), 10, 1); err != nil {
		t.Errorf("firewall example: %v", err)
	}
	if _, err := DDoSFlows(ddos.ExampleConfig(), 10, 1); err != nil {
		t.Errorf("ddos example: %v", err)
	}
}
