//go:build linux

package demo

import (
	"errors"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Sample is one reading of the NF's bpf_stats: cumulative counters over
// every program that ran on the attachment (original, instrumented
// variants, optimized versions), so rates stay exact across swaps.
type Sample struct {
	// At is when the stats were read, Elapsed the time since the demo
	// started.
	At      time.Time     `json:"at"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// Phase is the phase running at the time.
	Phase string `json:"phase"`
	// ProgramID is the program running on the attachment; Version its
	// label ("original", "profiling", "v1", "v2", ...).
	ProgramID ebpf.ProgramID `json:"program_id"`
	Version   string         `json:"version"`
	// Packets and RunTime are cumulative over every program seen.
	Packets uint64        `json:"packets"`
	RunTime time.Duration `json:"run_time_ns"`
}

// statsReader sums bpf_stats over every program ID it has seen. A
// program's counters only grow and only the attached one grows, so the
// sum is monotonic and a delta between two readings counts exactly the
// packets in between, provided every program that ran was seen: the
// sampler polls often enough to see each profiling window.
type statsReader struct {
	mu    sync.Mutex
	progs map[ebpf.ProgramID]*ebpf.Program
	last  map[ebpf.ProgramID]ebpf.ProgramStats
}

func newStatsReader() *statsReader {
	return &statsReader{progs: map[ebpf.ProgramID]*ebpf.Program{}, last: map[ebpf.ProgramID]ebpf.ProgramStats{}}
}

// read opens id if it is new and returns the totals over every program
// seen. A program closed by the agent before it could be opened counts
// nothing; an opened one stays readable until close.
func (s *statsReader) read(id ebpf.ProgramID) (packets uint64, runTime time.Duration) {
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
		packets += st.RunCount
		runTime += st.Runtime
	}
	return packets, runTime
}

// ids returns the program IDs seen.
func (s *statsReader) ids() []ebpf.ProgramID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ebpf.ProgramID, 0, len(s.progs))
	for id := range s.progs {
		out = append(out, id)
	}
	return out
}

// close releases every program handle.
func (s *statsReader) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for id, p := range s.progs {
		errs = append(errs, p.Close())
		delete(s.progs, id)
	}
	return errors.Join(errs...)
}

// Rate is the throughput and cost between two samples.
type Rate struct {
	PPS         float64
	NsPerPacket float64
}

// rateBetween returns the rate between samples a and b (a before b).
func rateBetween(a, b Sample) Rate {
	var r Rate
	dn := b.Packets - a.Packets
	if dt := b.At.Sub(a.At).Seconds(); dt > 0 && b.Packets >= a.Packets {
		r.PPS = float64(dn) / dt
	}
	if dn > 0 && b.RunTime >= a.RunTime {
		r.NsPerPacket = float64((b.RunTime - a.RunTime).Nanoseconds()) / float64(dn)
	}
	return r
}
