//go:build linux

// Package demo is Morpheus's live demonstration on one machine, as a
// library: a network function at a realistic size runs under the agent
// on a veth pair between two fresh network namespaces (the testbed
// package's, with the agent owning the NF's XDP link), the testbed's
// live-frames generator replays a high-locality trace into it, and the
// demo walks through four phases while it samples throughput and
// per-packet cost from bpf_stats:
//
//  1. baseline: the original program, optimizer off;
//  2. optimize: the optimizer on (adaptive profiling, optimization
//     cycles); throughput climbs as verified candidates are swapped in;
//  3. change: a control-plane change to the NF's main table through the
//     agent's guarded map API. The guard is bumped before the write, a
//     BPF_PROG_TEST_RUN of the optimized program right after the write
//     proves that it uses the new entry at once, and the agent
//     re-optimizes;
//  4. shift: the traffic's hot set moves (a trace drawn with another
//     seed) and the agent re-profiles and re-optimizes.
//
// Run returns a Report with a per-phase summary and the event list and
// writes plots and an HTML page. Everything the demo creates (namespaces,
// veth pair, programs, maps, links) is removed when it returns, also when
// its context is cancelled.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"

	"github.com/morpheus-go/morpheus/agent"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/testbed"
	"github.com/morpheus-go/morpheus/traffic"
)

// Defaults of Options.
const (
	DefaultNF       = "router"
	DefaultDuration = 60 * time.Second
	DefaultFlows    = 1000
	DefaultPackets  = 1 << 16
	// MinDuration is the shortest total duration: below it the phases
	// are too short for a profiling window and a cycle.
	MinDuration = 4 * time.Second
)

// Phase names, in order.
const (
	PhaseBaseline = "baseline"
	PhaseOptimize = "optimize"
	PhaseChange   = "change"
	PhaseShift    = "shift"
)

// phasePlan is a phase's share of the total duration and what it says.
var phasePlan = []struct {
	name, title string
	share       float64
}{
	{PhaseBaseline, "baseline, optimizer off", 0.2},
	{PhaseOptimize, "optimizer on: profiling and cycles", 0.3},
	{PhaseChange, "control-plane change through the guarded map API", 0.25},
	{PhaseShift, "traffic shift: new hot set", 0.25},
}

