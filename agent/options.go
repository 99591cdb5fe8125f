package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/passes"
)

// Defaults of [Options].
const (
	DefaultPeriod             = 2 * time.Second
	DefaultFingerprintPeriod  = 500 * time.Millisecond
	DefaultFullCycleEvery     = 30 * time.Second
	DefaultMaxSnapshotEntries = 1 << 16
	DefaultGenerated          = 1000
	// DefaultEventBuffer is how many recent events [NF.Events] keeps.
	DefaultEventBuffer = 256
)

// Options configures an [NF].
type Options struct {
	// Name names the network function in logs, events and the pin
	// directory. Default "nf".
	Name string
	// Period is the time between optimization cycles of [NF.Run].
	// Default DefaultPeriod. A control-plane change through the agent
	// starts a cycle at once, whatever the period.
	Period time.Duration
	// FullCycleEvery bounds how long periodic cycles may skip the
	// optimizer because nothing it depends on changed through the agent
	// (no change, same guard versions, same heatmap). Default
	// DefaultFullCycleEvery. Forced and change-triggered cycles always
	// run in full.
	FullCycleEvery time.Duration
	// FingerprintPeriod is the time between checks of the guarded maps
	// for writes that bypassed the agent. Default DefaultFingerprintPeriod.
	FingerprintPeriod time.Duration
	// PinDir, if set, is a directory on a bpffs (for example
	// /sys/fs/bpf/morpheus/router) where the agent pins the network
	// function's links, maps and original programs, and its own guard
	// and state maps. A killed agent then leaves the network function
	// attached, and the next Load with the same PinDir adopts it.
	PinDir string
	// Passes tunes the optimizer's passes; the zero value means
	// passes.DefaultOptions().
	Passes passes.Options
	// Generated is how many packets the differential test generates from
	// the map contents per cycle. Default DefaultGenerated.
	Generated int
	// Seed makes the generated packets reproducible.
	Seed int64
	// MaxSnapshotEntries bounds the number of entries read from one map
	// per cycle. Larger maps are not snapshotted, and a candidate that
	// depends on one of them is dropped. Default DefaultMaxSnapshotEntries.
	MaxSnapshotEntries int
	// SkipGuardCheck turns off the guard check of every candidate (see
	// optimize.LiveOptions.GuardCheck): one more differential test per
	// guarded map, with that map emptied and the guards tripped, which
	// proves the guards divert to the original code. It roughly doubles
	// the time of a cycle; skip it only where that matters more.
	SkipGuardCheck bool
	// Profiler supplies heatmaps to the cycle; nil optimizes without
	// (or with the agent's own profile only). If it implements io.Closer,
	// Stop closes it.
	Profiler Profiler
	// Profile, if set, turns on the agent's own adaptive profiling with an
	// instrumented variant (see ProfileOptions). Its hot keys are merged
	// with the Profiler's.
	Profile *ProfileOptions
	// Disabled lists programs the optimizer leaves alone until
	// [NF.SetEnabled] enables them.
	Disabled []string
	// Logger receives the agent's log; nil uses slog.Default().
	Logger *slog.Logger
	// EventBuffer is how many recent events [NF.Events] keeps. Default
	// DefaultEventBuffer.
	EventBuffer int
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = "nf"
	}
	if o.Period <= 0 {
		o.Period = DefaultPeriod
	}
	if o.FullCycleEvery <= 0 {
		o.FullCycleEvery = DefaultFullCycleEvery
	}
	if o.FingerprintPeriod <= 0 {
		o.FingerprintPeriod = DefaultFingerprintPeriod
	}
	if o.Passes.MaxInline == 0 && o.Passes.TopK == 0 && o.Passes.Passes == nil {
		o.Passes = passes.DefaultOptions()
	}
	if o.Generated <= 0 {
		o.Generated = DefaultGenerated
	}
	if o.MaxSnapshotEntries <= 0 {
		o.MaxSnapshotEntries = DefaultMaxSnapshotEntries
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
	return o
}

// Kind says how a program is attached.
type Kind int

