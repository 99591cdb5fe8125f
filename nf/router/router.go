//go:build linux

package router

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/internal/nfmap"
)

// Program is the name of the XDP program in the object.
const Program = "xdp_router"

// Map names, as the data plane declares them.
const (
	MapRoutes   = "routes"   // LPM trie: prefix -> route (next hop index, flags)
	MapNextHops = "nexthops" // array: next hop index -> egress ifindex, MAC, VLAN
	MapIfconfig = "ifconfig" // array: ifindex -> interface flags and MAC
	MapCounters = "counters" // per-CPU array of Counter, indexed by CounterIndex
)

// Limits of the data plane maps (max_entries in bpf/router.c).
const (
	MaxIfindex  = 256   // interfaces with ifindex >= MaxIfindex cannot be configured
	MaxNextHops = 1024  // size of the nexthops array
	MaxRoutes   = 16384 // size of the routes trie
)

// Route and interface flags shared with bpf/router.c.
const (
	routeFlagLocal     = 0x1
	routeFlagBlackhole = 0x2

	ifFlagEnabled     = 0x1
	ifFlagStrictDMAC  = 0x2
	ifFlagRouteTagged = 0x4
)

// Route actions accepted in Route.Action.
const (
	ActionForward   = "forward"   // send to the next hop named in Via (the default)
	ActionLocal     = "local"     // deliver to the local stack (XDP_PASS)
	ActionBlackhole = "blackhole" // drop
)

// CounterIndex names the slots of the counters map.
type CounterIndex uint32

// The counter slots, in the order of enum counter_index in bpf/router.c.
const (
	CounterRx CounterIndex = iota
	CounterForwarded
	CounterTx
	CounterDropNoRoute
	CounterDropBlackhole
	CounterTTLExceeded
	CounterMalformed
	CounterNonIP
	CounterLocal
	CounterSlowPath
	NumCounters
)

var counterNames = [NumCounters]string{
	"rx", "forwarded", "tx", "drop_no_route", "drop_blackhole",
	"ttl_exceeded", "malformed", "non_ip", "local", "slow_path",
}

// String returns the counter's name as used in metrics.
func (i CounterIndex) String() string {
	if i < NumCounters {
		return counterNames[i]
	}
	return fmt.Sprintf("counter(%d)", uint32(i))
}

// Counter is one counter summed over all CPUs.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Counters holds every counter, indexed by CounterIndex.
type Counters [NumCounters]Counter

// ReadCounters sums the per-CPU counters map of a loaded router.
func ReadCounters(m *ebpf.Map) (Counters, error) {
	var out Counters
	for i := CounterIndex(0); i < NumCounters; i++ {
		var perCPU []bpfCounter
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("read counter %s: %w", i, err)
		}
		for _, c := range perCPU {
			out[i].Packets += c.Packets
			out[i].Bytes += c.Bytes
		}
	}
	return out, nil
}

// Config is the router's configuration.
type Config struct {
	// Interfaces lists the interfaces the fast path routes between.
	Interfaces []Interface `json:"interfaces" yaml:"interfaces"`
	// NextHops lists the neighbours routes point to, by name.
	NextHops []NextHop `json:"nexthops" yaml:"nexthops"`
	// Routes is the routing table; the longest matching prefix wins.
	Routes []Route `json:"routes" yaml:"routes"`
}

// Interface configures one interface.
type Interface struct {
	// Ifindex is the kernel interface index (1..MaxIfindex-1).
	Ifindex uint32 `json:"ifindex" yaml:"ifindex"`
	// MAC is the interface's address, the source MAC of frames routed out of
	// it ("02:00:00:00:00:01").
	MAC string `json:"mac" yaml:"mac"`
	// Disabled leaves the interface to the kernel: frames arriving on it,
	// and frames routed to it, are passed to the stack.
	Disabled bool `json:"disabled,omitempty" yaml:"disabled,omitempty"`
	// StrictDestMAC routes only frames addressed to MAC; others are passed
	// to the stack.
	StrictDestMAC bool `json:"strict_dest_mac,omitempty" yaml:"strict_dest_mac,omitempty"`
	// RouteTagged routes frames carrying one 802.1Q tag; without it tagged
	// frames are passed to the stack (to its VLAN devices).
	RouteTagged bool `json:"route_tagged,omitempty" yaml:"route_tagged,omitempty"`
}

// NextHop is a neighbour reachable through one interface.
type NextHop struct {
	// Name identifies the next hop in Route.Via.
	Name string `json:"name" yaml:"name"`
	// Ifindex is the egress interface; it must be listed in Interfaces.
	Ifindex uint32 `json:"ifindex" yaml:"ifindex"`
	// MAC is the neighbour's address, the destination MAC of routed frames.
	MAC string `json:"mac" yaml:"mac"`
	// VLAN is the 802.1Q id to send with (1..4094); 0 sends untagged.
	VLAN uint16 `json:"vlan,omitempty" yaml:"vlan,omitempty"`
}

