package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"time"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/instrument"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/optimize"
	"github.com/morpheus-go/morpheus/verify"
)

// Defaults of [ProfileOptions].
const (
	DefaultProfileWindow = 500 * time.Millisecond
	DefaultProfileDecay  = 0.5
)

// ProfileOptions turns on adaptive profiling: at the start of a cycle the
// agent swaps an instrumented variant of each program in (package
// instrument: sampled lookups counted into per-CPU heat maps) for Window,
// drains the heat maps into a decaying heatmap.Profile, swaps the
// optimized (or original) program back and optimizes with the profile's
// hot keys. The variant is checked first with the differential test
// (identical behaviour apart from its own heat maps) and dropped if it
// differs; a program without an instrumentable lookup is not profiled.
// The variant instruments the original code, so a window trades the
// optimized program's speed for fresh hot keys; windows whose cycle swaps
// nothing therefore back off (every 2nd, 4th, ... up to every
// MaxProfileInterval-th cycle) and a swap brings them back to every cycle.
type ProfileOptions struct {
	// Window is how long the variant runs per cycle. Default
	// DefaultProfileWindow.
	Window time.Duration
	// Rate is the sampling rate (instrument.Options.Rate); zero means
	// instrument.DefaultRate.
	Rate float64
	// Sampler is the sampling scheme.
	Sampler instrument.Sampler
	// HashRecorder records samples in the seed's per-CPU hash per map
	// instead of the per-CPU ring the agent uses by default: the ring
	// costs the router about 0.9% at 5% sampling, the hash 3-6%
	// (BENCHMARKS.md, "Instrumentation overhead").
	HashRecorder bool
	// Decay is the weight the profile keeps per window
	// (heatmap.NewProfile). Zero means DefaultProfileDecay; use a tiny
	// positive value to keep only the last window.
	Decay float64
}

// profiler is a program's profiling state.
type profiler struct {
	profile *heatmap.Profile
	// noSites is set when the program has no instrumentable lookup.
	noSites bool
	// checked caches the differential verdict per variant digest.
	checked map[[32]byte]error
	// active is set while the variant runs.
	active bool
	// A window runs the instrumented original, not the optimized code,
	// so windows back off while they change nothing: interval is the
	// number of cycles from one window to the next (doubling up to
	// MaxProfileInterval after a cycle that swapped nothing, back to 1
	// after a swap), wait the cycles left until the next one, and
	// windowed is set when this cycle ran one.
	interval, wait int
	windowed       bool
}

// MaxProfileInterval is the most cycles between two profiling windows of
// a program whose windows keep producing the candidate that runs.
const MaxProfileInterval = 16

// adapt sets the distance to the next window from the outcome of the
// cycle that ran one.
func (p *profiler) adapt(o Outcome) {
	if !p.windowed {
		return
	}
	p.windowed = false
	if o == OutcomeSwapped {
		p.interval = 1
	} else {
		p.interval = min(max(1, 2*p.interval), MaxProfileInterval)
	}
	p.wait = p.interval - 1
}

// Heatmap returns the hot keys the agent's profiler measured for a
// program so far (nil without Options.Profile or before the first
// window).
func (n *NF) Heatmap(program string) (*heatmap.Heatmap, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps, ok := n.progs[program]
	if !ok {
		return nil, fmt.Errorf("agent: no attached program %q", program)
	}
	if ps.prof == nil || ps.prof.profile.Windows() == 0 {
		return nil, nil
	}
	return ps.prof.profile.Heatmap(), nil
}

