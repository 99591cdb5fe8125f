//go:build linux

// Package testbed is a live testbed for XDP network functions on one
// machine: two fresh network namespaces joined by a veth pair, the NF
// attached (native XDP) to the veth end in one of them, and a traffic
// generator in the other that replays a trace as real frames.
//
// The generator is the bench package's replay driver run with
// BPF_F_TEST_XDP_LIVE_FRAMES: every frame takes the next trace packet and
// leaves with XDP_TX through the generator's veth end, so it arrives at the
// NF's end and runs the NF's XDP program (about 6.5 Mpps on one core of
// this machine class). A Sampler reads the attached program's bpf_stats
// (run count and run time, enabled with BPF_ENABLE_STATS for the testbed's
// lifetime) at a fixed interval: packets per second and ns per packet over
// time, before and after a swap.
//
// The NF may also be attached by someone else (Options.ExternalNF), for
// example an agent that owns the XDP link and swaps programs on it; a
// following sampler (StartFollowingSampler) then tracks whatever program
// is attached, summing over every one seen.
//
// Namespaces are anonymous and held only by the testbed's handles, so
// Close, or the process exiting, removes them and the veth pair with them.
// Veth names are unique per testbed.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/bench"
)

// Options configures a testbed.
type Options struct {
	// Frames is the trace the generator replays. It may be left empty
	// and loaded later with LoadTrace, for traces that depend on the
	// NF's interface (its ifindex or MAC).
	Frames [][]byte
	// SampleInterval is the Sampler's period. Default 100 ms.
	SampleInterval time.Duration
	// MaxSamples bounds the samples kept (oldest dropped first). Default
	// 36,000 (an hour at the default interval).
	MaxSamples int
	// Burst is the number of frames per live-frames test run; the
	// generator checks for Stop between runs. Default 1<<18 (about 40 ms
	// at full speed).
	Burst uint32
	// MaxDuration stops the generator by itself after this long, so a
	// forgotten Stop cannot load the machine forever. Default 10 minutes.
	MaxDuration time.Duration
	// ExternalNF says that the NF is attached by someone else (for
	// example an agent that owns the XDP link and swaps programs on it)
	// to the interface NFIfindex names in NFNamespace (or NFNetnsPath):
	// Start then does not require Attach, and the testbed never touches
	// the NF's attachment.
	ExternalNF bool
	// LinkPrefix starts the veth names (prefix+"gen"+id and
	// prefix+"nf"+id), so a user can recognize its own interfaces, e.g.
	// in a leak check. Default "m"; at most 3 characters, as interface
	// names are limited to 15.
	LinkPrefix string
}

func (o Options) withDefaults() Options {
	if o.SampleInterval <= 0 {
		o.SampleInterval = 100 * time.Millisecond
	}
	if o.MaxSamples <= 0 {
		o.MaxSamples = 36000
	}
	if o.Burst == 0 {
		o.Burst = 1 << 18
	}
	if o.MaxDuration <= 0 {
		o.MaxDuration = 10 * time.Minute
	}
	if o.LinkPrefix == "" {
		o.LinkPrefix = "m"
	}
	return o
}

// Testbed is a veth pair between a generator namespace and an NF namespace.
// Its methods are safe for concurrent use.
type Testbed struct {
	opts Options

	genNS, nfNS     netns.NsHandle
	genName, nfName string
	genIfindex      int
	nfIfindex       int

	gen   *bench.Generator
	stats io.Closer

	mu      sync.Mutex
	xdp     link.Link
	prog    *ebpf.Program
	running *run
	sampler *Sampler
}

// run is one generator run.
type run struct {
	cancel context.CancelFunc
	done   chan struct{}
	res    GenStats
	err    error

	// parent and packets are Start's arguments and start its time: a
	// trace replacement restarts the run with them (see LoadTrace).
	parent  context.Context
	packets uint64
	start   time.Time
	// stopped is set when Stop or Close (not a trace replacement)
	// cancelled the run.
	stopped bool
	// next is the run that continues this one after a trace
	// replacement, for Wait to follow.
	next *run
}

// GenStats is what the generator did in one run.
type GenStats struct {
	// Sent is the number of frames the generator's program ran on (each
	// returned XDP_TX unless it failed to build the frame).
	Sent uint64
	// Failed counts frames the generator could not build.
	Failed uint64
	// Elapsed is the run's duration.
	Elapsed time.Duration
}