// Options configures a demo run.
type Options struct {
	// NF is the network function, one of NFs. Default DefaultNF.
	NF string
	// Duration is the total time of the four phases (each takes its
	// share). A phase that waits for an optimization may run over its
	// share, up to three times it or 20 s. Default DefaultDuration.
	Duration time.Duration
	// OutDir is where the plots and the page are written; it is created
	// if needed. Empty means a new temporary directory.
	OutDir string
	// Locality is the trace's flow popularity. Default LocalityHigh.
	Locality traffic.Locality
	// Flows is the number of hit and of miss flows. Default DefaultFlows.
	Flows int
	// Packets is the length of each trace. Default DefaultPackets.
	Packets int
	// Seed makes the configuration and the traces reproducible.
	Seed uint64
	// Out receives the live output (a line per second and the events);
	// nil discards it.
	Out io.Writer
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.NF == "" {
		o.NF = DefaultNF
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Duration < MinDuration {
		return o, fmt.Errorf("duration %v is too short: the demo needs at least %v", o.Duration, MinDuration)
	}
	if o.Locality == "" {
		o.Locality = traffic.LocalityHigh
	}
	if _, err := o.Locality.Skew(); err != nil {
		return o, err
	}
	if o.Flows <= 0 {
		o.Flows = DefaultFlows
	}
	if o.Packets <= 0 {
		o.Packets = DefaultPackets
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Report is what a demo run did and measured.
type Report struct {
	NF       string `json:"nf"`
	Program  string `json:"program"`
	Locality string `json:"locality"`
	// Config summarizes the configuration's size.
	Config string `json:"config"`
	// Interface is the NF's veth end.
	Interface string    `json:"interface"`
	OutDir    string    `json:"out_dir"`
	Start     time.Time `json:"start"`
	// Phases holds the phases that ran, in order.
	Phases  []Phase  `json:"phases"`
	Events  []Event  `json:"events"`
	Samples []Sample `json:"samples"`
	// Change is phase 3's control-plane change.
	Change *Change `json:"change,omitempty"`
	// Hot is the profiler's hot set before and after the traffic shift.
	Hot []HotSet `json:"hot,omitempty"`
	// Stats are the agent's counters at the end.
	Stats agent.Stats `json:"stats"`
	// OriginalID is the entry program's original kernel ID; Versions
	// the optimized programs swapped in (any program of the NF), in
	// order.
	OriginalID ebpf.ProgramID   `json:"original_id"`
	Versions   []ebpf.ProgramID `json:"versions"`
	// Files are the plots and the page written to OutDir.
	Files []string `json:"files"`
	// Created lists what the demo created in the kernel, all of it
	// removed when Run returns: the network namespaces (by inode), the
	// veth ends and every program seen on the attachment.
	Created Created `json:"created"`
}

// Created is what a demo run created.
type Created struct {
	Namespaces []uint64         `json:"namespaces"`
	Interfaces []string         `json:"interfaces"`
	Programs   []ebpf.ProgramID `json:"programs"`
}

// Phase is one phase's summary.
type Phase struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	// Start and End are offsets from the demo's start.
	Start time.Duration `json:"start_ns"`
	End   time.Duration `json:"end_ns"`
	// PPS and NsPerPacket are the phase's mean throughput and cost.
	PPS         float64 `json:"pps"`
	NsPerPacket float64 `json:"ns_per_packet"`
	// Speedup is PPS over the baseline's; NsSpeedup is the baseline's
	// ns/packet over this phase's.
	Speedup   float64 `json:"speedup"`
	NsSpeedup float64 `json:"ns_speedup"`
	// SteadyNsPerPacket is the ns/packet of the program that ran last in
	// the phase, over the intervals it ran alone (no swap, no profiling
	// window): the cost of that program itself. SteadySpeedup compares
	// it with the baseline's.
	SteadyNsPerPacket float64 `json:"steady_ns_per_packet"`
	SteadySpeedup     float64 `json:"steady_speedup"`
	// Swaps counts the optimized versions swapped in during the phase.
	Swaps int `json:"swaps"`
	// Programs lists the program IDs that ran on the attachment.
	Programs []ebpf.ProgramID `json:"programs"`
	// Optimized says whether an optimized version ran during the phase.
	Optimized bool `json:"optimized"`
}

// Event is an agent event as the demo saw it.
type Event struct {
	Elapsed time.Duration `json:"elapsed_ns"`
	Phase   string        `json:"phase"`
	Kind    string        `json:"kind"`
	Program string        `json:"program,omitempty"`
	Map     string        `json:"map,omitempty"`
	Message string        `json:"message"`
	// ProgramID and Version identify the program swapped in.
	ProgramID ebpf.ProgramID `json:"program_id,omitempty"`
	Version   string         `json:"version,omitempty"`
}

// Change is the control-plane change of phase 3 and its proof.
type Change struct {
	Description string `json:"description"`
	// Flow is the hot flow whose table entry changed.
	Flow string `json:"flow"`
	// Writes counts the entries written or deleted through the agent.
	Writes int `json:"writes"`
	// ProgramID is the optimized program that ran when the change was
	// made and that the test runs ran.
	ProgramID ebpf.ProgramID `json:"program_id"`
	// GuardBumps are the guard-bump events of the change.
	GuardBumps []string `json:"guard_bumps"`
	// Tripped lists the running program's tripped guards right after
	// the change.
	Tripped []string `json:"tripped"`
	// Before and After are the optimized program's test runs on the hot
	// flow's frame before and right after the change; Original is the
	// original program's run after the change (the new table, no
	// specialization).
	Before, After, Original TestResult `json:"-"`
	// UsedAtOnce says the run right after the change already behaves
	// like the original on the new table, and differently from before.
	UsedAtOnce bool `json:"used_at_once"`
	// Reoptimized is the time from the change to the end of the first
	// cycle that re-optimized on the new table, 0 if none ended during
	// the phase; ReoptimizeOutcome is that cycle's outcome (swapped, or
	// unchanged when the running candidate still fits).
	Reoptimized       time.Duration `json:"reoptimized_ns"`
	ReoptimizeOutcome string        `json:"reoptimize_outcome,omitempty"`
	// Unguarded lists written maps without a guard: no optimized code
	// depends on them, so there was nothing to bump.
	Unguarded []string `json:"unguarded,omitempty"`
}

// TestResult is the result of one BPF_PROG_TEST_RUN.
type TestResult struct {
	Verdict uint32
	Frame   []byte
}

// String formats the verdict and the frame's Ethernet addresses.
func (t TestResult) String() string {
	s := verdictName(t.Verdict)
	if len(t.Frame) >= 12 {
		s += fmt.Sprintf(" dst %x src %x", t.Frame[0:6], t.Frame[6:12])
	}
	return s
}

func (t TestResult) equal(o TestResult) bool {
	return t.Verdict == o.Verdict && string(t.Frame) == string(o.Frame)
}

func verdictName(v uint32) string {
	names := []string{"XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT"}
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("verdict %d", v)
}

// HotSet is the profiler's hottest keys of the NF's tables at one time.
type HotSet struct {
	Label string   `json:"label"`
	Keys  []HotKey `json:"keys"`
}

// HotKey is one hot key with its estimated share of the lookups.
type HotKey struct {
	Key   string  `json:"key"`
	Count uint64  `json:"count"`
	Share float64 `json:"share"`
}

// Check reports why the demo cannot run here: not root, or BPF programs
// cannot be loaded.
func Check() error { return check(os.Geteuid(), loadTrivial) }

// check is Check with the effective user ID and the probe given.
func check(euid int, probe func() error) error {
	if euid != 0 {
		return errors.New("the demo needs root: it creates network namespaces and loads XDP programs (run it with sudo)")
	}
	if err := probe(); err != nil {
		return fmt.Errorf("BPF unavailable: loading a trivial XDP program failed: %w", err)
	}
	return nil
}

// loadTrivial loads and releases an XDP program that returns XDP_PASS.
func loadTrivial() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		return err
	}
	return prog.Close()
}

