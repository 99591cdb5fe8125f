package lb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
)

const (
	xdpDrop = 1
	xdpPass = 2
	xdpTX   = 3
)

var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	lbMAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	gwMAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
)

// testConfig has a TCP VIP with three backends, a UDP VIP that hashes
// without the source port and bypasses the connection table, and an
// all-ports TCP VIP with a single backend.
func testConfig() *Config {
	return &Config{
		LocalIP:    "172.16.0.1",
		GatewayMAC: gwMAC.String(),
		VIPs: []VIP{
			{Address: "10.0.0.10", Port: 80, Protocol: "tcp", Backends: []Backend{
				{Address: "172.16.1.1"}, {Address: "172.16.1.2"}, {Address: "172.16.1.3", Weight: 2},
			}},
			{Address: "10.0.0.53", Port: 53, Protocol: "udp", HashNoSrcPort: true, LRUBypass: true, Backends: []Backend{
				{Address: "172.16.2.1"}, {Address: "172.16.2.2"},
			}},
			{Address: "10.0.0.20", Port: 0, Protocol: "tcp", Backends: []Backend{{Address: "172.16.3.1"}}},
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

// packet describes a test frame; build serializes it with valid lengths
// and checksums.
type packet struct {
	vlans   []uint16
	src     string
	dst     string
	proto   layers.IPProtocol
	sport   uint16
	dport   uint16
	syn     bool
	ack     bool
	icmp    layers.ICMPv4TypeCode
	flags   layers.IPv4Flag
	fragOff uint16
	options []layers.IPv4Option
	payload []byte
}

func build(t testing.TB, p packet) []byte {
	t.Helper()
	var ls []gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: layers.EthernetTypeIPv4}
	ls = append(ls, eth)
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
	ip := &layers.IPv4{
		Version: 4, IHL: 5, TTL: 64, TOS: 0x10, Id: 0x1234, Protocol: p.proto,
		SrcIP: net.ParseIP(p.src).To4(), DstIP: net.ParseIP(p.dst).To4(),
		Flags: p.flags, FragOffset: p.fragOff, Options: p.options,
	}
	ls = append(ls, ip)
	switch p.proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), SYN: p.syn, ACK: p.ack, Seq: 1000, Window: 512}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, tcp)
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, udp)
	case layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{TypeCode: p.icmp, Id: 7, Seq: 1})
	}
	payload := p.payload
	if payload == nil {
		payload = []byte("morpheus-payload")
	}
	ls = append(ls, gopacket.Payload(payload))
	return kerneltest.Frame(t, ls...)
}

// csumOK reports whether an Internet checksum over b verifies.
func csumOK(b []byte) bool {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

func rot(x uint32, k uint) uint32 { return x<<k | x>>(32-k) }

// flowHash mirrors lb_hash in bpf/lb.c.
func flowHash(saddr, daddr, ports, proto uint32) uint32 {
	a := saddr + 0xdeadbeef + proto
	b := daddr + 0xdeadbeef + proto
	c := ports + 0xdeadbeef + proto
	c ^= b
	c -= rot(b, 14)
	a ^= c
	a -= rot(c, 11)
	b ^= a
	b -= rot(a, 25)
	c ^= b
	c -= rot(b, 16)
	a ^= c
	a -= rot(c, 4)
	b ^= a
	b -= rot(a, 14)
	c ^= b
	c -= rot(b, 24)
	return c
}

func addrRaw(s string) uint32 { return be32(netip.MustParseAddr(s)) }

// expectedBackend predicts the backend a new flow hashes to, reading the
// ring from the kernel map.
func expectedBackend(t *testing.T, coll *ebpf.Collection, vipIndex int, p packet, noSrcPort bool) netip.Addr {
	t.Helper()
	ports := uint32(be16(p.sport))<<16 | uint32(be16(p.dport))
	if noSrcPort {
		ports = uint32(be16(p.dport))
	}
	h := flowHash(addrRaw(p.src), addrRaw(p.dst), ports, uint32(p.proto))
	slot := uint32(vipIndex*RingSize) + h%RingSize
	var idx uint32
	if err := coll.Maps["ring"].Lookup(slot, &idx); err != nil {
		t.Fatalf("ring[%d]: %v", slot, err)
	}
	return backendAddr(t, coll, idx)
}

func backendAddr(t *testing.T, coll *ebpf.Collection, idx uint32) netip.Addr {
	t.Helper()
	var b lbBackend
	if err := coll.Maps["backends"].Lookup(idx, &b); err != nil {
		t.Fatalf("backends[%d]: %v", idx, err)
	}
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], b.Addr)
	return netip.AddrFrom4(a)
}

