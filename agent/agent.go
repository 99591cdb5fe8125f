package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/optimize"
)

// Errors returned by the agent.
var (
	// ErrStopped is returned by operations that need a running agent.
	ErrStopped = errors.New("agent: stopped")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("agent: closed")
)

// NF is a network function run by the agent: its collection loaded and
// attached, its maps reachable through guarded handles, and an optimizer
// that specializes its programs to the maps and the traffic. An NF is
// safe for concurrent use.
type NF struct {
	opts Options
	log  *slog.Logger
	// spec is the object with the initial variables applied: what the
	// optimizer specializes.
	spec *ebpf.CollectionSpec
	pins *pinLayout // nil without PinDir

	// ctx is cancelled by Stop so that a cycle in flight ends early.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed by Stop

	cycleMu sync.Mutex // one cycle at a time; Stop waits for it
	// baseline keeps the differential test's copies of the original
	// loaded between cycles (optimize.LiveOptions.Baseline).
	baseline *optimize.Baseline

	mu       sync.Mutex // guards everything below
	maps     map[string]*ebpf.Map
	guards   *ebpf.Map // the live guard map, shared by every candidate
	table    *guard.Table
	stateMap *ebpf.Map // pinned agent state, nil without PinDir
	progs    map[string]*progState
	order    []string
	gen      map[string]uint64 // per-map change count, for race checks
	stats    Stats
	cycleSeq uint64
	adopted  bool
	stopped  bool
	closed   bool
	runBusy  bool

	trigger chan string
	events  *eventLog
}

// progState is one managed (attached) program.
type progState struct {
	name     string
	typ      ebpf.ProgramType
	original *ebpf.Program
	origIns  int
	atts     []attacher
	enabled  bool
	running  *running // nil: the original runs
	swaps    uint64
	prof     *profiler // nil until the first profiling window
	// lastInput and lastFull are the inputs and time of the last full
	// optimization with a stable outcome (see cycleInput).
	lastInput [32]byte
	lastFull  time.Time
	outcome   Outcome
	reason    string
}

// running is an optimized program in service.
type running struct {
	prog   *ebpf.Program
	lp     *optimize.LiveProgram // nil for an adopted candidate
	digest [32]byte
	// shape is the candidate's code structure (optimize.Shape): a new
	// candidate of the same shape gets the reduced differential test.
	// Zero for an adopted candidate, whose next successor is tested in
	// full.
	shape   [32]byte
	insns   int
	since   time.Time
	guarded []string
	// unguarded lists maps whose contents the candidate depends on
	// without a runtime guard (guard elision): they are changed only
	// after the original has been swapped back in.
	unguarded []string
	// versions are the guard versions the candidate was built against.
	versions map[string]uint64
	// relies maps every map the candidate's fast path still trusts (its
	// guard not bumped yet, or unguarded) to the fingerprint of the
	// contents the candidate was specialized to.
	relies map[string]uint64
}

func (r *running) close() error {
	if r.lp != nil {
		return r.lp.Close()
	}
	return r.prog.Close()
}

// LoadFile is Load for the ELF object at path.
func LoadFile(ctx context.Context, path string, state *mapstate.State, atts []Attachment, opts Options) (*NF, error) {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return Load(ctx, spec, state, atts, opts)
}