// demo is one run in progress.
type demo struct {
	opts  Options
	kind  nfKind
	start time.Time
	rep   *Report
	tb    *testbed.Testbed
	nf    *agent.NF
	stats *testbed.Totals
	cfg   any

	// phaseStart is when the current phase began (set by begin).
	phaseStart time.Duration

	mu       sync.Mutex
	phase    string
	versions map[ebpf.ProgramID]string
	nextVer  int
	// swapTimes are the times of the swaps of every program, cycles the
	// completed cycles of the entry program.
	swapTimes []time.Time
	cycles    []cycleRec
}

// Run runs the demo and returns its report. On error, the report holds
// what ran so far. Everything created is removed before Run returns.
func Run(ctx context.Context, opts Options) (rep *Report, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	kind, err := kindOf(opts.NF)
	if err != nil {
		return nil, err
	}
	if err := Check(); err != nil {
		return nil, err
	}
	d := &demo{
		opts:     opts,
		kind:     kind,
		stats:    testbed.NewTotals(),
		versions: map[ebpf.ProgramID]string{},
		rep:      &Report{NF: opts.NF, Program: kind.Program, Locality: string(opts.Locality)},
	}
	defer func() { err = errors.Join(err, d.stats.Close()) }()
	if d.rep.OutDir, err = outDir(opts.OutDir); err != nil {
		return nil, err
	}
	if err := d.run(ctx); err != nil {
		return d.rep, err
	}
	files, err := writeOutputs(d.rep)
	d.rep.Files = files
	return d.rep, err
}

