// Package kerneltest holds the helpers shared by tests that need the real
// kernel: a privilege check that fails instead of skipping in CI, thin
// wrappers around BPF_PROG_TEST_RUN, the XDP context those runs take, test
// frames, and CPU pinning for per-CPU maps.
package kerneltest

import (
	"bytes"
	"encoding/binary"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
	"github.com/google/gopacket"
	"golang.org/x/sys/unix"
)

var (
	probeOnce sync.Once
	probeErr  error
)

// probe loads a trivial XDP program once per test binary; if that fails,
// no kernel test in the binary can succeed.
func probe() error {
	probeOnce.Do(func() {
		if err := rlimit.RemoveMemlock(); err != nil {
			probeErr = err
			return
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:    ebpf.XDP,
			License: "GPL",
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, 2),
				asm.Return(),
			},
		})
		if err != nil {
			probeErr = err
			return
		}
		prog.Close()
	})
	return probeErr
}

// Require stops the test unless it can load BPF programs. Outside CI a
// missing privilege skips the test; with CI set it fails, because CI
// machines are root and a skipped kernel test there hides a real problem.
func Require(tb testing.TB) {
	tb.Helper()
	err := probe()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("kernel test cannot load BPF programs (run as root on Linux >= 5.15): %v", err)
	}
	tb.Skipf("skipping kernel test: cannot load BPF programs (run as root): %v", err)
}

// Result is what one BPF_PROG_TEST_RUN returned.
type Result struct {
	Verdict uint32
	Out     []byte
}

// Run executes prog once on pkt and returns its verdict and output frame.
func Run(tb testing.TB, prog *ebpf.Program, pkt []byte) Result {
	tb.Helper()
	out := make([]byte, len(pkt)+256)
	opts := ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := prog.Run(&opts)
	if err != nil {
		tb.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return Result{Verdict: ret, Out: opts.DataOut}
}

// LoIfindex is the loopback interface. It exists in every network
// namespace, so BPF_PROG_TEST_RUN accepts it as an XDP context's
// ingress_ifindex, and the generated NF configurations (traffic package)
// use it as the ingress port of frames in test runs.
const LoIfindex = 1

// XDPContext returns a struct xdp_md (24 bytes) for BPF_PROG_TEST_RUN with
// only ingress_ifindex set, for tests that choose the port frames arrive
// on: the sample NFs route and switch by ingress port.
func XDPContext(ingress uint32) []byte {
	c := make([]byte, 24)
	binary.LittleEndian.PutUint32(c[12:], ingress) // offsetof(struct xdp_md, ingress_ifindex)
	return c
}

// Frame serializes layers into a test frame with lengths and checksums
// filled in, as a sender's stack would.
func Frame(tb testing.TB, layers ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, layers...); err != nil {
		tb.Fatalf("serialize test frame: %v", err)
	}
	return bytes.Clone(buf.Bytes())
}

// PinCPU keeps the calling test's goroutine on CPU 0 until the test ends,
// for programs whose per-CPU maps must see every run on one CPU.
func PinCPU(tb testing.TB) {
	tb.Helper()
	runtime.LockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		tb.Fatal(err)
	}
	set.Set(0)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	})
}
