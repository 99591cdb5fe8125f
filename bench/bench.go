//go:build linux

// Package bench measures the per-packet cost of XDP network functions by
// in-kernel replay of a packet trace.
//
// A driver XDP program is run with BPF_PROG_TEST_RUN and a large repeat
// count. Each run takes the next packet of the trace from an array map
// (per-CPU cursor), restores the frame's headroom if the previous NF moved
// it, sets the frame to the packet's length (bpf_xdp_adjust_tail), copies
// the packet in (bpf_xdp_store_bytes) and tail-calls the NF under test
// through a one-slot prog array. The kernel reports the mean time per run;
// the same measurement with a trivial XDP_DROP NF is the floor (driver,
// copy, tail call and test-run overhead), and the NF's cost per packet is
// the difference.
//
// # Noise
//
// On the 2-core machines this project runs on, a single measurement varies
// by about ±15% from run to run (frequency scaling, the other core's load,
// cache state). A single number therefore proves nothing. Measure runs the
// programs alternately (A B floor, B floor A, ...) for several rounds,
// subtracts the floor measured in the same round, and reports medians; only
// ratios taken side by side in one Measure call are meaningful. Timed unit
// tests are not: compare programs, do not assert absolute nanoseconds.
//
// # Requirements
//
// The driver stores a packet address in a map to undo head adjustments,
// which the verifier allows only to privileged (CAP_BPF + CAP_PERFMON)
// loaders. The NF programs must be XDP programs that fit a prog array next
// to a driver: the kernel demands the same program type, JIT, xdp.frags
// setting and expected attach type (BPF_XDP for programs loaded from an ELF
// section "xdp", none for most programs built in Go). The harness keeps one
// driver per such class and picks the one that accepts the program; the
// programs of one Measure call must share a class.
package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cilium/ebpf"
)

// MaxPacket is the largest packet a trace may hold. Larger frames would not
// fit the linear part of the test run's buffer.
const MaxPacket = 2048

// MinPacket is the smallest packet a trace may hold: an Ethernet header.
const MinPacket = 14

// FloorName is the name under which Result reports the floor.
const FloorName = "floor"

// Harness replays one trace into NF programs. It owns kernel objects;
// Close releases them. A Harness is not safe for concurrent use.
type Harness struct {
	n, slot uint32
	maxLen  int
	ingress uint32
	state   *ebpf.Map
	trace   *ebpf.Map
	ncpu    int
	lanes   map[laneClass]*lane
}

// cpuState is one CPU's copy of the driver state.
type cpuState [stateSize]byte

// Config tunes a Harness.
type Config struct {
	// IngressIfindex is the ctx->ingress_ifindex the NF sees. It must name
	// an interface in the caller's network namespace (the kernel resolves
	// it); 0 leaves it unset. NFs that configure interfaces (router,
	// l2switch) only take their fast path for a configured ifindex: use
	// one that exists, such as 1 (loopback).
	IngressIfindex uint32
}

// New loads the driver for frames (each MinPacket..MaxPacket bytes, in
// replay order). The trace is copied into the kernel; frames may be reused.
func New(frames [][]byte, cfg Config) (*Harness, error) {
	h, err := newReplay(frames, cfg)
	if err != nil {
		return nil, err
	}
	// Load the lane most NFs need now, so a kernel that refuses the
	// driver fails New rather than the first measurement.
	l, err := h.newLane(laneClasses[0])
	if err != nil {
		h.Close()
		return nil, err
	}
	h.lanes[l.class] = l
	return h, nil
}

// newReplay checks frames and loads the driver state and the trace map,
// which the harness and the live generator share.
func newReplay(frames [][]byte, cfg Config) (*Harness, error) {
	if len(frames) == 0 {
		return nil, errors.New("bench: empty trace")
	}
	if len(frames) > math.MaxInt32 {
		return nil, fmt.Errorf("bench: trace of %d packets is too long", len(frames))
	}
	maxLen := 0
	for i, f := range frames {
		if len(f) < MinPacket || len(f) > MaxPacket {
			return nil, fmt.Errorf("bench: packet %d is %d bytes, want %d..%d", i, len(f), MinPacket, MaxPacket)
		}
		maxLen = max(maxLen, len(f))
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	h := &Harness{
		n:       uint32(len(frames)),
		slot:    uint32((maxLen + 7) &^ 7),
		maxLen:  maxLen,
		ingress: cfg.IngressIfindex,
		ncpu:    ncpu,
		lanes:   map[laneClass]*lane{},
	}
	if err := h.loadMaps(frames); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func (h *Harness) loadMaps(frames [][]byte) error {
	var err error
	h.state, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "bench_state", Type: ebpf.PerCPUArray,
		KeySize: 4, ValueSize: stateSize, MaxEntries: 1,
	})
	if err != nil {
		return fmt.Errorf("bench: state map: %w", err)
	}
	h.trace, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "bench_trace", Type: ebpf.Array,
		KeySize: 4, ValueSize: slotHeader + h.slot, MaxEntries: h.n,
	})
	if err != nil {
		return fmt.Errorf("bench: trace map (%d x %d bytes): %w", h.n, slotHeader+h.slot, err)
	}
	return h.fillTrace(frames)
}

