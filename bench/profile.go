//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/instrument"
)

// Heatmap sources a Comparison can be built from.
const (
	// HeatInstrument profiles the NF with the instrumented variant
	// (package instrument) over the trace: what the optimizer sees live.
	HeatInstrument = "instrument"
	// HeatTrace counts the trace's lookup keys exactly (TraceHeatmap).
	HeatTrace = "trace"
)

// ProfileOptions controls ProfileHeatmap.
type ProfileOptions struct {
	// Rate is the sampling rate of the instrumentation (default
	// instrument.DefaultRate).
	Rate float64
	// Passes is how many times the trace is replayed through the
	// instrumented NF (default 1).
	Passes int
}

// ProfileHeatmap builds the heatmap the way the optimizer does on a live
// NF: every program of the NF with a lookup worth profiling gets its
// instrumented variant (sampling lookup keys into heat maps), the variant
// collection is loaded with the scenario's configuration, the trace is
// replayed through the NF's entry program with the replay driver, and the
// heat maps are collected. Programs reached by tail calls are profiled
// through the entry program, which calls the variant's copy of them. It
// returns the heatmap and a description of where it came from.
func (sc *Scenario) ProfileHeatmap(ctx context.Context, opts ProfileOptions) (*heatmap.Heatmap, string, error) {
	if opts.Rate == 0 {
		opts.Rate = instrument.DefaultRate
	}
	if opts.Passes <= 0 {
		opts.Passes = 1
	}
	entries := map[string]int{}
	for name, m := range sc.State.Maps {
		entries[name] = len(m.Entries)
	}
	h, err := New(sc.Frames, Config{IngressIfindex: sc.Ingress})
	if err != nil {
		return nil, "", err
	}
	defer h.Close()
	total := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	counts := map[string]map[string]uint64{}
	profiled := 0
	rate := opts.Rate
	for _, name := range slices.Sorted(maps.Keys(sc.Spec.Programs)) {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		if sc.Spec.Programs[name].Type != ebpf.XDP {
			continue
		}
		v, err := instrument.Instrument(sc.Spec, name, instrument.Options{Rate: opts.Rate, Entries: entries})
		if errors.Is(err, instrument.ErrNoSites) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("bench: instrument %s: %w", name, err)
		}
		rate = v.Rate
		heat, err := sc.runVariant(h, v, opts.Passes)
		if err != nil {
			return nil, "", fmt.Errorf("bench: profile %s: %w", name, err)
		}
		profiled++
		for m, keys := range heat.Maps {
			if counts[m] == nil {
				counts[m] = map[string]uint64{}
			}
			for _, k := range keys {
				counts[m][string(k.Key)] += k.Count
			}
		}
	}
	if profiled == 0 {
		// Every lookup is of a small or array map: the passes need no
		// traffic profile for them.
		return total, "instrumented program: no lookup worth profiling", nil
	}
	for m, keys := range counts {
		for k, n := range keys {
			total.Maps[m] = append(total.Maps[m], heatmap.Key{Key: []byte(k), Count: n})
		}
	}
	src := fmt.Sprintf("instrumented program, %.3g%% sampling, %d pass(es) over the trace", 100*rate, opts.Passes)
	return total, src, nil
}

// runVariant loads the variant with the scenario's configuration, replays
// the trace passes times through the entry program and collects the heat
// maps.
func (sc *Scenario) runVariant(h *Harness, v *instrument.Variant, passes int) (*heatmap.Heatmap, error) {
	spec := v.Spec.Copy()
	if err := sc.State.ApplySpec(spec); err != nil {
		return nil, err
	}
	vv := *v
	vv.Spec = spec
	coll, err := vv.Load(nil)
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	if err := sc.State.Apply(coll.Maps); err != nil {
		return nil, err
	}
	entry := coll.Programs[sc.Program]
	if entry == nil {
		return nil, fmt.Errorf("no entry program %s", sc.Program)
	}
	if _, err := h.Run(entry, passes*len(sc.Frames)); err != nil {
		return nil, err
	}
	return v.Collect(coll.Maps)
}