func outDir(dir string) (string, error) {
	if dir == "" {
		return os.MkdirTemp("", "morpheus-demo-")
	}
	return dir, os.MkdirAll(dir, 0o755)
}

// run sets everything up, runs the phases and tears down in reverse.
func (d *demo) run(ctx context.Context) (err error) {
	o := d.opts
	if d.tb, err = newTestbed(ctx, o.Duration*4+time.Minute); err != nil {
		return err
	}
	genNS, nfNS := d.tb.NamespaceInodes()
	d.rep.Created.Namespaces = []uint64{genNS, nfNS}
	d.rep.Created.Interfaces = []string{d.tb.GenLinkName(), d.tb.NFLinkName()}
	d.rep.Interface = d.tb.NFLinkName()
	defer func() { err = errors.Join(err, d.tb.Close()) }()

	ingress := uint32(d.tb.NFIfindex())
	// Ifindexes the NF may route or switch to besides its ingress: they
	// do not exist in the namespace, so such frames are dropped at the
	// redirect, which costs the NF nothing.
	others := []uint32{}
	for i := uint32(200); len(others) < 4; i++ {
		if i != ingress {
			others = append(others, i)
		}
	}
	if d.cfg, err = d.kind.Config(ingress, others, o.Seed); err != nil {
		return fmt.Errorf("%s configuration: %w", o.NF, err)
	}
	state, err := d.kind.State(d.cfg)
	if err != nil {
		return err
	}
	d.rep.Config = describeState(state)
	set, err := d.kind.Flows(d.cfg, ingress, o.Flows, o.Seed+1)
	if err != nil {
		return fmt.Errorf("%s flows: %w", o.NF, err)
	}
	trace, err := traffic.Generate(set, traffic.Options{Packets: o.Packets, Locality: o.Locality, Seed: o.Seed + 2})
	if err != nil {
		return err
	}
	spec, err := d.kind.Spec()
	if err != nil {
		return err
	}
	atts := []agent.Attachment{{Program: d.kind.Program, Kind: agent.XDP, Interface: d.tb.NFLinkName(), Netns: d.tb.NFNetnsPath(), XDPMode: agent.XDPNative}}
	disabled := []string{d.kind.Program}
	for _, name := range slices.Sorted(maps.Keys(spec.Maps)) {
		if ms := spec.Maps[name]; ms.Type == ebpf.ProgramArray {
			for _, kv := range ms.Contents {
				prog, ok := kv.Value.(string)
				idx, ok2 := kv.Key.(uint32)
				if ok && ok2 {
					atts = append(atts, agent.Attachment{Program: prog, Kind: agent.TailCall, ProgArray: name, Index: idx})
					disabled = append(disabled, prog)
				}
			}
		}
	}
	window := min(max(o.Duration/40, 200*time.Millisecond), agent.DefaultProfileWindow)
	period := min(max(o.Duration/30, time.Second), agent.DefaultPeriod)
	d.nf, err = agent.Load(ctx, spec, state, atts, agent.Options{
		Name:     "demo-" + o.NF,
		Period:   period,
		Profile:  &agent.ProfileOptions{Window: window},
		Disabled: disabled,
		Logger:   o.Logger,
		Seed:     int64(o.Seed),
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer func() { err = errors.Join(err, d.nf.Close()) }()
	ps, err := d.nf.Program(d.kind.Program)
	if err != nil {
		return err
	}
	d.rep.OriginalID = ps.OriginalID
	d.versions[ps.OriginalID] = "original"

	fmt.Fprintf(o.Out, "morpheus demo: %s (%s) on %s, %s locality trace of %d packets over %d flows\n",
		o.NF, d.rep.Config, d.tb.NFLinkName(), o.Locality, len(trace.Frames), len(trace.Flows))
	fmt.Fprintf(o.Out, "%8s  %-9s %12s %10s  %s\n", "time", "phase", "pps", "ns/pkt", "program")

	d.start = time.Now()
	d.rep.Start = d.start
	d.setPhase(PhaseBaseline)
	if err := d.tb.LoadTrace(trace.Frames); err != nil {
		return fmt.Errorf("traffic generator: %w", err)
	}
	if err := d.tb.Start(ctx, 0); err != nil {
		return fmt.Errorf("traffic generator: %w", err)
	}
	defer func() {
		_, serr := d.tb.Stop()
		err = errors.Join(err, serr)
	}()

	// The agent's loop, the event log and the sampler run until the
	// phases end; each is stopped and waited for before teardown.
	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopBG()
		wg.Wait()
		d.rep.Stats = d.nf.Stats()
		d.rep.Created.Programs = d.stats.IDs()
		slices.Sort(d.rep.Created.Programs)
	}()
	events, unsubscribe := d.nf.Subscribe(1024)
	defer unsubscribe()
	wg.Go(func() {
		if err := d.nf.Run(bg); err != nil && !errors.Is(err, agent.ErrStopped) {
			o.Logger.Error("agent", "err", err)
		}
	})
	wg.Go(func() { d.logEvents(bg, events) })
	wg.Go(func() { d.sample(bg) })

	return d.phases(ctx, trace, set)
}

// newTestbed creates the demo's testbed: the NF end is attached by the
// agent, which owns the XDP link and swaps programs on it, and the
// generator stops by itself after maxDuration. Its interfaces are named
// "mdgen..." and "mdnf..." so that leak checks can tell them from other
// testbeds' ("mgen...").
func newTestbed(ctx context.Context, maxDuration time.Duration) (*testbed.Testbed, error) {
	return testbed.New(ctx, testbed.Options{ExternalNF: true, LinkPrefix: "md", MaxDuration: maxDuration})
}

// describeState summarizes the configuration's table sizes, e.g.
// "routes 2593, nexthops 16".
func describeState(st *mapstate.State) string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(st.Maps)) {
		if n := len(st.Maps[name].Entries); n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	return strings.Join(parts, ", ")
}

