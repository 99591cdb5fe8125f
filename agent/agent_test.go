package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/traffic"
)

// routerCase is a router configuration, the destination whose route the
// test changes through the agent, and an optional heatmap.
type routerCase struct {
	name   string
	cfg    func(t *testing.T) *router.Config
	heat   func(cfg *router.Config) *heatmap.Heatmap
	prefix func(cfg *router.Config) string // the route changed
	// pass is the pass whose rewrite the running program must hold.
	pass string
}

func hostIn(prefix string) string {
	a := netip.MustParsePrefix(prefix).Addr().As4()
	a[3] |= 5
	return netip.AddrFrom4(a).String()
}

func routerCases() []routerCase {
	return []routerCase{
		{
			name:   "inlined",
			cfg:    func(*testing.T) *router.Config { return testRouterConfig() },
			prefix: func(*router.Config) string { return "10.20.30.0/24" },
			pass:   "mapinline",
		},
		{
			name: "hotcache",
			cfg: func(t *testing.T) *router.Config {
				cfg, err := traffic.RouterConfig(200, []uint32{1, 2}, 7)
				if err != nil {
					t.Fatal(err)
				}
				return cfg
			},
			heat: func(cfg *router.Config) *heatmap.Heatmap {
				h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
				for i, r := range cfg.Routes[1:7] {
					a := netip.MustParseAddr(hostIn(r.Prefix)).As4()
					key := binary.LittleEndian.AppendUint32(nil, 32)
					h.Maps[router.MapRoutes] = append(h.Maps[router.MapRoutes], heatmap.Key{Key: append(key, a[:]...), Count: uint64(100 - i)})
				}
				return h
			},
			prefix: func(cfg *router.Config) string {
				for _, r := range cfg.Routes[1:7] {
					if r.Action != router.ActionBlackhole && netip.MustParsePrefix(r.Prefix).Bits() <= 29 {
						return r.Prefix
					}
				}
				return cfg.Routes[1].Prefix
			},
			pass: "", // hotcache or dss (which takes hot keys in front of its hash)
		},
		{
			// 500 mixed-length routes: dss's hash on the masked key.
			name:   "dss-hash",
			cfg:    generatedRouter(500),
			prefix: forwardedRoute,
			pass:   "dss",
		},
		{
			// The seed's 2,592 routes: dss's DIR-16-8-8 tables.
			name:   "dss-dir",
			cfg:    generatedRouter(2592),
			prefix: forwardedRoute,
			pass:   "dss",
		},
	}
}

