// Package traffic generates deterministic packet traces for benchmarking and
// profiling XDP network functions, and reads and writes them as pcap files.
//
// A trace is a sequence of Ethernet frames drawn from a set of flows. Flow
// popularity follows a Zipf law whose skew is set by a Locality preset, as
// in the Morpheus evaluation (traces of high, low and no locality): the
// flow of rank k (1-based) is chosen with probability proportional to
// 1/k^s. A share of the packets can come from "miss" flows (flows that do
// not match the NF's configuration) and a share can be malformed.
//
// The per-NF generators (RouterFlows, LBFlows, FirewallFlows, DDoSFlows,
// L2SwitchFlows) derive flows from an NF's typed configuration, and the
// config generators (RouterConfig, FirewallConfig, LBConfig,
// L2SwitchConfig, DDoSConfig) build configurations of the sizes the seed
// evaluated. Everything is a pure function of its inputs and seed.
package traffic

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Locality is a preset of flow popularity skew.
type Locality string

// The locality presets. The skew s is the Zipf exponent: the flow of rank
// k gets a share proportional to 1/k^s.
const (
	// LocalityHigh is s = 1.1: with 1,000 flows the 10 most popular carry
	// 48% of the packets and the 100 most popular 77%.
	LocalityHigh Locality = "high"
	// LocalityLow is s = 0.6: with 1,000 flows the 10 most popular carry
	// 12% of the packets and the 100 most popular 37%.
	LocalityLow Locality = "low"
	// LocalityNone is s = 0: every flow is equally likely (with 1,000
	// flows the 10 most popular carry 1%).
	LocalityNone Locality = "none"
)

// Localities lists the presets in decreasing skew.
var Localities = []Locality{LocalityHigh, LocalityLow, LocalityNone}

// Skew returns the Zipf exponent of the preset.
func (l Locality) Skew() (float64, error) {
	switch l {
	case LocalityHigh:
		return 1.1, nil
	case LocalityLow:
		return 0.6, nil
	case LocalityNone:
		return 0, nil
	}
	return 0, fmt.Errorf("traffic: unknown locality %q (want high, low or none)", string(l))
}

// ParseLocality parses a preset name, case-insensitively.
func ParseLocality(s string) (Locality, error) {
	l := Locality(strings.ToLower(strings.TrimSpace(s)))
	if _, err := l.Skew(); err != nil {
		return "", err
	}
	return l, nil
}

// IP protocol numbers a Flow may carry.
const (
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
)

// Flow is one flow of a trace: the headers every packet of the flow
// carries. ICMP flows are echo requests; their ports are ignored.
type Flow struct {
	SrcMAC, DstMAC net.HardwareAddr
	// VLAN is the 802.1Q VLAN id; 0 sends the frame untagged.
	VLAN             uint16
	SrcIP, DstIP     netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16
	// TCPFlags are the flags of TCP packets; 0 means ACK.
	TCPFlags TCPFlags
}

// TCPFlags are TCP header flags.
type TCPFlags uint8

// TCP flags.
const (
	TCPFin TCPFlags = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
)

// String formats the flow as "src:port > dst:port/proto [vlan N]".
func (f Flow) String() string {
	p := map[uint8]string{ProtoTCP: "tcp", ProtoUDP: "udp", ProtoICMP: "icmp"}[f.Proto]
	if p == "" {
		p = fmt.Sprint(f.Proto)
	}
	s := fmt.Sprintf("%s:%d > %s:%d/%s", f.SrcIP, f.SrcPort, f.DstIP, f.DstPort, p)
	if f.VLAN != 0 {
		s += fmt.Sprintf(" vlan %d", f.VLAN)
	}
	return s
}

// HeaderLen returns the length of the flow's headers (Ethernet, VLAN tag,
// IPv4 and L4).
func (f Flow) HeaderLen() int {
	n := 14 + 20
	if f.VLAN != 0 {
		n += 4
	}
	switch f.Proto {
	case ProtoTCP:
		n += 20
	case ProtoUDP, ProtoICMP:
		n += 8
	}
	return n
}

