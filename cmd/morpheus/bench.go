package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/instrument"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/testbed"
	"github.com/morpheus-go/morpheus/traffic"
)

// seedSpeedups are the throughput speedups the seed (Morpheus, ASPLOS'22)
// published per NF at high, low and no locality: the targets to beat.
var seedSpeedups = map[string]map[string]float64{
	"router":   {"high": 1.94, "low": 1.77, "none": 1.10},
	"l2switch": {"high": 1.53, "low": 1.16, "none": 1.14},
	"lb":       {"high": 1.26, "low": 1.21, "none": 1.11},
	"firewall": {"high": 1.38, "low": 1.32, "none": 1.31},
}

// Markers delimiting the generated part of BENCHMARKS.md; everything
// outside them is kept when --markdown-file rewrites the file.
const (
	mdBegin = "<!-- morpheus bench --all --markdown: begin (generated, do not edit) -->"
	mdEnd   = "<!-- morpheus bench --all --markdown: end -->"
)

// benchFlags are the bench command's own flags.
type benchFlags struct {
	scenarioFlags
	tracePath    string
	rounds       int
	repeat       int
	warmup       int
	diffPackets  int
	generated    int
	all          bool
	asJSON       bool
	markdown     bool
	markdownFile string
	noProgress   bool
	topK         int
	maxInline    int
	live         bool
	period       time.Duration
	heat         string
	sampleRate   float64
	control      bool
	cold         bool
	against      []string
}

func newBenchCmd() *cobra.Command {
	var bf benchFlags
	cmd := &cobra.Command{
		Use:   "bench --nf NAME [--locality L] | --all",
		Short: "Measure an NF's original and optimized programs side by side (in-kernel replay)",
		Long: "Build the NF at the seed evaluation's sizes (or --config), its trace (or --trace), the\n" +
			"heatmap, run the optimizer (passes, verifier, differential test) and measure the original\n" +
			"and the optimized program against the harness floor in alternated rounds with\n" +
			"BPF_PROG_TEST_RUN. Prints medians (ns/packet) and the speedups: the NF's own cost (floor\n" +
			"removed) and end to end. --all runs every NF at every locality; --markdown prints the\n" +
			"BENCHMARKS.md tables and --markdown-file FILE rewrites the generated part of FILE.\n" +
			"--against OBJ (repeatable) measures BPF objects instead of the optimizer's output: builds of\n" +
			"the NF with the same maps and entry program (hand-specialized, with a part removed), each\n" +
			"loaded with the same warmed-up map state and measured in the same rounds as the original.\n" +
			"Needs root. Only ratios from one run are comparable: the machine's noise is large.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd, &bf) },
	}
	fs := cmd.Flags()
	bf.register(fs, true)
	fs.StringVar(&bf.tracePath, "trace", "", "replay this pcap instead of a generated trace")
	fs.IntVar(&bf.rounds, "rounds", 7, "alternated rounds (medians are reported)")
	fs.IntVar(&bf.repeat, "repeat", 1<<20, "packets replayed per measurement")
	fs.IntVar(&bf.warmup, "warmup", 1<<16, "packets replayed into each program before the first round")
	fs.IntVar(&bf.diffPackets, "diff-packets", 500, "trace packets in the optimizer's differential test")
	fs.IntVar(&bf.generated, "generated", 500, "packets generated from the map contents for the differential test")
	fs.BoolVar(&bf.all, "all", false, "every NF at every locality")
	fs.BoolVar(&bf.asJSON, "json", false, "print stable JSON (an array with --all)")
	fs.BoolVar(&bf.markdown, "markdown", false, "print the BENCHMARKS.md tables")
	fs.StringVar(&bf.markdownFile, "markdown-file", "", "rewrite the generated section of this file (BENCHMARKS.md)")
	fs.BoolVar(&bf.noProgress, "no-progress", false, "no progress bars (they are shown only when stderr is a terminal)")
	fs.BoolVar(&bf.live, "live", false, "measure on a live veth testbed instead: generator in live-frames mode, NF in native XDP, bpf_stats")
	fs.DurationVar(&bf.period, "period", time.Second, "with --live: how long each program carries the traffic per round")
	fs.BoolVar(&bf.control, "control", true, "also measure a second copy of the original: original/copy is the run's noise floor for a ratio")
	fs.StringVar(&bf.heat, "heat", bench.HeatInstrument, "heatmap source: instrument (profile the instrumented NF over the trace) or trace (exact key counts of the trace)")
	fs.Float64Var(&bf.sampleRate, "sample-rate", instrument.DefaultRate, "with --heat instrument: the instrumentation's sampling rate")
	def := passes.DefaultOptions()
	fs.BoolVar(&bf.cold, "cold", false, "specialize to the configuration as given, not to the maps after a warm-up replay of the trace through the original (learned addresses, connections)")
	fs.IntVar(&bf.topK, "top-k", def.TopK, "most hot keys compiled in front of a lookup (the cost model picks how many pay)")
	fs.IntVar(&bf.maxInline, "max-inline", def.MaxInline, "largest map the mapinline pass inlines whole")
	fs.StringArrayVar(&bf.against, "against", nil, "measure this BPF object (a variant build of the NF with the same maps and entry program) "+
		"against the original instead of the optimizer's output, which then does not run; repeatable")
	return cmd
}

