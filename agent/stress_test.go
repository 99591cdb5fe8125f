package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
)

// TestConcurrentChanges runs the agent's loop with short periods while the
// control plane flips a route back and forth and readers poll the status:
// right after every Update returns, whatever program the kernel runs must
// follow the new route. A candidate built from contents older than the
// change must never be swapped in.
func TestConcurrentChanges(t *testing.T) {
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
		Options{Generated: 100, Period: 100 * time.Millisecond, FingerprintPeriod: 20 * time.Millisecond, SkipGuardCheck: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := nf.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	go func() { // status readers
		defer wg.Done()
		for ctx.Err() == nil {
			nf.Programs()
			nf.Stats()
			nf.Maps()
			nf.Events(0)
			time.Sleep(time.Millisecond)
		}
	}()

	prefix := "10.20.30.0/24"
	pkt := udpFrame(t, hostIn(prefix))
	fwdKey, fwdVal := routeEntry(t, cfg, prefix)
	_, dropVal := routeEntry(t, withRoute(cfg, prefix, router.Route{Action: router.ActionBlackhole}), prefix)
	m, err := nf.Map(router.MapRoutes)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	checks := 0
	check := func(i int, want uint32) {
		ps, err := nf.Program(router.Program)
		if err != nil {
			t.Fatal(err)
		}
		p, err := ebpf.NewProgramFromID(ps.RunningID)
		if err != nil {
			return // replaced and freed meanwhile
		}
		got := testRun(t, p, pkt)
		p.Close()
		checks++
		if got.verdict != want {
			t.Fatalf("flip %d: program %d (optimized %v) returns %d, want %d", i, ps.RunningID, ps.Optimized, got.verdict, want)
		}
	}
	for i := 0; i < 12 && time.Now().Before(deadline); i++ {
		val, want := dropVal, uint32(xdpDrop)
		if i%2 == 1 {
			val, want = fwdVal, xdpRedirect
		}
		swaps := nf.Stats().Swaps
		if err := m.Update(fwdKey, val, ebpf.UpdateExist); err != nil {
			t.Fatal(err)
		}
		// Every other flip waits for the re-optimization (checking all
		// along); the others flip again at once, racing the cycle.
		for j := 0; ; j++ {
			check(i, want)
			if i%2 == 0 || nf.Stats().Swaps > swaps || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	cancel()
	wg.Wait()
	s := nf.Stats()
	t.Logf("%d checks; stats %+v", checks, s)
	if s.Swaps == 0 {
		t.Error("no swap happened during the test")
	}
}
