package optimize

import (
	"context"
	"math"
	"math/rand"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/verify"
)

// TestGuardCheckCatchesBrokenGuard optimizes the router with a guard
// table whose routes version is not zero, checks the candidate's guard
// compares with it, then disables the guard's branch and checks that the
// guard check rejects the result while it accepts the intact candidate.
func TestGuardCheckCatchesBrokenGuard(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	spec, state := exampleRouter(t)
	// A table that has seen three changes of the routes map.
	tbl := guard.NewTable()
	scratch, err := newGuardScratch()
	if err != nil {
		t.Fatal(err)
	}
	defer scratch.Close()
	for range 3 {
		if _, err := tbl.Slot(router.MapRoutes); err != nil {
			t.Fatal(err)
		}
		if err := tbl.Bump(scratch, router.MapRoutes); err != nil {
			t.Fatal(err)
		}
	}
	opts := LiveOptions{Options: Options{Program: router.Program, Passes: passes.DefaultOptions(), Generated: 300, Seed: 3}, Guards: tbl, GuardCheck: true}
	pr, err := RunLive(ctx, spec, state, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !pr.Accepted {
		t.Fatalf("candidate rejected: %s", pr.Reason)
	}
	c := pr.Candidate
	insns := c.Spec.Programs[c.Program].Instructions
	if got := GuardedMaps(insns, tbl); !slices.Contains(got, router.MapRoutes) {
		t.Fatalf("guarded maps %v, want routes among them", got)
	}
	slot, err := tbl.Slot(router.MapRoutes)
	if err != nil {
		t.Fatal(err)
	}
	// Break the routes guard: the compare after its guard load never
	// jumps. (Folded configuration maps may have guards of their own.)
	broken := append(asm.Instructions(nil), insns...)
	patched := 0
	for i := 0; i+2 < len(broken); i++ {
		if broken[i].IsLoadFromMap() && broken[i].Reference() == guard.MapName && uint32(uint64(broken[i].Constant)>>32)/8 == slot && broken[i+2].OpCode.JumpOp() == asm.JNE {
			if broken[i+2].Constant != 3 {
				t.Fatalf("guard compares with %d, want version 3", broken[i+2].Constant)
			}
			// Still a branch to the fallback for the verifier, but
			// never taken: versions stay far below MaxInt32.
			broken[i+2].OpCode = broken[i+2].OpCode.SetJumpOp(asm.JGT)
			broken[i+2].Constant = math.MaxInt32
			patched++
		}
	}
	if patched == 0 {
		t.Fatal("no guard check found in the candidate")
	}
	rnd := rand.New(rand.NewSource(3))
	packets := Generate(spec, state, nil, 300, rnd)
	packets = append(packets, verify.EdgeCases(packets, 50, rnd)...)
	coll := c.Spec.Copy()
	coll.Programs[c.Program].Instructions = spec.Programs[c.Program].Instructions
	for _, tc := range []struct {
		name  string
		insns asm.Instructions
		fail  bool
	}{
		{"intact", insns, false},
		{"broken", broken, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// As in RunLive: the differential test first, then the
			// guard check on the same collections, reset to its state.
			cand := verify.Candidate{c.Program: tc.insns}
			written, readOnly := mapAccess(coll, c.Program, tc.insns)
			sess, err := verify.NewSession(coll, state, cand, verify.DiffOptions{Context: opts.Context, PeriodicMaps: written, ReadOnlyMaps: readOnly, NoPrealloc: true})
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			if dr, err := sess.Run(ctx, packets); err != nil || !dr.Passed() {
				t.Fatalf("differential test: %v %v", dr, err)
			}
			// The packet sample RunLive uses must catch the broken guard.
			f, err := guardCheck(ctx, sess, coll, state, cand, spread(packets, GuardCheckPackets), tbl)
			if err != nil {
				t.Fatal(err)
			}
			if (f != nil) != tc.fail {
				t.Fatalf("guard check failure %+v, want failure %v", f, tc.fail)
			}
			if f != nil && f.mapName != router.MapRoutes {
				t.Errorf("failure blames %s", f.mapName)
			}
		})
	}
}

func newGuardScratch() (*ebpf.Map, error) { return ebpf.NewMap(guard.Spec()) }

