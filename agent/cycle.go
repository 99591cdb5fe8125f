package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/optimize"
)

// Run drives the agent until ctx is cancelled or Stop is called: a cycle
// at once, then one every Period and one right after every control-plane
// change, and a fingerprint check of the trusted maps every
// FingerprintPeriod. Failures are logged and counted; they never stop the
// loop or touch the running program. When ctx is cancelled Run calls Stop
// and returns its error.
func (n *NF) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return ErrStopped
	}
	if n.runBusy {
		n.mu.Unlock()
		return errors.New("agent: Run is already running")
	}
	n.runBusy = true
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.runBusy = false
		n.mu.Unlock()
	}()

	period := time.NewTicker(n.opts.Period)
	defer period.Stop()
	fp := time.NewTicker(n.opts.FingerprintPeriod)
	defer fp.Stop()
	n.cycleLogged(ctx, "start")
	for {
		select {
		case <-ctx.Done():
			return n.Stop()
		case <-n.done:
			return nil
		case <-period.C:
			n.cycleLogged(ctx, "period")
		case why := <-n.trigger:
			n.cycleLogged(ctx, why)
		case <-fp.C:
			n.CheckFingerprints(ctx)
		}
	}
}

func (n *NF) cycleLogged(ctx context.Context, trigger string) {
	if _, err := n.runCycle(ctx, trigger); err != nil && !errors.Is(err, ErrStopped) && ctx.Err() == nil {
		n.log.Error("cycle failed", "err", err)
	}
}

// Cycle runs one optimization cycle now and returns its stats. It
// waits for a cycle in flight to end first.
func (n *NF) Cycle(ctx context.Context) (*CycleStats, error) {
	return n.runCycle(ctx, "forced")
}

// snapshot is the map contents a cycle specializes to.
type snapshot struct {
	state   *mapstate.State
	fps     map[string]uint64
	skipped map[string]string
	gens    map[string]uint64
}

func (n *NF) runCycle(ctx context.Context, trigger string) (*CycleStats, error) {
	n.cycleMu.Lock()
	defer n.cycleMu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(n.ctx, cancel)()

	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return nil, ErrStopped
	}
	n.cycleSeq++
	cs := &CycleStats{Seq: n.cycleSeq, Trigger: trigger, Start: time.Now()}
	n.rearmLocked() // data-plane tripped guards: see tripwire.go
	snap := n.snapshotLocked()
	cs.SnapshotTime = time.Since(cs.Start)
	cs.Skipped = snap.skipped
	var todo []*progState
	for _, name := range n.order {
		if ps := n.progs[name]; ps.enabled {
			todo = append(todo, ps)
		}
	}
	n.mu.Unlock()

	cs.Programs = n.optimizePrograms(ctx, todo, snap, trigger)
	cs.Duration = time.Since(cs.Start)

	n.mu.Lock()
	n.stats.Cycles++
	for _, pc := range cs.Programs {
		switch pc.Outcome {
		case OutcomeSwapped:
			n.stats.Swaps++
		case OutcomeUnchanged:
			n.stats.Unchanged++
		case OutcomeVerifierRejected:
			n.stats.VerifierRejections++
		case OutcomeDifferentialFailed:
			n.stats.DifferentialFailures++
		case OutcomeRaced:
			n.stats.Raced++
		case OutcomeError:
			n.stats.Errors++
		}
		if ps := n.progs[pc.Program]; ps != nil {
			ps.outcome, ps.reason = pc.Outcome, pc.Reason
		}
	}
	n.stats.LastCycle = cs
	n.mu.Unlock()
	n.emit(Event{Kind: EventCycle, Cycle: cs})
	n.log.Debug("cycle", "seq", cs.Seq, "trigger", trigger, "duration", cs.Duration)
	return cs, ctx.Err()
}

// snapshotLocked reads every map the optimizer may specialize to.
func (n *NF) snapshotLocked() *snapshot {
	s := &snapshot{
		state:   mapstate.New(),
		fps:     map[string]uint64{},
		skipped: map[string]string{},
		gens:    maps.Clone(n.gen),
	}
	for _, name := range slices.Sorted(maps.Keys(n.maps)) {
		m := n.maps[name]
		if strings.HasPrefix(name, ".") {
			// Global data: .rodata is in the spec already; .data and
			// .bss belong to the data plane.
			s.skipped[name] = "global data"
			continue
		}
		if why := n.tooBig(m); why != "" {
			s.skipped[name] = why
			continue
		}
		mm, err := mapstate.SnapshotMap(m)
		if err != nil {
			s.skipped[name] = err.Error()
			continue
		}
		s.state.Maps[name] = mm
		s.fps[name] = fingerprint(mm)
	}
	return s
}

