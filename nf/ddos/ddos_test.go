package ddos

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
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

func testConfig() *Config {
	return &Config{
		PacketsPerWindow: 5,
		Window:           "10s",
		Blocklist: []Block{
			{Source: "198.51.100.23", Reason: "scanner"},
			{Source: "192.0.2.66/32"},
			{Source: "203.0.113.0/24", Reason: "botnet"},
			{Source: "100.64.0.0/10", Reason: "42"},
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
	proto   layers.IPProtocol
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
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolUDP
	}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, FragOffset: p.fragOff,
		SrcIP: net.ParseIP(p.src).To4(), DstIP: net.IPv4(10, 0, 0, 1)}
	ls = append(ls, ip)
	switch {
	case p.fragOff != 0:
	case proto == layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: 1234, DstPort: 53}
		_ = udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, udp)
	case proto == layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, tcp)
	case proto == layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)})
	}
	ls = append(ls, gopacket.Payload("ddos-test"))
	return kerneltest.Frame(t, ls...)
}

func stats(t *testing.T, coll *ebpf.Collection) [NumStats]uint64 {
	t.Helper()
	var out [NumStats]uint64
	for i := range uint32(NumStats) {
		var per []ddosDdosCounter
		if err := coll.Maps["stats"].Lookup(i, &per); err != nil {
			t.Fatal(err)
		}
		for _, c := range per {
			out[i] += c.Packets
		}
	}
	return out
}

func srcKey(s string) []byte {
	a := netip.MustParseAddr(s).As4()
	return a[:]
}

// rateOf returns the source's rate entries, one per CPU, or nil.
func rateOf(t *testing.T, coll *ebpf.Collection, src string) []ddosDdosRate {
	t.Helper()
	var per []ddosDdosRate
	err := coll.Maps["rate"].Lookup(srcKey(src), &per)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return per
}

func monotonicNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// send runs one frame and checks the verdict, that the frame is unchanged
// and that exactly the given stat moved by one.
func send(t *testing.T, coll *ebpf.Collection, in []byte, verdict uint32, stat int) {
	t.Helper()
	before := stats(t, coll)
	res := kerneltest.Run(t, coll.Programs[Program], in)
	if res.Verdict != verdict {
		t.Fatalf("verdict %d, want %d", res.Verdict, verdict)
	}
	if !bytes.Equal(res.Out, in) {
		t.Error("the filter modified the frame")
	}
	after := stats(t, coll)
	for i := range after {
		want := before[i]
		if i == stat {
			want++
		}
		if after[i] != want {
			t.Errorf("stat %d: %d -> %d, want %d", i, before[i], after[i], want)
		}
	}
}