// Load loads spec with the initial map contents and global variables of
// state, attaches its programs as atts say, and returns the running NF.
// The original programs run until the first cycle ([NF.Run] or
// [NF.Cycle]). spec is not modified.
//
// With Options.PinDir set and pins of a previous agent found there, Load
// adopts the network function instead of loading it again: maps keep
// their live contents (state's map entries are not re-applied), the
// attachments keep running, and an optimized program left running is kept
// only if every map it trusts still matches the fingerprint recorded for
// it; otherwise its guards are bumped or the original is restored.
//
// On error nothing stays loaded, attached or pinned by this call.
func Load(ctx context.Context, spec *ebpf.CollectionSpec, state *mapstate.State, atts []Attachment, opts Options) (*NF, error) {
	if spec == nil {
		return nil, errors.New("agent: nil collection spec")
	}
	opts = opts.withDefaults()
	if state == nil {
		state = mapstate.New()
	}
	if err := state.Check(spec); err != nil {
		return nil, fmt.Errorf("agent: initial state: %w", err)
	}
	atts, err := resolveAttachments(spec, atts)
	if err != nil {
		return nil, err
	}
	base := spec.Copy()
	if err := state.ApplySpec(base); err != nil {
		return nil, fmt.Errorf("agent: initial state: %w", err)
	}
	n := &NF{
		opts:    opts,
		log:     opts.Logger.With("nf", opts.Name),
		spec:    base,
		gen:     map[string]uint64{},
		progs:   map[string]*progState{},
		trigger: make(chan string, 1),
		done:    make(chan struct{}),
		events:  newEventLog(opts.EventBuffer),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if opts.PinDir != "" {
		n.pins = &pinLayout{dir: opts.PinDir}
	}
	if n.pins != nil && n.pins.exists() {
		err = n.adopt(ctx, atts)
	} else {
		err = n.fresh(ctx, state, atts)
	}
	if err != nil {
		n.cancel()
		return nil, err
	}
	return n, nil
}

// resolveAttachments validates atts against spec and fills defaults.
func resolveAttachments(spec *ebpf.CollectionSpec, atts []Attachment) ([]Attachment, error) {
	var xdp, tc []string
	for name, ps := range spec.Programs {
		switch ps.Type {
		case ebpf.XDP:
			xdp = append(xdp, name)
		case ebpf.SchedCLS, ebpf.SchedACT:
			tc = append(tc, name)
		}
	}
	sort.Strings(xdp)
	sort.Strings(tc)
	if len(xdp)+len(tc) == 0 {
		return nil, errors.New("agent: the object has no XDP or TC programs")
	}
	if len(atts) == 0 {
		return nil, errors.New("agent: no attachments given")
	}
	out := make([]Attachment, len(atts))
	seen := map[string]bool{}
	for i, a := range atts {
		if a.Program == "" {
			var cands []string
			switch a.Kind {
			case XDP:
				cands = xdp
			case TCIngress, TCEgress:
				cands = tc
			}
			if len(cands) != 1 {
				return nil, fmt.Errorf("agent: attachment %d (%s): name the program: the object has %d candidate programs %v", i, a.Kind, len(cands), cands)
			}
			a.Program = cands[0]
		}
		ps, ok := spec.Programs[a.Program]
		if !ok {
			return nil, fmt.Errorf("agent: attachment %d: no program %q in the object", i, a.Program)
		}
		switch a.Kind {
		case XDP:
			if ps.Type != ebpf.XDP {
				return nil, fmt.Errorf("agent: program %s is %v, not XDP", a.Program, ps.Type)
			}
		case TCIngress, TCEgress:
			if ps.Type != ebpf.SchedCLS && ps.Type != ebpf.SchedACT {
				return nil, fmt.Errorf("agent: program %s is %v, not a TC classifier", a.Program, ps.Type)
			}
			if a.Priority == 0 {
				a.Priority = 1
			}
			if a.Handle == 0 {
				a.Handle = 1
			}
		case TailCall:
			ms, ok := spec.Maps[a.ProgArray]
			if !ok || ms.Type != ebpf.ProgramArray {
				return nil, fmt.Errorf("agent: attachment %d: no program array %q in the object", i, a.ProgArray)
			}
			if a.Index >= ms.MaxEntries {
				return nil, fmt.Errorf("agent: attachment %d: index %d out of range of %s (%d slots)", i, a.Index, a.ProgArray, ms.MaxEntries)
			}
		default:
			return nil, fmt.Errorf("agent: attachment %d: unknown kind %v", i, a.Kind)
		}
		if a.Kind != TailCall && a.Interface == "" {
			return nil, fmt.Errorf("agent: attachment %d (%s): no interface given", i, a)
		}
		if seen[a.String()] {
			return nil, fmt.Errorf("agent: attachment %s given twice", a)
		}
		seen[a.String()] = true
		out[i] = a
	}
	return out, nil
}

// newAttacher builds the attacher of a, resolving its interface.
func (n *NF) newAttacher(a Attachment) (attacher, error) {
	switch a.Kind {
	case XDP:
		idx, err := interfaceIndex(a)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		x := &xdpAttacher{a: a, ifindex: idx}
		if n.pins != nil {
			x.pin = n.pins.link(a)
		}
		return x, nil
	case TCIngress, TCEgress:
		idx, err := interfaceIndex(a)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		return &tcAttacher{a: a, ifindex: idx}, nil
	case TailCall:
		return &tailCallAttacher{a: a, array: n.maps[a.ProgArray]}, nil
	}
	return nil, fmt.Errorf("agent: unknown attachment kind %v", a.Kind)
}

// fresh loads the collection, creates the guard map and attaches.
func (n *NF) fresh(ctx context.Context, state *mapstate.State, atts []Attachment) (err error) {
	coll, err := state.Load(n.spec.Copy(), ebpf.CollectionOptions{})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	var attached []attacher
	defer func() {
		if err == nil {
			return
		}
		for _, at := range attached {
			if derr := at.detach(); derr != nil {
				n.log.Warn("undo attach", "attachment", at.spec().String(), "err", derr)
			}
		}
		if n.pins != nil {
			n.pins.removeAll()
		}
		if n.guards != nil {
			n.guards.Close()
		}
		if n.stateMap != nil {
			n.stateMap.Close()
		}
		coll.Close()
	}()
	n.maps = coll.Maps
	if n.guards, err = ebpf.NewMap(guard.Spec()); err != nil {
		return fmt.Errorf("agent: create guard map: %w", err)
	}
	n.table = guard.NewTable()
	if n.pins != nil {
		if n.stateMap, err = n.pins.create(coll, n.guards); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	if err := n.addPrograms(coll.Programs, atts); err != nil {
		return err
	}
	if n.pins != nil {
		for _, name := range n.order {
			if err := n.progs[name].original.Pin(n.pins.progPath(name)); err != nil {
				return fmt.Errorf("agent: pin program %s: %w", name, err)
			}
		}
	}
	for _, name := range n.order {
		ps := n.progs[name]
		for _, at := range ps.atts {
			if err := at.attach(ps.original); err != nil {
				return fmt.Errorf("agent: %s: %w", at.spec(), err)
			}
			attached = append(attached, at)
		}
	}
	// The NF owns the programs it manages; the others close with coll's
	// leftovers.
	for name, p := range coll.Programs {
		if _, managed := n.progs[name]; !managed {
			p.Close()
		}
	}
	if err := n.persistLocked(); err != nil {
		return err
	}
	n.log.Info("loaded", "programs", n.order, "pinned", n.pins != nil)
	return nil
}

// addPrograms creates the program states and attachers for atts.
func (n *NF) addPrograms(progs map[string]*ebpf.Program, atts []Attachment) error {
	for _, a := range atts {
		ps := n.progs[a.Program]
		if ps == nil {
			p := progs[a.Program]
			if p == nil {
				return fmt.Errorf("agent: program %s was not loaded", a.Program)
			}
			ps = &progState{
				name:     a.Program,
				typ:      p.Type(),
				original: p,
				origIns:  len(n.spec.Programs[a.Program].Instructions),
				enabled:  !slices.Contains(n.opts.Disabled, a.Program),
			}
			n.progs[a.Program] = ps
			n.order = append(n.order, a.Program)
		}
		at, err := n.newAttacher(a)
		if err != nil {
			return err
		}
		ps.atts = append(ps.atts, at)
	}
	sort.Strings(n.order)
	return nil
}

// Name returns the network function's name (Options.Name).
func (n *NF) Name() string { return n.opts.Name }

// Adopted reports whether Load adopted a pinned network function.
func (n *NF) Adopted() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.adopted
}

// ProgramStatus is the state of one attached program.
type ProgramStatus struct {
	Name        string       `json:"name"`
	Type        string       `json:"type"`
	Attachments []Attachment `json:"attachments"`
	// Enabled says whether the optimizer works on the program.
	Enabled bool `json:"enabled"`
	// Optimized says whether an optimized program runs.
	Optimized bool `json:"optimized"`
	// OriginalID is the kernel ID of the original program; RunningID the
	// ID of the program on the first attachment, as the kernel reports.
	OriginalID ebpf.ProgramID `json:"original_id"`
	RunningID  ebpf.ProgramID `json:"running_id"`
	// InstructionsOriginal and InstructionsRunning count instructions of
	// the original and of the running program.
	InstructionsOriginal int `json:"instructions_original"`
	InstructionsRunning  int `json:"instructions_running"`
	// Guarded lists the maps the running program guards; Tripped the
	// ones among them whose guard was bumped since (their fast path is
	// off until the next swap); Unguarded the maps it depends on without
	// a guard (guard elision).
	Guarded   []string  `json:"guarded,omitempty"`
	Tripped   []string  `json:"tripped,omitempty"`
	Unguarded []string  `json:"unguarded,omitempty"`
	SwappedAt time.Time `json:"swapped_at,omitzero"`
	Swaps     uint64    `json:"swaps"`
	// Profiling is set while the instrumented variant runs.
	Profiling bool `json:"profiling"`
	// LastOutcome and LastReason are the program's result in the last
	// cycle.
	LastOutcome Outcome `json:"last_outcome,omitempty"`
	LastReason  string  `json:"last_reason,omitempty"`
	// Error is set when the kernel could not be asked for RunningID.
	Error string `json:"error,omitempty"`
}

// Programs returns the status of every attached program, by name.
func (n *NF) Programs() []ProgramStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]ProgramStatus, 0, len(n.order))
	for _, name := range n.order {
		out = append(out, n.statusLocked(n.progs[name]))
	}
	return out
}

