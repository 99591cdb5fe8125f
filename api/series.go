package api

import (
	"sync"
	"time"
)

// Sample is one point of a program's time series: what the program did
// between the previous sample and this one.
type Sample struct {
	Time time.Time `json:"t"`
	// Packets is the number of runs in the interval.
	Packets uint64 `json:"packets"`
	// PPS is packets per second over the interval.
	PPS float64 `json:"pps"`
	// NSPerPacket is the mean run time per packet over the interval; it
	// is 0 when no packet was processed.
	NSPerPacket float64 `json:"ns_per_packet"`
	// Version is the optimization version running at the sample.
	Version int `json:"version"`
}

// series keeps a bounded ring of samples per program, computed from the
// cumulative bpf_stats the backend reports.
type series struct {
	mu    sync.Mutex
	limit int
	last  map[string]point
	data  map[string][]Sample
}

type point struct {
	t   time.Time
	run RunStats
}

func newSeries(limit int) *series {
	return &series{limit: limit, last: map[string]point{}, data: map[string][]Sample{}}
}

// observe records one sample per program. Programs that disappeared are
// dropped so the memory stays bounded by the live programs.
func (s *series) observe(now time.Time, progs []Program) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool, len(progs))
	for _, p := range progs {
		id := p.ID()
		seen[id] = true
		prev, ok := s.last[id]
		s.last[id] = point{t: now, run: p.Run}
		// A counter that went backwards means the program was replaced by
		// one with fresh stats; the interval is unknown, so start over.
		if !ok || p.Run.Packets < prev.run.Packets || p.Run.RunTime < prev.run.RunTime || !now.After(prev.t) {
			continue
		}
		smp := Sample{Time: now, Version: p.Version, Packets: p.Run.Packets - prev.run.Packets}
		smp.PPS = float64(smp.Packets) / now.Sub(prev.t).Seconds()
		if smp.Packets > 0 {
			smp.NSPerPacket = float64(p.Run.RunTime-prev.run.RunTime) / float64(smp.Packets)
		}
		d := append(s.data[id], smp)
		if len(d) > s.limit {
			// Copy rather than reslice so the dropped head is freed.
			d = append(make([]Sample, 0, s.limit), d[len(d)-s.limit:]...)
		}
		s.data[id] = d
	}
	for name := range s.last {
		if !seen[name] {
			delete(s.last, name)
			delete(s.data, name)
		}
	}
}

// snapshot copies the series.
func (s *series) snapshot() map[string][]Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]Sample, len(s.data))
	for name, d := range s.data {
		out[name] = append([]Sample(nil), d...)
	}
	return out
}

// latest returns the newest sample of a program, by ID.
func (s *series) latest(name string) (Sample, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.data[name]
	if len(d) == 0 {
		return Sample{}, false
	}
	return d[len(d)-1], true
}