func TestDDoSPackets(t *testing.T) {
	kerneltest.Require(t)
	mut := func(p packet, f func([]byte) []byte) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return f(build(t, p)) }
	}
	cases := []struct {
		name    string
		pkt     packet
		raw     func(*testing.T) []byte
		verdict uint32
		stat    int
		counted string // source whose rate entry must read 1 packet
	}{
		{name: "clean udp", pkt: packet{src: "192.0.2.1"}, verdict: xdpPass, stat: StatPass, counted: "192.0.2.1"},
		{name: "clean tcp", pkt: packet{src: "192.0.2.2", proto: layers.IPProtocolTCP}, verdict: xdpPass, stat: StatPass, counted: "192.0.2.2"},
		{name: "clean icmp", pkt: packet{src: "192.0.2.3", proto: layers.IPProtocolICMPv4}, verdict: xdpPass, stat: StatPass, counted: "192.0.2.3"},
		{name: "exact block", pkt: packet{src: "198.51.100.23"}, verdict: xdpDrop, stat: StatDropBlocked},
		{name: "exact block from /32", pkt: packet{src: "192.0.2.66", proto: layers.IPProtocolTCP}, verdict: xdpDrop, stat: StatDropBlocked},
		{name: "neighbour of blocked host", pkt: packet{src: "198.51.100.24"}, verdict: xdpPass, stat: StatPass, counted: "198.51.100.24"},
		{name: "prefix block /24", pkt: packet{src: "203.0.113.200"}, verdict: xdpDrop, stat: StatDropPrefix},
		{name: "prefix block /10", pkt: packet{src: "100.127.255.1"}, verdict: xdpDrop, stat: StatDropPrefix},
		{name: "just outside /10", pkt: packet{src: "100.128.0.1"}, verdict: xdpPass, stat: StatPass, counted: "100.128.0.1"},
		{name: "vlan blocked", pkt: packet{vlans: []uint16{10}, src: "203.0.113.1"}, verdict: xdpDrop, stat: StatDropPrefix},
		{name: "qinq clean", pkt: packet{vlans: []uint16{10, 20}, src: "192.0.2.4"}, verdict: xdpPass, stat: StatPass, counted: "192.0.2.4"},
		{name: "fragment blocked", pkt: packet{src: "198.51.100.23", fragOff: 50}, verdict: xdpDrop, stat: StatDropBlocked},
		{name: "fragment counted", pkt: packet{src: "192.0.2.5", fragOff: 50}, verdict: xdpPass, stat: StatPass, counted: "192.0.2.5"},
		{name: "ipv6 passes", raw: func(t *testing.T) []byte {
			ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP("2001:db8::66"), DstIP: net.ParseIP("2001:db8::1")}
			udp := &layers.UDP{SrcPort: 1, DstPort: 2}
			_ = udp.SetNetworkLayerForChecksum(ip6)
			return kerneltest.Frame(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6}, ip6, udp)
		}, verdict: xdpPass, stat: StatPassIPv6},
		{name: "arp passes", raw: func(t *testing.T) []byte {
			return kerneltest.Frame(t, &layers.Ethernet{SrcMAC: macA, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
				&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
					Operation: layers.ARPRequest, SourceHwAddress: macA, SourceProtAddress: []byte{198, 51, 100, 23},
					DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 1}})
		}, verdict: xdpPass, stat: StatPassNonIP},
		{name: "truncated vlan", raw: func(*testing.T) []byte {
			return append(append(append([]byte{}, macB...), macA...), 0x81, 0x00, 0x00)
		}, verdict: xdpDrop, stat: StatDropMalformed},
		{name: "truncated ipv4", raw: mut(packet{src: "192.0.2.1"}, func(b []byte) []byte { return b[:14+16] }), verdict: xdpDrop, stat: StatDropMalformed},
		{name: "ihl below 5", raw: mut(packet{src: "192.0.2.1"}, func(b []byte) []byte { b[14] = 0x42; return b }), verdict: xdpDrop, stat: StatDropMalformed},
		{name: "ihl beyond packet", raw: mut(packet{src: "192.0.2.1", fragOff: 8}, func(b []byte) []byte { b[14] = 0x4f; return b[:14+30] }), verdict: xdpDrop, stat: StatDropMalformed},
		{name: "wrong ip version", raw: mut(packet{src: "192.0.2.1"}, func(b []byte) []byte { b[14] = 0x55; return b }), verdict: xdpDrop, stat: StatDropMalformed},
		{name: "truncated udp", raw: mut(packet{src: "192.0.2.1"}, func(b []byte) []byte { return b[:14+20+6] }), verdict: xdpDrop, stat: StatDropMalformed},
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
			send(t, coll, in, c.verdict, c.stat)
			var sources int
			var k [4]byte
			var v []ddosDdosRate
			for it := coll.Maps["rate"].Iterate(); it.Next(&k, &v); {
				sources++
			}
			if c.counted == "" {
				if sources != 0 {
					t.Errorf("%d sources counted, want none", sources)
				}
				return
			}
			if sources != 1 {
				t.Errorf("%d sources counted, want 1", sources)
			}
			var total uint64
			for _, r := range rateOf(t, coll, c.counted) {
				total += r.Packets
			}
			if total != 1 {
				t.Errorf("source %s counted %d packets, want 1", c.counted, total)
			}
		})
	}
}

