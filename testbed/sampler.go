//go:build linux

package testbed

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// Sample is one reading of the attached program's bpf_stats and the rates
// since the previous reading.
type Sample struct {
	// At is when the stats were read.
	At time.Time `json:"at"`
	// ProgramID identifies the program read (it changes on a swap).
	ProgramID ebpf.ProgramID `json:"program_id"`
	// RunCount and RunTime are the kernel's cumulative counters of that
	// program (of a following sampler: their sums over every program
	// seen, see StartFollowingSampler).
	RunCount uint64        `json:"run_count"`
	RunTime  time.Duration `json:"run_time_ns"`
	// PPS is runs (packets) per second since the previous sample, and
	// NsPerPacket the mean run time of those runs. Both are 0 for the
	// first sample after a swap, whose previous reading belongs to
	// another program (except for a following sampler, whose sums carry
	// across swaps), and NsPerPacket is 0 when no packet ran.
	PPS         float64 `json:"pps"`
	NsPerPacket float64 `json:"ns_per_packet"`
}

// Sampler reads the testbed's attached program's bpf_stats periodically
// and keeps the time series.
type Sampler struct {
	t    *Testbed
	stop chan struct{}
	done chan struct{}
	// totals is set for a following sampler (StartFollowingSampler).
	totals *Totals

	mu      sync.Mutex
	samples []Sample
}

// StartSampler starts sampling every Options.SampleInterval until Stop or
// Close. One sampler runs at a time; starting another stops the first.
func (t *Testbed) StartSampler() *Sampler { return t.startSampler(nil) }

// startSampler starts a sampler, following the attachment if totals is
// set, in place of the running one.
func (t *Testbed) startSampler(totals *Totals) *Sampler {
	s := &Sampler{t: t, stop: make(chan struct{}), done: make(chan struct{}), totals: totals}
	t.mu.Lock()
	old := t.sampler
	t.sampler = s
	t.mu.Unlock()
	if old != nil {
		old.Stop()
	}
	go s.loop()
	return s
}

// StartFollowingSampler is StartSampler for an NF attached by someone
// else (Options.ExternalNF) who may swap its program at any time: each
// sample reads which program is attached to the NF interface now, and
// its RunCount and RunTime are the sums over every program seen attached
// since the sampler started (see Totals), so PPS and NsPerPacket stay
// exact across swaps instead of restarting at each. ProgramID is the
// program attached at the time of the sample.
func (t *Testbed) StartFollowingSampler() *Sampler { return t.startSampler(NewTotals()) }

func (s *Sampler) loop() {
	defer close(s.done)
	if s.totals != nil {
		// The program handles are only needed while sampling.
		defer s.totals.Close()
	}
	tick := time.NewTicker(s.t.opts.SampleInterval)
	defer tick.Stop()
	var prev *Sample
	for {
		if cur, ok := s.read(prev); ok {
			prev = &cur
		}
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
	}
}

// read takes one sample; it returns false when nothing is attached or the
// stats cannot be read.
func (s *Sampler) read(prev *Sample) (Sample, bool) {
	if s.totals != nil {
		return s.readFollowing(prev)
	}
	prog := s.t.Attached()
	if prog == nil {
		return Sample{}, false
	}
	st, err := prog.Stats()
	if err != nil {
		return Sample{}, false
	}
	info, err := prog.Info()
	if err != nil {
		return Sample{}, false
	}
	id, _ := info.ID()
	cur := Sample{At: time.Now(), ProgramID: id, RunCount: st.RunCount, RunTime: st.Runtime}
	if prev != nil && prev.ProgramID == id {
		dn := cur.RunCount - prev.RunCount
		if dt := cur.At.Sub(prev.At).Seconds(); dt > 0 {
			cur.PPS = float64(dn) / dt
		}
		if dn > 0 {
			cur.NsPerPacket = float64((cur.RunTime - prev.RunTime).Nanoseconds()) / float64(dn)
		}
	}
	s.keep(cur)
	return cur, true
}

// readFollowing takes one sample of a following sampler; it returns
// false when nothing is attached.
func (s *Sampler) readFollowing(prev *Sample) (Sample, bool) {
	id, err := s.t.AttachedID()
	if err != nil || id == 0 {
		return Sample{}, false
	}
	runs, runTime := s.totals.Read(id)
	cur := Sample{At: time.Now(), ProgramID: id, RunCount: runs, RunTime: runTime}
	// The totals only grow, across swaps too: every pair of samples
	// gives a rate.
	if prev != nil && cur.RunCount >= prev.RunCount {
		dn := cur.RunCount - prev.RunCount
		if dt := cur.At.Sub(prev.At).Seconds(); dt > 0 {
			cur.PPS = float64(dn) / dt
		}
		if dn > 0 && cur.RunTime >= prev.RunTime {
			cur.NsPerPacket = float64((cur.RunTime - prev.RunTime).Nanoseconds()) / float64(dn)
		}
	}
	s.keep(cur)
	return cur, true
}

