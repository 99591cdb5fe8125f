//go:build linux

package router

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/internal/nfmap"
)

// XDP verdicts.
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTx       = 3
	xdpRedirect = 4
)

// Addresses used by the test configurations. BPF_PROG_TEST_RUN reports
// ingress ifindex 1 (loopback), so interface 1 is the ingress interface.
const (
	macIf1   = "02:00:00:00:01:01"
	macIf2   = "02:00:00:00:02:01"
	macIf3   = "02:00:00:00:03:01"
	macIf4   = "02:00:00:00:04:01"
	macNhA   = "02:aa:00:00:00:0a"
	macNhB   = "02:bb:00:00:00:0b"
	macNhC   = "02:cc:00:00:00:0c"
	macNhV   = "02:dd:00:00:00:64"
	macNhD   = "02:ee:00:00:00:0d"
	macHost  = "02:11:22:33:44:55"
	macOther = "02:99:99:99:99:99"
)

func baseInterfaces() []Interface {
	return []Interface{
		{Ifindex: 1, MAC: macIf1, RouteTagged: true},
		{Ifindex: 2, MAC: macIf2},
		{Ifindex: 3, MAC: macIf3},
		{Ifindex: 4, MAC: macIf4, Disabled: true},
	}
}

func baseNextHops() []NextHop {
	return []NextHop{
		{Name: "a", Ifindex: 2, MAC: macNhA},
		{Name: "b", Ifindex: 3, MAC: macNhB},
		{Name: "self", Ifindex: 1, MAC: macNhC},
		{Name: "v100", Ifindex: 3, MAC: macNhV, VLAN: 100},
		{Name: "down", Ifindex: 4, MAC: macNhD},
	}
}

// testConfigs are the configurations the table cases refer to by name.
func testConfigs() map[string]*Config {
	eight := &Config{Interfaces: baseInterfaces(), NextHops: baseNextHops(), Routes: []Route{
		{Prefix: "0.0.0.0/0", Via: "b"},
		{Prefix: "10.0.0.0/8", Via: "a"},
		{Prefix: "10.1.0.0/16", Via: "b"},
		{Prefix: "10.1.2.0/24", Via: "self"},
		{Prefix: "10.1.2.128/25", Via: "v100"},
		{Prefix: "10.9.9.9/32", Action: ActionLocal},
		{Prefix: "192.0.2.0/24", Action: ActionBlackhole},
		{Prefix: "172.16.0.0/12", Via: "down"},
	}}
	one := &Config{Interfaces: baseInterfaces(), NextHops: baseNextHops(), Routes: []Route{
		{Prefix: "10.0.0.0/8", Via: "a"},
	}}
	strictIfs := baseInterfaces()
	strictIfs[0].StrictDestMAC = true
	strictIfs[0].RouteTagged = false
	strict := &Config{Interfaces: strictIfs, NextHops: baseNextHops(), Routes: []Route{
		{Prefix: "0.0.0.0/0", Via: "a"},
	}}
	disabledIfs := baseInterfaces()
	disabledIfs[0].Disabled = true
	disabled := &Config{Interfaces: disabledIfs, NextHops: baseNextHops(), Routes: []Route{
		{Prefix: "0.0.0.0/0", Via: "a"},
	}}
	return map[string]*Config{"eight": eight, "one": one, "strict": strict, "ingress-disabled": disabled}
}

// frame describes a test frame; ip == nil builds an ARP request instead.
type frame struct {
	dst, src string
	tags     []uint16 // TCIs, outermost first
	qinq     bool     // outer tag is 802.1ad
	ipv6     bool
	ip       *ipv4
}

type ipv4 struct {
	src, dst   string
	ttl        uint8
	fragOffset uint16
	moreFrags  bool
	options    bool // add a 4-byte NOP/EOL option (IHL 6)
	tcp        bool
}

func (f frame) clone() frame {
	c := f
	c.tags = append([]uint16(nil), f.tags...)
	if f.ip != nil {
		ip := *f.ip
		c.ip = &ip
	}
	return c
}