// tooBig says why m is not snapshotted, or "" if it is small enough.
func (n *NF) tooBig(m *ebpf.Map) string {
	limit := n.opts.MaxSnapshotEntries
	switch m.Type() {
	case ebpf.Array, ebpf.PerCPUArray:
		if int(m.MaxEntries()) > limit {
			return fmt.Sprintf("%d entries, more than the snapshot limit %d", m.MaxEntries(), limit)
		}
		return ""
	}
	if int(m.MaxEntries()) <= limit {
		return ""
	}
	// Count keys without reading values, stopping past the limit.
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var prev any // nil: first key
	for count := 0; ; count++ {
		if count > limit {
			return fmt.Sprintf("more than the snapshot limit of %d entries", limit)
		}
		if err := m.NextKey(prev, &next); err != nil {
			return "" // end of map (ErrKeyNotExist) or unreadable: SnapshotMap decides
		}
		copy(key, next)
		prev = key
	}
}

// fingerprint hashes a map's contents (entries sorted by key).
func fingerprint(m *mapstate.Map) uint64 {
	h := sha256.New()
	var n [4]byte
	for _, e := range m.Entries {
		binary.LittleEndian.PutUint32(n[:], uint32(len(e.Key)))
		h.Write(n[:])
		h.Write(e.Key)
		vals := e.Values
		if vals == nil {
			vals = []mapstate.Hex{e.Value}
		}
		for _, v := range vals {
			binary.LittleEndian.PutUint32(n[:], uint32(len(v)))
			h.Write(n[:])
			h.Write(v)
		}
	}
	return binary.LittleEndian.Uint64(h.Sum(nil))
}

// liveFingerprint snapshots and hashes one live map.
func liveFingerprint(m *ebpf.Map) (uint64, error) {
	mm, err := mapstate.SnapshotMap(m)
	if err != nil {
		return 0, err
	}
	return fingerprint(mm), nil
}

// deps says which maps a candidate depends on: guarded through the guard
// slots its code reads, unguarded where a pass rewrote a lookup in a hash
// or LPM map without a guard check (guard elision).
func (n *NF) deps(rep *optimize.ProgramReport) (guarded, unguarded []string) {
	guarded = optimize.GuardedMaps(rep.Candidate.Spec.Programs[rep.Program].Instructions, n.table)
	seen := map[string]bool{}
	for _, g := range guarded {
		seen[g] = true
	}
	for _, r := range rep.Remarks {
		if !r.Applied || r.Map == "" || seen[r.Map] {
			continue
		}
		ms, ok := n.spec.Maps[r.Map]
		if !ok || ms.Type == ebpf.Array || ms.Type == ebpf.PerCPUArray {
			// Array rewrites point into the live element or use the
			// fixed size: they assume nothing about the contents.
			continue
		}
		seen[r.Map] = true
		unguarded = append(unguarded, r.Map)
	}
	sort.Strings(unguarded)
	return guarded, unguarded
}

// candidateVersions reads the guard versions a candidate compares with
// from its guard map contents (set by optimize.RunLive).
func (n *NF) candidateVersions(c *optimize.Candidate, guarded []string) (map[string]uint64, error) {
	ms, ok := c.Spec.Maps[guard.MapName]
	if !ok || len(ms.Contents) != 1 {
		return nil, errors.New("candidate has no guard map contents")
	}
	val, ok := ms.Contents[0].Value.([]byte)
	if !ok {
		return nil, errors.New("candidate guard map contents are not bytes")
	}
	out := map[string]uint64{}
	for _, g := range guarded {
		s, err := n.table.Slot(g)
		if err != nil || int(8*s+8) > len(val) {
			return nil, fmt.Errorf("guard slot of %s: %v", g, err)
		}
		out[g] = binary.LittleEndian.Uint64(val[8*s:])
	}
	return out, nil
}

