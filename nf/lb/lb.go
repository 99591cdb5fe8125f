package lb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/internal/nfmap"
)

// Program is the name of the XDP entry program.
const Program = "xdp_lb"

// Sizes fixed by the data plane (bpf/lb.c).
const (
	// MaxVIPs is the number of VIP slices in the ring.
	MaxVIPs = 256
	// RingSize is the number of ring slots per VIP (a prime, as Maglev
	// requires).
	RingSize = 1021
	// MaxBackends is the size of the backends array; index 0 is reserved
	// for "no backend", so MaxBackends-1 distinct backends fit.
	MaxBackends = 4096
	// MaxWeight bounds a backend's relative weight.
	MaxWeight = 1000
)

// VIP flags, as in the vip_meta value.
const (
	flagHashNoSrcPort = 0x1
	flagLRUBypass     = 0x2
)

// Indexes of the stats per-CPU array.
const (
	StatPass          = 0 // not for a VIP, handed to the kernel
	StatTX            = 1 // encapsulated and sent to a backend
	StatConnHit       = 2 // backend taken from the connection table
	StatConnMiss      = 3 // backend taken from the ring
	StatICMPEcho      = 4 // echo request to a VIP answered
	StatDropMalformed = 5
	StatDropFragment  = 6
	StatDropNoBackend = 7
	StatDropEncap     = 8
	NumStats          = 9
)

// Config is the load balancer's configuration.
type Config struct {
	// LocalIP is the IPv4 source address of the outer (IP-in-IP) header.
	LocalIP string `json:"local_ip" yaml:"local_ip"`
	// GatewayMAC is the Ethernet destination of encapsulated packets: the
	// next hop towards the backends.
	GatewayMAC string `json:"gateway_mac" yaml:"gateway_mac"`
	// VIPs are the virtual services; at most MaxVIPs.
	VIPs []VIP `json:"vips" yaml:"vips"`
}

// VIP is one virtual service.
type VIP struct {
	// Address is the IPv4 address clients connect to.
	Address string `json:"address" yaml:"address"`
	// Port is the destination port; 0 matches every port.
	Port uint16 `json:"port" yaml:"port"`
	// Protocol is "tcp" or "udp".
	Protocol string `json:"protocol" yaml:"protocol"`
	// HashNoSrcPort leaves the source port out of the flow hash, so every
	// connection of a client lands on the same backend.
	HashNoSrcPort bool `json:"hash_no_src_port,omitempty" yaml:"hash_no_src_port,omitempty"`
	// LRUBypass disables the connection table for this VIP: every packet
	// is hashed onto the ring (useful for stateless UDP services).
	LRUBypass bool `json:"lru_bypass,omitempty" yaml:"lru_bypass,omitempty"`
	// Backends are the real servers, at least one.
	Backends []Backend `json:"backends" yaml:"backends"`
}

// Backend is one real server of a VIP.
type Backend struct {
	// Address is the backend's IPv4 address (the outer destination).
	Address string `json:"address" yaml:"address"`
	// Weight is the backend's relative share of the ring, 1..MaxWeight;
	// 0 means 1.
	Weight uint32 `json:"weight,omitempty" yaml:"weight,omitempty"`
}

// ExampleConfig returns a small configuration: a web VIP with three
// backends (one of double weight) and a DNS VIP with two.
func ExampleConfig() *Config {
	return &Config{
		LocalIP:    "172.16.0.1",
		GatewayMAC: "02:00:00:00:00:fe",
		VIPs: []VIP{
			{
				Address:  "10.0.0.10",
				Port:     80,
				Protocol: "tcp",
				Backends: []Backend{
					{Address: "172.16.1.1"},
					{Address: "172.16.1.2"},
					{Address: "172.16.1.3", Weight: 2},
				},
			},
			{
				Address:       "10.0.0.53",
				Port:          53,
				Protocol:      "udp",
				HashNoSrcPort: true,
				LRUBypass:     true,
				Backends: []Backend{
					{Address: "172.16.2.1"},
					{Address: "172.16.2.2"},
				},
			},
		},
	}
}

