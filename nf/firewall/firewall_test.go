package firewall

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

const (
	xdpDrop = 1
	xdpPass = 2
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

// testConfig exercises every table and the documented priorities:
// rule ids 1-4 are the exact rules, 5-7 source prefixes, 8-11 destination
// prefixes.
func testConfig() *Config {
	return &Config{
		DefaultPolicy: "deny",
		Stateful:      true,
		Counters:      true,
		Rules: []Rule{
			{Source: "192.0.2.10", Destination: "10.0.0.5", Protocol: "tcp", SourcePort: 40000, DestinationPort: 22, Action: "allow"},
			{Source: "198.51.100.7", Destination: "10.0.0.80", Protocol: "udp", SourcePort: 53, DestinationPort: 5353, Action: "deny"},
			{Source: "203.0.113.5", Destination: "10.0.0.80", Protocol: "tcp", SourcePort: 1234, DestinationPort: 80, Action: "allow"},
			{Source: "192.0.2.99", Destination: "10.0.0.9", Protocol: "icmp", Action: "allow"},
		},
		SourcePrefixes: []PrefixRule{
			{Prefix: "203.0.113.0/24", Action: "deny"},
			{Prefix: "10.10.0.0/16", Action: "allow"},
			{Prefix: "10.10.5.0/24", Action: "deny"},
		},
		DestinationPrefixes: []PrefixRule{
			{Prefix: "10.0.0.80/32", Action: "allow"},
			{Prefix: "10.0.1.0/24", Action: "deny"},
			{Prefix: "10.0.2.0/24", Action: "allow"},
			{Prefix: "10.0.2.128/25", Action: "deny"},
		},
	}
}

func load(t *testing.T, cfg *Config) *ebpf.Collection {
	t.Helper()
	coll, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coll.Close)
	return coll
}

type packet struct {
	vlans   []uint16
	src     string
	dst     string
	proto   layers.IPProtocol
	sport   uint16
	dport   uint16
	rst     bool
	icmp    layers.ICMPv4TypeCode
	flags   layers.IPv4Flag
	fragOff uint16
}

func build(t testing.TB, p packet) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}
	ls := []gopacket.SerializableLayer{eth}
	if len(p.vlans) > 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		if len(p.vlans) > 1 {
			eth.EthernetType = layers.EthernetTypeQinQ
		}
		for i, id := range p.vlans {
			next := layers.EthernetTypeDot1Q
			if i == len(p.vlans)-1 {
				next = layers.EthernetTypeIPv4
			}
			ls = append(ls, &layers.Dot1Q{VLANIdentifier: id, Type: next})
		}
	}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: p.proto, Flags: p.flags, FragOffset: p.fragOff,
		SrcIP: net.ParseIP(p.src).To4(), DstIP: net.ParseIP(p.dst).To4()}
	ls = append(ls, ip)
	switch p.proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), ACK: true, RST: p.rst, Seq: 1, Window: 100}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, tcp)
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		_ = udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, udp)
	case layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{TypeCode: p.icmp, Id: 1, Seq: 1})
	}
	ls = append(ls, gopacket.Payload("firewall-test-payload"))
	return kerneltest.Frame(t, ls...)
}

func tcpPkt(src, dst string, sport, dport uint16) packet {
	return packet{src: src, dst: dst, proto: layers.IPProtocolTCP, sport: sport, dport: dport}
}

func reverse(p packet) packet {
	p.src, p.dst = p.dst, p.src
	p.sport, p.dport = p.dport, p.sport
	return p
}

func counters(t *testing.T, coll *ebpf.Collection) [NumCounters]uint64 {
	t.Helper()
	var out [NumCounters]uint64
	for i := range uint32(NumCounters) {
		var per []firewallFwCounter
		if err := coll.Maps["counters"].Lookup(i, &per); err != nil {
			t.Fatal(err)
		}
		for _, c := range per {
			out[i] += c.Packets
		}
	}
	return out
}