// profileProgram runs one profiling window on ps and returns the
// program's decayed profile. Failures are logged; the program that ran
// before the window runs after it.
func (n *NF) profileProgram(ctx context.Context, ps *progState, snap *snapshot) *heatmap.Heatmap {
	po := n.opts.Profile
	if po == nil {
		return nil
	}
	n.mu.Lock()
	if ps.prof == nil {
		decay := po.Decay
		if decay == 0 {
			decay = DefaultProfileDecay
		}
		ps.prof = &profiler{profile: heatmap.NewProfile(decay), checked: map[[32]byte]error{}}
	}
	prof := ps.prof
	n.mu.Unlock()
	current := func() *heatmap.Heatmap {
		if prof.profile.Windows() == 0 {
			return nil
		}
		return prof.profile.Heatmap()
	}
	if prof.noSites {
		return nil
	}
	if prof.wait > 0 {
		prof.wait--
		return current()
	}
	entries := map[string]int{}
	for name, m := range snap.state.Maps {
		entries[name] = len(m.Entries)
	}
	v, err := instrument.Instrument(n.spec, ps.name, instrument.Options{
		Rate:      po.Rate,
		Sampler:   po.Sampler,
		Recorder:  recorder(po),
		MaxInline: n.opts.Passes.MaxInline,
		Entries:   entries,
		Seed:      uint64(n.opts.Seed) + 1,
	})
	if errors.Is(err, instrument.ErrNoSites) {
		prof.noSites = true
		n.log.Info("no lookup to profile", "program", ps.name)
		return nil
	}
	if err != nil {
		n.log.Warn("instrument", "program", ps.name, "err", err)
		return current()
	}
	insns := v.Spec.Programs[v.Program].Instructions
	digest := sha256.Sum256(fmt.Appendf(nil, "%v", insns))
	cerr, seen := prof.checked[digest]
	if !seen {
		cerr = n.checkVariant(ctx, v, snap.state)
		prof.checked[digest] = cerr
	}
	if cerr != nil {
		n.log.Warn("instrumented variant rejected", "program", ps.name, "err", cerr)
		n.emit(Event{Kind: EventError, Program: ps.name, Message: "instrumented variant rejected: " + cerr.Error()})
		return current()
	}
	lp, err := optimize.LoadLive(&optimize.Candidate{Spec: v.Spec, Program: v.Program}, n.spec, n.liveMaps())
	if err != nil {
		n.log.Warn("load instrumented variant", "program", ps.name, "err", err)
		return current()
	}
	defer lp.Close()

	n.mu.Lock()
	if n.stopped || !ps.enabled {
		n.mu.Unlock()
		return current()
	}
	if err := n.swapLocked(ps, lp.Program); err != nil {
		n.mu.Unlock()
		n.log.Warn("swap in instrumented variant", "program", ps.name, "err", err)
		return current()
	}
	prof.active = true
	n.mu.Unlock()

	window := po.Window
	if window <= 0 {
		window = DefaultProfileWindow
	}
	t := time.NewTimer(window)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
	}

	n.mu.Lock()
	back := ps.original
	if ps.running != nil {
		back = ps.running.prog
	}
	for _, at := range ps.atts {
		// Every attachment goes back, whatever fails on another.
		if err := at.swap(back); err != nil {
			n.stats.Errors++
			n.log.Error("swap back after profiling", "attachment", at.spec().String(), "err", err)
			n.emit(Event{Kind: EventError, Program: ps.name, Message: "swap back after profiling: " + err.Error()})
		}
	}
	prof.active = false
	prof.windowed = true
	n.stats.ProfileWindows++
	n.mu.Unlock()

	heat, err := v.Drain(lp.Added)
	if err != nil {
		n.log.Warn("drain heat maps", "program", ps.name, "err", err)
		return current()
	}
	n.mu.Lock() // NF.Heatmap reads the profile under the lock
	prof.profile.Merge(heat)
	n.mu.Unlock()
	return current()
}

// checkVariant runs the differential test between the original and the
// instrumented variant; only the variant's own heat and control maps may
// differ.
func (n *NF) checkVariant(ctx context.Context, v *instrument.Variant, state *mapstate.State) error {
	rnd := rand.New(rand.NewSource(n.opts.Seed))
	packets := optimize.Generate(n.spec, state, nil, n.opts.Generated, rnd)
	packets = append(packets, verify.EdgeCases(packets, n.opts.Generated/4, rnd)...)
	cand := verify.Candidate{v.Program: v.Spec.Programs[v.Program].Instructions}
	rep, err := verify.Differential(ctx, v.Baseline(), state, cand, packets,
		verify.DiffOptions{MapCheckInterval: -1, MaxMismatches: math.MaxInt32})
	if err != nil {
		return err
	}
	if !rep.Complete || rep.Runs == 0 {
		return fmt.Errorf("incomplete differential test: %s", rep)
	}
	for _, m := range rep.Mismatches {
		if m.Kind == verify.KindMap && v.IsAdded(m.Map) {
			continue
		}
		return fmt.Errorf("differs from the original: %s", m)
	}
	return nil
}

// recorder is the instrumentation recorder po asks for.
func recorder(po *ProfileOptions) instrument.Recorder {
	if po.HashRecorder {
		return instrument.RecorderHash
	}
	return instrument.RecorderRing
}