func generatedRouter(routes int) func(t *testing.T) *router.Config {
	return func(t *testing.T) *router.Config {
		cfg, err := traffic.RouterConfig(routes, []uint32{1, 2}, 7)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
}

// forwardedRoute picks a forwarding route that no longer route overlaps
// at the probe address, so blackholing it changes the probe's verdict.
func forwardedRoute(cfg *router.Config) string {
	for _, r := range cfg.Routes {
		p := netip.MustParsePrefix(r.Prefix)
		if r.Action == router.ActionBlackhole || p.Bits() == 0 || p.Bits() > 24 {
			continue
		}
		probe := netip.MustParseAddr(hostIn(r.Prefix))
		covered := false
		for _, o := range cfg.Routes {
			op := netip.MustParsePrefix(o.Prefix)
			if op.Bits() > p.Bits() && op.Contains(probe) {
				covered = true
				break
			}
		}
		if !covered {
			return r.Prefix
		}
	}
	return cfg.Routes[1].Prefix
}

func withRoute(cfg *router.Config, prefix string, r router.Route) *router.Config {
	c := *cfg
	c.Routes = slices.Clone(cfg.Routes)
	for i := range c.Routes {
		if c.Routes[i].Prefix == prefix {
			r.Prefix = prefix
			c.Routes[i] = r
		}
	}
	return &c
}

// TestRouterGuards attaches the router to a veth through the agent, lets
// a cycle optimize it, and checks that a route changed through the
// agent's map handle takes effect on the very next test run of the
// running (optimized) program, before any re-optimization: the guard
// works. Then the next cycle re-specializes, and Stop restores the
// original.
func TestRouterGuards(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range routerCases() {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			ns := newTestNetns(t)
			cfg := tc.cfg(t)
			st, err := cfg.State()
			if err != nil {
				t.Fatal(err)
			}
			spec, err := router.Spec()
			if err != nil {
				t.Fatal(err)
			}
			opts := Options{Name: "router", Generated: 300, Seed: 1, Logger: testLogger(t)}
			if tc.heat != nil {
				opts.Profiler = StaticProfiler{Heat: tc.heat(cfg)}
			}
			nf, err := Load(ctx, spec, st, []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path}}, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := nf.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			}()
			if !ns.xdpAttached(t, ns.veth) {
				t.Fatal("no XDP program on the veth after Load")
			}
			ps, err := nf.Program(router.Program)
			if err != nil {
				t.Fatal(err)
			}
			if ps.RunningID != ps.OriginalID || ps.Optimized {
				t.Fatalf("before the first cycle: running %d, original %d, optimized %v", ps.RunningID, ps.OriginalID, ps.Optimized)
			}
			prefix := tc.prefix(cfg)
			pkt := udpFrame(t, hostIn(prefix))
			before := runID(t, ps.OriginalID, pkt)
			if before.verdict == xdpDrop || before.verdict == xdpPass {
				t.Fatalf("route %s not forwarded by the original: verdict %d", prefix, before.verdict)
			}

			cs, err := nf.Cycle(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if pc := cs.Programs[0]; pc.Outcome != OutcomeSwapped {
				t.Fatalf("first cycle: %s (%s)", pc.Outcome, pc.Reason)
			}
			pc := cs.Programs[0]
			if tc.pass != "" && !slices.ContainsFunc(pc.Remarks, func(r passes.Remark) bool {
				return r.Pass == tc.pass && r.Map == router.MapRoutes && r.Applied
			}) {
				t.Fatalf("the running candidate has no %s rewrite of %s: %v", tc.pass, router.MapRoutes, pc.Remarks)
			}
			t.Logf("cycle %v: snapshot %v, optimize %v, verifier %v, differential+guard check %v, swap %v; %d -> %d insns",
				cs.Duration, cs.SnapshotTime, pc.OptimizeTime, pc.VerifyTime, pc.DifferentialTime, pc.SwapTime, pc.InstructionsBefore, pc.InstructionsAfter)
			ps, _ = nf.Program(router.Program)
			if ps.RunningID == ps.OriginalID || !ps.Optimized {
				t.Fatalf("after the cycle the original still runs (%d)", ps.RunningID)
			}
			if !slices.Contains(ps.Guarded, router.MapRoutes) {
				t.Fatalf("running program does not guard %s: %v", router.MapRoutes, ps.Guarded)
			}
			optID := ps.RunningID
			if got := runID(t, optID, pkt); got.verdict != before.verdict || !bytes.Equal(got.out, before.out) {
				t.Fatalf("optimized program: verdict %d, want %d", got.verdict, before.verdict)
			}

			// Nothing changed: the next cycle keeps the program.
			cs, err = nf.Cycle(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if pc := cs.Programs[0]; pc.Outcome != OutcomeUnchanged {
				t.Fatalf("second cycle: %s (%s), want unchanged", pc.Outcome, pc.Reason)
			}

			// Blackhole the route through the agent: the running code
			// must drop at once.
			key, val := routeEntry(t, withRoute(cfg, prefix, router.Route{Action: router.ActionBlackhole}), prefix)
			routes, err := nf.Map(router.MapRoutes)
			if err != nil {
				t.Fatal(err)
			}
			if err := routes.Update(key, val, ebpf.UpdateExist); err != nil {
				t.Fatal(err)
			}
			ps, _ = nf.Program(router.Program)
			if ps.RunningID != optID {
				t.Fatalf("running program changed without a cycle: %d -> %d", optID, ps.RunningID)
			}
			if got := runID(t, optID, pkt); got.verdict != xdpDrop {
				t.Fatalf("after blackholing %s through the agent the running program returns %d, want drop: the guard did not work", prefix, got.verdict)
			}
			if !slices.Contains(ps.Tripped, router.MapRoutes) {
				t.Errorf("routes guard not reported tripped: %+v", ps)
			}
			if s := nf.Stats(); s.GuardBumps == 0 || s.MapUpdates != 1 {
				t.Errorf("stats: %+v", s)
			}

			// The next cycle specializes to the new table.
			cs, err = nf.Cycle(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if pc := cs.Programs[0]; pc.Outcome != OutcomeSwapped {
				t.Fatalf("cycle after the change: %s (%s)", pc.Outcome, pc.Reason)
			}
			ps, _ = nf.Program(router.Program)
			if got := runID(t, ps.RunningID, pkt); got.verdict != xdpDrop {
				t.Fatalf("re-optimized program returns %d, want drop", got.verdict)
			}
			if len(ps.Tripped) != 0 {
				t.Errorf("fresh candidate has tripped guards %v", ps.Tripped)
			}

			// Delete it: the less specific route (or the default) applies,
			// exactly as in the original.
			if err := routes.Delete(key); err != nil {
				t.Fatal(err)
			}
			want := runID(t, ps.OriginalID, pkt)
			if got := runID(t, ps.RunningID, pkt); got.verdict != want.verdict || !bytes.Equal(got.out, want.out) {
				t.Fatalf("after delete: optimized %d, original %d", got.verdict, want.verdict)
			}

			// Stop: the original is back and the agent's additions are
			// gone; the NF stays attached.
			last := ps.RunningID
			if err := nf.Stop(); err != nil {
				t.Fatal(err)
			}
			ps, _ = nf.Program(router.Program)
			if ps.RunningID != ps.OriginalID {
				t.Fatalf("after Stop program %d runs, want the original %d", ps.RunningID, ps.OriginalID)
			}
			if !ns.xdpAttached(t, ns.veth) {
				t.Fatal("Stop detached the NF")
			}
			if !eventually(5*time.Second, func() bool { return programGone(last) }) {
				t.Errorf("optimized program %d still exists after Stop", last)
			}
			if _, err := nf.Cycle(ctx); err != ErrStopped {
				t.Errorf("Cycle after Stop: %v, want ErrStopped", err)
			}
		})
	}
}

