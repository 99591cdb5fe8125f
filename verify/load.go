// Package verify is the optimizer's safety net. A candidate (the rewritten
// instructions of one or more programs of a collection) may only replace the
// running code after it has
//
//   - passed the kernel verifier ([Load]), and
//   - behaved exactly like the original on the same packets from the same map
//     state ([Differential]): same verdict, same output bytes, same context
//     side effects and the same map contents, packet by packet.
//
// Behaviour that the original program itself does not repeat (clocks, random
// numbers) is detected by running a second copy of the original in lock-step
// and is excluded from the comparison, never guessed at.
//
// [EdgeCases] derives malformed and boundary packets from sample traffic, so
// the differential test covers the paths that hot traffic never takes.
package verify

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/morpheus-go/morpheus/mapstate"
)

// Candidate holds replacement instructions per program name of a collection
// spec. Programs not named keep their original instructions.
type Candidate map[string]asm.Instructions

// Names returns the candidate's program names in sorted order.
func (c Candidate) Names() []string {
	names := make([]string, 0, len(c))
	for name := range c {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// DefaultLogTail is the number of verifier log lines a [VerifierError] keeps
// when [LoadOptions.LogTail] is zero. The reason for a rejection is at the
// end of the log; the head is the part of the program that was accepted.
const DefaultLogTail = 40

// LoadOptions controls [Load].
type LoadOptions struct {
	// MapReplacements makes the loaded programs use these maps instead of
	// creating new ones, typically the live maps of the running network
	// function, so that the loaded candidate can be swapped in directly.
	// The maps are cloned; the caller keeps ownership of the given ones.
	MapReplacements map[string]*ebpf.Map
	// LogLevel requests verifier output even on success (it then appears in
	// each Program's VerifierLog). Zero loads without a log and, only if
	// the verifier rejects a program, loads again with a full log.
	LogLevel ebpf.LogLevel
	// LogTail is how many trailing verifier log lines a *VerifierError
	// keeps. Zero means DefaultLogTail; negative keeps the whole log.
	LogTail int
	// Cache amortises parsing of the kernel's BTF over several loads.
	// Nil uses a fresh cache per load.
	Cache *btf.Cache
}

// VerifierError reports that the kernel refused to load a program. It wraps
// the *ebpf.VerifierError from cilium/ebpf, so errors.As can reach the full
// log as well.
type VerifierError struct {
	// Program is the name of the rejected program in the collection spec
	// ("" if the loader's error did not say which one).
	Program string
	// Candidate is true if Program's instructions came from the candidate
	// rather than from the original spec.
	Candidate bool
	// Log holds the last lines of the verifier log.
	Log []string
	// Omitted is the number of log lines dropped before Log.
	Omitted int
	// Err is the underlying error, an *ebpf.VerifierError.
	Err error
}

// Error names the program and the verifier's reason, followed by the log
// tail.
func (e *VerifierError) Error() string {
	var b strings.Builder
	who := "program"
	if e.Candidate {
		who = "candidate program"
	}
	if e.Program != "" {
		fmt.Fprintf(&b, "verifier rejected %s %q", who, e.Program)
	} else {
		fmt.Fprintf(&b, "verifier rejected a %s", who)
	}
	var ve *ebpf.VerifierError
	if errors.As(e.Err, &ve) && ve.Cause != nil {
		fmt.Fprintf(&b, ": %v", ve.Cause)
	}
	if len(e.Log) > 0 {
		if e.Omitted > 0 {
			fmt.Fprintf(&b, "\n\t(%d earlier log lines omitted)", e.Omitted)
		}
		for _, line := range e.Log {
			b.WriteString("\n\t")
			b.WriteString(line)
		}
	}
	return b.String()
}

// Unwrap returns the underlying cilium/ebpf error.
func (e *VerifierError) Unwrap() error { return e.Err }

// WithCandidate returns a copy of spec in which the programs named in cand
// have the candidate's instructions. It fails if cand names a program that
// spec does not have. spec itself is not modified.
func WithCandidate(spec *ebpf.CollectionSpec, cand Candidate) (*ebpf.CollectionSpec, error) {
	if spec == nil {
		return nil, errors.New("verify: nil collection spec")
	}
	cpy := spec.Copy()
	for _, name := range cand.Names() {
		ps, ok := cpy.Programs[name]
		if !ok {
			return nil, fmt.Errorf("verify: candidate program %q does not exist in the collection spec", name)
		}
		if len(cand[name]) == 0 {
			return nil, fmt.Errorf("verify: candidate program %q has no instructions", name)
		}
		// ProgramSpec.Copy already cloned the spec; clone the candidate
		// too so that loading cannot alias the caller's slice.
		ps.Instructions = slices.Clone(cand[name])
	}
	return cpy, nil
}

// Load copies spec, substitutes the candidate's instructions and loads the
// whole collection through the kernel verifier. If any program is rejected
// it returns a *VerifierError naming the program; on any failure nothing
// stays loaded (the collection loader closes what it created, and the
// caller's replacement maps are only ever cloned).
func Load(spec *ebpf.CollectionSpec, cand Candidate, opts LoadOptions) (*ebpf.Collection, error) {
	cs, err := WithCandidate(spec, cand)
	if err != nil {
		return nil, err
	}
	return loadSpec(cs, cand, opts)
}

// loadSpec loads an already substituted spec, which it may modify (the
// caller's copy), and translates verifier failures into *VerifierError.
// The contents of large maps are written in batches after the load (see
// takeContents).
func loadSpec(cs *ebpf.CollectionSpec, cand Candidate, opts LoadOptions) (*ebpf.Collection, error) {
	later := takeContents(cs, opts.MapReplacements)
	coll, err := ebpf.NewCollectionWithOptions(cs, opts.collectionOptions())
	if err != nil {
		return nil, loadError(err, cs, cand, opts)
	}
	if err := applyState(later, coll.Maps); err != nil {
		coll.Close()
		return nil, fmt.Errorf("verify: write map contents: %w", err)
	}
	return coll, nil
}

// takeContents removes from cs the contents that loadSpec writes itself
// after the load, and returns them. The collection loader writes a map's
// contents one update per element (the optimizer's cache maps hold
// thousands: the firewall's two ACL tables 8,000 system calls per load);
// applyState writes them in batches. It takes the contents of maps of a
// batchTypes type with at least batchMin elements whose keys and values
// are byte slices of the map's sizes, except global data (the loader
// freezes .rodata and .kconfig) and maps a replacement stands in for
// (never written). The verifier reads a map's contents only if the map is
// frozen, so writing them after the programs loaded, before anything
// runs, changes nothing else.
func takeContents(cs *ebpf.CollectionSpec, repl map[string]*ebpf.Map) *mapstate.State {
	later := mapstate.New()
	for name, ms := range cs.Maps {
		if _, replaced := repl[name]; replaced || strings.HasPrefix(name, ".") ||
			!batchTypes[ms.Type] || len(ms.Contents) < batchMin {
			continue
		}
		entries := make([]mapstate.Entry, 0, len(ms.Contents))
		for _, kv := range ms.Contents {
			k, kok := kv.Key.([]byte)
			v, vok := kv.Value.([]byte)
			if !kok || !vok || len(k) != int(ms.KeySize) || len(v) != int(ms.ValueSize) {
				entries = nil
				break
			}
			entries = append(entries, mapstate.Entry{Key: k, Value: v})
		}
		if entries == nil {
			continue // left to the loader, which converts other types
		}
		later.Maps[name] = &mapstate.Map{Entries: entries}
		cpy := *ms
		cpy.Contents = nil
		cs.Maps[name] = &cpy
	}
	return later
}

func (opts LoadOptions) collectionOptions() ebpf.CollectionOptions {
	return ebpf.CollectionOptions{
		MapReplacements: opts.MapReplacements,
		Programs:        ebpf.ProgramOptions{LogLevel: opts.LogLevel},
		Cache:           opts.Cache,
	}
}

// loadError turns a verifier rejection into a *VerifierError naming the
// program.
func loadError(err error, cs *ebpf.CollectionSpec, cand Candidate, opts LoadOptions) error {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return fmt.Errorf("verify: %w", err)
	}
	name := failedProgram(err, cs)
	_, isCand := cand[name]
	log, omitted := tail(ve.Log, opts.LogTail)
	return &VerifierError{Program: name, Candidate: isCand, Log: log, Omitted: omitted, Err: err}
}

// failedProgram finds the program a collection load error is about.
// cilium/ebpf prefixes program load errors with "program NAME: " (callers
// may wrap that further); the longest matching name wins so that "a"
// cannot shadow "a_b".
func failedProgram(err error, cs *ebpf.CollectionSpec) string {
	msg := err.Error()
	best := ""
	for name := range cs.Programs {
		if strings.Contains(msg, "program "+name+": ") && len(name) > len(best) {
			best = name
		}
	}
	return best
}

func tail(log []string, n int) ([]string, int) {
	if n == 0 {
		n = DefaultLogTail
	}
	if n < 0 || len(log) <= n {
		return slices.Clone(log), 0
	}
	return slices.Clone(log[len(log)-n:]), len(log) - n
}
