package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
)

const helperEnv = "MORPHEUS_AGENT_HELPER"

// TestHelperProcess is not a test: TestCrashAdopt runs the test binary
// with helperEnv set ("NETNS_PATH PIN_DIR IFINDEX") to get an agent process it can
// kill -9. The helper optimizes the router, prints "READY <program id>"
// and waits to be killed.
func TestHelperProcess(t *testing.T) {
	arg := os.Getenv(helperEnv)
	if arg == "" {
		t.Skip("helper process for TestCrashAdopt")
	}
	f := strings.Fields(arg)
	idx, err := strconv.Atoi(f[2])
	if err != nil {
		t.Fatal(err)
	}
	st, err := forwardConfig(idx).State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	nf, err := Load(context.Background(), spec, st, []Attachment{{Kind: XDP, Interface: "veth0", Netns: f[0], XDPMode: XDPGeneric}},
		Options{Name: "crash", PinDir: f[1], Generated: 200, Logger: testLogger(t)})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	cs, err := nf.Cycle(context.Background())
	if err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		fmt.Println("ERROR cycle", err, cs)
		os.Exit(1)
	}
	ps, _ := nf.Program(router.Program)
	fmt.Printf("READY %d\n", ps.RunningID)
	time.Sleep(2 * time.Minute) // killed long before
	os.Exit(2)
}