// PPS returns the generator's rate in frames per second.
func (g GenStats) PPS() float64 {
	if g.Elapsed <= 0 {
		return 0
	}
	return float64(g.Sent) / g.Elapsed.Seconds()
}

// New creates the namespaces and the veth pair (both ends up), loads the
// generator and turns bpf_stats on. ctx bounds the setup only. The caller
// must Close the testbed.
func New(ctx context.Context, opts Options) (*Testbed, error) {
	opts = opts.withDefaults()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(opts.LinkPrefix) > 3 {
		return nil, fmt.Errorf("testbed: link prefix %q longer than 3 characters", opts.LinkPrefix)
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(suffix)
	t := &Testbed{opts: opts, genName: opts.LinkPrefix + "gen" + id, nfName: opts.LinkPrefix + "nf" + id, genNS: -1, nfNS: -1}
	if err := t.setup(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Testbed) setup() error {
	var err error
	if t.genNS, t.nfNS, err = newNamespaces(); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(t.genNS)
	if err != nil {
		return fmt.Errorf("testbed: netlink in generator namespace: %w", err)
	}
	defer h.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: t.genName},
		PeerName:      t.nfName,
		PeerNamespace: netlink.NsFd(t.nfNS),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("testbed: create veth %s/%s: %w", t.genName, t.nfName, err)
	}
	gl, err := h.LinkByName(t.genName)
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	if err := h.LinkSetUp(gl); err != nil {
		return fmt.Errorf("testbed: set %s up: %w", t.genName, err)
	}
	t.genIfindex = gl.Attrs().Index
	nh, err := netlink.NewHandleAt(t.nfNS)
	if err != nil {
		return fmt.Errorf("testbed: netlink in NF namespace: %w", err)
	}
	defer nh.Close()
	nl, err := nh.LinkByName(t.nfName)
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	if err := nh.LinkSetUp(nl); err != nil {
		return fmt.Errorf("testbed: set %s up: %w", t.nfName, err)
	}
	t.nfIfindex = nl.Attrs().Index
	if len(t.opts.Frames) > 0 {
		if t.gen, err = bench.NewGenerator(t.opts.Frames); err != nil {
			return err
		}
	}
	if t.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		return fmt.Errorf("testbed: enable bpf_stats: %w", err)
	}
	return nil
}

// newNamespaces creates two anonymous network namespaces. Creating one
// switches the calling thread into it, so this runs on a thread of its
// own (see onThread) rather than the caller's, which could not be
// discarded if switching back failed.
func newNamespaces() (gen, nf netns.NsHandle, err error) {
	gen, nf = -1, -1
	err = onThread(func() error {
		var err error
		if gen, err = netns.New(); err != nil {
			return fmt.Errorf("testbed: new namespace: %w", err)
		}
		if nf, err = netns.New(); err != nil {
			return fmt.Errorf("testbed: new namespace: %w", err)
		}
		return nil
	})
	if err != nil {
		for _, h := range []netns.NsHandle{gen, nf} {
			if h >= 0 {
				h.Close()
			}
		}
		return -1, -1, err
	}
	return gen, nf, nil
}

// LoadTrace replaces the trace the generator replays. On a stopped
// generator it takes effect at the next Start. On a running one, the run
// ends after its current burst and goes on at once with the new trace
// under the same context and packet count (the frames sent so far
// count), with MaxDuration starting over: the NF keeps running and sees
// the new traffic from the next burst on (a traffic shift).
func (t *Testbed) LoadTrace(frames [][]byte) error {
	gen, err := bench.NewGenerator(frames)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.running
	if r != nil {
		// Wait for the old run under the lock: no Start, Stop or
		// LoadTrace can come in between, so the restart is seamless
		// to every caller.
		ended := false
		select {
		case <-r.done:
			ended = true
		default:
			r.cancel()
			<-r.done
		}
		if ended || r.stopped || r.err != nil || (r.packets > 0 && r.res.Sent >= r.packets) || r.parent.Err() != nil {
			// It ended by itself (or was stopped) before the
			// replacement: leave it for Wait, as without one.
			r = nil
		}
	}
	if t.gen != nil {
		t.gen.Close()
	}
	t.gen = gen
	if r != nil {
		t.startLocked(r.parent, r.packets, r.res, r.start)
		r.next = t.running
	}
	return nil
}

