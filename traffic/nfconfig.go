//go:build linux

package traffic

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
)

// Sizes of the seed's evaluation, the defaults of the config generators.
const (
	EvalRouterRoutes    = 2592
	EvalFirewallRules   = 449
	EvalLBVIPs          = 10
	EvalLBBackends      = 100
	EvalL2SwitchMACs    = 4000
	EvalDDoSBlockedHost = 5000
)

// lengthWeights is the prefix-length mix of generated routing tables and
// prefix rules: mostly /24, as in Internet routing tables, with shorter
// aggregates and a few host routes.
var lengthWeights = []struct {
	bits   int
	weight int
}{{8, 1}, {12, 2}, {16, 8}, {20, 10}, {22, 9}, {24, 60}, {28, 5}, {32, 5}}

// randomPrefixes returns n distinct unicast prefixes with the standard
// length mix, avoiding 0/8, 127/8, 198.18/15 (client addresses of the
// generated traces) and 224/3.
func (g *gen) randomPrefixes(n int) ([]netip.Prefix, error) {
	total := 0
	for _, w := range lengthWeights {
		total += w.weight
	}
	clients := netip.MustParsePrefix("198.18.0.0/15")
	seen := map[netip.Prefix]bool{}
	out := make([]netip.Prefix, 0, n)
	for tries := 0; len(out) < n; tries++ {
		if tries > n*maxTries {
			return nil, fmt.Errorf("traffic: cannot draw %d distinct prefixes", n)
		}
		r := g.rng.IntN(total)
		bits := 0
		for _, w := range lengthWeights {
			if r < w.weight {
				bits = w.bits
				break
			}
			r -= w.weight
		}
		a := u32Addr(g.rng.Uint32())
		p := netip.PrefixFrom(a, bits).Masked()
		first := p.Addr().As4()[0]
		if first == 0 || first == 127 || first >= 224 || p.Overlaps(clients) || seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
	}
	return out, nil
}

func macString(b0, b1 byte, i int) string {
	return net.HardwareAddr{0x02, b0, b1, byte(i >> 16), byte(i >> 8), byte(i)}.String()
}

// RouterConfig returns a router with the given number of routes (0 means
// EvalRouterRoutes, the seed's 2,592) plus a default route, routing between
// the interfaces ifindexes (at least one; each gets 8 next hops). About 1%
// of the routes are blackholes, the rest forward. Deterministic in seed.
func RouterConfig(routes int, ifindexes []uint32, seed uint64) (*router.Config, error) {
	if routes == 0 {
		routes = EvalRouterRoutes
	}
	if len(ifindexes) == 0 {
		return nil, errors.New("traffic: router config needs at least one interface")
	}
	if routes < 0 || routes+1 > router.MaxRoutes {
		return nil, fmt.Errorf("traffic: router config: %d routes, at most %d fit", routes, router.MaxRoutes-1)
	}
	g := newGen(seed, 0x72636667)
	cfg := &router.Config{}
	for i, ifx := range ifindexes {
		cfg.Interfaces = append(cfg.Interfaces, router.Interface{Ifindex: ifx, MAC: macString(0x10, byte(i), 1)})
		for j := range 8 {
			cfg.NextHops = append(cfg.NextHops, router.NextHop{
				Name: fmt.Sprintf("nh%d-%d", ifx, j), Ifindex: ifx, MAC: macString(0x20, byte(i), j+1),
			})
		}
	}
	pfx, err := g.randomPrefixes(routes)
	if err != nil {
		return nil, err
	}
	cfg.Routes = append(cfg.Routes, router.Route{Prefix: "0.0.0.0/0", Via: cfg.NextHops[0].Name})
	for _, p := range pfx {
		r := router.Route{Prefix: p.String(), Via: cfg.NextHops[g.rng.IntN(len(cfg.NextHops))].Name}
		if g.rng.IntN(100) == 0 {
			r = router.Route{Prefix: p.String(), Action: router.ActionBlackhole}
		}
		cfg.Routes = append(cfg.Routes, r)
	}
	return validated(cfg, cfg.Validate())
}

