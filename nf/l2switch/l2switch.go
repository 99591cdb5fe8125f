//go:build linux

package l2switch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/internal/nfmap"
)

// Program is the name of the XDP program in the object.
const Program = "xdp_l2switch"

// Map and variable names, as the data plane declares them.
const (
	MapPorts = "ports" // array: ifindex -> port flags, PVID, port number
	MapVLANs = "vlans" // hash: VLAN id -> member and untagged port bitmaps
	MapFDB   = "fdb"   // hash: (MAC, VLAN) -> port ifindex, flags, timestamp; written by the data plane
	MapStats = "stats" // per-CPU hash: ifindex -> PortStats

	VarLearning = "cfg_learning" // u8: learn source MACs
	VarAgingNs  = "cfg_aging_ns" // u64: lifetime of learned entries in ns
)

// Limits of the data plane (bpf/l2switch.c).
const (
	MaxPorts   = 64  // ports per switch: bits in a VLAN bitmap
	MaxIfindex = 256 // ports must have an ifindex below this
	MaxVLANs   = 4096
	MaxFDB     = 16384
)

// DefaultAgingTime is how long a learned address lives without traffic
// when Config.AgingTime is empty (the IEEE 802.1D default).
const DefaultAgingTime = 300 * time.Second

const (
	portFlagEnabled  = 0x1
	portFlagLearning = 0x2
	fdbFlagStatic    = 0x1
)

// Config is the switch configuration.
type Config struct {
	// Learning turns source MAC learning on or off; nil means on.
	Learning *bool `json:"learning,omitempty" yaml:"learning,omitempty"`
	// AgingTime is how long a learned address stays valid without being
	// seen as a source ("300s", "5m"); empty means DefaultAgingTime.
	AgingTime string `json:"aging_time,omitempty" yaml:"aging_time,omitempty"`
	// Ports lists the switch ports; a port's position is its port number
	// (at most MaxPorts ports).
	Ports []Port `json:"ports" yaml:"ports"`
	// VLANs lists the VLANs and their member ports.
	VLANs []VLAN `json:"vlans" yaml:"vlans"`
	// StaticFDB lists addresses pinned to a port: never aged, never moved.
	StaticFDB []StaticEntry `json:"static_fdb,omitempty" yaml:"static_fdb,omitempty"`
}

// Port is one switch port.
type Port struct {
	// Ifindex is the interface index of the port (1..MaxIfindex-1).
	Ifindex uint32 `json:"ifindex" yaml:"ifindex"`
	// Name is a label for humans; the data plane does not use it.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// PVID is the VLAN of untagged and priority-tagged frames received on
	// the port; 0 drops them (a tagged-only trunk). The port must be a
	// member of that VLAN.
	PVID uint16 `json:"pvid,omitempty" yaml:"pvid,omitempty"`
	// Disabled drops everything received on the port and never forwards to it.
	Disabled bool `json:"disabled,omitempty" yaml:"disabled,omitempty"`
	// NoLearning stops learning source addresses on this port.
	NoLearning bool `json:"no_learning,omitempty" yaml:"no_learning,omitempty"`
}

// VLAN is one VLAN and its members, given by ifindex.
type VLAN struct {
	// ID is the 802.1Q VLAN id (1..4094).
	ID uint16 `json:"id" yaml:"id"`
	// Tagged lists ports that carry the VLAN with a tag.
	Tagged []uint32 `json:"tagged,omitempty" yaml:"tagged,omitempty"`
	// Untagged lists ports that send the VLAN without a tag.
	Untagged []uint32 `json:"untagged,omitempty" yaml:"untagged,omitempty"`
}

// StaticEntry pins a MAC address in a VLAN to a port.
type StaticEntry struct {
	MAC     string `json:"mac" yaml:"mac"`
	VLAN    uint16 `json:"vlan" yaml:"vlan"`
	Ifindex uint32 `json:"ifindex" yaml:"ifindex"`
}

// ExampleConfig returns a small office switch: two access ports in VLAN 10,
// a hybrid port (VLAN 10 untagged, VLAN 20 tagged) and an uplink trunk
// carrying both VLANs tagged, with the gateway's MAC pinned to the uplink.
func ExampleConfig() *Config {
	return &Config{
		AgingTime: "300s",
		Ports: []Port{
			{Ifindex: 2, Name: "access1", PVID: 10},
			{Ifindex: 3, Name: "access2", PVID: 10},
			{Ifindex: 4, Name: "hybrid", PVID: 10},
			{Ifindex: 5, Name: "uplink"},
		},
		VLANs: []VLAN{
			{ID: 10, Untagged: []uint32{2, 3, 4}, Tagged: []uint32{5}},
			{ID: 20, Tagged: []uint32{4, 5}},
		},
		StaticFDB: []StaticEntry{
			{MAC: "02:00:5e:00:01:01", VLAN: 10, Ifindex: 5},
		},
	}
}