// Build returns one frame of the flow, size bytes long (without FCS), or
// the header length or the Ethernet minimum of 60 bytes if either is
// larger, with the IPv4 and L4 checksums computed. The payload is zero.
func Build(f Flow, size int) ([]byte, error) {
	if len(f.SrcMAC) != 6 || len(f.DstMAC) != 6 {
		return nil, fmt.Errorf("traffic: flow %s: MAC addresses must be 6 bytes", f)
	}
	if !f.SrcIP.Is4() || !f.DstIP.Is4() {
		return nil, fmt.Errorf("traffic: flow %s: only IPv4 flows are supported", f)
	}
	if f.VLAN > 4094 {
		return nil, fmt.Errorf("traffic: flow %s: VLAN %d out of range", f, f.VLAN)
	}
	var ls []gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: f.SrcMAC, DstMAC: f.DstMAC, EthernetType: layers.EthernetTypeIPv4}
	ls = append(ls, eth)
	if f.VLAN != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: f.VLAN, Type: layers.EthernetTypeIPv4})
	}
	ip := &layers.IPv4{
		Version: 4, IHL: 5, TTL: 64, Flags: layers.IPv4DontFragment,
		Protocol: layers.IPProtocol(f.Proto),
		SrcIP:    f.SrcIP.AsSlice(), DstIP: f.DstIP.AsSlice(),
		Id: uint16(f.SrcPort ^ f.DstPort),
	}
	ls = append(ls, ip)
	switch f.Proto {
	case ProtoTCP:
		fl := f.TCPFlags
		if fl == 0 {
			fl = TCPAck
		}
		tcp := &layers.TCP{
			SrcPort: layers.TCPPort(f.SrcPort), DstPort: layers.TCPPort(f.DstPort),
			Seq: 1, Window: 65535,
			FIN: fl&TCPFin != 0, SYN: fl&TCPSyn != 0, RST: fl&TCPRst != 0,
			PSH: fl&TCPPsh != 0, ACK: fl&TCPAck != 0,
		}
		if tcp.ACK {
			tcp.Ack = 1
		}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			return nil, fmt.Errorf("traffic: flow %s: %w", f, err)
		}
		ls = append(ls, tcp)
	case ProtoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.SrcPort), DstPort: layers.UDPPort(f.DstPort)}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			return nil, fmt.Errorf("traffic: flow %s: %w", f, err)
		}
		ls = append(ls, udp)
	case ProtoICMP:
		ls = append(ls, &layers.ICMPv4{
			TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0),
			Id:       f.SrcPort, Seq: 1,
		})
	default:
		return nil, fmt.Errorf("traffic: flow %s: protocol %d not supported (tcp, udp or icmp)", f, f.Proto)
	}
	if pad := size - f.HeaderLen(); pad > 0 {
		ls = append(ls, gopacket.Payload(make([]byte, pad)))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, fmt.Errorf("traffic: flow %s: %w", f, err)
	}
	return append([]byte(nil), buf.Bytes()...), nil
}

// MalformedKind names a way BuildMalformed breaks a frame.
type MalformedKind int

// The malformed frame kinds. Every one of them is a frame a correct NF must
// not forward as if it were valid IPv4.
const (
	// MalformedTruncated cuts the frame in the middle of the IPv4 header.
	MalformedTruncated MalformedKind = iota
	// MalformedIHL sets the IPv4 header length below the minimum of 5.
	MalformedIHL
	// MalformedTotalLength gives an IPv4 total length shorter than the
	// IPv4 header itself.
	MalformedTotalLength
	numMalformedKinds
)

// String names the kind.
func (k MalformedKind) String() string {
	switch k {
	case MalformedTruncated:
		return "truncated"
	case MalformedIHL:
		return "bad-ihl"
	case MalformedTotalLength:
		return "bad-total-length"
	}
	return fmt.Sprintf("malformed(%d)", int(k))
}

