// Package optimize is the optimizer's driver: for each program of a
// collection it lifts the code, runs the pass pipeline against a snapshot
// of the map contents (and a heatmap), lowers the result, loads it through
// the kernel verifier and runs a differential test against the original.
// A candidate that fails either is dropped and the report says why; the
// original is never changed.
package optimize

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/program"
	"github.com/morpheus-go/morpheus/verify"
)

// Options configures a run.
type Options struct {
	// Program limits the run to one program; empty means every program.
	Program string
	Passes  passes.Options
	// Packets are the trace packets of the differential test; generated
	// packets and edge cases are added to them.
	Packets [][]byte
	// Generated is how many packets to generate from the map contents
	// and the trace (0 means 2000, negative none); a quarter as many edge
	// cases are derived from the trace and generated packets.
	Generated int
	// Seed makes generated packets reproducible.
	Seed int64
	// Context is the test-run context (xdp_md) for the differential test.
	Context []byte
	// NoVerify stops after lowering: no verifier, no differential test,
	// and so never an accepted candidate. It measures the optimizer's own
	// work (BenchmarkOptimize) without the kernel's.
	NoVerify bool
}

// Report is the result for every program.
type Report struct {
	Programs []*ProgramReport `json:"programs"`
}

// Listings returns the listings of the program model before and after the
// passes; empty when the program was not lifted or the passes failed.
func (pr *ProgramReport) Listings() (before, after string) {
	if pr.before != nil {
		before = pr.before.String()
	}
	if pr.after != nil {
		after = pr.after.String()
	}
	return before, after
}

// ProgramReport says what happened to one program.
type ProgramReport struct {
	Program            string              `json:"program"`
	InstructionsBefore int                 `json:"instructions_before"`
	InstructionsAfter  int                 `json:"instructions_after"`
	Passes             []passes.PassResult `json:"passes"`
	Remarks            []passes.Remark     `json:"remarks"`
	// Verifier is "ok" or the verifier's complaint.
	Verifier     string         `json:"verifier"`
	Differential *verify.Report `json:"differential,omitempty"`
	// Accepted is true when the candidate passed every check.
	Accepted bool `json:"accepted"`
	// Reason explains a rejected or skipped candidate.
	Reason string `json:"reason,omitempty"`
	// OptimizeTime is lift, analysis, passes and lower: the optimizer's
	// own work, without the kernel verifier.
	OptimizeTime time.Duration `json:"optimize_time_ns"`
	// VerifyTime is the kernel verifier's load of the candidate.
	VerifyTime time.Duration `json:"verify_time_ns"`
	// DifferentialNS is the differential test (with the guard check of
	// RunLive).
	DifferentialNS time.Duration `json:"differential_time_ns"`
	// GuardCheckTime is the part of DifferentialNS spent in RunLive's
	// guard check.
	GuardCheckTime time.Duration `json:"guard_check_time_ns,omitempty"`
	// BaselineLoadTime is RunLive's load of the differential test's two
	// copies of the original, or their reset (LiveOptions.Baseline),
	// which runs while the passes do.
	BaselineLoadTime time.Duration `json:"baseline_load_time_ns,omitempty"`
	// Attempts lists the pipeline runs when there was more than one: a
	// candidate the verifier refused for its size or verification work
	// (see ComplexityRejection) is rebuilt without constprop, whose
	// guarded fallback copies the program. The fields above describe the
	// attempt that was kept.
	Attempts []Attempt `json:"attempts,omitempty"`
	// SteadyTest is set when the differential test ran on the reduced
	// packet set of a candidate whose shape matches the running one
	// (LiveOptions.SameShape).
	SteadyTest bool `json:"steady_test,omitempty"`
	// Digest is the accepted candidate's Candidate.Digest against the
	// spec RunLive optimized, as computed for LiveOptions.Unchanged; zero
	// if it was not (no Unchanged, or a candidate rebuilt after a
	// verifier refusal).
	Digest [32]byte `json:"-"`

	// before and after are the program model before and after the
	// passes, listed only on demand (Listings): formatting costs several
	// milliseconds per cycle that only --diff reads.
	before, after *program.Program
	// Candidate holds the accepted instructions and the collection spec
	// (with the added cache and guard maps) they load against.
	Candidate *Candidate `json:"-"`
}

// Candidate is an optimized program ready to load.
type Candidate struct {
	Spec    *ebpf.CollectionSpec
	Program string
	Guards  *guard.Table
}

