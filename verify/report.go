package verify

import (
	"fmt"
	"strings"
	"time"

	"github.com/morpheus-go/morpheus/mapstate"
)

// Kinds of [Mismatch].
const (
	// KindVerdict: the program returned a different value.
	KindVerdict = "verdict"
	// KindOutput: the packet after the run differs (length or bytes).
	KindOutput = "output"
	// KindContext: the context after the run (xdp_md / __sk_buff, e.g.
	// skb->mark or skb->priority) differs.
	KindContext = "context"
	// KindMap: a map entry differs, is missing or is extra in the candidate.
	KindMap = "map"
	// KindRunError: BPF_PROG_TEST_RUN failed for the candidate but not
	// for the original (or the other way round).
	KindRunError = "run-error"
)

// Mismatch is one observed difference between the original and the
// candidate.
type Mismatch struct {
	// Packet is the index of the packet after which the difference was
	// seen. Map differences are found when maps are checked, which may be
	// a few packets after the one that caused them (see Report.MapCheck).
	Packet int `json:"packet"`
	// Program is the entry program that was run on the packet.
	Program string `json:"program,omitempty"`
	// Kind is one of KindVerdict, KindOutput, KindContext, KindMap,
	// KindRunError.
	Kind string `json:"kind"`
	// Map and Key identify the entry of a map mismatch.
	Map string       `json:"map,omitempty"`
	Key mapstate.Hex `json:"key,omitempty"`
	// CPU is the CPU slot of a per-CPU map value that differs.
	CPU *int `json:"cpu,omitempty"`
	// Offset is the first differing byte of an output, context or map
	// value (-1 for a length, presence or verdict difference).
	Offset int `json:"offset"`
	// Expected is what the original produced and Got what the candidate
	// produced: a verdict name or hex bytes.
	Expected string `json:"expected"`
	Got      string `json:"got"`
	// Detail is a readable one-line explanation.
	Detail string `json:"detail"`
	// Nondeterministic marks a difference at a place (a program's verdict,
	// an output or context byte offset, a map's key set or value byte)
	// where the two original runs disagreed on some packet of this test.
	// The difference may then be chance: randomness that happened to agree
	// in both original runs. It still counts as a mismatch (the safety net
	// fails closed), but it tells the reader where to look.
	Nondeterministic bool `json:"nondeterministic,omitempty"`

	// locs are the places this mismatch is about, matched against the
	// places seen nondeterministic when the test ends.
	locs []string
}

// String renders the mismatch on one line.
func (m Mismatch) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "packet %d", m.Packet)
	if m.Program != "" {
		fmt.Fprintf(&b, " program %s", m.Program)
	}
	fmt.Fprintf(&b, ": %s", m.Kind)
	if m.Map != "" {
		fmt.Fprintf(&b, " %s key %x", m.Map, []byte(m.Key))
		if m.CPU != nil {
			fmt.Fprintf(&b, " cpu %d", *m.CPU)
		}
	}
	fmt.Fprintf(&b, ": %s", m.Detail)
	if m.Nondeterministic {
		b.WriteString(" (nondeterministic in the original elsewhere)")
	}
	return b.String()
}

// Nondeterminism counts what the two runs of the original disagreed on and
// was therefore excluded from the comparison.
type Nondeterminism struct {
	// Packets is the number of packets after which the two original runs
	// disagreed on something not seen before (verdict, output or context
	// bytes, or a new map byte or key).
	Packets int `json:"packets"`
	// Verdicts is the number of runs whose verdict differed.
	Verdicts int `json:"verdicts"`
	// OutputBytes and ContextBytes sum the excluded bytes over all runs
	// (a run whose output length differed counts its longer length).
	OutputBytes  int `json:"output_bytes"`
	ContextBytes int `json:"context_bytes"`
	// MapBytes counts distinct excluded map value bytes (map, key, CPU,
	// offset), MapKeys distinct keys present in only one original run.
	MapBytes int `json:"map_bytes"`
	MapKeys  int `json:"map_keys"`
}

// Any reports whether any nondeterminism was seen.
func (n Nondeterminism) Any() bool {
	return n != Nondeterminism{}
}

