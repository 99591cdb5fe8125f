package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/inspect"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/optimize"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/traffic"
	"github.com/morpheus-go/morpheus/verify"
)

// exitStrict is the exit status of `optimize --strict` when a candidate
// failed the verifier or the differential test.
const exitStrict = 2

// optimizeFlags are the options of `morpheus optimize`.
type optimizeFlags struct {
	program   string
	statePath string
	heatPath  string
	passList  string
	pcapPath  string
	maxInline int
	topK      int
	generate  int
	seed      int64
	ingress   uint32
	asJSON    bool
	diff      bool
	strict    bool
}

func passHelp() string {
	var b strings.Builder
	width := 0
	for _, p := range passes.Table {
		width = max(width, len(p.Name))
	}
	for _, p := range passes.Table {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, p.Name, p.Doc)
	}
	return b.String()
}

func newOptimizeCmd() *cobra.Command {
	var f optimizeFlags
	def := passes.DefaultOptions()
	cmd := &cobra.Command{
		Use:   "optimize OBJ",
		Short: "Specialize the programs of a BPF object to map contents and hot keys, then verify the result",
		Long: "Specialize the programs of a BPF object to its map contents (--state) and hot keys (--heatmap),\n" +
			"load every candidate through the kernel verifier and run it side by side with the original on\n" +
			"trace packets (--packets), packets generated from the map contents and edge cases. Nothing is\n" +
			"attached or swapped: this shows what the optimizer would do and proves it.\n\n" +
			"Passes, in pipeline order (--passes selects some; \"none\" only lifts and lowers):\n" + passHelp() + "\n" +
			"--state is the map contents as JSON: {\"variables\": {NAME: HEX}, \"maps\": {NAME: {\"entries\": [{\"key\": HEX, \"value\": HEX}]}}}.\n" +
			"--heatmap is the hot keys as JSON: {\"maps\": {NAME: [{\"key\": HEX, \"count\": N}]}}.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOptimize(cmd.Context(), cmd.OutOrStdout(), args[0], f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.program, "program", "", "optimize only this program")
	fl.StringVar(&f.statePath, "state", "", "map contents and global variables (JSON, see above)")
	fl.StringVar(&f.heatPath, "heatmap", "", "hot keys per map (JSON, see above)")
	fl.StringVar(&f.passList, "passes", "", "comma-separated passes to run (default all; none = round trip only)")
	fl.StringVar(&f.pcapPath, "packets", "", "pcap file (Ethernet) of trace packets for the differential test")
	fl.IntVar(&f.maxInline, "max-inline", def.MaxInline, "inline maps with at most this many entries")
	fl.IntVar(&f.topK, "top-k", def.TopK, "most hot keys compiled in front of a lookup (the cost model picks how many pay)")
	fl.IntVar(&f.generate, "generate", 2000, "packets to generate from the map contents (a quarter as many edge cases are added)")
	fl.Int64Var(&f.seed, "seed", 1, "seed of the generated packets")
	fl.Uint32Var(&f.ingress, "ingress", 0, "XDP ingress_ifindex of the test runs (1 = lo; 0 = no context), and the interface the program is specialized to (checked at its entry)")
	fl.BoolVar(&f.asJSON, "json", false, "print stable JSON instead of text")
	fl.BoolVar(&f.diff, "diff", false, "print an annotated before/after listing of every rewritten block")
	fl.BoolVar(&f.strict, "strict", false, fmt.Sprintf("exit with status %d if a candidate fails the verifier or the differential test", exitStrict))
	return cmd
}

// optimizeOutput is the --json document. Field names are stable.
type optimizeOutput struct {
	Object   string          `json:"object"`
	Programs []programOutput `json:"programs"`
}

type programOutput struct {
	*optimize.ProgramReport
	// OptimizeWithVerifier is the optimizer's time plus the verifier's:
	// what a cycle costs before the differential test.
	OptimizeWithVerifier time.Duration `json:"optimize_with_verifier_ns"`
}

func runOptimize(ctx context.Context, out io.Writer, obj string, f optimizeFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	spec, err := inspect.LoadSpec(obj)
	if err != nil {
		return err
	}
	state := mapstate.New()
	if f.statePath != "" {
		if state, err = mapstate.ReadFile(f.statePath); err != nil {
			return fmt.Errorf("--state: %w", err)
		}
		if err := state.Check(spec); err != nil {
			return fmt.Errorf("--state %s: %w", f.statePath, err)
		}
	}
	var heat *heatmap.Heatmap
	if f.heatPath != "" {
		if heat, err = heatmap.ReadFile(f.heatPath); err != nil {
			return fmt.Errorf("--heatmap: %w", err)
		}
		if err := optimize.CheckHeatmap(spec, heat); err != nil {
			return fmt.Errorf("--heatmap %s: %w", f.heatPath, err)
		}
	}
	popts := passes.Options{MaxInline: f.maxInline, TopK: f.topK, Ingress: f.ingress}
	if popts.Passes, err = passes.ParsePassList(f.passList); err != nil {
		return fmt.Errorf("--passes: %w", err)
	}
	if f.maxInline < 0 || f.topK < 0 || f.generate < 0 {
		return errors.New("--max-inline, --top-k and --generate must not be negative")
	}
	opts := optimize.Options{Program: f.program, Passes: popts, Generated: f.generate, Seed: f.seed}
	if f.generate == 0 {
		opts.Generated = -1
	}
	if f.pcapPath != "" {
		if opts.Packets, err = traffic.ReadPcapFile(f.pcapPath); err != nil {
			return fmt.Errorf("--packets: %w", err)
		}
		for i, p := range opts.Packets {
			if len(p) < verify.MinFrameSize {
				return fmt.Errorf("--packets %s: packet %d has %d bytes; the kernel's test runner needs at least %d (an Ethernet header)",
					f.pcapPath, i, len(p), verify.MinFrameSize)
			}
		}
	}
	if f.ingress != 0 {
		c := make([]byte, 24) // struct xdp_md
		binary.NativeEndian.PutUint32(c[12:], f.ingress)
		opts.Context = c
	}
	rep, err := optimize.Run(ctx, spec, state, heat, opts)
	if err != nil {
		return err
	}

	if f.asJSON {
		doc := optimizeOutput{Object: obj, Programs: []programOutput{}}
		for _, p := range rep.Programs {
			doc.Programs = append(doc.Programs, programOutput{ProgramReport: p, OptimizeWithVerifier: p.OptimizeTime + p.VerifyTime})
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(doc); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "Object: %s\n", obj)
		for _, p := range rep.Programs {
			fmt.Fprintln(out)
			writeProgramText(out, p)
			if f.diff {
				fmt.Fprintln(out)
				if err := p.WriteDiff(out); err != nil {
					return err
				}
			}
		}
	}
	if f.strict {
		var failed []string
		for _, p := range rep.Programs {
			if candidateFailed(p) {
				failed = append(failed, p.Program)
			}
		}
		if len(failed) > 0 {
			return &exitError{code: exitStrict, err: fmt.Errorf("--strict: candidate failed for %s", strings.Join(failed, ", "))}
		}
	}
	return nil
}

// candidateFailed reports whether a candidate was built and then failed a
// check: the verifier, the differential test, lowering or a pass. A
// program left alone because it cannot be analysed is not a failure.
func candidateFailed(p *optimize.ProgramReport) bool {
	switch {
	case p.Accepted:
		return false
	case p.Verifier != "" && p.Verifier != "ok":
		return true
	case p.Differential != nil && !p.Differential.Passed():
		return true
	}
	return strings.HasPrefix(p.Reason, "lowering failed") || strings.Contains(p.Reason, "optimization failed")
}

// writeProgramText prints one program's report. Durations end their
// lines so that the layout does not depend on them.
func writeProgramText(w io.Writer, p *optimize.ProgramReport) {
	status := "accepted"
	if !p.Accepted {
		status = "not accepted: " + p.Reason
		if p.Reason == "" {
			status = "not accepted"
		}
	}
	fmt.Fprintf(w, "Program %s: %s\n", p.Program, status)
	if p.InstructionsAfter > 0 {
		fmt.Fprintf(w, "  instructions   %d -> %d (%+d)\n", p.InstructionsBefore, p.InstructionsAfter, p.InstructionsAfter-p.InstructionsBefore)
	} else {
		fmt.Fprintf(w, "  instructions   %d\n", p.InstructionsBefore)
	}
	if len(p.Passes) > 0 {
		fmt.Fprintln(w, "  passes")
		for _, r := range p.Passes {
			unit := "changes"
			if r.Changes == 1 {
				unit = "change"
			}
			fmt.Fprintf(w, "    %-12s %3d %-8s %v\n", r.Name, r.Changes, unit, roundDur(r.Duration))
		}
	}
	if len(p.Remarks) > 0 {
		fmt.Fprintln(w, "  remarks")
		for _, g := range optimize.GroupRemarks(p.Remarks, true) {
			fmt.Fprintf(w, "    %s\n", g)
		}
	}
	if p.Verifier != "" {
		v := p.Verifier
		if v != "ok" {
			v = "rejected\n      " + strings.ReplaceAll(v, "\n", "\n      ")
		}
		fmt.Fprintf(w, "  verifier       %s\n", v)
	}
	if d := p.Differential; d != nil {
		verdict := "passed"
		if !d.Passed() {
			verdict = "FAILED"
		}
		fmt.Fprintf(w, "  differential   %s: %d/%d packets, %d runs through %s, %d mismatches; maps compared %s (%d checks)\n",
			verdict, d.Packets, d.Total, d.Runs, strings.Join(d.Programs, ", "), d.MismatchCount, d.MapCheck, d.MapChecks)
		if d.Skipped > 0 {
			fmt.Fprintf(w, "                 %d runs refused by the kernel for original and candidate alike (first: %s)\n", d.Skipped, d.SkipReason)
		}
		for _, m := range d.Mismatches {
			fmt.Fprintf(w, "                 %s\n", m)
		}
	}
	if p.InstructionsAfter > 0 {
		fmt.Fprintf(w, "  time           optimize %v, with verifier %v, with differential test %v\n",
			roundDur(p.OptimizeTime), roundDur(p.OptimizeTime+p.VerifyTime), roundDur(p.OptimizeTime+p.VerifyTime+p.DifferentialNS))
	}
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