// ReplaceTrace is LoadTrace, named for its use on a running generator.
func (t *Testbed) ReplaceTrace(frames [][]byte) error { return t.LoadTrace(frames) }

// NFIfindex returns the ifindex of the NF's veth end, in the NF namespace.
func (t *Testbed) NFIfindex() int { return t.nfIfindex }

// NFLinkName returns the name of the NF's veth end.
func (t *Testbed) NFLinkName() string { return t.nfName }

// NFNamespace returns the NF namespace. It stays owned by the testbed.
func (t *Testbed) NFNamespace() netns.NsHandle { return t.nfNS }

// NFNetnsPath names the NF namespace as a path, for code that opens a
// namespace by path (an agent attaching the NF itself): the namespace is
// anonymous, with no bind mount, but this process's descriptor of it is a
// path while the testbed is open.
func (t *Testbed) NFNetnsPath() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(t.nfNS))
}

// GenLinkName returns the name of the generator's veth end.
func (t *Testbed) GenLinkName() string { return t.genName }

// NamespaceInodes returns the inodes of the generator and NF namespaces,
// which identify them while they exist (a leak check looks for them
// after Close). An inode is 0 if it cannot be read.
func (t *Testbed) NamespaceInodes() (gen, nf uint64) {
	return nsInode(t.genNS), nsInode(t.nfNS)
}

func nsInode(h netns.NsHandle) uint64 {
	var st unix.Stat_t
	if h < 0 || unix.Fstat(int(h), &st) != nil {
		return 0
	}
	return st.Ino
}

// InNF runs fn on an OS thread inside the NF namespace (for example to
// attach a program or resolve interfaces there) and returns its error.
func (t *Testbed) InNF(fn func() error) error { return inNamespace(t.nfNS, fn) }

// inNamespace runs fn on a thread of its own switched into ns.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("testbed: enter namespace: %w", err)
		}
		return fn()
	})
}

