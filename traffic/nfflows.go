//go:build linux

package traffic

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"

	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
)

// maxTries bounds every rejection-sampling loop of the generators.
const maxTries = 1000

// gen is the random source of one generator call.
type gen struct {
	rng *rand.Rand
}

func newGen(seed uint64, salt uint64) *gen {
	return &gen{rng: rand.New(rand.NewPCG(seed, salt))}
}

// mac returns a locally administered unicast MAC starting with prefix byte b.
func (g *gen) mac(b byte) net.HardwareAddr {
	m := net.HardwareAddr{0x02, b, 0, 0, 0, 0}
	v := g.rng.Uint32()
	m[2], m[3], m[4], m[5] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return m
}

// addrIn returns a random address inside p.
func (g *gen) addrIn(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	host := uint32(0)
	if p.Bits() < 32 {
		host = g.rng.Uint32() & (1<<(32-p.Bits()) - 1)
	}
	return u32Addr(base | host)
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// unicast reports whether a is an ordinary unicast destination (not
// multicast, broadcast, loopback, unspecified or class E).
func unicast(a netip.Addr) bool {
	b := a.As4()
	return b[0] != 0 && b[0] != 127 && b[0] < 224
}

func (g *gen) port() uint16 { return uint16(1024 + g.rng.IntN(65536-1024)) }

// clientAddr is a random source address in 198.18.0.0/15 (the benchmarking
// range), which none of the generated configurations use.
func (g *gen) clientAddr() netip.Addr {
	return g.addrIn(netip.MustParsePrefix("198.18.0.0/15"))
}

// prefixSet answers longest-prefix-match questions about a set of IPv4
// prefixes.
type prefixSet map[netip.Prefix]int

// longest returns the value of the longest prefix containing a.
func (s prefixSet) longest(a netip.Addr) (netip.Prefix, int, bool) {
	for bits := 32; bits >= 0; bits-- {
		p := netip.PrefixFrom(a, bits).Masked()
		if v, ok := s[p]; ok {
			return p, v, true
		}
	}
	return netip.Prefix{}, 0, false
}

func parseMAC(field, s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("traffic: %s: bad MAC %q", field, s)
	}
	return hw, nil
}

// RouterFlows derives n hit and n miss flows from a router configuration
// for frames arriving on the interface ingress, which must be configured
// and enabled. Frames are addressed to the ingress interface's MAC.
//
// A hit is a UDP or TCP flow whose destination's longest matching route
// (other than a /0 default route) forwards to an enabled interface, so the
// router rewrites and redirects it. A miss is a flow whose destination no
// route other than the default covers: the default route forwards it if
// there is one, otherwise the router drops it as unroutable.
func RouterFlows(cfg *router.Config, ingress uint32, n int, seed uint64) (FlowSet, error) {
	if err := cfg.Validate(); err != nil {
		return FlowSet{}, err
	}
	if n <= 0 {
		return FlowSet{}, fmt.Errorf("traffic: router flows: n = %d", n)
	}
	var in *router.Interface
	enabled := map[uint32]bool{}
	for i := range cfg.Interfaces {
		ifc := &cfg.Interfaces[i]
		enabled[ifc.Ifindex] = !ifc.Disabled
		if ifc.Ifindex == ingress {
			in = ifc
		}
	}
	if in == nil || in.Disabled {
		return FlowSet{}, fmt.Errorf("traffic: router flows: ingress ifindex %d is not an enabled interface of the configuration", ingress)
	}
	dmac, err := parseMAC("ingress interface", in.MAC)
	if err != nil {
		return FlowSet{}, err
	}
	nhUsable := map[string]bool{}
	for _, nh := range cfg.NextHops {
		nhUsable[nh.Name] = enabled[nh.Ifindex]
	}
	routes := prefixSet{}
	var forward []netip.Prefix
	for i, r := range cfg.Routes {
		p := netip.MustParsePrefix(r.Prefix) // validated above
		routes[p] = i
		if (r.Action == "" || r.Action == router.ActionForward) && nhUsable[r.Via] && p.Bits() > 0 {
			forward = append(forward, p)
		}
	}
	if len(forward) == 0 {
		return FlowSet{}, errors.New("traffic: router flows: no forward route (other than a default route) to an enabled interface")
	}
	g := newGen(seed, 0x726f75746572)
	flow := func(dst netip.Addr) Flow {
		f := Flow{SrcMAC: g.mac(0xaa), DstMAC: dmac, SrcIP: g.clientAddr(), DstIP: dst,
			Proto: ProtoUDP, SrcPort: g.port(), DstPort: uint16(1 + g.rng.IntN(1023))}
		if g.rng.IntN(2) == 0 {
			f.Proto = ProtoTCP
		}
		return f
	}
	var set FlowSet
	for len(set.Hit) < n {
		found := false
		for range maxTries {
			dst := g.addrIn(forward[g.rng.IntN(len(forward))])
			if !unicast(dst) {
				continue
			}
			p, i, _ := routes.longest(dst)
			r := cfg.Routes[i]
			if p.Bits() > 0 && (r.Action == "" || r.Action == router.ActionForward) && nhUsable[r.Via] {
				set.Hit = append(set.Hit, flow(dst))
				found = true
				break
			}
		}
		if !found {
			return FlowSet{}, errors.New("traffic: router flows: forward routes are shadowed by more specific non-forward routes")
		}
	}
	for len(set.Miss) < n {
		found := false
		for range maxTries {
			dst := u32Addr(g.rng.Uint32())
			if !unicast(dst) {
				continue
			}
			if p, _, ok := routes.longest(dst); !ok || p.Bits() == 0 {
				set.Miss = append(set.Miss, flow(dst))
				found = true
				break
			}
		}
		if !found {
			return FlowSet{}, errors.New("traffic: router flows: the routes cover the whole address space, no miss possible")
		}
	}
	return set, nil
}