// benchJob is one NF at one locality.
type benchJob struct {
	nf  string
	loc traffic.Locality
}

func runBench(cmd *cobra.Command, bf *benchFlags) error {
	var jobs []benchJob
	switch {
	case bf.all:
		if bf.tracePath != "" || bf.config != "" {
			return errors.New("--all generates every configuration and trace: drop --trace and --config")
		}
		for _, nf := range bench.NFs {
			for _, loc := range traffic.Localities {
				jobs = append(jobs, benchJob{nf, loc})
			}
		}
	case bf.nf == "":
		return errors.New("--nf or --all is required")
	default:
		loc, err := traffic.ParseLocality(bf.locality)
		if err != nil {
			return err
		}
		jobs = []benchJob{{bf.nf, loc}}
	}
	if len(bf.against) > 0 {
		if bf.all || bf.live || bf.markdown || bf.markdownFile != "" {
			return errors.New("--against measures one NF in the replay harness: drop --all, --live and --markdown")
		}
		return runAgainst(cmd, bf, jobs[0])
	}
	if bf.live {
		if bf.all || bf.markdown || bf.markdownFile != "" {
			return errors.New("--live measures one NF: drop --all and --markdown")
		}
		return runLive(cmd, bf, jobs[0])
	}
	frames, err := bf.frames()
	if err != nil {
		return err
	}
	machine := describeMachine()
	started := time.Now().UTC()
	var results []*bench.Comparison
	for i, j := range jobs {
		sc, err := bf.scenario(j, frames)
		if err != nil {
			return err
		}
		bar := newStageBar(cmd.ErrOrStderr(), bf.noProgress || !isTerminal(cmd.ErrOrStderr()), fmt.Sprintf("[%d/%d] %s %s", i+1, len(jobs), j.nf, sc.Locality))
		co := bf.compareOptions()
		co.Progress = bar.update
		cmp, err := bench.Compare(cmd.Context(), sc, co)
		bar.finish()
		if err != nil {
			return fmt.Errorf("%s, %s locality: %w", j.nf, sc.Locality, err)
		}
		results = append(results, cmp)
	}

	out := cmd.OutOrStdout()
	switch {
	case bf.markdownFile != "":
		md := renderMarkdown(results, bf, machine, started)
		if err := spliceMarkdown(bf.markdownFile, md); err != nil {
			return err
		}
		fmt.Fprintf(out, "rewrote the generated section of %s\n", bf.markdownFile)
	case bf.markdown:
		fmt.Fprint(out, renderMarkdown(results, bf, machine, started))
	case bf.asJSON:
		if len(results) == 1 && !bf.all {
			return writeJSON(cmd, results[0])
		}
		return writeJSON(cmd, results)
	default:
		for i, c := range results {
			if i > 0 {
				fmt.Fprintln(out)
			}
			writeComparison(out, c)
		}
	}
	return nil
}

