package agent

import (
	"sync"
	"time"

	"github.com/morpheus-go/morpheus/passes"
)

// EventKind classifies an [Event].
type EventKind string

// The event kinds.
const (
	// EventCycle ends an optimization cycle; Event.Cycle holds its stats.
	EventCycle EventKind = "cycle"
	// EventSwap: an optimized program replaced the running one.
	EventSwap EventKind = "swap"
	// EventRestore: the original program was swapped back in
	// (de-optimization, disable or stop).
	EventRestore EventKind = "restore"
	// EventGuardBump: a map's guard was bumped before a change.
	EventGuardBump EventKind = "guard-bump"
	// EventFingerprint: a guarded map changed without going through the
	// agent; its guard was bumped (or the original restored).
	EventFingerprint EventKind = "fingerprint-mismatch"
	// EventAdopt: the agent adopted a network function left pinned by a
	// previous agent.
	EventAdopt EventKind = "adopt"
	// EventError: something failed; the running program was kept.
	EventError EventKind = "error"
	// EventStop: the agent stopped.
	EventStop EventKind = "stop"
)

// Event is one thing the agent did, for logs, status pages and tests.
type Event struct {
	Seq     uint64      `json:"seq"`
	Time    time.Time   `json:"time"`
	Kind    EventKind   `json:"kind"`
	Program string      `json:"program,omitempty"`
	Map     string      `json:"map,omitempty"`
	Message string      `json:"message,omitempty"`
	Cycle   *CycleStats `json:"cycle,omitempty"`
}

// Outcome is what a cycle did with one program.
type Outcome string

// The outcomes.
const (
	// OutcomeSwapped: a new candidate replaced the running program.
	OutcomeSwapped Outcome = "swapped"
	// OutcomeUnchanged: the candidate equals the running one; no swap.
	OutcomeUnchanged Outcome = "unchanged"
	// OutcomeNoChange: no pass applied; the original runs.
	OutcomeNoChange Outcome = "no-change"
	// OutcomeVerifierRejected: the kernel verifier refused the candidate.
	OutcomeVerifierRejected Outcome = "verifier-rejected"
	// OutcomeDifferentialFailed: the candidate behaved differently.
	OutcomeDifferentialFailed Outcome = "differential-failed"
	// OutcomeSkipped: the optimizer left the program alone (unsupported
	// construct, a map it depends on too large to snapshot, ...).
	OutcomeSkipped Outcome = "skipped"
	// OutcomeRaced: a map the candidate depends on changed while it was
	// built; it was dropped and another cycle queued.
	OutcomeRaced Outcome = "raced"
	// OutcomeCancelled: the cycle was cancelled (Stop, or the caller's
	// context) before a verdict; the running program was kept.
	OutcomeCancelled Outcome = "cancelled"
	// OutcomeError: the cycle failed for this program; the running
	// program was kept.
	OutcomeError Outcome = "error"
)

// ProgramCycle is one program's part of a cycle.
type ProgramCycle struct {
	Program            string        `json:"program"`
	Outcome            Outcome       `json:"outcome"`
	Reason             string        `json:"reason,omitempty"`
	InstructionsBefore int           `json:"instructions_before"`
	InstructionsAfter  int           `json:"instructions_after"`
	Applied            int           `json:"applied_rewrites"`
	OptimizeTime       time.Duration `json:"optimize_time_ns"`
	VerifyTime         time.Duration `json:"verify_time_ns"`
	DifferentialTime   time.Duration `json:"differential_time_ns"`
	SwapTime           time.Duration `json:"swap_time_ns"`
	// SteadyTest is set when the differential test ran on the reduced
	// packet set: the candidate has the shape of the running one
	// (optimize.LiveOptions.SameShape).
	SteadyTest bool `json:"steady_test,omitempty"`
	// Passes and Remarks say what each pass did and why it left sites
	// alone, as the optimizer reported them.
	Passes  []passes.PassResult `json:"passes,omitempty"`
	Remarks []passes.Remark     `json:"remarks,omitempty"`
}

