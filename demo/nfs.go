//go:build linux

package demo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// NFs lists the network functions the demo can run, the default first:
// the bench package's sample NFs.
var NFs = slices.Clone(bench.NFs)

// nfKind is what the demo needs to know about one sample NF. How to
// configure it at a realistic size for the testbed's interfaces, its
// map contents and which flows hit it are the bench package's scenario
// logic (the embedded bench.NF: Program, Spec, Config, State, Flows);
// the demo adds which control-plane change to make in phase 3 and how
// to label hot keys.
type nfKind struct {
	bench.NF
	// change returns a copy of cfg in which the entry of the main table
	// that decides flow f is changed so that f is handled differently,
	// and a description of the change.
	change func(cfg any, f traffic.Flow) (any, string, error)
	// hotLabel names a hot key of the main table's heat map for the
	// heat chart ("" skips keys of other maps).
	hotLabel func(cfg any, m string, key []byte) string
}

// demoKind is the demo's part of an nfKind.
type demoKind struct {
	change   func(cfg any, f traffic.Flow) (any, string, error)
	hotLabel func(cfg any, m string, key []byte) string
}

var kinds = map[string]demoKind{
	"router": {
		change:   changeRoute,
		hotLabel: routerLabel,
	},
	"l2switch": {
		change: func(cfg any, f traffic.Flow) (any, string, error) {
			c := *cfg.(*l2switch.Config)
			i := slices.IndexFunc(c.StaticFDB, func(e l2switch.StaticEntry) bool { return e.MAC == f.DstMAC.String() })
			if i < 0 {
				return nil, "", fmt.Errorf("no FDB entry for %s", f.DstMAC)
			}
			e := c.StaticFDB[i]
			c.StaticFDB = slices.Delete(slices.Clone(c.StaticFDB), i, i+1)
			return &c, fmt.Sprintf("remove FDB entry %s vlan %d -> port %d (the hot destination is flooded from now on)", e.MAC, e.VLAN, e.Ifindex), nil
		},
		hotLabel: func(_ any, m string, key []byte) string {
			if m != l2switch.MapFDB || len(key) < 8 {
				return ""
			}
			return fmt.Sprintf("%x:%x:%x:%x:%x:%x vlan %d", key[0], key[1], key[2], key[3], key[4], key[5], binary.LittleEndian.Uint16(key[6:]))
		},
	},
	"lb": {
		// Moving the VIP to another port rewrites one key of the vips
		// table; withdrawing it would renumber every VIP's ring.
		change: func(cfg any, f traffic.Flow) (any, string, error) {
			c := *cfg.(*lb.Config)
			i := slices.IndexFunc(c.VIPs, func(v lb.VIP) bool { return v.Address == f.DstIP.String() && v.Port == f.DstPort })
			if i < 0 {
				return nil, "", fmt.Errorf("no VIP for %s:%d", f.DstIP, f.DstPort)
			}
			c.VIPs = slices.Clone(c.VIPs)
			v := &c.VIPs[i]
			old := v.Port
			v.Port = old + 8000
			return &c, fmt.Sprintf("move VIP %s/%s from port %d to %d (clients of the old port go to the stack)", v.Address, v.Protocol, old, v.Port), nil
		},
		hotLabel: func(_ any, m string, key []byte) string {
			switch {
			case m == "vips" && len(key) >= 6:
				return fmt.Sprintf("%s:%d", netip.AddrFrom4([4]byte(key[:4])), binary.BigEndian.Uint16(key[4:6]))
			case m == "conns" && len(key) >= 12:
				// Connection 5-tuples: label the client and the VIP.
				return fmt.Sprintf("%s>%s:%d", netip.AddrFrom4([4]byte(key[:4])), netip.AddrFrom4([4]byte(key[4:8])), binary.BigEndian.Uint16(key[10:12]))
			}
			return ""
		},
	},
	"firewall": {
		change: changeFirewall,
		hotLabel: func(_ any, m string, key []byte) string {
			switch {
			case m == "rules" && len(key) >= 13:
				return fmt.Sprintf("%s>%s:%d", netip.AddrFrom4([4]byte(key[:4])), netip.AddrFrom4([4]byte(key[4:8])), binary.BigEndian.Uint16(key[10:12]))
			case (m == "src_lpm" || m == "dst_lpm") && len(key) == 8:
				return m[:3] + " " + netip.AddrFrom4([4]byte(key[4:])).String()
			}
			return ""
		},
	},
	"ddos": {
		change: func(cfg any, f traffic.Flow) (any, string, error) {
			c := *cfg.(*ddos.Config)
			// The entry that blocks the source: its address, else the
			// longest blocked prefix containing it.
			best, bits := -1, -1
			for i, b := range c.Blocklist {
				p, err := netip.ParsePrefix(b.Source)
				if err != nil {
					a, aerr := netip.ParseAddr(b.Source)
					if aerr != nil {
						continue
					}
					p = netip.PrefixFrom(a, 32)
				}
				if p.Contains(f.SrcIP) && p.Bits() > bits {
					best, bits = i, p.Bits()
				}
			}
			if best < 0 {
				c.Blocklist = append(slices.Clone(c.Blocklist), ddos.Block{Source: f.SrcIP.String()})
				return &c, "block source " + f.SrcIP.String(), nil
			}
			b := c.Blocklist[best]
			c.Blocklist = slices.Delete(slices.Clone(c.Blocklist), best, best+1)
			return &c, fmt.Sprintf("unblock %s (the hot source %s passes from now on)", b.Source, f.SrcIP), nil
		},
		hotLabel: func(_ any, m string, key []byte) string {
			switch {
			case m == "blocklist" && len(key) == 4:
				return netip.AddrFrom4([4]byte(key)).String()
			case m == "blocklist_lpm" && len(key) == 8:
				return netip.AddrFrom4([4]byte(key[4:])).String()
			}
			return ""
		},
	},
}

