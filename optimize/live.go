package optimize

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/verify"
)

// LiveOptions configures [RunLive].
type LiveOptions struct {
	Options
	// Guards is the guard table of the running network function. Slots
	// and versions persist across candidates: a new guard gets the next
	// free slot, and every guard check compares with the version the
	// table holds, which is the version of the live guard map. Nil uses a
	// fresh table (versions 0), as [Run] does.
	Guards *guard.Table
	// GuardCheck runs, after the differential test, one more per guarded
	// map (up to MaxGuardChecks): that map's entries deleted and every
	// guard tripped. The candidate must then behave exactly like the
	// original, which proves that its guards really divert to the
	// original path when the control plane changes a map; a candidate
	// whose guard does not is rejected.
	GuardCheck bool
	// Unchanged, if set, is asked with the digest (Candidate.Digest) of
	// the lowered candidate before the verifier and the differential
	// test run; if it returns true, RunLive stops there and reports
	// ReasonUnchanged. The agent uses it to skip the checks of a
	// candidate identical to the one already running.
	Unchanged func(digest [32]byte) bool
	// SameShape, if set, is asked with the shape (Candidate.Shape) of the
	// lowered candidate. If it returns true (a candidate with the same
	// code, tested in full, is running), the candidate differs from it
	// only in constants: hot keys, cached values, folded configuration.
	// Its differential test then runs on SteadyShare of the packets
	// (spread over the trace, generated packets and edge cases alike,
	// at least SteadyMinPackets), and the report says so.
	SameShape func(shape [32]byte) bool
	// Verified, if set, is called with the candidate as soon as the
	// kernel verifier has accepted it, before the differential test
	// runs; the same *Candidate is the report's if the candidate is
	// accepted. The agent loads it against the live maps meanwhile
	// (LoadLive, another verifier run), on the core the test leaves
	// free. A candidate the tests then reject must not be used.
	Verified func(c *Candidate)
	// Baseline, if set, keeps the differential test's two copies of the
	// original collection loaded from one RunLive to the next (of any
	// program of the same spec): they are reset to the new state (only
	// the maps a program may have written or whose contents changed are
	// rewritten) instead of being loaded and filled again.
	Baseline *Baseline
}

// Baseline holds the differential test's copies of the original
// collection between runs of [RunLive] (LiveOptions.Baseline). It is safe
// for concurrent use: each RunLive takes a pair of copies if one is kept
// and loads its own otherwise, and every pair comes back when its run
// ends, so the Baseline keeps as many pairs as runs overlapped (the
// agent optimizes the programs of a network function side by side).
// Close it when done.
type Baseline struct {
	mu     sync.Mutex
	kept   []*verify.Originals
	closed bool
	// spec's programs as analysed (analyseAll), which depends on spec
	// alone: every run needs it, of every program of every cycle.
	spec    *ebpf.CollectionSpec
	progs   map[string]*analysed
	progsOK bool
}

// NewBaseline returns an empty Baseline.
func NewBaseline() *Baseline { return &Baseline{} }

// take returns kept copies if they were loaded from spec, sized for
// tests of maxPackets packets, reset to state; nil if there are none (or
// they do not fit or cannot be reset, in which case they are closed).
func (b *Baseline) take(spec *ebpf.CollectionSpec, state *mapstate.State, maxPackets int) *verify.Originals {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	var o *verify.Originals
	if n := len(b.kept); n > 0 {
		o, b.kept = b.kept[n-1], b.kept[:n-1]
	}
	b.mu.Unlock()
	if o == nil {
		return nil
	}
	if o.Spec() != spec || !o.SizedFor(maxPackets) {
		o.Close()
		return nil
	}
	if err := o.Reset(state); err != nil {
		o.Close()
		return nil
	}
	return o
}

// analysis returns the analysis of spec's programs (analyseAll), kept
// from the last run of the same spec. The result is shared: read only.
func (b *Baseline) analysis(spec *ebpf.CollectionSpec) (map[string]*analysed, bool) {
	if b == nil {
		return analyseAll(spec, "", nil)
	}
	b.mu.Lock()
	if b.spec == spec {
		defer b.mu.Unlock()
		return b.progs, b.progsOK
	}
	b.mu.Unlock()
	progs, ok := analyseAll(spec, "", nil)
	b.mu.Lock()
	b.spec, b.progs, b.progsOK = spec, progs, ok
	b.mu.Unlock()
	return progs, ok
}