// TestFingerprint writes a guarded map behind the agent's back (through
// its own fd) and checks that the fingerprint check bumps the guard at
// once, so that the running program follows the new contents.
func TestFingerprint(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	ns := newTestNetns(t)
	cfg := testRouterConfig()
	st, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	nf, err := Load(ctx, spec, st, []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path}},
		Options{Generated: 300, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	if cs, err := nf.Cycle(ctx); err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		t.Fatalf("cycle: %v %+v", err, cs)
	}
	if n := nf.CheckFingerprints(ctx); n != 0 {
		t.Fatalf("%d mismatches on untouched maps", n)
	}
	ps, _ := nf.Program(router.Program)
	prefix := "10.20.30.0/24"
	pkt := udpFrame(t, hostIn(prefix))

	// A foreign writer: the map opened by ID, as bpftool would.
	info := nf.Maps()
	var routesInfo MapInfo
	for _, mi := range info {
		if mi.Name == router.MapRoutes {
			routesInfo = mi
		}
	}
	if !routesInfo.Guarded || !slices.Contains(routesInfo.Trusted, router.Program) {
		t.Fatalf("routes map info: %+v", routesInfo)
	}
	m, err := nf.Map(router.MapRoutes)
	if err != nil {
		t.Fatal(err)
	}
	minfo, err := m.m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := minfo.ID()
	foreign, err := ebpf.NewMapFromID(id)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	key, val := routeEntry(t, withRoute(cfg, prefix, router.Route{Action: router.ActionBlackhole}), prefix)
	if err := foreign.Put(key, val); err != nil {
		t.Fatal(err)
	}
	// The window: until the check, the optimized code still routes.
	if got := runID(t, ps.RunningID, pkt); got.verdict == xdpDrop {
		t.Log("optimized code already follows the foreign write (no window observed)")
	}
	if n := nf.CheckFingerprints(ctx); n != 1 {
		t.Fatalf("fingerprint check found %d mismatches, want 1", n)
	}
	if got := runID(t, ps.RunningID, pkt); got.verdict != xdpDrop {
		t.Fatalf("after the fingerprint check the running program returns %d, want drop", got.verdict)
	}
	s := nf.Stats()
	if s.FingerprintMismatches != 1 || s.GuardBumps != 1 || s.Deoptimizations != 1 {
		t.Errorf("stats: %+v", s)
	}
	var sawEvent bool
	for _, e := range nf.Events(0) {
		sawEvent = sawEvent || (e.Kind == EventFingerprint && e.Map == router.MapRoutes)
	}
	if !sawEvent {
		t.Error("no fingerprint-mismatch event")
	}
	if n := nf.CheckFingerprints(ctx); n != 0 {
		t.Errorf("second check found %d mismatches: the tripped map should no longer be trusted", n)
	}
}

