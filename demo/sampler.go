//go:build linux

package demo

import (
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
