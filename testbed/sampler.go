//go:build linux

package testbed

import (
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Sample is one reading of the attached program's bpf_stats and the rates
// since the previous reading.
type Sample struct {
	// At is when the stats were read.
	At time.Time `json:"at"`
	// ProgramID identifies the program read (it changes on a swap).
	ProgramID ebpf.ProgramID `json:"program_id"`
	// RunCount and RunTime are the kernel's cumulative counters of that
	// program.
	RunCount uint64        `json:"run_count"`
	RunTime  time.Duration `json:"run_time_ns"`
	// PPS is runs (packets) per second since the previous sample, and
	// NsPerPacket the mean run time of those runs. Both are 0 for the
	// first sample after a swap, whose previous reading belongs to
	// another program, and NsPerPacket is 0 when no packet ran.
	PPS         float64 `json:"pps"`
	NsPerPacket float64 `json:"ns_per_packet"`
}

// Sampler reads the testbed's attached program's bpf_stats periodically
// and keeps the time series.
type Sampler struct {
	t    *Testbed
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples []Sample
}

// StartSampler starts sampling every Options.SampleInterval until Stop or
// Close. One sampler runs at a time; starting another stops the first.
func (t *Testbed) StartSampler() *Sampler {
	s := &Sampler{t: t, stop: make(chan struct{}), done: make(chan struct{})}
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

func (s *Sampler) loop() {
	defer close(s.done)
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
	s.mu.Lock()
	s.samples = append(s.samples, cur)
	if over := len(s.samples) - s.t.opts.MaxSamples; over > 0 {
		s.samples = append(s.samples[:0], s.samples[over:]...)
	}
	s.mu.Unlock()
	return cur, true
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