// BuildMalformed returns a frame of the flow broken in the given way.
func BuildMalformed(f Flow, size int, kind MalformedKind) ([]byte, error) {
	b, err := Build(f, size)
	if err != nil {
		return nil, err
	}
	l3 := 14
	if f.VLAN != 0 {
		l3 += 4
	}
	switch kind {
	case MalformedTruncated:
		return b[:l3+12], nil
	case MalformedIHL:
		b[l3] = 0x43
	case MalformedTotalLength:
		b[l3+2], b[l3+3] = 0, 12
	default:
		return nil, fmt.Errorf("traffic: unknown malformed kind %d", int(kind))
	}
	fixIPv4Checksum(b[l3 : l3+20])
	return b, nil
}

// fixIPv4Checksum recomputes the checksum of a 20-byte IPv4 header, so a
// malformed header is wrong only in the way it was made wrong.
func fixIPv4Checksum(h []byte) {
	h[10], h[11] = 0, 0
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	h[10], h[11] = byte(c>>8), byte(c)
}

// FlowSet is the flows a generator derived from a configuration.
type FlowSet struct {
	// Hit flows match the configuration (a route, a VIP, a rule, ...).
	Hit []Flow
	// Miss flows do not; what a miss means is documented per generator.
	Miss []Flow
}

// Options shapes a generated trace.
type Options struct {
	// Packets is the trace length. Default 10,000.
	Packets int
	// Locality is the flow popularity skew. Default LocalityHigh.
	Locality Locality
	// Skew, when positive, is the Zipf exponent to use instead of the
	// Locality preset's (a skew between or beyond the presets).
	Skew float64
	// PacketSize is the frame size in bytes without FCS. Default 64;
	// frames are never shorter than their headers.
	PacketSize int
	// MissShare is the share of packets drawn from the miss flows, 0..1.
	MissShare float64
	// MalformedShare is the share of malformed packets, 0..1; they are
	// broken copies of packets of hit flows.
	MalformedShare float64
	// Seed makes the trace reproducible: the same inputs and seed give the
	// same bytes.
	Seed uint64
}

func (o Options) withDefaults() (Options, error) {
	if o.Packets == 0 {
		o.Packets = 10000
	}
	if o.Packets < 0 {
		return o, fmt.Errorf("traffic: %d packets", o.Packets)
	}
	if o.Locality == "" {
		o.Locality = LocalityHigh
	}
	if o.PacketSize == 0 {
		o.PacketSize = 64
	}
	if o.Skew < 0 || o.Skew > 10 || math.IsNaN(o.Skew) {
		return o, fmt.Errorf("traffic: skew %v out of range 0..10", o.Skew)
	}
	if o.PacketSize < 0 || o.PacketSize > 9000 {
		return o, fmt.Errorf("traffic: packet size %d out of range 0..9000", o.PacketSize)
	}
	for name, v := range map[string]float64{"miss share": o.MissShare, "malformed share": o.MalformedShare} {
		if !(v >= 0 && v <= 1) {
			return o, fmt.Errorf("traffic: %s %v out of range 0..1", name, v)
		}
	}
	if o.MissShare+o.MalformedShare > 1 {
		return o, fmt.Errorf("traffic: miss share %v + malformed share %v exceed 1", o.MissShare, o.MalformedShare)
	}
	return o, nil
}

// Trace is a generated trace.
type Trace struct {
	// Frames are the packets in order.
	Frames [][]byte
	// Flows holds the hit flows followed by the miss flows.
	Flows []Flow
	// Hits is the number of hit flows: Flows[:Hits].
	Hits int
	// PacketFlow gives, for every frame, its index in Flows; malformed
	// frames carry the index of the flow they were made from.
	PacketFlow []int
	// Malformed marks the malformed frames.
	Malformed []bool
}