// put keeps o for a later run, or closes it if the Baseline is closed.
func (b *Baseline) put(o *verify.Originals) {
	if o == nil {
		return
	}
	if b == nil {
		o.Close()
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		o.Close()
		return
	}
	b.kept = append(b.kept, o)
}

// Close releases the kept copies; later runs load their own.
func (b *Baseline) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for _, o := range b.kept {
		o.Close()
	}
	b.kept = nil
}

// SteadyShare is the share of the packets the differential test of a
// candidate with an unchanged shape runs on (see LiveOptions.SameShape).
const SteadyShare = 4

// SteadyMinPackets is the least number of packets of such a test.
const SteadyMinPackets = 128

// ReasonUnchanged is the ProgramReport.Reason of a candidate that
// LiveOptions.Unchanged recognized.
const ReasonUnchanged = "identical to the running candidate"

// MaxGuardChecks bounds the guarded maps LiveOptions.GuardCheck tests.
const MaxGuardChecks = 4

// GuardCheckPackets bounds the packets of each guard check: an evenly
// spread sample of the differential test's packets (trace, generated and
// edge cases alike). With its guard tripped the candidate must run the
// original code for every packet, so a guard that does not divert shows
// on the first packet that reaches the specialized lookup; the full
// packet set has already been through the differential test.
const GuardCheckPackets = 128

// spread returns at most n packets taken at even steps over packets.
func spread(packets [][]byte, n int) [][]byte {
	if len(packets) <= n {
		return packets
	}
	out := make([][]byte, 0, n)
	for i := range n {
		out = append(out, packets[i*len(packets)/n])
	}
	return out
}

// mapAccess classifies the maps of coll by the analysis of every program
// of coll (the original programs and the passes' added maps) and of the
// candidate for program name. written names the maps some program may
// write (a write site, or a pointer the analysis lost): the maps the
// differential test compares periodically (verify.DiffOptions.
// PeriodicMaps); every map is still compared at the end, so the analysis
// is never the only check. readOnly names the maps without a write site
// in any program, which the test creates BPF_F_RDONLY_PROG
// (verify.DiffOptions.ReadOnlyMaps): the kernel verifier, not the
// analysis, then proves them unwritten, and refuses the load (which is
// then repeated without the flag) where the analysis lost track of a
// write. Both are nil, which compares every map periodically, when a
// program cannot be analysed.
func mapAccess(coll *ebpf.CollectionSpec, name string, insns asm.Instructions) (written, readOnly []string) {
	progs, ok := analyseAll(coll, "", nil)
	if !ok {
		return nil, nil
	}
	cp := coll.Programs[name].Copy()
	cp.Instructions = insns
	cand, ok := analyse(coll, cp)
	if !ok {
		return nil, nil
	}
	return accessOf(coll, progs, cand)
}

// accessOf is mapAccess for the analysed programs of coll and the
// candidate.
func accessOf(coll *ebpf.CollectionSpec, progs map[string]*analysed, cand *analysed) (written, readOnly []string) {
	w := map[string]bool{}
	sites := map[string]bool{}
	add := func(a *analysed) {
		for m, mi := range a.res.Maps {
			if !mi.ReadOnly || mi.Untracked || mi.Missing {
				w[m] = true
			}
			if len(mi.WriteSites) > 0 || mi.Missing {
				sites[m] = true
			}
		}
	}
	for _, a := range progs {
		add(a)
	}
	add(cand)
	written = slices.Sorted(maps.Keys(w))
	for m := range coll.Maps {
		if !sites[m] && m != guard.MapName {
			readOnly = append(readOnly, m)
		}
	}
	sort.Strings(readOnly)
	return written, readOnly
}