// frames reads the --trace pcap; nil without --trace.
func (bf *benchFlags) frames() ([][]byte, error) {
	if bf.tracePath == "" {
		return nil, nil
	}
	return traffic.ReadPcapFile(bf.tracePath)
}

// scenario builds the scenario of one job, replaying frames if given.
func (bf *benchFlags) scenario(j benchJob, frames [][]byte) (*bench.Scenario, error) {
	o, err := bf.options(j.nf, j.loc)
	if err != nil {
		return nil, err
	}
	o.Frames = frames
	return bench.NewScenario(o)
}

// runAgainst measures the --against objects against the original NF of
// one job, with the scenario, state and harness the optimizer's output
// would be measured with.
func runAgainst(cmd *cobra.Command, bf *benchFlags, j benchJob) error {
	frames, err := bf.frames()
	if err != nil {
		return err
	}
	sc, err := bf.scenario(j, frames)
	if err != nil {
		return err
	}
	var variants []*bench.Variant
	for _, path := range bf.against {
		v, err := bench.LoadVariant(sc, path)
		if err != nil {
			return err
		}
		variants = append(variants, v)
	}
	bar := newStageBar(cmd.ErrOrStderr(), bf.noProgress || !isTerminal(cmd.ErrOrStderr()), fmt.Sprintf("%s %s against %d objects", j.nf, sc.Locality, len(variants)))
	co := bf.compareOptions()
	co.Progress = bar.update
	vc, err := bench.CompareVariants(cmd.Context(), sc, variants, co)
	bar.finish()
	if err != nil {
		return fmt.Errorf("%s, %s locality: %w", j.nf, sc.Locality, err)
	}
	if bf.asJSON {
		return writeJSON(cmd, vc)
	}
	writeVariants(cmd.OutOrStdout(), vc)
	return nil
}

// writeVariants prints a VariantComparison as a table, a row per object.
func writeVariants(w io.Writer, vc *bench.VariantComparison) {
	state := "the warmed-up state"
	if !vc.Warm {
		state = "the configuration"
	}
	fmt.Fprintf(w, "%s, %s locality: %d packets; maps filled from %s; the original against %d objects\n",
		vc.NF, vc.Locality, vc.Packets, state, len(vc.Variants))
	r := vc.Result
	fmt.Fprintf(w, "  medians of %d alternated rounds x %d packets:\n", r.Rounds, r.Repeat)
	fmt.Fprintf(w, "  floor      %7.1f ns/pkt\n", vc.FloorNs)
	fmt.Fprintf(w, "  original   %7.1f ns/pkt (net of floor, spread %.0f%%, xlated %d)\n", vc.OriginalNs, 100*vc.OriginalSpread, vc.XlatedOriginal)
	if vc.Control > 0 {
		fmt.Fprintf(w, "  noise      %7.2fx original vs an identical copy in the same rounds\n", vc.Control)
	}
	width := len("object")
	for _, v := range vc.Variants {
		width = max(width, len(v.Name))
	}
	fmt.Fprintf(w, "  %-*s %8s %8s %10s %7s %7s  %s\n", width, "object", "ns/pkt", "speedup", "end to end", "spread", "xlated", "path")
	for _, v := range vc.Variants {
		fmt.Fprintf(w, "  %-*s %8.1f %8s %10s %6.0f%% %7d  %s\n",
			width, v.Name, v.NsPerPacket, fmtRatio(v.Speedup), fmtRatio(v.EndToEnd), 100*v.Spread, v.Xlated, v.Path)
	}
}

// compareOptions are the optimizer and measurement settings of the flags.
func (bf *benchFlags) compareOptions() bench.CompareOptions {
	return bench.CompareOptions{
		Measure:     bench.Options{Rounds: bf.rounds, Repeat: bf.repeat, Warmup: bf.warmup},
		DiffPackets: bf.diffPackets,
		Generated:   bf.generated,
		Seed:        int64(bf.seed),
		Passes:      passes.Options{TopK: bf.topK, MaxInline: bf.maxInline},
		HeatFrom:    bf.heat,
		Profile:     bench.ProfileOptions{Rate: bf.sampleRate},
		Control:     bf.control,
		Cold:        bf.cold,
	}
}

