package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/internal/nfmap"
)

// Program is the name of the XDP entry program; it tail-calls the stages.
const Program = "xdp_firewall"

// Names of the stage programs reached through the stages program array.
const (
	ConntrackProgram = "fw_conntrack"
	ACLProgram       = "fw_acl"
)

// Capacities fixed by the data plane (bpf/firewall.c).
const (
	MaxRules    = 4096
	MaxPrefixes = 16384
	MaxConns    = 65536
)

// Indexes of the features array (value 1 = on, 0 = off).
const (
	FeatureStateful = 0
	FeatureRules    = 1
	FeatureSrcLPM   = 2
	FeatureDstLPM   = 3
	FeatureCounters = 4
	NumFeatures     = 5
)

// Actions as stored in fw_verdict and default_action.
const (
	ActionNone  = 0
	ActionAllow = 1
	ActionDeny  = 2
)

// Indexes of the counters per-CPU array, one per decision.
const (
	CounterCTAllow      = 0  // allowed as part of a tracked connection
	CounterRuleAllow    = 1  // exact rule allowed
	CounterRuleDeny     = 2  // exact rule denied
	CounterSrcAllow     = 3  // source prefix allowed
	CounterSrcDeny      = 4  // source prefix denied
	CounterDstAllow     = 5  // destination prefix allowed
	CounterDstDeny      = 6  // destination prefix denied
	CounterDefaultAllow = 7  // default policy allowed (IPv4 or IPv6)
	CounterDefaultDeny  = 8  // default policy denied (IPv4 or IPv6)
	CounterNonIP        = 9  // non-IP frame passed
	CounterMalformed    = 10 // malformed frame dropped
	CounterTailCallFail = 11 // a stage was missing: dropped
	CounterCTNew        = 12 // connection entry created
	NumCounters         = 13
)

// DefaultConnTimeout is the idle time after which a tracked connection is
// forgotten when Config.ConnTimeout is empty.
const DefaultConnTimeout = 5 * time.Minute

// Config is the firewall's configuration.
//
// Evaluation order, first match wins: tracked connections (when Stateful),
// Rules, SourcePrefixes (longest prefix), DestinationPrefixes (longest
// prefix), DefaultPolicy. A rule table is switched on exactly when it has
// entries. Rule ids, reported in connection entries, number Rules,
// SourcePrefixes and DestinationPrefixes consecutively from 1 in that order.
type Config struct {
	// DefaultPolicy is "allow" or "deny" (the default when empty); it also
	// decides every IPv6 packet.
	DefaultPolicy string `json:"default_policy,omitempty" yaml:"default_policy,omitempty"`
	// Stateful tracks allowed flows so their replies pass too.
	Stateful bool `json:"stateful,omitempty" yaml:"stateful,omitempty"`
	// Counters enables the per-decision packet and byte counters.
	Counters bool `json:"counters,omitempty" yaml:"counters,omitempty"`
	// ConnTimeout is the idle timeout of tracked connections as a Go
	// duration ("90s", "5m"); empty means DefaultConnTimeout.
	ConnTimeout string `json:"conn_timeout,omitempty" yaml:"conn_timeout,omitempty"`
	// Rules match exact 5-tuples; at most MaxRules.
	Rules []Rule `json:"rules,omitempty" yaml:"rules,omitempty"`
	// SourcePrefixes match the source address; at most MaxPrefixes.
	SourcePrefixes []PrefixRule `json:"source_prefixes,omitempty" yaml:"source_prefixes,omitempty"`
	// DestinationPrefixes match the destination address; at most
	// MaxPrefixes.
	DestinationPrefixes []PrefixRule `json:"destination_prefixes,omitempty" yaml:"destination_prefixes,omitempty"`
}

