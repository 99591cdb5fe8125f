//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/optimize"
	"github.com/morpheus-go/morpheus/passes"
)

// Names under which Compare measures the programs. The control is a
// second copy of the original, loaded the same way: original/control is
// the noise floor of a ratio in that run.
const (
	OriginalName  = "original"
	OptimizedName = "optimized"
	ControlName   = "control"
)

// CompareOptions controls Compare.
type CompareOptions struct {
	// Measure is passed to Measure (rounds, repeat, warm-up). Its
	// Progress is replaced by Progress below.
	Measure Options
	// Heat is the heatmap the optimizer specializes to; nil builds one
	// as HeatFrom says.
	Heat *heatmap.Heatmap
	// HeatFrom is HeatInstrument (the default: ProfileHeatmap with
	// Profile) or HeatTrace (TraceHeatmap).
	HeatFrom string
	// Profile tunes ProfileHeatmap.
	Profile ProfileOptions
	// HeatSource describes Heat in the result (default HeatmapSource).
	HeatSource string
	// Passes tunes the optimizer's passes; the zero value means
	// passes.DefaultOptions().
	Passes passes.Options
	// DiffPackets is how many trace packets the optimizer's differential
	// test replays (default 500); Generated packets built from the map
	// contents (default 500) and edge cases are added to them. The test
	// compares every map after every packet while the NF's maps are small,
	// which makes it the optimizer's slowest step.
	DiffPackets, Generated int
	// Seed seeds the optimizer's generated test packets.
	Seed int64
	// Control also measures a second copy of the original, for the noise
	// floor of the ratio (Comparison.Control).
	Control bool
	// Cold specializes to the configuration as given instead of to the
	// state after a warm-up replay of the trace (Scenario.Warm).
	Cold bool
	// Progress, if set, is told the current stage ("warm", "optimize", "load",
	// "measure") and, while measuring, the measurements done and total.
	Progress func(stage string, done, total int)
}

// ProgramOutcome is what the optimizer did to one program of the NF.
type ProgramOutcome struct {
	Program  string `json:"program"`
	Accepted bool   `json:"accepted"`
	// Reason explains a rejected or unchanged candidate.
	Reason string `json:"reason,omitempty"`
	// InsnsBefore and InsnsAfter count the program's instructions before
	// and after the passes, as the optimizer reports them.
	InsnsBefore int `json:"insns_before"`
	InsnsAfter  int `json:"insns_after"`
	// XlatedOriginal and XlatedOptimized count the instructions of the
	// loaded programs after the verifier's rewrites (prog info's xlated
	// image): the static size the kernel runs, not the instructions
	// executed per packet, which the kernel does not report.
	XlatedOriginal  int `json:"xlated_original"`
	XlatedOptimized int `json:"xlated_optimized"`
	// Applied lists the passes' applied remarks, Skipped the maps the
	// hotcache and dss passes considered and left alone, with the reason
	// (once per map and reason).
	Applied []string `json:"applied,omitempty"`
	Skipped []string `json:"skipped,omitempty"`
}

// Comparison is the outcome of Compare: original against optimized, side
// by side in one run.
type Comparison struct {
	NF       string `json:"nf"`
	Locality string `json:"locality"`
	// Packets is the trace length and HeatSource where the heatmap came
	// from.
	Packets    int    `json:"packets"`
	HeatSource string `json:"heat_source"`
	// FloorNs is the floor's median ns/packet (driver, copy, tail call).
	FloorNs float64 `json:"floor_ns"`
	// OriginalNs and OptimizedNs are the NF's own median ns/packet, the
	// floor of the same round removed.
	OriginalNs  float64 `json:"original_ns"`
	OptimizedNs float64 `json:"optimized_ns"`
	// Speedup is OriginalNs / OptimizedNs: the NF's own cost. EndToEnd is
	// the same ratio with the floor left in (what a packet costs through
	// the whole harness).
	Speedup  float64 `json:"speedup"`
	EndToEnd float64 `json:"end_to_end"`
	// Spread is the larger of the two programs' (max-min)/median of the
	// per-round costs: the measurement's noise.
	Spread float64 `json:"spread"`
	// Control is original / control, two identical programs measured in
	// the same rounds: how far from 1 a ratio of this run strays by noise
	// alone. 0 when no control was measured.
	Control float64 `json:"control,omitempty"`
	// Accepted is true when at least one program was replaced.
	Accepted bool             `json:"accepted"`
	Programs []ProgramOutcome `json:"programs"`
	// OptimizeTime is the optimizer's wall-clock time.
	OptimizeTime time.Duration `json:"optimize_time_ns"`
	// Result is the raw measurement.
	Result *Result `json:"-"`
}

// Compare runs the optimizer on the scenario (heatmap → passes →
// verifier → differential test), loads the original NF and the optimized
// one (every accepted program swapped in, tail-call targets included, each
// collection with its own maps filled from the same configuration) and
// measures both against the floor with alternated rounds.
func Compare(ctx context.Context, sc *Scenario, opts CompareOptions) (*Comparison, error) {
	p, err := Optimize(ctx, sc, opts)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	h, err := sc.harness()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return p.Measure(ctx, h, opts.measureOptions())
}