// TestCrashAdopt kills an agent process with SIGKILL and checks that the
// optimized router keeps running from its pinned link, that a new agent
// adopts it and keeps the optimized program while the maps match their
// fingerprints, that a map written while no agent ran gets its guard
// bumped on adoption, and that Stop and Close leave nothing behind.
func TestCrashAdopt(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	ns := newTestNetns(t)
	dir := bpffsDir(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	vethIdx := ns.ifindex(t, ns.veth)
	cfg := forwardConfig(vethIdx)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d", helperEnv, ns.path, dir, vethIdx))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var other []string
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "READY ") || strings.HasPrefix(line, "ERROR") {
				ready <- line
				io.Copy(io.Discard, out)
				return
			}
			other = append(other, line)
		}
		ready <- "EOF: " + strings.Join(other, "\n")
	}()
	var line string
	select {
	case line = <-ready:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("helper agent not ready within 3 minutes")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if !strings.HasPrefix(line, "READY ") {
		t.Fatalf("helper agent: %s", line)
	}
	id, err := strconv.ParseUint(strings.TrimPrefix(line, "READY "), 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	optID := ebpf.ProgramID(id)

	// The killed agent's optimized program is still attached and right.
	l, err := link.LoadPinnedLink(dir+"/links/xdp_router-xdp-veth0-"+ns.name, nil)
	if err != nil {
		t.Fatalf("pinned link: %v", err)
	}
	info, err := l.Info()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	if info.Program != optID {
		t.Fatalf("link runs program %d, the killed agent swapped in %d", info.Program, optID)
	}
	if !ns.xdpAttached(t, ns.veth) {
		t.Fatal("NF detached by the kill")
	}
	orig, err := ebpf.LoadPinnedProgram(dir+"/progs/xdp_router", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	prefix := "10.20.30.0/24"
	pkt := udpFrame(t, hostIn(prefix))
	want := testRun(t, orig, pkt)
	if got := runID(t, optID, pkt); got.verdict != want.verdict || got.verdict != xdpRedirect {
		t.Fatalf("orphaned optimized program: verdict %d, original %d", got.verdict, want.verdict)
	}
	// And it forwards real frames: sent from the peer, sent back out of
	// the veth by XDP_TX, counted by the router.
	counters, err := ebpf.LoadPinnedMap(dir+"/maps/counters", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer counters.Close()
	before, err := router.ReadCounters(counters)
	if err != nil {
		t.Fatal(err)
	}
	const nFrames = 50
	frames := make([][]byte, nFrames)
	for i := range frames {
		frames[i] = udpFrame(t, "203.0.113.7")
	}
	ns.send(t, ns.peer, frames)
	if !eventually(5*time.Second, func() bool {
		c, err := router.ReadCounters(counters)
		return err == nil && c[router.CounterTx].Packets >= before[router.CounterTx].Packets+nFrames
	}) {
		c, _ := router.ReadCounters(counters)
		t.Fatalf("the orphaned router did not forward: tx %d -> %d, counters %+v", before[router.CounterTx].Packets, c[router.CounterTx].Packets, c)
	}

	// Adoption with untouched maps keeps the optimized program.
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	st, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	atts := []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path, XDPMode: XDPGeneric}}
	opts := Options{Name: "crash", PinDir: dir, Generated: 200, Logger: testLogger(t)}
	nf, err := Load(ctx, spec, st, atts, opts)
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	ps, _ := nf.Program(router.Program)
	if !nf.Adopted() || ps.RunningID != optID || !ps.Optimized {
		t.Fatalf("adopted: %v, running %d (optimized %v), want %d", nf.Adopted(), ps.RunningID, ps.Optimized, optID)
	}
	if s := nf.Stats(); s.FingerprintMismatches != 0 || s.Deoptimizations != 0 {
		t.Fatalf("adoption of an untouched NF: %+v", s)
	}
	// A change through the adopted agent bumps the guard to version 1 and
	// a cycle specializes to it: the next adoption must replay that
	// version into its guard table.
	other := "192.168.0.0/16"
	okey, oval := routeEntry(t, withRoute(cfg, other, router.Route{Action: router.ActionBlackhole}), other)
	m, err := nf.Map(router.MapRoutes)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(okey, oval, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	if cs, err := nf.Cycle(ctx); err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		t.Fatalf("cycle after the change: %v %+v", err, cs)
	}
	ps, _ = nf.Program(router.Program)
	optID = ps.RunningID
	// Simulate a second crash, in process this time.
	nf.abandon()

	// A writer changes a route while no agent runs.
	routes, err := ebpf.LoadPinnedMap(dir+"/maps/routes", nil)
	if err != nil {
		t.Fatal(err)
	}
	key, val := routeEntry(t, withRoute(cfg, prefix, router.Route{Action: router.ActionBlackhole}), prefix)
	err = routes.Put(key, val)
	routes.Close()
	if err != nil {
		t.Fatal(err)
	}

	nf, err = Load(ctx, spec, st, atts, opts)
	if err != nil {
		t.Fatalf("second adopt: %v", err)
	}
	defer nf.Close()
	if s := nf.Stats(); s.FingerprintMismatches != 1 || s.GuardBumps != 1 {
		t.Fatalf("adoption after a foreign write: %+v", s)
	}
	if v := nf.table.Version(router.MapRoutes); v != 2 {
		t.Errorf("guard version of routes after adoption and bump: %d, want 2", v)
	}
	ps, _ = nf.Program(router.Program)
	if ps.RunningID != optID || !slices.Contains(ps.Tripped, router.MapRoutes) {
		t.Fatalf("second adoption: running %d (want %d, kept with its guard tripped), tripped %v", ps.RunningID, optID, ps.Tripped)
	}
	if got := runID(t, ps.RunningID, pkt); got.verdict != xdpDrop {
		t.Fatalf("after adoption the running program returns %d for a blackholed route, want drop", got.verdict)
	}
	if cs, err := nf.Cycle(ctx); err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		t.Fatalf("cycle after adoption: %v %+v", err, cs)
	}
	ps, _ = nf.Program(router.Program)
	if got := runID(t, ps.RunningID, pkt); got.verdict != xdpDrop {
		t.Fatalf("re-optimized program returns %d, want drop", got.verdict)
	}
	if err := nf.Stop(); err != nil {
		t.Fatal(err)
	}
	ps, _ = nf.Program(router.Program)
	if ps.RunningID != ps.OriginalID {
		t.Fatalf("after Stop %d runs, want the original %d", ps.RunningID, ps.OriginalID)
	}
	if err := nf.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("pins left after Close: %v", err)
	}
	if ns.xdpAttached(t, ns.veth) {
		t.Error("NF attached after Close")
	}
}