// liveComparison is what `bench --live` reports.
type liveComparison struct {
	NF       string `json:"nf"`
	Locality string `json:"locality"`
	Packets  int    `json:"packets"`
	// Interface is the NF's veth end in its namespace.
	Interface  string                 `json:"interface"`
	HeatSource string                 `json:"heat_source"`
	Accepted   bool                   `json:"accepted"`
	Programs   []bench.ProgramOutcome `json:"programs"`
	// Original and Optimized are the medians over the rounds.
	Original  testbed.LiveStat `json:"original"`
	Optimized testbed.LiveStat `json:"optimized"`
	// Speedup is the ratio of ns/packet (bpf_stats run time per run),
	// PPSRatio the ratio of packets per second the NF processed.
	Speedup   float64          `json:"speedup"`
	PPSRatio  float64          `json:"pps_ratio"`
	Generator testbed.GenStats `json:"generator"`
}

// runLive measures one NF on a veth testbed: the scenario is built for
// the testbed's NF interface, the optimizer runs as for the replay
// harness, then original and optimized alternate on the interface under
// live traffic.
func runLive(cmd *cobra.Command, bf *benchFlags, j benchJob) error {
	ctx := cmd.Context()
	tb, err := testbed.New(ctx, testbed.Options{})
	if err != nil {
		return err
	}
	defer tb.Close()
	o, err := bf.options(j.nf, j.loc)
	if err != nil {
		return err
	}
	if o.Frames, err = bf.frames(); err != nil {
		return err
	}
	o.Ingress = uint32(tb.NFIfindex())
	sc, err := bench.NewScenario(o)
	if err != nil {
		return err
	}
	if err := tb.LoadTrace(sc.Frames); err != nil {
		return err
	}
	bar := newStageBar(cmd.ErrOrStderr(), bf.noProgress || !isTerminal(cmd.ErrOrStderr()), fmt.Sprintf("%s %s live", j.nf, sc.Locality))
	co := bf.compareOptions()
	co.Progress = bar.update
	p, err := bench.Optimize(ctx, sc, co)
	if err != nil {
		bar.finish()
		return err
	}
	defer p.Close()
	res, err := tb.CompareLive(ctx, map[string]*ebpf.Program{
		bench.OriginalName:  p.Original.Programs[sc.Program],
		bench.OptimizedName: p.Optimized.Programs[sc.Program],
	}, testbed.LiveOptions{Rounds: bf.rounds, Period: bf.period, Progress: func(done, total int) { bar.update("measure", done, total) }})
	bar.finish()
	if err != nil {
		return err
	}
	lc := liveComparison{
		NF: sc.NF, Locality: sc.Locality, Packets: len(sc.Frames), Interface: tb.NFLinkName(),
		HeatSource: p.HeatSource, Accepted: p.Accepted, Programs: p.Programs, Generator: res.Generator,
	}
	lc.Original, _ = res.Stat(bench.OriginalName)
	lc.Optimized, _ = res.Stat(bench.OptimizedName)
	lc.Speedup = lc.Original.NsPerPacket / lc.Optimized.NsPerPacket
	lc.PPSRatio = lc.Optimized.PPS / lc.Original.PPS
	if bf.asJSON {
		return writeJSON(cmd, lc)
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "%s, %s locality, live on %s: %d-packet trace; heatmap: %s\n", lc.NF, lc.Locality, lc.Interface, lc.Packets, lc.HeatSource)
	writeOutcomes(w, lc.Programs)
	fmt.Fprintf(w, "  medians of %d alternated rounds of %s (bpf_stats; generator %.2f Mpps):\n", bf.rounds, bf.period, lc.Generator.PPS()/1e6)
	fmt.Fprintf(w, "  original   %7.1f ns/pkt  %6.3f Mpps\n", lc.Original.NsPerPacket, lc.Original.PPS/1e6)
	fmt.Fprintf(w, "  optimized  %7.1f ns/pkt  %6.3f Mpps\n", lc.Optimized.NsPerPacket, lc.Optimized.PPS/1e6)
	fmt.Fprintf(w, "  speedup    %7.2fx ns/pkt, %.2fx pps\n", lc.Speedup, lc.PPSRatio)
	return nil
}