// fillTrace writes the frames into the trace map.
func (h *Harness) fillTrace(frames [][]byte) error {
	v := make([]byte, slotHeader+h.slot)
	for i, f := range frames {
		clear(v)
		binary.NativeEndian.PutUint32(v, uint32(len(f)))
		copy(v[slotHeader:], f)
		if err := h.trace.Update(uint32(i), v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("bench: fill trace slot %d: %w", i, err)
		}
	}
	return nil
}

// Close releases the harness's maps and programs.
func (h *Harness) Close() error {
	var errs []error
	for _, l := range h.lanes {
		errs = append(errs, l.close())
	}
	h.lanes = nil
	for _, m := range []*ebpf.Map{h.trace, h.state} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// Packets returns the number of packets in the trace.
func (h *Harness) Packets() int { return int(h.n) }

// DriverError reports packets the driver failed to replay; a measurement
// with failures is not a measurement of the NF.
type DriverError struct {
	Head, Tail, Store, TailCall, Slot uint64
}

func (e *DriverError) Error() string {
	return fmt.Sprintf("bench: driver failed to replay packets (adjust_head %d, adjust_tail %d, store_bytes %d, tail call %d, trace slot %d); "+
		"a failed tail call means the NF is not compatible with the driver's prog array",
		e.Head, e.Tail, e.Store, e.TailCall, e.Slot)
}

// Run replays repeat packets (cycling through the trace from its first
// packet) into prog and returns the mean time per packet, including the
// harness's own overhead. prog must be an XDP program; it is placed in the
// driver's prog array for the duration of the call.
func (h *Harness) Run(prog *ebpf.Program, repeat int) (time.Duration, error) {
	ns, err := h.RunNs(prog, repeat)
	return time.Duration(math.Round(ns)), err
}

// RunNs is Run with the mean in fractional nanoseconds. The kernel
// reports a test run's mean per run truncated to whole nanoseconds, which
// is a step of several percent of a small NF's cost; the wall clock around
// the run refines it within that step (see testRun).
func (h *Harness) RunNs(prog *ebpf.Program, repeat int) (float64, error) {
	if prog == nil {
		return 0, errors.New("bench: nil program")
	}
	if repeat <= 0 || repeat > math.MaxUint32 {
		return 0, fmt.Errorf("bench: repeat %d out of range 1..%d", repeat, uint32(math.MaxUint32))
	}
	l, err := h.laneFor(prog)
	if err != nil {
		return 0, err
	}
	// laneFor left prog in the lane's slot, which holds a reference to
	// it: empty the slot so the caller can close the program and free it.
	defer l.progs.Delete(uint32(0)) //nolint:errcheck // only releases the reference
	if err := h.state.Update(uint32(0), make([]cpuState, h.ncpu), ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("bench: reset driver state: %w", err)
	}
	perRun, err := h.testRun(l.driver, uint32(repeat))
	if err != nil {
		return 0, err
	}
	if err := h.checkState(); err != nil {
		return 0, err
	}
	return perRun, nil
}

func (h *Harness) checkState() error {
	perCPU := make([]cpuState, h.ncpu)
	if err := h.state.Lookup(uint32(0), perCPU); err != nil {
		return fmt.Errorf("bench: read driver state: %w", err)
	}
	var e DriverError
	for _, s := range perCPU {
		e.Head += binary.NativeEndian.Uint64(s[stateErrHead:])
		e.Tail += binary.NativeEndian.Uint64(s[stateErrTail:])
		e.Store += binary.NativeEndian.Uint64(s[stateErrStore:])
		e.TailCall += binary.NativeEndian.Uint64(s[stateErrCall:])
		e.Slot += binary.NativeEndian.Uint64(s[stateErrSlot:])
	}
	if e != (DriverError{}) {
		return &e
	}
	return nil
}
