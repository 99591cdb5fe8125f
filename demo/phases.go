//go:build linux

package demo

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/agent"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/traffic"
)

// maxOverrun bounds how long a phase waits for its optimization beyond
// its share: three times the share, at least 20 s.
func maxOverrun(share time.Duration) time.Duration { return max(3*share, 20*time.Second) }

// phases runs the four phases.
func (d *demo) phases(ctx context.Context, trace *traffic.Trace, set traffic.FlowSet) error {
	share := func(i int) time.Duration {
		return time.Duration(float64(d.opts.Duration) * phasePlan[i].share)
	}
	// swapsSince is the goal of a phase that waits for an optimization:
	// the first swap after the n seen so far.
	swapsSince := func(n int) func() (time.Time, bool) {
		return func() (time.Time, bool) {
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.swapTimes) > n {
				return d.swapTimes[n], true
			}
			return time.Time{}, false
		}
	}

	// 1: baseline, every program disabled.
	if err := d.runPhase(ctx, 0, share(0), nil); err != nil {
		return err
	}

	// 2: optimizer on; the phase lasts until the first swap at least.
	d.begin(1)
	for _, ps := range d.nf.Programs() {
		if err := d.nf.SetEnabled(ps.Name, true); err != nil {
			if ctx.Err() != nil {
				// Cancelled as the phase began: the agent's loop
				// stops with ctx and refuses the call, but the
				// cause to report is the cancellation.
				return ctx.Err()
			}
			return fmt.Errorf("enable the optimizer on %s: %w", ps.Name, err)
		}
	}
	if err := d.runPhase(ctx, 1, share(1), swapsSince(0)); err != nil {
		return err
	}
	d.snapshotHot("hot keys before the traffic shift")

	// 3: control-plane change, proven by a test run, then re-optimized.
	d.begin(2)
	changed := time.Now()
	if err := d.change(ctx, trace); err != nil {
		return err
	}
	if err := d.runPhase(ctx, 2, share(2), d.cycleSince(changed)); err != nil {
		return err
	}
	if c, ok := d.firstCycleAfter(changed); ok && d.rep.Change != nil {
		d.rep.Change.Reoptimized = c.end.Sub(changed)
		d.rep.Change.ReoptimizeOutcome = string(c.outcome)
	}

	// 4: traffic shift: the same flows, another popularity ranking.
	d.begin(3)
	shifted, err := traffic.Generate(set, traffic.Options{Packets: d.opts.Packets, Locality: d.opts.Locality, Seed: d.opts.Seed + 1002})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.opts.Out, "%7.1fs  >> traffic shift: new trace, %d of the 10 hottest flows are new\n",
		d.elapsed().Seconds(), newHot(trace, shifted, 10))
	if err := d.tb.ReplaceTrace(shifted.Frames); err != nil {
		return fmt.Errorf("traffic generator: %w", err)
	}
	// The profile decays window by window: wait for a cycle that
	// swaps, or for a second complete cycle after the shift.
	if err := d.runPhase(ctx, 3, share(3), d.shiftSettled(time.Now())); err != nil {
		return err
	}
	d.snapshotHot("hot keys after the traffic shift")
	d.rep.Stats = d.nf.Stats()
	d.summarize()
	printSummary(d.opts.Out, d.rep)
	return nil
}

func (d *demo) swapCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.swapTimes)
}

// settle is how long a phase goes on after its goal (a swap), at least,
// so that the new program's throughput is measured within the phase.
const settle = 1500 * time.Millisecond

// begin switches to phase i, records its start and announces it.
func (d *demo) begin(i int) {
	d.setPhase(phasePlan[i].name)
	d.phaseStart = d.elapsed()
	fmt.Fprintf(d.opts.Out, "%7.1fs  == phase %d: %s\n", d.elapsed().Seconds(), i+1, phasePlan[i].title)
}