// The attachment kinds.
const (
	// XDP attaches an XDP program to an interface through a bpf_link;
	// swaps are atomic link updates.
	XDP Kind = iota
	// TCIngress attaches a SchedCLS program as a direct-action cls_bpf
	// filter on the clsact ingress hook; swaps replace the filter (same
	// handle and priority) atomically.
	TCIngress
	// TCEgress is TCIngress on the egress hook.
	TCEgress
	// TailCall places a program in a slot of one of the collection's
	// program arrays; swaps are prog-array updates.
	TailCall
)

// String returns the kind's name as used in logs and JSON.
func (k Kind) String() string {
	switch k {
	case XDP:
		return "xdp"
	case TCIngress:
		return "tc-ingress"
	case TCEgress:
		return "tc-egress"
	case TailCall:
		return "tail-call"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// MarshalText encodes the kind by name.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// XDPMode selects the XDP attach mode.
type XDPMode int

// The XDP modes.
const (
	// XDPAuto tries native (driver) mode and falls back to generic.
	XDPAuto XDPMode = iota
	// XDPNative requires native mode.
	XDPNative
	// XDPGeneric uses generic (skb) mode.
	XDPGeneric
)

// String returns the mode's name.
func (m XDPMode) String() string {
	switch m {
	case XDPAuto:
		return "auto"
	case XDPNative:
		return "native"
	case XDPGeneric:
		return "generic"
	}
	return fmt.Sprintf("xdpmode(%d)", int(m))
}

// MarshalText encodes the mode by name.
func (m XDPMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Attachment says where one program of the collection runs.
type Attachment struct {
	// Program names the program in the collection. Empty means the one
	// XDP program (for XDP) or the one SchedCLS program (for TC) of the
	// object.
	Program string `json:"program"`
	Kind    Kind   `json:"kind"`
	// Interface is the interface name, for XDP and TC.
	Interface string `json:"interface,omitempty"`
	// Netns is the path of the network namespace the interface lives in
	// (for example /var/run/netns/NAME); empty means the agent's own.
	Netns string `json:"netns,omitempty"`
	// XDPMode is the XDP attach mode.
	XDPMode XDPMode `json:"xdp_mode"`
	// Priority and Handle identify the TC filter (defaults 1 and 1); a
	// filter already there with the same pair is replaced.
	Priority uint16 `json:"priority,omitempty"`
	Handle   uint32 `json:"handle,omitempty"`
	// ProgArray and Index name the prog-array slot, for TailCall.
	ProgArray string `json:"prog_array,omitempty"`
	Index     uint32 `json:"index,omitempty"`
}

// String describes the attachment point, e.g. "xdp_router xdp@veth0".
func (a Attachment) String() string {
	switch a.Kind {
	case TailCall:
		return fmt.Sprintf("%s %s@%s[%d]", a.Program, a.Kind, a.ProgArray, a.Index)
	default:
		return fmt.Sprintf("%s %s@%s", a.Program, a.Kind, a.Interface)
	}
}

// Profiler supplies the heatmap (hot keys per map) for a program at the
// start of each cycle. The instrumenting profiler of package instrument
// plugs in here; [StaticProfiler] serves a fixed heatmap.
type Profiler interface {
	// Heatmap returns the current hot keys of the maps the program looks
	// up, or nil if there are none yet. An error is logged and the
	// cycle carries on without a heatmap.
	Heatmap(ctx context.Context, program string) (*heatmap.Heatmap, error)
}

// StaticProfiler serves the same heatmap for every program, e.g. one read
// with heatmap.ReadFile.
type StaticProfiler struct {
	Heat *heatmap.Heatmap
}

// Heatmap returns p.Heat.
func (p StaticProfiler) Heatmap(context.Context, string) (*heatmap.Heatmap, error) {
	return p.Heat, nil
}

// ProfilerFunc adapts a function to [Profiler].
type ProfilerFunc func(ctx context.Context, program string) (*heatmap.Heatmap, error)

// Heatmap calls f.
func (f ProfilerFunc) Heatmap(ctx context.Context, program string) (*heatmap.Heatmap, error) {
	return f(ctx, program)
}