// TestRunLoop drives the agent with Run: a change through a map handle
// triggers a cycle without waiting for the period, and cancelling the
// context stops the agent with the original restored.
func TestRunLoop(t *testing.T) {
	kerneltest.Require(t)
	ns := newTestNetns(t)
	cfg := testRouterConfig()
	st, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	nf, err := Load(context.Background(), spec, st, []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path}},
		Options{Generated: 200, Period: time.Hour, FingerprintPeriod: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	events, cancelSub := nf.Subscribe(64)
	defer cancelSub()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- nf.Run(ctx) }()

	waitSwaps := func(n uint64) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for nf.Stats().Swaps < n {
			select {
			case <-events:
			case <-deadline:
				t.Fatalf("no swap %d within 60s: %+v", n, nf.Stats())
			}
		}
	}
	waitSwaps(1)
	key, val := routeEntry(t, withRoute(cfg, "10.20.30.0/24", router.Route{Action: router.ActionBlackhole}), "10.20.30.0/24")
	m, _ := nf.Map(router.MapRoutes)
	if err := m.Update(key, val, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	waitSwaps(2) // the change triggered a cycle (the period is an hour)
	ps, _ := nf.Program(router.Program)
	if got := runID(t, ps.RunningID, udpFrame(t, hostIn("10.20.30.0/24"))); got.verdict != xdpDrop {
		t.Fatalf("re-optimized program returns %d, want drop", got.verdict)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	ps, _ = nf.Program(router.Program)
	if ps.RunningID != ps.OriginalID {
		t.Fatalf("after cancel %d runs, want the original %d", ps.RunningID, ps.OriginalID)
	}
}

// TestDisable checks that disabling a program swaps the original back in
// and keeps cycles off it.
func TestDisable(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	ns := newTestNetns(t)
	st, err := testRouterConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	nf, err := Load(ctx, spec, st, []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path, XDPMode: XDPGeneric}},
		Options{Generated: 200, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	if !ns.xdpAttached(t, ns.veth) {
		t.Fatal("generic XDP not attached")
	}
	if _, err := nf.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	if err := nf.SetEnabled(router.Program, false); err != nil {
		t.Fatal(err)
	}
	ps, _ := nf.Program(router.Program)
	if ps.Enabled || ps.Optimized || ps.RunningID != ps.OriginalID {
		t.Fatalf("after disable: %+v", ps)
	}
	cs, err := nf.Cycle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Programs) != 0 {
		t.Fatalf("cycle optimized a disabled program: %+v", cs.Programs)
	}
	if err := nf.SetEnabled(router.Program, true); err != nil {
		t.Fatal(err)
	}
	if cs, err := nf.Cycle(ctx); err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		t.Fatalf("cycle after enable: %v %+v", err, cs)
	}
}

