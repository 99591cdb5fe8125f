//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"
)

// Options controls Measure.
type Options struct {
	// Rounds is the number of alternated rounds; every round measures
	// each program and the floor once. Default 7.
	Rounds int
	// Repeat is the number of packets replayed per measurement. Default
	// 1<<20 (about 0.1-0.3 s per measurement for typical NFs).
	Repeat int
	// Warmup, when positive, replays that many packets into each program
	// before the first round and discards the time (JIT images and map
	// memory into the caches, LRU tables filled). Default 0.
	Warmup int
	// Progress, if set, is called after every measurement with the number
	// done and the total (Rounds x (programs+1)).
	Progress func(done, total int)
}

func (o Options) withDefaults() Options {
	if o.Rounds <= 0 {
		o.Rounds = 7
	}
	if o.Repeat <= 0 {
		o.Repeat = 1 << 20
	}
	return o
}

// Stat is what Measure found for one program.
type Stat struct {
	// Name is the program's key in the map given to Measure, or FloorName.
	Name string
	// Raw holds the mean time per packet of each round, in nanoseconds,
	// harness overhead included, in round order.
	Raw []float64
	// Net holds Raw minus the floor measured in the same round.
	Net []float64
	// RawMedian is the median of Raw.
	RawMedian float64
	// NsPerPacket is the median of Net: the program's own cost per packet.
	// It is 0 for the floor.
	NsPerPacket float64
	// Spread is (max-min)/median of Net, a rough noise indicator; for the
	// floor it is computed over Raw.
	Spread float64
}

// Result is the outcome of Measure.
type Result struct {
	// Packets is the number of packets in the trace.
	Packets int
	// Rounds and Repeat are the options used.
	Rounds, Repeat int
	// Floor is the trivial XDP_DROP NF measured the same way.
	Floor Stat
	// Programs holds one Stat per measured program, sorted by name.
	Programs []Stat
	// Elapsed is the wall-clock time Measure took.
	Elapsed time.Duration
}

// Stat returns the named program's stat.
func (r *Result) Stat(name string) (Stat, bool) {
	if name == FloorName {
		return r.Floor, true
	}
	for _, s := range r.Programs {
		if s.Name == name {
			return s, true
		}
	}
	return Stat{}, false
}

// Ratio returns the cost of program a over the cost of program b, both net
// of the floor (NsPerPacket over NsPerPacket): a ratio above 1 means a is
// slower. An unknown name, the floor, or a b whose net cost is not
// positive makes it NaN. Ratios of programs whose net cost is within the
// noise of the floor (a few ns) are meaningless.
func (r *Result) Ratio(a, b string) float64 {
	sa, oka := r.Stat(a)
	sb, okb := r.Stat(b)
	if !oka || !okb || a == FloorName || b == FloorName || !(sb.NsPerPacket > 0) {
		return math.NaN()
	}
	return sa.NsPerPacket / sb.NsPerPacket
}

// String formats the result as a small table.
func (r *Result) String() string {
	s := fmt.Sprintf("%d packets x %d per measurement, %d rounds, floor %.1f ns/pkt (spread %.0f%%)\n",
		r.Packets, r.Repeat, r.Rounds, r.Floor.RawMedian, 100*r.Floor.Spread)
	for _, p := range r.Programs {
		s += fmt.Sprintf("  %-20s %8.1f ns/pkt net  (%.1f raw, spread %.0f%%)\n", p.Name, p.NsPerPacket, p.RawMedian, 100*p.Spread)
	}
	return s
}

// Measure replays the trace into every program of progs and into the
// floor program, alternating them for opts.Rounds rounds. The order is
// rotated every round (A B F, B F A, F A B, ...) so no program always runs
// right after another. ctx cancels between measurements.
func (h *Harness) Measure(ctx context.Context, progs map[string]*ebpf.Program, opts Options) (*Result, error) {
	opts = opts.withDefaults()
	if len(progs) == 0 {
		return nil, errors.New("bench: no programs to measure")
	}
	if _, clash := progs[FloorName]; clash {
		return nil, fmt.Errorf("bench: %q is reserved for the floor", FloorName)
	}
	names := slices.Sorted(maps.Keys(progs))
	for _, n := range names {
		if progs[n] == nil {
			return nil, fmt.Errorf("bench: program %q is nil", n)
		}
	}
	// Every program must run under the same driver as the floor that is
	// subtracted from it.
	var ln *lane
	for _, n := range names {
		l, err := h.laneFor(progs[n])
		if err != nil {
			return nil, fmt.Errorf("bench: program %q: %w", n, err)
		}
		l.progs.Delete(uint32(0)) //nolint:errcheck // only releases the reference
		if ln != nil && l != ln {
			return nil, fmt.Errorf("bench: programs %q (%s) and %q (%s) need different drivers; load them the same way",
				names[0], ln.class, n, l.class)
		}
		ln = l
	}
	order := append([]string{}, names...)
	order = append(order, FloorName)
	prog := func(name string) *ebpf.Program {
		if name == FloorName {
			return ln.floor
		}
		return progs[name]
	}

	start := time.Now()
	if opts.Warmup > 0 {
		for _, n := range order {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if _, err := h.Run(prog(n), opts.Warmup); err != nil {
				return nil, fmt.Errorf("bench: warm up %q: %w", n, err)
			}
		}
	}

	raw := map[string][]float64{}
	total := opts.Rounds * len(order)
	done := 0
	for round := 0; round < opts.Rounds; round++ {
		for i := range order {
			name := order[(i+round)%len(order)]
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			d, err := h.RunNs(prog(name), opts.Repeat)
			if err != nil {
				return nil, fmt.Errorf("bench: round %d, %q: %w", round, name, err)
			}
			raw[name] = append(raw[name], d)
			done++
			if opts.Progress != nil {
				opts.Progress(done, total)
			}
		}
	}

	res := &Result{Packets: int(h.n), Rounds: opts.Rounds, Repeat: opts.Repeat}
	floor := raw[FloorName]
	res.Floor = Stat{Name: FloorName, Raw: floor, Net: make([]float64, len(floor)), RawMedian: median(floor), Spread: spread(floor)}
	for _, n := range names {
		st := Stat{Name: n, Raw: raw[n], RawMedian: median(raw[n])}
		for i, v := range raw[n] {
			st.Net = append(st.Net, v-floor[i])
		}
		st.NsPerPacket = median(st.Net)
		st.Spread = spread(st.Net)
		res.Programs = append(res.Programs, st)
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

func spread(v []float64) float64 {
	m := median(v)
	if len(v) == 0 || m == 0 {
		return 0
	}
	return (slices.Max(v) - slices.Min(v)) / math.Abs(m)
}
