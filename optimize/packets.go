package optimize

import (
	"math/rand"
	"net"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

// Generate builds n test packets aimed at the configuration: addresses and
// ports are drawn from the bytes of the map keys and hot keys (so lookups
// hit entries, prefixes and their neighbours) mixed with random ones (so
// they also miss). It knows nothing about a particular NF, which is the
// point: any object's state steers it.
func Generate(spec *ebpf.CollectionSpec, state *mapstate.State, heat *heatmap.Heatmap, n int, rnd *rand.Rand) [][]byte {
	addrs, ports := pools(state, heat)
	pickAddr := func() net.IP {
		if len(addrs) > 0 && rnd.Intn(4) != 0 {
			a := addrs[rnd.Intn(len(addrs))]
			ip := net.IPv4(a[0], a[1], a[2], a[3]).To4()
			if rnd.Intn(3) == 0 {
				ip[3] ^= byte(rnd.Intn(256)) // a neighbour inside the same /24
			}
			return ip
		}
		return net.IPv4(byte(rnd.Intn(224)), byte(rnd.Intn(256)), byte(rnd.Intn(256)), byte(rnd.Intn(256))).To4()
	}
	pickPort := func() uint16 {
		if len(ports) > 0 && rnd.Intn(2) == 0 {
			return ports[rnd.Intn(len(ports))]
		}
		return uint16(rnd.Intn(65536))
	}
	macs := [][]byte{
		{0x02, 0, 0, 0, 0, 1}, {0x02, 0, 0, 0, 0, 2}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, {0x01, 0, 0x5e, 0, 0, 1},
	}
	out := make([][]byte, 0, n)
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	for len(out) < n {
		eth := &layers.Ethernet{
			SrcMAC:       macs[rnd.Intn(2)],
			DstMAC:       macs[rnd.Intn(len(macs))],
			EthernetType: layers.EthernetTypeIPv4,
		}
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: uint8(1 + rnd.Intn(64)), SrcIP: pickAddr(), DstIP: pickAddr()}
		ls := []gopacket.SerializableLayer{eth}
		if rnd.Intn(8) == 0 {
			eth.EthernetType = layers.EthernetTypeDot1Q
			ls = append(ls, &layers.Dot1Q{VLANIdentifier: uint16(rnd.Intn(8)), Type: layers.EthernetTypeIPv4})
		}
		ls = append(ls, ip)
		payload := gopacket.Payload(make([]byte, rnd.Intn(32)))
		switch rnd.Intn(5) {
		case 0, 1:
			ip.Protocol = layers.IPProtocolUDP
			udp := &layers.UDP{SrcPort: layers.UDPPort(pickPort()), DstPort: layers.UDPPort(pickPort())}
			_ = udp.SetNetworkLayerForChecksum(ip)
			ls = append(ls, udp, payload)
		case 2, 3:
			ip.Protocol = layers.IPProtocolTCP
			tcp := &layers.TCP{SrcPort: layers.TCPPort(pickPort()), DstPort: layers.TCPPort(pickPort()),
				Seq: rnd.Uint32(), SYN: rnd.Intn(2) == 0, ACK: rnd.Intn(2) == 0, Window: 512}
			_ = tcp.SetNetworkLayerForChecksum(ip)
			ls = append(ls, tcp, payload)
		default:
			ip.Protocol = layers.IPProtocolICMPv4
			ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}, payload)
		}
		if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
			continue
		}
		out = append(out, append([]byte(nil), buf.Bytes()...))
	}
	return out
}

// pools collects candidate IPv4 addresses (every aligned 4-byte window of
// the keys) and ports (every aligned 2-byte window, in network order).
func pools(state *mapstate.State, heat *heatmap.Heatmap) (addrs [][4]byte, ports []uint16) {
	seenA := map[[4]byte]bool{}
	seenP := map[uint16]bool{}
	add := func(key []byte) {
		for i := 0; i+4 <= len(key); i += 4 {
			var a [4]byte
			copy(a[:], key[i:i+4])
			if a != [4]byte{} && !seenA[a] {
				seenA[a] = true
				addrs = append(addrs, a)
			}
		}
		for i := 0; i+2 <= len(key); i += 2 {
			p := uint16(key[i])<<8 | uint16(key[i+1])
			if p != 0 && !seenP[p] {
				seenP[p] = true
				ports = append(ports, p)
			}
		}
	}
	names := make([]string, 0)
	for name := range state.Maps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, e := range state.Maps[name].Entries {
			add(e.Key)
			add(e.Value)
		}
	}
	if heat != nil {
		hnames := make([]string, 0, len(heat.Maps))
		for name := range heat.Maps {
			hnames = append(hnames, name)
		}
		sort.Strings(hnames)
		for _, name := range hnames {
			for _, k := range heat.Maps[name] {
				add(k.Key)
			}
		}
	}
	return addrs, ports
}
