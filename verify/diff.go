package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

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
// (see readCost; a hash map's copy created smaller for the test,
// DiffOptions.InsertBounds, is weighed at its spec's size, so shrinking
// makes checks cheaper, not more frequent): up to AutoMapCheckEvery
// entries they are compared after
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
	// ReadOnlyMaps are maps to create with BPF_F_RDONLY_PROG in all
	// three collections: maps no program is expected to write. The
	// kernel verifier then refuses any program that could write them
	// (helper updates and deletes, stores and atomics through a value
	// pointer), so in collections that load they provably keep the
	// contents they were filled with and are not read back for the
	// comparison (Report.ReadOnlyMaps). The flag changes nothing else:
	// without a freeze the verifier does not treat the values as
	// constants. If a program does write one of them, the collections
	// are loaded again without the flag and those maps are compared as
	// usual. Maps of types other than arrays, hashes and LPM tries are
	// left as they are.
	ReadOnlyMaps []string
	// CandidateLogLevel is the verifier log level of the candidate's
	// load. ebpf.LogLevelStats keeps a rejected load from being repeated
	// with the full log (gigabytes for a program over the complexity
	// limit); the rejection then carries only the statistics.
	CandidateLogLevel ebpf.LogLevel
	// NoPrealloc creates the hash and per-CPU hash maps of all three
	// collections with BPF_F_NO_PREALLOC. Programs see the same map
	// semantics (an insert into a full map fails the same way; only an
	// allocation failure under memory pressure, which preallocation
	// rules out, could differ), and creating a large preallocated
	// per-CPU hash costs tens of milliseconds per copy. If a load fails
	// with it (tracing programs require preallocated maps), the
	// collections are loaded as they are.
	NoPrealloc bool
	// InsertBounds and MaxPackets let the test create its copies of
	// large hash maps smaller, which makes reading them back cheaper
	// (a read walks every bucket). InsertBounds names hash maps (hash,
	// LRU hash and their per-CPU variants) whose every use in every
	// program of the collections is a lookup, update or delete helper
	// call or an access through a value pointer, each with an upper bound
	// on the elements one packet (its run of every entry program, tail
	// calls included) may insert, in the originals and in the
	// candidate. Each such map's copies get the smallest power of two
	// that holds the entries they are filled with, MaxPackets packets'
	// inserts and CapacitySlack more, if that is less than the spec's
	// max_entries: the copies then never fill, so they behave exactly as
	// at full size (see capacity.go for the argument). Run refuses a
	// test that could fill a copy (more packets than planned, or a state
	// with more entries since the load). Report.MapCapacities lists the
	// shrunk maps.
	InsertBounds map[string]int
	MaxPackets   int
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
//
// Differential is [NewSession], [Session.Run] and [Session.Close].
func Differential(ctx context.Context, spec *ebpf.CollectionSpec, state *mapstate.State, cand Candidate, packets [][]byte, opts DiffOptions) (*Report, error) {
	if err := checkPackets(packets); err != nil {
		return nil, err
	}
	s, err := NewSession(spec, state, cand, opts)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Run(ctx, packets)
}

func checkPackets(packets [][]byte) error {
	if len(packets) == 0 {
		return errors.New("verify: differential test needs at least one packet")
	}
	for i, p := range packets {
		if len(p) < MinFrameSize {
			return fmt.Errorf("verify: packet %d has %d bytes, the kernel needs at least %d", i, len(p), MinFrameSize)
		}
	}
	return nil
}

// Session is the three collections of a differential test (see
// [Differential]) kept loaded, so that one load serves several tests:
// [Session.Reset] puts every map back to a given state (rewriting only
// the maps a program may have written or whose wanted contents changed)
// and [Session.Run] runs the next test. A Session is not safe for
// concurrent use.
type Session struct {
	spec  *ebpf.CollectionSpec // the candidate's collection
	progs []string
	opts  DiffOptions
	// insts in run order: original, candidate, second original.
	insts [3]*instance
	// loadTime is what loading took, reported by the first Run;
	// candTime the candidate's part of it.
	loadTime, candTime time.Duration
	// orig is the emptied Originals the two copies came from, which
	// Release hands back with them.
	orig *Originals
}