// Rule matches one exact IPv4 5-tuple.
type Rule struct {
	Source      string `json:"source" yaml:"source"`
	Destination string `json:"destination" yaml:"destination"`
	// Protocol is "tcp", "udp", "icmp" or a protocol number.
	Protocol string `json:"protocol" yaml:"protocol"`
	// Ports are only for tcp and udp (0 elsewhere).
	SourcePort      uint16 `json:"source_port,omitempty" yaml:"source_port,omitempty"`
	DestinationPort uint16 `json:"destination_port,omitempty" yaml:"destination_port,omitempty"`
	// Action is "allow" or "deny".
	Action string `json:"action" yaml:"action"`
}

// PrefixRule matches an IPv4 prefix ("10.0.0.0/8"); host bits must be zero.
type PrefixRule struct {
	Prefix string `json:"prefix" yaml:"prefix"`
	// Action is "allow" or "deny".
	Action string `json:"action" yaml:"action"`
}

// ExampleConfig returns a small stateful configuration: a web server open
// to the world, SSH from the management network only, a blocked subnet,
// default deny.
func ExampleConfig() *Config {
	return &Config{
		DefaultPolicy: "deny",
		Stateful:      true,
		Counters:      true,
		ConnTimeout:   "2m",
		Rules: []Rule{
			{Source: "192.0.2.10", Destination: "10.0.0.5", Protocol: "tcp", SourcePort: 40000, DestinationPort: 22, Action: "allow"},
			{Source: "198.51.100.7", Destination: "10.0.0.80", Protocol: "udp", SourcePort: 53, DestinationPort: 5353, Action: "deny"},
		},
		SourcePrefixes: []PrefixRule{
			{Prefix: "203.0.113.0/24", Action: "deny"},
			{Prefix: "10.10.0.0/16", Action: "allow"},
		},
		DestinationPrefixes: []PrefixRule{
			{Prefix: "10.0.0.80/32", Action: "allow"},
			{Prefix: "10.0.1.0/24", Action: "deny"},
		},
	}
}

func parseAction(field, s string) (uint32, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "allow", "accept", "pass":
		return ActionAllow, nil
	case "deny", "drop":
		return ActionDeny, nil
	}
	return 0, fmt.Errorf("%s: action %q: want allow or deny", field, s)
}

func parseIPv4(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s: %q is not an IPv4 address", field, s)
	}
	return a, nil
}

func parseProto(field, s string) (uint8, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	case "icmp":
		return 1, nil
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%s: protocol %q: want tcp, udp, icmp or a number 0-255", field, s)
	}
	return uint8(n), nil
}

func parsePrefix(field, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s: %q is not an IPv4 prefix", field, s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s: %q has host bits set (did you mean %s?)", field, s, p.Masked())
	}
	return p, nil
}