// RunLive optimizes one program (opts.Program, required) like [Run], but
// against a persistent guard table, so that the candidate can run against
// the live guard map of a network function that has already been
// optimized and had its guards bumped. The differential test runs with a
// guard map holding the table's versions, so it exercises the specialized
// path rather than the fallback. spec is not modified.
//
// Its verification budget is the cycle's: the differential test compares
// periodically only the maps some program of the collection or the
// candidate may write (by the analysis), and every map at the end and
// after any packet that differed; the guard check runs on
// GuardCheckPackets packets; hash maps of the test copies are not
// preallocated (verify.DiffOptions.NoPrealloc), which makes creating
// large ones cheap, except in the copies of the original that a Baseline
// keeps from run to run: a guard check empties and refills a guarded map
// in them, which preallocated hash maps do two to four times faster
// (the DDoS filter's cycle took a fifth less). Preallocation changes
// nothing programs see but the failure of an allocation under memory
// pressure, which would show as a mismatch. [Run] compares every map
// periodically.
func RunLive(ctx context.Context, spec *ebpf.CollectionSpec, state *mapstate.State, heat *heatmap.Heatmap, opts LiveOptions) (*ProgramReport, error) {
	if opts.Program == "" {
		return nil, errors.New("optimize: RunLive needs a program name")
	}
	if _, ok := spec.Programs[opts.Program]; !ok {
		return nil, fmt.Errorf("no program %q in the object", opts.Program)
	}
	if state == nil {
		state = mapstate.New()
	}
	if err := state.Check(spec); err != nil {
		return nil, err
	}
	tbl := opts.Guards
	if tbl == nil {
		tbl = guard.NewTable()
	}
	gen := opts.Generated
	if gen == 0 {
		gen = 2000
	}
	// The packets depend on the map contents and the heatmap, not on the
	// candidate: they are generated while the passes run (both only
	// read spec, state and heat).
	pc := make(chan [][]byte, 1)
	go func() {
		rnd := rand.New(rand.NewSource(opts.Seed))
		packets := slices.Clone(opts.Packets)
		packets = append(packets, Generate(spec, state, heat, gen, rnd)...)
		pc <- append(packets, verify.EdgeCases(packets, gen/4, rnd)...)
	}()
	var packets [][]byte
	wait := func() [][]byte {
		if pc != nil {
			packets, pc = <-pc, nil
		}
		return packets
	}
	defer wait()
	return optimizeLive(ctx, spec, opts.Program, state, heat, wait, tbl, opts)
}