func kindOf(nf string) (nfKind, error) {
	dk, ok := kinds[nf]
	if !ok {
		return nfKind{}, fmt.Errorf("unknown network function %q (want one of %v)", nf, NFs)
	}
	n, err := bench.LookupNF(nf)
	if err != nil {
		return nfKind{}, err
	}
	return nfKind{NF: n, change: dk.change, hotLabel: dk.hotLabel}, nil
}

// bestRoute returns the index of the longest non-default route of cfg
// containing dst, or -1.
func bestRoute(cfg *router.Config, dst netip.Addr) int {
	best, bits := -1, 0
	for i, r := range cfg.Routes {
		p, err := netip.ParsePrefix(r.Prefix)
		if err != nil || p.Bits() == 0 || !p.Contains(dst) {
			continue
		}
		if p.Bits() > bits {
			best, bits = i, p.Bits()
		}
	}
	return best
}

// changeRoute moves the route of f's destination to another next hop
// (one with a different neighbour MAC, so the rewritten frame shows it).
func changeRoute(cfg any, f traffic.Flow) (any, string, error) {
	c := *cfg.(*router.Config)
	i := bestRoute(&c, f.DstIP)
	if i < 0 {
		return nil, "", fmt.Errorf("no route covers %s", f.DstIP)
	}
	old := c.Routes[i]
	var oldMAC string
	for _, nh := range c.NextHops {
		if nh.Name == old.Via {
			oldMAC = nh.MAC
		}
	}
	for _, nh := range c.NextHops {
		if nh.Name == old.Via || nh.MAC == oldMAC {
			continue
		}
		c.Routes = slices.Clone(c.Routes)
		c.Routes[i] = router.Route{Prefix: old.Prefix, Via: nh.Name}
		return &c, fmt.Sprintf("route %s: next hop %s -> %s (%s)", old.Prefix, routeVia(old), nh.Name, nh.MAC), nil
	}
	return nil, "", errors.New("no other next hop to move the route to")
}