// optimizePrograms optimizes the programs of todo and returns their
// outcomes in todo's order, leaving out the programs not started before
// ctx was cancelled. The profiling windows and the profiler's calls come
// one program after the other, as before; the optimizer's runs (passes,
// verifier, differential test, swap) overlap, up to GOMAXPROCS at a time:
// one run keeps about one core busy, and the firewall's three programs
// took three times one program's cycle one after the other. Each program
// is checked and swapped on its own exactly as alone.
func (n *NF) optimizePrograms(ctx context.Context, todo []*progState, snap *snapshot, trigger string) []ProgramCycle {
	n.baselineLocked() // made before the runs share it
	out := make([]*ProgramCycle, len(todo))
	slots := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, ps := range todo {
		if ctx.Err() != nil {
			break
		}
		heat := n.programHeat(ctx, ps, snap)
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			pc := n.optimizeProgram(ctx, ps, snap, heat, trigger)
			out[i] = &pc
		})
	}
	wg.Wait()
	var pcs []ProgramCycle
	for _, pc := range out {
		if pc != nil {
			pcs = append(pcs, *pc)
		}
	}
	return pcs
}

// programHeat runs the program's profiling window, if any, and asks the
// profiler, if any: the hot keys the program is optimized for.
func (n *NF) programHeat(ctx context.Context, ps *progState, snap *snapshot) *heatmap.Heatmap {
	profiled := n.profileProgram(ctx, ps, snap)
	heat, err := n.heatmap(ctx, ps.name)
	if err != nil {
		n.log.Warn("profiler", "program", ps.name, "err", err)
	}
	switch {
	case heat == nil:
		return profiled
	case profiled != nil:
		return heatmap.Merge(heat, profiled)
	}
	return heat
}

// optimizeProgram runs the optimizer on one program and swaps the result
// in if it is new. Whatever fails, the running program stays.
func (n *NF) optimizeProgram(ctx context.Context, ps *progState, snap *snapshot, heat *heatmap.Heatmap, trigger string) ProgramCycle {
	pc := n.optimizeProgramOnce(ctx, ps, snap, heat, trigger)
	if ps.prof != nil {
		ps.prof.adapt(pc.Outcome)
	}
	return pc
}