func stats(t *testing.T, coll *ebpf.Collection) [NumStats]uint64 {
	t.Helper()
	var out [NumStats]uint64
	for i := range uint32(NumStats) {
		var per []lbLbCounter
		if err := coll.Maps["stats"].Lookup(i, &per); err != nil {
			t.Fatal(err)
		}
		for _, c := range per {
			out[i] += c.Packets
		}
	}
	return out
}

func flowKeyOf(p packet) lbFlowKey {
	return lbFlowKey{
		Saddr: addrRaw(p.src), Daddr: addrRaw(p.dst),
		Sport: be16(p.sport), Dport: be16(p.dport), Proto: uint8(p.proto),
	}
}

func connBackend(t *testing.T, coll *ebpf.Collection, p packet) (uint32, bool) {
	t.Helper()
	k := flowKeyOf(p)
	var c lbConn
	err := coll.Maps["conns"].Lookup(&k, &c)
	if err != nil {
		return 0, false
	}
	return c.Backend, true
}

// checkEncap verifies an IP-in-IP frame: L2 copied with the gateway as
// destination, a correct outer header, and the inner packet unchanged.
func checkEncap(t *testing.T, in, out []byte, l2len int, backend netip.Addr) {
	t.Helper()
	if len(out) != len(in)+20 {
		t.Fatalf("output is %d bytes, want %d", len(out), len(in)+20)
	}
	if !bytes.Equal(out[0:6], gwMAC) || !bytes.Equal(out[6:12], lbMAC) {
		t.Errorf("MACs dst %x src %x, want dst %x src %x", out[0:6], out[6:12], gwMAC, lbMAC)
	}
	if !bytes.Equal(out[12:l2len], in[12:l2len]) {
		t.Errorf("L2 after MACs %x, want %x", out[12:l2len], in[12:l2len])
	}
	outer := out[l2len : l2len+20]
	if !csumOK(outer) {
		t.Errorf("outer IPv4 checksum does not verify: %x", outer)
	}
	var ip layers.IPv4
	if err := ip.DecodeFromBytes(out[l2len:], gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	inner := in[l2len:]
	if ip.Version != 4 || ip.IHL != 5 || ip.Protocol != layers.IPProtocolIPv4 || ip.TTL != 64 ||
		ip.Flags != layers.IPv4DontFragment || ip.FragOffset != 0 || ip.TOS != inner[1] {
		t.Errorf("outer header fields: %+v", ip)
	}
	if want := binary.BigEndian.Uint16(inner[2:4]) + 20; ip.Length != want {
		t.Errorf("outer tot_len %d, want %d", ip.Length, want)
	}
	if got := ip.SrcIP.String(); got != "172.16.0.1" {
		t.Errorf("outer source %s, want 172.16.0.1", got)
	}
	if got := ip.DstIP.String(); got != backend.String() {
		t.Errorf("outer destination %s, want backend %s", got, backend)
	}
	if !bytes.Equal(out[l2len+20:], inner) {
		t.Errorf("inner packet changed:\n got %x\nwant %x", out[l2len+20:], inner)
	}
}

func TestLBPackets(t *testing.T) {
	kerneltest.Require(t)
	coll := load(t, testConfig())
	prog := coll.Programs[Program]

	tcpVIP := packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 40000, dport: 80, syn: true}
	withIP := func(p packet, mut func([]byte)) func(*testing.T) []byte {
		return func(t *testing.T) []byte {
			b := build(t, p)
			mut(b)
			return b
		}
	}
	tcp := func(p packet, ack bool, sport uint16) packet { p.syn, p.ack, p.sport = !ack, ack, sport; return p }

	cases := []struct {
		name string
		pkt  packet
		raw  func(*testing.T) []byte // overrides pkt
		// verdict and the stats counter it must bump.
		verdict uint32
		stat    int
		// encap: vip index (or -1) whose ring the backend comes from.
		vip       int
		noSrcPort bool
		fixed     string // expected backend for single-backend VIPs
		l2len     int
		conn      bool // a conns entry must exist afterwards
		noConn    bool // no conns entry may exist afterwards
	}{
		{name: "tcp syn to vip", pkt: tcpVIP, verdict: xdpTX, stat: StatTX, vip: 0, l2len: 14, conn: true},
		{name: "tcp ack new flow", pkt: tcp(tcpVIP, true, 40001), verdict: xdpTX, stat: StatTX, vip: 0, l2len: 14, conn: true},
		{name: "tcp other client", pkt: packet{src: "198.51.100.20", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 5555, dport: 80, syn: true}, verdict: xdpTX, stat: StatTX, vip: 0, l2len: 14, conn: true},
		{name: "udp vip lru bypass", pkt: packet{src: "192.0.2.8", dst: "10.0.0.53", proto: layers.IPProtocolUDP, sport: 3333, dport: 53}, verdict: xdpTX, stat: StatTX, vip: 1, noSrcPort: true, l2len: 14, noConn: true},
		{name: "all ports vip", pkt: packet{src: "192.0.2.9", dst: "10.0.0.20", proto: layers.IPProtocolTCP, sport: 1234, dport: 8443, ack: true}, verdict: xdpTX, stat: StatTX, vip: -1, fixed: "172.16.3.1", l2len: 14, conn: true},
		{name: "ip options kept inside", pkt: packet{src: "192.0.2.10", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 999, dport: 80, syn: true,
			options: []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}}, verdict: xdpTX, stat: StatTX, vip: 0, l2len: 14, conn: true},
		{name: "vlan tagged", pkt: packet{vlans: []uint16{100}, src: "192.0.2.11", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 2000, dport: 80, syn: true}, verdict: xdpTX, stat: StatTX, vip: 0, l2len: 18, conn: true},
		{name: "qinq tagged", pkt: packet{vlans: []uint16{100, 200}, src: "192.0.2.12", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 2001, dport: 80, syn: true}, verdict: xdpTX, stat: StatTX, vip: 0, l2len: 22, conn: true},
		{name: "unknown port", pkt: packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 40000, dport: 81, syn: true}, verdict: xdpPass, stat: StatPass, noConn: true},
		{name: "wrong protocol for vip", pkt: packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolUDP, sport: 40000, dport: 80}, verdict: xdpPass, stat: StatPass, noConn: true},
		{name: "non-vip destination", pkt: packet{src: "192.0.2.7", dst: "10.0.0.11", proto: layers.IPProtocolTCP, sport: 40000, dport: 80, syn: true}, verdict: xdpPass, stat: StatPass, noConn: true},
		{name: "gre to vip address", pkt: packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolGRE}, verdict: xdpPass, stat: StatPass},
		{name: "icmp echo to non-vip", pkt: packet{src: "192.0.2.7", dst: "10.0.0.99", proto: layers.IPProtocolICMPv4, icmp: layers.CreateICMPv4TypeCode(8, 0)}, verdict: xdpPass, stat: StatPass},
		{name: "icmp unreachable to vip", pkt: packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolICMPv4, icmp: layers.CreateICMPv4TypeCode(3, 4)}, verdict: xdpPass, stat: StatPass},
		{name: "first fragment to vip", pkt: packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 40000, dport: 80, flags: layers.IPv4MoreFragments}, verdict: xdpDrop, stat: StatDropFragment},
		{name: "later fragment to vip", pkt: packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolUDP, fragOff: 185}, verdict: xdpDrop, stat: StatDropFragment},
		{name: "fragment to non-vip", pkt: packet{src: "192.0.2.7", dst: "10.9.9.9", proto: layers.IPProtocolUDP, fragOff: 185}, verdict: xdpPass, stat: StatPass},
		{name: "arp", raw: func(t *testing.T) []byte {
			return kerneltest.Frame(t, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
				&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
					Operation: layers.ARPRequest, SourceHwAddress: clientMAC, SourceProtAddress: []byte{192, 0, 2, 7},
					DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 10}})
		}, verdict: xdpPass, stat: StatPass},
		{name: "ipv6", raw: func(t *testing.T) []byte {
			ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::10")}
			udp := &layers.UDP{SrcPort: 1, DstPort: 80}
			_ = udp.SetNetworkLayerForChecksum(ip6)
			return kerneltest.Frame(t, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: layers.EthernetTypeIPv6}, ip6, udp, gopacket.Payload("x"))
		}, verdict: xdpPass, stat: StatPass},
		{name: "truncated vlan header", raw: func(*testing.T) []byte {
			return append(append(append([]byte{}, lbMAC...), clientMAC...), 0x81, 0x00, 0x00)
		}, verdict: xdpDrop, stat: StatDropMalformed},
		{name: "truncated ipv4 header", raw: func(t *testing.T) []byte { return build(t, tcpVIP)[:14+12] }, verdict: xdpDrop, stat: StatDropMalformed},
		{name: "ihl below 5", raw: withIP(tcpVIP, func(b []byte) { b[14] = 0x44 }), verdict: xdpDrop, stat: StatDropMalformed},
		{name: "ihl beyond packet", raw: func(t *testing.T) []byte {
			b := build(t, packet{src: "192.0.2.7", dst: "10.0.0.10", proto: layers.IPProtocolGRE, payload: []byte{}})
			b[14] = 0x4f
			return b
		}, verdict: xdpDrop, stat: StatDropMalformed},
		{name: "ip version 6 in ipv4 frame", raw: withIP(tcpVIP, func(b []byte) { b[14] = 0x65 }), verdict: xdpDrop, stat: StatDropMalformed},
		{name: "truncated tcp header", raw: func(t *testing.T) []byte { return build(t, tcpVIP)[:14+20+10] }, verdict: xdpDrop, stat: StatDropMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var in []byte
			if c.raw != nil {
				in = c.raw(t)
			} else {
				in = build(t, c.pkt)
			}
			var want netip.Addr
			if c.verdict == xdpTX {
				if c.fixed != "" {
					want = netip.MustParseAddr(c.fixed)
				} else {
					want = expectedBackend(t, coll, c.vip, c.pkt, c.noSrcPort)
				}
			}
			before := stats(t, coll)
			res := kerneltest.Run(t, prog, in)
			if res.Verdict != c.verdict {
				t.Fatalf("verdict %d, want %d", res.Verdict, c.verdict)
			}
			after := stats(t, coll)
			if after[c.stat] != before[c.stat]+1 {
				t.Errorf("stat %d went %d -> %d, want +1", c.stat, before[c.stat], after[c.stat])
			}
			switch c.verdict {
			case xdpTX:
				checkEncap(t, in, res.Out, c.l2len, want)
			default:
				if !bytes.Equal(res.Out, in) {
					t.Errorf("packet modified on verdict %d", c.verdict)
				}
			}
			if c.raw == nil {
				idx, ok := connBackend(t, coll, c.pkt)
				if c.conn {
					if !ok {
						t.Fatal("no conns entry written")
					}
					if got := backendAddr(t, coll, idx); got != want {
						t.Errorf("conns entry points at %s, want %s", got, want)
					}
				}
				if c.noConn && ok {
					t.Errorf("unexpected conns entry (backend %d)", idx)
				}
			}
		})
	}
}

