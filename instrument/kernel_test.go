//go:build linux

package instrument

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
	"github.com/morpheus-go/morpheus/verify"
)

// xdpMD is struct xdp_md, the context of an XDP test run.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// nfCase is one network function with a generated configuration and trace.
type nfCase struct {
	name    string
	spec    func() (*ebpf.CollectionSpec, error)
	progs   []string // programs to instrument
	state   func() (*mapstate.State, traffic.FlowSet, error)
	ingress uint32
	// maps are the maps whose lookups must be instrumented.
	maps []string
}

func nfCases() []nfCase {
	return []nfCase{
		{
			name: "router", spec: router.Spec, progs: []string{router.Program}, ingress: kerneltest.LoIfindex,
			maps: []string{router.MapRoutes},
			state: func() (*mapstate.State, traffic.FlowSet, error) {
				cfg, err := traffic.RouterConfig(0, []uint32{kerneltest.LoIfindex, 2}, 1)
				if err != nil {
					return nil, traffic.FlowSet{}, err
				}
				set, err := traffic.RouterFlows(cfg, kerneltest.LoIfindex, 500, 2)
				if err != nil {
					return nil, set, err
				}
				st, err := cfg.State()
				return st, set, err
			},
		},
		{
			name: "firewall", spec: firewall.Spec, progs: []string{firewall.ConntrackProgram, firewall.ACLProgram},
			maps: []string{"rules", "src_lpm", "dst_lpm", "ct"},
			state: func() (*mapstate.State, traffic.FlowSet, error) {
				cfg, err := traffic.FirewallConfig(0, true, 1)
				if err != nil {
					return nil, traffic.FlowSet{}, err
				}
				set, err := traffic.FirewallFlows(cfg, 500, 2)
				if err != nil {
					return nil, set, err
				}
				st, err := cfg.State()
				return st, set, err
			},
		},
		{
			name: "lb", spec: lb.Spec, progs: []string{lb.Program},
			state: func() (*mapstate.State, traffic.FlowSet, error) {
				cfg, err := traffic.LBConfig(0, 0, 1)
				if err != nil {
					return nil, traffic.FlowSet{}, err
				}
				set, err := traffic.LBFlows(cfg, 500, 2)
				if err != nil {
					return nil, set, err
				}
				st, err := cfg.State()
				return st, set, err
			},
		},
		{
			name: "ddos", spec: ddos.Spec, progs: []string{ddos.Program},
			maps: []string{"blocklist", "blocklist_lpm"},
			state: func() (*mapstate.State, traffic.FlowSet, error) {
				cfg, err := traffic.DDoSConfig(0, 100, 1000, 1)
				if err != nil {
					return nil, traffic.FlowSet{}, err
				}
				set, err := traffic.DDoSFlows(cfg, 500, 2)
				if err != nil {
					return nil, set, err
				}
				st, err := cfg.State()
				return st, set, err
			},
		},
		{
			name: "l2switch", spec: l2switch.Spec, progs: []string{l2switch.Program}, ingress: kerneltest.LoIfindex,
			state: func() (*mapstate.State, traffic.FlowSet, error) {
				cfg, err := traffic.L2SwitchConfig([]uint32{kerneltest.LoIfindex, 2, 3, 4}, 3, 0, 1)
				if err != nil {
					return nil, traffic.FlowSet{}, err
				}
				set, err := traffic.L2SwitchFlows(cfg, kerneltest.LoIfindex, 500, 2)
				if err != nil {
					return nil, set, err
				}
				st, err := cfg.State()
				return st, set, err
			},
		},
	}
}