func (n *NF) optimizeProgramOnce(ctx context.Context, ps *progState, snap *snapshot, heat *heatmap.Heatmap, trigger string) ProgramCycle {
	pc := ProgramCycle{Program: ps.name, InstructionsBefore: ps.origIns}
	fail := func(o Outcome, format string, args ...any) ProgramCycle {
		pc.Outcome, pc.Reason = o, fmt.Sprintf(format, args...)
		if o == OutcomeError {
			n.emit(Event{Kind: EventError, Program: ps.name, Message: pc.Reason})
			n.log.Warn("cycle", "program", ps.name, "outcome", o, "reason", pc.Reason)
		}
		return pc
	}
	// A periodic cycle whose inputs (maps changed through the agent,
	// guard versions, heatmap) equal those of the last full run can only
	// produce the same candidate: skip it, but run in full at least every
	// FullCycleEvery (writes to maps no program trusts bypass the agent).
	in := cycleInput(snap.gens, n.table, heat)
	if trigger == "period" {
		n.mu.Lock()
		skip := ps.lastInput == in && time.Since(ps.lastFull) < n.opts.FullCycleEvery && stableOutcome(ps.outcome)
		n.mu.Unlock()
		if skip {
			pc.Outcome, pc.Reason = OutcomeUnchanged, "inputs unchanged"
			return pc
		}
	}
	defer func() {
		if stableOutcome(pc.Outcome) {
			n.mu.Lock()
			ps.lastInput, ps.lastFull = in, time.Now()
			n.mu.Unlock()
		}
	}()
	// The candidate's load against the live maps (a verifier run of its
	// own) overlaps the differential test, which keeps one core busy.
	type liveLoad struct {
		c   *optimize.Candidate
		lp  *optimize.LiveProgram
		err error
	}
	var early chan liveLoad // nil once taken below
	defer func() {
		if early == nil {
			return
		}
		if l := <-early; l.lp != nil {
			l.lp.Close() // rejected or not needed: never swapped in
		}
	}()
	rep, err := optimize.RunLive(ctx, n.spec, snap.state, heat, optimize.LiveOptions{
		Options: optimize.Options{
			Program:   ps.name,
			Passes:    n.opts.Passes,
			Generated: n.opts.Generated,
			Seed:      n.opts.Seed,
		},
		Guards:     n.table,
		GuardCheck: !n.opts.SkipGuardCheck,
		Baseline:   n.baseline, // made by optimizePrograms
		Unchanged: func(d [32]byte) bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			return ps.running != nil && ps.running.digest == d
		},
		SameShape: func(s [32]byte) bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			return ps.running != nil && ps.running.shape == s
		},
		Verified: func(c *optimize.Candidate) {
			early = make(chan liveLoad, 1)
			live := n.liveMaps()
			go func() {
				lp, err := optimize.LoadLive(c, n.spec, live)
				early <- liveLoad{c, lp, err}
			}()
		},
	})
	if ctx.Err() != nil {
		// An aborted differential test is no verdict on the candidate.
		return fail(OutcomeCancelled, "cycle cancelled")
	}
	if err != nil {
		return fail(OutcomeError, "optimizer: %v", err)
	}
	pc.InstructionsAfter = rep.InstructionsAfter
	pc.Passes, pc.Remarks = rep.Passes, rep.Remarks
	pc.OptimizeTime, pc.VerifyTime, pc.DifferentialTime = rep.OptimizeTime, rep.VerifyTime, rep.DifferentialNS
	pc.SteadyTest = rep.SteadyTest
	for _, r := range rep.Remarks {
		if r.Applied {
			pc.Applied++
		}
	}
	if rep.Reason == optimize.ReasonUnchanged {
		pc.Outcome = OutcomeUnchanged
		return pc
	}
	if !rep.Accepted {
		switch {
		case rep.Verifier != "" && rep.Verifier != "ok":
			return fail(OutcomeVerifierRejected, "%s: %s", rep.Reason, firstLine(rep.Verifier))
		case rep.Differential != nil && !rep.Differential.Passed():
			why := rep.Reason
			if len(rep.Differential.Mismatches) > 0 {
				why += ": " + firstLine(rep.Differential.Mismatches[0].String())
			}
			n.log.Warn("candidate rejected", "program", ps.name, "reason", why)
			return fail(OutcomeDifferentialFailed, "%s", why)
		}
		return fail(OutcomeSkipped, "%s", rep.Reason)
	}
	if pc.Applied == 0 {
		// Nothing to specialize: the original is what should run.
		n.mu.Lock()
		err := n.restoreLocked(ps, "no rewrite applies")
		if err == nil {
			err = n.persistLocked()
		}
		n.mu.Unlock()
		if err != nil {
			return fail(OutcomeError, "%v", err)
		}
		pc.Outcome = OutcomeNoChange
		return pc
	}
	guarded, unguarded := n.deps(rep)
	for _, d := range slices.Concat(guarded, unguarded) {
		if why, skipped := snap.skipped[d]; skipped {
			return fail(OutcomeSkipped, "depends on map %s, which was not snapshotted: %s", d, why)
		}
	}
	versions, err := n.candidateVersions(rep.Candidate, guarded)
	if len(guarded) > 0 && err != nil {
		return fail(OutcomeError, "%v", err)
	}
	digest := rep.Digest
	if digest == ([32]byte{}) {
		digest = rep.Candidate.Digest(n.spec)
	}

	n.mu.Lock()
	unchanged := ps.running != nil && ps.running.digest == digest
	n.mu.Unlock()
	if unchanged {
		pc.Outcome = OutcomeUnchanged
		return pc
	}

	var lp *optimize.LiveProgram
	var lerr error
	if early != nil {
		l := <-early
		early = nil
		if l.c == rep.Candidate {
			lp, lerr = l.lp, l.err
		} else if l.lp != nil {
			l.lp.Close()
		}
	}
	if lp == nil && lerr == nil {
		lp, lerr = optimize.LoadLive(rep.Candidate, n.spec, n.liveMaps())
	}
	if lerr != nil {
		return fail(OutcomeError, "%v", lerr)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	raced := ""
	switch {
	case n.stopped:
		raced = "agent stopped during the cycle"
	case !ps.enabled:
		raced = "program disabled during the cycle"
	}
	for _, d := range slices.Concat(guarded, unguarded) {
		if raced == "" && n.gen[d] != snap.gens[d] {
			raced = fmt.Sprintf("map %s changed during the cycle", d)
		}
	}
	for _, g := range guarded {
		if raced == "" && n.table.Version(g) != versions[g] {
			raced = fmt.Sprintf("guard of map %s bumped during the cycle", g)
		}
	}
	if raced != "" {
		lp.Close()
		n.kick("raced")
		return fail(OutcomeRaced, "%s", raced)
	}
	start := time.Now()
	if err := n.swapLocked(ps, lp.Program); err != nil {
		lp.Close()
		return fail(OutcomeError, "swap: %v", err)
	}
	pc.SwapTime = time.Since(start)
	r := &running{
		prog:      lp.Program,
		lp:        lp,
		digest:    digest,
		shape:     optimize.Shape(rep.Candidate.Spec.Programs[rep.Program].Instructions),
		insns:     rep.InstructionsAfter,
		since:     time.Now(),
		guarded:   guarded,
		unguarded: unguarded,
		versions:  versions,
		relies:    map[string]uint64{},
	}
	for _, d := range slices.Concat(guarded, unguarded) {
		r.relies[d] = snap.fps[d]
	}
	if old := ps.running; old != nil {
		if err := old.close(); err != nil {
			n.log.Warn("close replaced program", "program", ps.name, "err", err)
		}
	}
	ps.running = r
	ps.swaps++
	if err := n.persistLocked(); err != nil {
		n.log.Warn("persist state", "err", err)
	}
	pc.Outcome = OutcomeSwapped
	n.log.Info("swapped", "program", ps.name, "insns", fmt.Sprintf("%d->%d", pc.InstructionsBefore, pc.InstructionsAfter), "guarded", guarded)
	n.emit(Event{Kind: EventSwap, Program: ps.name, Message: fmt.Sprintf("%d -> %d instructions, %d rewrites, guards on %v", pc.InstructionsBefore, pc.InstructionsAfter, pc.Applied, guarded)})
	return pc
}