// TestPinnedStopClose checks what Stop and Close leave on bpffs.
func TestPinnedStopClose(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	ns := newTestNetns(t)
	st, err := testRouterConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	dir := bpffsDir(t)
	nf, err := Load(ctx, spec, st, []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path}},
		Options{Generated: 200, PinDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nf.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	gi, err := nf.guards.Info()
	if err != nil {
		t.Fatal(err)
	}
	guardID, _ := gi.ID()
	ps, _ := nf.Program(router.Program)
	opt := ps.RunningID
	// The maps only the optimized program uses: its cache maps.
	optProg := mustProgram(t, opt)
	optInfo, err := optProg.Info()
	if err != nil {
		t.Fatal(err)
	}
	optMaps, _ := optInfo.MapIDs()
	optProg.Close()
	nfMaps := map[ebpf.MapID]bool{guardID: true}
	for _, m := range nf.maps {
		if mi, err := m.Info(); err == nil {
			id, _ := mi.ID()
			nfMaps[id] = true
		}
	}
	var cacheMaps []ebpf.MapID
	for _, id := range optMaps {
		if !nfMaps[id] {
			cacheMaps = append(cacheMaps, id)
		}
	}
	if len(cacheMaps) == 0 {
		t.Fatal("the optimized router has no cache map")
	}
	for _, p := range []string{"agent/guards", "agent/state", "maps/routes", "progs/xdp_router"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("pin %s: %v", p, err)
		}
	}
	if err := nf.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "agent")); !os.IsNotExist(err) {
		t.Errorf("agent pins left after Stop: %v", err)
	}
	if !eventually(5*time.Second, func() bool {
		gone := programGone(opt) && mapGone(guardID)
		for _, id := range cacheMaps {
			gone = gone && mapGone(id)
		}
		return gone
	}) {
		t.Errorf("optimized program %d, guard map %d or cache maps %v survived Stop", opt, guardID, cacheMaps)
	}
	ps, _ = nf.Program(router.Program)
	if ps.RunningID != ps.OriginalID || !ns.xdpAttached(t, ns.veth) {
		t.Fatalf("after Stop: running %d original %d attached %v", ps.RunningID, ps.OriginalID, ns.xdpAttached(t, ns.veth))
	}
	// A stopped NF stays pinned and attached: a new agent adopts it.
	nf2, err := Load(ctx, spec, st, []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path}},
		Options{Generated: 200, PinDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ps2, _ := nf2.Program(router.Program)
	if !nf2.Adopted() || ps2.RunningID != ps.OriginalID {
		t.Fatalf("adopting a stopped NF: adopted %v, running %d, original %d", nf2.Adopted(), ps2.RunningID, ps.OriginalID)
	}
	if cs, err := nf2.Cycle(ctx); err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		t.Fatalf("cycle after adoption: %v %+v", err, cs)
	}
	if err := nf2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := nf.Close(); err != nil {
		t.Fatal(err)
	}
	if ns.xdpAttached(t, ns.veth) {
		t.Error("Close left the NF attached")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("pin directory left after Close: %v", err)
	}
}

// bpffsDir returns a fresh directory on /sys/fs/bpf, removed at the end.
func bpffsDir(tb testing.TB) string {
	tb.Helper()
	base := "/sys/fs/bpf"
	if _, err := os.Stat(base); err != nil {
		tb.Fatalf("bpffs: %v", err)
	}
	dir := filepath.Join(base, "morpheus-agent-test", fmt.Sprintf("%d-%s", os.Getpid(), strings.ReplaceAll(tb.Name(), "/", "_")))
	tb.Cleanup(func() {
		os.RemoveAll(dir)
		os.Remove(filepath.Dir(dir)) // only if empty
	})
	return dir
}

