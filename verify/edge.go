package verify

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"slices"
)

// EdgeKind names the way an edge case was derived.
type EdgeKind string

// The kinds of edge case [GenerateEdgeCases] produces, in the order it
// cycles through them.
const (
	// EdgeTruncated cuts a seed at a header boundary or one byte short of
	// it (Ethernet, VLAN, L3, L4 headers).
	EdgeTruncated EdgeKind = "truncated"
	// EdgeRandomLength cuts a seed at a random length or appends random
	// bytes to it.
	EdgeRandomLength EdgeKind = "random-length"
	// EdgeMinimal is a frame of the smallest sizes: an Ethernet header
	// alone, or the 60-byte minimum Ethernet frame with zero padding.
	EdgeMinimal EdgeKind = "minimal"
	// EdgeBadVersion is an IPv4 frame whose version field is not 4.
	EdgeBadVersion EdgeKind = "bad-ip-version"
	// EdgeBadIHL is an IPv4 frame whose header length field is below 5
	// or points past the end of the frame.
	EdgeBadIHL EdgeKind = "bad-ihl"
	// EdgeFragment is an IPv4 fragment (more-fragments flag and/or a
	// fragment offset), with a correct header checksum.
	EdgeFragment EdgeKind = "fragment"
	// EdgeVLAN is a seed with an 802.1Q tag (or an 802.1ad + 802.1Q pair)
	// inserted after the MAC addresses.
	EdgeVLAN EdgeKind = "vlan"
	// EdgeByteFlip is a seed with one to three bytes of its L2-L4 headers
	// changed.
	EdgeByteFlip EdgeKind = "byte-flip"
	// EdgeGarbage is a frame of random bytes of random length.
	EdgeGarbage EdgeKind = "garbage"
)

// EdgeKinds lists every EdgeKind in generation order.
var EdgeKinds = []EdgeKind{
	EdgeTruncated, EdgeRandomLength, EdgeMinimal, EdgeBadVersion, EdgeBadIHL,
	EdgeFragment, EdgeVLAN, EdgeByteFlip, EdgeGarbage,
}

// EdgeCase is one generated packet and how it was made.
type EdgeCase struct {
	Kind EdgeKind `json:"kind"`
	Data []byte   `json:"data"`
}

// maxGarbage is the longest random frame: a full Ethernet frame without
// FCS, well below the one-page limit of a test run.
const maxGarbage = 1514

// minEthernet is the minimum Ethernet frame without FCS; shorter frames
// are padded on the wire.
const minEthernet = 60

// EdgeCases returns n packets derived from the seed packets, see
// [GenerateEdgeCases].
func EdgeCases(seed [][]byte, n int, rnd *rand.Rand) [][]byte {
	cases := GenerateEdgeCases(seed, n, rnd)
	out := make([][]byte, len(cases))
	for i, c := range cases {
		out[i] = c.Data
	}
	return out
}

// GenerateEdgeCases returns n edge cases derived from the seed packets,
// cycling through EdgeKinds so that any n >= len(EdgeKinds) contains every
// kind. Truncations walk through every header boundary of every seed in
// order (once per distinct header layout); the other kinds pick seeds and mutations from rnd. IPv4 kinds use
// the IPv4 seeds, or built-in IPv4/UDP and IPv4/TCP frames if there are
// none. The result depends only on the seeds, n and the state of rnd (nil
// means a fixed seed), and no packet is shorter than MinFrameSize.
func GenerateEdgeCases(seed [][]byte, n int, rnd *rand.Rand) []EdgeCase {
	if n <= 0 {
		return nil
	}
	if rnd == nil {
		rnd = rand.New(rand.NewSource(1))
	}
	g := newEdgeGen(seed, rnd)
	out := make([]EdgeCase, 0, n)
	for i := 0; i < n; i++ {
		kind := EdgeKinds[i%len(EdgeKinds)]
		pkt := g.make(kind)
		if len(pkt) < MinFrameSize {
			pkt = append(pkt, make([]byte, MinFrameSize-len(pkt))...)
		}
		out = append(out, EdgeCase{Kind: kind, Data: pkt})
	}
	return out
}

type edgeGen struct {
	rnd   *rand.Rand
	all   [][]byte // every seed, padded to MinFrameSize
	ipv4  [][]byte // seeds with a complete IPv4 header
	cuts  []cut    // every truncation, in order
	next  int      // next truncation
	count map[EdgeKind]int
}

type cut struct {
	seed []byte
	at   int
}