// LBFlows derives n hit and n miss flows from a load balancer
// configuration. A hit is a client flow (source in 198.18.0.0/15) to a
// VIP's address, port and protocol; a miss is a flow of a VIP's protocol
// to an address that is no VIP, which the balancer passes to the stack.
// TCP packets carry only ACK (established connections, no SYN), so the
// balancer picks the backend from its ring or its connection table.
func LBFlows(cfg *lb.Config, n int, seed uint64) (FlowSet, error) {
	if err := cfg.Validate(); err != nil {
		return FlowSet{}, err
	}
	if n <= 0 {
		return FlowSet{}, fmt.Errorf("traffic: lb flows: n = %d", n)
	}
	g := newGen(seed, 0x6c62)
	gw, err := parseMAC("gateway_mac", cfg.GatewayMAC)
	if err != nil {
		return FlowSet{}, err
	}
	vipAddrs := map[netip.Addr]bool{}
	for _, v := range cfg.VIPs {
		vipAddrs[netip.MustParseAddr(strings.TrimSpace(v.Address))] = true
	}
	proto := func(s string) uint8 {
		if strings.EqualFold(strings.TrimSpace(s), "udp") {
			return ProtoUDP
		}
		return ProtoTCP
	}
	var set FlowSet
	for len(set.Hit) < n {
		v := cfg.VIPs[g.rng.IntN(len(cfg.VIPs))]
		f := Flow{SrcMAC: gw, DstMAC: g.mac(0x1b), SrcIP: g.clientAddr(),
			DstIP: netip.MustParseAddr(strings.TrimSpace(v.Address)), Proto: proto(v.Protocol),
			SrcPort: g.port(), DstPort: v.Port}
		if f.DstPort == 0 {
			f.DstPort = uint16(1 + g.rng.IntN(65535))
		}
		set.Hit = append(set.Hit, f)
	}
	for len(set.Miss) < n {
		v := cfg.VIPs[g.rng.IntN(len(cfg.VIPs))]
		var dst netip.Addr
		for range maxTries {
			dst = g.addrIn(netip.MustParsePrefix("203.0.113.0/24"))
			if !vipAddrs[dst] {
				break
			}
		}
		if vipAddrs[dst] {
			return FlowSet{}, errors.New("traffic: lb flows: every address of 203.0.113.0/24 is a VIP")
		}
		set.Miss = append(set.Miss, Flow{SrcMAC: gw, DstMAC: g.mac(0x1b), SrcIP: g.clientAddr(), DstIP: dst,
			Proto: proto(v.Protocol), SrcPort: g.port(), DstPort: v.Port | 1})
	}
	return set, nil
}

