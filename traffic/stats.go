package traffic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sort"
)

// ErrNotIPv4 is returned by Parse for frames that are not well-formed IPv4
// (other EtherTypes, truncated or malformed headers).
var ErrNotIPv4 = errors.New("traffic: not a well-formed IPv4 frame")

// Parse recovers the flow a frame belongs to: MAC addresses, the outer
// 802.1Q tag, IPv4 addresses, protocol and, for TCP and UDP, the ports
// (for ICMP echo, SrcPort is the identifier, as Build writes it). It
// reads only what NFs key their tables on, so it works on any trace, not
// only generated ones.
func Parse(frame []byte) (Flow, error) {
	var f Flow
	if len(frame) < 14 {
		return f, ErrNotIPv4
	}
	f.DstMAC = net.HardwareAddr(append([]byte(nil), frame[0:6]...))
	f.SrcMAC = net.HardwareAddr(append([]byte(nil), frame[6:12]...))
	typ := binary.BigEndian.Uint16(frame[12:])
	off := 14
	if typ == 0x8100 || typ == 0x88a8 {
		if len(frame) < 18 {
			return f, ErrNotIPv4
		}
		f.VLAN = binary.BigEndian.Uint16(frame[14:]) & 0x0fff
		typ = binary.BigEndian.Uint16(frame[16:])
		off = 18
	}
	if typ != 0x0800 || len(frame) < off+20 {
		return f, ErrNotIPv4
	}
	ip := frame[off:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl || int(binary.BigEndian.Uint16(ip[2:])) < ihl {
		return f, ErrNotIPv4
	}
	f.Proto = ip[9]
	f.SrcIP = netip.AddrFrom4([4]byte(ip[12:16]))
	f.DstIP = netip.AddrFrom4([4]byte(ip[16:20]))
	l4 := ip[ihl:]
	fragment := binary.BigEndian.Uint16(ip[6:])&0x3fff != 0
	switch {
	case fragment:
	case (f.Proto == ProtoTCP || f.Proto == ProtoUDP) && len(l4) >= 4:
		f.SrcPort = binary.BigEndian.Uint16(l4)
		f.DstPort = binary.BigEndian.Uint16(l4[2:])
		if f.Proto == ProtoTCP && len(l4) >= 14 {
			f.TCPFlags = TCPFlags(l4[13] & 0x1f)
		}
	case f.Proto == ProtoICMP && len(l4) >= 6:
		f.SrcPort = binary.BigEndian.Uint16(l4[4:])
	}
	return f, nil
}

// flowID is a comparable identity of a flow: everything but the TCP flags.
type flowID struct {
	src, dst         [6]byte
	vlan             uint16
	srcIP, dstIP     netip.Addr
	proto            uint8
	srcPort, dstPort uint16
}

func idOf(f Flow) flowID {
	return flowID{
		src: [6]byte(f.SrcMAC), dst: [6]byte(f.DstMAC), vlan: f.VLAN,
		srcIP: f.SrcIP, dstIP: f.DstIP, proto: f.Proto, srcPort: f.SrcPort, dstPort: f.DstPort,
	}
}

// FlowCount is one flow of a trace and how many of its packets it carries.
type FlowCount struct {
	// Flow is the flow as parsed from its first frame; Name is its
	// String form (what JSON carries).
	Flow Flow   `json:"-"`
	Name string `json:"flow"`
	// Packets is the flow's packet count and Share its share of the
	// parsed packets.
	Packets int     `json:"packets"`
	Share   float64 `json:"share"`
}

// Stats describes a trace as read from a pcap file.
type Stats struct {
	// Packets and Bytes count every frame.
	Packets int `json:"packets"`
	Bytes   int `json:"bytes"`
	// Unparsed counts frames Parse refused (malformed or not IPv4).
	Unparsed int `json:"unparsed"`
	// Flows is the number of distinct flows among the parsed frames.
	Flows int `json:"flows"`
	// Skew is the Zipf exponent fitted to the flows' rank/frequency curve
	// (see FitSkew), over SkewRanks ranks; nil when too few flows carry
	// enough packets to fit.
	Skew      *float64 `json:"skew"`
	SkewRanks int      `json:"skew_ranks"`
	// Top10Share and Top100Share are the shares of the parsed packets
	// carried by the 10 and 100 most frequent flows.
	Top10Share  float64 `json:"top10_share"`
	Top100Share float64 `json:"top100_share"`
	// Top lists the most frequent flows, most frequent first.
	Top []FlowCount `json:"top"`
}

// Analyze counts the flows of frames and fits their popularity; top is
// how many of the most frequent flows Stats.Top lists.
func Analyze(frames [][]byte, top int) *Stats {
	st := &Stats{Packets: len(frames)}
	counts := map[flowID]int{}
	first := map[flowID]Flow{}
	for _, fr := range frames {
		st.Bytes += len(fr)
		f, err := Parse(fr)
		if err != nil {
			st.Unparsed++
			continue
		}
		id := idOf(f)
		if counts[id] == 0 {
			first[id] = f
		}
		counts[id]++
	}
	st.Flows = len(counts)
	ids := make([]flowID, 0, len(counts))
	for id := range counts {
		ids = append(ids, id)
	}
	// Most frequent first; ties by the flow's text, so output is stable.
	sort.Slice(ids, func(i, j int) bool {
		ci, cj := counts[ids[i]], counts[ids[j]]
		if ci != cj {
			return ci > cj
		}
		return first[ids[i]].String()+string(ids[i].src[:])+string(ids[i].dst[:]) <
			first[ids[j]].String()+string(ids[j].src[:])+string(ids[j].dst[:])
	})
	parsed := st.Packets - st.Unparsed
	c := make([]int, len(ids))
	for i, id := range ids {
		c[i] = counts[id]
		if i < 10 {
			st.Top10Share += float64(c[i])
		}
		if i < 100 {
			st.Top100Share += float64(c[i])
		}
	}
	if parsed > 0 {
		st.Top10Share /= float64(parsed)
		st.Top100Share /= float64(parsed)
	}
	skew, ranks := FitSkew(c)
	st.SkewRanks = ranks
	if !math.IsNaN(skew) {
		st.Skew = &skew
	}
	for i := 0; i < top && i < len(ids); i++ {
		f := first[ids[i]]
		st.Top = append(st.Top, FlowCount{Flow: f, Name: f.String(), Packets: c[i], Share: float64(c[i]) / float64(parsed)})
	}
	return st
}

// MinFitCount is the smallest per-flow packet count FitSkew fits: below it
// the counts are dominated by sampling noise, which flattens the tail.
const MinFitCount = 10

// FitSkew estimates the Zipf exponent s of a popularity distribution from
// per-flow packet counts (any order): the least-squares slope of
// log(count) over log(rank), negated, over the ranks whose count is at
// least MinFitCount. It returns the estimate and the number of ranks
// fitted; with fewer than 3 such ranks it returns NaN. A uniform trace
// fits near 0, a Zipf trace near its s, provided the flows carry enough
// packets each (tens, not ones).
func FitSkew(counts []int) (float64, int) {
	c := append([]int(nil), counts...)
	sort.Sort(sort.Reverse(sort.IntSlice(c)))
	var sx, sy, sxx, sxy float64
	n := 0
	for i, v := range c {
		if v < MinFitCount {
			break
		}
		x, y := math.Log(float64(i+1)), math.Log(float64(v))
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
		n++
	}
	if n < 3 {
		return math.NaN(), n
	}
	fn := float64(n)
	den := fn*sxx - sx*sx
	if den == 0 {
		return math.NaN(), n
	}
	slope := (fn*sxy - sx*sy) / den
	return -slope, n
}

// String formats the stats as a short report.
func (s *Stats) String() string {
	skew := "not measurable (too few packets per flow)"
	if s.Skew != nil {
		skew = fmt.Sprintf("%.3f over %d ranks", *s.Skew, s.SkewRanks)
	}
	out := fmt.Sprintf("packets %d (%d bytes, %d not IPv4 or malformed)\nflows %d\nfitted Zipf skew %s\ntop 10 flows %.1f%%, top 100 flows %.1f%% of parsed packets\n",
		s.Packets, s.Bytes, s.Unparsed, s.Flows, skew, 100*s.Top10Share, 100*s.Top100Share)
	for i, f := range s.Top {
		out += fmt.Sprintf("  %3d  %7d  %5.2f%%  %s\n", i+1, f.Packets, 100*f.Share, f.Name)
	}
	return out
}