// Program returns the status of the named program.
func (n *NF) Program(name string) (ProgramStatus, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps, ok := n.progs[name]
	if !ok {
		return ProgramStatus{}, fmt.Errorf("agent: no attached program %q", name)
	}
	return n.statusLocked(ps), nil
}

func (n *NF) statusLocked(ps *progState) ProgramStatus {
	st := ProgramStatus{
		Name:                 ps.name,
		Type:                 ps.typ.String(),
		Enabled:              ps.enabled,
		InstructionsOriginal: ps.origIns,
		InstructionsRunning:  ps.origIns,
		Swaps:                ps.swaps,
		Profiling:            ps.prof != nil && ps.prof.active,
		LastOutcome:          ps.outcome,
		LastReason:           ps.reason,
	}
	for _, at := range ps.atts {
		st.Attachments = append(st.Attachments, at.spec())
	}
	if info, err := ps.original.Info(); err == nil {
		st.OriginalID, _ = info.ID()
	}
	if r := ps.running; r != nil {
		st.Optimized = true
		st.InstructionsRunning = r.insns
		st.Guarded = slices.Clone(r.guarded)
		st.Unguarded = slices.Clone(r.unguarded)
		st.SwappedAt = r.since
		for _, g := range r.guarded {
			if _, ok := r.relies[g]; !ok {
				st.Tripped = append(st.Tripped, g)
			}
		}
	}
	if len(ps.atts) > 0 && !n.closed {
		id, err := ps.atts[0].current()
		if err != nil {
			st.Error = err.Error()
		}
		st.RunningID = id
	}
	return st
}