// isTerminal reports whether w is a terminal: progress bars redrawn into a
// file or pipe are noise.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// stageBar shows the stages of one comparison as a progress bar.
type stageBar struct {
	w       io.Writer
	off     bool
	desc    string
	bar     *progressbar.ProgressBar
	measure bool
}

func newStageBar(w io.Writer, off bool, desc string) *stageBar {
	return &stageBar{w: w, off: off, desc: desc}
}

func (s *stageBar) update(stage string, done, total int) {
	if s.off {
		return
	}
	if stage != "measure" {
		if s.bar == nil {
			s.bar = progressbar.NewOptions(-1, progressbar.OptionSetWriter(s.w),
				progressbar.OptionSetDescription(s.desc+": "+stage), progressbar.OptionSpinnerType(14),
				progressbar.OptionClearOnFinish())
		}
		s.bar.Describe(s.desc + ": " + stage)
		s.bar.Add(1) //nolint:errcheck // display only
		return
	}
	if !s.measure {
		if s.bar != nil {
			s.bar.Finish() //nolint:errcheck // display only
		}
		s.measure = true
		s.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(s.w),
			progressbar.OptionSetDescription(s.desc+": measure"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}
	s.bar.Set(done) //nolint:errcheck // display only
}

func (s *stageBar) finish() {
	if s.bar != nil {
		s.bar.Finish() //nolint:errcheck // display only
		fmt.Fprintln(s.w)
	}
}

func writeComparison(w io.Writer, c *bench.Comparison) {
	fmt.Fprintf(w, "%s, %s locality: %d packets; heatmap: %s\n", c.NF, c.Locality, c.Packets, c.HeatSource)
	writeOutcomes(w, c.Programs)
	r := c.Result
	fmt.Fprintf(w, "  medians of %d alternated rounds x %d packets (spread up to %.0f%%), optimizer %.1fs:\n",
		r.Rounds, r.Repeat, 100*c.Spread, c.OptimizeTime.Seconds())
	fmt.Fprintf(w, "  floor      %7.1f ns/pkt\n", c.FloorNs)
	fmt.Fprintf(w, "  original   %7.1f ns/pkt (net of floor)\n", c.OriginalNs)
	fmt.Fprintf(w, "  optimized  %7.1f ns/pkt (net of floor)\n", c.OptimizedNs)
	fmt.Fprintf(w, "  speedup    %7.2fx NF cost, %.2fx end to end", c.Speedup, c.EndToEnd)
	if t, ok := seedSpeedups[c.NF][c.Locality]; ok {
		fmt.Fprintf(w, " (seed: %.2fx)", t)
	}
	fmt.Fprintln(w)
	if c.Control > 0 {
		fmt.Fprintf(w, "  noise      %7.2fx original vs an identical copy in the same rounds\n", c.Control)
	}
}

func writeOutcomes(w io.Writer, progs []bench.ProgramOutcome) {
	for _, p := range progs {
		state := "accepted"
		if !p.Accepted {
			state = "not replaced: " + p.Reason
		}
		fmt.Fprintf(w, "  %-14s %s; %d -> %d instructions (xlated %d -> %d), %d rewrites\n",
			p.Program, state, p.InsnsBefore, p.InsnsAfter, p.XlatedOriginal, p.XlatedOptimized, len(p.Applied))
	}
}

// machine is what the tables say about where they were measured.
type machine struct {
	Kernel, CPU string
	CPUs        int
	Load        string
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), CPU: "unknown CPU", Kernel: "unknown kernel"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = "Linux " + unix.ByteSliceToString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.Load = strings.Join(f[:3], " ")
		}
	}
	return m
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", v)
}