// progress tells opts.Progress, if set, the stage and how far it is.
func (opts CompareOptions) progress(stage string, done, total int) {
	if opts.Progress != nil {
		opts.Progress(stage, done, total)
	}
}

// measureOptions is opts.Measure reporting its progress as the "measure"
// stage of opts.Progress.
func (opts CompareOptions) measureOptions() Options {
	mo := opts.Measure
	if opts.Progress != nil {
		mo.Progress = func(done, total int) { opts.Progress("measure", done, total) }
	}
	return mo
}

// harness loads a replay harness for the scenario's trace.
func (sc *Scenario) harness() (*Harness, error) {
	return New(sc.Frames, Config{IngressIfindex: sc.Ingress})
}

// load loads a copy of spec (the original, the optimized collection or a
// variant of the NF) with the scenario's state: its variables set, its
// maps filled. what names the collection in the error.
func (sc *Scenario) load(what string, spec *ebpf.CollectionSpec) (*ebpf.Collection, error) {
	c, err := sc.State.Load(spec.Copy(), ebpf.CollectionOptions{})
	if err != nil {
		return nil, fmt.Errorf("bench: %s: load %s: %w", sc.NF, what, err)
	}
	return c, nil
}

// Pair is an NF loaded twice from the same configuration: as it is and
// with the optimizer's accepted candidates. Close releases both.
type Pair struct {
	Scenario *Scenario
	// Original and Optimized are the two collections; their entry
	// programs are Scenario.Program. Control is a second copy of the
	// original, loaded when CompareOptions.Control is set.
	Original, Optimized, Control *ebpf.Collection
	// Programs says what the optimizer did to each program.
	Programs []ProgramOutcome
	// Accepted is true when at least one program was replaced.
	Accepted bool
	// HeatSource says where the heatmap came from.
	HeatSource string
	// OptimizeTime is the optimizer's wall-clock time.
	OptimizeTime time.Duration
}

// Close releases both collections.
func (p *Pair) Close() {
	p.Original.Close()
	p.Optimized.Close()
	if p.Control != nil {
		p.Control.Close()
	}
}

// Optimize runs the optimizer on the scenario and loads the original and
// the optimized collection. opts.Measure is not used.
func Optimize(ctx context.Context, sc *Scenario, opts CompareOptions) (*Pair, error) {
	progress := opts.progress
	if !opts.Cold {
		progress("warm", 0, 1)
		if err := sc.Warm(ctx); err != nil {
			return nil, err
		}
		progress("warm", 1, 1)
	}
	heat, src := opts.Heat, opts.HeatSource
	switch {
	case heat != nil:
	case opts.HeatFrom == HeatTrace:
		var err error
		if heat, err = sc.TraceHeatmap(); err != nil {
			return nil, err
		}
		src = HeatmapSource
	case opts.HeatFrom == "" || opts.HeatFrom == HeatInstrument:
		progress("profile", 0, 1)
		var err error
		if heat, src, err = sc.ProfileHeatmap(ctx, opts.Profile); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("bench: unknown heatmap source %q (want %s or %s)", opts.HeatFrom, HeatInstrument, HeatTrace)
	}
	if src == "" {
		src = "given"
	}
	po := opts.Passes
	if po.TopK == 0 && po.MaxInline == 0 && po.Passes == nil {
		po = passes.DefaultOptions()
	}
	nd, ng := opts.DiffPackets, opts.Generated
	if nd == 0 {
		nd = 500
	}
	if ng == 0 {
		ng = 500
	}
	progress("optimize", 0, 1)
	start := time.Now()
	rep, err := optimize.Run(ctx, sc.Spec, sc.State, heat, optimize.Options{
		Passes:    po,
		Packets:   sc.Frames[:min(nd, len(sc.Frames))],
		Generated: ng,
		Seed:      opts.Seed,
		Context:   xdpContext(sc.Ingress),
	})
	if err != nil {
		return nil, fmt.Errorf("bench: optimize %s: %w", sc.NF, err)
	}
	p := &Pair{Scenario: sc, HeatSource: src, OptimizeTime: time.Since(start)}
	progress("optimize", 1, 1)

	optSpec, err := mergeCandidates(sc.Spec, rep)
	if err != nil {
		return nil, err
	}
	progress("load", 0, 1)
	if p.Original, err = sc.load(OriginalName, sc.Spec); err != nil {
		return nil, err
	}
	if p.Optimized, err = sc.load(OptimizedName, optSpec); err != nil {
		p.Original.Close()
		return nil, err
	}
	if opts.Control {
		if p.Control, err = sc.load(ControlName, sc.Spec); err != nil {
			p.Close()
			return nil, err
		}
	}
	progress("load", 1, 1)

	for _, pr := range rep.Programs {
		o := ProgramOutcome{
			Program: pr.Program, Accepted: pr.Accepted, Reason: pr.Reason,
			InsnsBefore: pr.InstructionsBefore, InsnsAfter: pr.InstructionsAfter,
			XlatedOriginal: xlated(p.Original.Programs[pr.Program]), XlatedOptimized: xlated(p.Optimized.Programs[pr.Program]),
		}
		seen := map[string]bool{}
		for _, r := range pr.Remarks {
			switch {
			case r.Applied:
				o.Applied = append(o.Applied, r.String())
			case r.Map != "" && (r.Pass == "hotcache" || r.Pass == "dss"):
				// Why a traffic- or structure-driven rewrite did not
				// happen, once per map and reason.
				k := r.Pass + "\x00" + r.Map + "\x00" + r.Message
				if !seen[k] {
					seen[k] = true
					o.Skipped = append(o.Skipped, fmt.Sprintf("%s: map %s: %s", r.Pass, r.Map, r.Message))
				}
			}
		}
		p.Accepted = p.Accepted || pr.Accepted
		p.Programs = append(p.Programs, o)
	}
	return p, nil
}