// TestDifferentialNFs instruments every program of every NF at several
// rates and samplers, loads it through the verifier, and runs it side by
// side with the original (verify.Differential) on a trace with misses and
// malformed frames. The only differences allowed are entries of the maps
// the instrumentation added; the NF's own maps, verdicts and packets must
// be identical.
func TestDifferentialNFs(t *testing.T) {
	kerneltest.Require(t)
	variants := []Options{
		{Rate: 1},
		{Rate: 0.05},
		{Rate: 0.25, Sampler: SamplerPrandom},
		{Rate: 1, Recorder: RecorderRing},
		{Rate: 0.05, Recorder: RecorderRing},
	}
	for _, nc := range nfCases() {
		t.Run(nc.name, func(t *testing.T) {
			spec, err := nc.spec()
			if err != nil {
				t.Fatal(err)
			}
			st, set, err := nc.state()
			if err != nil {
				t.Fatal(err)
			}
			tr, err := traffic.Generate(set, traffic.Options{Packets: 600, MissShare: 0.2, MalformedShare: 0.05, Seed: 5})
			if err != nil {
				t.Fatal(err)
			}
			var instrumented []string
			for _, prog := range nc.progs {
				for _, o := range variants {
					o.Entries = entryCounts(st)
					v, err := Instrument(spec, prog, o)
					if errors.Is(err, ErrNoSites) {
						t.Logf("%s: no site qualifies: %+v", prog, v.Skipped)
						continue
					}
					if err != nil {
						t.Fatal(err)
					}
					for _, s := range v.Sites {
						if !slices.Contains(instrumented, s.Map) {
							instrumented = append(instrumented, s.Map)
						}
					}
					name := fmt.Sprintf("%s/rate=%g/%s/%s", prog, v.Rate, v.Sampler, v.Recorder)
					diffVariant(t, name, v, st, tr.Frames, nc.ingress)
				}
			}
			slices.Sort(instrumented)
			for _, m := range nc.maps {
				if !slices.Contains(instrumented, m) {
					t.Errorf("map %s was not instrumented (instrumented: %v)", m, instrumented)
				}
			}
			t.Logf("instrumented maps: %v", instrumented)
		})
	}
}

// entryCounts gives the number of entries the control plane put in each
// map, as an agent would pass them in Options.Entries.
func entryCounts(st *mapstate.State) map[string]int {
	out := map[string]int{}
	for name, m := range st.Maps {
		out[name] = len(m.Entries)
	}
	return out
}

// diffVariant runs verify.Differential with the baseline (original code,
// same map set) against the variant and fails on any mismatch outside
// the added maps. verify compares every map both collections have, so the
// heat maps appear as differences; they must, or the comparison would not
// be looking at the candidate's maps at all.
func diffVariant(t *testing.T, name string, v *Variant, st *mapstate.State, frames [][]byte, ingress uint32) {
	t.Helper()
	cand := verify.Candidate{v.Program: v.Spec.Programs[v.Program].Instructions}
	opts := verify.DiffOptions{MapCheckInterval: -1, MaxMismatches: math.MaxInt32}
	if ingress != 0 {
		opts.Context = kerneltest.XDPContext(ingress)
	}
	rep, err := verify.Differential(context.Background(), v.Baseline(), st, cand, frames, opts)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !rep.Complete || rep.Runs == 0 {
		t.Fatalf("%s: incomplete differential test: %s", name, rep)
	}
	heat := 0
	for _, m := range rep.Mismatches {
		if m.Kind == verify.KindMap && v.IsAdded(m.Map) {
			heat++
			continue
		}
		t.Errorf("%s: %s", name, m)
	}
	t.Logf("%s: %d runs, %d differences in added maps only", name, rep.Runs, heat)
}

// runFrames runs every frame once through prog and returns the verdicts.
func runFrames(t *testing.T, prog *ebpf.Program, frames [][]byte, ingress uint32) []uint32 {
	t.Helper()
	verdicts := make([]uint32, len(frames))
	out := make([]byte, 4096)
	for i, f := range frames {
		opts := ebpf.RunOptions{Data: f, DataOut: out,
			Context: xdpMD{DataEnd: uint32(len(f)), IngressIfindex: ingress}}
		ret, err := prog.Run(&opts)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		verdicts[i] = ret
	}
	return verdicts
}

// routerVariant loads the router with its 2,592-route configuration and,
// against the same maps, the variant built with opts.
func routerVariant(tb testing.TB, opts Options) (*Variant, *ebpf.Collection, *ebpf.Collection) {
	tb.Helper()
	cfg, err := traffic.RouterConfig(0, []uint32{kerneltest.LoIfindex, 2}, 1)
	if err != nil {
		tb.Fatal(err)
	}
	orig, err := router.Load(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { orig.Close() })
	spec, err := router.Spec()
	if err != nil {
		tb.Fatal(err)
	}
	st, err := cfg.State()
	if err != nil {
		tb.Fatal(err)
	}
	opts.Entries = entryCounts(st)
	v, err := Instrument(spec, router.Program, opts)
	if err != nil {
		tb.Fatal(err)
	}
	// As the agent does: the variant shares the running NF's maps.
	coll, err := v.Load(orig.Maps)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { coll.Close() })
	return v, orig, coll
}