func TestLBICMPEcho(t *testing.T) {
	kerneltest.Require(t)
	coll := load(t, testConfig())
	in := build(t, packet{src: "192.0.2.7", dst: "10.0.0.53", proto: layers.IPProtocolICMPv4, icmp: layers.CreateICMPv4TypeCode(8, 0)})
	before := stats(t, coll)
	res := kerneltest.Run(t, coll.Programs[Program], in)
	if res.Verdict != xdpTX {
		t.Fatalf("verdict %d, want XDP_TX", res.Verdict)
	}
	if after := stats(t, coll); after[StatICMPEcho] != before[StatICMPEcho]+1 {
		t.Error("echo counter not bumped")
	}
	out := res.Out
	if len(out) != len(in) {
		t.Fatalf("length %d, want %d", len(out), len(in))
	}
	if !bytes.Equal(out[0:6], clientMAC) || !bytes.Equal(out[6:12], lbMAC) {
		t.Errorf("MACs not swapped: %x", out[0:12])
	}
	if !bytes.Equal(out[26:30], in[30:34]) || !bytes.Equal(out[30:34], in[26:30]) {
		t.Errorf("addresses not swapped")
	}
	if !csumOK(out[14:34]) {
		t.Error("IP checksum broken")
	}
	if out[34] != 0 || out[35] != 0 {
		t.Errorf("ICMP type/code %d/%d, want 0/0", out[34], out[35])
	}
	if !csumOK(out[34:]) {
		t.Error("ICMP checksum broken")
	}
	if !bytes.Equal(out[36+2:], in[36+2:]) {
		t.Error("ICMP body changed")
	}
}