// TestDDoSThreshold sends limit+1 packets from one source: the first limit
// pass, the last is dropped, and the rate entry holds limit+1.
func TestDDoSThreshold(t *testing.T) {
	kerneltest.Require(t)
	for _, limit := range []uint64{1, 5, 20} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			kerneltest.PinCPU(t)
			cfg := testConfig()
			cfg.PacketsPerWindow = limit
			coll := load(t, cfg)
			in := build(t, packet{src: "192.0.2.9"})
			start := monotonicNow(t)
			for range limit {
				send(t, coll, in, xdpPass, StatPass)
			}
			send(t, coll, in, xdpDrop, StatDropRate)
			send(t, coll, in, xdpDrop, StatDropRate) // still over, still counted
			per := rateOf(t, coll, "192.0.2.9")
			if per == nil {
				t.Fatal("no rate entry")
			}
			if per[0].Packets != limit+2 {
				t.Errorf("CPU 0 counted %d packets, want %d", per[0].Packets, limit+2)
			}
			if per[0].WindowStartNs < start || per[0].WindowStartNs > monotonicNow(t) {
				t.Errorf("window start %d outside the test's run", per[0].WindowStartNs)
			}
			// Another source is unaffected.
			send(t, coll, build(t, packet{src: "192.0.2.10"}), xdpPass, StatPass)
		})
	}
}

// TestDDoSWindow: a stale window restarts at the next packet; a current
// window that is full drops.
func TestDDoSWindow(t *testing.T) {
	kerneltest.Require(t)
	kerneltest.PinCPU(t)
	cfg := testConfig()
	coll := load(t, cfg)
	window := uint64(10 * time.Second)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	put := func(src string, r ddosDdosRate) {
		per := make([]ddosDdosRate, ncpu)
		for i := range per {
			per[i] = r
		}
		if err := coll.Maps["rate"].Put(srcKey(src), per); err != nil {
			t.Fatal(err)
		}
	}

	now := monotonicNow(t)
	put("192.0.2.20", ddosDdosRate{WindowStartNs: now - 2*window, Packets: 1_000_000})
	send(t, coll, build(t, packet{src: "192.0.2.20"}), xdpPass, StatPass)
	r := rateOf(t, coll, "192.0.2.20")[0]
	if r.Packets != 1 || r.WindowStartNs < now {
		t.Errorf("stale window not reset: %+v (now %d)", r, now)
	}

	put("192.0.2.21", ddosDdosRate{WindowStartNs: monotonicNow(t), Packets: cfg.PacketsPerWindow})
	send(t, coll, build(t, packet{src: "192.0.2.21"}), xdpDrop, StatDropRate)
	if r := rateOf(t, coll, "192.0.2.21")[0]; r.Packets != cfg.PacketsPerWindow+1 {
		t.Errorf("full window counted %d, want %d", r.Packets, cfg.PacketsPerWindow+1)
	}

	put("192.0.2.22", ddosDdosRate{WindowStartNs: monotonicNow(t), Packets: cfg.PacketsPerWindow - 1})
	send(t, coll, build(t, packet{src: "192.0.2.22"}), xdpPass, StatPass)
	send(t, coll, build(t, packet{src: "192.0.2.22"}), xdpDrop, StatDropRate)
}

func TestDDoSRateDisabled(t *testing.T) {
	kerneltest.Require(t)
	cfg := testConfig()
	cfg.PacketsPerWindow = 0
	coll := load(t, cfg)
	in := build(t, packet{src: "192.0.2.30"})
	for range 10 {
		send(t, coll, in, xdpPass, StatPass)
	}
	if rateOf(t, coll, "192.0.2.30") != nil {
		t.Error("rate entry written with rate limiting disabled")
	}
	send(t, coll, build(t, packet{src: "203.0.113.9"}), xdpDrop, StatDropPrefix)
}