// firewallProto maps a rule's protocol to a Flow protocol; ok is false for
// protocols Build cannot produce.
func firewallProto(s string) (uint8, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tcp", "6":
		return ProtoTCP, true
	case "udp", "17":
		return ProtoUDP, true
	case "icmp", "1":
		return ProtoICMP, true
	}
	return 0, false
}

// FirewallFlows derives n hit and n miss flows from a firewall
// configuration. Hits are spread evenly over the three rule tables that
// have entries: flows equal to an exact rule's 5-tuple (rules of other
// protocols than tcp, udp and icmp are skipped), flows from inside a
// source prefix, and flows to a destination prefix from outside every
// source prefix; each is decided by that table. An exact rule gives one
// flow, so with more hits than rules the prefix tables take the rest.
// Misses match no rule and no prefix and get the default policy. Every
// flow is distinct.
func FirewallFlows(cfg *firewall.Config, n int, seed uint64) (FlowSet, error) {
	if err := cfg.Validate(); err != nil {
		return FlowSet{}, err
	}
	if n <= 0 {
		return FlowSet{}, fmt.Errorf("traffic: firewall flows: n = %d", n)
	}
	g := newGen(seed, 0x6677)
	src, dst := prefixSet{}, prefixSet{}
	var srcList, dstList []netip.Prefix
	for i, r := range cfg.SourcePrefixes {
		p := netip.MustParsePrefix(strings.TrimSpace(r.Prefix))
		src[p] = i
		srcList = append(srcList, p)
	}
	for i, r := range cfg.DestinationPrefixes {
		p := netip.MustParsePrefix(strings.TrimSpace(r.Prefix))
		dst[p] = i
		dstList = append(dstList, p)
	}
	var rules []Flow
	macS, macD := g.mac(0x5a), g.mac(0x5b)
	for _, r := range cfg.Rules {
		proto, ok := firewallProto(r.Protocol)
		if !ok {
			continue
		}
		rules = append(rules, Flow{SrcMAC: macS, DstMAC: macD,
			SrcIP: netip.MustParseAddr(strings.TrimSpace(r.Source)), DstIP: netip.MustParseAddr(strings.TrimSpace(r.Destination)),
			Proto: proto, SrcPort: r.SourcePort, DstPort: r.DestinationPort})
	}
	randomFlow := func(s, d netip.Addr) Flow {
		f := Flow{SrcMAC: macS, DstMAC: macD, SrcIP: s, DstIP: d, Proto: ProtoTCP, SrcPort: g.port(), DstPort: uint16(1 + g.rng.IntN(1023))}
		if g.rng.IntN(3) == 0 {
			f.Proto = ProtoUDP
		}
		return f
	}
	// outside returns a unicast address in no prefix of any of sets.
	outside := func(sets ...prefixSet) (netip.Addr, error) {
		for range maxTries {
			a := u32Addr(g.rng.Uint32())
			if !unicast(a) {
				continue
			}
			in := false
			for _, s := range sets {
				if _, _, ok := s.longest(a); ok {
					in = true
				}
			}
			if !in {
				return a, nil
			}
		}
		return netip.Addr{}, errors.New("traffic: firewall flows: the prefixes cover the whole address space")
	}
	var kinds []func() (Flow, error)
	if len(rules) > 0 {
		kinds = append(kinds, func() (Flow, error) { return rules[g.rng.IntN(len(rules))], nil })
	}
	if len(srcList) > 0 {
		kinds = append(kinds, func() (Flow, error) {
			d, err := outside()
			return randomFlow(g.addrIn(srcList[g.rng.IntN(len(srcList))]), d), err
		})
	}
	if len(dstList) > 0 {
		kinds = append(kinds, func() (Flow, error) {
			s, err := outside(src)
			return randomFlow(s, g.addrIn(dstList[g.rng.IntN(len(dstList))])), err
		})
	}
	if len(kinds) == 0 {
		return FlowSet{}, errors.New("traffic: firewall flows: the configuration has no rules or prefixes to hit")
	}
	// Every flow is distinct: a rule's 5-tuple is one flow however often
	// it is drawn, and a duplicate would carry the popularity of two
	// ranks. Once every exact rule is used, the prefix tables take the
	// remaining hits.
	var set FlowSet
	seen := map[flowID]bool{}
	for i := 0; len(set.Hit) < n; i++ {
		if i > maxTries*n {
			return FlowSet{}, fmt.Errorf("traffic: firewall flows: cannot find %d distinct hit flows", n)
		}
		f, err := kinds[i%len(kinds)]()
		if err != nil {
			return FlowSet{}, err
		}
		if id := idOf(f); !seen[id] {
			seen[id] = true
			set.Hit = append(set.Hit, f)
		}
	}
	for i := 0; len(set.Miss) < n; i++ {
		if i > maxTries*n {
			return FlowSet{}, fmt.Errorf("traffic: firewall flows: cannot find %d distinct miss flows", n)
		}
		s, err := outside(src)
		if err != nil {
			return FlowSet{}, err
		}
		d, err := outside(dst)
		if err != nil {
			return FlowSet{}, err
		}
		if f := randomFlow(s, d); !seen[idOf(f)] {
			seen[idOf(f)] = true
			set.Miss = append(set.Miss, f)
		}
	}
	return set, nil
}