// baselineLocked returns the NF's Baseline, made on first use; the
// caller holds cycleMu.
func (n *NF) baselineLocked() *optimize.Baseline {
	if n.baseline == nil {
		n.baseline = optimize.NewBaseline()
	}
	return n.baseline
}

// heatmap asks the profiler, if any, for the program's hot keys.
func (n *NF) heatmap(ctx context.Context, prog string) (*heatmap.Heatmap, error) {
	if n.opts.Profiler == nil {
		return nil, nil
	}
	return n.opts.Profiler.Heatmap(ctx, prog)
}

// liveMaps returns the maps a candidate loads against: the NF's and the
// guard map.
func (n *NF) liveMaps() map[string]*ebpf.Map {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := maps.Clone(n.maps)
	out[guard.MapName] = n.guards
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// CheckFingerprints hashes every map that a running optimized program
// trusts and compares it with the contents the program was specialized
// to. A map changed behind the agent's back (bpftool, another process, a
// direct fd write) has its guard bumped at once, or, for a map without a
// guard, the original program restored; then a cycle is queued. It
// returns the number of mismatches. Run calls it every
// FingerprintPeriod.
func (n *NF) CheckFingerprints(ctx context.Context) int {
	// Hash outside the lock (a large map takes a while to read), then
	// act only where neither the agent changed the map nor a cycle
	// replaced the program meanwhile.
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return 0
	}
	seen := map[string]*running{}
	targets := map[string]*ebpf.Map{}
	for _, name := range n.order {
		if r := n.progs[name].running; r != nil {
			seen[name] = r
			for d := range r.relies {
				targets[d] = n.maps[d]
			}
		}
	}
	gens := maps.Clone(n.gen)
	n.mu.Unlock()

	fps := map[string]uint64{}
	for _, d := range slices.Sorted(maps.Keys(targets)) {
		if ctx.Err() != nil {
			return 0
		}
		fp, err := liveFingerprint(targets[d])
		if err != nil {
			n.log.Warn("fingerprint", "map", d, "err", err)
			continue
		}
		fps[d] = fp
	}

	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return 0
	}
	for d := range fps {
		if n.gen[d] != gens[d] {
			delete(fps, d) // changed through the agent: its guard is bumped
		}
	}
	found := n.checkFingerprintsLocked(ctx, fps, seen)
	if found > 0 {
		if err := n.persistLocked(); err != nil {
			n.log.Warn("persist state", "err", err)
		}
	}
	n.mu.Unlock()
	if found > 0 {
		n.kick("fingerprint")
	}
	return found
}