// runPhase runs phase i for at least its share and, when goal is set,
// until settle after goal's event (bounded by maxOverrun). The phase's start and end are
// recorded; the summary is computed at the end.
func (d *demo) runPhase(ctx context.Context, i int, share time.Duration, goal func() (time.Time, bool)) error {
	if i == 0 {
		d.begin(0)
	}
	p := Phase{Name: phasePlan[i].name, Title: phasePlan[i].title, Start: d.phaseStart}
	defer func() {
		p.End = d.elapsed()
		d.mu.Lock()
		d.rep.Phases = append(d.rep.Phases, p)
		d.mu.Unlock()
	}()
	start := time.Now()
	minEnd, maxEnd := start.Add(share), start.Add(share+maxOverrun(share))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	announced := false
	for {
		now := time.Now()
		done, reached := goal == nil, goal == nil
		if !done {
			var at time.Time
			at, reached = goal()
			done = reached && !now.Before(at.Add(settle))
		}
		if !now.Before(maxEnd) || (done && !now.Before(minEnd)) {
			return nil
		}
		if !reached && !now.Before(minEnd) && !announced {
			fmt.Fprintf(d.opts.Out, "%7.1fs  .. waiting for the optimizer (at most %v more)\n", d.elapsed().Seconds(), maxEnd.Sub(now).Round(time.Second))
			announced = true
		}
		if err := d.tb.Err(); err != nil {
			return fmt.Errorf("traffic generator: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// cycleRec is one completed cycle as far as the entry program goes.
type cycleRec struct {
	start, end time.Time
	outcome    agent.Outcome
}

// settledOutcome says whether a cycle re-optimized the program on the
// current maps and traffic (a raced or failed cycle did not).
func settledOutcome(o agent.Outcome) bool {
	switch o {
	case agent.OutcomeSwapped, agent.OutcomeUnchanged, agent.OutcomeNoChange:
		return true
	}
	return false
}

// firstCycleAfter returns the first cycle that started after t and
// re-optimized the entry program.
func (d *demo) firstCycleAfter(t time.Time) (cycleRec, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.cycles {
		if !c.start.Before(t) && settledOutcome(c.outcome) {
			return c, true
		}
	}
	return cycleRec{}, false
}

// cycleSince is the goal of phase 3: the first cycle started after t
// that re-optimized (swapped, or found the running candidate still
// right).
func (d *demo) cycleSince(t time.Time) func() (time.Time, bool) {
	return func() (time.Time, bool) {
		c, ok := d.firstCycleAfter(t)
		return c.end, ok
	}
}

// shiftSettled is the goal of phase 4: a swap after t, or two
// re-optimizing cycles started after t (the decayed profile then holds
// mostly the new hot set).
func (d *demo) shiftSettled(t time.Time) func() (time.Time, bool) {
	return func() (time.Time, bool) {
		d.mu.Lock()
		defer d.mu.Unlock()
		n := 0
		for _, c := range d.cycles {
			if c.start.Before(t) || !settledOutcome(c.outcome) {
				continue
			}
			n++
			if c.outcome == agent.OutcomeSwapped || n == 2 {
				return c.end, true
			}
		}
		return time.Time{}, false
	}
}

// hottestFlow returns the hit flow with the most packets in the trace.
func hottestFlow(t *traffic.Trace) traffic.Flow {
	counts := flowCounts(t)
	best := 0
	for i := range t.Hits {
		if counts[i] > counts[best] {
			best = i
		}
	}
	return t.Flows[best]
}

func flowCounts(t *traffic.Trace) []int {
	counts := make([]int, len(t.Flows))
	for i, f := range t.PacketFlow {
		if !t.Malformed[i] {
			counts[f]++
		}
	}
	return counts
}

// topFlows returns the indexes of the k flows with the most packets.
func topFlows(t *traffic.Trace, k int) []int {
	counts := flowCounts(t)
	idx := make([]int, len(counts))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return counts[b] - counts[a] })
	return idx[:min(k, len(idx))]
}

// newHot counts the k hottest flows of b that are not among a's.
func newHot(a, b *traffic.Trace, k int) int {
	old := map[string]bool{}
	for _, i := range topFlows(a, k) {
		old[a.Flows[i].String()] = true
	}
	n := 0
	for _, i := range topFlows(b, k) {
		if !old[b.Flows[i].String()] {
			n++
		}
	}
	return n
}

// change makes phase 3's control-plane change on the hottest flow's
// table entry through the agent's map handles and proves with test runs
// of the optimized program that the very next packet sees it.
func (d *demo) change(ctx context.Context, trace *traffic.Trace) error {
	flow := hottestFlow(trace)
	newCfg, desc, err := d.kind.change(d.cfg, flow)
	if err != nil {
		return fmt.Errorf("control-plane change: %w", err)
	}
	oldState, err := d.kind.State(d.cfg)
	if err != nil {
		return err
	}
	newState, err := d.kind.State(newCfg)
	if err != nil {
		return err
	}
	writes := diffStates(oldState, newState)
	if len(writes) == 0 {
		return fmt.Errorf("control-plane change %q writes nothing", desc)
	}
	pkt, err := traffic.Build(flow, 64)
	if err != nil {
		return err
	}
	// The optimized program that runs now: wait (bounded) until no
	// profiling window is open, so the proof runs the real fast path.
	var id ebpf.ProgramID
	deadline := time.Now().Add(5 * time.Second)
	for {
		ps, err := d.nf.Program(d.kind.Program)
		if err != nil {
			return err
		}
		if !ps.Profiling || time.Now().After(deadline) {
			id = ps.RunningID
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return fmt.Errorf("open the running program %d: %w", id, err)
	}
	defer prog.Close()
	orig, err := ebpf.NewProgramFromID(d.rep.OriginalID)
	if err != nil {
		return fmt.Errorf("open the original program: %w", err)
	}
	defer orig.Close()
	ingress := uint32(d.tb.NFIfindex())
	run := func(p *ebpf.Program) (TestResult, error) {
		v, out, err := d.tb.TestRun(p, pkt, ingress)
		return TestResult{Verdict: v, Frame: out}, err
	}
	c := &Change{Description: desc, Flow: flow.String(), Writes: len(writes), ProgramID: id}
	if c.Before, err = run(prog); err != nil {
		return err
	}
	fmt.Fprintf(d.opts.Out, "%7.1fs  >> change  %s\n", d.elapsed().Seconds(), desc)
	wrote := time.Now()
	for _, w := range writes {
		m, err := d.nf.Map(w.Map)
		if err != nil {
			return err
		}
		if w.Value == nil {
			err = m.Delete(w.Key)
		} else {
			err = m.Update(w.Key, w.Value, ebpf.UpdateAny)
		}
		if err != nil {
			return fmt.Errorf("write %s through the agent: %w", w.Map, err)
		}
	}
	// The very next run of the same optimized program.
	if c.After, err = run(prog); err != nil {
		return err
	}
	if c.Original, err = run(orig); err != nil {
		return err
	}
	if ps, err := d.nf.Program(d.kind.Program); err == nil {
		c.Tripped = ps.Tripped
	}
	written := map[string]bool{}
	for _, w := range writes {
		written[w.Map] = true
	}
	for _, mi := range d.nf.Maps() {
		if written[mi.Name] && !mi.Guarded {
			c.Unguarded = append(c.Unguarded, mi.Name)
		}
	}
	c.UsedAtOnce = c.After.equal(c.Original) && !c.After.equal(c.Before)
	for _, e := range d.nf.Events(0) {
		if e.Kind == agent.EventGuardBump && !e.Time.Before(wrote) {
			c.GuardBumps = append(c.GuardBumps, e.Map+" "+e.Message)
		}
	}
	if len(c.Unguarded) > 0 {
		fmt.Fprintf(d.opts.Out, "%7.1fs  >> no guard on %v: no optimized code depends on it\n", d.elapsed().Seconds(), c.Unguarded)
	}
	verdict := "the new entry is used at once"
	if !c.UsedAtOnce {
		verdict = "NOT used at once"
	}
	fmt.Fprintf(d.opts.Out, "%7.1fs  >> test run of program %d (flow %s): before %s; right after %s; original %s: %s\n",
		d.elapsed().Seconds(), id, c.Flow, c.Before, c.After, c.Original, verdict)
	d.mu.Lock()
	d.rep.Change = c
	d.mu.Unlock()
	return nil
}

// snapshotHot records the profiler's hottest keys of the NF's tables,
// labelled by the NF (route prefixes for the router).
func (d *demo) snapshotHot(label string) {
	h, err := d.nf.Heatmap(d.kind.Program)
	if err != nil || h == nil {
		return
	}
	d.rep.Hot = append(d.rep.Hot, hotSet(h, label, func(m string, key []byte) string { return d.kind.hotLabel(d.cfg, m, key) }, 10))
}

// hotSet aggregates a heatmap's keys by label and keeps the top k.
func hotSet(h *heatmap.Heatmap, label string, name func(m string, key []byte) string, k int) HotSet {
	counts := map[string]uint64{}
	var total uint64
	for m, keys := range h.Maps {
		for _, hk := range keys {
			l := name(m, hk.Key)
			if l == "" {
				continue
			}
			counts[l] += hk.Count
			total += hk.Count
		}
	}
	hs := HotSet{Label: label}
	for l, n := range counts {
		hs.Keys = append(hs.Keys, HotKey{Key: l, Count: n, Share: float64(n) / float64(total)})
	}
	slices.SortFunc(hs.Keys, func(a, b HotKey) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		if a.Key < b.Key {
			return -1
		}
		return 1
	})
	hs.Keys = hs.Keys[:min(k, len(hs.Keys))]
	return hs
}

// summarize computes each phase's rates from the samples inside it.
func (d *demo) summarize() {
	d.mu.Lock()
	defer d.mu.Unlock()
	summarizePhases(d.rep.Phases, d.rep.Samples, d.rep.OriginalID, d.rep.Events)
}

// summarizePhases fills the rates, speedups, program lists and swap
// counts of phases from samples and events.
func summarizePhases(phases []Phase, samples []Sample, original ebpf.ProgramID, events []Event) {
	for i := range phases {
		p := &phases[i]
		var first, last *Sample
		seen := map[ebpf.ProgramID]bool{}
		for j := range samples {
			s := &samples[j]
			if s.Elapsed < p.Start || s.Elapsed > p.End {
				continue
			}
			if first == nil {
				first = s
			}
			last = s
			if s.ProgramID != 0 && !seen[s.ProgramID] {
				seen[s.ProgramID] = true
				p.Programs = append(p.Programs, s.ProgramID)
			}
			if s.ProgramID != original && s.Version != "profiling" && s.ProgramID != 0 {
				p.Optimized = true
			}
		}
		if first != nil && last != first {
			r := rateBetween(*first, *last)
			p.PPS, p.NsPerPacket = r.PPS, r.NsPerPacket
		}
		p.SteadyNsPerPacket = steadyNs(samples, p.Start, p.End)
		for _, e := range events {
			if e.Kind == string(agent.EventSwap) && e.Elapsed >= p.Start && e.Elapsed <= p.End {
				p.Swaps++
			}
		}
	}
	if len(phases) == 0 {
		return
	}
	base := phases[0]
	for i := range phases {
		if base.PPS > 0 {
			phases[i].Speedup = phases[i].PPS / base.PPS
		}
		if phases[i].NsPerPacket > 0 {
			phases[i].NsSpeedup = base.NsPerPacket / phases[i].NsPerPacket
		}
		if phases[i].SteadyNsPerPacket > 0 {
			phases[i].SteadySpeedup = base.SteadyNsPerPacket / phases[i].SteadyNsPerPacket
		}
	}
}

// steadyNs returns the ns/packet of the last non-profiling program that
// ran between from and to, over the sample intervals that both began and
// ended on it.
func steadyNs(samples []Sample, from, to time.Duration) float64 {
	var id ebpf.ProgramID
	for _, s := range samples {
		if s.Elapsed >= from && s.Elapsed <= to && s.Version != "profiling" && s.ProgramID != 0 {
			id = s.ProgramID
		}
	}
	var pkts uint64
	var rt time.Duration
	for j := 1; j < len(samples); j++ {
		a, b := samples[j-1], samples[j]
		if a.Elapsed < from || b.Elapsed > to || a.ProgramID != id || b.ProgramID != id {
			continue
		}
		if b.Packets >= a.Packets && b.RunTime >= a.RunTime {
			pkts += b.Packets - a.Packets
			rt += b.RunTime - a.RunTime
		}
	}
	if pkts == 0 {
		return 0
	}
	return float64(rt.Nanoseconds()) / float64(pkts)
}
