package ddos

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/internal/nfmap"
)

// Program is the name of the XDP entry program.
const Program = "xdp_ddos"

// Capacities fixed by the data plane (bpf/ddos.c).
const (
	MaxBlocked  = 65536 // exact blocklist entries
	MaxPrefixes = 16384 // blocklist_lpm entries
	MaxSources  = 65536 // sources tracked in the rate table
)

// Indexes of the stats per-CPU array.
const (
	StatPass          = 0 // IPv4 under its limit
	StatPassIPv6      = 1
	StatPassNonIP     = 2
	StatDropBlocked   = 3 // exact blocklist
	StatDropPrefix    = 4 // blocklisted prefix
	StatDropRate      = 5 // over the rate limit
	StatDropMalformed = 6
	StatUntracked     = 7 // passed: the rate table was full
	NumStats          = 8
)

// Window bounds accepted by Validate.
const (
	DefaultWindow = time.Second
	MinWindow     = time.Millisecond
	MaxWindow     = time.Hour
)

// Reasons maps the named block reasons to the codes stored in the maps;
// Block.Reason may also be a number.
var Reasons = map[string]uint32{
	"manual":     1,
	"scanner":    2,
	"botnet":     3,
	"reflection": 4,
	"spoofed":    5,
}

// Config is the DDoS filter's configuration.
type Config struct {
	// PacketsPerWindow is how many packets a source may send per window
	// (per CPU); 0 disables rate limiting.
	PacketsPerWindow uint64 `json:"packets_per_window" yaml:"packets_per_window"`
	// Window is the rate window as a Go duration ("1s", "100ms"), between
	// MinWindow and MaxWindow; empty means DefaultWindow.
	Window string `json:"window,omitempty" yaml:"window,omitempty"`
	// Blocklist holds the sources to drop outright.
	Blocklist []Block `json:"blocklist,omitempty" yaml:"blocklist,omitempty"`
}

// Block is one blocked source: an IPv4 address or prefix. Addresses and /32
// prefixes go to the exact blocklist hash, shorter prefixes to the
// blocklist_lpm trie.
type Block struct {
	Source string `json:"source" yaml:"source"`
	// Reason is one of the names in Reasons or a number; empty means
	// "manual".
	Reason string `json:"reason,omitempty" yaml:"reason,omitempty"`
}

// ExampleConfig returns a small configuration: 1000 packets per second per
// source, two blocked hosts and two blocked networks.
func ExampleConfig() *Config {
	return &Config{
		PacketsPerWindow: 1000,
		Window:           "1s",
		Blocklist: []Block{
			{Source: "198.51.100.23", Reason: "scanner"},
			{Source: "192.0.2.66/32", Reason: "manual"},
			{Source: "203.0.113.0/24", Reason: "botnet"},
			{Source: "100.64.0.0/10", Reason: "spoofed"},
		},
	}
}

func parseReason(field, s string) (uint32, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return Reasons["manual"], nil
	}
	if code, ok := Reasons[s]; ok {
		return code, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		names := make([]string, 0, len(Reasons))
		for name := range Reasons {
			names = append(names, name)
		}
		sort.Strings(names)
		return 0, fmt.Errorf("%s: reason %q: want one of %s or a number", field, s, strings.Join(names, ", "))
	}
	return uint32(n), nil
}

func parseSource(field, s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("%s: %q is not an IPv4 address or prefix", field, s)
		}
		return netip.PrefixFrom(a, 32), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s: %q is not an IPv4 address or prefix", field, s)
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

// State validates the configuration and returns its map contents and
// variables.
func (c *Config) State() (*mapstate.State, error) {
	window := DefaultWindow
	if strings.TrimSpace(c.Window) != "" {
		d, err := time.ParseDuration(strings.TrimSpace(c.Window))
		if err != nil {
			return nil, fmt.Errorf("window: %q is not a duration (like 1s or 100ms)", c.Window)
		}
		if d < MinWindow || d > MaxWindow {
			return nil, fmt.Errorf("window: %s outside %s..%s", d, MinWindow, MaxWindow)
		}
		window = d
	}
	st := mapstate.New()
	seen := map[netip.Prefix]int{}
	var exact, prefixes int
	for i, b := range c.Blocklist {
		field := fmt.Sprintf("blocklist[%d]", i)
		p, err := parseSource(field+".source", b.Source)
		if err != nil {
			return nil, err
		}
		if j, dup := seen[p]; dup {
			return nil, fmt.Errorf("%s: %s repeats blocklist[%d]", field, p, j)
		}
		seen[p] = i
		reason, err := parseReason(field, b.Reason)
		if err != nil {
			return nil, err
		}
		val := nfmap.Encode(&ddosDdosBlock{Reason: reason})
		addr := p.Addr().As4()
		if p.Bits() == 32 {
			if exact++; exact > MaxBlocked {
				return nil, fmt.Errorf("%s: more than %d blocked addresses", field, MaxBlocked)
			}
			st.Put("blocklist", addr[:], val)
			continue
		}
		if prefixes++; prefixes > MaxPrefixes {
			return nil, fmt.Errorf("%s: more than %d blocked prefixes", field, MaxPrefixes)
		}
		key := ddosDdosLpmKey{Prefixlen: uint32(p.Bits()), Addr: binary.LittleEndian.Uint32(addr[:])}
		st.Put("blocklist_lpm", nfmap.Encode(&key), val)
	}
	st.SetVariable("rate_limit_packets", binary.LittleEndian.AppendUint64(nil, c.PacketsPerWindow))
	st.SetVariable("rate_window_ns", binary.LittleEndian.AppendUint64(nil, uint64(window.Nanoseconds())))
	return st, nil
}

// Spec returns a fresh copy of the embedded object's collection spec.
func Spec() (*ebpf.CollectionSpec, error) {
	return loadDdos()
}

// Load validates cfg, loads the NF with its variables set and fills its
// maps. The caller closes the collection.
func Load(cfg *Config) (*ebpf.Collection, error) {
	return nfmap.Load("ddos", cfg.State, Spec)
}