type parsedConfig struct {
	learning bool
	agingNs  uint64
	ports    []uint32 // ifindex by port number
	port     map[uint32]bpfPort
	vlans    map[uint32]bpfVlan
	vlanIDs  []uint32
	static   []bpfFdbKey
}

// Validate reports the first problem in c.
func (c *Config) Validate() error {
	_, err := c.parse()
	return err
}

func (c *Config) parse() (*parsedConfig, error) {
	if c == nil {
		return nil, errors.New("l2switch: nil config")
	}
	p := &parsedConfig{learning: c.Learning == nil || *c.Learning, agingNs: uint64(DefaultAgingTime),
		port: map[uint32]bpfPort{}, vlans: map[uint32]bpfVlan{}}
	if c.AgingTime != "" {
		d, err := time.ParseDuration(c.AgingTime)
		if err != nil {
			return nil, fmt.Errorf("l2switch: aging_time: %v", err)
		}
		if d < time.Second {
			return nil, fmt.Errorf("l2switch: aging_time %s is below 1s", d)
		}
		p.agingNs = uint64(d)
	}
	if len(c.Ports) > MaxPorts {
		return nil, fmt.Errorf("l2switch: %d ports, at most %d fit", len(c.Ports), MaxPorts)
	}
	portNo := map[uint32]uint16{}
	for i, pt := range c.Ports {
		if pt.Ifindex == 0 || pt.Ifindex >= MaxIfindex {
			return nil, fmt.Errorf("l2switch: port %d: ifindex %d out of range 1..%d", i, pt.Ifindex, MaxIfindex-1)
		}
		if _, dup := portNo[pt.Ifindex]; dup {
			return nil, fmt.Errorf("l2switch: port %d: ifindex %d listed twice", i, pt.Ifindex)
		}
		if pt.PVID > 4094 {
			return nil, fmt.Errorf("l2switch: port %d (ifindex %d): PVID %d out of range 1..4094 (0 = tagged only)", i, pt.Ifindex, pt.PVID)
		}
		portNo[pt.Ifindex] = uint16(i)
		v := bpfPort{Pvid: pt.PVID, PortNo: uint16(i)}
		if !pt.Disabled {
			v.Flags |= portFlagEnabled
		}
		if !pt.NoLearning {
			v.Flags |= portFlagLearning
		}
		p.port[pt.Ifindex] = v
		p.ports = append(p.ports, pt.Ifindex)
	}

	for i, vl := range c.VLANs {
		if vl.ID == 0 || vl.ID > 4094 {
			return nil, fmt.Errorf("l2switch: VLAN %d: id %d out of range 1..4094", i, vl.ID)
		}
		id := uint32(vl.ID)
		if _, dup := p.vlans[id]; dup {
			return nil, fmt.Errorf("l2switch: VLAN %d defined twice", vl.ID)
		}
		var v bpfVlan
		for _, list := range []struct {
			ifs      []uint32
			untagged bool
		}{{vl.Tagged, false}, {vl.Untagged, true}} {
			for _, ifindex := range list.ifs {
				n, ok := portNo[ifindex]
				if !ok {
					return nil, fmt.Errorf("l2switch: VLAN %d: ifindex %d is not a configured port", vl.ID, ifindex)
				}
				bit := uint64(1) << n
				if v.Members&bit != 0 {
					return nil, fmt.Errorf("l2switch: VLAN %d: port %d listed more than once", vl.ID, ifindex)
				}
				v.Members |= bit
				if list.untagged {
					v.Untagged |= bit
				}
			}
		}
		if v.Members == 0 {
			return nil, fmt.Errorf("l2switch: VLAN %d has no member ports", vl.ID)
		}
		p.vlans[id] = v
		p.vlanIDs = append(p.vlanIDs, id)
	}

	for i, pt := range c.Ports {
		if pt.PVID == 0 {
			continue
		}
		if p.vlans[uint32(pt.PVID)].Members&(1<<i) == 0 {
			return nil, fmt.Errorf("l2switch: port %d (ifindex %d): not a member of its PVID %d", i, pt.Ifindex, pt.PVID)
		}
	}

	seen := map[bpfFdbKey]bool{}
	for i, st := range c.StaticFDB {
		hw, err := net.ParseMAC(st.MAC)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("l2switch: static entry %d: bad MAC %q", i, st.MAC)
		}
		if hw[0]&1 != 0 || bytes.Equal(hw, make([]byte, 6)) {
			return nil, fmt.Errorf("l2switch: static entry %d: %s is not a unicast address", i, st.MAC)
		}
		vl, ok := p.vlans[uint32(st.VLAN)]
		if !ok {
			return nil, fmt.Errorf("l2switch: static entry %d (%s): VLAN %d is not configured", i, st.MAC, st.VLAN)
		}
		n, ok := portNo[st.Ifindex]
		if !ok {
			return nil, fmt.Errorf("l2switch: static entry %d (%s): ifindex %d is not a configured port", i, st.MAC, st.Ifindex)
		}
		if vl.Members&(1<<n) == 0 {
			return nil, fmt.Errorf("l2switch: static entry %d (%s): port %d is not a member of VLAN %d", i, st.MAC, st.Ifindex, st.VLAN)
		}
		k := bpfFdbKey{Vid: st.VLAN}
		copy(k.Mac[:], hw)
		if seen[k] {
			return nil, fmt.Errorf("l2switch: static entry %d: %s in VLAN %d given twice", i, st.MAC, st.VLAN)
		}
		seen[k] = true
		p.static = append(p.static, k)
	}
	if len(p.static) > MaxFDB {
		return nil, fmt.Errorf("l2switch: %d static entries, the FDB holds %d", len(p.static), MaxFDB)
	}
	return p, nil
}