// Run optimizes the programs of spec for the given map state and heatmap.
// spec is not modified.
func Run(ctx context.Context, spec *ebpf.CollectionSpec, state *mapstate.State, heat *heatmap.Heatmap, opts Options) (*Report, error) {
	if state == nil {
		state = mapstate.New()
	}
	if err := state.Check(spec); err != nil {
		return nil, err
	}
	if err := CheckHeatmap(spec, heat); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(spec.Programs))
	for n := range spec.Programs {
		if opts.Program == "" || n == opts.Program {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		all := make([]string, 0, len(spec.Programs))
		for n := range spec.Programs {
			all = append(all, n)
		}
		sort.Strings(all)
		return nil, fmt.Errorf("no program %q in the object (it has: %s)", opts.Program, strings.Join(all, ", "))
	}
	sort.Strings(names)
	packets := slices.Clone(opts.Packets)
	gen := opts.Generated
	switch {
	case gen == 0:
		gen = 2000
	case gen < 0:
		gen = 0
	}
	if opts.NoVerify {
		gen = 0
	}
	if !opts.NoVerify {
		// Without the differential test the packets are not used:
		// building the generator's pools from large maps costs more
		// than the passes.
		rnd := rand.New(rand.NewSource(opts.Seed))
		packets = append(packets, Generate(spec, state, heat, gen, rnd)...)
		packets = append(packets, verify.EdgeCases(packets, gen/4, rnd)...)
	}

	rep := &Report{}
	for _, name := range names {
		pr, err := optimizeOne(ctx, spec, name, state, heat, packets, opts)
		if err != nil {
			return nil, err
		}
		rep.Programs = append(rep.Programs, pr)
	}
	return rep, nil
}

func optimizeOne(ctx context.Context, spec *ebpf.CollectionSpec, name string, state *mapstate.State, heat *heatmap.Heatmap, packets [][]byte, opts Options) (*ProgramReport, error) {
	pr := &ProgramReport{Program: name, InstructionsBefore: len(spec.Programs[name].Instructions)}
	start := time.Now()
	tbl := guard.NewTable()
	cm, err := compile(spec, name, state, heat, tbl, opts.Passes, pr, false)
	if cm == nil {
		return pr, err
	}
	pr.OptimizeTime = time.Since(start)
	if opts.NoVerify {
		pr.Reason = "not verified (NoVerify)"
		return pr, nil
	}
	cm = loadChecked(spec, name, state, heat, tbl, opts.Passes, cm, pr, false, nil, nil)
	if cm == nil {
		return pr, nil
	}
	coll, cand, insns := cm.coll, verify.Candidate{name: cm.insns}, cm.insns
	pc := cm.pc

	dstart := time.Now()
	dr, err := verify.Differential(ctx, coll, state, cand, packets, verify.DiffOptions{Context: opts.Context})
	pr.DifferentialNS = time.Since(dstart)
	if err != nil && dr == nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("program %s: differential test: %w", name, err)
		}
		// The collection has no program that takes packets (a tracing
		// object, say): without a differential test nothing is swapped in.
		pr.Reason = "not accepted: no differential test possible: " + err.Error()
		return pr, nil
	}
	pr.Differential = dr
	if !dr.Passed() {
		pr.Reason = "differential test found mismatches"
		return pr, nil
	}
	pr.Accepted = true
	final := coll.Copy()
	final.Programs[name].Instructions = insns
	pr.Candidate = &Candidate{Spec: final, Program: name, Guards: pc.Guards}
	return pr, nil
}

// Attempt is one run of the pipeline for a program.
type Attempt struct {
	// Passes are the passes that ran (nil: the whole table).
	Passes            []string `json:"passes"`
	InstructionsAfter int      `json:"instructions_after"`
	// Verifier is "ok" or the first line of the verifier's complaint.
	Verifier   string        `json:"verifier"`
	VerifyTime time.Duration `json:"verify_time_ns"`
}

// compiled is a lowered candidate and the collection (with the maps the
// passes added) it loads against.
type compiled struct {
	coll  *ebpf.CollectionSpec
	pc    *passes.Context
	insns asm.Instructions
}