// keep appends a sample, dropping the oldest beyond MaxSamples.
func (s *Sampler) keep(cur Sample) {
	s.mu.Lock()
	s.samples = append(s.samples, cur)
	if over := len(s.samples) - s.t.opts.MaxSamples; over > 0 {
		s.samples = append(s.samples[:0], s.samples[over:]...)
	}
	s.mu.Unlock()
}

// AttachedID returns the ID of the XDP program attached to the NF
// interface, whoever attached it, or 0 if none is. It asks the kernel
// (netlink in the NF namespace), so it sees an external owner's swaps.
func (t *Testbed) AttachedID() (ebpf.ProgramID, error) {
	h, err := netlink.NewHandleAt(t.nfNS)
	if err != nil {
		return 0, fmt.Errorf("testbed: netlink in NF namespace: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(t.nfIfindex)
	if err != nil {
		return 0, fmt.Errorf("testbed: %s: %w", t.nfName, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return 0, nil
	}
	return ebpf.ProgramID(x.ProgId), nil
}

// Totals sums bpf_stats over every program ID it has been given. A
// program's counters only grow and, on one attachment, only the attached
// program's grow, so the sums are monotonic and the difference between
// two readings counts exactly the runs in between, across any number of
// swaps, provided every program that ran was seen: the caller reads
// often enough to see each short-lived one (an agent's profiling
// variant, say). It holds a handle of each program seen, so a program
// replaced and unloaded by its owner stays readable until Close.
// Its methods are safe for concurrent use.
type Totals struct {
	mu    sync.Mutex
	progs map[ebpf.ProgramID]*ebpf.Program
	last  map[ebpf.ProgramID]ebpf.ProgramStats
}

// NewTotals returns empty totals. The caller must Close them.
func NewTotals() *Totals {
	return &Totals{progs: map[ebpf.ProgramID]*ebpf.Program{}, last: map[ebpf.ProgramID]ebpf.ProgramStats{}}
}

// Read opens id if it is new (0 is none) and returns the run count and
// run time summed over every program seen. A program unloaded before it
// could be opened counts nothing; one that cannot be read counts its
// last reading.
func (s *Totals) Read(id ebpf.ProgramID) (runs uint64, runTime time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.progs[id]; !ok && id != 0 {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			s.progs[id] = p
		}
	}
	for pid, p := range s.progs {
		if st, err := p.Stats(); err == nil {
			s.last[pid] = *st
		}
	}
	for _, st := range s.last {
		runs += st.RunCount
		runTime += st.Runtime
	}
	return runs, runTime
}

// IDs returns the program IDs seen, in no particular order.
func (s *Totals) IDs() []ebpf.ProgramID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ebpf.ProgramID, 0, len(s.progs))
	for id := range s.progs {
		out = append(out, id)
	}
	return out
}

// Close releases every program handle; the totals are not to be used
// afterwards (read IDs before).
func (s *Totals) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for id, p := range s.progs {
		errs = append(errs, p.Close())
		delete(s.progs, id)
	}
	return errors.Join(errs...)
}

// Samples returns a copy of the samples so far, oldest first.
func (s *Sampler) Samples() []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Sample(nil), s.samples...)
}

// Stop stops sampling; the samples stay readable. It is idempotent.
func (s *Sampler) Stop() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// Summary is the mean rate and cost over a stretch of samples.
type Summary struct {
	// Samples is the number of samples with traffic that were averaged.
	Samples int `json:"samples"`
	// PPS and NsPerPacket are computed from the counters at the stretch's
	// ends, not averaged per sample.
	PPS         float64 `json:"pps"`
	NsPerPacket float64 `json:"ns_per_packet"`
}

// Summarize averages the samples of one program between from and to
// (inclusive): total runs over total time and total run time over total
// runs. Samples of other programs are ignored.
func Summarize(samples []Sample, id ebpf.ProgramID, from, to time.Time) Summary {
	var first, last *Sample
	n := 0
	for i := range samples {
		s := &samples[i]
		if s.ProgramID != id || s.At.Before(from) || s.At.After(to) {
			continue
		}
		if first == nil {
			first = s
		}
		last = s
		if s.PPS > 0 {
			n++
		}
	}
	if first == nil || last == first {
		return Summary{}
	}
	dn := last.RunCount - first.RunCount
	sum := Summary{Samples: n}
	if dt := last.At.Sub(first.At).Seconds(); dt > 0 {
		sum.PPS = float64(dn) / dt
	}
	if dn > 0 {
		sum.NsPerPacket = float64((last.RunTime - first.RunTime).Nanoseconds()) / float64(dn)
	}
	return sum
}
