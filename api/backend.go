// Package api is the HTTP control interface of a running Morpheus daemon:
// a JSON API over the optimizer's programs, guarded maps, heatmaps and
// events, Prometheus metrics, and a status page. The server is written
// against the small Backend interface, so it can be tested without a
// kernel; the daemon plugs in the agent through NewAgentBackend.
//
// Programs and maps belong to a network function (NF); in URLs they are
// named "NAME" when that is unique, else "NF:NAME". Routes (all JSON;
// errors are {"error": "..."} with a 4xx/5xx status):
//
//	GET    /v1/programs                  programs and their current optimization
//	GET    /v1/programs/{name}           one program
//	POST   /v1/programs/{name}/enable    resume optimizing a program
//	POST   /v1/programs/{name}/disable   stop optimizing it and run the original
//	POST   /v1/cycle                     force a cycle and wait for it ({"nf": "...", "program": "..."} optional)
//	GET    /v1/maps                      maps with types, sizes, guard state
//	GET    /v1/maps/{name}/entries       every entry, or one with ?key=HEX
//	PUT    /v1/maps/{name}/entries       guarded update: {"key": "HEX", "value": "HEX"}
//	DELETE /v1/maps/{name}/entries/{key} guarded delete
//	GET    /v1/heatmaps                  hot keys per NF and map (?top=N)
//	GET    /v1/events                    recent cycles, swaps, de-optimizations (?after=SEQ&limit=N)
//	GET    /v1/series                    ns/packet and packets/s per program, sampled each second
//	GET    /v1/stats                     the optimizer's counters
//	GET    /metrics                      Prometheus metrics
//	GET    /                             status page
package api

import (
	"context"
	"errors"
	"time"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/passes"
)

// Backend is what the HTTP layer needs from the optimizer. Programs and
// maps belong to a network function (NF); the server resolves the names
// clients give ("NAME" when unique, else "NF:NAME") to an NF and a name
// before calling the backend. Implementations must be safe for concurrent
// use. Errors wrapping ErrNotFound or ErrInvalid become 404 and 400
// responses; any other error is a 500.
type Backend interface {
	// Programs lists the managed programs, sorted by NF and name.
	Programs(ctx context.Context) ([]Program, error)
	// SetEnabled turns optimization of a program on or off. Disabling
	// swaps the original program back in.
	SetEnabled(ctx context.Context, nf, program string, enabled bool) error
	// Cycle runs an optimization cycle now and waits for it to finish:
	// for one program, for every program of one NF (empty program), or
	// for every NF (both empty).
	Cycle(ctx context.Context, nf, program string) (*CycleResult, error)
	// Maps lists the maps the control plane may read and change, sorted
	// by NF and name.
	Maps(ctx context.Context) ([]Map, error)
	// Entries returns every entry of a map, sorted by key.
	Entries(ctx context.Context, nf, mapName string) ([]mapstate.Entry, error)
	// Lookup returns one entry; a missing key is an ErrNotFound.
	Lookup(ctx context.Context, nf, mapName string, key []byte) (mapstate.Entry, error)
	// Update writes one entry through the guarded path: the map's guard is
	// bumped before the write and a re-optimization is triggered. For
	// per-CPU maps value is written to every CPU.
	Update(ctx context.Context, nf, mapName string, key, value []byte) error
	// Delete removes one entry through the guarded path.
	Delete(ctx context.Context, nf, mapName string, key []byte) error
	// Heatmaps returns the hot keys observed per map, per NF.
	Heatmaps(ctx context.Context) (map[string]*heatmap.Heatmap, error)
	// Events returns the retained events with a sequence number greater
	// than after, oldest first.
	Events(ctx context.Context, after uint64) ([]Event, error)
	// Stats returns the optimizer's cumulative counters.
	Stats(ctx context.Context) (Stats, error)
}

var (
	// ErrNotFound reports an unknown program, map or key.
	ErrNotFound = errors.New("not found")
	// ErrInvalid reports a request the backend cannot carry out as asked
	// (for example an update of a map user space cannot write).
	ErrInvalid = errors.New("invalid request")
)

