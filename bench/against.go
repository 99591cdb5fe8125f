//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// Variant is an alternative build of a scenario's NF, measured in place of
// the optimizer's output: a hand-specialized or modified object with the
// same maps, loaded with the same state as the original.
type Variant struct {
	// Name is how results refer to the variant: the object's file name
	// without its extension.
	Name string
	// Path is the object file the variant was read from.
	Path string
	// Spec is the object's collection spec.
	Spec *ebpf.CollectionSpec
}

// LoadVariant reads the BPF object at path as a variant of sc's NF. The
// object must hold sc's entry program as an XDP program: that is the
// program CompareVariants measures in the original's place.
func LoadVariant(sc *Scenario, path string) (*Variant, error) {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, fmt.Errorf("bench: variant %s: %w", path, err)
	}
	ps := spec.Programs[sc.Program]
	if ps == nil {
		return nil, fmt.Errorf("bench: variant %s has no program %q, the entry program of %s (it has: %s)",
			path, sc.Program, sc.NF, strings.Join(slices.Sorted(maps.Keys(spec.Programs)), ", "))
	}
	if ps.Type != ebpf.XDP {
		return nil, fmt.Errorf("bench: variant %s: program %q is %s, want XDP", path, sc.Program, ps.Type)
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	return &Variant{Name: name, Path: path, Spec: spec}, nil
}

// VariantStat is one variant's measurement against the original.
type VariantStat struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// NsPerPacket is the variant's own median ns/packet, the floor of the
	// same round removed.
	NsPerPacket float64 `json:"ns"`
	// Speedup is the original's NF cost over the variant's (above 1: the
	// variant is faster); EndToEnd the same with the floor left in.
	Speedup  float64 `json:"speedup"`
	EndToEnd float64 `json:"end_to_end"`
	// Spread is (max-min)/median of the variant's per-round costs.
	Spread float64 `json:"spread"`
	// Xlated counts the instructions of the variant's verified entry
	// program (see ProgramOutcome.XlatedOptimized).
	Xlated int `json:"xlated"`
}

// VariantComparison is the outcome of CompareVariants: the original and
// every variant, side by side in one run.
type VariantComparison struct {
	NF       string `json:"nf"`
	Locality string `json:"locality"`
	Packets  int    `json:"packets"`
	// Warm is true when the maps were filled from the warmed-up state
	// (Scenario.Warm), false for the configuration as given.
	Warm bool `json:"warm"`
	// FloorNs is the floor's median ns/packet, OriginalNs the original's
	// own cost, OriginalSpread its (max-min)/median over the rounds and
	// XlatedOriginal the size of its verified entry program.
	FloorNs        float64 `json:"floor_ns"`
	OriginalNs     float64 `json:"original_ns"`
	OriginalSpread float64 `json:"original_spread"`
	XlatedOriginal int     `json:"xlated_original"`
	// Control is original / an identical copy of it measured in the same
	// rounds (0 when not measured): the run's noise floor for a ratio.
	Control  float64       `json:"control,omitempty"`
	Variants []VariantStat `json:"variants"`
	// Result is the raw measurement.
	Result *Result `json:"-"`
}

// CompareVariants measures the given variants of sc's NF against the
// original in one run, the way Compare measures the optimizer's output:
// each program is loaded into its own collection whose maps are filled
// from sc.State (after Scenario.Warm unless opts.Cold), and all are
// measured against the same floor in alternated rounds. Only opts.Measure,
// Control, Cold and Progress are used; the optimizer does not run.
func CompareVariants(ctx context.Context, sc *Scenario, variants []*Variant, opts CompareOptions) (*VariantComparison, error) {
	if len(variants) == 0 {
		return nil, errors.New("bench: no variants to measure")
	}
	progs := map[string]*ebpf.Program{}
	reserved := map[string]bool{OriginalName: true, ControlName: true, FloorName: true}
	for _, v := range variants {
		if reserved[v.Name] {
			return nil, fmt.Errorf("bench: variant %s: name %q is taken (%s); rename the object", v.Path, v.Name,
				strings.Join(slices.Sorted(maps.Keys(reserved)), ", "))
		}
		reserved[v.Name] = true
	}
	if !opts.Cold {
		opts.progress("warm", 0, 1)
		if err := sc.Warm(ctx); err != nil {
			return nil, err
		}
		opts.progress("warm", 1, 1)
	}
	opts.progress("load", 0, 1)
	// Every collection stays loaded until the measurement is done.
	var colls []*ebpf.Collection
	defer func() {
		for _, c := range colls {
			c.Close()
		}
	}()
	load := func(name string, spec *ebpf.CollectionSpec) error {
		c, err := sc.load(name, spec)
		if err != nil {
			return err
		}
		colls = append(colls, c)
		progs[name] = c.Programs[sc.Program]
		return nil
	}
	if err := load(OriginalName, sc.Spec); err != nil {
		return nil, err
	}
	if opts.Control {
		if err := load(ControlName, sc.Spec); err != nil {
			return nil, err
		}
	}
	for _, v := range variants {
		if err := load(v.Name, v.Spec); err != nil {
			return nil, fmt.Errorf("%w (variant %s)", err, v.Path)
		}
	}
	opts.progress("load", 1, 1)

	h, err := sc.harness()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	res, err := h.Measure(ctx, progs, opts.measureOptions())
	if err != nil {
		return nil, err
	}
	o, _ := res.Stat(OriginalName)
	vc := &VariantComparison{
		NF: sc.NF, Locality: sc.Locality, Packets: len(sc.Frames), Warm: !opts.Cold,
		FloorNs: res.Floor.RawMedian, OriginalNs: o.NsPerPacket, OriginalSpread: o.Spread,
		XlatedOriginal: xlated(progs[OriginalName]), Result: res,
	}
	if opts.Control {
		vc.Control = res.Ratio(OriginalName, ControlName)
	}
	for _, v := range variants {
		s, _ := res.Stat(v.Name)
		vc.Variants = append(vc.Variants, VariantStat{
			Name: v.Name, Path: v.Path, NsPerPacket: s.NsPerPacket,
			Speedup: res.Ratio(OriginalName, v.Name), EndToEnd: o.RawMedian / s.RawMedian,
			Spread: s.Spread, Xlated: xlated(progs[v.Name]),
		})
	}
	return vc, nil
}