// Originals is the original collection of a differential test loaded
// twice with its maps filled: the first and second original of
// [Differential]. [LoadOriginals] can load them while the candidate is
// still being built; [NewCandidateSession] adds the candidate.
type Originals struct {
	spec     *ebpf.CollectionSpec
	insts    [2]*instance
	loadTime time.Duration
}

// LoadOriginals loads spec twice and fills the maps of both copies from
// state, with opts.NoPrealloc and opts.ReadOnlyMaps applied as
// [Differential] does (ReadOnlyMaps should name maps the original
// programs do not write; if one does, both copies are loaded again
// without the flag).
func LoadOriginals(spec *ebpf.CollectionSpec, state *mapstate.State, opts DiffOptions) (*Originals, error) {
	start := time.Now()
	if spec == nil {
		return nil, errors.New("verify: nil collection spec")
	}
	if state == nil {
		state = mapstate.New()
	}
	if err := state.Check(spec); err != nil {
		return nil, err
	}
	lo := LoadOptions{LogTail: opts.LogTail, Cache: btf.NewCache()}
	o := &Originals{spec: spec}
	load := func(noPrealloc bool, ro []string) error {
		o.Close()
		var errs [2]error
		var wg sync.WaitGroup
		for i := range o.insts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o.insts[i], errs[i] = loadInstance(spec, nil, state, lo, noPrealloc, ro, opts)
			}()
		}
		wg.Wait()
		return errors.Join(errs[:]...)
	}
	err := loadFallback(load, opts)
	if err != nil {
		o.Close()
		return nil, firstError(err)
	}
	o.loadTime = time.Since(start)
	return o, nil
}

// loadFallback calls load with the options' preallocation and read-only
// maps, then without the read-only flags if a program writes one of the
// maps, then with preallocated maps if the kernel asks for them (some
// program types refuse maps without preallocation).
func loadFallback(load func(noPrealloc bool, ro []string) error, opts DiffOptions) error {
	ro := opts.ReadOnlyMaps
	err := load(opts.NoPrealloc, ro)
	if err != nil && len(ro) > 0 && writeForbidden(err) {
		ro = nil
		err = load(opts.NoPrealloc, ro)
	}
	if err != nil && opts.NoPrealloc && mentions(err, "prealloc") {
		err = load(false, ro)
	}
	return err
}

// mentions reports whether err or its verifier log contains s.
func mentions(err error, s string) bool {
	if strings.Contains(err.Error(), s) {
		return true
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		for _, l := range ve.Log {
			if strings.Contains(l, s) {
				return true
			}
		}
	}
	return false
}

// firstError unwraps what errors.Join built from the parallel loads: the
// first error, so that a *VerifierError reaches the caller as itself.
func firstError(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		if errs := j.Unwrap(); len(errs) > 0 {
			return errs[0]
		}
	}
	return err
}

// Close releases both copies.
func (o *Originals) Close() {
	for i, in := range o.insts {
		if in != nil {
			in.coll.Close()
			o.insts[i] = nil
		}
	}
}

// checkInputs refuses a candidate that does not fit spec and a state
// that does not fit its maps; a nil state is an empty one.
func checkInputs(spec *ebpf.CollectionSpec, state *mapstate.State, cand Candidate) (*mapstate.State, error) {
	if state == nil {
		state = mapstate.New()
	}
	if _, err := WithCandidate(spec, cand); err != nil {
		return nil, err
	}
	return state, state.Check(spec)
}

// NewSession loads the three collections of a differential test of cand
// against spec and fills their maps from state. See [Differential] for
// the arguments; a verifier rejection is returned as a *VerifierError.
func NewSession(spec *ebpf.CollectionSpec, state *mapstate.State, cand Candidate, opts DiffOptions) (*Session, error) {
	state, err := checkInputs(spec, state, cand)
	if err != nil {
		return nil, err
	}
	if _, err := entryPrograms(spec, cand, opts.Programs); err != nil {
		return nil, err
	}
	// The originals and the candidate load side by side.
	type loaded struct {
		o   *Originals
		err error
	}
	ch := make(chan loaded, 1)
	go func() {
		o, err := LoadOriginals(spec, state, opts)
		ch <- loaded{o, err}
	}()
	c, ctime, cerr := loadCandidate(spec, state, cand, opts)
	l := <-ch
	if l.err != nil || cerr != nil {
		if l.o != nil {
			l.o.Close()
		}
		if c != nil {
			c.coll.Close()
		}
		if cerr != nil {
			return nil, cerr
		}
		return nil, l.err
	}
	sess, err := newSession(l.o, spec, c, ctime, max(l.o.loadTime, ctime), opts)
	if err != nil {
		l.o.Close()
	}
	return sess, err
}