func tupleOf(p packet) firewallFwTuple {
	return firewallFwTuple{
		Saddr: be32(netip.MustParseAddr(p.src)), Daddr: be32(netip.MustParseAddr(p.dst)),
		Sport: be16(p.sport), Dport: be16(p.dport), Proto: uint8(p.proto),
	}
}

func ctEntries(t *testing.T, coll *ebpf.Collection) map[firewallFwTuple]firewallFwCtEntry {
	t.Helper()
	out := map[firewallFwTuple]firewallFwCtEntry{}
	var k firewallFwTuple
	var v firewallFwCtEntry
	it := coll.Maps["ct"].Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func setFeature(t *testing.T, coll *ebpf.Collection, feature uint32, on bool) {
	t.Helper()
	v := uint32(0)
	if on {
		v = 1
	}
	if err := coll.Maps["features"].Put(feature, v); err != nil {
		t.Fatal(err)
	}
}

func monotonicNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// run sends in through the entry program and checks the verdict, that the
// frame is unchanged and that the given counter moved by one and no other
// decision counter moved.
func run(t *testing.T, coll *ebpf.Collection, in []byte, verdict uint32, counter int) {
	t.Helper()
	before := counters(t, coll)
	res := kerneltest.Run(t, coll.Programs[Program], in)
	if res.Verdict != verdict {
		t.Fatalf("verdict %d, want %d", res.Verdict, verdict)
	}
	if !bytes.Equal(res.Out, in) {
		t.Error("the firewall modified the frame")
	}
	after := counters(t, coll)
	for i := range after {
		want := before[i]
		if i == counter {
			want++
		}
		if i == CounterCTNew && counter != CounterCTNew {
			continue // a new connection is counted too; callers check it
		}
		if after[i] != want {
			t.Errorf("counter %d: %d -> %d, want %d", i, before[i], after[i], want)
		}
	}
}

func TestFirewallPackets(t *testing.T) {
	kerneltest.Require(t)
	withBytes := func(p packet, mut func([]byte) []byte) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return mut(build(t, p)) }
	}
	rule1 := tcpPkt("192.0.2.10", "10.0.0.5", 40000, 22)
	cases := []struct {
		name    string
		pkt     packet
		raw     func(*testing.T) []byte
		verdict uint32
		counter int
		ctRule  uint32 // rule id of the connection entry expected, 0: none
	}{
		{name: "exact rule allow", pkt: rule1, verdict: xdpPass, counter: CounterRuleAllow, ctRule: 1},
		{name: "exact rule deny beats dst prefix allow", pkt: packet{src: "198.51.100.7", dst: "10.0.0.80", proto: layers.IPProtocolUDP, sport: 53, dport: 5353}, verdict: xdpDrop, counter: CounterRuleDeny},
		{name: "exact rule allow beats src prefix deny", pkt: tcpPkt("203.0.113.5", "10.0.0.80", 1234, 80), verdict: xdpPass, counter: CounterRuleAllow, ctRule: 3},
		{name: "exact rule needs every field", pkt: tcpPkt("192.0.2.10", "10.0.0.5", 40001, 22), verdict: xdpDrop, counter: CounterDefaultDeny},
		{name: "icmp rule", pkt: packet{src: "192.0.2.99", dst: "10.0.0.9", proto: layers.IPProtocolICMPv4, icmp: layers.CreateICMPv4TypeCode(8, 0)}, verdict: xdpPass, counter: CounterRuleAllow, ctRule: 4},
		{name: "src prefix deny beats dst prefix allow", pkt: tcpPkt("203.0.113.5", "10.0.0.80", 1235, 80), verdict: xdpDrop, counter: CounterSrcDeny},
		{name: "src prefix allow", pkt: tcpPkt("10.10.1.1", "10.9.9.9", 1000, 443), verdict: xdpPass, counter: CounterSrcAllow, ctRule: 6},
		{name: "src longest prefix deny", pkt: tcpPkt("10.10.5.1", "10.9.9.9", 1000, 443), verdict: xdpDrop, counter: CounterSrcDeny},
		{name: "src prefix allow beats dst prefix deny", pkt: tcpPkt("10.10.1.1", "10.0.1.5", 1000, 443), verdict: xdpPass, counter: CounterSrcAllow, ctRule: 6},
		{name: "dst prefix allow", pkt: tcpPkt("192.0.2.1", "10.0.0.80", 5000, 80), verdict: xdpPass, counter: CounterDstAllow, ctRule: 8},
		{name: "dst prefix deny", pkt: tcpPkt("192.0.2.1", "10.0.1.7", 5000, 80), verdict: xdpDrop, counter: CounterDstDeny},
		{name: "dst longest prefix deny", pkt: tcpPkt("192.0.2.1", "10.0.2.200", 5000, 80), verdict: xdpDrop, counter: CounterDstDeny},
		{name: "dst shorter prefix allow", pkt: packet{src: "192.0.2.1", dst: "10.0.2.5", proto: layers.IPProtocolUDP, sport: 5000, dport: 53}, verdict: xdpPass, counter: CounterDstAllow, ctRule: 10},
		{name: "default deny", pkt: tcpPkt("192.0.2.1", "10.9.9.9", 5000, 80), verdict: xdpDrop, counter: CounterDefaultDeny},
		{name: "other ip protocol default", pkt: packet{src: "192.0.2.1", dst: "10.9.9.9", proto: layers.IPProtocolGRE}, verdict: xdpDrop, counter: CounterDefaultDeny},
		{name: "vlan tagged allowed", pkt: packet{vlans: []uint16{7}, src: "192.0.2.1", dst: "10.0.0.80", proto: layers.IPProtocolTCP, sport: 6000, dport: 80}, verdict: xdpPass, counter: CounterDstAllow, ctRule: 8},
		{name: "qinq tagged denied", pkt: packet{vlans: []uint16{7, 8}, src: "192.0.2.1", dst: "10.0.1.1", proto: layers.IPProtocolTCP, sport: 6000, dport: 80}, verdict: xdpDrop, counter: CounterDstDeny},
		{name: "later fragment judged by prefix", pkt: packet{src: "10.10.1.1", dst: "10.9.9.9", proto: layers.IPProtocolUDP, fragOff: 100}, verdict: xdpPass, counter: CounterSrcAllow},
		{name: "later fragment skips exact rules", pkt: packet{src: "192.0.2.10", dst: "10.0.0.5", proto: layers.IPProtocolTCP, fragOff: 100}, verdict: xdpDrop, counter: CounterDefaultDeny},
		{name: "first fragment has ports", pkt: packet{src: "192.0.2.10", dst: "10.0.0.5", proto: layers.IPProtocolTCP, sport: 40000, dport: 22, flags: layers.IPv4MoreFragments}, verdict: xdpPass, counter: CounterRuleAllow, ctRule: 1},
		{name: "arp passes", raw: func(t *testing.T) []byte {
			return kerneltest.Frame(t, &layers.Ethernet{SrcMAC: macA, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
				&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
					Operation: layers.ARPRequest, SourceHwAddress: macA, SourceProtAddress: []byte{10, 0, 0, 1},
					DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 2}})
		}, verdict: xdpPass, counter: CounterNonIP},
		{name: "ipv6 default deny", raw: func(t *testing.T) []byte {
			ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
			udp := &layers.UDP{SrcPort: 1, DstPort: 2}
			_ = udp.SetNetworkLayerForChecksum(ip6)
			return kerneltest.Frame(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6}, ip6, udp)
		}, verdict: xdpDrop, counter: CounterDefaultDeny},
		{name: "truncated vlan", raw: func(*testing.T) []byte {
			return append(append(append([]byte{}, macB...), macA...), 0x81, 0x00, 0x00, 0x07)
		}, verdict: xdpDrop, counter: CounterMalformed},
		{name: "truncated ipv4", raw: withBytes(rule1, func(b []byte) []byte { return b[:14+19] }), verdict: xdpDrop, counter: CounterMalformed},
		{name: "ihl below 5", raw: withBytes(rule1, func(b []byte) []byte { b[14] = 0x43; return b }), verdict: xdpDrop, counter: CounterMalformed},
		{name: "ihl beyond packet", raw: withBytes(packet{src: "10.10.1.1", dst: "10.9.9.9", proto: layers.IPProtocolGRE}, func(b []byte) []byte {
			b[14] = 0x4f
			return b[:14+24]
		}), verdict: xdpDrop, counter: CounterMalformed},
		{name: "tot_len below header", raw: withBytes(rule1, func(b []byte) []byte { b[16], b[17] = 0, 10; return b }), verdict: xdpDrop, counter: CounterMalformed},
		{name: "truncated tcp", raw: withBytes(rule1, func(b []byte) []byte { return b[:14+20+12] }), verdict: xdpDrop, counter: CounterMalformed},
		{name: "truncated udp", raw: withBytes(packet{src: "10.10.1.1", dst: "10.9.9.9", proto: layers.IPProtocolUDP, sport: 1, dport: 2}, func(b []byte) []byte { return b[:14+20+4] }), verdict: xdpDrop, counter: CounterMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			coll := load(t, testConfig())
			var in []byte
			if c.raw != nil {
				in = c.raw(t)
			} else {
				in = build(t, c.pkt)
			}
			before := counters(t, coll)
			run(t, coll, in, c.verdict, c.counter)
			cts := ctEntries(t, coll)
			newConns := counters(t, coll)[CounterCTNew] - before[CounterCTNew]
			if c.ctRule == 0 {
				if len(cts) != 0 || newConns != 0 {
					t.Errorf("unexpected connection entries: %v (counted %d)", cts, newConns)
				}
				return
			}
			e, ok := cts[tupleOf(c.pkt)]
			if !ok || len(cts) != 1 || newConns != 1 {
				t.Fatalf("want one connection entry for the flow, got %v (counted %d)", cts, newConns)
			}
			if e.RuleId != c.ctRule || e.Packets != 1 || e.LastSeenNs == 0 {
				t.Errorf("connection entry %+v, want rule %d, 1 packet", e, c.ctRule)
			}
		})
	}
}