// compile lifts program name from a copy of spec with state applied, runs
// the passes and lowers the result, filling pr. A program the pipeline
// cannot handle is left alone: compile returns nil with pr.Reason set, and
// an error only when strict and the passes failed on a supported program.
func compile(spec *ebpf.CollectionSpec, name string, state *mapstate.State, heat *heatmap.Heatmap, tbl *guard.Table, popts passes.Options, pr *ProgramReport, strict bool) (*compiled, error) {
	coll := spec.Copy()
	if err := state.ApplySpec(coll); err != nil {
		return nil, err
	}
	prog, err := program.Lift(coll.Programs[name])
	if err != nil {
		pr.Reason = "left alone: " + err.Error()
		return nil, nil
	}
	pr.before = prog
	pc := &passes.Context{
		Coll:   coll,
		Prog:   prog.Clone(),
		State:  state,
		Heat:   heat,
		Guards: tbl,
		Opts:   popts,
	}
	if err := passes.Run(pc); err != nil {
		// One program the passes cannot handle must not stop the
		// others: it is reported and left as it is.
		pr.Passes, pr.Remarks = pc.Results, pc.Remarks
		var ue *program.UnsupportedError
		switch {
		case errors.As(err, &ue):
			pr.Reason = "left alone: " + err.Error()
		case strict:
			return nil, err
		default:
			pr.Reason = "left alone: optimization failed: " + err.Error()
		}
		return nil, nil
	}
	pr.Passes, pr.Remarks = pc.Results, pc.Remarks
	pr.after = pc.Prog
	insns, err := pc.Prog.Lower()
	if err != nil {
		pr.Reason = "lowering failed: " + err.Error()
		return nil, nil
	}
	pr.InstructionsAfter = len(insns)
	return &compiled{coll: coll, pc: pc, insns: insns}, nil
}

// ComplexityRejection reports whether a verifier error refuses the
// program for its size or for the work of verifying it (more than a
// million instructions processed, too many states, a too long jump
// sequence) rather than for an unsafe operation: the same rewrites on a
// smaller program may pass.
func ComplexityRejection(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, unix.E2BIG) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"program is too large", "is too complex", "too many states", "combined stack size"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// retryPass is the pass dropped when the verifier refuses a candidate
// for its complexity: constprop's guarded fallback keeps a copy of the
// original code next to the folded one, which doubles what the verifier
// walks.
const retryPass = "constprop"