func parseIPv4(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %q is not an IP address", field, s)
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s: %q is not an IPv4 address", field, s)
	}
	if a.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("%s: %q is the unspecified address", field, s)
	}
	return a, nil
}

func parseProto(field, s string) (uint8, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	}
	return 0, fmt.Errorf("%s: protocol %q: want tcp or udp", field, s)
}

// Validate checks the configuration and reports the first problem.
func (c *Config) Validate() error {
	_, err := c.compile()
	return err
}

// compiled is a validated configuration in data-plane terms.
type compiled struct {
	localIP  netip.Addr
	gateway  net.HardwareAddr
	vips     []compiledVIP
	backends []netip.Addr // index i+1 in the backends map
}

type compiledVIP struct {
	addr    netip.Addr
	port    uint16
	proto   uint8
	flags   uint32
	members []member
}

type member struct {
	index  uint32 // into the backends map
	addr   netip.Addr
	weight uint32
}

func (c *Config) compile() (*compiled, error) {
	out := &compiled{}
	var err error
	if out.localIP, err = parseIPv4("local_ip", c.LocalIP); err != nil {
		return nil, err
	}
	out.gateway, err = net.ParseMAC(strings.TrimSpace(c.GatewayMAC))
	if err != nil || len(out.gateway) != 6 {
		return nil, fmt.Errorf("gateway_mac: %q is not an Ethernet MAC address", c.GatewayMAC)
	}
	if out.gateway[0]&1 != 0 || bytes.Equal(out.gateway, make([]byte, 6)) {
		return nil, fmt.Errorf("gateway_mac: %q must be a unicast, non-zero address", c.GatewayMAC)
	}
	if len(c.VIPs) == 0 {
		return nil, errors.New("vips: at least one VIP is required")
	}
	if len(c.VIPs) > MaxVIPs {
		return nil, fmt.Errorf("vips: %d given, at most %d supported", len(c.VIPs), MaxVIPs)
	}
	type vipID struct {
		addr  netip.Addr
		port  uint16
		proto uint8
	}
	seen := map[vipID]int{}
	backendIndex := map[netip.Addr]uint32{}
	for i, v := range c.VIPs {
		field := fmt.Sprintf("vips[%d]", i)
		cv := compiledVIP{port: v.Port}
		if cv.addr, err = parseIPv4(field+".address", v.Address); err != nil {
			return nil, err
		}
		if cv.proto, err = parseProto(field, v.Protocol); err != nil {
			return nil, err
		}
		id := vipID{cv.addr, cv.port, cv.proto}
		if j, dup := seen[id]; dup {
			return nil, fmt.Errorf("%s: %s:%d/%s duplicates vips[%d]", field, v.Address, v.Port, v.Protocol, j)
		}
		seen[id] = i
		if v.HashNoSrcPort {
			cv.flags |= flagHashNoSrcPort
		}
		if v.LRUBypass {
			cv.flags |= flagLRUBypass
		}
		if len(v.Backends) == 0 {
			return nil, fmt.Errorf("%s: at least one backend is required", field)
		}
		if len(v.Backends) > RingSize {
			return nil, fmt.Errorf("%s: %d backends given, at most %d per VIP", field, len(v.Backends), RingSize)
		}
		inVIP := map[netip.Addr]bool{}
		for j, b := range v.Backends {
			bf := fmt.Sprintf("%s.backends[%d]", field, j)
			a, err := parseIPv4(bf+".address", b.Address)
			if err != nil {
				return nil, err
			}
			if inVIP[a] {
				return nil, fmt.Errorf("%s: backend %s listed twice", bf, a)
			}
			inVIP[a] = true
			w := b.Weight
			if w == 0 {
				w = 1
			}
			if w > MaxWeight {
				return nil, fmt.Errorf("%s: weight %d above the maximum %d", bf, b.Weight, MaxWeight)
			}
			idx, ok := backendIndex[a]
			if !ok {
				if len(out.backends) >= MaxBackends-1 {
					return nil, fmt.Errorf("%s: more than %d distinct backends", bf, MaxBackends-1)
				}
				out.backends = append(out.backends, a)
				idx = uint32(len(out.backends))
				backendIndex[a] = idx
			}
			cv.members = append(cv.members, member{index: idx, addr: a, weight: w})
		}
		out.vips = append(out.vips, cv)
	}
	return out, nil
}