// commandLine reconstructs the command that regenerates the tables.
func commandLine(bf *benchFlags) string {
	s := "go run ./cmd/morpheus bench --all --markdown-file BENCHMARKS.md"
	if bf.rounds != 7 {
		s += fmt.Sprintf(" --rounds %d", bf.rounds)
	}
	if bf.repeat != 1<<20 {
		s += fmt.Sprintf(" --repeat %d", bf.repeat)
	}
	if bf.packets != defaultPackets {
		s += fmt.Sprintf(" --packets %d", bf.packets)
	}
	if bf.seed != 1 {
		s += fmt.Sprintf(" --seed %d", bf.seed)
	}
	if !bf.control {
		s += " --control=false"
	}
	if bf.cold {
		s += " --cold"
	}
	if bf.heat != bench.HeatInstrument {
		s += " --heat " + bf.heat
	}
	if bf.sampleRate != instrument.DefaultRate {
		s += fmt.Sprintf(" --sample-rate %g", bf.sampleRate)
	}
	def := passes.DefaultOptions()
	if bf.topK != def.TopK {
		s += fmt.Sprintf(" --top-k %d", bf.topK)
	}
	if bf.maxInline != def.MaxInline {
		s += fmt.Sprintf(" --max-inline %d", bf.maxInline)
	}
	return s
}