// Report is the result of a differential test. Its JSON field names are
// stable: `morpheus optimize --json` embeds it.
type Report struct {
	// Programs are the entry programs run on every packet, in run order.
	Programs []string `json:"programs"`
	// Packets is the number of packets tried; Total the number given.
	Packets int `json:"packets"`
	Total   int `json:"total"`
	// Complete is true when every packet was tried (not stopped by too
	// many mismatches or by cancellation).
	Complete bool `json:"complete"`
	// Runs is the number of program runs compared (packets times entry
	// programs, less the skipped ones).
	Runs int `json:"runs"`
	// Skipped counts runs the kernel refused for the original and the
	// candidate alike (for example IPv4 frames shorter than an IPv4
	// header given to a TC program); SkipReason describes the first.
	Skipped    int    `json:"skipped"`
	SkipReason string `json:"skip_reason,omitempty"`
	// CPU is the CPU all runs were pinned to.
	CPU int `json:"cpu"`
	// MapCheck describes when maps were compared ("every packet",
	// "every N packets", "end").
	MapCheck string `json:"map_check"`
	// MapChecks is the number of map comparisons made.
	MapChecks int `json:"map_checks"`
	// SkippedMaps are maps whose contents cannot be read from user space
	// (program arrays, ring buffers, queues, ...) and were not compared.
	SkippedMaps []string `json:"skipped_maps,omitempty"`
	// ReadOnlyMaps are maps created BPF_F_RDONLY_PROG in all three
	// collections (DiffOptions.ReadOnlyMaps, or so declared by the
	// object): the kernel verifier proved that no program writes them,
	// so they hold the contents they were filled with and were not read
	// back.
	ReadOnlyMaps []string `json:"read_only_maps,omitempty"`
	// MapCapacities are the max_entries of the first original's copies
	// of the hash maps created smaller than their spec for the test
	// (DiffOptions.InsertBounds), by name.
	MapCapacities map[string]uint32 `json:"map_capacities,omitempty"`
	// MismatchCount is the number of mismatches found; Mismatches keeps
	// the first DiffOptions.MaxMismatches of them.
	MismatchCount int        `json:"mismatch_count"`
	Mismatches    []Mismatch `json:"mismatches"`
	// Nondeterministic is what was excluded because the original itself
	// does not repeat it.
	Nondeterministic Nondeterminism `json:"nondeterministic"`
	// Timing splits the test's wall time into its phases.
	Timing Timing `json:"timing"`
}

// Timing is where a differential test spent its time.
type Timing struct {
	// Load is creating and filling the three collections.
	Load time.Duration `json:"load_ns"`
	// Runs is the test runs of the programs and the comparison of
	// their verdicts, outputs and contexts.
	Runs time.Duration `json:"runs_ns"`
	// Maps is reading and comparing maps (periodic and final checks).
	Maps time.Duration `json:"maps_ns"`
}

// Passed reports whether every packet was tried, at least one run was
// compared and no mismatch was found.
func (r *Report) Passed() bool {
	return r != nil && r.Complete && r.MismatchCount == 0 && r.Runs > 0
}

// String summarises the report; a failed report lists its mismatches.
func (r *Report) String() string {
	if r == nil {
		return "differential test: no report"
	}
	var b strings.Builder
	verdict := "PASSED"
	if !r.Passed() {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "differential test %s: %d/%d packets through %s on cpu %d, maps compared %s (%d checks), %d mismatches",
		verdict, r.Packets, r.Total, strings.Join(r.Programs, ", "), r.CPU, r.MapCheck, r.MapChecks, r.MismatchCount)
	if !r.Complete {
		b.WriteString(", stopped early")
	}
	if r.Skipped > 0 {
		fmt.Fprintf(&b, "; %d runs refused by the kernel and skipped (first: %s)", r.Skipped, r.SkipReason)
	}
	if nd := r.Nondeterministic; nd.Any() {
		fmt.Fprintf(&b, "; nondeterministic in the original (excluded): %d packets, %d verdicts, %d output bytes, %d context bytes, %d map bytes, %d map keys",
			nd.Packets, nd.Verdicts, nd.OutputBytes, nd.ContextBytes, nd.MapBytes, nd.MapKeys)
	}
	for _, m := range r.Mismatches {
		b.WriteString("\n  ")
		b.WriteString(m.String())
	}
	if n := r.MismatchCount - len(r.Mismatches); n > 0 {
		fmt.Fprintf(&b, "\n  ... %d more", n)
	}
	return b.String()
}