// Program is one managed program and its current optimization.
type Program struct {
	Name string `json:"name"`
	// NF names the network function (configuration entry) it belongs to.
	NF   string `json:"nf,omitempty"`
	Type string `json:"type"`
	// Attach lists where it is attached ("veth0 xdp native").
	Attach []string `json:"attach,omitempty"`
	// Enabled is false when optimization was switched off for it.
	Enabled bool `json:"enabled"`
	// Version counts the optimized programs swapped in since start; the
	// original is version 0.
	Version int `json:"version"`
	// Optimized is true while an optimized candidate is running.
	Optimized bool `json:"optimized"`
	// Profiling is true while an instrumented variant runs to measure the
	// hot keys.
	Profiling bool `json:"profiling,omitempty"`
	// ProgramID is the kernel ID of the program running now.
	ProgramID uint32 `json:"program_id"`
	// Instructions of the original and of the running program.
	InstructionsOriginal int `json:"instructions_original"`
	InstructionsRunning  int `json:"instructions_running"`
	// Passes and Remarks describe the running optimization.
	Passes  []passes.PassResult `json:"passes,omitempty"`
	Remarks []passes.Remark     `json:"remarks,omitempty"`
	// Guards are the maps the running code depends on.
	Guards []Guard `json:"guards,omitempty"`
	// Maps names the maps the program uses.
	Maps []string `json:"maps,omitempty"`
	// SwappedAt is when the running program was swapped in.
	SwappedAt time.Time `json:"swapped_at,omitzero"`
	// LastOutcome and LastReason are the result of the last cycle for
	// the program ("swapped", "unchanged", "verifier-rejected", ...).
	LastOutcome string `json:"last_outcome,omitempty"`
	LastReason  string `json:"last_reason,omitempty"`
	// Run holds the kernel's bpf_stats for the program (zero when
	// kernel.bpf_stats_enabled is off).
	Run RunStats `json:"run"`
}

// ID is the program's name in URLs and series: "NF:NAME", or NAME when
// it belongs to no NF.
func (p Program) ID() string { return qualify(p.NF, p.Name) }

// ID is the map's qualified name, "NF:NAME" (or NAME without an NF).
func (m Map) ID() string { return qualify(m.NF, m.Name) }

func qualify(nf, name string) string {
	if nf == "" {
		return name
	}
	return nf + ":" + name
}

// Guard is the state of a map the running optimized code depends on.
type Guard struct {
	Map string `json:"map"`
	// Elided is true when the code depends on the map without a runtime
	// guard; a change through the API then restores the original first.
	Elided bool `json:"elided,omitempty"`
	// Tripped is true when the guard was bumped since the code was
	// specialized: its fast path for the map is off until the next swap.
	Tripped bool `json:"tripped,omitempty"`
}

// RunStats are cumulative kernel run statistics of a program.
type RunStats struct {
	// Packets is the number of runs (one per packet for XDP and TC).
	Packets uint64 `json:"packets"`
	// RunTime is the total time spent in the program.
	RunTime time.Duration `json:"run_time_ns"`
}

// Map describes one map the control plane can read and change.
type Map struct {
	Name       string `json:"name"`
	NF         string `json:"nf,omitempty"`
	Type       string `json:"type"`
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	// PerCPU maps hold one value per possible CPU.
	PerCPU bool `json:"per_cpu,omitempty"`
	// Guarded is true when optimized code may depend on the map's
	// contents, so a change bumps its guard and triggers re-optimization.
	Guarded bool `json:"guarded"`
	// TrustedBy lists the running optimized programs whose fast path
	// depends on the map now.
	TrustedBy []string `json:"trusted_by,omitempty"`
}

// CycleResult is the outcome of a forced optimization cycle.
type CycleResult struct {
	Duration time.Duration   `json:"duration_ns"`
	Programs []ProgramResult `json:"programs"`
}

// ProgramResult is what a cycle did to one program.
type ProgramResult struct {
	NF      string `json:"nf,omitempty"`
	Program string `json:"program"`
	// Outcome is the optimizer's verdict ("swapped", "unchanged",
	// "no-change", "verifier-rejected", "differential-failed", ...).
	Outcome string `json:"outcome"`
	Reason  string `json:"reason,omitempty"`
	// Instructions before and after optimization.
	InstructionsBefore int `json:"instructions_before"`
	InstructionsAfter  int `json:"instructions_after"`
}

// Event is one thing the optimizer did.
type Event struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Kind is one of the Event constants.
	Kind    string `json:"kind"`
	NF      string `json:"nf,omitempty"`
	Program string `json:"program,omitempty"`
	Map     string `json:"map,omitempty"`
	Message string `json:"message,omitempty"`
	// Duration is set for cycle events.
	Duration time.Duration `json:"duration_ns,omitempty"`
}

// EventCycle is the kind of the event that ends an optimization cycle;
// its Duration is the cycle's. Other kinds are the optimizer's own
// ("swap", "restore", "guard-bump", "fingerprint-mismatch", "error", ...).
const EventCycle = "cycle"

// Stats are the optimizer's cumulative counters since it started.
type Stats struct {
	Cycles               uint64 `json:"cycles"`
	Swaps                uint64 `json:"swaps"`
	VerifierRejections   uint64 `json:"verifier_rejections"`
	DifferentialFailures uint64 `json:"differential_failures"`
	GuardBumps           uint64 `json:"guard_bumps"`
	Deoptimizations      uint64 `json:"deoptimizations"`
	// ProfileWindows counts the windows an instrumented variant ran.
	ProfileWindows uint64 `json:"profile_windows"`
}
