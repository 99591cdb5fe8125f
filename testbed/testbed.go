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
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(suffix)
	t := &Testbed{opts: opts, genName: "mgen" + id, nfName: "mnf" + id, genNS: -1, nfNS: -1}
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
// switches the calling thread into it, so this runs on a locked thread
// that is switched back before it is released.
func newNamespaces() (gen, nf netns.NsHandle, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return -1, -1, fmt.Errorf("testbed: current namespace: %w", err)
	}
	defer orig.Close()
	gen, nf = -1, -1
	defer func() {
		if serr := netns.Set(orig); serr != nil && err == nil {
			err = fmt.Errorf("testbed: switch back to the original namespace: %w", serr)
		}
		if err != nil {
			for _, h := range []netns.NsHandle{gen, nf} {
				if h >= 0 {
					h.Close()
				}
			}
		}
	}()
	if gen, err = netns.New(); err != nil {
		return -1, -1, fmt.Errorf("testbed: new namespace: %w", err)
	}
	if nf, err = netns.New(); err != nil {
		return gen, -1, fmt.Errorf("testbed: new namespace: %w", err)
	}
	return gen, nf, nil
}

// LoadTrace replaces the trace the generator replays. The generator must
// not be running.
func (t *Testbed) LoadTrace(frames [][]byte) error {
	gen, err := bench.NewGenerator(frames)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.running != nil {
		gen.Close()
		return errors.New("testbed: generator running")
	}
	if t.gen != nil {
		t.gen.Close()
	}
	t.gen = gen
	return nil
}

// NFIfindex returns the ifindex of the NF's veth end, in the NF namespace.
func (t *Testbed) NFIfindex() int { return t.nfIfindex }

// NFLinkName returns the name of the NF's veth end.
func (t *Testbed) NFLinkName() string { return t.nfName }

// NFNamespace returns the NF namespace. It stays owned by the testbed.
func (t *Testbed) NFNamespace() netns.NsHandle { return t.nfNS }

// InNF runs fn on an OS thread inside the NF namespace (for example to
// attach a program or resolve interfaces there) and returns its error.
func (t *Testbed) InNF(fn func() error) error { return inNamespace(t.nfNS, fn) }

// inNamespace runs fn on a locked thread in ns and switches the thread
// back before releasing it. If the switch back fails, the goroutine exits
// locked, so the runtime discards the thread rather than reuse it in the
// wrong namespace. (Relying on that alone is not enough: a goroutine that
// exits locked to the main thread wedges it, namespace and all.)
func inNamespace(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("testbed: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("testbed: enter namespace: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
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
// first: a veth only accepts XDP_TX frames when its peer runs XDP.
func (t *Testbed) Start(ctx context.Context, packets uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.running != nil {
		return errors.New("testbed: generator already running")
	}
	if t.xdp == nil {
		return errors.New("testbed: attach the NF before starting the generator")
	}
	if t.gen == nil {
		return errors.New("testbed: no trace loaded")
	}
	gen := t.gen
	ctx, cancel := context.WithTimeout(ctx, t.opts.MaxDuration)
	r := &run{cancel: cancel, done: make(chan struct{})}
	t.running = r
	go func() {
		defer close(r.done)
		defer cancel()
		r.err = inNamespace(t.genNS, func() error {
			start := time.Now()
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
	return nil
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
	<-r.done
	t.mu.Lock()
	if t.running == r {
		t.running = nil
	}
	t.mu.Unlock()
	return r.res, r.err
}

// Stop stops the generator (after its current burst) and returns what it
// did.
func (t *Testbed) Stop() (GenStats, error) {
	t.mu.Lock()
	r := t.running
	t.mu.Unlock()
	if r == nil {
		return GenStats{}, errors.New("testbed: generator not running")
	}
	r.cancel()
	return t.Wait()
}

// Close stops the generator and the sampler, detaches the NF, and removes
// the namespaces with the veth pair.
func (t *Testbed) Close() error {
	var errs []error
	t.mu.Lock()
	r, s := t.running, t.sampler
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