// renderMarkdown formats the results as the generated section of
// BENCHMARKS.md: a summary against the seed's speedups, then one table per
// NF with a row per locality.
func renderMarkdown(results []*bench.Comparison, bf *benchFlags, m machine, when time.Time) string {
	var b bytes.Buffer
	fmt.Fprintln(&b, mdBegin)
	fmt.Fprintf(&b, "\nGenerated %s by `%s`.\n\n", when.Format("2006-01-02 15:04 UTC"), commandLine(bf))
	fmt.Fprintf(&b, "Machine: %s, %d CPUs (%s), load average at start %s.\n", m.Kernel, m.CPUs, m.CPU, m.Load)
	fmt.Fprintf(&b, "Traces: %d packets of %d bytes, %d hit and %d miss flows, %.0f%% misses, %.0f%% malformed, seed %d; "+
		"configurations at the seed evaluation's sizes. Per measurement %d packets replayed; medians of %d alternated rounds "+
		"(original, optimized, floor). Heatmap: %s. Optimizer: default passes, candidates accepted only after the kernel "+
		"verifier and the differential test; guards on.\n\n",
		bf.packets, bf.size, bf.flows, bf.flows, 100*bf.miss, 100*bf.malformed, bf.seed, bf.repeat, bf.rounds,
		firstHeatSource(results))
	fmt.Fprintln(&b, "NF cost = ns/packet with the harness floor (driver, copy, tail call) of the same round removed; "+
		"speedup = original NF cost / optimized NF cost; end to end = the same with the floor left in. "+
		"Spread = (max-min)/median over the rounds, the larger of the two programs'. "+
		"Noise = original / an identical copy of it measured in the same rounds: a speedup within that distance "+
		"of 1 is not a measured effect.")
	fmt.Fprintln(&b)
	fmt.Fprintln(&b, "### Summary: speedup of the NF cost (seed's published throughput speedup in parentheses)")
	fmt.Fprintln(&b)
	fmt.Fprintln(&b, "| NF | high | low | none |")
	fmt.Fprintln(&b, "|---|---|---|---|")
	byNF := map[string][]*bench.Comparison{}
	var order []string
	for _, c := range results {
		if byNF[c.NF] == nil {
			order = append(order, c.NF)
		}
		byNF[c.NF] = append(byNF[c.NF], c)
	}
	for _, nf := range order {
		cells := map[string]string{}
		for _, c := range byNF[nf] {
			cell := fmtRatio(c.Speedup)
			if t, ok := seedSpeedups[nf][c.Locality]; ok {
				cell += fmt.Sprintf(" (%.2fx)", t)
			}
			cells[c.Locality] = cell
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", nf, orDash(cells["high"]), orDash(cells["low"]), orDash(cells["none"]))
	}
	for _, nf := range order {
		fmt.Fprintf(&b, "\n### %s\n\n", nf)
		fmt.Fprintf(&b, "Command: `go run ./cmd/morpheus bench --nf %s --locality L --rounds %d`\n\n", nf, bf.rounds)
		fmt.Fprintln(&b, "| locality | floor ns/pkt | original ns/pkt | optimized ns/pkt | speedup (NF) | end to end | seed | noise | spread | instructions (xlated) |")
		fmt.Fprintln(&b, "|---|---|---|---|---|---|---|---|---|---|")
		for _, c := range byNF[nf] {
			seed := "-"
			if t, ok := seedSpeedups[nf][c.Locality]; ok {
				seed = fmt.Sprintf("%.2fx", t)
			}
			var insns []string
			for _, p := range c.Programs {
				insns = append(insns, fmt.Sprintf("%s %d→%d", p.Program, p.XlatedOriginal, p.XlatedOptimized))
			}
			noise := "-"
			if c.Control > 0 {
				noise = fmtRatio(c.Control)
			}
			fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %s | %s | %s | %s | %.0f%% | %s |\n",
				c.Locality, c.FloorNs, c.OriginalNs, c.OptimizedNs, fmtRatio(c.Speedup), fmtRatio(c.EndToEnd), seed,
				noise, 100*c.Spread, strings.Join(insns, ", "))
		}
		fmt.Fprintln(&b)
		fmt.Fprintln(&b, "What the optimizer did (high locality run):")
		fmt.Fprintln(&b)
		for _, p := range byNF[nf][0].Programs {
			if !p.Accepted {
				fmt.Fprintf(&b, "- `%s`: not replaced: %s\n", p.Program, p.Reason)
				continue
			}
			fmt.Fprintf(&b, "- `%s`: accepted, %s\n", p.Program, summarizeRemarks(p.Applied))
			for i, r := range p.Skipped {
				if i == 4 {
					fmt.Fprintf(&b, "  - and %d more left alone\n", len(p.Skipped)-4)
					break
				}
				fmt.Fprintf(&b, "  - left alone: %s\n", r)
			}
		}
	}
	fmt.Fprintln(&b)
	fmt.Fprintln(&b, mdEnd)
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func firstHeatSource(results []*bench.Comparison) string {
	if len(results) == 0 {
		return "-"
	}
	return results[0].HeatSource
}

// summarizeRemarks condenses applied remarks to "pass ×n" per pass, plus
// the map-level rewrites other than constant folding (what got cached,
// inlined or specialized), at most maxListed of them.
func summarizeRemarks(applied []string) string {
	const maxListed = 4
	if len(applied) == 0 {
		return "no rewrite applied"
	}
	counts := map[string]int{}
	var passes, maps []string
	for _, r := range applied {
		pass, _, _ := strings.Cut(r, ":")
		if counts[pass] == 0 {
			passes = append(passes, pass)
		}
		counts[pass]++
		if strings.Contains(r, " map ") && pass != "constprop" && pass != "dce" {
			maps = append(maps, r)
		}
	}
	var parts []string
	for _, p := range passes {
		parts = append(parts, fmt.Sprintf("%s ×%d", p, counts[p]))
	}
	s := strings.Join(parts, ", ")
	for i, m := range maps {
		if i == maxListed {
			s += fmt.Sprintf("; and %d more", len(maps)-maxListed)
			break
		}
		s += "; " + m
	}
	return s
}

// spliceMarkdown replaces the generated section of the file at path (the
// lines from mdBegin to mdEnd) with md, or appends md if the file has no
// such section. Everything else in the file is kept.
func spliceMarkdown(path, md string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(old)
	i, j := strings.Index(s, mdBegin), strings.Index(s, mdEnd)
	var out string
	switch {
	case i >= 0 && j > i:
		out = s[:i] + strings.TrimSuffix(md, "\n") + s[j+len(mdEnd):]
	case i < 0 && j < 0:
		out = strings.TrimRight(s, "\n") + "\n\n" + md
	default:
		return fmt.Errorf("%s: unbalanced generated-section markers", path)
	}
	return os.WriteFile(path, []byte(out), 0o644)
}