// TestLBStickiness checks that an established flow keeps its backend when
// the ring changes, that a SYN re-hashes onto the new ring, and that a
// flow whose backend disappears is re-picked.
func TestLBStickiness(t *testing.T) {
	kerneltest.Require(t)
	coll := load(t, testConfig())
	prog := coll.Programs[Program]
	flow := packet{src: "192.0.2.50", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 50000, dport: 80, ack: true}
	in := build(t, flow)

	first := kerneltest.Run(t, prog, in)
	if first.Verdict != xdpTX {
		t.Fatalf("verdict %d", first.Verdict)
	}
	orig, ok := connBackend(t, coll, flow)
	if !ok {
		t.Fatal("no conns entry")
	}
	// Point the whole slice of VIP 0 at another backend.
	other := uint32(1)
	if orig == 1 {
		other = 2
	}
	for s := range uint32(RingSize) {
		if err := coll.Maps["ring"].Put(s, other); err != nil {
			t.Fatal(err)
		}
	}
	before := stats(t, coll)
	res := kerneltest.Run(t, prog, in)
	if res.Verdict != xdpTX {
		t.Fatalf("verdict %d", res.Verdict)
	}
	checkEncap(t, in, res.Out, 14, backendAddr(t, coll, orig))
	if after := stats(t, coll); after[StatConnHit] != before[StatConnHit]+1 {
		t.Error("conn hit not counted")
	}

	// A SYN of the same 5-tuple is a new connection: it takes the ring.
	syn := flow
	syn.syn, syn.ack = true, false
	res = kerneltest.Run(t, prog, build(t, syn))
	if res.Verdict != xdpTX {
		t.Fatalf("syn verdict %d", res.Verdict)
	}
	if got, _ := connBackend(t, coll, flow); got != other {
		t.Errorf("after SYN conns points at %d, want %d", got, other)
	}
	checkEncap(t, build(t, syn), res.Out, 14, backendAddr(t, coll, other))

	// Remove the flow's backend: the flow is re-hashed onto the ring.
	for s := range uint32(RingSize) {
		if err := coll.Maps["ring"].Put(s, orig); err != nil {
			t.Fatal(err)
		}
	}
	if err := coll.Maps["backends"].Put(other, lbBackend{}); err != nil {
		t.Fatal(err)
	}
	res = kerneltest.Run(t, prog, in)
	if res.Verdict != xdpTX {
		t.Fatalf("verdict %d", res.Verdict)
	}
	checkEncap(t, in, res.Out, 14, backendAddr(t, coll, orig))
	if got, _ := connBackend(t, coll, flow); got != orig {
		t.Errorf("conns points at %d, want re-picked %d", got, orig)
	}

	// A ring slot without a backend drops.
	for s := range uint32(RingSize) {
		if err := coll.Maps["ring"].Put(s, uint32(0)); err != nil {
			t.Fatal(err)
		}
	}
	fresh := packet{src: "192.0.2.51", dst: "10.0.0.10", proto: layers.IPProtocolTCP, sport: 1, dport: 80, syn: true}
	before = stats(t, coll)
	if res := kerneltest.Run(t, prog, build(t, fresh)); res.Verdict != xdpDrop {
		t.Errorf("verdict %d with an empty ring, want XDP_DROP", res.Verdict)
	}
	if after := stats(t, coll); after[StatDropNoBackend] != before[StatDropNoBackend]+1 {
		t.Error("no-backend drop not counted")
	}
}

