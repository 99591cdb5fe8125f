//go:build linux

package bench

import (
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bpfCmdProgTestRun is BPF_PROG_TEST_RUN.
const bpfCmdProgTestRun = 10

// progTestRunAttr is the test member of union bpf_attr.
type progTestRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// xdpMD is struct xdp_md as BPF_PROG_TEST_RUN takes it.
type xdpMD struct {
	data, dataEnd, dataMeta      uint32
	ingressIfindex, rxQueueIndex uint32
	egressIfindex                uint32
}

// maxInterrupts bounds the retries of a test run that a signal interrupted.
const maxInterrupts = 20

// testRun runs the driver repeat times on a frame of the trace's maximum
// length and returns the mean time per run in nanoseconds.
//
// The kernel's mean is truncated to whole nanoseconds: the true mean lies
// in [d, d+1). The wall-clock time of the syscall divided by repeat
// carries the fraction, but also the syscall's set-up and any time the
// task was preempted, which the kernel's timer leaves out; so the wall
// clock's mean is used only clamped into the kernel's interval, where it
// can only sharpen the kernel's figure, never contradict it. cilium/ebpf's
// Program.Run does not return the duration and Program.Benchmark takes no
// context (needed for ingress_ifindex), so the command is issued directly.
func (h *Harness) testRun(driver *ebpf.Program, repeat uint32) (float64, error) {
	frame := make([]byte, h.maxLen)
	attr := progTestRunAttr{
		progFD:     uint32(driver.FD()),
		dataSizeIn: uint32(len(frame)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat:     repeat,
	}
	var md xdpMD
	if h.ingress != 0 {
		md = xdpMD{dataEnd: uint32(len(frame)), ingressIfindex: h.ingress}
		attr.ctxSizeIn = uint32(unsafe.Sizeof(md))
		attr.ctxIn = uint64(uintptr(unsafe.Pointer(&md)))
	}
	var wall time.Duration
	for try := 0; ; try++ {
		start := time.Now()
		_, _, errno := unix.Syscall(unix.SYS_BPF, bpfCmdProgTestRun, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(frame)
		runtime.KeepAlive(&md)
		if errno == 0 {
			wall = time.Since(start)
			break
		}
		if errors.Is(errno, unix.EINTR) && try < maxInterrupts {
			continue
		}
		if h.ingress != 0 && errors.Is(errno, unix.ENODEV) {
			return 0, fmt.Errorf("bench: BPF_PROG_TEST_RUN: ingress ifindex %d does not exist in this network namespace: %w", h.ingress, errno)
		}
		return 0, fmt.Errorf("bench: BPF_PROG_TEST_RUN: %w", errno)
	}
	d := float64(attr.duration)
	return min(max(float64(wall.Nanoseconds())/float64(repeat), d), d+0.999), nil
}