// Validate checks the configuration and reports the first problem.
func (c *Config) Validate() error {
	_, err := c.State()
	return err
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

func flag(on bool) []byte {
	if on {
		return binary.LittleEndian.AppendUint32(nil, 1)
	}
	return binary.LittleEndian.AppendUint32(nil, 0)
}

// State validates the configuration and returns its map contents and
// variables.
func (c *Config) State() (*mapstate.State, error) {
	st := mapstate.New()
	def := uint32(ActionDeny)
	if strings.TrimSpace(c.DefaultPolicy) != "" {
		var err error
		if def, err = parseAction("default_policy", c.DefaultPolicy); err != nil {
			return nil, err
		}
	}
	timeout := DefaultConnTimeout
	if strings.TrimSpace(c.ConnTimeout) != "" {
		d, err := time.ParseDuration(strings.TrimSpace(c.ConnTimeout))
		if err != nil {
			return nil, fmt.Errorf("conn_timeout: %q is not a duration (like 90s or 5m)", c.ConnTimeout)
		}
		if d <= 0 {
			return nil, fmt.Errorf("conn_timeout: %s must be positive", d)
		}
		timeout = d
	}
	if len(c.Rules) > MaxRules {
		return nil, fmt.Errorf("rules: %d given, at most %d supported", len(c.Rules), MaxRules)
	}
	ruleID := uint32(0)
	seen := map[firewallFwTuple]int{}
	for i, r := range c.Rules {
		field := fmt.Sprintf("rules[%d]", i)
		src, err := parseIPv4(field+".source", r.Source)
		if err != nil {
			return nil, err
		}
		dst, err := parseIPv4(field+".destination", r.Destination)
		if err != nil {
			return nil, err
		}
		proto, err := parseProto(field, r.Protocol)
		if err != nil {
			return nil, err
		}
		if proto != 6 && proto != 17 && (r.SourcePort != 0 || r.DestinationPort != 0) {
			return nil, fmt.Errorf("%s: ports are only for tcp and udp rules", field)
		}
		act, err := parseAction(field, r.Action)
		if err != nil {
			return nil, err
		}
		key := firewallFwTuple{Saddr: be32(src), Daddr: be32(dst), Sport: be16(r.SourcePort), Dport: be16(r.DestinationPort), Proto: proto}
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s: same 5-tuple as rules[%d]", field, j)
		}
		seen[key] = i
		ruleID++
		st.Put("rules", nfmap.Encode(&key), nfmap.Encode(&firewallFwVerdict{Action: act, RuleId: ruleID}))
	}
	for _, table := range []struct {
		name, field string
		rules       []PrefixRule
	}{
		{"src_lpm", "source_prefixes", c.SourcePrefixes},
		{"dst_lpm", "destination_prefixes", c.DestinationPrefixes},
	} {
		if len(table.rules) > MaxPrefixes {
			return nil, fmt.Errorf("%s: %d given, at most %d supported", table.field, len(table.rules), MaxPrefixes)
		}
		seenPfx := map[netip.Prefix]int{}
		for i, r := range table.rules {
			field := fmt.Sprintf("%s[%d]", table.field, i)
			p, err := parsePrefix(field, r.Prefix)
			if err != nil {
				return nil, err
			}
			if j, dup := seenPfx[p]; dup {
				return nil, fmt.Errorf("%s: prefix %s repeats %s[%d]", field, p, table.field, j)
			}
			seenPfx[p] = i
			act, err := parseAction(field, r.Action)
			if err != nil {
				return nil, err
			}
			ruleID++
			key := firewallFwLpmKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr())}
			st.Put(table.name, nfmap.Encode(&key), nfmap.Encode(&firewallFwVerdict{Action: act, RuleId: ruleID}))
		}
	}
	feats := [NumFeatures]bool{
		FeatureStateful: c.Stateful,
		FeatureRules:    len(c.Rules) > 0,
		FeatureSrcLPM:   len(c.SourcePrefixes) > 0,
		FeatureDstLPM:   len(c.DestinationPrefixes) > 0,
		FeatureCounters: c.Counters,
	}
	for i, on := range feats {
		st.Put("features", binary.LittleEndian.AppendUint32(nil, uint32(i)), flag(on))
	}
	st.SetVariable("default_action", binary.LittleEndian.AppendUint32(nil, def))
	st.SetVariable("ct_timeout_ns", binary.LittleEndian.AppendUint64(nil, uint64(timeout.Nanoseconds())))
	return st, nil
}

// Spec returns a fresh copy of the embedded object's collection spec.
func Spec() (*ebpf.CollectionSpec, error) {
	return loadFirewall()
}

// Load validates cfg, loads the NF with its variables set and fills its
// maps. The stages program array is filled by the loader from its BTF
// initializer. The caller closes the collection.
func Load(cfg *Config) (*ebpf.Collection, error) {
	return nfmap.Load("firewall", cfg.State, Spec)
}

// errNoStage is returned when the stages program array lacks a stage.
var errNoStage = errors.New("firewall: stage program missing from the stages program array")

// CheckStages reports whether coll's stages program array holds both stage
// programs, which every tail call of the entry program relies on.
func CheckStages(coll *ebpf.Collection) error {
	m := coll.Maps["stages"]
	if m == nil {
		return errNoStage
	}
	for i := range uint32(2) {
		var id ebpf.ProgramID
		if err := m.Lookup(i, &id); err != nil {
			return fmt.Errorf("%w: slot %d: %v", errNoStage, i, err)
		}
	}
	return nil
}