// TestLBHashNoSrcPort: with the flag, all source ports of a client land on
// one backend; the VIP bypasses the connection table.
func TestLBHashNoSrcPort(t *testing.T) {
	kerneltest.Require(t)
	coll := load(t, testConfig())
	var first string
	for sport := uint16(1000); sport < 1032; sport++ {
		in := build(t, packet{src: "192.0.2.77", dst: "10.0.0.53", proto: layers.IPProtocolUDP, sport: sport, dport: 53})
		res := kerneltest.Run(t, coll.Programs[Program], in)
		if res.Verdict != xdpTX {
			t.Fatalf("verdict %d", res.Verdict)
		}
		dst := net.IP(res.Out[30:34]).String()
		if first == "" {
			first = dst
		} else if dst != first {
			t.Fatalf("source port %d went to %s, earlier ports to %s", sport, dst, first)
		}
	}
	var k lbFlowKey
	var v lbConn
	if coll.Maps["conns"].Iterate().Next(&k, &v) {
		t.Errorf("conns written for an LRU-bypass VIP: %+v", k)
	}
}

// TestLBSingleVIP spreads 64 flows of one VIP over its four backends, each
// flow where the ring says and pinned in the connection table.
func TestLBSingleVIP(t *testing.T) {
	kerneltest.Require(t)
	cfg := &Config{LocalIP: "172.16.0.1", GatewayMAC: gwMAC.String(), VIPs: []VIP{{
		Address: "10.0.0.100", Port: 443, Protocol: "tcp",
		Backends: []Backend{{Address: "172.16.9.1"}, {Address: "172.16.9.2"}, {Address: "172.16.9.3"}, {Address: "172.16.9.4"}},
	}}}
	coll := load(t, cfg)
	used := map[netip.Addr]int{}
	for f := range 64 {
		p := packet{src: fmt.Sprintf("198.18.0.%d", f+1), dst: "10.0.0.100", proto: layers.IPProtocolTCP, sport: uint16(20000 + 7*f), dport: 443, syn: true}
		in := build(t, p)
		want := expectedBackend(t, coll, 0, p, false)
		res := kerneltest.Run(t, coll.Programs[Program], in)
		if res.Verdict != xdpTX {
			t.Fatalf("flow %d: verdict %d", f, res.Verdict)
		}
		checkEncap(t, in, res.Out, 14, want)
		idx, ok := connBackend(t, coll, p)
		if !ok || backendAddr(t, coll, idx) != want {
			t.Fatalf("flow %d: conns entry %d (%v), want backend %s", f, idx, ok, want)
		}
		used[want]++
	}
	if len(used) != 4 {
		t.Errorf("64 flows used %d of 4 backends: %v", len(used), used)
	}
	for b, n := range used {
		if n < 4 {
			t.Errorf("backend %s got only %d of 64 flows", b, n)
		}
	}
}

