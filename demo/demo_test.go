//go:build linux

package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// TestRun runs a short router demo through the library and checks every
// phase, the proof of the control-plane change, the outputs and that
// nothing is left behind.
func TestRun(t *testing.T) {
	kerneltest.Require(t)
	var out syncBuffer
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, Options{Duration: 10 * time.Second, OutDir: dir, Out: &out, Packets: 1 << 14})
	t.Logf("demo took %v; output:\n%s", time.Since(start), out.String())
	if err != nil {
		t.Fatal(err)
	}

	var names []string
	for _, p := range rep.Phases {
		names = append(names, p.Name)
	}
	if got, want := strings.Join(names, ","), "baseline,optimize,change,shift"; got != want {
		t.Fatalf("phases %s, want %s", got, want)
	}
	base, opt := rep.Phases[0], rep.Phases[1]
	if base.PPS <= 0 || base.NsPerPacket <= 0 {
		t.Errorf("baseline measured nothing: %+v", base)
	}
	if base.Optimized || len(base.Programs) != 1 || base.Programs[0] != rep.OriginalID {
		t.Errorf("baseline ran %v (optimized %v), want only the original %d", base.Programs, base.Optimized, rep.OriginalID)
	}
	if !opt.Optimized || opt.Swaps < 1 {
		t.Errorf("optimize phase: optimized %v, %d swaps, programs %v", opt.Optimized, opt.Swaps, opt.Programs)
	}
	if len(rep.Versions) == 0 || rep.Versions[0] == rep.OriginalID {
		t.Errorf("optimized versions %v, original %d", rep.Versions, rep.OriginalID)
	}
	if rep.Stats.Swaps < 1 || rep.Stats.ProfileWindows < 1 {
		t.Errorf("agent stats: %d swaps, %d profiling windows", rep.Stats.Swaps, rep.Stats.ProfileWindows)
	}

	c := rep.Change
	if c == nil {
		t.Fatal("no control-plane change in the report")
	}
	if !c.UsedAtOnce {
		t.Errorf("change %q not used by the next test run: before %s, after %s, original %s", c.Description, c.Before, c.After, c.Original)
	}
	if c.ProgramID == rep.OriginalID {
		t.Errorf("the change was proven on the original program %d, not an optimized one", c.ProgramID)
	}
	if len(c.GuardBumps) == 0 || !strings.HasPrefix(c.GuardBumps[0], "routes ") {
		t.Errorf("guard bumps %v, want the routes guard", c.GuardBumps)
	}

	for _, want := range []string{"== phase 1", "== phase 4", ">> swap", ">> guard", "the new entry is used at once", "summary (router"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	for _, name := range []string{ThroughputPNG, CostPNG, HotPNG} {
		checkPNG(t, filepath.Join(dir, name))
	}
	page, err := os.ReadFile(filepath.Join(dir, PageHTML))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<table>", ThroughputPNG, "baseline", "used by the very next packet"} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("page lacks %q", want)
		}
	}
	checkNothingLeft(t, rep)
}

// TestRunCancel cancels the demo in the middle of the optimize phase,
// as Ctrl-C does, and checks that it returns at once and removes
// everything.
func TestRunCancel(t *testing.T) {
	kerneltest.Require(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w := &cancelWriter{marker: "== phase 2", cancel: cancel}
	done := make(chan struct{})
	var rep *Report
	var err error
	go func() {
		defer close(done)
		rep, err = Run(ctx, Options{Duration: 20 * time.Second, OutDir: t.TempDir(), Out: w, Packets: 1 << 12})
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after the cancellation")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if rep == nil || len(rep.Created.Interfaces) == 0 {
		t.Fatal("no report of what was created")
	}
	checkNothingLeft(t, rep)
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("%s: %v image", path, b)
	}
}