// optimizeLive is optimizeOne with a caller-supplied guard table;
// testPackets returns the differential test's packets (waiting for
// their generation).
func optimizeLive(ctx context.Context, spec *ebpf.CollectionSpec, name string, state *mapstate.State, heat *heatmap.Heatmap, testPackets func() [][]byte, tbl *guard.Table, lopts LiveOptions) (*ProgramReport, error) {
	opts := lopts.Options
	pr := &ProgramReport{Program: name, InstructionsBefore: len(spec.Programs[name].Instructions)}
	start := time.Now()

	// The two copies of the original for the differential test do not
	// depend on the candidate: they load while the passes run.
	type loaded struct {
		o   *verify.Originals
		err error
	}
	origc := make(chan loaded, 1)
	// The test's copies of large hash maps are sized for the test's
	// packets (verify.DiffOptions.InsertBounds): the originals' by
	// their programs, the candidate's by those and its own.
	maxPackets := testPacketCount(lopts.Options)
	var origBounds map[string]int
	boundsDone := make(chan struct{})
	// unneeded is closed when the run ends before its test (no candidate,
	// or one identical to the running one): the copies' reset or load
	// is then skipped if it has not begun, which would otherwise hold
	// the caller up (the agent runs the next program meanwhile).
	unneeded := make(chan struct{})
	needless := func() bool {
		select {
		case <-unneeded:
			return true
		default:
			return false
		}
	}
	go func() {
		if needless() {
			close(boundsDone)
			origc <- loaded{}
			return
		}
		progs, ok := lopts.Baseline.analysis(spec)
		// Kept copies are reset first: the bounds are for a load, and
		// for the candidate's, later.
		kept := lopts.Baseline.take(spec, state, maxPackets)
		if ok {
			origBounds = boundsOf(spec, progs, state)
		}
		close(boundsDone)
		if kept != nil {
			origc <- loaded{kept, nil}
			return
		}
		if needless() {
			origc <- loaded{}
			return
		}
		var unwritten []string
		if ok {
			unwritten = unwrittenOf(spec, progs)
		}
		o, err := verify.LoadOriginals(spec, state, verify.DiffOptions{NoPrealloc: lopts.Baseline == nil, ReadOnlyMaps: unwritten,
			InsertBounds: origBounds, MaxPackets: maxPackets})
		origc <- loaded{o, err}
	}()
	var orig *verify.Originals // until a session owns it
	var origErr error
	waited := false
	waitOrig := func() {
		if !waited {
			l := <-origc
			orig, origErr, waited = l.o, l.err, true
			if orig != nil {
				pr.BaselineLoadTime = orig.LoadTime()
			}
		}
	}
	var sess *verify.Session
	defer func() {
		if !waited {
			close(unneeded)
		}
		waitOrig()
		if sess != nil {
			orig = sess.Release()
		}
		lopts.Baseline.put(orig)
	}()

	cm, err := compile(spec, name, state, heat, tbl, opts.Passes, pr, true)
	if cm == nil {
		return pr, err
	}
	pr.OptimizeTime = time.Since(start)

	var digest [32]byte // of cm's candidate, once computed
	if lopts.Unchanged != nil {
		probe := &Candidate{Spec: cm.coll.Copy(), Program: name}
		probe.Spec.Programs[name].Instructions = cm.insns
		digest = probe.Digest(spec)
		if lopts.Unchanged(digest) {
			pr.Reason = ReasonUnchanged
			return pr, nil
		}
	}
	waitOrig()
	if origErr != nil {
		return nil, fmt.Errorf("program %s: differential test: %w", name, origErr)
	}

	// The verifier and the differential test must see the guard versions
	// the candidate compares with, or they would only test the fallback.
	setGuards := func(coll *ebpf.CollectionSpec) {
		if gs, ok := coll.Maps[guard.MapName]; ok {
			gs.Contents = []ebpf.MapKV{{Key: uint32(0), Value: GuardValue(tbl)}}
		}
	}
	// The kernel verifier's check of the candidate is the load of the
	// differential test's copy of the candidate collection, next to the
	// originals: one load serves both, and the differential test and
	// every guard check (Session.Reset between them) run on the three.
	var dopts verify.DiffOptions
	load := func(cm *compiled) (time.Duration, error) {
		if orig == nil {
			return 0, errors.New("optimize: the originals are in use") // a session holds them
		}
		// One analysis of each program serves the map classes and the
		// insert bounds. The candidate's runs beside the others': the
		// verifier's load waits for both.
		var written, readOnly []string
		var candBounds map[string]int
		var progs map[string]*analysed
		var ok bool
		var wg sync.WaitGroup
		wg.Go(func() { progs, ok = analyseAll(cm.coll, "", nil) })
		cp := cm.coll.Programs[name].Copy()
		cp.Instructions = cm.insns
		cand, candOK := analyse(cm.coll, cp)
		wg.Wait()
		if ok && candOK {
			written, readOnly = accessOf(cm.coll, progs, cand)
			progs[name] = cand // the candidate collection runs the candidate
			candBounds = boundsOf(cm.coll, progs, state)
		}
		<-boundsDone
		dopts = verify.DiffOptions{Context: opts.Context, PeriodicMaps: written, ReadOnlyMaps: readOnly, NoPrealloc: true, CandidateLogLevel: ebpf.LogLevelStats,
			InsertBounds: maxBounds(origBounds, candBounds), MaxPackets: maxPackets}
		vstart := time.Now()
		s, err := verify.NewCandidateSession(orig, cm.coll, state, verify.Candidate{name: cm.insns}, dopts)
		d := time.Since(vstart)
		if err != nil {
			return d, err
		}
		sess, orig = s, nil
		return s.CandidateLoadTime(), nil
	}
	checked := loadChecked(spec, name, state, heat, tbl, opts.Passes, cm, pr, true, setGuards, load)
	if checked == nil {
		return pr, nil
	}
	if checked != cm {
		digest = [32]byte{} // rebuilt: the digest above is another candidate's
	}
	cm = checked
	if sess == nil {
		return nil, fmt.Errorf("program %s: candidate accepted without a test session", name)
	}
	packets := testPackets()
	if err := checkPackets(packets); err != nil {
		return nil, fmt.Errorf("program %s: differential test: %w", name, err)
	}
	coll, cand, insns := cm.coll, verify.Candidate{name: cm.insns}, cm.insns
	final := coll.Copy()
	final.Programs[name].Instructions = insns
	candidate := &Candidate{Spec: final, Program: name, Guards: tbl}
	if lopts.Verified != nil {
		lopts.Verified(candidate)
	}

	if lopts.SameShape != nil && lopts.SameShape(Shape(cm.insns)) {
		packets = spread(packets, max(len(packets)/SteadyShare, SteadyMinPackets))
		pr.SteadyTest = true
	}
	dstart := time.Now()
	dr, err := sess.Run(ctx, packets)
	pr.DifferentialNS = time.Since(dstart)
	if err != nil && dr == nil {
		return nil, fmt.Errorf("program %s: differential test: %w", name, err)
	}
	pr.Differential = dr
	if !dr.Passed() {
		pr.Reason = "differential test found mismatches"
		return pr, nil
	}
	if lopts.GuardCheck {
		gstart := time.Now()
		ok, err := guardCheck(ctx, sess, coll, state, cand, spread(packets, GuardCheckPackets), tbl)
		pr.DifferentialNS = time.Since(dstart) // the differential and guard tests
		pr.GuardCheckTime = time.Since(gstart)
		if err != nil {
			return nil, fmt.Errorf("program %s: guard check: %w", name, err)
		}
		if ok != nil {
			pr.Differential = ok.report
			pr.Reason = fmt.Sprintf("guard check failed: with map %s changed and its guard tripped the candidate differs from the original", ok.mapName)
			return pr, nil
		}
	}
	pr.Accepted = true
	pr.Candidate = candidate
	pr.Digest = digest
	return pr, nil
}