// Stats returns the agent's counters.
func (n *NF) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stats
	s.DroppedEvents = n.events.droppedCount()
	return s
}

// Events returns the recent events with a sequence number above since
// (0 for all that are kept), oldest first.
func (n *NF) Events(since uint64) []Event { return n.events.since(since) }

// Subscribe delivers every future event on the returned channel, which
// holds up to buf undelivered events; events that do not fit are dropped
// and counted in Stats.DroppedEvents. Call cancel to unsubscribe; the
// channel is closed then, or when the agent stops.
func (n *NF) Subscribe(buf int) (events <-chan Event, cancel func()) {
	return n.events.subscribe(buf)
}

func (n *NF) emit(e Event) {
	n.events.add(e)
}

// SetEnabled turns the optimizer on or off for one program. Disabling
// swaps the original back in at once; enabling starts a cycle.
func (n *NF) SetEnabled(program string, on bool) error {
	n.mu.Lock()
	ps, ok := n.progs[program]
	if !ok {
		n.mu.Unlock()
		return fmt.Errorf("agent: no attached program %q", program)
	}
	if n.stopped {
		n.mu.Unlock()
		return ErrStopped
	}
	ps.enabled = on
	var err error
	if !on {
		err = n.restoreLocked(ps, "optimizer disabled")
	}
	if perr := n.persistLocked(); perr != nil {
		err = errors.Join(err, perr)
	}
	n.mu.Unlock()
	if on {
		n.kick("enable")
	}
	return err
}