// State validates c and returns the variables and the contents of the
// ports, vlans and fdb (static entries) maps. The stats map and learned FDB
// entries belong to the data plane.
func (c *Config) State() (*mapstate.State, error) {
	p, err := c.parse()
	if err != nil {
		return nil, err
	}
	s := mapstate.New()
	var learning byte
	if p.learning {
		learning = 1
	}
	s.SetVariable(VarLearning, []byte{learning})
	s.SetVariable(VarAgingNs, binary.LittleEndian.AppendUint64(nil, p.agingNs))
	for _, ifindex := range p.ports {
		v := p.port[ifindex]
		s.Put(MapPorts, nfmap.U32(ifindex), nfmap.Encode(&v))
	}
	for _, id := range p.vlanIDs {
		v := p.vlans[id]
		s.Put(MapVLANs, nfmap.U32(id), nfmap.Encode(&v))
	}
	for i := range p.static {
		e := bpfFdbEntry{Ifindex: c.StaticFDB[i].Ifindex, Flags: fdbFlagStatic}
		s.Put(MapFDB, nfmap.Encode(&p.static[i]), nfmap.Encode(&e))
	}
	return s, nil
}

// Spec returns a fresh copy of the switch's collection spec.
func Spec() (*ebpf.CollectionSpec, error) {
	return loadBpf()
}

// Load validates cfg, sets the variables, loads the switch into the kernel
// and fills its maps. The caller owns the returned collection.
func Load(cfg *Config) (*ebpf.Collection, error) {
	return nfmap.Load("l2switch", cfg.State, Spec)
}

// FDBEntry is one forwarding database entry as read back from the kernel.
type FDBEntry struct {
	MAC     net.HardwareAddr `json:"mac"`
	VLAN    uint16           `json:"vlan"`
	Ifindex uint32           `json:"ifindex"`
	Static  bool             `json:"static"`
	// UpdatedNs is the CLOCK_MONOTONIC time of the last learn or refresh.
	UpdatedNs uint64 `json:"updated_ns"`
}

// ReadFDB returns the entries of a loaded switch's fdb map, sorted by VLAN
// and MAC.
func ReadFDB(m *ebpf.Map) ([]FDBEntry, error) {
	var (
		k   bpfFdbKey
		v   bpfFdbEntry
		out []FDBEntry
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, FDBEntry{MAC: bytes.Clone(k.Mac[:]), VLAN: k.Vid, Ifindex: v.Ifindex,
			Static: v.Flags&fdbFlagStatic != 0, UpdatedNs: v.UpdatedNs})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("l2switch: read fdb: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].VLAN != out[j].VLAN {
			return out[i].VLAN < out[j].VLAN
		}
		return bytes.Compare(out[i].MAC, out[j].MAC) < 0
	})
	return out, nil
}

// PortStats are the counters of one port, summed over CPUs.
type PortStats struct {
	RxPackets      uint64 `json:"rx_packets"`
	RxBytes        uint64 `json:"rx_bytes"`
	TxPackets      uint64 `json:"tx_packets"`
	TxBytes        uint64 `json:"tx_bytes"`
	Flooded        uint64 `json:"flooded"`
	DroppedVLAN    uint64 `json:"dropped_vlan"`
	DroppedHairpin uint64 `json:"dropped_hairpin"`
	DroppedInvalid uint64 `json:"dropped_invalid"`
	Learned        uint64 `json:"learned"`
	Moved          uint64 `json:"moved"`
}

// ReadStats sums the per-CPU stats map of a loaded switch, by ifindex.
func ReadStats(m *ebpf.Map) (map[uint32]PortStats, error) {
	var (
		k      uint32
		perCPU []bpfPortStats
	)
	out := map[uint32]PortStats{}
	it := m.Iterate()
	for it.Next(&k, &perCPU) {
		var s PortStats
		for _, c := range perCPU {
			s.RxPackets += c.RxPackets
			s.RxBytes += c.RxBytes
			s.TxPackets += c.TxPackets
			s.TxBytes += c.TxBytes
			s.Flooded += c.Flooded
			s.DroppedVLAN += c.DroppedVlan
			s.DroppedHairpin += c.DroppedHairpin
			s.DroppedInvalid += c.DroppedInvalid
			s.Learned += c.Learned
			s.Moved += c.Moved
		}
		out[k] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("l2switch: read stats: %w", err)
	}
	return out, nil
}