// FirewallConfig returns a ClassBench-like rule set of the given size (0
// means EvalFirewallRules, the seed's 449): a third exact 5-tuple rules
// (TCP and UDP to well-known service ports), a third source prefixes and a
// third destination prefixes with the standard length mix; 70% of the
// entries allow, the default policy denies. Deterministic in seed.
func FirewallConfig(rules int, stateful bool, seed uint64) (*firewall.Config, error) {
	if rules == 0 {
		rules = EvalFirewallRules
	}
	if rules < 0 || rules > firewall.MaxRules {
		return nil, fmt.Errorf("traffic: firewall config: %d rules out of range", rules)
	}
	g := newGen(seed, 0x66636667)
	action := func() string {
		if g.rng.IntN(10) < 7 {
			return "allow"
		}
		return "deny"
	}
	cfg := &firewall.Config{DefaultPolicy: "deny", Stateful: stateful, Counters: true}
	nExact := (rules + 2) / 3
	nSrc := (rules - nExact + 1) / 2
	nDst := rules - nExact - nSrc
	services := []uint16{22, 25, 53, 80, 110, 123, 143, 161, 389, 443, 445, 993, 3306, 5432, 8080}
	servers, err := g.randomPrefixes(32)
	if err != nil {
		return nil, err
	}
	type tuple struct {
		s, d   netip.Addr
		sp, dp uint16
		p      string
	}
	seen := map[tuple]bool{}
	for tries := 0; len(cfg.Rules) < nExact; tries++ {
		if tries > nExact*maxTries {
			return nil, errors.New("traffic: firewall config: cannot draw distinct rules")
		}
		t := tuple{s: g.clientAddr(), d: g.addrIn(servers[g.rng.IntN(len(servers))]),
			sp: g.port(), dp: services[g.rng.IntN(len(services))], p: "tcp"}
		if t.dp == 53 || t.dp == 123 || t.dp == 161 {
			t.p = "udp"
		}
		if seen[t] || !unicast(t.d) {
			continue
		}
		seen[t] = true
		cfg.Rules = append(cfg.Rules, firewall.Rule{Source: t.s.String(), Destination: t.d.String(), Protocol: t.p,
			SourcePort: t.sp, DestinationPort: t.dp, Action: action()})
	}
	srcs, err := g.randomPrefixes(nSrc)
	if err != nil {
		return nil, err
	}
	for _, p := range srcs {
		cfg.SourcePrefixes = append(cfg.SourcePrefixes, firewall.PrefixRule{Prefix: p.String(), Action: action()})
	}
	dsts, err := g.randomPrefixes(nDst)
	if err != nil {
		return nil, err
	}
	for _, p := range dsts {
		cfg.DestinationPrefixes = append(cfg.DestinationPrefixes, firewall.PrefixRule{Prefix: p.String(), Action: action()})
	}
	return validated(cfg, cfg.Validate())
}

// LBConfig returns a load balancer with vips VIPs of backends backends
// each (0 means the seed's 10 x 100): VIP i is 10.100.i.10, TCP port 80 for
// even i and UDP port 53 for odd i; backends are distinct addresses in
// 172.16.0.0/12 with weights 1..3. Deterministic in seed.
func LBConfig(vips, backends int, seed uint64) (*lb.Config, error) {
	if vips == 0 {
		vips = EvalLBVIPs
	}
	if backends == 0 {
		backends = EvalLBBackends
	}
	if vips < 0 || vips > lb.MaxVIPs || backends < 0 || backends > lb.RingSize || vips*backends > lb.MaxBackends-1 {
		return nil, fmt.Errorf("traffic: lb config: %d VIPs x %d backends does not fit", vips, backends)
	}
	g := newGen(seed, 0x6c626367)
	cfg := &lb.Config{LocalIP: "172.16.0.1", GatewayMAC: "02:00:00:00:00:fe"}
	used := map[netip.Addr]bool{netip.MustParseAddr("172.16.0.1"): true}
	pool := netip.MustParsePrefix("172.16.0.0/12")
	for i := range vips {
		v := lb.VIP{Address: fmt.Sprintf("10.100.%d.10", i), Port: 80, Protocol: "tcp"}
		if i%2 == 1 {
			v.Port, v.Protocol = 53, "udp"
		}
		for tries := 0; len(v.Backends) < backends; tries++ {
			if tries > backends*maxTries {
				return nil, errors.New("traffic: lb config: cannot draw distinct backends")
			}
			a := g.addrIn(pool)
			if b := a.As4(); used[a] || b[3] == 0 || b[3] == 255 {
				continue
			}
			used[a] = true
			v.Backends = append(v.Backends, lb.Backend{Address: a.String(), Weight: uint32(1 + g.rng.IntN(3))})
		}
		cfg.VIPs = append(cfg.VIPs, v)
	}
	return validated(cfg, cfg.Validate())
}