// checkFingerprintsLocked compares what running programs trust with the
// live contents. With fps set, only those maps are checked, with the
// given hashes, and only programs still running what seen recorded;
// with fps nil every trusted map is read now.
func (n *NF) checkFingerprintsLocked(ctx context.Context, fps map[string]uint64, seen map[string]*running) int {
	cache := map[string]uint64{}
	found := 0
	for _, name := range n.order {
		ps := n.progs[name]
		if ps.running == nil || (seen != nil && seen[name] != ps.running) {
			continue
		}
		for _, d := range slices.Sorted(maps.Keys(ps.running.relies)) {
			if ctx.Err() != nil {
				return found
			}
			want, ok := ps.running.relies[d]
			if !ok {
				continue // dropped by an earlier bump in this loop
			}
			if n.table.DataPlane(d) {
				continue // the data plane writes it: see tripwire.go
			}
			var got uint64
			if fps != nil {
				if got, ok = fps[d]; !ok {
					continue
				}
			} else if got, ok = cache[d]; !ok {
				var err error
				if got, err = liveFingerprint(n.maps[d]); err != nil {
					n.log.Warn("fingerprint", "map", d, "err", err)
					continue
				}
				cache[d] = got
			}
			if got == want {
				continue
			}
			found++
			n.stats.FingerprintMismatches++
			msg := "changed without going through the agent"
			n.log.Warn("fingerprint mismatch", "program", name, "map", d)
			if slices.Contains(ps.running.unguarded, d) {
				n.emit(Event{Kind: EventFingerprint, Program: name, Map: d, Message: msg + ": no guard, restoring the original"})
				if err := n.restoreLocked(ps, "map "+d+" changed behind the agent"); err != nil {
					n.log.Error("restore", "program", name, "err", err)
				}
				break
			}
			n.emit(Event{Kind: EventFingerprint, Program: name, Map: d, Message: msg + ": guard bumped"})
			if err := n.bumpLocked(d); err != nil {
				n.log.Error("bump guard", "map", d, "err", err)
				if err := n.restoreLocked(ps, "guard of "+d+" cannot be bumped"); err != nil {
					n.log.Error("restore", "program", name, "err", err)
				}
				break
			}
			n.stats.Deoptimizations++
		}
	}
	return found
}

// bumpLocked bumps the guard of a map if any candidate may guard it, and
// drops the map from what running programs trust.
func (n *NF) bumpLocked(mapName string) error {
	if !slices.Contains(n.table.Guarded(), mapName) {
		return nil
	}
	if err := n.table.Bump(n.guards, mapName); err != nil {
		return err
	}
	n.stats.GuardBumps++
	n.emit(Event{Kind: EventGuardBump, Map: mapName, Message: fmt.Sprintf("version %d", n.table.Version(mapName))})
	for _, ps := range n.progs {
		if r := ps.running; r != nil && slices.Contains(r.guarded, mapName) {
			delete(r.relies, mapName)
		}
	}
	return nil
}

// stableOutcome says whether an outcome reflects the inputs alone (and
// so repeats while they do).
func stableOutcome(o Outcome) bool {
	switch o {
	case OutcomeSwapped, OutcomeUnchanged, OutcomeNoChange, OutcomeSkipped,
		OutcomeVerifierRejected, OutcomeDifferentialFailed:
		return true
	}
	return false
}

// cycleInput hashes what a cycle specializes a program to, apart from
// map contents that changed behind the agent: the agent's change counts,
// the guard versions and the heatmap.
func cycleInput(gens map[string]uint64, t *guard.Table, heat *heatmap.Heatmap) [32]byte {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(gens)) {
		fmt.Fprintf(h, "g %s %d\n", name, gens[name])
	}
	h.Write(optimize.GuardValue(t))
	if heat != nil {
		for _, name := range slices.Sorted(maps.Keys(heat.Maps)) {
			fmt.Fprintf(h, "h %s\n", name)
			for _, k := range heat.Maps[name] {
				fmt.Fprintf(h, "%x %d\n", []byte(k.Key), k.Count)
			}
		}
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}