// Route is one routing table entry.
type Route struct {
	// Prefix is an IPv4 CIDR ("10.0.0.0/8", "0.0.0.0/0" for the default
	// route); host bits must be zero.
	Prefix string `json:"prefix" yaml:"prefix"`
	// Via names the next hop of a forward route.
	Via string `json:"via,omitempty" yaml:"via,omitempty"`
	// Action is ActionForward (default when empty), ActionLocal or
	// ActionBlackhole.
	Action string `json:"action,omitempty" yaml:"action,omitempty"`
}

// ExampleConfig returns a small two-interface router: a LAN on ifindex 2,
// an uplink on ifindex 3 with the default route, a few specific routes, a
// locally delivered address and a blackholed prefix.
func ExampleConfig() *Config {
	return &Config{
		Interfaces: []Interface{
			{Ifindex: 2, MAC: "02:00:00:00:02:01", StrictDestMAC: true},
			{Ifindex: 3, MAC: "02:00:00:00:03:01"},
		},
		NextHops: []NextHop{
			{Name: "lan-gw", Ifindex: 2, MAC: "02:00:00:00:02:fe"},
			{Name: "upstream", Ifindex: 3, MAC: "02:00:00:00:03:fe"},
			{Name: "dc-vlan20", Ifindex: 3, MAC: "02:00:00:00:03:20", VLAN: 20},
		},
		Routes: []Route{
			{Prefix: "0.0.0.0/0", Via: "upstream"},
			{Prefix: "192.168.0.0/16", Via: "lan-gw"},
			{Prefix: "10.20.0.0/16", Via: "dc-vlan20"},
			{Prefix: "10.20.30.0/24", Via: "upstream"},
			{Prefix: "192.168.1.1/32", Action: ActionLocal},
			{Prefix: "198.51.100.0/24", Action: ActionBlackhole},
		},
	}
}

// parsedConfig is a validated Config in data plane terms.
type parsedConfig struct {
	ifaces   map[uint32]bpfIface
	nexthops []bpfNexthop
	routes   []parsedRoute
}

type parsedRoute struct {
	prefix netip.Prefix
	value  bpfRoute
}

// Validate reports the first problem in c: bad or duplicate interfaces,
// next hops and prefixes, dangling references and size limits.
func (c *Config) Validate() error {
	_, err := c.parse()
	return err
}