// routerTrace is a high-locality router trace without malformed frames.
func routerTrace(tb testing.TB, packets int, seed uint64) *traffic.Trace {
	tb.Helper()
	cfg, err := traffic.RouterConfig(0, []uint32{kerneltest.LoIfindex, 2}, 1)
	if err != nil {
		tb.Fatal(err)
	}
	set, err := traffic.RouterFlows(cfg, kerneltest.LoIfindex, 1000, 2)
	if err != nil {
		tb.Fatal(err)
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: packets, Locality: traffic.LocalityHigh, MissShare: 0.2, Seed: seed})
	if err != nil {
		tb.Fatal(err)
	}
	return tr
}

// routeKey is the router's LPM lookup key for a frame of flow f: prefix
// length 32 and the destination address in network byte order.
func routeKey(f traffic.Flow) string {
	k := binary.LittleEndian.AppendUint32(nil, 32)
	a := f.DstIP.As4()
	return string(append(k, a[:]...))
}

// exactCounts counts the route keys a trace looks up: every well-formed
// frame of the generated router traffic reaches the routes lookup.
func exactCounts(tr *traffic.Trace) map[string]uint64 {
	want := map[string]uint64{}
	for i, fi := range tr.PacketFlow {
		if !tr.Malformed[i] {
			want[routeKey(tr.Flows[fi])]++
		}
	}
	return want
}

// TestExactCountsAtFullRate: at rate 1 the heat map holds exactly the
// number of times each key was looked up, and the variant's verdicts and
// the NF's counters equal the original's.
func TestExactCountsAtFullRate(t *testing.T) {
	kerneltest.Require(t)
	for _, r := range []Recorder{RecorderHash, RecorderRing} {
		t.Run(r.String(), func(t *testing.T) { exactCountsAtFullRate(t, r) })
	}
}

func exactCountsAtFullRate(t *testing.T, r Recorder) {
	v, orig, coll := routerVariant(t, Options{Rate: 1, Recorder: r})
	tr := routerTrace(t, 5000, 7)
	want := exactCounts(tr)

	got := runFrames(t, coll.Programs[router.Program], tr.Frames, kerneltest.LoIfindex)
	before, err := router.ReadCounters(orig.Maps[router.MapCounters])
	if err != nil {
		t.Fatal(err)
	}
	ref := runFrames(t, orig.Programs[router.Program], tr.Frames, kerneltest.LoIfindex)
	if !slices.Equal(got, ref) {
		t.Error("verdicts of the variant differ from the original's")
	}
	after, err := router.ReadCounters(orig.Maps[router.MapCounters])
	if err != nil {
		t.Fatal(err)
	}
	// Both runs updated the shared counters by the same amounts.
	for i := range after {
		if after[i].Packets != 2*before[i].Packets {
			t.Errorf("counter %s: %d after the variant, %d after both", router.CounterIndex(i), before[i].Packets, after[i].Packets)
		}
	}

	h, err := v.Collect(coll.Maps)
	if err != nil {
		t.Fatal(err)
	}
	gotCounts := map[string]uint64{}
	for _, k := range h.Maps[router.MapRoutes] {
		gotCounts[string(k.Key)] = k.Count
	}
	if len(gotCounts) != len(want) {
		t.Errorf("%d keys recorded, want %d", len(gotCounts), len(want))
	}
	for k, n := range want {
		if gotCounts[k] != n {
			t.Errorf("key %x: count %d, want %d", k, gotCounts[k], n)
		}
	}
}

