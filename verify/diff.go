package verify

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/mapstate"
)

// MinFrameSize is the smallest packet BPF_PROG_TEST_RUN accepts for XDP and
// socket-buffer programs: the kernel's bpf_test_init rejects anything shorter
// than an Ethernet header (ETH_HLEN) with EINVAL.
const MinFrameSize = 14

// DefaultMaxMismatches is the number of mismatches after which a
// differential test stops when DiffOptions.MaxMismatches is zero.
const DefaultMaxMismatches = 16

// The automatic map check mode weighs the maps by what reading them costs
// (see readCost): up to AutoMapCheckEvery entries they are compared after
// every packet; up to AutoMapCheckEntries every N packets, N chosen so
// that about AutoMapCheckEvery entries are read per packet; above that
// once at the end. In every mode maps are also compared after the last
// packet and after any packet whose verdict, output or context differed,
// so a difference that persists is always found; a periodic check only
// attributes it to a packet up to N-1 packets late. Measured on the
// reference machine: a batch lookup costs about 0.27 µs per entry, so
// per-packet checks of 4,096 entries in three collections cost 3 ms per
// packet, 300 times the program runs they check.
const (
	AutoMapCheckEvery   = 256
	AutoMapCheckEntries = 4096
)

// IteratedEntryCost is what reading one entry key by key (maps without
// batch lookups) costs relative to one entry of a batch lookup.
const IteratedEntryCost = 8

// HashBucketsPerEntry is how many empty hash buckets a batch lookup walks
// in the time it copies one entry (measured: 65,536 buckets in 0.24 ms).
const HashBucketsPerEntry = 64

// outputRoom is added to every packet to size the output buffer. XDP can
// grow a frame by its 256 bytes of headroom and by the tail room of its
// page; a socket buffer program can grow the packet much further with
// bpf_skb_change_tail. The kernel writes past a too small buffer only on
// very old kernels and fails the run with ENOSPC on current ones, and a
// failed run cannot be repeated without repeating its map side effects, so
// the buffer is made large enough for any growth up front (it is reused).
const outputRoom = 64 << 10

// ctxOutSize is the buffer for the context after a run. The kernel copies
// its full struct xdp_md or struct __sk_buff and fails with ENOSPC if the
// buffer is shorter, so leave room for future fields.
const ctxOutSize = 512

// xdpMDSize is the size of struct xdp_md on current kernels (six u32).
const xdpMDSize = 24

// DiffOptions controls [Differential].
type DiffOptions struct {
	// Programs are the entry programs run on every packet, in this order.
	// Empty selects every candidate program of type XDP, SchedCLS or
	// SchedACT and, when one of them is a tail call target of a program
	// array in the spec, every such program that is not a tail call target
	// (the entry points that reach it); with an empty candidate, the entry
	// points alone.
	Programs []string
	// Context is the input context of every run: a struct xdp_md for XDP
	// (for example to set ingress_ifindex at offset 12) or a struct
	// __sk_buff for TC programs. For XDP, data_end is always set to the
	// packet length as the kernel requires. Nil means an all-zero context.
	Context []byte
	// MapCheckInterval says when maps are compared: 0 chooses
	// automatically (see AutoMapCheckEntries), N > 0 every N packets,
	// negative at the end only. Maps are always compared after
	// the last packet and after any packet whose verdict, output or context
	// differed.
	MapCheckInterval int
	// PeriodicMaps, when not nil, limits the periodic map checks (those
	// MapCheckInterval schedules) to these maps: the maps some program
	// under test may write. Every comparable map is still compared after
	// the last packet and after any packet whose verdict, output or
	// context differed, so a persisting difference in a map left out is
	// found all the same; only a difference that a later packet undoes
	// would be missed, in a map the analysis says no program writes.
	PeriodicMaps []string
	// NoPrealloc creates the hash and per-CPU hash maps of all three
	// collections with BPF_F_NO_PREALLOC. Programs see the same map
	// semantics (an insert into a full map fails the same way; only an
	// allocation failure under memory pressure, which preallocation
	// rules out, could differ), and creating a large preallocated
	// per-CPU hash costs tens of milliseconds per copy. If a load fails
	// with it (tracing programs require preallocated maps), the
	// collections are loaded as they are.
	NoPrealloc bool
	// MaxMismatches stops the test after this many mismatches (all of them
	// are kept in the report). Zero means DefaultMaxMismatches.
	MaxMismatches int
	// LogTail is passed to the loads, see LoadOptions.LogTail.
	LogTail int
}