func newEdgeGen(seeds [][]byte, rnd *rand.Rand) *edgeGen {
	g := &edgeGen{rnd: rnd, count: map[EdgeKind]int{}}
	for _, s := range seeds {
		s = bytes.Clone(s)
		if len(s) < MinFrameSize {
			s = append(s, make([]byte, MinFrameSize-len(s))...)
		}
		g.all = append(g.all, s)
		if l := parseLayout(s); l.ipv4 && l.l4 <= len(s) {
			g.ipv4 = append(g.ipv4, s)
		}
	}
	if len(g.ipv4) == 0 {
		g.ipv4 = [][]byte{defaultUDP(), defaultTCP()}
	}
	if len(g.all) == 0 {
		g.all = g.ipv4
	}
	// Seeds with the same header layout give structurally identical cuts;
	// keep one per layout and length so that a long trace of similar
	// packets does not use up the truncations on one kind of frame.
	type shape struct {
		l  layout
		at int
	}
	seen := map[shape]bool{}
	for _, s := range g.all {
		l := parseLayout(s)
		for _, at := range boundaries(s) {
			if k := (shape{l, at}); !seen[k] {
				seen[k] = true
				g.cuts = append(g.cuts, cut{s, at})
			}
		}
	}
	return g
}

func (g *edgeGen) pick(from [][]byte) []byte {
	return bytes.Clone(from[g.rnd.Intn(len(from))])
}

func (g *edgeGen) make(kind EdgeKind) []byte {
	k := g.count[kind]
	g.count[kind]++
	switch kind {
	case EdgeTruncated:
		if len(g.cuts) == 0 {
			// Every seed is minimal; cutting is impossible, so return
			// the Ethernet header of one.
			return g.pick(g.all)[:MinFrameSize]
		}
		c := g.cuts[g.next%len(g.cuts)]
		g.next++
		return bytes.Clone(c.seed[:c.at])
	case EdgeRandomLength:
		p := g.pick(g.all)
		if len(p) > MinFrameSize && g.rnd.Intn(4) != 0 {
			return p[:MinFrameSize+g.rnd.Intn(len(p)-MinFrameSize)]
		}
		return append(p, g.randomBytes(1+g.rnd.Intn(64))...)
	case EdgeMinimal:
		return g.minimal(k)
	case EdgeBadVersion:
		p := g.pick(g.ipv4)
		l := parseLayout(p)
		v := byte(g.rnd.Intn(15))
		if v >= 4 {
			v++ // any version but 4
		}
		p[l.l3] = v<<4 | p[l.l3]&0x0f
		ipv4Checksum(p[l.l3 : l.l3+20])
		return p
	case EdgeBadIHL:
		p := g.pick(g.ipv4)
		l := parseLayout(p)
		// Either shorter than the fixed header or, where the 4-bit field
		// can express it, longer than what is left of the frame.
		ihl := byte(g.rnd.Intn(5))
		if avail := (len(p) - l.l3) / 4; avail < 15 && g.rnd.Intn(2) == 0 {
			ihl = byte(avail + 1 + g.rnd.Intn(15-avail))
		}
		p[l.l3] = p[l.l3]&0xf0 | ihl
		ipv4Checksum(p[l.l3 : l.l3+20])
		return p
	case EdgeFragment:
		p := g.pick(g.ipv4)
		l := parseLayout(p)
		var flags uint16
		switch k % 3 {
		case 0: // first fragment: MF, offset 0
			flags = 0x2000
		case 1: // middle fragment: MF and an offset
			flags = 0x2000 | uint16(1+g.rnd.Intn(0x1fff))
		default: // last fragment: offset only
			flags = uint16(1 + g.rnd.Intn(0x1fff))
		}
		binary.BigEndian.PutUint16(p[l.l3+6:], flags)
		ipv4Checksum(p[l.l3 : l.l3+20])
		return p
	case EdgeVLAN:
		p := g.pick(g.all)
		tag := make([]byte, 4, 8)
		binary.BigEndian.PutUint16(tag, 0x8100)
		binary.BigEndian.PutUint16(tag[2:], uint16(g.rnd.Intn(8))<<13|uint16(1+g.rnd.Intn(4094)))
		if g.rnd.Intn(3) == 0 {
			outer := []byte{0x88, 0xa8, 0, 0}
			binary.BigEndian.PutUint16(outer[2:], uint16(1+g.rnd.Intn(4094)))
			tag = append(outer, tag...)
		}
		return slices.Concat(p[:12], tag, p[12:])
	case EdgeByteFlip:
		p := g.pick(g.all)
		end := min(len(p), parseLayout(p).headerEnd())
		flips := 1 + g.rnd.Intn(3)
		for i := 0; i < flips; i++ {
			p[g.rnd.Intn(end)] ^= byte(1 + g.rnd.Intn(255))
		}
		return p
	default: // EdgeGarbage
		return g.randomBytes(MinFrameSize + g.rnd.Intn(maxGarbage-MinFrameSize+1))
	}
}