// TestBaselineReuse runs RunLive on the router with one Baseline across
// configuration changes: the kept copies of the original are reset to
// each new state, so every run reports what a run with fresh copies
// reports, and the copies are kept for the next run.
func TestBaselineReuse(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	base := NewBaseline()
	defer base.Close()
	for i, n := range []int{0, 3, 1, 0} {
		cfg := router.ExampleConfig()
		cfg.Interfaces = append(cfg.Interfaces, router.Interface{Ifindex: 1, MAC: "02:00:00:00:01:01"})
		cfg.Routes = cfg.Routes[n:]
		state, err := cfg.State()
		if err != nil {
			t.Fatal(err)
		}
		opts := LiveOptions{Options: Options{Program: router.Program, Passes: passes.DefaultOptions(), Generated: 300, Seed: 3}, GuardCheck: true}
		fresh, err := RunLive(ctx, spec, state, nil, opts)
		if err != nil {
			t.Fatal(err)
		}
		opts.Baseline = base
		kept, err := RunLive(ctx, spec, state, nil, opts)
		if err != nil {
			t.Fatal(err)
		}
		if !kept.Accepted || kept.Accepted != fresh.Accepted || kept.Differential.MapChecks != fresh.Differential.MapChecks ||
			kept.Differential.Runs != fresh.Differential.Runs {
			t.Fatalf("run %d with a kept baseline: %s %v\nwith fresh copies: %s %v", i, kept.Reason, kept.Differential, fresh.Reason, fresh.Differential)
		}
		if len(base.kept) != 1 {
			t.Fatalf("run %d: the baseline keeps %d pairs of copies, want 1", i, len(base.kept))
		}
		if progs, _ := base.analysis(spec); base.spec != spec || !base.progsOK || len(progs) != len(spec.Programs) {
			t.Fatalf("run %d: the baseline keeps no analysis of the spec's programs", i)
		}
	}
}

// TestBaselineConcurrent runs RunLive twice at a time with one Baseline,
// as the agent does for the programs of one network function: each run
// needs a pair of copies of its own, so the Baseline ends up keeping two
// pairs, and the next two overlapping runs reuse exactly those.
func TestBaselineConcurrent(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	spec, state := exampleRouter(t)
	base := NewBaseline()
	defer base.Close()
	opts := LiveOptions{Options: Options{Program: router.Program, Passes: passes.DefaultOptions(), Generated: 300, Seed: 3}, GuardCheck: true, Baseline: base}
	// Both runs hold their copies until their guard checks end, so the
	// two always overlap in the copies they use.
	both := func() {
		t.Helper()
		var wg sync.WaitGroup
		reps := make([]*ProgramReport, 2)
		errs := make([]error, 2)
		for i := range reps {
			wg.Go(func() { reps[i], errs[i] = RunLive(ctx, spec, state, nil, opts) })
		}
		wg.Wait()
		for i, rep := range reps {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if !rep.Accepted {
				t.Fatalf("run %d: %s", i, rep.Reason)
			}
		}
	}
	both()
	if len(base.kept) != 2 {
		t.Fatalf("after two overlapping runs the baseline keeps %d pairs of copies, want 2", len(base.kept))
	}
	first := slices.Clone(base.kept)
	both()
	if len(base.kept) != 2 || !slices.Contains(first, base.kept[0]) || !slices.Contains(first, base.kept[1]) || base.kept[0] == base.kept[1] {
		t.Fatalf("the second two runs did not reuse the two kept pairs")
	}
}

// TestReportDigest checks that RunLive reports the digest it computed
// for LiveOptions.Unchanged, and that it is the accepted candidate's;
// then that a run stopped by Unchanged (which skips preparing the test's
// copies if it can) leaves a Baseline that later runs use as before.
func TestReportDigest(t *testing.T) {
	kerneltest.Require(t)
	spec, state := exampleRouter(t)
	var asked [32]byte
	opts := LiveOptions{Options: Options{Program: router.Program, Passes: passes.DefaultOptions(), Generated: 300, Seed: 3},
		Unchanged: func(d [32]byte) bool { asked = d; return false }}
	rep, err := RunLive(context.Background(), spec, state, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Accepted {
		t.Fatalf("candidate rejected: %s", rep.Reason)
	}
	if rep.Digest == ([32]byte{}) || rep.Digest != asked || rep.Digest != rep.Candidate.Digest(spec) {
		t.Errorf("reported digest %x, asked about %x, candidate's %x", rep.Digest, asked, rep.Candidate.Digest(spec))
	}

	base := NewBaseline()
	defer base.Close()
	opts.Baseline = base
	for i, same := range []bool{false, true, true, false} {
		opts.Unchanged = func([32]byte) bool { return same }
		rep, err := RunLive(context.Background(), spec, state, nil, opts)
		if err != nil {
			t.Fatal(err)
		}
		if same && rep.Reason != ReasonUnchanged || !same && !rep.Accepted {
			t.Fatalf("run %d (unchanged %v): accepted %v, %s", i, same, rep.Accepted, rep.Reason)
		}
		if len(base.kept) > 1 {
			t.Fatalf("run %d: the baseline keeps %d pairs of copies, one run at a time", i, len(base.kept))
		}
	}
}

// exampleRouter is the router's spec and the state of its example
// configuration with an interface at ifindex 1 (the loopback device).
func exampleRouter(t *testing.T) (*ebpf.CollectionSpec, *mapstate.State) {
	t.Helper()
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	cfg := router.ExampleConfig()
	cfg.Interfaces = append(cfg.Interfaces, router.Interface{Ifindex: 1, MAC: "02:00:00:00:01:01"})
	state, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	return spec, state
}