// TestSampledTopKeys: at 5% over 20,000 packets of a high-locality trace
// the heatmap finds the hot keys (top-8 recall) and each hot key's
// estimate lies within 5 standard deviations of binomial sampling of its
// true count, for both samplers.
func TestSampledTopKeys(t *testing.T) {
	kerneltest.Require(t)
	tr := routerTrace(t, 20000, 11)
	want := exactCounts(tr)
	top := topKeys(want, 8)
	var total uint64
	for _, n := range want {
		total += n
	}
	for _, o := range []Options{{Rate: 0.05}, {Rate: 0.05, Sampler: SamplerPrandom}, {Rate: 0.05, Recorder: RecorderRing}} {
		t.Run(o.Sampler.String()+"/"+o.Recorder.String(), func(t *testing.T) {
			v, _, coll := routerVariant(t, o)
			runFrames(t, coll.Programs[router.Program], tr.Frames, kerneltest.LoIfindex)
			h, err := v.Collect(coll.Maps)
			if err != nil {
				t.Fatal(err)
			}
			est := map[string]uint64{}
			var sum uint64
			for _, k := range h.Maps[router.MapRoutes] {
				est[string(k.Key)] = k.Count
				sum += k.Count
			}
			found := 0
			for _, k := range h.Top(router.MapRoutes, 8) {
				if slices.Contains(top, string(k.Key)) {
					found++
				}
			}
			recall := float64(found) / float64(len(top))
			t.Logf("top-8 recall %.2f; %d of %d lookups estimated", recall, sum, total)
			if recall < 0.75 {
				t.Errorf("top-8 recall %.2f, want >= 0.75", recall)
			}
			p := v.Rate
			check := func(what string, truth, got uint64) {
				sd := math.Sqrt(float64(truth)*p*(1-p)) / p
				if d := math.Abs(float64(got) - float64(truth)); d > 5*sd+1/p {
					t.Errorf("%s: estimate %d, true %d (|diff| %.0f > 5 sd = %.0f)", what, got, truth, d, 5*sd)
				}
			}
			check("total", total, sum)
			for _, k := range top {
				check(fmt.Sprintf("key %x", k), want[k], est[k])
			}
		})
	}
}

