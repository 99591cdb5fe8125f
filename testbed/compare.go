//go:build linux

package testbed

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"
)

// LiveOptions controls CompareLive.
type LiveOptions struct {
	// Rounds is the number of alternated rounds (A B, B A, ...); every
	// round runs each program for Period. Default 4.
	Rounds int
	// Period is how long each program carries the traffic per round.
	// Default 1 s.
	Period time.Duration
	// Settle is skipped after each swap before sampling starts, so the
	// frames queued under the previous program do not count. Default
	// 100 ms.
	Settle time.Duration
	// Progress, if set, is called after every period with the number done
	// and the total.
	Progress func(done, total int)
}

func (o LiveOptions) withDefaults() LiveOptions {
	if o.Rounds <= 0 {
		o.Rounds = 4
	}
	if o.Period <= 0 {
		o.Period = time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 100 * time.Millisecond
	}
	return o
}

// LiveStat is one program's medians over the rounds.
type LiveStat struct {
	Name string `json:"name"`
	// PPS is the median rate the NF processed, NsPerPacket the median of
	// its mean run time per packet (bpf_stats: the NF alone, no harness).
	PPS         float64 `json:"pps"`
	NsPerPacket float64 `json:"ns_per_packet"`
	// Rounds holds each round's summary.
	Rounds []Summary `json:"rounds"`
}

// LiveResult is the outcome of CompareLive.
type LiveResult struct {
	Programs []LiveStat `json:"programs"`
	// Generator is what the generator did over the whole comparison.
	Generator GenStats `json:"generator"`
}

// Stat returns the named program's stat.
func (r *LiveResult) Stat(name string) (LiveStat, bool) {
	for _, s := range r.Programs {
		if s.Name == name {
			return s, true
		}
	}
	return LiveStat{}, false
}

// CompareLive runs live traffic through each of progs in turn, swapping
// them on the NF's interface (bpf_link update) with the generator
// running, and reports per program the medians of the rate and of the
// per-packet run time that bpf_stats gives over each period. The programs
// alternate with a rotating order. The testbed must have a trace loaded;
// the first program is attached if nothing is, and the last one measured
// stays attached.
func (t *Testbed) CompareLive(ctx context.Context, progs map[string]*ebpf.Program, opts LiveOptions) (*LiveResult, error) {
	opts = opts.withDefaults()
	if len(progs) == 0 {
		return nil, errors.New("testbed: no programs to compare")
	}
	names := make([]string, 0, len(progs))
	for n := range progs {
		names = append(names, n)
	}
	sort.Strings(names)
	ids := map[string]ebpf.ProgramID{}
	for _, n := range names {
		info, err := progs[n].Info()
		if err != nil {
			return nil, fmt.Errorf("testbed: program %s: %w", n, err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, fmt.Errorf("testbed: program %s: no program ID", n)
		}
		ids[n] = id
	}
	if t.Attached() == nil {
		if err := t.Attach(progs[names[0]]); err != nil {
			return nil, err
		}
	}
	s := t.StartSampler()
	defer s.Stop()
	if err := t.Start(ctx, 0); err != nil {
		return nil, err
	}
	res := &LiveResult{}
	per := map[string][]Summary{}
	total, done := opts.Rounds*len(names), 0
	err := func() error {
		for r := 0; r < opts.Rounds; r++ {
			for i := range names {
				n := names[(i+r)%len(names)]
				if err := t.Swap(progs[n]); err != nil {
					return err
				}
				if err := sleep(ctx, opts.Settle); err != nil {
					return err
				}
				// The period's rate comes from the program's own counters
				// read at its ends: sampler ticks can be late on a busy
				// machine and leave a short period with one sample.
				before, err := progs[n].Stats()
				if err != nil {
					return fmt.Errorf("testbed: program %s: %w", n, err)
				}
				from := time.Now()
				if err := sleep(ctx, opts.Period); err != nil {
					return err
				}
				after, err := progs[n].Stats()
				if err != nil {
					return fmt.Errorf("testbed: program %s: %w", n, err)
				}
				to := time.Now()
				dn := after.RunCount - before.RunCount
				if dn == 0 {
					return fmt.Errorf("testbed: %s carried no traffic in round %d (generator: %v)", n, r, t.Err())
				}
				sum := Summary{
					Samples:     Summarize(s.Samples(), ids[n], from, to).Samples,
					PPS:         float64(dn) / to.Sub(from).Seconds(),
					NsPerPacket: float64((after.Runtime - before.Runtime).Nanoseconds()) / float64(dn),
				}
				per[n] = append(per[n], sum)
				done++
				if opts.Progress != nil {
					opts.Progress(done, total)
				}
			}
		}
		return nil
	}()
	g, serr := t.Stop()
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	res.Generator = g
	for _, n := range names {
		st := LiveStat{Name: n, Rounds: per[n]}
		var pps, ns []float64
		for _, x := range per[n] {
			pps = append(pps, x.PPS)
			ns = append(ns, x.NsPerPacket)
		}
		st.PPS, st.NsPerPacket = median(pps), median(ns)
		res.Programs = append(res.Programs, st)
	}
	return res, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}