// onThread runs fn, which may switch its thread's network namespace, on
// a new goroutine locked to its OS thread, then switches the thread back
// to the namespace it started in and unlocks it, so the thread returns
// to the runtime's pool as it was. A thread is never released, or left
// to exit, inside another namespace: a released one would run unrelated
// goroutines there, and one exiting locked on the process's main thread
// wedges it, keeping the namespace (and its veth) alive for the
// process's lifetime. Only if switching back fails, even on retries, does
// the goroutine exit locked, which makes the runtime discard the thread.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			// Nothing switched yet: the thread is still where it was.
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testbed: current namespace: %w", err)
			return
		}
		defer orig.Close()
		ferr := fn()
		var serr error
		for range 3 {
			if serr = netns.Set(orig); serr == nil {
				break
			}
		}
		if serr != nil {
			errc <- errors.Join(ferr, fmt.Errorf("testbed: switch back to the original namespace: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// TestRun runs prog once on pkt with BPF_PROG_TEST_RUN inside the NF
// namespace, as if pkt arrived on the interface with index ingress there
// (the kernel resolves the ifindex in the caller's namespace), and
// returns the verdict and the output frame.
func (t *Testbed) TestRun(prog *ebpf.Program, pkt []byte, ingress uint32) (uint32, []byte, error) {
	var verdict uint32
	var out []byte
	err := t.InNF(func() error {
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

// Attach attaches prog (an XDP program) to the NF's veth end in native
// mode and makes it the program the Sampler reads. Attaching again
// replaces the attached program atomically, like Swap.
func (t *Testbed) Attach(prog *ebpf.Program) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.xdp != nil {
		return t.swapLocked(prog)
	}
	var l link.Link
	err := t.InNF(func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: t.nfIfindex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return fmt.Errorf("testbed: attach XDP to %s: %w", t.nfName, err)
	}
	t.xdp, t.prog = l, prog
	return nil
}

// Swap atomically replaces the attached program (bpf_link update): no
// frame goes unprocessed.
func (t *Testbed) Swap(prog *ebpf.Program) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.xdp == nil {
		return errors.New("testbed: nothing attached to swap")
	}
	return t.swapLocked(prog)
}

func (t *Testbed) swapLocked(prog *ebpf.Program) error {
	if err := t.xdp.Update(prog); err != nil {
		return fmt.Errorf("testbed: swap XDP program on %s: %w", t.nfName, err)
	}
	t.prog = prog
	return nil
}

// Detach removes the attached program.
func (t *Testbed) Detach() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.xdp == nil {
		return nil
	}
	err := t.xdp.Close()
	t.xdp, t.prog = nil, nil
	return err
}

// Attached returns the attached program, or nil.
func (t *Testbed) Attached() *ebpf.Program {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.prog
}

// Start starts the generator: it replays the trace at full speed in
// bursts until Stop, ctx is done, MaxDuration has passed or, if packets is
// positive, about that many frames were sent. The NF must be attached
// first (by Attach, or by someone else with Options.ExternalNF): a veth
// only accepts XDP_TX frames when its peer runs XDP.
func (t *Testbed) Start(ctx context.Context, packets uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.running != nil {
		return errors.New("testbed: generator already running")
	}
	if t.xdp == nil && !t.opts.ExternalNF {
		return errors.New("testbed: attach the NF before starting the generator")
	}
	if t.gen == nil {
		return errors.New("testbed: no trace loaded")
	}
	t.startLocked(ctx, packets, GenStats{}, time.Now())
	return nil
}

// startLocked starts a run of t.gen that continues from res (frames sent
// since start). t.mu is held.
func (t *Testbed) startLocked(parent context.Context, packets uint64, res GenStats, start time.Time) {
	gen := t.gen
	ctx, cancel := context.WithTimeout(parent, t.opts.MaxDuration)
	r := &run{cancel: cancel, done: make(chan struct{}), res: res, parent: parent, packets: packets, start: start}
	t.running = r
	go func() {
		defer close(r.done)
		defer cancel()
		r.err = inNamespace(t.genNS, func() error {
			defer func() { r.res.Elapsed = time.Since(start) }()
			for ctx.Err() == nil && (packets == 0 || r.res.Sent < packets) {
				burst := t.opts.Burst
				if packets > 0 {
					burst = uint32(min(uint64(burst), packets-r.res.Sent))
				}
				failed, err := gen.Run(uint32(t.genIfindex), burst, 0)
				if err != nil {
					return err
				}
				r.res.Sent += uint64(burst)
				r.res.Failed += failed
			}
			return nil
		})
	}()
}

// Err returns the error the generator's current run failed with, or nil
// while it runs, after it ended without error, or when none was started.
// A caller that leaves the generator running for a long time polls it to
// notice a failure.
func (t *Testbed) Err() error {
	t.mu.Lock()
	r := t.running
	t.mu.Unlock()
	if r == nil {
		return nil
	}
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// Wait waits for the generator to finish by itself (packet count,
// MaxDuration or ctx) and returns what it did.
func (t *Testbed) Wait() (GenStats, error) {
	t.mu.Lock()
	r := t.running
	t.mu.Unlock()
	if r == nil {
		return GenStats{}, errors.New("testbed: generator not running")
	}
	for {
		<-r.done
		t.mu.Lock()
		if r.next != nil {
			// Replaced by LoadTrace: the run goes on as r.next.
			r = r.next
			t.mu.Unlock()
			continue
		}
		if t.running == r {
			t.running = nil
		}
		t.mu.Unlock()
		return r.res, r.err
	}
}

// Stop stops the generator (after its current burst) and returns what it
// did.
func (t *Testbed) Stop() (GenStats, error) {
	t.mu.Lock()
	r := t.running
	if r != nil {
		// Under the lock, so that a concurrent LoadTrace either
		// restarted the run before (and this stops the new one) or
		// sees it stopped and does not restart it.
		r.stopped = true
		r.cancel()
	}
	t.mu.Unlock()
	if r == nil {
		return GenStats{}, errors.New("testbed: generator not running")
	}
	return t.Wait()
}

// Close stops the generator and the sampler, detaches the NF, and removes
// the namespaces with the veth pair.
func (t *Testbed) Close() error {
	var errs []error
	t.mu.Lock()
	r, s := t.running, t.sampler
	if r != nil {
		r.stopped = true
	}
	t.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
	if s != nil {
		s.Stop()
	}
	errs = append(errs, t.Detach())
	if t.gen != nil {
		errs = append(errs, t.gen.Close())
	}
	if t.stats != nil {
		errs = append(errs, t.stats.Close())
	}
	// The namespaces' only references are these handles: closing them
	// destroys the namespaces and the veth pair in them.
	for _, h := range []*netns.NsHandle{&t.genNS, &t.nfNS} {
		if *h >= 0 {
			errs = append(errs, h.Close())
			*h = -1
		}
	}
	return errors.Join(errs...)
}