// topKeys returns the k keys with the highest counts.
func topKeys(counts map[string]uint64, k int) []string {
	keys := make([]string, 0, len(counts))
	for key := range counts {
		keys = append(keys, key)
	}
	sort.Slice(keys, func(i, j int) bool {
		if counts[keys[i]] != counts[keys[j]] {
			return counts[keys[i]] > counts[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys[:min(k, len(keys))]
}

// TestWindows drives the profiling loop of the agent: drain a window into
// a decaying profile, check the map is empty, decay counts in the kernel.
func TestWindows(t *testing.T) {
	kerneltest.Require(t)
	v, _, coll := routerVariant(t, Options{Rate: 1})
	prog := coll.Programs[router.Program]
	hm := coll.Maps[v.HeatMaps[router.MapRoutes]]

	first := routerTrace(t, 2000, 21)
	runFrames(t, prog, first.Frames, kerneltest.LoIfindex)
	w1, err := v.Drain(coll.Maps)
	if err != nil {
		t.Fatal(err)
	}
	if left, err := ReadCounts(hm); err != nil || len(left) != 0 {
		t.Fatalf("after drain: %d entries left, %v", len(left), err)
	}
	if got, want := countsOf(w1), exactCounts(first); !mapsEqual(got, want) {
		t.Fatalf("drained window differs from the trace's key counts")
	}

	// A second window with other traffic: the profile follows it.
	second := routerTrace(t, 2000, 22)
	runFrames(t, prog, second.Frames, kerneltest.LoIfindex)
	w2, err := v.Drain(coll.Maps)
	if err != nil {
		t.Fatal(err)
	}
	p := heatmap.NewProfile(0.5)
	p.Merge(w1)
	p.Merge(w2)
	ph := p.Heatmap()
	c1, c2 := exactCounts(first), exactCounts(second)
	for _, k := range ph.Maps[router.MapRoutes] {
		want := math.Round(0.5*float64(c1[string(k.Key)]) + float64(c2[string(k.Key)]))
		if float64(k.Count) != want {
			t.Fatalf("profile key %x: %d, want %.0f", []byte(k.Key), k.Count, want)
		}
	}

	// In-kernel decay halves every count and forgets the ones.
	runFrames(t, prog, second.Frames, kerneltest.LoIfindex)
	if err := v.Decay(coll.Maps, 0.5); err != nil {
		t.Fatal(err)
	}
	left, err := ReadCounts(hm)
	if err != nil {
		t.Fatal(err)
	}
	for k, n := range c2 {
		// Per CPU floor(c/2); the test runs may spread over CPUs.
		if got := left[k]; got > n/2 || got+2 < n/2 {
			t.Errorf("key %x: %d after decay, had %d", k, got, n)
		}
		if n == 1 && left[k] != 0 {
			t.Errorf("key %x seen once survived decay", k)
		}
	}
	if err := v.Reset(coll.Maps); err != nil {
		t.Fatal(err)
	}
	if left, _ := ReadCounts(hm); len(left) != 0 {
		t.Errorf("%d entries after reset", len(left))
	}
}

// TestRingWindows: a ring drains into the exact counts of a window shorter
// than the ring, clears, and then weights a window longer than the ring
// by the samples it stands for.
func TestRingWindows(t *testing.T) {
	kerneltest.Require(t)
	v, _, coll := routerVariant(t, Options{Rate: 1, Recorder: RecorderRing, RingEntries: 4096})
	prog := coll.Programs[router.Program]
	first := routerTrace(t, 2000, 21)
	runFrames(t, prog, first.Frames, kerneltest.LoIfindex)
	w1, err := v.Drain(coll.Maps)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := countsOf(w1), exactCounts(first); !mapsEqual(got, want) {
		t.Fatalf("drained window differs from the trace's key counts")
	}
	if h, err := v.Collect(coll.Maps); err != nil || len(h.Maps[router.MapRoutes]) != 0 {
		t.Fatalf("after drain: %v, %v", h, err)
	}
	if err := v.Decay(coll.Maps, 0.5); err == nil {
		t.Error("decaying a ring succeeded")
	}
	// 3 x 2000 lookups into a 4096-entry ring: the estimate still sums to
	// the number of lookups (runs may spread over CPUs, each weighted).
	runFrames(t, prog, first.Frames, kerneltest.LoIfindex)
	runFrames(t, prog, first.Frames, kerneltest.LoIfindex)
	runFrames(t, prog, first.Frames, kerneltest.LoIfindex)
	w2, err := v.Collect(coll.Maps)
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, n := range countsOf(w2) {
		sum += n
	}
	if want := uint64(3 * len(first.Frames)); sum+uint64(len(w2.Maps[router.MapRoutes])) < want || sum > want+uint64(len(w2.Maps[router.MapRoutes])) {
		t.Errorf("estimated %d lookups, want %d", sum, want)
	}
	if err := v.Reset(coll.Maps); err != nil {
		t.Fatal(err)
	}
}

func countsOf(h *heatmap.Heatmap) map[string]uint64 {
	out := map[string]uint64{}
	for _, keys := range h.Maps {
		for _, k := range keys {
			out[string(k.Key)] += k.Count
		}
	}
	return out
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestHandWritten loads the variant of testSpec at rate 1 and checks that
// it returns what the original returns, that R7 survived the injected
// calls (the verdict depends on it) and that the spilled map-value key
// and the stack keys were all counted once per run.
func TestHandWritten(t *testing.T) {
	kerneltest.Require(t)
	const runs = 10
	for _, tc := range []struct {
		hit bool
		rec Recorder
	}{{true, RecorderHash}, {false, RecorderHash}, {true, RecorderRing}, {false, RecorderRing}} {
		hit := tc.hit
		t.Run(fmt.Sprintf("lpm-hit=%v/%s", hit, tc.rec), func(t *testing.T) {
			v, err := Instrument(testSpec(), "prog", Options{Rate: 1, Recorder: tc.rec})
			if err != nil {
				t.Fatal(err)
			}
			st := mapstate.New()
			if hit {
				st.Put("lpm", []byte{8, 0, 0, 0, 10, 0, 0, 0}, []byte{1, 0, 0, 0})
			}
			// arr[5] holds the key of the last lookup: 7.
			st.Put("arr", []byte{5, 0, 0, 0}, []byte{7, 0, 0, 0, 0, 0, 0, 0})
			var verdicts [2]uint32
			var coll *ebpf.Collection
			for i, s := range []*ebpf.CollectionSpec{v.Baseline(), v.Spec.Copy()} {
				c, err := st.Load(s, ebpf.CollectionOptions{})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				for range runs {
					verdicts[i] = runFrames(t, c.Programs["prog"], [][]byte{make([]byte, 64)}, 0)[0]
				}
				coll = c
			}
			want := uint32(1)
			if hit {
				want = 2
			}
			if verdicts[0] != want || verdicts[1] != want {
				t.Fatalf("verdicts original %d, variant %d, want %d", verdicts[0], verdicts[1], want)
			}
			h, err := v.Collect(coll.Maps)
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprint(countsOf(&heatmap.Heatmap{Maps: map[string][]heatmap.Key{"lpm": h.Maps["lpm"]}}),
				countsOf(&heatmap.Heatmap{Maps: map[string][]heatmap.Key{"big": h.Maps["big"]}}))
			wantCounts := fmt.Sprint(map[string]uint64{"\x20\x00\x00\x00\x0a\x00\x00\x01": runs},
				map[string]uint64{"\x05\x00\x00\x00": runs, "\x07\x00\x00\x00": runs})
			if got != wantCounts {
				t.Errorf("counts %q, want %q", got, wantCounts)
			}
		})
	}
}