func (c *Config) parse() (*parsedConfig, error) {
	if c == nil {
		return nil, errors.New("router: nil config")
	}
	p := &parsedConfig{ifaces: map[uint32]bpfIface{}}
	for i, ifc := range c.Interfaces {
		if ifc.Ifindex == 0 || ifc.Ifindex >= MaxIfindex {
			return nil, fmt.Errorf("router: interface %d: ifindex %d out of range 1..%d", i, ifc.Ifindex, MaxIfindex-1)
		}
		if _, dup := p.ifaces[ifc.Ifindex]; dup {
			return nil, fmt.Errorf("router: interface %d: ifindex %d listed twice", i, ifc.Ifindex)
		}
		mac, err := parseUnicastMAC(ifc.MAC)
		if err != nil {
			return nil, fmt.Errorf("router: interface %d (ifindex %d): %w", i, ifc.Ifindex, err)
		}
		v := bpfIface{Mac: mac}
		if !ifc.Disabled {
			v.Flags |= ifFlagEnabled
		}
		if ifc.StrictDestMAC {
			v.Flags |= ifFlagStrictDMAC
		}
		if ifc.RouteTagged {
			v.Flags |= ifFlagRouteTagged
		}
		p.ifaces[ifc.Ifindex] = v
	}

	if len(c.NextHops) > MaxNextHops {
		return nil, fmt.Errorf("router: %d next hops, at most %d fit", len(c.NextHops), MaxNextHops)
	}
	byName := map[string]uint32{}
	for i, nh := range c.NextHops {
		if nh.Name == "" {
			return nil, fmt.Errorf("router: next hop %d: missing name", i)
		}
		if _, dup := byName[nh.Name]; dup {
			return nil, fmt.Errorf("router: next hop %q defined twice", nh.Name)
		}
		if _, ok := p.ifaces[nh.Ifindex]; !ok {
			return nil, fmt.Errorf("router: next hop %q: ifindex %d is not a configured interface", nh.Name, nh.Ifindex)
		}
		mac, err := parseUnicastMAC(nh.MAC)
		if err != nil {
			return nil, fmt.Errorf("router: next hop %q: %w", nh.Name, err)
		}
		if nh.VLAN > 4094 {
			return nil, fmt.Errorf("router: next hop %q: VLAN %d out of range 1..4094 (0 = untagged)", nh.Name, nh.VLAN)
		}
		byName[nh.Name] = uint32(i)
		p.nexthops = append(p.nexthops, bpfNexthop{Ifindex: nh.Ifindex, Dmac: mac, Vlan: nh.VLAN})
	}

	if len(c.Routes) > MaxRoutes {
		return nil, fmt.Errorf("router: %d routes, at most %d fit", len(c.Routes), MaxRoutes)
	}
	seen := map[netip.Prefix]int{}
	for i, r := range c.Routes {
		pfx, err := netip.ParsePrefix(r.Prefix)
		if err != nil {
			return nil, fmt.Errorf("router: route %d: %w", i, err)
		}
		if !pfx.Addr().Is4() {
			return nil, fmt.Errorf("router: route %d: %s is not an IPv4 prefix", i, r.Prefix)
		}
		if pfx.Masked() != pfx {
			return nil, fmt.Errorf("router: route %d: %s has host bits set (did you mean %s?)", i, r.Prefix, pfx.Masked())
		}
		if j, dup := seen[pfx]; dup {
			return nil, fmt.Errorf("router: route %d: prefix %s already given by route %d", i, pfx, j)
		}
		seen[pfx] = i
		var v bpfRoute
		switch r.Action {
		case "", ActionForward:
			idx, ok := byName[r.Via]
			if !ok {
				if r.Via == "" {
					return nil, fmt.Errorf("router: route %s: a forward route needs \"via\"", pfx)
				}
				return nil, fmt.Errorf("router: route %s: unknown next hop %q", pfx, r.Via)
			}
			v.Nexthop = idx
		case ActionLocal, ActionBlackhole:
			if r.Via != "" {
				return nil, fmt.Errorf("router: route %s: a %s route takes no \"via\"", pfx, r.Action)
			}
			v.Flags = map[string]uint32{ActionLocal: routeFlagLocal, ActionBlackhole: routeFlagBlackhole}[r.Action]
		default:
			return nil, fmt.Errorf("router: route %s: unknown action %q (want %s, %s or %s)", pfx, r.Action, ActionForward, ActionLocal, ActionBlackhole)
		}
		p.routes = append(p.routes, parsedRoute{prefix: pfx, value: v})
	}
	return p, nil
}

func parseUnicastMAC(s string) ([6]byte, error) {
	var mac [6]byte
	hw, err := net.ParseMAC(s)
	if err != nil {
		return mac, fmt.Errorf("bad MAC %q: %v", s, err)
	}
	if len(hw) != 6 {
		return mac, fmt.Errorf("bad MAC %q: want 6 bytes, got %d", s, len(hw))
	}
	copy(mac[:], hw)
	if mac[0]&1 != 0 {
		return mac, fmt.Errorf("MAC %s is a multicast address", s)
	}
	if mac == [6]byte{} {
		return mac, fmt.Errorf("MAC %s is all zeros", s)
	}
	return mac, nil
}

// State validates c and returns the contents of the routes, nexthops and
// ifconfig maps. The counters map is left out: it belongs to the data plane.
func (c *Config) State() (*mapstate.State, error) {
	p, err := c.parse()
	if err != nil {
		return nil, err
	}
	s := mapstate.New()
	// Deterministic order: interfaces as listed.
	for _, ifc := range c.Interfaces {
		v := p.ifaces[ifc.Ifindex]
		s.Put(MapIfconfig, nfmap.U32(ifc.Ifindex), nfmap.Encode(&v))
	}
	for i := range p.nexthops {
		s.Put(MapNextHops, nfmap.U32(uint32(i)), nfmap.Encode(&p.nexthops[i]))
	}
	for i := range p.routes {
		r := &p.routes[i]
		a := r.prefix.Addr().As4()
		// The C key holds the address in network byte order: reading the
		// wire bytes as little endian makes encode write them back as is.
		k := bpfRouteKey{Prefixlen: uint32(r.prefix.Bits()), Addr: binary.LittleEndian.Uint32(a[:])}
		s.Put(MapRoutes, nfmap.Encode(&k), nfmap.Encode(&r.value))
	}
	return s, nil
}

// Spec returns a fresh copy of the router's collection spec.
func Spec() (*ebpf.CollectionSpec, error) {
	return loadBpf()
}

// Load validates cfg, loads the router into the kernel and fills its maps.
// The caller owns the returned collection.
func Load(cfg *Config) (*ebpf.Collection, error) {
	return nfmap.Load("router", cfg.State, Spec)
}