// minimal cycles through an Ethernet header alone (with a common or
// random EtherType), a seed's headers in a 60-byte padded frame, and an
// all-zero header.
func (g *edgeGen) minimal(k int) []byte {
	switch k % 3 {
	case 0:
		p := g.pick(g.all)[:MinFrameSize]
		types := []uint16{0x0800, 0x86dd, 0x0806, 0x8100, uint16(g.rnd.Uint32())}
		binary.BigEndian.PutUint16(p[12:], types[g.rnd.Intn(len(types))])
		return p
	case 1:
		p := g.pick(g.ipv4)
		l := parseLayout(p)
		end := min(len(p), l.headerEnd(), minEthernet)
		frame := make([]byte, minEthernet)
		copy(frame, p[:end])
		if l.ipv4 && end >= l.l3+20 {
			// The IP datagram ends where the headers end; the rest is
			// Ethernet padding, as on the wire.
			binary.BigEndian.PutUint16(frame[l.l3+2:], uint16(end-l.l3))
			ipv4Checksum(frame[l.l3 : l.l3+20])
		}
		return frame
	default:
		return make([]byte, MinFrameSize)
	}
}

func (g *edgeGen) randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], g.rnd.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

// layout is where the headers of a frame start, as far as they can be
// told from its bytes.
type layout struct {
	l3    int  // offset of the L3 header, after any VLAN tags
	ipv4  bool // EtherType IPv4 and at least 20 bytes of it present
	ipv6  bool
	l4    int // offset of the L4 header (0 if unknown)
	l4Len int // length of the L4 header (0 if unknown)
}

// maxVLANTags bounds the VLAN tag walk (QinQ plus some slack).
const maxVLANTags = 4

func parseLayout(p []byte) layout {
	l := layout{l3: MinFrameSize}
	if len(p) < MinFrameSize {
		return l
	}
	et := binary.BigEndian.Uint16(p[12:])
	for i := 0; i < maxVLANTags && (et == 0x8100 || et == 0x88a8) && len(p) >= l.l3+4; i++ {
		et = binary.BigEndian.Uint16(p[l.l3+2:])
		l.l3 += 4
	}
	var proto byte
	switch {
	case et == 0x0800 && len(p) >= l.l3+20:
		l.ipv4 = true
		l.l4 = l.l3 + max(20, int(p[l.l3]&0x0f)*4)
		proto = p[l.l3+9]
	case et == 0x86dd && len(p) >= l.l3+40:
		l.ipv6 = true
		l.l4 = l.l3 + 40
		proto = p[l.l3+6]
	default:
		return l
	}
	switch proto {
	case 6: // TCP: data offset, at least the fixed 20 bytes
		l.l4Len = 20
		if len(p) > l.l4+12 {
			l.l4Len = max(20, int(p[l.l4+12]>>4)*4)
		}
	case 17, 1, 58: // UDP, ICMP, ICMPv6
		l.l4Len = 8
	}
	return l
}

// headerEnd is the end of the known headers (at least the Ethernet and a
// minimal L3 header's worth of bytes, for frames of unknown type).
func (l layout) headerEnd() int {
	switch {
	case l.l4 > 0 && l.l4Len > 0:
		return l.l4 + l.l4Len
	case l.l4 > 0:
		return l.l4 + 8
	}
	return l.l3 + 20
}

// boundaries returns the truncation points of p: the usual header ends of
// untagged and tagged IPv4/UDP/TCP frames, p's own header ends and one byte
// short of each, all between MinFrameSize and len(p) exclusive, sorted.
func boundaries(p []byte) []int {
	pts := []int{14, 18, 22, 34, 38, 42, 54, 58, 62}
	l := parseLayout(p)
	own := []int{l.l3}
	switch {
	case l.ipv4:
		own = append(own, l.l3+20, l.l4)
	case l.ipv6:
		own = append(own, l.l3+40)
	}
	if l.l4Len > 0 {
		own = append(own, l.l4+4, l.l4+8, l.l4+l.l4Len)
	}
	for _, b := range own {
		pts = append(pts, b, b-1)
	}
	slices.Sort(pts)
	pts = slices.Compact(pts)
	return slices.DeleteFunc(pts, func(b int) bool { return b < MinFrameSize || b >= len(p) })
}

// ipv4Checksum recomputes the header checksum of a 20-byte IPv4 header.
func ipv4Checksum(h []byte) {
	h[10], h[11] = 0, 0
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
}

// defaultUDP is a 64-byte IPv4/UDP frame from 10.0.0.1:1234 to 10.0.0.2:53.
func defaultUDP() []byte {
	return defaultFrame(17, 64)
}

// defaultTCP is a 74-byte IPv4/TCP SYN from 10.0.0.1:1234 to 10.0.0.2:80.
func defaultTCP() []byte {
	p := defaultFrame(6, 74)
	binary.BigEndian.PutUint16(p[36:], 80)
	p[46] = 5 << 4 // data offset: 20 bytes
	p[47] = 0x02   // SYN
	binary.BigEndian.PutUint16(p[48:], 65535)
	return p
}

func defaultFrame(proto byte, size int) []byte {
	p := make([]byte, size)
	copy(p, []byte{0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00})
	ip := p[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size-14))
	binary.BigEndian.PutUint16(ip[4:], 1)
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	ipv4Checksum(ip)
	binary.BigEndian.PutUint16(p[34:], 1234)
	binary.BigEndian.PutUint16(p[36:], 53)
	if proto == 17 {
		binary.BigEndian.PutUint16(p[38:], uint16(size-34))
	}
	return p
}