// NewCandidateSession loads the candidate collection spec (the original
// collection with cand's instructions, plus any maps the candidate adds)
// next to orig, which it first resets to state, and returns the session
// of the three (its Report.Timing.Load is the candidate's load). The
// load is the kernel verifier's check of the candidate: a rejection is
// returned as a *VerifierError. On any error orig is still the caller's
// (to try another candidate or to close); on success the session owns
// it until Close or Release. Maps only the candidate's collection has (the
// optimizer's cache and guard maps) are not compared: they are not the
// network function's state, and what the candidate reads from them shows
// in everything compared.
func NewCandidateSession(orig *Originals, spec *ebpf.CollectionSpec, state *mapstate.State, cand Candidate, opts DiffOptions) (*Session, error) {
	state, err := checkInputs(spec, state, cand)
	if err != nil {
		return nil, err
	}
	for name := range orig.spec.Maps {
		if _, ok := spec.Maps[name]; !ok {
			return nil, fmt.Errorf("verify: candidate collection lacks map %q of the original", name)
		}
	}
	// The originals hold state whatever they ran before (a fresh or
	// just reset pair is left alone).
	if err := orig.Reset(state); err != nil {
		return nil, err
	}
	c, ctime, err := loadCandidate(spec, state, cand, opts)
	if err != nil {
		return nil, err
	}
	return newSession(orig, spec, c, ctime, ctime, opts)
}

// LoadTime is how long LoadOriginals, or the last Reset, took.
func (o *Originals) LoadTime() time.Duration { return o.loadTime }

// CandidateLoadTime is how long the candidate's collection took to load
// (the kernel verifier's work with the creation of its maps).
func (s *Session) CandidateLoadTime() time.Duration { return s.candTime }

func newSession(orig *Originals, spec *ebpf.CollectionSpec, c *instance, ctime, total time.Duration, opts DiffOptions) (*Session, error) {
	progs, err := entryPrograms(spec, candidateNames(c), opts.Programs)
	if err != nil {
		c.coll.Close() // orig stays the caller's
		return nil, err
	}
	s := &Session{spec: spec, progs: progs, opts: opts, loadTime: total, candTime: ctime, orig: orig}
	s.insts = [3]*instance{orig.insts[0], c, orig.insts[1]}
	orig.insts = [2]*instance{}
	return s, nil
}

// candidateNames is a Candidate naming the programs c was loaded with
// candidate instructions (for the choice of entry programs).
func candidateNames(c *instance) Candidate {
	out := Candidate{}
	for _, n := range c.cand {
		out[n] = nil
	}
	return out
}

// loadCandidate loads the candidate's collection with the options'
// fallbacks (see loadFallback) and fills its maps from state.
func loadCandidate(spec *ebpf.CollectionSpec, state *mapstate.State, cand Candidate, opts DiffOptions) (*instance, time.Duration, error) {
	start := time.Now()
	candSpec, err := WithCandidate(spec, cand)
	if err != nil {
		return nil, 0, err
	}
	lo := LoadOptions{LogTail: opts.LogTail, LogLevel: opts.CandidateLogLevel, Cache: btf.NewCache()}
	var c *instance
	err = loadFallback(func(noPrealloc bool, ro []string) error {
		var err error
		c, err = loadInstance(candSpec, cand, state, lo, noPrealloc, ro, opts)
		return err
	}, opts)
	if err != nil {
		return nil, 0, err
	}
	c.cand = cand.Names()
	return c, time.Since(start), nil
}

// writeForbidden reports whether a load failed because a program writes
// a map created with BPF_F_RDONLY_PROG.
func writeForbidden(err error) bool {
	return err != nil && mentions(err, "write into map forbidden")
}

// Close releases the three collections.
func (s *Session) Close() {
	for i, in := range s.insts {
		if in != nil {
			in.coll.Close()
			s.insts[i] = nil
		}
	}
}