// Differential runs the original collection and the candidate side by side
// on the same packets from the same starting state and reports every
// difference in verdict, output packet, output context and map contents.
//
// Three collections are loaded, each from its own copy of spec and with its
// own fresh maps: the original (A), the candidate (C) and a second original
// (B). state's variables are set before loading and its map entries written
// after. Each packet is run through each entry program on A, then C, then B,
// all pinned to one CPU so that per-CPU map slots line up. Whatever A and B
// disagree on is nondeterministic (clocks, random numbers) and excluded;
// everything else must be identical in C. Running C between A and B means a
// clock value stored by C lies between those of A and B, so a map value
// byte that differs between A and B also excludes the less significant
// bytes of its 64-bit word.
//
// Randomness that happens to agree in both original runs cannot be told
// apart from a real difference on that run; such a mismatch is still
// counted (the test fails closed) and is flagged Nondeterministic when the
// same place differed between the originals elsewhere in the test. Runs the
// kernel refuses for the original and the candidate alike (the skb test
// runner refuses IPv4 frames shorter than an IPv4 header) are skipped and
// counted in Report.Skipped.
//
// A verifier rejection is returned as a *VerifierError. The report is
// returned with a nil error whenever the comparison ran (check
// Report.Passed); on cancellation the partial report is returned with
// ctx.Err().
func Differential(ctx context.Context, spec *ebpf.CollectionSpec, state *mapstate.State, cand Candidate, packets [][]byte, opts DiffOptions) (*Report, error) {
	if len(packets) == 0 {
		return nil, errors.New("verify: differential test needs at least one packet")
	}
	for i, p := range packets {
		if len(p) < MinFrameSize {
			return nil, fmt.Errorf("verify: packet %d has %d bytes, the kernel needs at least %d", i, len(p), MinFrameSize)
		}
	}
	if state == nil {
		state = mapstate.New()
	}
	candSpec, err := WithCandidate(spec, cand)
	if err != nil {
		return nil, err
	}
	if err := state.Check(spec); err != nil {
		return nil, err
	}
	progs, err := entryPrograms(spec, cand, opts.Programs)
	if err != nil {
		return nil, err
	}

	lo := LoadOptions{LogTail: opts.LogTail, Cache: btf.NewCache()}
	var insts [3]*instance
	defer func() {
		for _, in := range insts {
			if in != nil {
				in.coll.Close()
			}
		}
	}()
	err = loadInstances(&insts, spec, candSpec, cand, state, lo, opts.NoPrealloc)
	if err != nil && opts.NoPrealloc {
		// Some program type refuses maps without preallocation
		// (tracing programs): load the collections as they are.
		err = loadInstances(&insts, spec, candSpec, cand, state, lo, false)
	}
	if err != nil {
		return nil, err
	}

	d := &differ{
		progs:         progs,
		a:             insts[0],
		c:             insts[1],
		b:             insts[2],
		ctxIn:         opts.Context,
		maxMismatches: opts.MaxMismatches,
		ndLoc:         map[string]struct{}{},
		raws:          map[string]*[3]*mapstate.Raw{},
		reported:      map[string]struct{}{},
		report:        &Report{Programs: progs, Total: len(packets), Mismatches: []Mismatch{}},
	}
	if d.maxMismatches <= 0 {
		d.maxMismatches = DefaultMaxMismatches
	}
	maxLen := 0
	for _, p := range packets {
		maxLen = max(maxLen, len(p))
	}
	for _, in := range insts {
		in.out = make([]byte, maxLen+outputRoom)
	}
	if opts.PeriodicMaps != nil {
		d.periodic = map[string]bool{}
		for _, m := range opts.PeriodicMaps {
			d.periodic[m] = true
		}
	}
	if err := d.planMapChecks(opts.MapCheckInterval); err != nil {
		return nil, err
	}

	// The runs happen on a goroutine of their own whose thread is pinned
	// to one CPU; if the old affinity cannot be restored the goroutine
	// exits still locked, and the runtime then discards the thread.
	type result struct{ err error }
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		restore, cpu, err := pinToOneCPU()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err}
			return
		}
		d.report.CPU = cpu
		err = d.run(ctx, packets)
		if restore() == nil {
			runtime.UnlockOSThread()
		}
		done <- result{err}
	}()
	res := <-done
	if res.err != nil && !errors.Is(res.err, context.Canceled) && !errors.Is(res.err, context.DeadlineExceeded) {
		return nil, res.err
	}
	return d.report, res.err
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC.
const bpfFNoPrealloc = 1

