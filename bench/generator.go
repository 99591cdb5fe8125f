//go:build linux

package bench

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Generator replays a trace as real frames: its XDP program, run with
// BPF_F_TEST_XDP_LIVE_FRAMES, takes the next packet of the trace for every
// frame (the replay driver's code, per-CPU cursor and trace map) and
// returns XDP_TX, which transmits the frame out of the interface named by
// the run's ingress_ifindex. On a veth, the frame arrives at the peer and
// runs the XDP program attached there. A Generator is not safe for
// concurrent use.
type Generator struct {
	h    *Harness
	prog *ebpf.Program
	data []byte
}

// NewGenerator loads the generator for frames (each MinPacket..MaxPacket
// bytes, in replay order).
func NewGenerator(frames [][]byte) (*Generator, error) {
	h, err := newReplay(frames, Config{})
	if err != nil {
		return nil, err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_gen", Type: ebpf.XDP, License: "GPL",
		Instructions: driverInsns(h.state, h.trace, nil, h.n, h.slot),
	})
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("bench: load generator (needs root: it keeps a packet address in a map): %w", err)
	}
	// The initial frame is as long as the longest packet, so the program
	// only ever shrinks it (bpf_xdp_adjust_tail), and holds that packet.
	data := make([]byte, h.maxLen)
	for _, f := range frames {
		if len(f) == h.maxLen {
			copy(data, f)
			break
		}
	}
	return &Generator{h: h, prog: prog, data: data}, nil
}

// Program returns the generator's XDP program.
func (g *Generator) Program() *ebpf.Program { return g.prog }

// Packets returns the number of packets in the trace.
func (g *Generator) Packets() int { return int(g.h.n) }

// Run sends repeat frames out of the interface ifindex with one live-frames
// test run (batch frames per kernel batch; 0 means the kernel's default of
// 64) and returns how many the generator could not build. The calling
// goroutine must be locked to an OS thread that is in the interface's
// network namespace: the kernel resolves ifindex there.
func (g *Generator) Run(ifindex uint32, repeat, batch uint32) (failed uint64, err error) {
	if repeat == 0 {
		return 0, errors.New("bench: generator repeat must be positive")
	}
	// struct xdp_md: the kernel wants data_end equal to the data's length.
	ctx := make([]byte, 24)
	binary.NativeEndian.PutUint32(ctx[4:], uint32(len(g.data)))
	binary.NativeEndian.PutUint32(ctx[12:], ifindex)
	if err := g.h.state.Update(uint32(0), make([]cpuState, g.h.ncpu), ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("bench: reset generator state: %w", err)
	}
	opts := ebpf.RunOptions{
		Data:      g.data,
		Context:   ctx,
		Repeat:    repeat,
		BatchSize: batch,
		Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
	}
	if _, err := g.prog.Run(&opts); err != nil {
		return 0, fmt.Errorf("bench: live-frames run: %w", err)
	}
	if err := g.h.checkState(); err != nil {
		var de *DriverError
		if errors.As(err, &de) {
			return de.Head + de.Tail + de.Store + de.Slot, nil
		}
		return 0, err
	}
	return 0, nil
}

// Close releases the generator's program and maps.
func (g *Generator) Close() error {
	return errors.Join(g.prog.Close(), g.h.Close())
}