// elapsed is the time since the demo started.
func (d *demo) elapsed() time.Duration { return time.Since(d.start) }

func (d *demo) setPhase(name string) {
	d.mu.Lock()
	d.phase = name
	d.mu.Unlock()
}

func (d *demo) currentPhase() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.phase
}

// versionOf labels a program ID: "original", "profiling" for an
// instrumented variant, else "vN" in order of first sight.
func (d *demo) versionOf(id ebpf.ProgramID, profiling bool) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.versions[id]; ok {
		return v
	}
	if profiling || id == 0 {
		return "profiling"
	}
	d.nextVer++
	v := fmt.Sprintf("v%d", d.nextVer)
	d.versions[id] = v
	d.rep.Versions = append(d.rep.Versions, id)
	return v
}

// running returns the entry program's running ID and whether it is the
// instrumented variant.
func (d *demo) running() (ebpf.ProgramID, bool) {
	ps, err := d.nf.Program(d.kind.Program)
	if err != nil {
		return 0, false
	}
	return ps.RunningID, ps.Profiling
}

// sampleInterval is the sampler's period: short enough to see every
// profiling window's variant, whose packets would otherwise be missed.
const sampleInterval = 100 * time.Millisecond

// sample reads bpf_stats every sampleInterval and prints a line a second.
func (d *demo) sample(ctx context.Context) {
	tick := time.NewTicker(sampleInterval)
	defer tick.Stop()
	var lastPrint *Sample
	for {
		id, profiling := d.running()
		ver := d.versionOf(id, profiling)
		pkts, rt := d.stats.Read(id)
		s := Sample{At: time.Now(), Elapsed: d.elapsed(), Phase: d.currentPhase(), ProgramID: id, Version: ver, Packets: pkts, RunTime: rt}
		d.mu.Lock()
		d.rep.Samples = append(d.rep.Samples, s)
		d.mu.Unlock()
		if lastPrint == nil {
			lastPrint = &s
		} else if s.At.Sub(lastPrint.At) >= time.Second-sampleInterval/2 {
			r := rateBetween(*lastPrint, s)
			fmt.Fprintf(d.opts.Out, "%7.1fs  %-9s %12s %10.1f  %d %s\n", s.Elapsed.Seconds(), s.Phase, formatPPS(r.PPS), r.NsPerPacket, id, ver)
			lastPrint = &s
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func formatPPS(pps float64) string {
	switch {
	case pps >= 1e6:
		return fmt.Sprintf("%.2f Mpps", pps/1e6)
	case pps >= 1e3:
		return fmt.Sprintf("%.1f kpps", pps/1e3)
	}
	return fmt.Sprintf("%.0f pps", pps)
}

// logEvents records and prints the agent's events.
func (d *demo) logEvents(ctx context.Context, events <-chan agent.Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			d.record(ev)
		}
	}
}

func (d *demo) record(ev agent.Event) {
	e := Event{Elapsed: d.elapsed(), Phase: d.currentPhase(), Kind: string(ev.Kind), Program: ev.Program, Map: ev.Map, Message: ev.Message}
	var line string
	switch ev.Kind {
	case agent.EventSwap:
		if ps, err := d.nf.Program(ev.Program); err == nil {
			// The kernel reports the program on the first attachment:
			// for a tail-call target, its prog-array slot.
			e.ProgramID = ps.RunningID
			e.Version = d.versionOf(ps.RunningID, false)
		}
		d.mu.Lock()
		d.swapTimes = append(d.swapTimes, ev.Time)
		d.mu.Unlock()
		line = fmt.Sprintf(">> swap    %s: %s (program %d %s)", ev.Program, ev.Message, e.ProgramID, e.Version)
	case agent.EventRestore:
		line = fmt.Sprintf(">> restore %s: %s", ev.Program, ev.Message)
	case agent.EventGuardBump:
		line = fmt.Sprintf(">> guard   %s bumped to %s", ev.Map, ev.Message)
	case agent.EventFingerprint:
		line = fmt.Sprintf(">> foreign write to %s: %s", ev.Map, ev.Message)
	case agent.EventError:
		line = fmt.Sprintf(">> error   %s: %s", ev.Program, ev.Message)
	case agent.EventCycle:
		if ev.Cycle == nil {
			return
		}
		var parts []string
		for _, pc := range ev.Cycle.Programs {
			p := fmt.Sprintf("%s %s", pc.Program, pc.Outcome)
			if pc.Outcome == agent.OutcomeSwapped || pc.Outcome == agent.OutcomeUnchanged {
				p += fmt.Sprintf(" (%d -> %d insns, %d rewrites)", pc.InstructionsBefore, pc.InstructionsAfter, pc.Applied)
			} else if pc.Reason != "" {
				p += ": " + firstLine(pc.Reason)
			}
			parts = append(parts, p)
		}
		if len(parts) == 0 {
			return // every program disabled: nothing happened
		}
		for _, pc := range ev.Cycle.Programs {
			if pc.Program == d.kind.Program {
				d.mu.Lock()
				d.cycles = append(d.cycles, cycleRec{start: ev.Cycle.Start, end: ev.Time, outcome: pc.Outcome})
				d.mu.Unlock()
			}
		}
		e.Message = fmt.Sprintf("cycle %d (%s) in %v: %s", ev.Cycle.Seq, ev.Cycle.Trigger, ev.Cycle.Duration.Round(time.Millisecond), strings.Join(parts, "; "))
		line = ".. " + e.Message
	default:
		line = fmt.Sprintf(">> %s %s", ev.Kind, ev.Message)
	}
	d.mu.Lock()
	d.rep.Events = append(d.rep.Events, e)
	d.mu.Unlock()
	fmt.Fprintf(d.opts.Out, "%7.1fs  %s\n", e.Elapsed.Seconds(), line)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