// L2SwitchConfig returns a switch with the given ports (at least two
// ifindexes; the first is an uplink trunk carrying every VLAN tagged, with
// the first VLAN as PVID), vlans VLANs (ids 10, 20, ...; each other port is
// an untagged member of one VLAN and a tagged member of the next) and macs
// static FDB entries (0 means EvalL2SwitchMACs) spread over the VLANs and
// their non-uplink member ports. Deterministic in seed.
func L2SwitchConfig(ifindexes []uint32, vlans, macs int, seed uint64) (*l2switch.Config, error) {
	if macs == 0 {
		macs = EvalL2SwitchMACs
	}
	if len(ifindexes) < 2 || len(ifindexes) > l2switch.MaxPorts {
		return nil, fmt.Errorf("traffic: l2switch config: %d ports, want 2..%d", len(ifindexes), l2switch.MaxPorts)
	}
	if vlans <= 0 || vlans > 400 || macs < 0 || macs > l2switch.MaxFDB {
		return nil, fmt.Errorf("traffic: l2switch config: %d VLANs, %d MACs out of range", vlans, macs)
	}
	g := newGen(seed, 0x6c326367)
	cfg := &l2switch.Config{AgingTime: "300s"}
	id := func(v int) uint16 { return uint16(10 * (v + 1)) }
	members := make([]map[uint32]bool, vlans)
	untagged := make([][]uint32, vlans)
	tagged := make([][]uint32, vlans)
	for v := range vlans {
		members[v] = map[uint32]bool{}
		tagged[v] = append(tagged[v], ifindexes[0])
	}
	cfg.Ports = append(cfg.Ports, l2switch.Port{Ifindex: ifindexes[0], Name: "uplink", PVID: id(0)})
	for i, ifx := range ifindexes[1:] {
		v := i % vlans
		cfg.Ports = append(cfg.Ports, l2switch.Port{Ifindex: ifx, Name: fmt.Sprintf("port%d", i+1), PVID: id(v)})
		untagged[v] = append(untagged[v], ifx)
		members[v][ifx] = true
		if w := (v + 1) % vlans; w != v {
			tagged[w] = append(tagged[w], ifx)
			members[w][ifx] = true
		}
	}
	for v := range vlans {
		cfg.VLANs = append(cfg.VLANs, l2switch.VLAN{ID: id(v), Tagged: tagged[v], Untagged: untagged[v]})
	}
	// Static entries go to non-uplink members; a VLAN without one gets
	// none.
	var homes []struct {
		vlan uint16
		port uint32
	}
	for v := range vlans {
		ps := make([]uint32, 0, len(members[v]))
		for p := range members[v] {
			ps = append(ps, p)
		}
		sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
		for _, p := range ps {
			homes = append(homes, struct {
				vlan uint16
				port uint32
			}{id(v), p})
		}
	}
	if len(homes) == 0 && macs > 0 {
		return nil, errors.New("traffic: l2switch config: no port to place static entries on")
	}
	for i := range macs {
		h := homes[g.rng.IntN(len(homes))]
		cfg.StaticFDB = append(cfg.StaticFDB, l2switch.StaticEntry{MAC: macString(0x5e, byte(i>>24), i), VLAN: h.vlan, Ifindex: h.port})
	}
	return validated(cfg, cfg.Validate())
}

// DDoSConfig returns a DDoS filter with hosts blocked addresses (0 means
// EvalDDoSBlockedHost), prefixes blocked prefixes (/16 to /24) and a rate
// limit of perWindow packets per second per source. Deterministic in seed.
func DDoSConfig(hosts, prefixes int, perWindow uint64, seed uint64) (*ddos.Config, error) {
	if hosts == 0 {
		hosts = EvalDDoSBlockedHost
	}
	if hosts < 0 || hosts > ddos.MaxBlocked || prefixes < 0 || prefixes > ddos.MaxPrefixes {
		return nil, fmt.Errorf("traffic: ddos config: %d hosts, %d prefixes out of range", hosts, prefixes)
	}
	g := newGen(seed, 0x64646367)
	cfg := &ddos.Config{PacketsPerWindow: perWindow, Window: "1s"}
	reasons := []string{"manual", "scanner", "botnet", "reflection", "spoofed"}
	seen := map[netip.Prefix]bool{}
	clients := netip.MustParsePrefix("198.18.0.0/15")
	for tries := 0; len(cfg.Blocklist) < hosts+prefixes; tries++ {
		if tries > (hosts+prefixes)*maxTries {
			return nil, errors.New("traffic: ddos config: cannot draw distinct sources")
		}
		a := u32Addr(g.rng.Uint32())
		bits := 32
		if len(cfg.Blocklist) >= hosts {
			bits = 16 + g.rng.IntN(9)
		}
		p := netip.PrefixFrom(a, bits).Masked()
		if !unicast(p.Addr()) || seen[p] || p.Overlaps(clients) {
			continue
		}
		seen[p] = true
		src := p.String()
		if bits == 32 {
			src = p.Addr().String()
		}
		cfg.Blocklist = append(cfg.Blocklist, ddos.Block{Source: src, Reason: reasons[g.rng.IntN(len(reasons))]})
	}
	return validated(cfg, cfg.Validate())
}

// validated returns cfg, or nil and err if err is not nil.
func validated[T any](cfg *T, err error) (*T, error) {
	if err != nil {
		return nil, fmt.Errorf("traffic: generated configuration is invalid: %w", err)
	}
	return cfg, nil
}