func TestFirewallConntrack(t *testing.T) {
	kerneltest.Require(t)
	coll := load(t, testConfig())
	fwd := tcpPkt("192.0.2.10", "10.0.0.5", 40000, 22)
	rev := reverse(fwd)

	// Before any forward packet, the reply is just default-denied.
	run(t, coll, build(t, rev), xdpDrop, CounterDefaultDeny)
	run(t, coll, build(t, fwd), xdpPass, CounterRuleAllow)
	run(t, coll, build(t, rev), xdpPass, CounterCTAllow)
	run(t, coll, build(t, fwd), xdpPass, CounterCTAllow)
	e := ctEntries(t, coll)[tupleOf(fwd)]
	if e.Packets != 3 || e.RuleId != 1 {
		t.Errorf("entry %+v, want 3 packets of rule 1", e)
	}

	// Without the stateful feature the reply meets the rules again.
	setFeature(t, coll, FeatureStateful, false)
	run(t, coll, build(t, rev), xdpDrop, CounterDefaultDeny)
	setFeature(t, coll, FeatureStateful, true)

	// A reset is let through and ends the connection.
	rst := rev
	rst.rst = true
	run(t, coll, build(t, rst), xdpPass, CounterCTAllow)
	if n := len(ctEntries(t, coll)); n != 0 {
		t.Fatalf("%d entries after RST, want 0", n)
	}
	run(t, coll, build(t, rev), xdpDrop, CounterDefaultDeny)

	// An idle entry expires; a fresh one is honoured.
	other := tcpPkt("10.0.0.5", "192.0.2.200", 22, 50000) // default deny both ways
	now := monotonicNow(t)
	stale := firewallFwCtEntry{LastSeenNs: now - uint64(10*time.Minute), Packets: 9, RuleId: 77}
	if err := coll.Maps["ct"].Put(tupleOf(other), stale); err != nil {
		t.Fatal(err)
	}
	run(t, coll, build(t, reverse(other)), xdpDrop, CounterDefaultDeny)
	if _, ok := ctEntries(t, coll)[tupleOf(other)]; ok {
		t.Error("expired entry was not deleted")
	}
	fresh := firewallFwCtEntry{LastSeenNs: monotonicNow(t), Packets: 1, RuleId: 77}
	if err := coll.Maps["ct"].Put(tupleOf(other), fresh); err != nil {
		t.Fatal(err)
	}
	run(t, coll, build(t, reverse(other)), xdpPass, CounterCTAllow)
	if got := ctEntries(t, coll)[tupleOf(other)]; got.Packets != 2 || got.LastSeenNs <= fresh.LastSeenNs {
		t.Errorf("entry not refreshed: %+v", got)
	}

	// ICMP echo: the reply matches the reversed (port-less) tuple.
	echo := packet{src: "192.0.2.99", dst: "10.0.0.9", proto: layers.IPProtocolICMPv4, icmp: layers.CreateICMPv4TypeCode(8, 0)}
	reply := packet{src: "10.0.0.9", dst: "192.0.2.99", proto: layers.IPProtocolICMPv4, icmp: layers.CreateICMPv4TypeCode(0, 0)}
	run(t, coll, build(t, reply), xdpDrop, CounterDefaultDeny)
	run(t, coll, build(t, echo), xdpPass, CounterRuleAllow)
	run(t, coll, build(t, reply), xdpPass, CounterCTAllow)
}