func routeVia(r router.Route) string {
	if r.Action != "" && r.Action != router.ActionForward {
		return r.Action
	}
	return r.Via
}

// routerLabel names a hot LPM key by the route it falls in.
func routerLabel(cfg any, m string, key []byte) string {
	if m != router.MapRoutes || len(key) != 8 {
		return ""
	}
	addr := netip.AddrFrom4([4]byte(key[4:]))
	c := cfg.(*router.Config)
	if i := bestRoute(c, addr); i >= 0 {
		return c.Routes[i].Prefix
	}
	return addr.String()
}

// changeFirewall flips the action of the table entry that decides f:
// its exact rule, else the longest source prefix, else the longest
// destination prefix containing it.
func changeFirewall(cfg any, f traffic.Flow) (any, string, error) {
	c := *cfg.(*firewall.Config)
	flip := func(a string) string {
		if a == "allow" {
			return "deny"
		}
		return "allow"
	}
	for i, r := range c.Rules {
		if r.Source == f.SrcIP.String() && r.Destination == f.DstIP.String() && r.SourcePort == f.SrcPort && r.DestinationPort == f.DstPort {
			c.Rules = slices.Clone(c.Rules)
			c.Rules[i].Action = flip(r.Action)
			return &c, fmt.Sprintf("rule %s -> %s:%d: %s -> %s", r.Source, r.Destination, r.DestinationPort, r.Action, c.Rules[i].Action), nil
		}
	}
	for _, t := range []struct {
		name  string
		rules *[]firewall.PrefixRule
		addr  netip.Addr
	}{{"source prefix", &c.SourcePrefixes, f.SrcIP}, {"destination prefix", &c.DestinationPrefixes, f.DstIP}} {
		best, bits := -1, -1
		for i, r := range *t.rules {
			if p, err := netip.ParsePrefix(r.Prefix); err == nil && p.Contains(t.addr) && p.Bits() > bits {
				best, bits = i, p.Bits()
			}
		}
		if best >= 0 {
			rs := slices.Clone(*t.rules)
			old := rs[best].Action
			rs[best].Action = flip(old)
			*t.rules = rs
			return &c, fmt.Sprintf("%s %s: %s -> %s", t.name, rs[best].Prefix, old, rs[best].Action), nil
		}
	}
	return nil, "", fmt.Errorf("no rule decides %s", f)
}

// mapChange is one entry written or deleted through the agent.
type mapChange struct {
	Map   string
	Key   []byte
	Value []byte // nil deletes
}

// diffStates lists the entries to write and delete to turn the maps of
// old into those of new.
func diffStates(old, new *mapstate.State) []mapChange {
	var out []mapChange
	for _, name := range unionKeys(new.Maps, old.Maps) {
		before := map[string][]byte{}
		if m := old.Maps[name]; m != nil {
			for _, e := range m.Entries {
				before[string(e.Key)] = e.Value
			}
		}
		seen := map[string]bool{}
		if m := new.Maps[name]; m != nil {
			for _, e := range m.Entries {
				if e.Value == nil {
					continue // per-CPU values: no control-plane table
				}
				seen[string(e.Key)] = true
				if v, ok := before[string(e.Key)]; !ok || !bytes.Equal(v, e.Value) {
					out = append(out, mapChange{Map: name, Key: e.Key, Value: e.Value})
				}
			}
		}
		for _, k := range slices.Sorted(maps.Keys(before)) {
			if !seen[k] {
				out = append(out, mapChange{Map: name, Key: []byte(k)})
			}
		}
	}
	return out
}

// unionKeys returns the map names of a and b, sorted.
func unionKeys(a, b map[string]*mapstate.Map) []string {
	names := map[string]bool{}
	for k := range a {
		names[k] = true
	}
	for k := range b {
		names[k] = true
	}
	return slices.Sorted(maps.Keys(names))
}