// checkNothingLeft asserts that the demo's namespaces, veth ends,
// programs (and with them their links) and pins are gone.
func checkNothingLeft(t *testing.T, rep *Report) {
	t.Helper()
	// A thread that ran in a namespace exits when its goroutine ends,
	// shortly after: allow it a moment.
	for _, ino := range rep.Created.Namespaces {
		deadline := time.Now().Add(5 * time.Second)
		for {
			where := heldNamespaces(t)[ino]
			if where == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("network namespace %d still held by this process (%s)", ino, where)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, name := range rep.Created.Interfaces {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("interface %s still exists", name)
		}
	}
	if len(rep.Created.Programs) == 0 {
		t.Error("no program recorded")
	}
	created := map[ebpf.ProgramID]bool{}
	for _, id := range rep.Created.Programs {
		created[id] = true
	}
	var it link.Iterator
	for it.Next() {
		if info, err := it.Link.Info(); err == nil && created[info.Program] {
			t.Errorf("link %d still attaches program %d", it.ID, info.Program)
		}
	}
	it.Close()
	if err := it.Err(); err != nil {
		t.Error(err)
	}
	// Programs are freed when their last reference (fd, link) goes:
	// allow the kernel a moment for deferred releases.
	deadline := time.Now().Add(5 * time.Second)
	for _, id := range rep.Created.Programs {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				p.Close()
			}
			if time.Now().After(deadline) {
				t.Errorf("program %d still loaded (%v)", id, err)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	matches, _ := filepath.Glob("/sys/fs/bpf/*demo-" + rep.NF + "*")
	if len(matches) > 0 {
		t.Errorf("pins left: %v", matches)
	}
}

// heldNamespaces returns the inodes of the network namespaces this
// process's threads are in or holds descriptors of, with the holder.
func heldNamespaces(t *testing.T) map[uint64]string {
	t.Helper()
	held := map[uint64]string{}
	add := func(link string) {
		var ino uint64
		if target, err := os.Readlink(link); err == nil {
			if _, err := fmt.Sscanf(target, "net:[%d]", &ino); err == nil {
				held[ino] = link
			}
		}
	}
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, l := range tasks {
		add(l)
	}
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, l := range fds {
		add(l)
	}
	return held
}

// syncBuffer is a bytes.Buffer safe for the demo's concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cancelWriter cancels when the output contains marker.
type cancelWriter struct {
	syncBuffer
	marker string
	cancel context.CancelFunc
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if strings.Contains(w.String(), w.marker) {
		w.cancel()
	}
	return n, err
}

func TestOptionsErrors(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"unknown NF", Options{NF: "bridge"}, `unknown network function "bridge"`},
		{"too short", Options{Duration: time.Second}, "too short"},
		{"bad locality", Options{Locality: "medium"}, "medium"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(t.Context(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestChanges checks, for every NF, that phase 3's change of the hottest
// flow's entry writes its main table, without the kernel.
func TestChanges(t *testing.T) {
	tests := []struct {
		nf       string
		wantMaps []string
	}{
		{"router", []string{"routes"}},
		{"l2switch", []string{"fdb"}},
		{"lb", []string{"vips"}},
		{"firewall", nil}, // the deciding table depends on the flow
		{"ddos", nil},     // an address or a prefix
	}
	for _, tc := range tests {
		t.Run(tc.nf, func(t *testing.T) {
			k, err := kindOf(tc.nf)
			if err != nil {
				t.Fatal(err)
			}
			const ingress = 2
			cfg, err := k.Config(ingress, []uint32{200, 201, 202, 203}, 0)
			if err != nil {
				t.Fatal(err)
			}
			set, err := k.Flows(cfg, ingress, 200, 1)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := traffic.Generate(set, traffic.Options{Packets: 4096, Seed: 2})
			if err != nil {
				t.Fatal(err)
			}
			newCfg, desc, err := k.change(cfg, hottestFlow(tr))
			if err != nil {
				t.Fatal(err)
			}
			before, err := k.State(cfg)
			if err != nil {
				t.Fatal(err)
			}
			after, err := k.State(newCfg)
			if err != nil {
				t.Fatal(err)
			}
			// The change must not touch the original configuration.
			again, err := k.State(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(diffStates(before, again)) != 0 {
				t.Fatal("change modified the original configuration")
			}
			writes := diffStates(before, after)
			if len(writes) == 0 {
				t.Fatalf("%s writes nothing", desc)
			}
			maps := map[string]bool{}
			for _, w := range writes {
				maps[w.Map] = true
			}
			for _, m := range tc.wantMaps {
				if !maps[m] {
					t.Errorf("%s: writes %v, not %s", desc, maps, m)
				}
			}
			t.Logf("%s: %d writes to %v", desc, len(writes), maps)
		})
	}
}

func TestSummarizePhases(t *testing.T) {
	t0 := time.Unix(1000, 0)
	sample := func(sec float64, id ebpf.ProgramID, ver string, pkts uint64, rtNs int64) Sample {
		d := time.Duration(sec * float64(time.Second))
		return Sample{At: t0.Add(d), Elapsed: d, ProgramID: id, Version: ver, Packets: pkts, RunTime: time.Duration(rtNs)}
	}
	samples := []Sample{
		sample(0, 1, "original", 0, 0),
		sample(1, 1, "original", 1000, 100_000), // 1000 pps, 100 ns
		sample(2, 1, "original", 2000, 200_000),
		sample(2.5, 7, "profiling", 2500, 260_000),
		sample(3, 9, "v1", 4000, 320_000),
		sample(4, 9, "v1", 6000, 420_000), // 2000 pps, 50 ns
	}
	phases := []Phase{
		{Name: PhaseBaseline, Start: 0, End: 2 * time.Second},
		{Name: PhaseOptimize, Start: 2 * time.Second, End: 4 * time.Second},
		{Name: PhaseChange, Start: 5 * time.Second, End: 6 * time.Second},
	}
	events := []Event{{Kind: "swap", Elapsed: 2900 * time.Millisecond}, {Kind: "guard-bump", Elapsed: 3 * time.Second}}
	summarizePhases(phases, samples, 1, events)
	tests := []struct {
		i                     int
		pps, ns, speedup, nsx float64
		steady                float64
		swaps                 int
		optimized             bool
		programs              int
	}{
		{0, 1000, 100, 1, 1, 100, 0, false, 1},
		{1, 2000, 55, 2, 100.0 / 55, 50, 1, true, 3},
		{2, 0, 0, 0, 0, 0, 0, false, 0},
	}
	for _, tc := range tests {
		p := phases[tc.i]
		if !near(p.PPS, tc.pps) || !near(p.NsPerPacket, tc.ns) || !near(p.Speedup, tc.speedup) || !near(p.NsSpeedup, tc.nsx) || !near(p.SteadyNsPerPacket, tc.steady) ||
			p.Swaps != tc.swaps || p.Optimized != tc.optimized || len(p.Programs) != tc.programs {
			t.Errorf("phase %s: got %+v, want pps %v ns %v speedup %v/%v swaps %d optimized %v programs %d",
				p.Name, p, tc.pps, tc.ns, tc.speedup, tc.nsx, tc.swaps, tc.optimized, tc.programs)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 }

func TestHotSet(t *testing.T) {
	h := heatmapOf(map[string]map[string]uint64{
		"routes": {"a1": 50, "a2": 30, "b1": 15},
		"other":  {"x": 1000},
	})
	label := func(m string, key []byte) string {
		if m != "routes" {
			return ""
		}
		return string(key[:1]) // aggregate by the first byte
	}
	tests := []struct {
		k    int
		want []HotKey
	}{
		{1, []HotKey{{Key: "a", Count: 80, Share: 80.0 / 95}}},
		{5, []HotKey{{Key: "a", Count: 80, Share: 80.0 / 95}, {Key: "b", Count: 15, Share: 15.0 / 95}}},
	}
	for _, tc := range tests {
		hs := hotSet(h, "l", label, tc.k)
		if fmt.Sprint(hs.Keys) != fmt.Sprint(tc.want) {
			t.Errorf("top %d: got %v, want %v", tc.k, hs.Keys, tc.want)
		}
	}
}

func TestRateBetween(t *testing.T) {
	t0 := time.Unix(0, 0)
	tests := []struct {
		name string
		a, b Sample
		want Rate
	}{
		{"normal", Sample{At: t0}, Sample{At: t0.Add(time.Second), Packets: 500, RunTime: 50 * time.Microsecond}, Rate{500, 100}},
		{"no packets", Sample{At: t0, Packets: 5}, Sample{At: t0.Add(time.Second), Packets: 5}, Rate{0, 0}},
		{"same time", Sample{At: t0}, Sample{At: t0, Packets: 5, RunTime: 5}, Rate{0, 1}},
	}
	for _, tc := range tests {
		if got := rateBetween(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func heatmapOf(counts map[string]map[string]uint64) *heatmap.Heatmap {
	h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for m, keys := range counts {
		for k, n := range keys {
			h.Maps[m] = append(h.Maps[m], heatmap.Key{Key: mapstate.Hex(k), Count: n})
		}
	}
	return h
}

// loaders load each NF from its typed configuration, for TestChangesKernel.
var loaders = map[string]func(cfg any) (*ebpf.Collection, error){
	"router":   func(cfg any) (*ebpf.Collection, error) { return router.Load(cfg.(*router.Config)) },
	"l2switch": func(cfg any) (*ebpf.Collection, error) { return l2switch.Load(cfg.(*l2switch.Config)) },
	"lb":       func(cfg any) (*ebpf.Collection, error) { return lb.Load(cfg.(*lb.Config)) },
	"firewall": func(cfg any) (*ebpf.Collection, error) { return firewall.Load(cfg.(*firewall.Config)) },
	"ddos":     func(cfg any) (*ebpf.Collection, error) { return ddos.Load(cfg.(*ddos.Config)) },
}

// TestChangesKernel checks, for every NF, that phase 3's change makes the
// NF handle the hottest flow differently: the demo's proof (the optimized
// program's run after the change differs from before) needs that.
func TestChangesKernel(t *testing.T) {
	kerneltest.Require(t)
	r, err := newTestbed(t.Context(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ingress := uint32(r.NFIfindex())
	for _, nf := range NFs {
		t.Run(nf, func(t *testing.T) {
			k, _ := kindOf(nf)
			cfg, err := k.Config(ingress, []uint32{200, 201, 202, 203}, 0)
			if err != nil {
				t.Fatal(err)
			}
			set, err := k.Flows(cfg, ingress, 200, 1)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := traffic.Generate(set, traffic.Options{Packets: 4096, Seed: 2})
			if err != nil {
				t.Fatal(err)
			}
			flow := hottestFlow(tr)
			newCfg, desc, err := k.change(cfg, flow)
			if err != nil {
				t.Fatal(err)
			}
			before, _ := k.State(cfg)
			after, _ := k.State(newCfg)
			coll, err := loaders[nf](cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer coll.Close()
			pkt, err := traffic.Build(flow, 64)
			if err != nil {
				t.Fatal(err)
			}
			prog := coll.Programs[k.Program]
			v0, out0, err := r.TestRun(prog, pkt, ingress)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range diffStates(before, after) {
				m := coll.Maps[w.Map]
				if w.Value == nil {
					err = m.Delete(w.Key)
				} else {
					err = m.Update(w.Key, w.Value, ebpf.UpdateAny)
				}
				if err != nil {
					t.Fatalf("%s: %v", w.Map, err)
				}
			}
			v1, out1, err := r.TestRun(prog, pkt, ingress)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s -> %s", desc, TestResult{v0, out0}, TestResult{v1, out1})
			if (TestResult{v0, out0}).equal(TestResult{v1, out1}) {
				t.Errorf("%s does not change how flow %s is handled: %s", desc, flow, TestResult{v0, out0})
			}
		})
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name  string
		euid  int
		probe error
		want  string
	}{
		{"root", 0, nil, ""},
		{"not root", 1000, nil, "needs root"},
		{"no BPF", 0, os.ErrPermission, "BPF unavailable: loading a trivial XDP program failed: permission denied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := check(tc.euid, func() error { return tc.probe })
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