// be32 returns the value whose little-endian bytes are a in network order,
// which is how the data plane stores __be32 fields.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:])
}

// be16 converts a host-order port to the __be16 the data plane stores.
func be16(p uint16) uint16 {
	return p<<8 | p>>8
}

// State returns the map contents and variables for the configuration.
func (c *Config) State() (*mapstate.State, error) {
	cc, err := c.compile()
	if err != nil {
		return nil, err
	}
	st := mapstate.New()
	ip := cc.localIP.As4()
	st.SetVariable("local_ip", ip[:])
	st.SetVariable("gateway_mac", []byte(cc.gateway))

	for i, a := range cc.backends {
		st.Put("backends", nfmap.U32(uint32(i+1)), nfmap.Encode(&lbBackend{Addr: be32(a)}))
	}
	addrs := map[netip.Addr]bool{}
	for i, v := range cc.vips {
		key := lbVipKey{Addr: be32(v.addr), Port: be16(v.port), Proto: v.proto}
		st.Put("vips", nfmap.Encode(&key), nfmap.Encode(&lbVipMeta{Index: uint32(i), Flags: v.flags}))
		if !addrs[v.addr] {
			// The address entry: echo replies and fragment drops.
			addrs[v.addr] = true
			st.Put("vips", nfmap.Encode(&lbVipKey{Addr: be32(v.addr)}), nfmap.Encode(&lbVipMeta{Index: uint32(i)}))
		}
		table := maglev(v.members, RingSize)
		for slot, b := range table {
			st.Put("ring", nfmap.U32(uint32(i*RingSize+slot)), nfmap.U32(b))
		}
	}
	return st, nil
}

// maglev fills a lookup table of size m (prime) with backend indexes, each
// backend taking slots in the order of its own permutation of the table
// (Maglev, NSDI'16), with turns proportional to its weight. Removing a
// backend moves few slots of the others.
func maglev(members []member, m int) []uint32 {
	n := len(members)
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	var maxW uint32
	for i, b := range members {
		a := b.addr.As4()
		offset[i] = fnvSeeded(a[:], 0x5f) % uint64(m)
		skip[i] = fnvSeeded(a[:], 0xa3)%uint64(m-1) + 1
		maxW = max(maxW, b.weight)
	}
	table := make([]uint32, m)
	next := make([]uint64, n)
	credit := make([]uint32, n)
	filled := 0
	// Each round the heaviest backend takes a slot, so m rounds suffice.
	for round := 0; filled < m && round < m; round++ {
		for i := 0; i < n && filled < m; i++ {
			credit[i] += members[i].weight
			for credit[i] >= maxW && filled < m {
				credit[i] -= maxW
				// The permutation visits every slot once (m prime, skip
				// in 1..m-1), so a free one is found within m steps.
				for range m {
					slot := (offset[i] + next[i]*skip[i]) % uint64(m)
					next[i]++
					if table[slot] == 0 {
						table[slot] = members[i].index
						filled++
						break
					}
				}
			}
		}
	}
	return table
}

func fnvSeeded(b []byte, seed byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte{seed})
	h.Write(b)
	return h.Sum64()
}

// Spec returns a fresh copy of the embedded object's collection spec.
func Spec() (*ebpf.CollectionSpec, error) {
	return loadLb()
}

// Load validates cfg, loads the NF with its variables set and fills its
// maps. The caller closes the collection.
func Load(cfg *Config) (*ebpf.Collection, error) {
	return nfmap.Load("lb", cfg.State, Spec)
}
