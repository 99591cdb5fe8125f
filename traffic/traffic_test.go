package traffic

import (
	"bytes"
	"encoding/binary"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// syntheticFlows returns n distinct UDP/TCP flows.
func syntheticFlows(n int, base byte) []Flow {
	var out []Flow
	for i := 0; i < n; i++ {
		f := Flow{
			SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
			SrcIP: netip.AddrFrom4([4]byte{10, base, byte(i >> 8), byte(i)}), DstIP: netip.MustParseAddr("192.0.2.1"),
			Proto: ProtoUDP, SrcPort: uint16(1000 + i), DstPort: 53,
		}
		if i%2 == 1 {
			f.Proto = ProtoTCP
		}
		out = append(out, f)
	}
	return out
}

func TestLocalitySkew(t *testing.T) {
	const flows, packets = 1000, 50000
	set := FlowSet{Hit: syntheticFlows(flows, 1)}
	shares := map[Locality]float64{}
	for _, tc := range []struct {
		loc      Locality
		min, max float64 // bounds on the top-10 share
	}{
		{LocalityHigh, 0.43, 0.53},
		{LocalityLow, 0.09, 0.15},
		{LocalityNone, 0.008, 0.02},
	} {
		t.Run(string(tc.loc), func(t *testing.T) {
			tr, err := Generate(set, Options{Packets: packets, Locality: tc.loc, Seed: 7})
			if err != nil {
				t.Fatal(err)
			}
			got := tr.TopShare(10)
			s, _ := tc.loc.Skew()
			want := ZipfTopShare(flows, 10, s)
			t.Logf("top-10 share %.3f, Zipf(s=%.1f) predicts %.3f", got, s, want)
			if got < tc.min || got > tc.max {
				t.Errorf("top-10 share %.3f outside [%.3f, %.3f]", got, tc.min, tc.max)
			}
			if math.Abs(got-want) > 0.03 {
				t.Errorf("top-10 share %.3f differs from the Zipf expectation %.3f by more than 0.03", got, want)
			}
			shares[tc.loc] = got
		})
	}
	if !(shares[LocalityHigh] > shares[LocalityLow] && shares[LocalityLow] > shares[LocalityNone]) {
		t.Errorf("shares not ordered high > low > none: %v", shares)
	}
}

func TestParseLocality(t *testing.T) {
	for in, want := range map[string]Locality{"high": LocalityHigh, " LOW ": LocalityLow, "None": LocalityNone} {
		got, err := ParseLocality(in)
		if err != nil || got != want {
			t.Errorf("ParseLocality(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseLocality("medium"); err == nil {
		t.Error("ParseLocality(medium) succeeded")
	}
}

func TestDeterminism(t *testing.T) {
	set := FlowSet{Hit: syntheticFlows(100, 1), Miss: syntheticFlows(20, 2)}
	opts := Options{Packets: 2000, Locality: LocalityLow, MissShare: 0.2, MalformedShare: 0.05, Seed: 42}
	a, err := Generate(set, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Generate(set, opts)
	opts.Seed = 43
	c, _ := Generate(set, opts)
	same := func(x, y *Trace) bool {
		if len(x.Frames) != len(y.Frames) {
			return false
		}
		for i := range x.Frames {
			if !bytes.Equal(x.Frames[i], y.Frames[i]) {
				return false
			}
		}
		return true
	}
	if !same(a, b) {
		t.Error("same seed gave different traces")
	}
	if same(a, c) {
		t.Error("different seeds gave the same trace")
	}
	var ba, bb bytes.Buffer
	if err := WritePcap(&ba, a.Frames); err != nil {
		t.Fatal(err)
	}
	WritePcap(&bb, b.Frames)
	if !bytes.Equal(ba.Bytes(), bb.Bytes()) {
		t.Error("pcap files of equal traces differ")
	}
}

func TestShares(t *testing.T) {
	set := FlowSet{Hit: syntheticFlows(50, 1), Miss: syntheticFlows(50, 2)}
	tr, err := Generate(set, Options{Packets: 20000, Locality: LocalityNone, MissShare: 0.3, MalformedShare: 0.1, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	var miss, bad int
	for i, f := range tr.PacketFlow {
		if tr.Malformed[i] {
			bad++
			if f >= tr.Hits {
				t.Fatalf("malformed packet %d made from miss flow %d", i, f)
			}
		} else if f >= tr.Hits {
			miss++
		}
	}
	if m := float64(miss) / 20000; math.Abs(m-0.3) > 0.02 {
		t.Errorf("miss share %.3f, want 0.3", m)
	}
	if b := float64(bad) / 20000; math.Abs(b-0.1) > 0.015 {
		t.Errorf("malformed share %.3f, want 0.1", b)
	}
}

func TestOptionsErrors(t *testing.T) {
	set := FlowSet{Hit: syntheticFlows(5, 1)}
	for _, tc := range []struct {
		name string
		set  FlowSet
		opts Options
		want string
	}{
		{"negative packets", set, Options{Packets: -1}, "packets"},
		{"bad locality", set, Options{Locality: "medium"}, "locality"},
		{"share range", set, Options{MissShare: 1.5}, "miss share"},
		{"shares sum", FlowSet{Hit: set.Hit, Miss: set.Hit}, Options{MissShare: 0.7, MalformedShare: 0.5}, "exceed"},
		{"no miss flows", set, Options{MissShare: 0.1}, "miss flows"},
		{"no hit flows", FlowSet{}, Options{}, "no hit flows"},
		{"size", set, Options{PacketSize: 10000}, "packet size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Generate(tc.set, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// checksumOK reports whether the one's complement sum of b (with pseudo
// header words pre) is 0xffff.
func checksumOK(pre uint32, b []byte) bool {
	sum := pre
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

func TestBuild(t *testing.T) {
	base := syntheticFlows(1, 9)[0]
	for _, tc := range []struct {
		name    string
		mod     func(*Flow)
		size    int
		wantLen int
	}{
		{"udp64", func(f *Flow) {}, 64, 64},
		{"tcp64", func(f *Flow) { f.Proto = ProtoTCP }, 64, 64},
		{"tcp_syn", func(f *Flow) { f.Proto, f.TCPFlags = ProtoTCP, TCPSyn }, 0, 60},
		{"vlan_udp", func(f *Flow) { f.VLAN = 100 }, 128, 128},
		{"icmp", func(f *Flow) { f.Proto = ProtoICMP }, 1500, 1500},
		{"vlan_tcp_headers", func(f *Flow) { f.VLAN = 5; f.Proto = ProtoTCP; f.TCPFlags = TCPSyn | TCPAck }, 0, 60},
		{"short_size", func(f *Flow) { f.VLAN = 5; f.Proto = ProtoTCP }, 20, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := base
			tc.mod(&f)
			b, err := Build(f, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != tc.wantLen {
				t.Fatalf("frame is %d bytes, want %d", len(b), tc.wantLen)
			}
			pkt := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
			if el := pkt.ErrorLayer(); el != nil {
				t.Fatalf("decode: %v", el.Error())
			}
			ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if ip == nil || !ip.SrcIP.Equal(f.SrcIP.AsSlice()) || !ip.DstIP.Equal(f.DstIP.AsSlice()) || uint8(ip.Protocol) != f.Proto {
				t.Fatalf("IPv4 layer %+v does not match flow %s", ip, f)
			}
			l2 := 14 + map[bool]int{true: 4}[f.VLAN != 0]
			if want := max(tc.size, f.HeaderLen()) - l2; int(ip.Length) != want {
				t.Errorf("IPv4 total length %d, want %d", ip.Length, want)
			}
			if !checksumOK(0, ip.Contents) {
				t.Error("IPv4 header checksum is wrong")
			}
			if f.VLAN != 0 {
				q, _ := pkt.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
				if q == nil || q.VLANIdentifier != f.VLAN {
					t.Errorf("VLAN tag %+v, want %d", q, f.VLAN)
				}
			}
			l4 := ip.Payload
			s, d := f.SrcIP.As4(), f.DstIP.As4()
			pseudo := uint32(binary.BigEndian.Uint16(s[:2])) + uint32(binary.BigEndian.Uint16(s[2:])) +
				uint32(binary.BigEndian.Uint16(d[:2])) + uint32(binary.BigEndian.Uint16(d[2:])) +
				uint32(f.Proto) + uint32(len(l4))
			switch f.Proto {
			case ProtoTCP:
				tcp := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
				if uint16(tcp.SrcPort) != f.SrcPort || uint16(tcp.DstPort) != f.DstPort {
					t.Errorf("TCP ports %d > %d", tcp.SrcPort, tcp.DstPort)
				}
				if tcp.SYN != (f.TCPFlags&TCPSyn != 0) || tcp.ACK != (f.TCPFlags == 0 || f.TCPFlags&TCPAck != 0) {
					t.Errorf("TCP flags SYN=%v ACK=%v for %v", tcp.SYN, tcp.ACK, f.TCPFlags)
				}
				if !checksumOK(pseudo, l4) {
					t.Error("TCP checksum is wrong")
				}
			case ProtoUDP:
				udp := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
				if uint16(udp.SrcPort) != f.SrcPort || uint16(udp.DstPort) != f.DstPort {
					t.Errorf("UDP ports %d > %d", udp.SrcPort, udp.DstPort)
				}
				if !checksumOK(pseudo, l4) {
					t.Error("UDP checksum is wrong")
				}
			case ProtoICMP:
				if !checksumOK(0, l4) {
					t.Error("ICMP checksum is wrong")
				}
			}
		})
	}
	for name, f := range map[string]Flow{
		"short mac": {SrcMAC: net.HardwareAddr{1}, DstMAC: base.DstMAC, SrcIP: base.SrcIP, DstIP: base.DstIP, Proto: ProtoUDP},
		"ipv6":      {SrcMAC: base.SrcMAC, DstMAC: base.DstMAC, SrcIP: netip.MustParseAddr("::1"), DstIP: base.DstIP, Proto: ProtoUDP},
		"proto":     {SrcMAC: base.SrcMAC, DstMAC: base.DstMAC, SrcIP: base.SrcIP, DstIP: base.DstIP, Proto: 47},
		"vlan":      {SrcMAC: base.SrcMAC, DstMAC: base.DstMAC, SrcIP: base.SrcIP, DstIP: base.DstIP, Proto: ProtoUDP, VLAN: 4095},
	} {
		if _, err := Build(f, 64); err == nil {
			t.Errorf("Build(%s) succeeded", name)
		}
	}
}

func TestBuildMalformed(t *testing.T) {
	f := syntheticFlows(1, 3)[0]
	f.VLAN = 7
	for _, tc := range []struct {
		kind  MalformedKind
		check func([]byte) bool
	}{
		{MalformedTruncated, func(b []byte) bool { return len(b) < 18+20 }},
		{MalformedIHL, func(b []byte) bool { return b[18]&0xf < 5 && checksumOK(0, b[18:38]) }},
		{MalformedTotalLength, func(b []byte) bool {
			return binary.BigEndian.Uint16(b[20:]) < 20 && checksumOK(0, b[18:38])
		}},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			b, err := BuildMalformed(f, 64, tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(b) {
				t.Errorf("frame % x is not %s", b, tc.kind)
			}
		})
	}
	if _, err := BuildMalformed(f, 64, numMalformedKinds); err == nil {
		t.Error("unknown kind accepted")
	}
}

func TestPcapRoundTrip(t *testing.T) {
	tr, err := Generate(FlowSet{Hit: syntheticFlows(30, 1)}, Options{Packets: 500, PacketSize: 100, MalformedShare: 0.1, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "trace.pcap")
	if err := WritePcapFile(path, tr.Frames); err != nil {
		t.Fatal(err)
	}
	got, err := ReadPcapFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(tr.Frames) {
		t.Fatalf("read %d frames, wrote %d", len(got), len(tr.Frames))
	}
	for i := range got {
		if !bytes.Equal(got[i], tr.Frames[i]) {
			t.Fatalf("frame %d differs after the round trip", i)
		}
	}

	raw, _ := os.ReadFile(path)
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"garbage", []byte("this is not a pcap file at all"), "not a pcap"},
		{"empty", nil, "not a pcap"},
		{"truncated", raw[:len(raw)-10], "truncated"},
		{"linktype", func() []byte {
			b := append([]byte(nil), raw...)
			binary.LittleEndian.PutUint32(b[20:], uint32(layers.LinkTypeRaw))
			return b
		}(), "link type"},
		{"snaplen", func() []byte {
			var buf bytes.Buffer
			WritePcap(&buf, [][]byte{make([]byte, 60)})
			b := buf.Bytes()
			binary.LittleEndian.PutUint32(b[24+12:], 1000) // original length
			return b
		}(), "captured 60 of 1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), tc.name+".pcap")
			os.WriteFile(p, tc.data, 0o644)
			_, err := ReadPcapFile(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("error %v, want one naming the file and %q", err, tc.want)
			}
		})
	}
	if _, err := ReadPcapFile(filepath.Join(t.TempDir(), "missing.pcap")); err == nil {
		t.Error("reading a missing file succeeded")
	}
}