func (f frame) bytes(tb testing.TB) []byte {
	tb.Helper()
	var ls []gopacket.SerializableLayer
	next := layers.EthernetTypeIPv4
	switch {
	case f.ipv6:
		next = layers.EthernetTypeIPv6
	case f.ip == nil:
		next = layers.EthernetTypeARP
	}
	eth := &layers.Ethernet{SrcMAC: mustMAC(tb, f.src), DstMAC: mustMAC(tb, f.dst), EthernetType: next}
	ls = append(ls, eth)
	for i, tci := range f.tags {
		d := &layers.Dot1Q{Priority: uint8(tci >> 13), DropEligible: tci&0x1000 != 0, VLANIdentifier: tci & 0xfff, Type: next}
		prev := layers.EthernetTypeDot1Q
		if i == 0 && f.qinq {
			prev = layers.EthernetTypeQinQ
		}
		if i == 0 {
			eth.EthernetType = prev
		} else {
			ls[len(ls)-1].(*layers.Dot1Q).Type = prev
		}
		ls = append(ls, d)
	}
	payload := gopacket.Payload([]byte("morpheus router test payload"))
	switch {
	case f.ipv6:
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP,
			SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
		udp := &layers.UDP{SrcPort: 1000, DstPort: 53}
		if err := udp.SetNetworkLayerForChecksum(ip6); err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, ip6, udp, payload)
	case f.ip == nil:
		ls = append(ls, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
			SourceHwAddress: mustMAC(tb, f.src), SourceProtAddress: []byte{10, 0, 0, 1},
			DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 2}})
	default:
		ip := &layers.IPv4{Version: 4, TTL: f.ip.ttl, Id: 0x1234, SrcIP: net.ParseIP(f.ip.src).To4(),
			DstIP: net.ParseIP(f.ip.dst).To4(), FragOffset: f.ip.fragOffset, Protocol: layers.IPProtocolUDP}
		if f.ip.moreFrags {
			ip.Flags = layers.IPv4MoreFragments
		}
		if f.ip.options {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		ls = append(ls, ip)
		if f.ip.tcp {
			ip.Protocol = layers.IPProtocolTCP
			tcp := &layers.TCP{SrcPort: 40000, DstPort: 443, Seq: 1, SYN: true, Window: 1024}
			if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
				tb.Fatal(err)
			}
			ls = append(ls, tcp)
		} else {
			udp := &layers.UDP{SrcPort: 1000, DstPort: 53}
			if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
				tb.Fatal(err)
			}
			ls = append(ls, udp)
		}
		ls = append(ls, payload)
	}
	return kerneltest.Frame(tb, ls...)
}