// Run runs a differential test on packets from the maps' current
// contents: the state the session was loaded with, or the one of the last
// Reset. Run again without a Reset and the maps hold what the last run
// left in them.
func (s *Session) Run(ctx context.Context, packets [][]byte) (*Report, error) {
	if err := checkPackets(packets); err != nil {
		return nil, err
	}
	for _, in := range s.insts {
		if err := in.checkHeadroom(len(packets)); err != nil {
			return nil, err
		}
	}
	for _, in := range s.insts {
		in.fresh = false
		in.ran(len(packets))
	}
	d := &differ{
		progs:         s.progs,
		a:             s.insts[0],
		c:             s.insts[1],
		b:             s.insts[2],
		ctxIn:         s.opts.Context,
		maxMismatches: s.opts.MaxMismatches,
		ndLoc:         map[string]struct{}{},
		raws:          map[string]*[3]*mapstate.Raw{},
		reported:      map[string]struct{}{},
		report:        &Report{Programs: s.progs, Total: len(packets), Mismatches: []Mismatch{}},
	}
	d.report.Timing.Load, s.loadTime = s.loadTime, 0
	d.report.MapCapacities = s.insts[0].mapCapacities()
	if d.maxMismatches <= 0 {
		d.maxMismatches = DefaultMaxMismatches
	}
	maxLen := 0
	for _, p := range packets {
		maxLen = max(maxLen, len(p))
	}
	for _, in := range s.insts {
		if len(in.out) < maxLen+outputRoom {
			in.out = make([]byte, maxLen+outputRoom)
		}
	}
	if s.opts.PeriodicMaps != nil {
		d.periodic = map[string]bool{}
		for _, m := range s.opts.PeriodicMaps {
			d.periodic[m] = true
		}
	}
	if err := d.planMapChecks(s.opts.MapCheckInterval); err != nil {
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
		runStart := time.Now()
		err = d.run(ctx, packets)
		d.report.Timing.Runs = time.Since(runStart) - d.report.Timing.Maps
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

// Reset sets the maps of all three collections to what a fresh load
// with state would hold: each map's contents in the spec (global data,
// the passes' cache maps) with state's entries written over them. Maps
// that no program can have written since (created BPF_F_RDONLY_PROG, see
// DiffOptions.ReadOnlyMaps) and whose wanted contents are unchanged are
// left alone; every other map is emptied and written again. state's
// variables must be those the session was loaded with (they are part of
// the loaded programs). After an error the session must not be used.
func (s *Session) Reset(state *mapstate.State) error {
	return resetInstances(s.insts[:], s.spec, state)
}

// Reset is Session.Reset for the two copies; after an error they must not
// be used.
func (o *Originals) Reset(state *mapstate.State) error {
	start := time.Now()
	err := resetInstances(o.insts[:], o.spec, state)
	o.loadTime = time.Since(start)
	return err
}

func resetInstances(insts []*instance, spec *ebpf.CollectionSpec, state *mapstate.State) error {
	for _, in := range insts {
		if in == nil {
			return errors.New("verify: reset of closed or released collections")
		}
	}
	if state == nil {
		state = mapstate.New()
	}
	if err := state.Check(spec); err != nil {
		return err
	}
	for _, in := range insts {
		if !maps.EqualFunc(state.Variables, in.vars, func(a, b mapstate.Hex) bool { return bytes.Equal(a, b) }) {
			return errors.New("verify: reset to other variables than the collections were loaded with")
		}
	}
	sums := map[string][32]byte{}
	for _, in := range insts {
		for name := range in.coll.Maps {
			if _, ok := sums[name]; !ok {
				sums[name] = mapSum(state.Maps[name])
			}
		}
	}
	// The collections' maps are apart: they are reset side by side (a
	// guard check empties and refills a large map in all three).
	errs := make([]error, len(insts))
	var wg sync.WaitGroup
	for i, in := range insts {
		wg.Go(func() { errs[i] = in.reset(state, sums) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// reset is resetInstances for one collection, with the hashes of the
// state's maps (mapSum) by name.
func (in *instance) reset(state *mapstate.State, sums map[string][32]byte) error {
	fresh := in.fresh
	in.fresh = false // until every map is done
	for _, name := range slices.Sorted(maps.Keys(in.coll.Maps)) {
		want := state.Maps[name]
		sum := sums[name]
		n := len(want.GetEntries())
		if ms := in.spec.Maps[name]; ms != nil {
			n += len(ms.Contents)
		}
		if err := in.refill(name, n); err != nil {
			return err
		}
		if sum == in.want[name] && (fresh || in.ro[name]) {
			continue
		}
		if err := resetMap(name, in.coll.Maps[name], in.spec.Maps[name], want); err != nil {
			delete(in.want, name) // unknown contents: rewritten next time
			return fmt.Errorf("verify: reset map %q: %w", name, err)
		}
		in.want[name] = sum
	}
	in.fresh = true
	return nil
}

// mapSum hashes a map's entries in order (nil has none): what a map was
// last set to, kept as a hash so that a caller changing a State in
// place cannot make a changed map look unchanged.
func mapSum(m *mapstate.Map) [32]byte {
	h := sha256.New()
	var n [8]byte
	put := func(b []byte) {
		binary.LittleEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, e := range m.GetEntries() {
		put(e.Key)
		put(e.Value)
		binary.LittleEndian.PutUint64(n[:], uint64(len(e.Values)))
		h.Write(n[:])
		for _, v := range e.Values {
			put(v)
		}
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Release closes the candidate's collection and hands the two copies of
// the original back, in the Originals they came from, with whatever the
// tests left in their maps (Reset them before the next test). The
// session is then empty.
func (s *Session) Release() *Originals {
	o := s.orig
	o.insts = [2]*instance{s.insts[0], s.insts[2]}
	if s.insts[1] != nil {
		s.insts[1].coll.Close()
	}
	s.insts = [3]*instance{}
	return o
}

// Spec is the collection spec the copies were loaded from.
func (o *Originals) Spec() *ebpf.CollectionSpec { return o.spec }

// resetMap empties m and writes the spec's contents and then want's
// entries into it. Maps whose contents user space cannot set (program
// arrays and the like, frozen global data) are left alone: programs
// cannot change them either (program arrays hold the collection's own
// programs; frozen data is also read-only to programs).
func resetMap(name string, m *ebpf.Map, ms *ebpf.MapSpec, want *mapstate.Map) error {
	switch m.Type() {
	case ebpf.Array, ebpf.PerCPUArray, ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.LPMTrie:
	default:
		return nil
	}
	if strings.HasPrefix(name, ".rodata") || strings.HasPrefix(name, ".kconfig") {
		return nil // frozen by the loader
	}
	var raw mapstate.Raw
	if err := raw.Read(m); err != nil {
		return err
	}
	if done, err := resetByDiff(m, ms, &raw, want); done || err != nil {
		return err
	}
	isArray := m.Type() == ebpf.Array || m.Type() == ebpf.PerCPUArray
	zero := make([]byte, m.ValueSize())
	var keys []byte
	for i := range raw.N {
		if isArray && allZero(raw.Value(i)) {
			continue // array elements cannot be deleted: zero the ones set
		}
		keys = append(keys, raw.Key(i)...)
	}
	n := len(keys) / max(raw.KeySize, 1)
	batched := false
	if n >= batchMin && m.Type() != ebpf.PerCPUArray {
		// One system call instead of one per key (deleting and
		// restoring the 5,000-entry blocklist of the DDoS filter per
		// guard check otherwise cost 15,000 of them; the router's
		// 2,592 routes 20 ms per cycle). LPM tries take batch deletes
		// on current kernels; where one fails, the keys not deleted
		// are deleted one by one below.
		if isArray {
			vals := make([]byte, n*int(m.ValueSize()))
			done, err := m.BatchUpdate(packedBytes(keys, raw.KeySize), packedBytes(vals, int(m.ValueSize())), nil)
			batched = err == nil && done == n
		} else {
			done, err := m.BatchDelete(packedBytes(keys, raw.KeySize), nil)
			batched = err == nil && done == n
		}
	}
	for i := 0; i < n && !batched; i++ {
		key := keys[i*raw.KeySize : (i+1)*raw.KeySize]
		if isArray {
			if err := mapstate.PutEntry(m, mapstate.Entry{Key: key, Value: zero}); err != nil {
				return err
			}
			continue
		}
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	if ms != nil {
		for _, kv := range ms.Contents {
			if err := m.Put(kv.Key, kv.Value); err != nil {
				return err
			}
		}
	}
	if want == nil {
		return nil
	}
	return applyState(&mapstate.State{Maps: map[string]*mapstate.Map{"": want}}, map[string]*ebpf.Map{"": m})
}

// resetByDiff sets m, whose entries raw holds, to want's entries by
// touching only the entries that differ: unwanted keys are deleted
// (array elements zeroed), wanted entries that are missing or hold
// another value are written, in batches. A map a test wrote a few
// entries of (the switch's 4,096-entry forwarding table learns a few
// hundred MACs) costs those few instead of deleting and rewriting all.
// It handles hash maps, arrays and LPM tries whose spec has no contents
// and whose wanted entries are plain values of the map's sizes, and
// reports whether it did. LRU maps are always emptied and refilled,
// which resets their recency order with their contents; per-CPU maps
// too.
func resetByDiff(m *ebpf.Map, ms *ebpf.MapSpec, raw *mapstate.Raw, want *mapstate.Map) (bool, error) {
	switch m.Type() {
	case ebpf.Hash, ebpf.Array, ebpf.LPMTrie:
	default:
		return false, nil
	}
	if ms != nil && len(ms.Contents) > 0 {
		return false, nil
	}
	ks, vs := int(m.KeySize()), int(m.ValueSize())
	entries := want.GetEntries()
	if raw.PerCPU || raw.KeySize != ks || raw.ValueSize != vs {
		return false, nil
	}
	for _, e := range entries {
		if e.Values != nil || len(e.Key) != ks || len(e.Value) != vs {
			return false, nil // reported by the full path's applyState
		}
	}
	// The last value of a key listed twice wins, as in applyState.
	wanted := make(map[string][]byte, len(entries))
	for _, e := range entries {
		wanted[string(e.Key)] = e.Value
	}
	isArray := m.Type() == ebpf.Array
	var del, putK, putV []byte
	matched := make(map[string]bool, len(entries))
	for i := range raw.N {
		k, v := raw.Key(i), raw.Value(i)
		w, ok := wanted[string(k)]
		switch {
		case ok && bytes.Equal(w, v):
			matched[string(k)] = true
		case ok:
			// Written below with the wanted value.
		case isArray:
			if !allZero(v) {
				putK = append(putK, k...)
				putV = append(putV, make([]byte, vs)...)
			}
		default:
			del = append(del, k...)
		}
	}
	for _, e := range entries {
		k := string(e.Key)
		if matched[k] {
			continue
		}
		matched[k] = true // once, with the last value
		putK = append(putK, e.Key...)
		putV = append(putV, wanted[k]...)
	}
	if n := len(del) / ks; n > 0 {
		done, err := m.BatchDelete(packedBytes(del, ks), nil)
		if err != nil || done != n {
			for i := range n {
				if err := m.Delete(del[i*ks : (i+1)*ks]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return true, err
				}
			}
		}
	}
	if n := len(putK) / ks; n > 0 {
		done, err := m.BatchUpdate(packedBytes(putK, ks), packedBytes(putV, vs), nil)
		if err != nil || done != n {
			for i := range n {
				if err := m.Put(putK[i*ks:(i+1)*ks], putV[i*vs:(i+1)*vs]); err != nil {
					return true, err
				}
			}
		}
	}
	return true, nil
}

// packedBytes views flat, n keys or values of size bytes each, as the
// slice of [size]byte arrays cilium/ebpf's batch calls take.
func packedBytes(flat []byte, size int) any {
	n := len(flat) / size
	s := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), n, n)
	if n > 0 {
		copy(unsafe.Slice((*byte)(s.UnsafePointer()), n*size), flat)
	}
	return s.Interface()
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC.
const bpfFNoPrealloc = 1

// bpfFRdonlyProg is BPF_F_RDONLY_PROG.
const bpfFRdonlyProg = 1 << 7

// readOnlyTypes are the map types created BPF_F_RDONLY_PROG when
// DiffOptions.ReadOnlyMaps names them.
var readOnlyTypes = map[ebpf.MapType]bool{
	ebpf.Array: true, ebpf.PerCPUArray: true, ebpf.Hash: true, ebpf.PerCPUHash: true,
	ebpf.LRUHash: true, ebpf.LRUCPUHash: true, ebpf.LPMTrie: true,
}

// loadInstance loads a copy of s (with cand's instructions already in
// it) and fills its maps from state. With noPrealloc, hash and per-CPU
// hash maps are created without preallocated elements; the maps named in
// readOnly are created BPF_F_RDONLY_PROG.
func loadInstance(s *ebpf.CollectionSpec, cand Candidate, state *mapstate.State, lo LoadOptions, noPrealloc bool, readOnly []string, opts DiffOptions) (*instance, error) {
	cs := s.Copy()
	room := shrinkMaps(cs, func(name string) int { return len(state.Maps[name].GetEntries()) }, opts)
	for name, ms := range cs.Maps {
		if noPrealloc && (ms.Type == ebpf.Hash || ms.Type == ebpf.PerCPUHash) {
			ms.Flags |= bpfFNoPrealloc
		}
		if slices.Contains(readOnly, name) && readOnlyTypes[ms.Type] {
			ms.Flags |= bpfFRdonlyProg
		}
	}
	in, err := newInstance(cs, cand, state, lo)
	if err != nil {
		return nil, err
	}
	in.spec = s
	in.headroom = room
	in.vars = state.Variables
	in.want = map[string][32]byte{}
	for name := range in.coll.Maps {
		in.want[name] = mapSum(state.Maps[name])
	}
	in.fresh = true
	return in, nil
}

// instance is one loaded collection under test.
type instance struct {
	coll *ebpf.Collection
	out  []byte
	// ro names the maps created BPF_F_RDONLY_PROG: the verifier has
	// proven that no program of the collection writes them.
	ro map[string]bool
	// spec is what the collection was loaded from (map contents for
	// Session.Reset); cand names the programs with candidate code.
	spec *ebpf.CollectionSpec
	cand []string
	// want hashes the state's entries each map was last set to (see
	// mapSum; none: the spec's contents alone); fresh says that no
	// program ran since, so every map holds what want says.
	want  map[string][32]byte
	fresh bool
	// vars are the state's variables the collection was loaded with.
	vars map[string]mapstate.Hex
	// headroom holds the maps created smaller than their spec says
	// (DiffOptions.InsertBounds) and what they may still take.
	headroom map[string]*headroom
}

func newInstance(s *ebpf.CollectionSpec, cand Candidate, state *mapstate.State, lo LoadOptions) (*instance, error) {
	// state.Load, with the entries of large maps written in batches: one
	// syscall per entry made writing a 10,000-entry map into the three
	// copies cost more than running the packets.
	if err := state.ApplySpec(s); err != nil {
		return nil, err
	}
	coll, err := loadSpec(s, cand, lo)
	if err != nil {
		return nil, err
	}
	if err := applyState(state, coll.Maps); err != nil {
		coll.Close()
		return nil, err
	}
	ro := map[string]bool{}
	for name, ms := range s.Maps {
		if ms.Flags&bpfFRdonlyProg != 0 {
			ro[name] = true
		}
	}
	return &instance{coll: coll, ro: ro}, nil
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

// pinToOneCPU restricts the calling thread to one CPU it may run on, the
// one it runs on if it can tell, and returns a function restoring the
// previous affinity. The CPU it is on needs no migration, and the tests
// that run side by side (the agent optimizes several programs at once)
// spread over the CPUs the scheduler gave them instead of all sharing the
// first.
func pinToOneCPU() (func() error, int, error) {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, 0, fmt.Errorf("verify: get CPU affinity: %w", err)
	}
	cpu := currentCPU()
	if cpu < 0 || !old.IsSet(cpu) {
		cpu = firstCPU(&old)
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

// currentCPU is the CPU the calling thread runs on (getcpu), or -1.
func currentCPU() int {
	var cpu uint32
	if _, _, errno := unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), 0, 0); errno != 0 {
		return -1
	}
	return int(cpu)
}

// firstCPU is the lowest CPU in set, or -1 if it is empty.
func firstCPU(set *unix.CPUSet) int {
	const maxCPUs = 8 * 1024 // CPU_SETSIZE is 1024; cpu sets never exceed this
	for i := 0; i < maxCPUs && i < 8*binary.Size(*set); i++ {
		if set.IsSet(i) {
			return i
		}
	}
	return -1
}