// TestLoadErrors checks that bad inputs fail with errors that say what is
// wrong, before anything is loaded or attached.
func TestLoadErrors(t *testing.T) {
	kerneltest.Require(t)
	routerSpec := func(t *testing.T) *ebpf.CollectionSpec {
		spec, err := router.Spec()
		if err != nil {
			t.Fatal(err)
		}
		return spec
	}
	socketOnly := func(*testing.T) *ebpf.CollectionSpec {
		return &ebpf.CollectionSpec{
			Maps: map[string]*ebpf.MapSpec{},
			Programs: map[string]*ebpf.ProgramSpec{"sock": {
				Name: "sock", Type: ebpf.SocketFilter, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
			}},
		}
	}
	badState := func() *mapstate.State {
		st := mapstate.New()
		st.Put(router.MapRoutes, []byte{1, 2, 3}, []byte{4})
		return st
	}
	unknownMap := func() *mapstate.State {
		st := mapstate.New()
		st.Put("no_such_map", []byte{1, 2, 3, 4}, []byte{4})
		return st
	}
	xdpOn := func(iface string) []Attachment { return []Attachment{{Kind: XDP, Interface: iface}} }
	for _, tc := range []struct {
		name  string
		spec  func(*testing.T) *ebpf.CollectionSpec
		state *mapstate.State
		atts  []Attachment
		want  string
	}{
		{"unknown interface", routerSpec, nil, xdpOn("mph-no-such0"), `interface "mph-no-such0" not found`},
		{"no XDP or TC programs", socketOnly, nil, xdpOn("lo"), "no XDP or TC programs"},
		{"no attachments", routerSpec, nil, nil, "no attachments given"},
		{"unknown program", routerSpec, nil, []Attachment{{Program: "nope", Kind: XDP, Interface: "lo"}}, `no program "nope"`},
		{"no TC program for TC", routerSpec, nil, []Attachment{{Kind: TCIngress, Interface: "lo"}}, "name the program"},
		{"XDP program on TC", routerSpec, nil, []Attachment{{Program: router.Program, Kind: TCIngress, Interface: "lo"}}, "not a TC classifier"},
		{"no interface", routerSpec, nil, []Attachment{{Kind: XDP}}, "no interface given"},
		{"no prog array", routerSpec, nil, []Attachment{{Program: router.Program, Kind: TailCall, ProgArray: "jmp"}}, `no program array "jmp"`},
		{"twice", routerSpec, nil, append(xdpOn("lo"), xdpOn("lo")...), "given twice"},
		{"malformed state: key size", routerSpec, badState(), xdpOn("lo"), `map "routes" entry 0: key has 3 bytes`},
		{"malformed state: unknown map", routerSpec, unknownMap(), xdpOn("lo"), `map "no_such_map" does not exist`},
		{"bad netns", routerSpec, nil, []Attachment{{Kind: XDP, Interface: "lo", Netns: "/nonexistent/netns"}}, "network namespace /nonexistent/netns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nf, err := Load(context.Background(), tc.spec(t), tc.state, tc.atts, Options{Logger: testLogger(t)})
			if err == nil {
				nf.Close()
				t.Fatalf("Load succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
	if _, err := Load(context.Background(), nil, nil, nil, Options{}); err == nil {
		t.Error("nil spec accepted")
	}
	if _, err := LoadFile(context.Background(), "/nonexistent.o", nil, xdpOn("lo"), Options{}); err == nil || !strings.Contains(err.Error(), "nonexistent.o") {
		t.Errorf("missing object: %v", err)
	}
	st, err := mapstate.Parse(strings.NewReader(`{"maps": {"routes": {"entires": []}}}`))
	if err == nil {
		t.Errorf("malformed state JSON parsed: %+v", st)
	}
}

// TestLoadFile loads the router from its ELF object.
func TestLoadFile(t *testing.T) {
	kerneltest.Require(t)
	st, err := router.ExampleConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	ns := newTestNetns(t)
	nf, err := LoadFile(context.Background(), "../nf/router/bpf_bpfel.o", st,
		[]Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path}}, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	ps := nf.Programs()
	if len(ps) != 1 || ps[0].Name != router.Program || ps[0].RunningID != ps[0].OriginalID {
		t.Fatalf("programs: %+v", ps)
	}
}