// TestFirewallFeatures switches each feature off at run time and checks a
// packet decided by it falls through to the next stage.
func TestFirewallFeatures(t *testing.T) {
	kerneltest.Require(t)
	cases := []struct {
		name       string
		feature    uint32
		pkt        packet
		on, off    uint32
		onCounter  int
		offCounter int
	}{
		{"rules", FeatureRules, tcpPkt("192.0.2.10", "10.0.0.5", 40000, 22), xdpPass, xdpDrop, CounterRuleAllow, CounterDefaultDeny},
		{"rules deny", FeatureRules, packet{src: "198.51.100.7", dst: "10.0.0.80", proto: layers.IPProtocolUDP, sport: 53, dport: 5353}, xdpDrop, xdpPass, CounterRuleDeny, CounterDstAllow},
		{"src lpm", FeatureSrcLPM, tcpPkt("10.10.1.1", "10.9.9.9", 1, 2), xdpPass, xdpDrop, CounterSrcAllow, CounterDefaultDeny},
		{"src lpm deny", FeatureSrcLPM, tcpPkt("203.0.113.9", "10.0.0.80", 1, 80), xdpDrop, xdpPass, CounterSrcDeny, CounterDstAllow},
		{"dst lpm", FeatureDstLPM, tcpPkt("192.0.2.1", "10.0.0.80", 1, 80), xdpPass, xdpDrop, CounterDstAllow, CounterDefaultDeny},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			coll := load(t, testConfig())
			setFeature(t, coll, FeatureStateful, false)
			in := build(t, c.pkt)
			run(t, coll, in, c.on, c.onCounter)
			setFeature(t, coll, c.feature, false)
			run(t, coll, in, c.off, c.offCounter)
			setFeature(t, coll, c.feature, true)
			run(t, coll, in, c.on, c.onCounter)
		})
	}
	t.Run("stateful off records nothing", func(t *testing.T) {
		coll := load(t, testConfig())
		setFeature(t, coll, FeatureStateful, false)
		run(t, coll, build(t, tcpPkt("192.0.2.10", "10.0.0.5", 40000, 22)), xdpPass, CounterRuleAllow)
		if n := len(ctEntries(t, coll)); n != 0 {
			t.Errorf("%d connection entries with stateful off", n)
		}
	})
	t.Run("counters off", func(t *testing.T) {
		coll := load(t, testConfig())
		setFeature(t, coll, FeatureCounters, false)
		before := counters(t, coll)
		res := kerneltest.Run(t, coll.Programs[Program], build(t, tcpPkt("192.0.2.1", "10.9.9.9", 1, 2)))
		if res.Verdict != xdpDrop {
			t.Fatalf("verdict %d", res.Verdict)
		}
		if after := counters(t, coll); after != before {
			t.Errorf("counters moved with the feature off: %v -> %v", before, after)
		}
	})
}