// kick queues a cycle for Run; several kicks before it runs coalesce.
func (n *NF) kick(reason string) {
	select {
	case n.trigger <- reason:
	default:
	}
}

// swapLocked puts p on every attachment of ps. If one fails, those
// already swapped go back to the program that ran before.
func (n *NF) swapLocked(ps *progState, p *ebpf.Program) error {
	prev := ps.original
	if ps.running != nil {
		prev = ps.running.prog
	}
	for i, at := range ps.atts {
		if err := at.swap(p); err != nil {
			for _, back := range ps.atts[:i] {
				if berr := back.swap(prev); berr != nil {
					n.log.Error("roll back swap", "attachment", back.spec().String(), "err", berr)
				}
			}
			return err
		}
	}
	return nil
}

// restoreLocked swaps the original program of ps back in and releases
// the optimized one.
func (n *NF) restoreLocked(ps *progState, why string) error {
	if ps.running == nil {
		return nil
	}
	if err := n.swapLocked(ps, ps.original); err != nil {
		n.stats.Errors++
		n.emit(Event{Kind: EventError, Program: ps.name, Message: "restore original: " + err.Error()})
		return fmt.Errorf("agent: restore original %s: %w", ps.name, err)
	}
	if err := ps.running.close(); err != nil {
		n.log.Warn("close optimized program", "program", ps.name, "err", err)
	}
	ps.running = nil
	n.stats.Deoptimizations++
	n.log.Info("original restored", "program", ps.name, "why", why)
	n.emit(Event{Kind: EventRestore, Program: ps.name, Message: why})
	return nil
}

// Stop ends the agent: the original program goes back on every
// attachment, and the optimized programs, their cache maps, the guard map
// and the agent's pinned state are released and unpinned. The network
// function stays attached and running: pinned links stay pinned (and
// survive the process); unpinned XDP links stay attached as long as the
// NF value is not closed. Map handles keep working afterwards (changes
// go straight to the maps). Stop is idempotent; Close detaches.
func (n *NF) Stop() error {
	n.cancel()
	n.cycleMu.Lock()
	defer n.cycleMu.Unlock()
	if n.baseline != nil {
		// No cycle runs from now on: release the test copies.
		n.baseline.Close()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopLocked()
}

func (n *NF) stopLocked() error {
	if n.stopped {
		return nil
	}
	n.stopped = true
	close(n.done)
	var errs []error
	restored := true
	for _, name := range n.order {
		if err := n.restoreLocked(n.progs[name], "agent stopped"); err != nil {
			errs = append(errs, err)
			restored = false
		}
	}
	if c, ok := n.opts.Profiler.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	if n.pins != nil {
		errs = append(errs, n.pins.removeAgent())
	}
	if n.stateMap != nil {
		errs = append(errs, n.stateMap.Close())
		n.stateMap = nil
	}
	if restored {
		// Only drop the guard map when every original is back: a
		// candidate still running reads it (its program holds a
		// reference, so closing our fd is safe either way, but a kept
		// fd makes the leak visible).
		errs = append(errs, n.guards.Close())
	}
	n.emit(Event{Kind: EventStop})
	n.events.closeAll()
	err := errors.Join(errs...)
	n.log.Info("stopped", "err", err)
	return err
}

// Close stops the agent and tears the network function down: every
// attachment is detached, every pin under PinDir removed and every map
// and program closed.
func (n *NF) Close() error {
	err := n.Stop()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return err
	}
	n.closed = true
	errs := []error{err}
	for _, name := range n.order {
		ps := n.progs[name]
		for _, at := range ps.atts {
			errs = append(errs, at.detach())
		}
		errs = append(errs, ps.original.Close())
	}
	for _, m := range n.maps {
		errs = append(errs, m.Close())
	}
	if n.pins != nil {
		errs = append(errs, n.pins.removeAll())
	}
	return errors.Join(errs...)
}
