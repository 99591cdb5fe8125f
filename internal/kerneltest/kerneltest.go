// Package kerneltest holds the helpers shared by tests that need the real
// kernel: a privilege check that fails instead of skipping in CI, thin
// wrappers around BPF_PROG_TEST_RUN, and the XDP context those runs take.
package kerneltest

import (
	"encoding/binary"
	"os"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
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