// TestLB64VIPs loads 64 VIPs with four backends each and checks every VIP
// sends its flows to its own backends, as the ring predicts.
func TestLB64VIPs(t *testing.T) {
	kerneltest.Require(t)
	cfg := &Config{LocalIP: "172.16.0.1", GatewayMAC: gwMAC.String()}
	for v := range 64 {
		vip := VIP{Address: fmt.Sprintf("10.1.%d.%d", v/16, v%16+1), Port: uint16(443 + v%3), Protocol: "tcp"}
		for b := range 4 {
			vip.Backends = append(vip.Backends, Backend{Address: fmt.Sprintf("172.20.%d.%d", v, b+1)})
		}
		cfg.VIPs = append(cfg.VIPs, vip)
	}
	coll := load(t, cfg)
	prog := coll.Programs[Program]
	for v, vip := range cfg.VIPs {
		used := map[string]bool{}
		for f := range 8 {
			p := packet{src: fmt.Sprintf("198.18.%d.%d", v, f+1), dst: vip.Address, proto: layers.IPProtocolTCP, sport: uint16(30000 + f), dport: vip.Port, syn: true}
			in := build(t, p)
			want := expectedBackend(t, coll, v, p, false)
			res := kerneltest.Run(t, prog, in)
			if res.Verdict != xdpTX {
				t.Fatalf("vip %d flow %d: verdict %d", v, f, res.Verdict)
			}
			checkEncap(t, in, res.Out, 14, want)
			if !strings.HasPrefix(want.String(), fmt.Sprintf("172.20.%d.", v)) {
				t.Fatalf("vip %d sent to %s, not one of its backends", v, want)
			}
			used[want.String()] = true
		}
		if len(used) < 2 {
			t.Errorf("vip %d: 8 flows all went to %v", v, used)
		}
	}
}