// Measure measures the pair's entry programs against the floor with h,
// which must replay the pair's scenario's trace.
func (p *Pair) Measure(ctx context.Context, h *Harness, mo Options) (*Comparison, error) {
	sc := p.Scenario
	cmp := &Comparison{
		NF: sc.NF, Locality: sc.Locality, Packets: len(sc.Frames), HeatSource: p.HeatSource,
		OptimizeTime: p.OptimizeTime, Accepted: p.Accepted, Programs: p.Programs,
	}
	progs := map[string]*ebpf.Program{
		OriginalName:  p.Original.Programs[sc.Program],
		OptimizedName: p.Optimized.Programs[sc.Program],
	}
	if p.Control != nil {
		progs[ControlName] = p.Control.Programs[sc.Program]
	}
	res, err := h.Measure(ctx, progs, mo)
	if err != nil {
		return nil, err
	}
	if p.Control != nil {
		cmp.Control = res.Ratio(OriginalName, ControlName)
	}
	cmp.Result = res
	o, _ := res.Stat(OriginalName)
	q, _ := res.Stat(OptimizedName)
	cmp.FloorNs = res.Floor.RawMedian
	cmp.OriginalNs, cmp.OptimizedNs = o.NsPerPacket, q.NsPerPacket
	cmp.Speedup = res.Ratio(OriginalName, OptimizedName)
	cmp.EndToEnd = o.RawMedian / q.RawMedian
	cmp.Spread = max(o.Spread, q.Spread)
	return cmp, nil
}

// xdpContext is a struct xdp_md with only ingress_ifindex set.
func xdpContext(ingress uint32) []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint32(b[12:], ingress)
	return b
}

// xlated returns the number of instructions of p's verified image, or 0
// when the kernel does not tell.
func xlated(p *ebpf.Program) int {
	if p == nil {
		return 0
	}
	info, err := p.Info()
	if err != nil {
		return 0
	}
	insns, err := info.Instructions()
	if err != nil {
		return 0
	}
	// ld_imm64 counts once, as in the optimizer's counts.
	return len(insns)
}

// mergeCandidates returns a copy of spec with the program of every
// accepted candidate replaced by its optimized instructions, and the maps
// each candidate added (value caches, its guard table). Candidates are
// built independently, so two may add maps of the same name (each has
// its own guard table and numbers its caches from 1): a clash is renamed
// in the later candidate's maps and instructions, so no candidate sees
// another's guards. Program arrays keep naming programs by name, so the
// optimized collection's tail calls reach the optimized targets.
func mergeCandidates(spec *ebpf.CollectionSpec, rep *optimize.Report) (*ebpf.CollectionSpec, error) {
	out := spec.Copy()
	for _, pr := range rep.Programs {
		if !pr.Accepted || pr.Candidate == nil {
			continue
		}
		cs := pr.Candidate.Spec
		rename := map[string]string{}
		for _, name := range slices.Sorted(maps.Keys(cs.Maps)) {
			if _, orig := spec.Maps[name]; orig {
				continue
			}
			ms := cs.Maps[name].Copy()
			newName := name
			for i := 2; out.Maps[newName] != nil; i++ {
				suffix := fmt.Sprintf("_%d", i)
				newName = name[:min(len(name), 15-len(suffix))] + suffix
			}
			if newName != name {
				rename[name] = newName
				ms.Name = newName
			}
			out.Maps[newName] = ms
		}
		ps := cs.Programs[pr.Program]
		if ps == nil || out.Programs[pr.Program] == nil {
			return nil, fmt.Errorf("bench: candidate for %s lacks its program", pr.Program)
		}
		np := ps.Copy()
		for i, ins := range np.Instructions {
			if n, ok := rename[ins.Reference()]; ok && ins.IsLoadFromMap() {
				np.Instructions[i] = ins.WithReference(n)
			}
		}
		out.Programs[pr.Program] = np
	}
	return out, nil
}