// loadInstances loads the original (twice) and the candidate into insts,
// closing and clearing what an earlier call left there. With noPrealloc,
// hash and per-CPU hash maps of all three are created without
// preallocated elements.
func loadInstances(insts *[3]*instance, spec, candSpec *ebpf.CollectionSpec, cand Candidate, state *mapstate.State, lo LoadOptions, noPrealloc bool) error {
	for i, in := range insts {
		if in != nil {
			in.coll.Close()
			insts[i] = nil
		}
	}
	// Order of the array is the run order: original, candidate, original.
	// The three loads are independent (own spec copies and maps; the BTF
	// cache is safe for concurrent use) and mostly kernel work (map
	// creation, the verifier), so they run side by side.
	var errs [3]error
	var wg sync.WaitGroup
	for i, s := range []*ebpf.CollectionSpec{spec.Copy(), candSpec.Copy(), spec.Copy()} {
		var c Candidate
		if i == 1 {
			c = cand
		}
		if noPrealloc {
			for _, ms := range s.Maps {
				if ms.Type == ebpf.Hash || ms.Type == ebpf.PerCPUHash {
					ms.Flags |= bpfFNoPrealloc
				}
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			insts[i], errs[i] = newInstance(s, c, state, lo)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// instance is one loaded collection under test.
type instance struct {
	coll *ebpf.Collection
	out  []byte
}

func newInstance(s *ebpf.CollectionSpec, cand Candidate, state *mapstate.State, lo LoadOptions) (*instance, error) {
	// state.Load, with the entries of large maps written in batches: one
	// syscall per entry made writing a 10,000-entry map into the three
	// copies cost more than running the packets.
	if err := state.ApplySpec(s); err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(s, lo.collectionOptions())
	if err != nil {
		return nil, loadError(fmt.Errorf("load collection: %w", err), s, cand, lo)
	}
	if err := applyState(state, coll.Maps); err != nil {
		coll.Close()
		return nil, err
	}
	return &instance{coll: coll}, nil
}

// batchMin is the smallest number of entries written with one batch
// update instead of one update per entry.
const batchMin = 64

// applyState writes state's entries into maps as state.Apply does, with
// a batch update for every map of a type in batchTypes with at least
// batchMin entries; a map whose batch update fails (a map type without
// batch support) is written entry by entry. Updates are in entry order
// in both cases, so a key listed twice ends with its last value.
func applyState(state *mapstate.State, maps map[string]*ebpf.Map) error {
	rest := &mapstate.State{Maps: map[string]*mapstate.Map{}}
	for name, ms := range state.Maps {
		m, ok := maps[name]
		if !ok || len(ms.Entries) < batchMin || !batchTypes[m.Type()] || !batchable(ms, m) {
			rest.Maps[name] = ms
			continue
		}
		keys := packed(ms.Entries, int(m.KeySize()), func(e mapstate.Entry) []byte { return e.Key })
		vals := packed(ms.Entries, int(m.ValueSize()), func(e mapstate.Entry) []byte { return e.Value })
		if n, err := m.BatchUpdate(keys, vals, nil); err != nil || n != len(ms.Entries) {
			rest.Maps[name] = ms
		}
	}
	// Apply validates and writes what is left, reporting bad entries.
	return rest.Apply(maps)
}

// batchTypes are the map types whose entries are plain bytes (not file
// descriptors or per-CPU value sets) that applyState writes in batches.
var batchTypes = map[ebpf.MapType]bool{ebpf.Hash: true, ebpf.LRUHash: true, ebpf.Array: true, ebpf.LPMTrie: true}

// batchable reports whether every entry of ms has a key and a value of
// m's sizes and no per-CPU values.
func batchable(ms *mapstate.Map, m *ebpf.Map) bool {
	for _, e := range ms.Entries {
		if e.Values != nil || len(e.Key) != int(m.KeySize()) || len(e.Value) != int(m.ValueSize()) {
			return false
		}
	}
	return true
}

// packed returns the field of every entry as a slice of [size]byte
// arrays, the form cilium/ebpf's batch calls take for keys and values of
// a size known only at run time.
func packed(entries []mapstate.Entry, size int, field func(mapstate.Entry) []byte) any {
	s := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), len(entries), len(entries))
	for i, e := range entries {
		reflect.Copy(s.Index(i), reflect.ValueOf(field(e)))
	}
	return s.Interface()
}

// runResult is the outcome of one BPF_PROG_TEST_RUN.
type runResult struct {
	verdict uint32
	out     []byte
	ctx     []byte
	err     error
}

func (in *instance) run(prog string, pkt, ctxIn []byte) runResult {
	p := in.coll.Programs[prog]
	ctxOut := make([]byte, ctxOutSize)
	ro := ebpf.RunOptions{Data: pkt, DataOut: in.out, ContextOut: ctxOut}
	if ctxIn != nil {
		ro.Context = ctxIn
	}
	v, err := p.Run(&ro)
	if err != nil {
		return runResult{err: err}
	}
	return runResult{verdict: v, out: ro.DataOut, ctx: ctxOut}
}

// runnable reports whether programs of type t take packets in a test run.
func runnable(t ebpf.ProgramType) bool {
	switch t {
	case ebpf.XDP, ebpf.SchedCLS, ebpf.SchedACT:
		return true
	}
	return false
}

// tailTargets returns the programs that static program array contents
// reference by name.
func tailTargets(spec *ebpf.CollectionSpec) map[string]bool {
	targets := map[string]bool{}
	for _, ms := range spec.Maps {
		if ms.Type != ebpf.ProgramArray {
			continue
		}
		for _, kv := range ms.Contents {
			if name, ok := kv.Value.(string); ok {
				targets[name] = true
			}
		}
	}
	return targets
}

func entryPrograms(spec *ebpf.CollectionSpec, cand Candidate, requested []string) ([]string, error) {
	if len(requested) > 0 {
		var out []string
		for _, name := range requested {
			ps, ok := spec.Programs[name]
			if !ok {
				return nil, fmt.Errorf("verify: entry program %q does not exist", name)
			}
			if !runnable(ps.Type) {
				return nil, fmt.Errorf("verify: entry program %q has type %s; only XDP, SchedCLS and SchedACT programs can be run on packets", name, ps.Type)
			}
			if !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
		return out, nil
	}
	targets := tailTargets(spec)
	var out []string
	reachesTarget := false
	for _, name := range cand.Names() {
		if runnable(spec.Programs[name].Type) {
			out = append(out, name)
			reachesTarget = reachesTarget || targets[name]
		}
	}
	if len(out) == 0 || reachesTarget {
		for name, ps := range spec.Programs {
			if runnable(ps.Type) && !targets[name] && !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("verify: no XDP or TC program to run packets through")
	}
	slices.Sort(out)
	return out, nil
}

// pinToOneCPU restricts the calling thread to the first CPU it may run on
// and returns a function restoring the previous affinity.
func pinToOneCPU() (func() error, int, error) {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, 0, fmt.Errorf("verify: get CPU affinity: %w", err)
	}
	const maxCPUs = 8 * 1024 // CPU_SETSIZE is 1024; cpu sets never exceed this
	cpu := -1
	for i := 0; i < maxCPUs && i < 8*binary.Size(old); i++ {
		if old.IsSet(i) {
			cpu = i
			break
		}
	}
	if cpu < 0 {
		return nil, 0, errors.New("verify: thread may run on no CPU")
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return nil, 0, fmt.Errorf("verify: pin to CPU %d: %w", cpu, err)
	}
	return func() error { return unix.SchedSetaffinity(0, &old) }, cpu, nil
}