// CycleStats describes one optimization cycle.
type CycleStats struct {
	Seq uint64 `json:"seq"`
	// Trigger is why the cycle ran: "period", "change", "forced",
	// "fingerprint", "adopt".
	Trigger  string        `json:"trigger"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
	// SnapshotTime is the time spent reading the maps.
	SnapshotTime time.Duration `json:"snapshot_time_ns"`
	// Skipped lists maps that were not snapshotted, with the reason.
	Skipped  map[string]string `json:"skipped_maps,omitempty"`
	Programs []ProgramCycle    `json:"programs"`
}

// Stats are the agent's counters since Load.
type Stats struct {
	// Cycles counts optimization cycles run.
	Cycles uint64 `json:"cycles"`
	// Swaps counts candidates swapped in (on all their attachments).
	Swaps uint64 `json:"swaps"`
	// Unchanged counts candidates identical to the running program.
	Unchanged uint64 `json:"unchanged"`
	// VerifierRejections and DifferentialFailures count candidates the
	// kernel verifier refused and candidates that behaved differently
	// from the original (including failed guard checks).
	VerifierRejections   uint64 `json:"verifier_rejections"`
	DifferentialFailures uint64 `json:"differential_failures"`
	// Raced counts candidates dropped because a map they depend on
	// changed while they were built.
	Raced uint64 `json:"raced"`
	// Errors counts failures (load, swap, optimizer errors).
	Errors uint64 `json:"errors"`
	// GuardBumps counts guard version bumps (control-plane changes of
	// guarded maps and fingerprint mismatches).
	GuardBumps uint64 `json:"guard_bumps"`
	// Deoptimizations counts the times the original program was swapped
	// back in (guard elision, disable, stop, nothing left to optimize)
	// and the guards tripped by fingerprint mismatches.
	Deoptimizations uint64 `json:"deoptimizations"`
	// FingerprintMismatches counts trusted maps found changed behind the
	// agent's back.
	FingerprintMismatches uint64 `json:"fingerprint_mismatches"`
	// ProfileWindows counts profiling windows (instrumented variant
	// swapped in and out).
	ProfileWindows uint64 `json:"profile_windows"`
	// MapUpdates and MapDeletes count entries written and deleted through
	// the agent.
	MapUpdates uint64 `json:"map_updates"`
	MapDeletes uint64 `json:"map_deletes"`
	// DroppedEvents counts events not delivered to a slow subscriber.
	DroppedEvents uint64 `json:"dropped_events"`
	// LastCycle is the most recent cycle, nil before the first.
	LastCycle *CycleStats `json:"last_cycle,omitempty"`
}

// eventLog keeps recent events and fans them out to subscribers.
type eventLog struct {
	mu      sync.Mutex
	seq     uint64
	ring    []Event
	max     int
	subs    map[int]chan Event
	nextSub int
	dropped uint64
}

func newEventLog(max int) *eventLog {
	return &eventLog{max: max, subs: map[int]chan Event{}}
}

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	e.Seq = l.seq
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.ring = append(l.ring, e)
	if len(l.ring) > l.max {
		l.ring = append(l.ring[:0:0], l.ring[len(l.ring)-l.max:]...)
	}
	for _, ch := range l.subs {
		select {
		case ch <- e:
		default:
			l.dropped++
		}
	}
}

func (l *eventLog) since(seq uint64) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, e := range l.ring {
		if e.Seq > seq {
			out = append(out, e)
		}
	}
	return out
}

func (l *eventLog) subscribe(buf int) (<-chan Event, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := l.nextSub
	l.nextSub++
	ch := make(chan Event, buf)
	l.subs[id] = ch
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if _, ok := l.subs[id]; ok { // closeAll may have closed it
				delete(l.subs, id)
				close(ch)
			}
		})
	}
}

func (l *eventLog) droppedCount() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

func (l *eventLog) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, ch := range l.subs {
		delete(l.subs, id)
		close(ch)
	}
}
