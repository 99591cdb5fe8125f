//go:build linux

package bench

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// NFs lists the sample network functions a Scenario can be built for, in
// the order the benchmark tables use.
var NFs = []string{"router", "l2switch", "lb", "firewall", "ddos"}

// DefaultIngress is the ingress interface of every scenario: loopback
// (ifindex 1) exists in every network namespace, so BPF_PROG_TEST_RUN can
// resolve it, and the generated router and switch configurations
// configure it as a port.
const DefaultIngress = 1

// nfKind is what the scenarios need to know about one sample NF.
type nfKind struct {
	program string
	spec    func() (*ebpf.CollectionSpec, error)
	// generate returns a configuration at the seed evaluation's sizes
	// with ingress as a port where the NF has ports, and others as
	// further ports it routes or switches to (nil: defaultOthers).
	generate func(ingress uint32, others []uint32, seed uint64) (any, error)
	// decode parses a JSON configuration of the NF's Config type.
	decode func(data []byte) (any, error)
	state  func(cfg any) (*mapstate.State, error)
	flows  func(cfg any, ingress uint32, n int, seed uint64) (traffic.FlowSet, error)
	// keys returns, for one parsed frame, the key each map of the NF
	// would be looked up with; it is the heatmap stand-in's knowledge of
	// the NF (see TraceHeatmap).
	keys func(cfg any, ingress uint32, f traffic.Flow) map[string][]byte
}