func TestFirewallDefaultPolicy(t *testing.T) {
	kerneltest.Require(t)
	ip6 := func(t *testing.T) []byte {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
		tcp := &layers.TCP{SrcPort: 1, DstPort: 2, SYN: true}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		return kerneltest.Frame(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6}, ip, tcp)
	}
	cases := []struct {
		policy  string
		verdict uint32
		counter int
	}{
		{"allow", xdpPass, CounterDefaultAllow},
		{"deny", xdpDrop, CounterDefaultDeny},
		{"", xdpDrop, CounterDefaultDeny},
	}
	for _, c := range cases {
		t.Run("policy "+c.policy, func(t *testing.T) {
			cfg := &Config{DefaultPolicy: c.policy, Counters: true, Stateful: true}
			coll := load(t, cfg)
			p := tcpPkt("192.0.2.1", "10.9.9.9", 1, 2)
			before := counters(t, coll)
			run(t, coll, build(t, p), c.verdict, c.counter)
			run(t, coll, ip6(t), c.verdict, c.counter)
			// A default-allowed flow is tracked (rule id 0).
			cts := ctEntries(t, coll)
			if c.verdict == xdpPass {
				if e, ok := cts[tupleOf(p)]; !ok || e.RuleId != 0 {
					t.Errorf("default-allowed flow not tracked: %v", cts)
				}
				if n := counters(t, coll)[CounterCTNew] - before[CounterCTNew]; n != 1 {
					t.Errorf("%d new connections counted, want 1", n)
				}
			} else if len(cts) != 0 {
				t.Errorf("denied flow tracked: %v", cts)
			}
		})
	}
}

