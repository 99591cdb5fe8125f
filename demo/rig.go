//go:build linux

package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/bench"
)

// rig is the demo's live testbed: two anonymous network namespaces joined
// by a veth pair, the NF's end attached by the agent, and the bench
// package's live-frames generator in the other namespace.
//
// It is the testbed package's layout with two differences the demo needs:
// the NF is attached by someone else (the agent owns the XDP link and
// swaps programs on it), and the trace can be replaced while the NF keeps
// running (the traffic shift).
type rig struct {
	genNS, nfNS     netns.NsHandle
	genName, nfName string
	genIfindex      int
	nfIfindex       int

	mu  sync.Mutex
	gen *bench.Generator
	run *genRun
}

// genRun is one generator run.
type genRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	sent   uint64
	err    error
}

// burst is the number of frames per live-frames test run: about 40 ms at
// full speed, so Stop and context cancellation take effect quickly.
const burst = 1 << 18

// newRig creates the namespaces and the veth pair, both ends up.
func newRig() (*rig, error) {
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(suffix)
	r := &rig{genNS: -1, nfNS: -1, genName: "mdgen" + id, nfName: "mdnf" + id}
	if err := r.setup(); err != nil {
		return nil, errors.Join(err, r.Close())
	}
	return r, nil
}

func (r *rig) setup() error {
	if err := r.namespaces(); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(r.genNS)
	if err != nil {
		return fmt.Errorf("netlink in the generator namespace: %w", err)
	}
	defer h.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: r.genName},
		PeerName:      r.nfName,
		PeerNamespace: netlink.NsFd(r.nfNS),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", r.genName, r.nfName, err)
	}
	gl, err := h.LinkByName(r.genName)
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(gl); err != nil {
		return fmt.Errorf("set %s up: %w", r.genName, err)
	}
	r.genIfindex = gl.Attrs().Index
	nh, err := netlink.NewHandleAt(r.nfNS)
	if err != nil {
		return fmt.Errorf("netlink in the NF namespace: %w", err)
	}
	defer nh.Close()
	nl, err := nh.LinkByName(r.nfName)
	if err != nil {
		return err
	}
	if err := nh.LinkSetUp(nl); err != nil {
		return fmt.Errorf("set %s up: %w", r.nfName, err)
	}
	r.nfIfindex = nl.Attrs().Index
	return nil
}

// namespaces creates the two anonymous namespaces. netns.New switches the
// calling thread, so it runs on a locked thread that is switched back.
func (r *rig) namespaces() (err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	defer func() {
		if serr := netns.Set(orig); serr != nil {
			err = errors.Join(err, fmt.Errorf("switch back to the original namespace: %w", serr))
		}
	}()
	if r.genNS, err = netns.New(); err != nil {
		return fmt.Errorf("new network namespace: %w", err)
	}
	if r.nfNS, err = netns.New(); err != nil {
		return fmt.Errorf("new network namespace: %w", err)
	}
	return nil
}

// nfNetnsPath names the NF namespace for the agent: the anonymous
// namespace has no bind mount, but this process's descriptor of it does.
func (r *rig) nfNetnsPath() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(r.nfNS))
}

// inNamespace runs fn on a locked thread switched into ns and switches
// it back afterwards. Only if that fails is the thread left locked, so
// the runtime discards it: a locked goroutine that exits on the main
// thread would wedge it, keeping the namespace alive for the process's
// lifetime.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return from network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// inNF runs fn inside the NF namespace (test runs resolve the ingress
// ifindex there).
func (r *rig) inNF(fn func() error) error { return inNamespace(r.nfNS, fn) }

// start replays frames at full speed until stop, ctx or maxDuration. A
// running generator is stopped first and its trace replaced: the NF keeps
// running and sees the new traffic from the next burst on.
func (r *rig) start(ctx context.Context, frames [][]byte, maxDuration time.Duration) error {
	r.stop()
	gen, err := bench.NewGenerator(frames)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, maxDuration)
	run := &genRun{cancel: cancel, done: make(chan struct{})}
	r.mu.Lock()
	r.gen, r.run = gen, run
	r.mu.Unlock()
	go func() {
		defer close(run.done)
		defer cancel()
		run.err = inNamespace(r.genNS, func() error {
			for ctx.Err() == nil {
				if _, err := gen.Run(uint32(r.genIfindex), burst, 0); err != nil {
					return err
				}
				run.sent += burst
			}
			return nil
		})
	}()
	return nil
}

// stop stops the generator after its current burst and releases it.
func (r *rig) stop() (sent uint64, err error) {
	r.mu.Lock()
	run, gen := r.run, r.gen
	r.run, r.gen = nil, nil
	r.mu.Unlock()
	if run != nil {
		run.cancel()
		<-run.done
		sent, err = run.sent, run.err
	}
	if gen != nil {
		err = errors.Join(err, gen.Close())
	}
	return sent, err
}

// generatorErr returns the error a failed generator run ended with.
func (r *rig) generatorErr() error {
	r.mu.Lock()
	run := r.run
	r.mu.Unlock()
	if run == nil {
		return nil
	}
	select {
	case <-run.done:
		if run.err != nil {
			return fmt.Errorf("traffic generator: %w", run.err)
		}
	default:
	}
	return nil
}

// Close stops the generator and removes the namespaces with the veth
// pair: their only references are the handles closed here.
func (r *rig) Close() error {
	_, err := r.stop()
	errs := []error{err}
	for _, h := range []*netns.NsHandle{&r.genNS, &r.nfNS} {
		if *h >= 0 {
			errs = append(errs, h.Close())
			*h = -1
		}
	}
	return errors.Join(errs...)
}

// nsInode returns the inode of a namespace handle, which identifies the
// namespace while it exists.
func nsInode(h netns.NsHandle) uint64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return 0
	}
	return st.Ino
}

// testRun runs prog once on pkt as if it arrived on ingress, inside the
// NF namespace, and returns the verdict and the output frame.
func (r *rig) testRun(prog *ebpf.Program, pkt []byte, ingress uint32) (uint32, []byte, error) {
	var verdict uint32
	var out []byte
	err := r.inNF(func() error {
		buf := make([]byte, len(pkt)+256)
		ctx := xdpMD{DataEnd: uint32(len(pkt)), IngressIfindex: ingress}
		opts := ebpf.RunOptions{Data: pkt, DataOut: buf, Context: ctx}
		ret, err := prog.Run(&opts)
		if err != nil {
			return fmt.Errorf("BPF_PROG_TEST_RUN: %w", err)
		}
		verdict, out = ret, opts.DataOut
		return nil
	})
	return verdict, out, err
}

// xdpMD is struct xdp_md, the context of an XDP test run.
type xdpMD struct {
	Data, DataEnd, DataMeta uint32
	IngressIfindex          uint32
	RxQueueIndex            uint32
	EgressIfindex           uint32
}