// unwrittenOf names the maps of spec without a write site in any of
// its programs, by the analysis of progs: the maps the differential
// test's copies of the original create BPF_F_RDONLY_PROG, for the
// verifier to prove them unwritten.
func unwrittenOf(spec *ebpf.CollectionSpec, progs map[string]*analysed) []string {
	sites := map[string]bool{}
	for _, a := range progs {
		for m, mi := range a.res.Maps {
			if len(mi.WriteSites) > 0 || mi.Missing {
				sites[m] = true
			}
		}
	}
	var out []string
	for m := range spec.Maps {
		if !sites[m] {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

type guardFailure struct {
	mapName string
	report  *verify.Report
}

// guardCheck runs the differential test once per guarded map the
// candidate reads, with that map emptied and every guard tripped, on the
// collections of sess (reset to that state before each test); it
// returns the first failure, or nil.
func guardCheck(ctx context.Context, sess *verify.Session, coll *ebpf.CollectionSpec, state *mapstate.State, cand verify.Candidate, packets [][]byte, tbl *guard.Table) (*guardFailure, error) {
	if _, ok := coll.Maps[guard.MapName]; !ok {
		return nil, nil
	}
	used := GuardedMaps(cand[firstName(cand)], tbl)
	if len(used) > MaxGuardChecks {
		used = used[:MaxGuardChecks]
	}
	tripped := GuardValue(tbl)
	for i := 0; i < len(tripped); i += 8 {
		binary.LittleEndian.PutUint64(tripped[i:], binary.LittleEndian.Uint64(tripped[i:])+1)
	}
	guards := &mapstate.Map{Entries: []mapstate.Entry{{Key: make([]byte, 4), Value: tripped}}}
	for _, m := range used {
		if _, inState := state.Maps[m]; !inState {
			continue
		}
		changed := &mapstate.State{Variables: state.Variables, Maps: map[string]*mapstate.Map{guard.MapName: guards}}
		for k, v := range state.Maps {
			if k != m {
				changed.Maps[k] = v
			}
		}
		if err := sess.Reset(changed); err != nil {
			return nil, err
		}
		dr, err := sess.Run(ctx, packets)
		if err != nil && dr == nil {
			return nil, err
		}
		if !dr.Passed() {
			return &guardFailure{mapName: m, report: dr}, nil
		}
	}
	return nil, nil
}

// checkPackets is verify.Differential's check of the packets.
func checkPackets(packets [][]byte) error {
	if len(packets) == 0 {
		return errors.New("verify: differential test needs at least one packet")
	}
	for i, p := range packets {
		if len(p) < verify.MinFrameSize {
			return fmt.Errorf("verify: packet %d has %d bytes, the kernel needs at least %d", i, len(p), verify.MinFrameSize)
		}
	}
	return nil
}

func firstName(c verify.Candidate) string {
	names := c.Names()
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// GuardedMaps returns the maps whose guard slots the instructions read,
// sorted: the maps whose contents the code is specialized to behind a
// guard.
func GuardedMaps(insns asm.Instructions, t *guard.Table) []string {
	bySlot := map[uint32]string{}
	for _, g := range t.Guarded() {
		if s, err := t.Slot(g); err == nil {
			bySlot[s] = g
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, ins := range insns {
		if !ins.IsLoadFromMap() || ins.Reference() != guard.MapName {
			continue
		}
		// LoadMapValue keeps the value offset in the upper 32 bits.
		slot := uint32(uint64(ins.Constant)>>32) / 8
		if name, ok := bySlot[slot]; ok && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// GuardValue returns the value of the guard map's single element that
// holds the versions of every slot of t.
func GuardValue(t *guard.Table) []byte {
	buf := make([]byte, 8*guard.MaxGuards)
	for _, m := range t.Guarded() {
		slot, err := t.Slot(m) // assigned: Guarded lists only slotted maps
		if err != nil {
			continue
		}
		binary.LittleEndian.PutUint64(buf[8*slot:], t.Version(m))
	}
	return buf
}

// Shape hashes the structure of a program's code: every instruction's
// opcode, registers, offset, symbol and reference, but not its immediate.
// Two candidates of one program with the same shape run the same code
// with different constants (keys compared, values materialized, guard
// versions, the contents of the maps the passes added).
func Shape(insns asm.Instructions) [32]byte {
	h := sha256.New()
	for _, ins := range insns {
		fmt.Fprintf(h, "%v %d %d %d %s %s\n", ins.OpCode, ins.Dst, ins.Src, ins.Offset, ins.Reference(), ins.Symbol())
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// AddedMaps returns the names of the maps the candidate's spec has but
// orig does not: the cache maps and the guard map the passes added.
func (c *Candidate) AddedMaps(orig *ebpf.CollectionSpec) []string {
	var out []string
	for name := range c.Spec.Maps {
		if _, ok := orig.Maps[name]; !ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Digest hashes what determines the behaviour of the candidate beyond the
// live maps: its instructions (with their map references) and the
// contents of the maps the passes added. Two candidates with the same
// digest are interchangeable, so a swap between them can be skipped.
func (c *Candidate) Digest(orig *ebpf.CollectionSpec) [32]byte {
	sum := sha256.New()
	// Buffered: a cache map's thousands of entries are two small writes
	// each (half the 5 ms the firewall's ACL candidate took).
	h := bufio.NewWriterSize(sum, 64<<10)
	for _, ins := range c.Spec.Programs[c.Program].Instructions {
		fmt.Fprintf(h, "%v|%s|%s\n", ins, ins.Reference(), ins.Symbol())
	}
	for _, name := range c.AddedMaps(orig) {
		if name == guard.MapName {
			continue // the live guard map is shared, not the candidate's
		}
		ms := c.Spec.Maps[name]
		fmt.Fprintf(h, "map %s %v %d %d %d %d\n", name, ms.Type, ms.KeySize, ms.ValueSize, ms.MaxEntries, ms.Flags)
		for _, kv := range ms.Contents {
			writeAny(h, kv.Key)
			writeAny(h, kv.Value)
		}
	}
	h.Flush() // cannot fail: a hash takes every write
	var out [32]byte
	copy(out[:], sum.Sum(nil))
	return out
}

// writeAny writes a map key or value unambiguously: byte slices (the
// passes' cache maps hold thousands) raw behind their length, without
// fmt, which cost the router's DIR tables 35 ms per digest; anything else
// formatted.
func writeAny(w io.Writer, v any) {
	switch v := v.(type) {
	case []byte:
		var n [9]byte
		n[0] = 'b'
		binary.LittleEndian.PutUint64(n[1:], uint64(len(v)))
		w.Write(n[:])
		w.Write(v)
	default:
		s := fmt.Sprintf("%v", v)
		var n [9]byte
		n[0] = 'v'
		binary.LittleEndian.PutUint64(n[1:], uint64(len(s)))
		w.Write(n[:])
		io.WriteString(w, s)
	}
}

// LiveProgram is a candidate loaded against the live maps of a running
// network function, ready to be swapped in.
type LiveProgram struct {
	// Program is the loaded candidate.
	Program *ebpf.Program
	// Added holds the maps created for the candidate (its cache maps),
	// by name. The guard map is the caller's and is not in Added.
	Added map[string]*ebpf.Map
}

// Close releases the program and the maps created for it. Closing does
// not detach a program that is attached: the attachment holds its own
// reference.
func (lp *LiveProgram) Close() error {
	var errs []error
	if lp.Program != nil {
		errs = append(errs, lp.Program.Close())
	}
	for _, m := range lp.Added {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

// LoadLive loads the candidate program alone against live maps: every map
// of orig must be in live (the running network function's maps), and so
// must the guard map if the candidate uses one (the caller's persistent
// guard map, so that versions survive from candidate to candidate). Only
// the cache maps the passes added are created, fresh, with their
// contents. Nothing of live is modified.
func LoadLive(c *Candidate, orig *ebpf.CollectionSpec, live map[string]*ebpf.Map) (*LiveProgram, error) {
	ps, ok := c.Spec.Programs[c.Program]
	if !ok {
		return nil, fmt.Errorf("optimize: candidate program %q not in its spec", c.Program)
	}
	spec := c.Spec.Copy()
	// Load only the candidate: other programs are neither needed nor
	// wanted (subprograms are part of the program's instruction stream).
	spec.Programs = map[string]*ebpf.ProgramSpec{c.Program: ps.Copy()}
	used := referencedMaps(ps.Instructions)
	repl := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		if m, ok := live[name]; ok {
			repl[name] = m
			// The loader would write Contents into replaced prog
			// arrays (populating them with fresh copies of their
			// programs): a live map is never written here.
			ms.Contents = nil
			continue
		}
		if _, orig := orig.Maps[name]; orig || name == guard.MapName {
			if _, needed := used[name]; needed {
				return nil, fmt.Errorf("optimize: live map %q missing", name)
			}
			delete(spec.Maps, name) // unreferenced: do not create it
		}
	}
	// verify.Load writes the added maps' contents in batches.
	coll, err := verify.Load(spec, nil, verify.LoadOptions{MapReplacements: repl})
	if err != nil {
		return nil, fmt.Errorf("optimize: load candidate %s against the live maps: %w", c.Program, err)
	}
	lp := &LiveProgram{Program: coll.Programs[c.Program], Added: map[string]*ebpf.Map{}}
	delete(coll.Programs, c.Program)
	for name, m := range coll.Maps {
		if _, isLive := repl[name]; isLive {
			m.Close() // the collection's clone of a live map
			continue
		}
		lp.Added[name] = m
	}
	coll.Maps = nil
	coll.Close()
	return lp, nil
}

func referencedMaps(insns asm.Instructions) map[string]struct{} {
	out := map[string]struct{}{}
	for _, ins := range insns {
		if ins.IsLoadFromMap() {
			if r := ins.Reference(); r != "" {
				out[r] = struct{}{}
			}
		}
	}
	return out
}