func TestMaglev(t *testing.T) {
	mk := func(ws ...uint32) []member {
		var ms []member
		for i, w := range ws {
			ms = append(ms, member{index: uint32(i + 1), addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), weight: w})
		}
		return ms
	}
	cases := []struct {
		name    string
		weights []uint32
	}{
		{"one", []uint32{1}},
		{"equal", []uint32{1, 1, 1, 1, 1}},
		{"weighted", []uint32{1, 2, 3}},
		{"heavy skew", []uint32{1, 100}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			table := maglev(mk(c.weights...), RingSize)
			count := map[uint32]int{}
			for _, b := range table {
				if b == 0 {
					t.Fatal("empty slot")
				}
				count[b]++
			}
			var total uint32
			for _, w := range c.weights {
				total += w
			}
			for i, w := range c.weights {
				want := float64(RingSize) * float64(w) / float64(total)
				got := float64(count[uint32(i+1)])
				if got < want*0.9-2 || got > want*1.1+2 {
					t.Errorf("backend %d (weight %d): %v slots, want about %.0f", i+1, w, got, want)
				}
			}
		})
	}
	// Removing one of five backends moves few slots of the others.
	all := mk(1, 1, 1, 1, 1)
	before := maglev(all, RingSize)
	after := maglev(append(append([]member{}, all[:2]...), all[3:]...), RingSize)
	moved := 0
	for i := range before {
		if before[i] != 3 && before[i] != after[i] {
			moved++
		}
	}
	if moved > RingSize/10 {
		t.Errorf("%d of the surviving slots moved on removing a backend", moved)
	}
}

