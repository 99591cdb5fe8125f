package agent

import (
	"context"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// TestProfile lets the agent profile a router too large to inline with
// its instrumented variant, drives traffic at a few hot routes through
// the variant while it runs (test runs of the attached program), and
// checks that the profile finds them and the optimizer caches them.
func TestProfile(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	ns := newTestNetns(t)
	cfg, err := traffic.RouterConfig(200, []uint32{1, 2}, 7)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	nf, err := Load(ctx, spec, st, []Attachment{{Kind: XDP, Interface: ns.veth, Netns: ns.path}}, Options{
		Generated: 300,
		Profile:   &ProfileOptions{Window: 2 * time.Second, Rate: 1},
		Logger:    testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	var hot [][]byte
	for _, r := range cfg.Routes[1:5] {
		hot = append(hot, udpFrame(t, hostIn(r.Prefix)))
	}
	type result struct {
		cs  *CycleStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		cs, err := nf.Cycle(ctx)
		done <- result{cs, err}
	}()
	sent := 0
	progs := map[ebpf.ProgramID]*ebpf.Program{}
	deadline := time.After(2 * time.Minute)
	var res result
loop:
	for {
		select {
		case res = <-done:
			break loop
		case <-deadline:
			t.Fatal("cycle did not end within 2 minutes")
		default:
		}
		ps, _ := nf.Program(router.Program)
		if !ps.Profiling {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		p := progs[ps.RunningID]
		if p == nil {
			p = mustProgram(t, ps.RunningID)
			progs[ps.RunningID] = p
		}
		for i := range 50 {
			testRun(t, p, hot[i%len(hot)])
			sent++
		}
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	if sent == 0 {
		t.Fatal("never saw the instrumented variant running")
	}
	if s := nf.Stats(); s.ProfileWindows != 1 {
		t.Errorf("profile windows: %d", s.ProfileWindows)
	}
	heat, err := nf.Heatmap(router.Program)
	if err != nil || heat == nil || len(heat.Maps[router.MapRoutes]) == 0 {
		t.Fatalf("no routes in the profile (%v): %+v", err, heat)
	}
	t.Logf("%d packets sent during the window; top keys %v", sent, heat.Top(router.MapRoutes, 4))
	if pc := res.cs.Programs[0]; pc.Outcome != OutcomeSwapped {
		t.Fatalf("cycle: %s (%s)", pc.Outcome, pc.Reason)
	}
	ps, _ := nf.Program(router.Program)
	if ps.Profiling || ps.RunningID == ps.OriginalID {
		t.Fatalf("after the cycle: %+v", ps)
	}
	for _, pkt := range hot {
		if got, want := runID(t, ps.RunningID, pkt), runID(t, ps.OriginalID, pkt); got.verdict != want.verdict {
			t.Fatalf("optimized %d, original %d", got.verdict, want.verdict)
		}
	}
}