// loadChecked runs the kernel verifier on cm's candidate. If it refuses
// the candidate for its complexity and constprop ran, the program is
// compiled again without constprop and that candidate is tried; both
// attempts are recorded in pr.Attempts and pr describes the second. It
// returns the accepted candidate, or nil with pr.Verifier and pr.Reason
// set. prepare, if set, adjusts a compiled collection before its load.
// load, if set, is the verifier's load of a candidate (with the
// statistics log level, see verifierLoad); nil loads the candidate's
// program alone (verifySpec).
func loadChecked(spec *ebpf.CollectionSpec, name string, state *mapstate.State, heat *heatmap.Heatmap, tbl *guard.Table, popts passes.Options, cm *compiled, pr *ProgramReport, strict bool, prepare func(*ebpf.CollectionSpec), load func(*compiled) (time.Duration, error)) *compiled {
	// The program-alone load is a fast filter whose rejections the full
	// collection confirms or overrules; a caller's load (the test's
	// collections) must itself succeed.
	own := load != nil
	if !own {
		load = func(cm *compiled) (time.Duration, error) {
			start := time.Now()
			loaded, err := verify.Load(verifySpec(cm.coll, name, cm.insns), verify.Candidate{name: cm.insns}, verify.LoadOptions{LogLevel: ebpf.LogLevelStats})
			if err == nil {
				loaded.Close()
			}
			return time.Since(start), err
		}
	}
	try := func(cm *compiled) error {
		if prepare != nil {
			prepare(cm.coll)
		}
		// Statistics only: a load that fails without a log is repeated
		// by cilium/ebpf with the branch log, and for a program over the
		// complexity limit that log runs to gigabytes, each buffer
		// growth another full verification (18 s instead of 1 s for the
		// corpus ACL). A rejection for anything but complexity is loaded
		// once more with the branch log, whose tail says where.
		d, err := load(cm)
		pr.VerifyTime += d
		if err != nil && !ComplexityRejection(err) {
			// Whatever else the verifier refused, the whole collection
			// as it will be loaded has the last word, with the log.
			vstart := time.Now()
			var loaded *ebpf.Collection
			loaded, err = verify.Load(cm.coll, verify.Candidate{name: cm.insns}, verify.LoadOptions{})
			pr.VerifyTime += time.Since(vstart)
			if err == nil {
				loaded.Close()
				if own {
					// Loads in full but the caller's load failed:
					// once more, and its error stands.
					var d time.Duration
					d, err = load(cm)
					pr.VerifyTime += d
				}
			}
		}
		if err != nil {
			pr.Verifier = err.Error()
			pr.Reason = "rejected by the kernel verifier"
			return err
		}
		pr.Verifier, pr.Reason = "ok", ""
		return nil
	}
	err := try(cm)
	if err == nil {
		return cm
	}
	ran := ranPasses(pr.Passes)
	if !ComplexityRejection(err) || !slices.Contains(ran, retryPass) {
		return nil
	}
	first := Attempt{Passes: ran, InstructionsAfter: pr.InstructionsAfter, Verifier: firstLine(pr.Verifier), VerifyTime: pr.VerifyTime}
	retry := popts
	retry.Passes = slices.DeleteFunc(slices.Clone(ran), func(p string) bool { return p == retryPass })
	// The retry's report replaces the first one's; the first attempt
	// stays in Attempts, and its verifier log in the reason.
	firstVerifier := pr.Verifier
	cm2, cerr := compile(spec, name, state, heat, tbl, retry, pr, strict)
	if cm2 == nil || cerr != nil {
		pr.Verifier = firstVerifier
		pr.Attempts = []Attempt{first}
		pr.Reason = "rejected by the kernel verifier; the retry without " + retryPass + " failed: " + pr.Reason
		return nil
	}
	before := pr.VerifyTime
	err = try(cm2)
	second := Attempt{Passes: retry.Passes, InstructionsAfter: pr.InstructionsAfter, Verifier: firstLine(pr.Verifier), VerifyTime: pr.VerifyTime - before}
	pr.Attempts = []Attempt{first, second}
	if err != nil {
		return nil
	}
	return cm2
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC.
const bpfFNoPrealloc = 1

// verifySpec is the smallest collection in which the kernel verifies the
// candidate for program name: that program alone (the verifier checks
// each program on its own; its subprograms are in its instructions), the
// maps it references, program arrays without their programs (the
// verifier does not look at a tail call's target), and hash maps
// without preallocated elements (their creation, tens of milliseconds
// for a large per-CPU hash, is not what is being checked). A candidate it
// rejects for anything but complexity is loaded again in the full
// collection before the verdict.
func verifySpec(coll *ebpf.CollectionSpec, name string, insns asm.Instructions) *ebpf.CollectionSpec {
	out := coll.Copy()
	out.Programs = map[string]*ebpf.ProgramSpec{name: out.Programs[name]}
	used := referencedMaps(insns)
	for n, ms := range out.Maps {
		if _, ok := used[n]; !ok {
			delete(out.Maps, n)
			continue
		}
		switch ms.Type {
		case ebpf.ProgramArray:
			ms.Contents = nil
		case ebpf.Hash, ebpf.PerCPUHash:
			ms.Flags |= bpfFNoPrealloc
		}
	}
	// Variables of a section the candidate no longer reads (folded
	// .rodata) would make the loader look for its map.
	for vn, v := range out.Variables {
		if _, ok := out.Maps[v.SectionName]; !ok {
			delete(out.Variables, vn)
		}
	}
	return out
}

// ranPasses names the passes a pipeline run executed, in order.
func ranPasses(results []passes.PassResult) []string {
	out := make([]string, 0, len(results))
	for _, r := range results {
		out = append(out, r.Name)
	}
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// CheckHeatmap validates a heatmap against the object: every map must
// exist and every key must have the map's key size. The error names the
// map and the key's index, as mapstate's errors do for the state.
func CheckHeatmap(spec *ebpf.CollectionSpec, heat *heatmap.Heatmap) error {
	if heat == nil {
		return nil
	}
	names := make([]string, 0, len(heat.Maps))
	for n := range heat.Maps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		ms, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("heatmap: map %q does not exist in the object", name)
		}
		for i, k := range heat.Maps[name] {
			if uint32(len(k.Key)) != ms.KeySize {
				return fmt.Errorf("heatmap: map %q key %d: %d bytes, map key size is %d", name, i, len(k.Key), ms.KeySize)
			}
		}
	}
	return nil
}
