package verify

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"slices"
	"testing"
)

// ipv6Frame is a 70-byte IPv6/UDP frame.
func ipv6Frame() []byte {
	p := make([]byte, 70)
	copy(p, []byte{0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd})
	p[14] = 0x60
	binary.BigEndian.PutUint16(p[18:], 16)
	p[20] = 17
	p[21] = 64
	return p
}

func validChecksum(h []byte) bool {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum) == 0xffff
}

func TestEdgeCases(t *testing.T) {
	tcp := defaultTCP()
	seeds := map[string][][]byte{
		"none":       nil,
		"ipv4":       {frame(ip1), tcp},
		"ipv6 only":  {ipv6Frame()},
		"short seed": {{0xff, 0xff}},
		"vlan seed":  {EdgeCases([][]byte{frame(ip2)}, 7, rand.New(rand.NewSource(1)))[6]},
	}
	for name, seed := range seeds {
		t.Run(name, func(t *testing.T) {
			const n = 500
			cases := GenerateEdgeCases(seed, n, rand.New(rand.NewSource(42)))
			again := GenerateEdgeCases(seed, n, rand.New(rand.NewSource(42)))
			other := GenerateEdgeCases(seed, n, rand.New(rand.NewSource(43)))
			if len(cases) != n {
				t.Fatalf("%d cases, want %d", len(cases), n)
			}
			sameAsOther := true
			kinds := map[EdgeKind]int{}
			for i, c := range cases {
				if c.Kind != again[i].Kind || !bytes.Equal(c.Data, again[i].Data) {
					t.Fatalf("case %d differs between two runs with the same seed", i)
				}
				sameAsOther = sameAsOther && bytes.Equal(c.Data, other[i].Data)
				if len(c.Data) < MinFrameSize {
					t.Fatalf("case %d (%s) has %d bytes, below the kernel minimum %d", i, c.Kind, len(c.Data), MinFrameSize)
				}
				kinds[c.Kind]++
				checkEdgeCase(t, i, c)
			}
			if sameAsOther {
				t.Errorf("a different random seed gave the same cases")
			}
			for _, k := range EdgeKinds {
				if kinds[k] == 0 {
					t.Errorf("no %s case", k)
				}
			}
			// EdgeCases is the same list without the kinds.
			plain := EdgeCases(seed, n, rand.New(rand.NewSource(42)))
			for i := range plain {
				if !bytes.Equal(plain[i], cases[i].Data) {
					t.Fatalf("EdgeCases case %d differs from GenerateEdgeCases", i)
				}
			}
		})
	}
}

// checkEdgeCase asserts what each kind promises.
func checkEdgeCase(t *testing.T, i int, c EdgeCase) {
	t.Helper()
	p := c.Data
	l := parseLayout(p)
	switch c.Kind {
	case EdgeBadVersion:
		if p[l.l3]>>4 == 4 || !validChecksum(p[l.l3:l.l3+20]) {
			t.Errorf("case %d: version %d, checksum ok %v", i, p[l.l3]>>4, validChecksum(p[l.l3:l.l3+20]))
		}
	case EdgeBadIHL:
		ihl := int(p[l.l3]&0x0f) * 4
		if ihl >= 20 && l.l3+ihl <= len(p) {
			t.Errorf("case %d: IHL %d bytes fits a %d-byte frame", i, ihl, len(p))
		}
	case EdgeFragment:
		frag := binary.BigEndian.Uint16(p[l.l3+6:])
		if frag&0x3fff == 0 || !validChecksum(p[l.l3:l.l3+20]) {
			t.Errorf("case %d: fragment field %#x, checksum ok %v", i, frag, validChecksum(p[l.l3:l.l3+20]))
		}
	case EdgeVLAN:
		if tpid := binary.BigEndian.Uint16(p[12:]); tpid != 0x8100 && tpid != 0x88a8 {
			t.Errorf("case %d: TPID %#x", i, tpid)
		}
	case EdgeMinimal:
		if len(p) != MinFrameSize && len(p) != minEthernet {
			t.Errorf("case %d: minimal frame of %d bytes", i, len(p))
		}
	case EdgeGarbage:
		if len(p) > maxGarbage {
			t.Errorf("case %d: %d bytes of garbage", i, len(p))
		}
	}
}

func TestBoundaries(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		want []int
	}{
		// Ethernet 14, IPv4 34, UDP 42: each and one byte short, plus the
		// usual points below the frame length.
		{"ipv4 udp", frame(ip1), []int{14, 18, 22, 33, 34, 37, 38, 41, 42, 54, 58, 62}},
		// TCP header ends at 54.
		{"ipv4 tcp", defaultTCP(), []int{14, 18, 22, 33, 34, 37, 38, 41, 42, 53, 54, 58, 62}},
		// IPv6 header ends at 54; UDP at 62.
		{"ipv6 udp", ipv6Frame(), []int{14, 18, 22, 34, 38, 42, 53, 54, 57, 58, 61, 62}},
		{"ethernet only", make([]byte, 16), []int{14}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := boundaries(tt.pkt); !slices.Equal(got, tt.want) {
				t.Errorf("boundaries %v, want %v", got, tt.want)
			}
		})
	}
	// Truncations walk through every boundary of every seed in order.
	cases := GenerateEdgeCases([][]byte{frame(ip1)}, 12*len(EdgeKinds), rand.New(rand.NewSource(1)))
	var lens []int
	for _, c := range cases {
		if c.Kind == EdgeTruncated {
			lens = append(lens, len(c.Data))
		}
	}
	if want := boundaries(frame(ip1)); !slices.Equal(lens, want) {
		t.Errorf("truncation lengths %v, want %v", lens, want)
	}
	// Many seeds of one layout do not crowd out the cuts of another: the
	// TCP frame's boundaries follow right after the UDP frame's.
	seeds := append(traffic(100), defaultTCP())
	cases = GenerateEdgeCases(seeds, 30*len(EdgeKinds), rand.New(rand.NewSource(1)))
	var protos []byte
	for _, c := range cases {
		if c.Kind == EdgeTruncated && len(c.Data) > 23 {
			protos = append(protos, c.Data[23])
		}
	}
	if !slices.Contains(protos, 6) || !slices.Contains(protos, 17) {
		t.Errorf("truncations cover IP protocols %v, want UDP and TCP", protos)
	}
}

func TestParseLayoutVLAN(t *testing.T) {
	p := frame(ip1)
	tagged := slices.Concat(p[:12], []byte{0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2}, p[12:])
	l := parseLayout(tagged)
	if l.l3 != 22 || !l.ipv4 || l.l4 != 42 || l.l4Len != 8 {
		t.Errorf("layout %+v, want L3 at 22 and UDP at 42", l)
	}
}