// DDoSFlows derives n hit and n miss flows from a DDoS filter
// configuration. Hits come from blocked sources (blocked addresses, or
// addresses inside blocked prefixes, alternately when both exist) and are
// dropped; misses come from sources outside the blocklist and pass unless
// they exceed the rate limit, which the popular flows of a skewed trace
// do: they are the heavy hitters.
func DDoSFlows(cfg *ddos.Config, n int, seed uint64) (FlowSet, error) {
	if err := cfg.Validate(); err != nil {
		return FlowSet{}, err
	}
	if n <= 0 {
		return FlowSet{}, fmt.Errorf("traffic: ddos flows: n = %d", n)
	}
	g := newGen(seed, 0x64646f73)
	blocked := prefixSet{}
	var exact, prefixes []netip.Prefix
	for i, b := range cfg.Blocklist {
		s := strings.TrimSpace(b.Source)
		var p netip.Prefix
		if strings.Contains(s, "/") {
			p = netip.MustParsePrefix(s)
		} else {
			p = netip.PrefixFrom(netip.MustParseAddr(s), 32)
		}
		blocked[p] = i
		if p.Bits() == 32 {
			exact = append(exact, p)
		} else {
			prefixes = append(prefixes, p)
		}
	}
	if len(blocked) == 0 {
		return FlowSet{}, errors.New("traffic: ddos flows: empty blocklist, nothing to hit")
	}
	dmac, smac := g.mac(0xdd), g.mac(0xde)
	server := netip.MustParseAddr("192.0.2.1")
	flow := func(s netip.Addr) Flow {
		f := Flow{SrcMAC: smac, DstMAC: dmac, SrcIP: s, DstIP: server, Proto: ProtoUDP, SrcPort: g.port(), DstPort: 53}
		if g.rng.IntN(2) == 0 {
			f.Proto, f.DstPort = ProtoTCP, 443
		}
		return f
	}
	var set FlowSet
	for i := 0; len(set.Hit) < n; i++ {
		list := exact
		if len(exact) == 0 || (len(prefixes) > 0 && i%2 == 1) {
			list = prefixes
		}
		set.Hit = append(set.Hit, flow(g.addrIn(list[g.rng.IntN(len(list))])))
	}
	for len(set.Miss) < n {
		found := false
		for range maxTries {
			a := u32Addr(g.rng.Uint32())
			if _, _, in := blocked.longest(a); unicast(a) && !in {
				set.Miss = append(set.Miss, flow(a))
				found = true
				break
			}
		}
		if !found {
			return FlowSet{}, errors.New("traffic: ddos flows: the blocklist covers the whole address space")
		}
	}
	return set, nil
}