func mustMAC(tb testing.TB, s string) net.HardwareAddr {
	tb.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

func udpTo(dst string, ttl uint8) frame {
	return frame{dst: macIf1, src: macHost, ip: &ipv4{src: "203.0.113.7", dst: dst, ttl: ttl}}
}

// routed is the frame the router should emit for f via next hop (dmac,
// egress smac), with the tags the egress needs.
func routed(f frame, dmac, smac string, tags ...uint16) *frame {
	o := f.clone()
	o.dst, o.src = dmac, smac
	o.ip.ttl--
	o.tags = tags
	return &o
}

func ipv4Off(b []byte) int {
	off := 14
	for i := 0; i < 2 && len(b) >= off; i++ {
		et := binary.BigEndian.Uint16(b[off-2:])
		if et != 0x8100 && et != 0x88a8 {
			break
		}
		off += 4
	}
	return off
}

// checkIPv4Checksum recomputes the header checksum of the IPv4 header in b.
func checkIPv4Checksum(tb testing.TB, b []byte) {
	tb.Helper()
	off := ipv4Off(b)
	hlen := int(b[off]&0x0f) * 4
	var sum uint32
	for i := 0; i < hlen; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[off+i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		tb.Errorf("IPv4 header checksum invalid: sum %#04x", sum)
	}
}

type routerCase struct {
	name    string
	cfg     string
	in      frame
	mutate  func([]byte) []byte // corrupts the serialized input
	verdict uint32
	want    *frame       // expected output; nil: the input unchanged
	counter CounterIndex // the counter (besides rx) that must count the frame
}

func setByte(off int, v byte) func([]byte) []byte {
	return func(b []byte) []byte { b[off] = v; return b }
}

func truncate(n int) func([]byte) []byte {
	return func(b []byte) []byte { return b[:n] }
}

func routerCases() []routerCase {
	tagged := func(f frame, tags ...uint16) frame { f.tags = tags; return f }
	frag := udpTo("10.5.5.5", 64)
	frag.ip.fragOffset = 185
	firstFrag := udpTo("10.5.5.5", 64)
	firstFrag.ip.moreFrags = true
	opts := udpTo("10.5.5.5", 64)
	opts.ip.options = true
	tcp := udpTo("10.1.5.5", 64)
	tcp.ip.tcp = true
	arp := frame{dst: "ff:ff:ff:ff:ff:ff", src: macHost}
	v6 := frame{dst: macIf1, src: macHost, ipv6: true}
	qinq := tagged(udpTo("10.5.5.5", 64), 0x0064, 0x000a)
	qinq.qinq = true
	ttl255 := udpTo("8.8.4.4", 255)
	wrongDst := udpTo("10.5.5.5", 64)
	wrongDst.dst = macOther

	return []routerCase{
		{name: "default route", cfg: "eight", in: udpTo("8.8.8.8", 64), verdict: xdpRedirect,
			want: routed(udpTo("8.8.8.8", 64), macNhB, macIf3), counter: CounterForwarded},
		{name: "/8 beats default", cfg: "eight", in: udpTo("10.5.5.5", 64), verdict: xdpRedirect,
			want: routed(udpTo("10.5.5.5", 64), macNhA, macIf2), counter: CounterForwarded},
		{name: "/16 beats /8", cfg: "eight", in: udpTo("10.1.5.5", 64), verdict: xdpRedirect,
			want: routed(udpTo("10.1.5.5", 64), macNhB, macIf3), counter: CounterForwarded},
		{name: "/24 to ingress interface is XDP_TX", cfg: "eight", in: udpTo("10.1.2.5", 64), verdict: xdpTx,
			want: routed(udpTo("10.1.2.5", 64), macNhC, macIf1), counter: CounterTx},
		{name: "/25 beats /24 and pushes VLAN 100", cfg: "eight", in: udpTo("10.1.2.200", 64), verdict: xdpRedirect,
			want: routed(udpTo("10.1.2.200", 64), macNhV, macIf3, 100), counter: CounterForwarded},
		{name: "TCP forwarded", cfg: "eight", in: tcp, verdict: xdpRedirect,
			want: routed(tcp, macNhB, macIf3), counter: CounterForwarded},
		{name: "local /32 passes", cfg: "eight", in: udpTo("10.9.9.9", 64), verdict: xdpPass, counter: CounterLocal},
		{name: "blackhole drops", cfg: "eight", in: udpTo("192.0.2.77", 64), verdict: xdpDrop, counter: CounterDropBlackhole},
		{name: "next hop on disabled interface passes", cfg: "eight", in: udpTo("172.20.0.1", 64), verdict: xdpPass, counter: CounterSlowPath},
		{name: "TTL 2 forwarded with TTL 1", cfg: "eight", in: udpTo("8.8.8.8", 2), verdict: xdpRedirect,
			want: routed(udpTo("8.8.8.8", 2), macNhB, macIf3), counter: CounterForwarded},
		{name: "TTL 255 checksum", cfg: "eight", in: ttl255, verdict: xdpRedirect,
			want: routed(ttl255, macNhB, macIf3), counter: CounterForwarded},
		{name: "TTL 1 passes for ICMP", cfg: "eight", in: udpTo("8.8.8.8", 1), verdict: xdpPass, counter: CounterTTLExceeded},
		{name: "TTL 0 passes", cfg: "eight", in: udpTo("8.8.8.8", 0), verdict: xdpPass, counter: CounterTTLExceeded},
		{name: "multicast destination passes", cfg: "eight", in: udpTo("224.0.0.5", 64), verdict: xdpPass, counter: CounterLocal},
		{name: "limited broadcast passes", cfg: "eight", in: udpTo("255.255.255.255", 64), verdict: xdpPass, counter: CounterLocal},
		{name: "ARP passes", cfg: "eight", in: arp, verdict: xdpPass, counter: CounterNonIP},
		{name: "IPv6 passes", cfg: "eight", in: v6, verdict: xdpPass, counter: CounterNonIP},
		{name: "non-first fragment forwarded", cfg: "eight", in: frag, verdict: xdpRedirect,
			want: routed(frag, macNhA, macIf2), counter: CounterForwarded},
		{name: "first fragment forwarded", cfg: "eight", in: firstFrag, verdict: xdpRedirect,
			want: routed(firstFrag, macNhA, macIf2), counter: CounterForwarded},
		{name: "IP options forwarded", cfg: "eight", in: opts, verdict: xdpRedirect,
			want: routed(opts, macNhA, macIf2), counter: CounterForwarded},
		{name: "802.1Q tag popped for untagged next hop", cfg: "eight", in: tagged(udpTo("10.5.5.5", 64), 0x200a), verdict: xdpRedirect,
			want: routed(udpTo("10.5.5.5", 64), macNhA, macIf2), counter: CounterForwarded},
		{name: "802.1Q VID rewritten, priority kept", cfg: "eight", in: tagged(udpTo("10.1.2.130", 64), 0xa00a), verdict: xdpRedirect,
			want: routed(udpTo("10.1.2.130", 64), macNhV, macIf3, 0xa064), counter: CounterForwarded},
		{name: "QinQ passes", cfg: "eight", in: qinq, verdict: xdpPass, counter: CounterSlowPath},
		// BPF_PROG_TEST_RUN rejects frames shorter than an Ethernet header.
		{name: "Ethernet header only", cfg: "eight", in: udpTo("8.8.8.8", 64), mutate: truncate(14), verdict: xdpDrop, counter: CounterMalformed},
		{name: "truncated VLAN tag", cfg: "eight", in: tagged(udpTo("8.8.8.8", 64), 10), mutate: truncate(16), verdict: xdpDrop, counter: CounterMalformed},
		{name: "truncated IPv4 header", cfg: "eight", in: udpTo("8.8.8.8", 64), mutate: truncate(14 + 12), verdict: xdpDrop, counter: CounterMalformed},
		{name: "truncated UDP header", cfg: "eight", in: udpTo("8.8.8.8", 64), mutate: truncate(14 + 20 + 4), verdict: xdpDrop, counter: CounterMalformed},
		{name: "IHL 4", cfg: "eight", in: udpTo("8.8.8.8", 64), mutate: setByte(14, 0x44), verdict: xdpDrop, counter: CounterMalformed},
		{name: "IHL 15 past the end", cfg: "eight", in: udpTo("8.8.8.8", 64), mutate: func(b []byte) []byte { b[14] = 0x4f; return b[:14+40] }, verdict: xdpDrop, counter: CounterMalformed},
		{name: "IP version 6 in IPv4 frame", cfg: "eight", in: udpTo("8.8.8.8", 64), mutate: setByte(14, 0x65), verdict: xdpDrop, counter: CounterMalformed},
		{name: "total length below header length", cfg: "eight", in: udpTo("8.8.8.8", 64), mutate: func(b []byte) []byte { b[16], b[17] = 0, 10; return b }, verdict: xdpDrop, counter: CounterMalformed},
		{name: "one route: hit", cfg: "one", in: udpTo("10.200.0.1", 64), verdict: xdpRedirect,
			want: routed(udpTo("10.200.0.1", 64), macNhA, macIf2), counter: CounterForwarded},
		{name: "one route: miss drops", cfg: "one", in: udpTo("11.0.0.1", 64), verdict: xdpDrop, counter: CounterDropNoRoute},
		{name: "strict dMAC: ours routed", cfg: "strict", in: udpTo("10.5.5.5", 64), verdict: xdpRedirect,
			want: routed(udpTo("10.5.5.5", 64), macNhA, macIf2), counter: CounterForwarded},
		{name: "strict dMAC: other MAC passes", cfg: "strict", in: wrongDst, verdict: xdpPass, counter: CounterSlowPath},
		{name: "tagged frame without route_tagged passes", cfg: "strict", in: tagged(udpTo("10.5.5.5", 64), 10), verdict: xdpPass, counter: CounterSlowPath},
		{name: "disabled ingress interface passes", cfg: "ingress-disabled", in: udpTo("10.5.5.5", 64), verdict: xdpPass, counter: CounterSlowPath},
	}
}

type loaded struct {
	coll *ebpf.Collection
	prog *ebpf.Program
}

func load(tb testing.TB, cfg *Config) loaded {
	tb.Helper()
	coll, err := Load(cfg)
	if err != nil {
		tb.Fatalf("Load: %v", err)
	}
	tb.Cleanup(func() { coll.Close() })
	prog := coll.Programs[Program]
	if prog == nil {
		tb.Fatalf("program %s missing", Program)
	}
	return loaded{coll: coll, prog: prog}
}

func (l loaded) counters(tb testing.TB) Counters {
	tb.Helper()
	c, err := ReadCounters(l.coll.Maps[MapCounters])
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func TestRouter(t *testing.T) {
	kerneltest.Require(t)
	cfgs := testConfigs()
	colls := map[string]loaded{}
	for name, cfg := range cfgs {
		colls[name] = load(t, cfg)
	}
	for _, tc := range routerCases() {
		t.Run(tc.name, func(t *testing.T) {
			l := colls[tc.cfg]
			in := tc.in.bytes(t)
			if tc.mutate != nil {
				in = tc.mutate(in)
			}
			orig := bytes.Clone(in)
			before := l.counters(t)
			res := kerneltest.Run(t, l.prog, in)
			after := l.counters(t)

			if res.Verdict != tc.verdict {
				t.Fatalf("verdict %d, want %d", res.Verdict, tc.verdict)
			}
			want := orig
			if tc.want != nil {
				want = tc.want.bytes(t)
				checkIPv4Checksum(t, res.Out)
			}
			if !bytes.Equal(res.Out, want) {
				t.Errorf("output frame differs\n got %x\nwant %x", res.Out, want)
			}
			for i := CounterIndex(0); i < NumCounters; i++ {
				var dp, db uint64
				if i == CounterRx || i == tc.counter {
					dp, db = 1, uint64(len(in))
				}
				if got := after[i].Packets - before[i].Packets; got != dp {
					t.Errorf("counter %s: +%d packets, want +%d", i, got, dp)
				}
				if got := after[i].Bytes - before[i].Bytes; got != db {
					t.Errorf("counter %s: +%d bytes, want +%d", i, got, db)
				}
			}
		})
	}
}

// TestRouterLPMModel loads a table of a few hundred random, nested prefixes
// and checks the next hop the data plane picks against a linear-scan
// longest-prefix-match model.
func TestRouterLPMModel(t *testing.T) {
	kerneltest.Require(t)
	rng := rand.New(rand.NewSource(1))
	cfg := &Config{Interfaces: baseInterfaces()}
	for i := 0; i < 8; i++ {
		cfg.NextHops = append(cfg.NextHops, NextHop{Name: fmt.Sprintf("nh%d", i), Ifindex: uint32(2 + i%2), MAC: fmt.Sprintf("02:00:00:00:aa:%02x", i)})
	}
	type entry struct {
		pfx netip.Prefix
		nh  int
	}
	var table []entry
	seen := map[netip.Prefix]bool{}
	for guard := 0; len(table) < 400 && guard < 10000; guard++ {
		bits := 8 + rng.Intn(25) // 8..32
		// Bias into 10.0.0.0/8 so that prefixes nest.
		a := [4]byte{10, byte(rng.Intn(4)), byte(rng.Intn(256)), byte(rng.Intn(256))}
		pfx := netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked()
		if seen[pfx] {
			continue
		}
		seen[pfx] = true
		nh := rng.Intn(8)
		table = append(table, entry{pfx, nh})
		cfg.Routes = append(cfg.Routes, Route{Prefix: pfx.String(), Via: cfg.NextHops[nh].Name})
	}
	if len(table) < 300 {
		t.Fatalf("only %d routes generated", len(table))
	}
	l := load(t, cfg)

	model := func(a netip.Addr) int {
		best, nh := -1, -1
		for _, e := range table {
			if e.pfx.Contains(a) && e.pfx.Bits() > best {
				best, nh = e.pfx.Bits(), e.nh
			}
		}
		return nh
	}
	hits, misses := 0, 0
	for i := 0; i < 300; i++ {
		var a [4]byte
		if i%3 == 0 {
			binary.BigEndian.PutUint32(a[:], rng.Uint32()) // mostly misses
			a[0] = 10 + byte(rng.Intn(2))
		} else {
			e := table[rng.Intn(len(table))]
			base := e.pfx.Addr().As4()
			host := rng.Uint32() & (uint32(1)<<(32-e.pfx.Bits()) - 1)
			binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(base[:])|host)
		}
		dst := netip.AddrFrom4(a)
		f := udpTo(dst.String(), 64)
		res := kerneltest.Run(t, l.prog, f.bytes(t))
		nh := model(dst)
		if nh < 0 {
			misses++
			if res.Verdict != xdpDrop {
				t.Errorf("%s: verdict %d, want drop (no route)", dst, res.Verdict)
			}
			continue
		}
		hits++
		smac := macIf2
		if cfg.NextHops[nh].Ifindex == 3 {
			smac = macIf3
		}
		want := routed(f, cfg.NextHops[nh].MAC, smac).bytes(t)
		if res.Verdict != xdpRedirect || !bytes.Equal(res.Out, want) {
			t.Errorf("%s: verdict %d out %x, want redirect via nh%d (%x)", dst, res.Verdict, res.Out, nh, want)
		}
	}
	if hits < 150 || misses < 20 {
		t.Fatalf("test traffic too one-sided: %d hits, %d misses", hits, misses)
	}
	c := l.counters(t)
	if c[CounterForwarded].Packets != uint64(hits) || c[CounterDropNoRoute].Packets != uint64(misses) {
		t.Errorf("counters forwarded %d drop_no_route %d, want %d and %d", c[CounterForwarded].Packets, c[CounterDropNoRoute].Packets, hits, misses)
	}
}

// TestRouterRouteUpdate checks that a control plane change takes effect on
// the next packet: a more specific route added, then removed.
func TestRouterRouteUpdate(t *testing.T) {
	kerneltest.Require(t)
	l := load(t, testConfigs()["eight"])
	f := udpTo("10.5.5.5", 64)
	res := kerneltest.Run(t, l.prog, f.bytes(t))
	if !bytes.Equal(res.Out, routed(f, macNhA, macIf2).bytes(t)) {
		t.Fatalf("before update: not routed via a: %x", res.Out)
	}
	key := nfmap.Encode(&bpfRouteKey{Prefixlen: 32, Addr: binary.LittleEndian.Uint32([]byte{10, 5, 5, 5})})
	if err := l.coll.Maps[MapRoutes].Put(key, nfmap.Encode(&bpfRoute{Nexthop: 1})); err != nil {
		t.Fatal(err)
	}
	res = kerneltest.Run(t, l.prog, f.bytes(t))
	if !bytes.Equal(res.Out, routed(f, macNhB, macIf3).bytes(t)) {
		t.Fatalf("after adding /32: not routed via b: %x", res.Out)
	}
	if err := l.coll.Maps[MapRoutes].Delete(key); err != nil {
		t.Fatal(err)
	}
	res = kerneltest.Run(t, l.prog, f.bytes(t))
	if !bytes.Equal(res.Out, routed(f, macNhA, macIf2).bytes(t)) {
		t.Fatalf("after deleting /32: not routed via a: %x", res.Out)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := func() *Config { return testConfigs()["eight"] }
	tests := []struct {
		name   string
		modify func(c *Config)
		errSub string // empty: valid
	}{
		{"valid", func(c *Config) {}, ""},
		{"example", func(c *Config) { *c = *ExampleConfig() }, ""},
		{"ifindex 0", func(c *Config) { c.Interfaces[1].Ifindex = 0 }, "out of range"},
		{"ifindex too big", func(c *Config) { c.Interfaces[1].Ifindex = MaxIfindex }, "out of range"},
		{"duplicate ifindex", func(c *Config) { c.Interfaces[1].Ifindex = 1 }, "listed twice"},
		{"bad interface MAC", func(c *Config) { c.Interfaces[0].MAC = "02:00:00" }, "bad MAC"},
		{"multicast interface MAC", func(c *Config) { c.Interfaces[0].MAC = "01:00:5e:00:00:01" }, "multicast"},
		{"zero next hop MAC", func(c *Config) { c.NextHops[0].MAC = "00:00:00:00:00:00" }, "all zeros"},
		{"unnamed next hop", func(c *Config) { c.NextHops[0].Name = "" }, "missing name"},
		{"duplicate next hop", func(c *Config) { c.NextHops[1].Name = "a" }, "defined twice"},
		{"next hop on unknown interface", func(c *Config) { c.NextHops[0].Ifindex = 9 }, "not a configured interface"},
		{"next hop VLAN 4095", func(c *Config) { c.NextHops[0].VLAN = 4095 }, "VLAN 4095"},
		{"bad prefix", func(c *Config) { c.Routes[1].Prefix = "10.0.0.0" }, "route 1"},
		{"IPv6 prefix", func(c *Config) { c.Routes[1].Prefix = "2001:db8::/32" }, "not an IPv4 prefix"},
		{"host bits set", func(c *Config) { c.Routes[1].Prefix = "10.1.2.3/8" }, "did you mean 10.0.0.0/8"},
		{"duplicate prefix", func(c *Config) { c.Routes[2].Prefix = "10.0.0.0/8" }, "already given by route 1"},
		{"unknown next hop", func(c *Config) { c.Routes[1].Via = "nope" }, "unknown next hop \"nope\""},
		{"forward without via", func(c *Config) { c.Routes[1].Via = "" }, "needs \"via\""},
		{"local with via", func(c *Config) { c.Routes[5].Via = "a" }, "takes no \"via\""},
		{"unknown action", func(c *Config) { c.Routes[1].Action = "nat" }, "unknown action"},
		{"too many routes", func(c *Config) {
			c.Routes = make([]Route, MaxRoutes+1)
		}, "at most 16384"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok()
			tt.modify(c)
			err := c.Validate()
			if tt.errSub == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errSub) {
				t.Fatalf("error %v, want it to mention %q", err, tt.errSub)
			}
			if _, err := c.State(); err == nil {
				t.Fatal("State accepted an invalid config")
			}
		})
	}
}