// Generate draws a trace from set. Hit and miss flows each get their own
// Zipf popularity, with ranks assigned to flows by a seeded shuffle so the
// hottest flows are not simply the first configured ones.
func Generate(set FlowSet, opts Options) (*Trace, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s, err := opts.Locality.Skew()
	if err != nil {
		return nil, err
	}
	if opts.Skew > 0 {
		s = opts.Skew
	}
	if len(set.Hit) == 0 && opts.MissShare < 1 {
		return nil, errors.New("traffic: no hit flows")
	}
	if len(set.Miss) == 0 && opts.MissShare > 0 {
		return nil, errors.New("traffic: a miss share needs miss flows")
	}
	rng := rand.New(rand.NewPCG(opts.Seed, 0x6d6f727068657573))
	hit := newZipf(len(set.Hit), s, rng)
	miss := newZipf(len(set.Miss), s, rng)

	t := &Trace{
		Flows:      append(append([]Flow{}, set.Hit...), set.Miss...),
		Hits:       len(set.Hit),
		Frames:     make([][]byte, 0, opts.Packets),
		PacketFlow: make([]int, 0, opts.Packets),
		Malformed:  make([]bool, 0, opts.Packets),
	}
	// Frames of a flow are identical: build each once.
	cache := map[int][]byte{}
	for range opts.Packets {
		u := rng.Float64()
		var idx int
		bad := false
		switch {
		case u < opts.MalformedShare && len(set.Hit) > 0:
			idx, bad = hit.draw(rng), true
		case u < opts.MalformedShare+opts.MissShare:
			idx = len(set.Hit) + miss.draw(rng)
		default:
			idx = hit.draw(rng)
		}
		var frame []byte
		if bad {
			frame, err = BuildMalformed(t.Flows[idx], opts.PacketSize, MalformedKind(rng.IntN(int(numMalformedKinds))))
			if err != nil {
				return nil, err
			}
		} else if frame = cache[idx]; frame == nil {
			if frame, err = Build(t.Flows[idx], opts.PacketSize); err != nil {
				return nil, err
			}
			cache[idx] = frame
		}
		t.Frames = append(t.Frames, frame)
		t.PacketFlow = append(t.PacketFlow, idx)
		t.Malformed = append(t.Malformed, bad)
	}
	return t, nil
}

// TopShare returns the share of the trace's packets that belong to its k
// most frequent flows: a direct measure of locality.
func (t *Trace) TopShare(k int) float64 {
	if len(t.PacketFlow) == 0 || k <= 0 {
		return 0
	}
	counts := map[int]int{}
	for _, f := range t.PacketFlow {
		counts[f]++
	}
	c := make([]int, 0, len(counts))
	for _, n := range counts {
		c = append(c, n)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(c)))
	top := 0
	for i := 0; i < k && i < len(c); i++ {
		top += c[i]
	}
	return float64(top) / float64(len(t.PacketFlow))
}

// ZipfTopShare returns the expected share of the k most popular of n
// flows under skew s: what TopShare of a long trace approaches.
func ZipfTopShare(n, k int, s float64) float64 {
	var top, all float64
	for i := 1; i <= n; i++ {
		w := math.Pow(float64(i), -s)
		all += w
		if i <= k {
			top += w
		}
	}
	if all == 0 {
		return 0
	}
	return top / all
}

// zipf draws ranks 0..n-1 with probability proportional to 1/(rank+1)^s,
// mapped to flow indexes through a random permutation.
type zipf struct {
	cdf  []float64
	perm []int
}

func newZipf(n int, s float64, rng *rand.Rand) *zipf {
	z := &zipf{cdf: make([]float64, n), perm: rng.Perm(n)}
	var sum float64
	for i := range n {
		sum += math.Pow(float64(i+1), -s)
		z.cdf[i] = sum
	}
	for i := range z.cdf {
		z.cdf[i] /= sum
	}
	return z
}

func (z *zipf) draw(rng *rand.Rand) int {
	u := rng.Float64()
	r := sort.SearchFloat64s(z.cdf, u)
	if r >= len(z.cdf) {
		r = len(z.cdf) - 1
	}
	return z.perm[r]
}