// decodeJSON returns a decoder into a fresh *T that refuses unknown fields.
func decodeJSON[T any](data []byte) (any, error) {
	cfg := new(T)
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

func lpm32(a [4]byte) []byte { return append([]byte{32, 0, 0, 0}, a[:]...) }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// tuple is the 5-tuple key layout shared by the firewall's rules and the
// balancer's connection table: saddr, daddr, sport, dport, proto, 3 pad.
func tuple(f traffic.Flow) []byte {
	k := slices.Concat(f.SrcIP.AsSlice(), f.DstIP.AsSlice(), be16(f.SrcPort), be16(f.DstPort))
	return append(k, f.Proto, 0, 0, 0)
}

var nfKinds = map[string]nfKind{
	"router": {
		program: router.Program,
		spec:    router.Spec,
		generate: func(in uint32, others []uint32, seed uint64) (any, error) {
			if others == nil {
				others = []uint32{otherPort(in)}
			}
			return traffic.RouterConfig(0, append([]uint32{in}, others[:1]...), seed)
		},
		decode: decodeJSON[router.Config],
		state:  func(cfg any) (*mapstate.State, error) { return cfg.(*router.Config).State() },
		flows: func(cfg any, in uint32, n int, seed uint64) (traffic.FlowSet, error) {
			return traffic.RouterFlows(cfg.(*router.Config), in, n, seed)
		},
		keys: func(_ any, _ uint32, f traffic.Flow) map[string][]byte {
			return map[string][]byte{"routes": lpm32(f.DstIP.As4())}
		},
	},
	"l2switch": {
		program: l2switch.Program,
		spec:    l2switch.Spec,
		generate: func(in uint32, others []uint32, seed uint64) (any, error) {
			if others == nil {
				for p := uint32(2); len(others) < 4; p++ {
					if p != in {
						others = append(others, p)
					}
				}
			}
			return traffic.L2SwitchConfig(append([]uint32{in}, others...), 4, 0, seed)
		},
		decode: decodeJSON[l2switch.Config],
		state:  func(cfg any) (*mapstate.State, error) { return cfg.(*l2switch.Config).State() },
		flows: func(cfg any, in uint32, n int, seed uint64) (traffic.FlowSet, error) {
			return traffic.L2SwitchFlows(cfg.(*l2switch.Config), in, n, seed)
		},
		keys: func(cfg any, in uint32, f traffic.Flow) map[string][]byte {
			vid := f.VLAN
			if vid == 0 {
				for _, p := range cfg.(*l2switch.Config).Ports {
					if p.Ifindex == in {
						vid = p.PVID
					}
				}
			}
			return map[string][]byte{
				"ports": binary.LittleEndian.AppendUint32(nil, in),
				"vlans": binary.LittleEndian.AppendUint32(nil, uint32(vid)),
				"fdb":   binary.LittleEndian.AppendUint16(slices.Clone(f.DstMAC), vid),
			}
		},
	},
	"lb": {
		program:  lb.Program,
		spec:     lb.Spec,
		generate: func(_ uint32, _ []uint32, seed uint64) (any, error) { return traffic.LBConfig(0, 0, seed) },
		decode:   decodeJSON[lb.Config],
		state:    func(cfg any) (*mapstate.State, error) { return cfg.(*lb.Config).State() },
		flows: func(cfg any, _ uint32, n int, seed uint64) (traffic.FlowSet, error) {
			return traffic.LBFlows(cfg.(*lb.Config), n, seed)
		},
		keys: func(_ any, _ uint32, f traffic.Flow) map[string][]byte {
			vip := slices.Concat(f.DstIP.AsSlice(), be16(f.DstPort), []byte{f.Proto, 0})
			if f.Proto == traffic.ProtoICMP {
				vip = slices.Concat(f.DstIP.AsSlice(), []byte{0, 0, 0, 0})
			}
			return map[string][]byte{"vips": vip, "conns": tuple(f)}
		},
	},
	"firewall": {
		program: firewall.Program,
		spec:    firewall.Spec,
		// Stateless, like the seed's iptables rule set: with connection
		// tracking on, every packet after a flow's first is decided by
		// the connection table and the rules are never consulted.
		generate: func(_ uint32, _ []uint32, seed uint64) (any, error) { return traffic.FirewallConfig(0, false, seed) },
		decode:   decodeJSON[firewall.Config],
		state:    func(cfg any) (*mapstate.State, error) { return cfg.(*firewall.Config).State() },
		flows: func(cfg any, _ uint32, n int, seed uint64) (traffic.FlowSet, error) {
			return traffic.FirewallFlows(cfg.(*firewall.Config), n, seed)
		},
		keys: func(_ any, _ uint32, f traffic.Flow) map[string][]byte {
			return map[string][]byte{
				"rules":   tuple(f),
				"ct":      tuple(f),
				"src_lpm": lpm32(f.SrcIP.As4()),
				"dst_lpm": lpm32(f.DstIP.As4()),
			}
		},
	},
	"ddos": {
		program: ddos.Program,
		spec:    ddos.Spec,
		generate: func(_ uint32, _ []uint32, seed uint64) (any, error) {
			return traffic.DDoSConfig(0, 200, 1_000_000, seed)
		},
		decode: decodeJSON[ddos.Config],
		state:  func(cfg any) (*mapstate.State, error) { return cfg.(*ddos.Config).State() },
		flows: func(cfg any, _ uint32, n int, seed uint64) (traffic.FlowSet, error) {
			return traffic.DDoSFlows(cfg.(*ddos.Config), n, seed)
		},
		keys: func(_ any, _ uint32, f traffic.Flow) map[string][]byte {
			src := f.SrcIP.AsSlice()
			return map[string][]byte{"blocklist": src, "blocklist_lpm": lpm32(f.SrcIP.As4()), "rate": src}
		},
	},
}

// otherPort is a second interface for NFs that route between ports: 2,
// or 1 when the ingress is 2.
func otherPort(in uint32) uint32 {
	if in == 2 {
		return 1
	}
	return 2
}

func kindOf(nf string) (nfKind, error) {
	k, ok := nfKinds[nf]
	if !ok {
		return nfKind{}, fmt.Errorf("bench: unknown NF %q (want one of %v)", nf, NFs)
	}
	return k, nil
}

// NF is the scenario logic of one sample NF, for a caller that sets up
// its own run of it (the demo, whose NF is attached by an agent): the
// same configurations, map contents and flows as a Scenario's.
type NF struct {
	// Name is one of NFs, Program its entry XDP program.
	Name, Program string
	kind          nfKind
}

// LookupNF returns the scenario logic of nf, one of NFs.
func LookupNF(nf string) (NF, error) {
	k, err := kindOf(nf)
	if err != nil {
		return NF{}, err
	}
	return NF{Name: nf, Program: k.program, kind: k}, nil
}

// Spec returns the NF's collection spec (unmodified).
func (n NF) Spec() (*ebpf.CollectionSpec, error) { return n.kind.spec() }

// Config generates a configuration at the seed evaluation's sizes, as
// NewScenario does, with ingress as a port where the NF has ports and
// others as the further ports it routes or switches to (the router takes
// the first, the switch all); nil others takes NewScenario's.
func (n NF) Config(ingress uint32, others []uint32, seed uint64) (any, error) {
	return n.kind.generate(ingress, others, seed)
}

// State returns the configuration cfg (of the NF's Config type) as map
// contents.
func (n NF) State(cfg any) (*mapstate.State, error) { return n.kind.state(cfg) }

// Flows draws count hit and count miss flows from cfg for frames arriving on
// ingress.
func (n NF) Flows(cfg any, ingress uint32, count int, seed uint64) (traffic.FlowSet, error) {
	return n.kind.flows(cfg, ingress, count, seed)
}

// ScenarioOptions describes an NF, its configuration and its traffic.
type ScenarioOptions struct {
	// NF is one of NFs.
	NF string
	// Config is the NF's configuration as JSON (its Go Config type); nil
	// generates one at the seed evaluation's sizes from Seed.
	Config []byte
	// Frames, when set, is the trace (for example read from a pcap file)
	// instead of a generated one.
	Frames [][]byte
	// Flows is the number of hit and of miss flows drawn from the
	// configuration. Default 1,000.
	Flows int
	// Ingress is the ifindex the frames arrive on (default
	// DefaultIngress); generated router and switch configurations make it
	// a port. A live testbed passes its NF interface here.
	Ingress uint32
	// Trace shapes the generated trace; its Seed also seeds the
	// configuration and the flows. Zero fields take traffic's defaults.
	Trace traffic.Options
}

// Scenario is one NF, configured, with a trace to replay into it.
type Scenario struct {
	// NF is the NF's name and Program its entry XDP program.
	NF, Program string
	// Locality names the trace's popularity: the preset, "skew S" for an
	// explicit skew, or "given" for a given trace.
	Locality string
	// Config is the NF's typed configuration (*router.Config, ...).
	Config any
	// Spec is the NF's collection spec (unmodified).
	Spec *ebpf.CollectionSpec
	// State is the configuration as map contents.
	State *mapstate.State
	// Ingress is the ifindex the frames arrive on.
	Ingress uint32
	// Frames is the trace, in replay order.
	Frames [][]byte
	// Trace is the generated trace, nil when the frames were given.
	Trace *traffic.Trace

	warmed bool
}

// DefaultFlows is the default number of hit (and of miss) flows.
const DefaultFlows = 1000

// NewScenario configures the NF and builds (or takes) its trace.
func NewScenario(opts ScenarioOptions) (*Scenario, error) {
	k, err := kindOf(opts.NF)
	if err != nil {
		return nil, err
	}
	sc := &Scenario{NF: opts.NF, Program: k.program, Ingress: opts.Ingress}
	if sc.Ingress == 0 {
		sc.Ingress = DefaultIngress
	}
	if opts.Config != nil {
		sc.Config, err = k.decode(opts.Config)
		if err != nil {
			return nil, fmt.Errorf("bench: %s configuration: %w", opts.NF, err)
		}
	} else if sc.Config, err = k.generate(sc.Ingress, nil, opts.Trace.Seed); err != nil {
		return nil, fmt.Errorf("bench: generate %s configuration: %w", opts.NF, err)
	}
	if sc.State, err = k.state(sc.Config); err != nil {
		return nil, fmt.Errorf("bench: %s configuration: %w", opts.NF, err)
	}
	if sc.Spec, err = k.spec(); err != nil {
		return nil, err
	}
	if opts.Frames != nil {
		if len(opts.Frames) == 0 {
			return nil, errors.New("bench: empty trace")
		}
		sc.Frames, sc.Locality = opts.Frames, "given"
		return sc, nil
	}
	n := opts.Flows
	if n == 0 {
		n = DefaultFlows
	}
	set, err := k.flows(sc.Config, sc.Ingress, n, opts.Trace.Seed+1)
	if err != nil {
		return nil, fmt.Errorf("bench: %s flows: %w", opts.NF, err)
	}
	if sc.Trace, err = traffic.Generate(set, opts.Trace); err != nil {
		return nil, err
	}
	sc.Locality = string(opts.Trace.Locality)
	if sc.Locality == "" {
		sc.Locality = string(traffic.LocalityHigh)
	}
	if opts.Trace.Skew > 0 {
		sc.Locality = fmt.Sprintf("skew %g", opts.Trace.Skew)
	}
	sc.Frames = sc.Trace.Frames
	return sc, nil
}

// HeatmapSource names TraceHeatmap as a Comparison's heatmap source.
const HeatmapSource = "trace key counts (exact, every packet)"

// TraceHeatmap is the exact heatmap of the trace, a reference for the
// instrumented program's (ProfileHeatmap): it parses every frame and
// counts, per map, the key the NF would look that frame up with (the
// NF-specific key layouts are written out next to each NF above).
// Malformed and non-IPv4 frames count nowhere. Unlike sampling it sees
// every packet, so it is the best case of what instrumentation can
// report.
func (sc *Scenario) TraceHeatmap() (*heatmap.Heatmap, error) {
	k, err := kindOf(sc.NF)
	if err != nil {
		return nil, err
	}
	counts := map[string]map[string]uint64{}
	for _, fr := range sc.Frames {
		f, err := traffic.Parse(fr)
		if err != nil {
			continue
		}
		for m, key := range k.keys(sc.Config, sc.Ingress, f) {
			if counts[m] == nil {
				counts[m] = map[string]uint64{}
			}
			counts[m][string(key)]++
		}
	}
	h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for m, keys := range counts {
		ms := sc.Spec.Maps[m]
		if ms == nil {
			return nil, fmt.Errorf("bench: %s has no map %q", sc.NF, m)
		}
		for key, n := range keys {
			if uint32(len(key)) != ms.KeySize {
				return nil, fmt.Errorf("bench: %s map %q: stand-in key of %d bytes, map keys are %d", sc.NF, m, len(key), ms.KeySize)
			}
			h.Maps[m] = append(h.Maps[m], heatmap.Key{Key: mapstate.Hex(key), Count: n})
		}
		// Deterministic order: most frequent first, then by key.
		slices.SortFunc(h.Maps[m], func(a, b heatmap.Key) int {
			if a.Count != b.Count {
				return cmpDesc(a.Count, b.Count)
			}
			return bytes.Compare(a.Key, b.Key)
		})
	}
	return h, nil
}

func cmpDesc(a, b uint64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}