// TestFirewallTailCalls checks the stage programs are wired in by the
// loader and that a missing stage fails closed.
func TestFirewallTailCalls(t *testing.T) {
	kerneltest.Require(t)
	coll := load(t, testConfig())
	if err := CheckStages(coll); err != nil {
		t.Fatal(err)
	}
	allowed := build(t, tcpPkt("192.0.2.1", "10.0.0.80", 1, 80))
	if err := coll.Maps["stages"].Delete(uint32(1)); err != nil {
		t.Fatal(err)
	}
	if err := CheckStages(coll); err == nil {
		t.Error("CheckStages missed the empty slot")
	}
	run(t, coll, allowed, xdpDrop, CounterTailCallFail)
	setFeature(t, coll, FeatureStateful, false)
	run(t, coll, allowed, xdpDrop, CounterTailCallFail)
	// The ACL stage also runs on its own.
	res := kerneltest.Run(t, coll.Programs[ACLProgram], allowed)
	if res.Verdict != xdpPass {
		t.Errorf("fw_acl verdict %d, want XDP_PASS", res.Verdict)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"ok", func(*Config) {}, ""},
		{"example", func(c *Config) { *c = *ExampleConfig() }, ""},
		{"empty", func(c *Config) { *c = Config{} }, ""},
		{"bad default", func(c *Config) { c.DefaultPolicy = "reject" }, "default_policy"},
		{"bad timeout", func(c *Config) { c.ConnTimeout = "5 minutes" }, "conn_timeout"},
		{"negative timeout", func(c *Config) { c.ConnTimeout = "-1s" }, "positive"},
		{"bad rule source", func(c *Config) { c.Rules[1].Source = "198.51.100" }, "rules[1].source"},
		{"ipv6 rule", func(c *Config) { c.Rules[0].Destination = "2001:db8::1" }, "rules[0].destination"},
		{"bad protocol", func(c *Config) { c.Rules[0].Protocol = "sctpx" }, "protocol"},
		{"ports on icmp", func(c *Config) { c.Rules[3].DestinationPort = 1 }, "only for tcp and udp"},
		{"bad action", func(c *Config) { c.Rules[0].Action = "maybe" }, "want allow or deny"},
		{"duplicate rule", func(c *Config) { c.Rules[1] = c.Rules[0] }, "same 5-tuple as rules[0]"},
		{"bad prefix", func(c *Config) { c.SourcePrefixes[0].Prefix = "10.0.0.0/33" }, "source_prefixes[0]"},
		{"host bits", func(c *Config) { c.DestinationPrefixes[1].Prefix = "10.0.1.1/24" }, "host bits"},
		{"duplicate prefix", func(c *Config) { c.DestinationPrefixes[2].Prefix = "10.0.1.0/24" }, "repeats destination_prefixes[1]"},
		{"numeric protocol", func(c *Config) { c.Rules[3].Protocol = "47" }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig()
			c.mut(cfg)
			err := cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestState(t *testing.T) {
	spec, err := Spec()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{"rules": MaxRules, "src_lpm": MaxPrefixes, "dst_lpm": MaxPrefixes, "ct": MaxConns, "features": NumFeatures, "counters": NumCounters} {
		if got := spec.Maps[name].MaxEntries; got != want {
			t.Errorf("%s holds %d entries, Go expects %d", name, got, want)
		}
	}
	if spec.Maps["stages"].Type != ebpf.ProgramArray || len(spec.Maps["stages"].Contents) != 2 {
		t.Errorf("stages: %v with %d initial entries", spec.Maps["stages"].Type, len(spec.Maps["stages"].Contents))
	}
	st, err := testConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Check(spec); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"rules": 4, "src_lpm": 3, "dst_lpm": 4, "features": NumFeatures} {
		if got := len(st.Maps[name].Entries); got != want {
			t.Errorf("%s: %d entries, want %d", name, got, want)
		}
	}
	// 10.10.0.0/16 allow, rule id 6: prefixlen LE, address in network order.
	e := st.Maps["src_lpm"].Entries[1]
	if !bytes.Equal(e.Key, []byte{16, 0, 0, 0, 10, 10, 0, 0}) || !bytes.Equal(e.Value, []byte{1, 0, 0, 0, 6, 0, 0, 0}) {
		t.Errorf("src_lpm entry %x -> %x", e.Key, e.Value)
	}
	// Rule 1: 192.0.2.10 -> 10.0.0.5 tcp 40000 -> 22.
	e = st.Maps["rules"].Entries[0]
	wantKey := []byte{192, 0, 2, 10, 10, 0, 0, 5, 0x9c, 0x40, 0, 22, 6, 0, 0, 0}
	if !bytes.Equal(e.Key, wantKey) {
		t.Errorf("rules key %x, want %x", e.Key, wantKey)
	}
	if !bytes.Equal(st.Variables["default_action"], []byte{2, 0, 0, 0}) {
		t.Errorf("default_action %x", st.Variables["default_action"])
	}
	if !bytes.Equal(st.Variables["ct_timeout_ns"], binary.LittleEndian.AppendUint64(nil, uint64(300*time.Second))) {
		t.Errorf("ct_timeout_ns %x, want 300s", st.Variables["ct_timeout_ns"])
	}
}