func TestStateMatchesSpec(t *testing.T) {
	for name, cfg := range map[string]*Config{"example": ExampleConfig(), "eight": testConfigs()["eight"]} {
		t.Run(name, func(t *testing.T) {
			s, err := cfg.State()
			if err != nil {
				t.Fatal(err)
			}
			spec, err := Spec()
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Check(spec); err != nil {
				t.Fatal(err)
			}
			if _, ok := spec.Programs[Program]; !ok {
				t.Fatalf("spec has no program %s", Program)
			}
			for m, n := range map[string]int{MapRoutes: len(cfg.Routes), MapNextHops: len(cfg.NextHops), MapIfconfig: len(cfg.Interfaces)} {
				if got := len(s.Maps[m].Entries); got != n {
					t.Errorf("map %s: %d entries, want %d", m, got, n)
				}
			}
			// The JSON form must round-trip.
			var buf bytes.Buffer
			if err := s.Write(&buf); err != nil {
				t.Fatal(err)
			}
			back, err := mapstate.Parse(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if err := back.Check(spec); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The route key holds the address in network order after the prefix length.
	s, err := (&Config{Interfaces: baseInterfaces(), NextHops: baseNextHops(),
		Routes: []Route{{Prefix: "10.1.2.0/24", Via: "b"}}}).State()
	if err != nil {
		t.Fatal(err)
	}
	e := s.Maps[MapRoutes].Entries[0]
	if want := []byte{24, 0, 0, 0, 10, 1, 2, 0}; !bytes.Equal(e.Key, want) {
		t.Errorf("route key %x, want %x", []byte(e.Key), want)
	}
	if want := []byte{1, 0, 0, 0, 0, 0, 0, 0}; !bytes.Equal(e.Value, want) {
		t.Errorf("route value %x, want %x", []byte(e.Value), want)
	}
}