// TestDDoSRateTableFull: with every slot taken a new source passes
// untracked, while a tracked source is still limited.
func TestDDoSRateTableFull(t *testing.T) {
	kerneltest.Require(t)
	kerneltest.PinCPU(t)
	coll := load(t, testConfig())
	m := coll.Maps["rate"]
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]uint32, 0, m.MaxEntries())
	for i := range m.MaxEntries() {
		keys = append(keys, i+1) // 1.0.0.0 upwards in memory order; none collides with the test sources
	}
	vals := make([]ddosDdosRate, len(keys)*ncpu)
	now := monotonicNow(t)
	for i := range vals {
		vals[i] = ddosDdosRate{WindowStartNs: now, Packets: 100}
	}
	if n, err := m.BatchUpdate(keys, vals, nil); err != nil || n != len(keys) {
		t.Fatalf("filling the rate table: %d of %d, %v", n, len(keys), err)
	}
	send(t, coll, build(t, packet{src: "192.0.2.40"}), xdpPass, StatUntracked)
	if rateOf(t, coll, "192.0.2.40") != nil {
		t.Error("new source tracked in a full table")
	}
	var full [4]byte
	binary.LittleEndian.PutUint32(full[:], keys[0])
	send(t, coll, build(t, packet{src: netip.AddrFrom4(full).String()}), xdpDrop, StatDropRate)
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
		{"bad window", func(c *Config) { c.Window = "soon" }, "window"},
		{"window too short", func(c *Config) { c.Window = "10us" }, "outside"},
		{"window too long", func(c *Config) { c.Window = "2h" }, "outside"},
		{"bad source", func(c *Config) { c.Blocklist[0].Source = "198.51.100" }, "blocklist[0].source"},
		{"ipv6 source", func(c *Config) { c.Blocklist[1].Source = "2001:db8::/32" }, "not an IPv4"},
		{"host bits", func(c *Config) { c.Blocklist[2].Source = "203.0.113.1/24" }, "host bits"},
		{"duplicate", func(c *Config) { c.Blocklist[1].Source = "198.51.100.23/32" }, "repeats blocklist[0]"},
		{"bad reason", func(c *Config) { c.Blocklist[0].Reason = "annoying" }, "want one of botnet, manual"},
		{"numeric reason", func(c *Config) { c.Blocklist[0].Reason = "7" }, ""},
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
	for name, want := range map[string]uint32{"blocklist": MaxBlocked, "blocklist_lpm": MaxPrefixes, "rate": MaxSources, "stats": NumStats} {
		if got := spec.Maps[name].MaxEntries; got != want {
			t.Errorf("%s holds %d entries, Go expects %d", name, got, want)
		}
	}
	if spec.Maps["rate"].Type != ebpf.PerCPUHash {
		t.Errorf("rate is a %v, want a per-CPU hash", spec.Maps["rate"].Type)
	}
	st, err := testConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Check(spec); err != nil {
		t.Fatal(err)
	}
	bl, lpm := st.Maps["blocklist"].Entries, st.Maps["blocklist_lpm"].Entries
	if len(bl) != 2 || len(lpm) != 2 {
		t.Fatalf("%d exact and %d prefix entries, want 2 and 2", len(bl), len(lpm))
	}
	if !bytes.Equal(bl[0].Key, []byte{198, 51, 100, 23}) || !bytes.Equal(bl[0].Value, []byte{2, 0, 0, 0, 0, 0, 0, 0}) {
		t.Errorf("blocklist entry %x -> %x", bl[0].Key, bl[0].Value)
	}
	if !bytes.Equal(lpm[1].Key, []byte{10, 0, 0, 0, 100, 64, 0, 0}) || !bytes.Equal(lpm[1].Value, []byte{42, 0, 0, 0, 0, 0, 0, 0}) {
		t.Errorf("blocklist_lpm entry %x -> %x", lpm[1].Key, lpm[1].Value)
	}
	if !bytes.Equal(st.Variables["rate_limit_packets"], binary.LittleEndian.AppendUint64(nil, 5)) {
		t.Errorf("rate_limit_packets %x", st.Variables["rate_limit_packets"])
	}
	if !bytes.Equal(st.Variables["rate_window_ns"], binary.LittleEndian.AppendUint64(nil, uint64(10*time.Second))) {
		t.Errorf("rate_window_ns %x", st.Variables["rate_window_ns"])
	}
}