func TestConfigValidate(t *testing.T) {
	base := testConfig
	cases := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"ok", func(*Config) {}, ""},
		{"example", func(c *Config) { *c = *ExampleConfig() }, ""},
		{"bad local ip", func(c *Config) { c.LocalIP = "1.2.3" }, "local_ip"},
		{"ipv6 local ip", func(c *Config) { c.LocalIP = "2001:db8::1" }, "not an IPv4"},
		{"zero local ip", func(c *Config) { c.LocalIP = "0.0.0.0" }, "unspecified"},
		{"bad mac", func(c *Config) { c.GatewayMAC = "zz" }, "gateway_mac"},
		{"multicast mac", func(c *Config) { c.GatewayMAC = "01:00:5e:00:00:01" }, "unicast"},
		{"no vips", func(c *Config) { c.VIPs = nil }, "at least one VIP"},
		{"bad protocol", func(c *Config) { c.VIPs[0].Protocol = "sctp" }, "want tcp or udp"},
		{"bad vip address", func(c *Config) { c.VIPs[1].Address = "10.0.0" }, "vips[1].address"},
		{"duplicate vip", func(c *Config) { c.VIPs[1] = c.VIPs[0] }, "duplicates vips[0]"},
		{"no backends", func(c *Config) { c.VIPs[2].Backends = nil }, "at least one backend"},
		{"bad backend", func(c *Config) { c.VIPs[0].Backends[1].Address = "x" }, "vips[0].backends[1].address"},
		{"duplicate backend", func(c *Config) { c.VIPs[0].Backends[1] = c.VIPs[0].Backends[0] }, "listed twice"},
		{"weight too high", func(c *Config) { c.VIPs[0].Backends[0].Weight = MaxWeight + 1 }, "weight"},
		{"too many vips", func(c *Config) {
			for i := range MaxVIPs {
				c.VIPs = append(c.VIPs, VIP{Address: fmt.Sprintf("10.2.%d.%d", i/200, i%200+1), Port: 1, Protocol: "tcp", Backends: []Backend{{Address: "1.1.1.1"}}})
			}
		}, "at most 256"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := base()
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
			if _, err := cfg.State(); err == nil {
				t.Error("State accepted an invalid config")
			}
		})
	}
}

func TestState(t *testing.T) {
	spec, err := Spec()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps["ring"].MaxEntries; got != MaxVIPs*RingSize {
		t.Errorf("ring holds %d entries, Go expects %d", got, MaxVIPs*RingSize)
	}
	if got := spec.Maps["backends"].MaxEntries; got != MaxBackends {
		t.Errorf("backends holds %d entries, Go expects %d", got, MaxBackends)
	}
	if got := spec.Maps["stats"].MaxEntries; got != NumStats {
		t.Errorf("stats holds %d entries, Go expects %d", got, NumStats)
	}
	st, err := testConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Check(spec); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{"vips": 3 + 3, "backends": 6, "ring": 3 * RingSize}
	for name, want := range counts {
		if got := len(st.Maps[name].Entries); got != want {
			t.Errorf("%s: %d entries, want %d", name, got, want)
		}
	}
	if !bytes.Equal(st.Variables["local_ip"], []byte{172, 16, 0, 1}) {
		t.Errorf("local_ip %x", st.Variables["local_ip"])
	}
	if !bytes.Equal(st.Variables["gateway_mac"], gwMAC) {
		t.Errorf("gateway_mac %x", st.Variables["gateway_mac"])
	}
	// The first VIP key: 10.0.0.10, port 80 big-endian, TCP, pad.
	wantKey := []byte{10, 0, 0, 10, 0, 80, 6, 0}
	found := false
	for _, e := range st.Maps["vips"].Entries {
		if bytes.Equal(e.Key, wantKey) {
			found = true
			if !bytes.Equal(e.Value, []byte{0, 0, 0, 0, 0, 0, 0, 0}) {
				t.Errorf("vip value %x", e.Value)
			}
		}
	}
	if !found {
		t.Error("VIP key 10.0.0.10:80/tcp not in the state")
	}
	// The state survives a JSON round trip unchanged.
	var buf bytes.Buffer
	if err := st.Write(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := mapstate.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Check(spec); err != nil {
		t.Fatal(err)
	}
}