// L2SwitchFlows derives n hit and n miss flows from a switch configuration
// for frames arriving on the port ingress, which must be an enabled port.
// Flows use the VLANs the ingress port belongs to: untagged for its PVID,
// tagged otherwise. A hit is addressed to a static FDB entry of such a
// VLAN on another enabled member port, and the switch redirects it; a miss
// to an unknown unicast MAC, which the switch floods (XDP_PASS). Source
// MACs come from a pool of 256 hosts behind the ingress port, so learning
// adds at most 256 entries per VLAN.
func L2SwitchFlows(cfg *l2switch.Config, ingress uint32, n int, seed uint64) (FlowSet, error) {
	if err := cfg.Validate(); err != nil {
		return FlowSet{}, err
	}
	if n <= 0 {
		return FlowSet{}, fmt.Errorf("traffic: l2switch flows: n = %d", n)
	}
	ports := map[uint32]l2switch.Port{}
	for _, p := range cfg.Ports {
		ports[p.Ifindex] = p
	}
	in, ok := ports[ingress]
	if !ok || in.Disabled {
		return FlowSet{}, fmt.Errorf("traffic: l2switch flows: ingress ifindex %d is not an enabled port of the configuration", ingress)
	}
	// vlanTag: VLAN id -> tag to send on the ingress port (0 = untagged).
	vlanTag := map[uint16]uint16{}
	members := map[uint16]map[uint32]bool{}
	for _, v := range cfg.VLANs {
		members[v.ID] = map[uint32]bool{}
		for _, l := range [][]uint32{v.Tagged, v.Untagged} {
			for _, i := range l {
				members[v.ID][i] = true
				if i == ingress {
					vlanTag[v.ID] = v.ID
				}
			}
		}
	}
	if in.PVID != 0 {
		vlanTag[in.PVID] = 0
	}
	type known struct {
		mac  net.HardwareAddr
		vlan uint16
	}
	var targets []known
	for i, e := range cfg.StaticFDB {
		if _, ok := vlanTag[e.VLAN]; !ok || e.Ifindex == ingress || ports[e.Ifindex].Disabled || !members[e.VLAN][e.Ifindex] {
			continue
		}
		hw, err := parseMAC(fmt.Sprintf("static_fdb[%d]", i), e.MAC)
		if err != nil {
			return FlowSet{}, err
		}
		targets = append(targets, known{hw, e.VLAN})
	}
	if len(targets) == 0 {
		return FlowSet{}, fmt.Errorf("traffic: l2switch flows: no static FDB entry reachable from ingress ifindex %d", ingress)
	}
	g := newGen(seed, 0x6c32)
	static := map[string]bool{}
	for _, e := range cfg.StaticFDB {
		if hw, err := net.ParseMAC(strings.TrimSpace(e.MAC)); err == nil {
			static[hw.String()] = true
		}
	}
	hosts := make([]net.HardwareAddr, 256)
	for i := range hosts {
		hosts[i] = net.HardwareAddr{0x02, 0xaa, 0x55, 0, 0, byte(i)}
	}
	flow := func(dmac net.HardwareAddr, vlan uint16) Flow {
		return Flow{SrcMAC: hosts[g.rng.IntN(len(hosts))], DstMAC: dmac, VLAN: vlanTag[vlan],
			SrcIP: g.clientAddr(), DstIP: g.clientAddr(), Proto: ProtoUDP, SrcPort: g.port(), DstPort: g.port()}
	}
	var set FlowSet
	for len(set.Hit) < n {
		t := targets[g.rng.IntN(len(targets))]
		set.Hit = append(set.Hit, flow(t.mac, t.vlan))
	}
	for tries := 0; len(set.Miss) < n; tries++ {
		if tries > n*maxTries {
			return FlowSet{}, errors.New("traffic: l2switch flows: cannot find MACs outside the static FDB")
		}
		t := targets[g.rng.IntN(len(targets))]
		if m := g.mac(0xbb); !static[m.String()] {
			set.Miss = append(set.Miss, flow(m, t.vlan))
		}
	}
	return set, nil
}
