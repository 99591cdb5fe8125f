package program

//go:generate ../testdata/corpus/build.sh

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	randv1 "math/rand"
	"math/rand/v2"
	"net"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/verify"
)

// The round-trip corpus: objects compiled from the C sources in
// testdata/corpus (see build.sh there) and the sample network functions
// under nf/. Every program of every object must lift, lower to the identical
// encoding, load through the verifier both as lowered and after a layout
// perturbation, and behave exactly like the original on generated traffic.
const (
	corpusGlob = "../testdata/corpus/*.o"
	nfGlob     = "../nf/*/*_bpfel.o"

	// corpusPackets is the number of generated packets run through every
	// packet-driven program of every object.
	corpusPackets = 2500
	// corpusMapCheckEvery is how often (in packets) all maps are compared
	// when the collection's maps are small enough to read often.
	corpusMapCheckEvery = 250
	// corpusSmallMaps is the largest total number of map slots for which
	// maps are compared every corpusMapCheckEvery packets; bigger
	// collections are compared after each program's run only.
	corpusSmallMaps = 1 << 16
	// corpusPhases is the number of phases of every program's run; the
	// maps get a new random state (on top of the old one) before each.
	corpusPhases = 3
	// corpusMaxMismatches stops an object's differential run early.
	corpusMaxMismatches = 8
)

func corpusObjects(tb testing.TB) []string {
	tb.Helper()
	corpus, err := filepath.Glob(corpusGlob)
	if err != nil {
		tb.Fatal(err)
	}
	if len(corpus) == 0 {
		tb.Fatalf("no objects match %s: run go generate ./program", corpusGlob)
	}
	nfs, err := filepath.Glob(nfGlob)
	if err != nil {
		tb.Fatal(err)
	}
	objs := append(corpus, nfs...)
	sort.Strings(objs)
	return objs
}

// objectName turns "../nf/router/bpf_bpfel.o" into "nf/router/bpf_bpfel.o".
func objectName(path string) string {
	return strings.TrimPrefix(filepath.ToSlash(path), "../")
}

func sortedPrograms(spec *ebpf.CollectionSpec) []string {
	names := make([]string, 0, len(spec.Programs))
	for name := range spec.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// TestCorpusLowerIsIdentity checks that Lower(Lift(p)) reproduces every
// corpus program exactly: the same bytes and the same metadata (symbols,
// references, func info, line info, map bindings) on every instruction.
func TestCorpusLowerIsIdentity(t *testing.T) {
	for _, path := range corpusObjects(t) {
		t.Run(objectName(path), func(t *testing.T) {
			spec, err := ebpf.LoadCollectionSpec(path)
			if err != nil {
				t.Fatalf("load spec: %v", err)
			}
			for _, name := range sortedPrograms(spec) {
				ps := spec.Programs[name]
				p, err := Lift(ps)
				if err != nil {
					t.Errorf("%s: lift: %v", name, err)
					continue
				}
				insns, err := p.Lower()
				if err != nil {
					t.Errorf("%s: lower: %v", name, err)
					continue
				}
				if err := sameProgram(ps.Instructions, insns); err != nil {
					t.Errorf("%s: round trip changed the program: %v", name, err)
				}
			}
		})
	}
}

// sameProgram reports the first difference between two instruction streams
// in encoding or metadata.
func sameProgram(want, got asm.Instructions) error {
	if len(want) != len(got) {
		return fmt.Errorf("%d instructions, want %d", len(got), len(want))
	}
	wb, err := marshalInsns(want)
	if err != nil {
		return fmt.Errorf("marshal original: %w", err)
	}
	gb, err := marshalInsns(got)
	if err != nil {
		return fmt.Errorf("marshal lowered: %w", err)
	}
	if !bytes.Equal(wb, gb) {
		for i := 0; i+asm.InstructionSize <= len(wb); i += asm.InstructionSize {
			if !bytes.Equal(wb[i:i+asm.InstructionSize], gb[i:i+asm.InstructionSize]) {
				return fmt.Errorf("encoding differs at slot %d: %x, want %x", i/asm.InstructionSize,
					gb[i:i+asm.InstructionSize], wb[i:i+asm.InstructionSize])
			}
		}
		return errors.New("encoding differs")
	}
	for i := range want {
		w, g := want[i], got[i]
		switch {
		case w.Symbol() != g.Symbol():
			return fmt.Errorf("instruction %d: symbol %q, want %q", i, g.Symbol(), w.Symbol())
		case w.Reference() != g.Reference():
			return fmt.Errorf("instruction %d: reference %q, want %q", i, g.Reference(), w.Reference())
		case w.Map() != g.Map():
			return fmt.Errorf("instruction %d: bound to a different map", i)
		case btf.FuncMetadata(&w) != btf.FuncMetadata(&g):
			return fmt.Errorf("instruction %d: func info %v, want %v", i, btf.FuncMetadata(&g), btf.FuncMetadata(&w))
		case sourceString(w) != sourceString(g):
			return fmt.Errorf("instruction %d: line info %q, want %q", i, sourceString(g), sourceString(w))
		}
	}
	return nil
}

func marshalInsns(insns asm.Instructions) ([]byte, error) {
	var buf bytes.Buffer
	err := slices.Clone(insns).Marshal(&buf, binary.LittleEndian)
	return buf.Bytes(), err
}

func sourceString(ins asm.Instruction) string {
	if ins.Source() == nil {
		return ""
	}
	return ins.Source().String()
}

// reverseBlocks reverses the layout order of the non-entry blocks of every
// function, which leaves the control flow graph unchanged but moves almost
// every fall-through successor away from its predecessor, so Lower must add
// gotos and recompute every jump offset. It returns the number of functions
// with at least three blocks, whose layout really changed.
func reverseBlocks(p *Program) int {
	changed := 0
	for _, f := range p.Funcs {
		bs := f.Blocks[1:]
		if len(bs) >= 2 {
			changed++
		}
		slices.Reverse(bs)
	}
	return changed
}

// TestCorpusPerturbedLowerAddsJumps checks, without the kernel, that the
// perturbed layout really exercises jump resolution: it lowers to more
// instructions than the original and re-lifts to the same number of
// original (non-goto) instructions.
func TestCorpusPerturbedLowerAddsJumps(t *testing.T) {
	for _, path := range corpusObjects(t) {
		t.Run(objectName(path), func(t *testing.T) {
			spec, err := ebpf.LoadCollectionSpec(path)
			if err != nil {
				t.Fatalf("load spec: %v", err)
			}
			for _, name := range sortedPrograms(spec) {
				p, err := Lift(spec.Programs[name])
				if err != nil {
					t.Fatalf("%s: lift: %v", name, err)
				}
				q := p.Clone()
				if reverseBlocks(q) == 0 {
					continue
				}
				insns, err := q.Lower()
				if err != nil {
					t.Fatalf("%s: lower perturbed: %v", name, err)
				}
				if len(insns) <= len(spec.Programs[name].Instructions) {
					t.Errorf("%s: perturbed layout lowered to %d instructions, want more than the original %d",
						name, len(insns), len(spec.Programs[name].Instructions))
				}
				ps := spec.Programs[name].Copy()
				ps.Instructions = insns
				r, err := Lift(ps)
				if err != nil {
					t.Fatalf("%s: re-lift perturbed: %v", name, err)
				}
				if got, want := countNonGoto(r), countNonGoto(p); got != want {
					t.Errorf("%s: re-lifted perturbed program has %d non-goto instructions, want %d", name, got, want)
				}
			}
		})
	}
}

func countNonGoto(p *Program) int {
	n := 0
	for _, f := range p.Funcs {
		for _, b := range f.Blocks {
			for _, ins := range b.Insns {
				if ins.OpCode.JumpOp() != asm.Ja {
					n++
				}
			}
		}
	}
	return n
}

// TestCorpusKernelRoundTrip loads every corpus object three ways (original,
// lowered, lowered after the layout perturbation) plus a second original
// that exposes nondeterminism, gives all four the same map contents, and
// runs every packet-driven program on the same generated packets in
// lock-step on one CPU, comparing verdicts, output packets, output contexts
// and, periodically and at the end, the contents of every map.
func TestCorpusKernelRoundTrip(t *testing.T) {
	kerneltest.Require(t)
	for _, path := range corpusObjects(t) {
		t.Run(objectName(path), func(t *testing.T) {
			roundTripObject(t, path)
		})
	}
}

// side is one loaded copy of a corpus object.
type side struct {
	name string
	coll *ebpf.Collection
	out  []byte
}

func roundTripObject(t *testing.T, path string) {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	lowered, perturbed := spec.Copy(), spec.Copy()
	for _, name := range sortedPrograms(spec) {
		p, err := Lift(spec.Programs[name])
		if err != nil {
			t.Fatalf("%s: lift: %v", name, err)
		}
		if lowered.Programs[name].Instructions, err = p.Lower(); err != nil {
			t.Fatalf("%s: lower: %v", name, err)
		}
		q := p.Clone()
		reverseBlocks(q)
		if perturbed.Programs[name].Instructions, err = q.Lower(); err != nil {
			t.Fatalf("%s: lower perturbed: %v", name, err)
		}
	}

	cands := []candidate{{"lowered", lowered}, {"perturbed", perturbed}}
	run := differential(t, objectName(path), spec, cands)
	for _, m := range run.mismatches {
		t.Error(m)
	}
	if len(run.mismatches) > 0 || len(run.progs) == 0 {
		return
	}
	if mapSlots(spec) > corpusSmallMaps {
		// verify reads maps entry by entry: hundreds of thousands of
		// slots take it tens of seconds per comparison.
		t.Logf("maps hold %d slots: verify.Differential cross-check skipped", mapSlots(spec))
		return
	}
	crossCheck(t, spec, cands, run)
}

// TestCorpusDifferentialCatchesMiscompiles makes sure the harness above
// has teeth: a lowered program with a changed verdict, or with a map update
// removed, must be reported, through the verdict and the map comparison
// respectively.
func TestCorpusDifferentialCatchesMiscompiles(t *testing.T) {
	kerneltest.Require(t)
	cases := []struct {
		name   string
		object string
		prog   string
		mutate func(*Program) int
		want   string
	}{
		{"XDP_TX becomes XDP_PASS", "loops_v3.o", "xdp_payload_stats", replaceReturn(3, 2), "verdict"},
		{"counter increment removed", "classify_v2.o", "xdp_classify", removeFirstAtomic, "map .bss"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(filepath.Dir(corpusGlob), tc.object)
			spec, err := ebpf.LoadCollectionSpec(path)
			if err != nil {
				t.Fatalf("load spec: %v", err)
			}
			p, err := Lift(spec.Programs[tc.prog])
			if err != nil {
				t.Fatalf("lift: %v", err)
			}
			if tc.mutate(p) == 0 {
				t.Fatalf("mutation found nothing to change in %s", tc.prog)
			}
			broken := spec.Copy()
			if broken.Programs[tc.prog].Instructions, err = p.Lower(); err != nil {
				t.Fatalf("lower: %v", err)
			}
			run := differential(t, objectName(path), spec, []candidate{{"broken", broken}})
			if len(run.mismatches) == 0 {
				t.Fatal("the differential run found no difference")
			}
			found := false
			for _, m := range run.mismatches {
				found = found || strings.Contains(m, tc.want)
			}
			t.Logf("found:\n%s", strings.Join(run.mismatches, "\n"))
			if !found {
				t.Errorf("no %q mismatch among:\n%s", tc.want, strings.Join(run.mismatches, "\n"))
			}
		})
	}
}

// replaceReturn returns a mutation that turns every "r0 = from" into
// "r0 = to" and reports how many it changed.
func replaceReturn(from, to int64) func(*Program) int {
	return func(p *Program) int {
		n := 0
		for _, f := range p.Funcs {
			for _, b := range f.Blocks {
				for i, ins := range b.Insns {
					if ins.OpCode.Class().IsALU() && ins.OpCode.ALUOp() == asm.Mov &&
						ins.OpCode.Source() == asm.ImmSource && ins.Dst == asm.R0 && ins.Constant == from {
						b.Insns[i].Constant = to
						n++
					}
				}
			}
		}
		return n
	}
}

// removeFirstAtomic deletes the first atomic memory operation (an
// __sync_fetch_and_add whose result is unused).
func removeFirstAtomic(p *Program) int {
	for _, f := range p.Funcs {
		for _, b := range f.Blocks {
			for i, ins := range b.Insns {
				if ins.OpCode.Class() == asm.StXClass && ins.OpCode.Mode() == asm.AtomicMode {
					b.Insns = slices.Delete(b.Insns, i, i+1)
					return 1
				}
			}
		}
	}
	return 0
}

// candidate is a collection spec whose programs replace the original's.
type candidate struct {
	name string
	spec *ebpf.CollectionSpec
}

// diffRun is what differential did and found.
type diffRun struct {
	progs      []string   // the packet-driven programs that were run
	packets    [][]byte   // the packets every program got
	plans      []fillPlan // the map state written before each phase
	seed       uint64
	mismatches []string
}

// differential loads the original spec twice and every candidate once,
// gives them the same map contents, runs every packet-driven program on the
// same generated packets in lock-step on one CPU and compares verdicts,
// output packets, output contexts and, periodically and after each program,
// the contents of every map. It returns the mismatches (at most
// corpusMaxMismatches); setup failures end the test.
func differential(t *testing.T, name string, spec *ebpf.CollectionSpec, cands []candidate) *diffRun {
	t.Helper()
	h := fnv.New64a()
	h.Write([]byte(name))
	run := &diffRun{seed: h.Sum64()}
	gen := newTrafficGen(run.seed)
	// The control plane rewrites the maps between phases of the run, so
	// that flags, indices and actions that one random state leaves unset
	// are set in another and more paths are taken.
	run.plans = make([]fillPlan, corpusPhases)
	for i := range run.plans {
		run.plans[i] = newFillPlan(spec, gen)
	}

	// Run order per packet: original, candidates, second original. A
	// clock value a candidate stores then lies between the two originals'
	// values, see maskWord.
	sides := []*side{{name: "original"}}
	specs := []*ebpf.CollectionSpec{spec.Copy()}
	for _, c := range cands {
		sides = append(sides, &side{name: c.name})
		specs = append(specs, c.spec)
	}
	sides = append(sides, &side{name: "original-2"})
	specs = append(specs, spec.Copy())
	for i, s := range sides {
		coll, err := ebpf.NewCollection(specs[i])
		if err != nil {
			t.Fatalf("load %s collection: %s", s.name, verifierTail(err))
		}
		t.Cleanup(func() { coll.Close() })
		s.coll = coll
		if err := run.plans[0].apply(spec, coll); err != nil {
			t.Fatalf("fill %s maps: %v", s.name, err)
		}
	}

	for _, name := range sortedPrograms(spec) {
		if packetDriven(spec.Programs[name].Type) {
			run.progs = append(run.progs, name)
		}
	}
	if len(run.progs) == 0 {
		t.Logf("no packet-driven programs: lift, lower and load checked only")
		return run
	}
	run.packets = make([][]byte, corpusPackets)
	maxLen := 0
	for i := range run.packets {
		run.packets[i] = gen.packet()
		maxLen = max(maxLen, len(run.packets[i]))
	}
	for _, s := range sides {
		s.out = make([]byte, maxLen+4096)
	}
	checkOften := mapSlots(spec) <= corpusSmallMaps

	// Per-CPU map slots only line up if every run happens on the same CPU.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	restore := pinThread(t)
	defer restore()

	d := &differ{sides: sides}
	n := len(run.packets)
	for _, prog := range run.progs {
		verdicts := map[uint32]int{}
		errs := 0
		for i, pkt := range run.packets {
			if phase := i * corpusPhases / n; i > 0 && phase != (i-1)*corpusPhases/n {
				for _, s := range sides {
					if err := run.plans[phase].apply(spec, s.coll); err != nil {
						t.Fatalf("%s: update %s maps before packet %d: %v", prog, s.name, i, err)
					}
				}
			}
			res := make([]runResult, len(sides))
			for k, s := range sides {
				res[k] = s.run(prog, pkt)
			}
			d.compareRun(prog, i, res)
			if res[0].err != nil {
				errs++
			} else {
				verdicts[res[0].verdict]++
			}
			if checkOften && (i+1)%corpusMapCheckEvery == 0 {
				d.compareMaps(t, fmt.Sprintf("%s after packet %d", prog, i))
			}
			if len(d.found) >= corpusMaxMismatches {
				run.mismatches = append(d.found, "stopped after too many mismatches")
				return run
			}
		}
		d.compareMaps(t, fmt.Sprintf("%s after all %d packets", prog, n))
		t.Logf("%s: %d packets, verdicts %v, %d rejected by BPF_PROG_TEST_RUN", prog, n, verdicts, errs)
	}
	run.mismatches = d.found
	return run
}

// crossCheck runs the optimizer's own differential tester, the one every
// candidate passes before a swap, on the lowered and perturbed programs:
// from the first phase's map state (without the map-in-map and device map
// entries, which a mapstate.State cannot hold), on the generated packets
// the kernel accepts plus verify's edge cases derived from them.
func crossCheck(t *testing.T, spec *ebpf.CollectionSpec, cands []candidate, run *diffRun) {
	t.Helper()
	plan := run.plans[0]
	state := mapstate.New()
	for _, name := range sortedKeys(plan) {
		if typ := spec.Maps[name].Type; typ == ebpf.ArrayOfMaps || typ == ebpf.HashOfMaps || typ == ebpf.DevMap {
			continue
		}
		for _, e := range plan[name] {
			state.Put(name, e.key, e.value)
		}
	}
	var pkts [][]byte
	for _, p := range run.packets {
		if len(p) >= verify.MinFrameSize {
			pkts = append(pkts, p)
		}
	}
	pkts = append(pkts, verify.EdgeCases(pkts[:64], 256, randv1.New(randv1.NewSource(int64(run.seed))))...)
	for _, c := range cands {
		cand := verify.Candidate{}
		for _, name := range sortedPrograms(spec) {
			cand[name] = c.spec.Programs[name].Instructions
		}
		rep, err := verify.Differential(context.Background(), spec, state, cand, pkts,
			verify.DiffOptions{Programs: run.progs, MapCheckInterval: corpusMapCheckEvery})
		if err != nil {
			t.Fatalf("verify.Differential on the %s programs: %v", c.name, err)
		}
		if !rep.Passed() {
			t.Errorf("verify.Differential on the %s programs: %v", c.name, rep)
		}
	}
}

// packetDriven reports whether BPF_PROG_TEST_RUN runs programs of type t on
// a packet.
func packetDriven(t ebpf.ProgramType) bool {
	switch t {
	case ebpf.XDP, ebpf.SchedCLS, ebpf.SchedACT:
		return true
	}
	return false
}

// verifierTail shortens a load error to the end of its verifier log, where
// the reason is.
func verifierTail(err error) string {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return err.Error()
	}
	log := ve.Log
	if len(log) > 40 {
		log = log[len(log)-40:]
	}
	return fmt.Sprintf("%v\n%s", err, strings.Join(log, "\n"))
}

// pinThread restricts the calling (locked) thread to the first CPU it may
// run on and returns a function that restores its affinity.
func pinThread(t *testing.T) func() {
	t.Helper()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatalf("get CPU affinity: %v", err)
	}
	cpu := -1
	for i := 0; i < 1024; i++ {
		if old.IsSet(i) {
			cpu = i
			break
		}
	}
	if cpu < 0 {
		t.Fatal("thread may run on no CPU")
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatalf("pin to CPU %d: %v", cpu, err)
	}
	return func() {
		if err := unix.SchedSetaffinity(0, &old); err != nil {
			t.Errorf("restore CPU affinity: %v", err)
		}
	}
}

// runResult is the outcome of one BPF_PROG_TEST_RUN.
type runResult struct {
	verdict uint32
	out     []byte
	ctx     []byte
	err     error
}

// ctxOutSize is larger than struct __sk_buff; the kernel copies its whole
// context struct and fails if the buffer is shorter.
const ctxOutSize = 512

// xdpIngressIfindex is the ingress interface XDP programs see: the loopback
// device, which always exists (the kernel checks), so that network
// functions that look their ingress port up in a map find one.
const xdpIngressIfindex = 1

// run runs prog once on pkt and returns its verdict, output packet and
// output context (struct xdp_md or struct __sk_buff).
func (s *side) run(prog string, pkt []byte) runResult {
	p := s.coll.Programs[prog]
	opts := ebpf.RunOptions{Data: pkt, DataOut: s.out}
	var ctx []byte
	if p.Type() == ebpf.XDP {
		// struct xdp_md: data, data_end, data_meta, ingress_ifindex,
		// rx_queue_index, egress_ifindex. The kernel insists that
		// data_end is the packet length.
		in := make([]byte, 24)
		binary.NativeEndian.PutUint32(in[4:], uint32(len(pkt)))
		binary.NativeEndian.PutUint32(in[12:], xdpIngressIfindex)
		ctx = make([]byte, len(in))
		opts.Context, opts.ContextOut = in, ctx
	} else {
		ctx = make([]byte, ctxOutSize)
		opts.ContextOut = ctx
	}
	v, err := p.Run(&opts)
	if err != nil {
		return runResult{err: err}
	}
	return runResult{verdict: v, out: bytes.Clone(opts.DataOut), ctx: ctx}
}

// differ compares the candidates (sides 1..n-2) against the original (side
// 0), ignoring whatever the original (side 0) and the second original (side
// n-1) disagree on. It collects the differences in found.
type differ struct {
	sides []*side
	found []string
}

func (d *differ) fail(format string, args ...any) {
	d.found = append(d.found, fmt.Sprintf(format, args...))
}

func (d *differ) compareRun(prog string, pkt int, res []runResult) {
	a, b := res[0], res[len(res)-1]
	for k := 1; k < len(res)-1; k++ {
		c, who := res[k], d.sides[k].name
		if (a.err == nil) != (c.err == nil) {
			d.fail("%s packet %d: %s run error %v, original %v", prog, pkt, who, c.err, a.err)
			continue
		}
		if a.err != nil {
			continue
		}
		if a.verdict == b.verdict && c.verdict != a.verdict {
			d.fail("%s packet %d: %s verdict %d, original %d", prog, pkt, who, c.verdict, a.verdict)
		}
		if off := maskedDiff(a.out, b.out, c.out); off != -1 {
			d.fail("%s packet %d: %s output differs at byte %d\n got %x\nwant %x", prog, pkt, who, off, c.out, a.out)
		}
		if off := maskedDiff(a.ctx, b.ctx, c.ctx); off != -1 {
			d.fail("%s packet %d: %s context differs at byte %d", prog, pkt, who, off)
		}
	}
}

// maskedDiff returns the first offset where c differs from a at a byte on
// which a and b agree, -1 if there is none. Lengths are compared only when
// a and b have the same length.
func maskedDiff(a, b, c []byte) int {
	if len(a) != len(b) {
		return -1
	}
	if len(c) != len(a) {
		return min(len(a), len(c))
	}
	mask := maskWord(a, b)
	for i := range a {
		if !mask[i] && a[i] != c[i] {
			return i
		}
	}
	return -1
}

// maskWord marks the bytes of a that the nondeterminism seen between a and
// b covers: a byte that differs and, since values such as timestamps grow
// monotonically and a candidate runs between the two originals, the less
// significant bytes of the same little-endian 64-bit word.
func maskWord(a, b []byte) []bool {
	mask := make([]bool, len(a))
	for i := range a {
		if a[i] == b[i] {
			continue
		}
		for j := i - i%8; j <= i; j++ {
			mask[j] = true
		}
	}
	return mask
}

// compareMaps reads the maps of every side and reports entries of a
// candidate that differ from the original's where the two originals agree.
func (d *differ) compareMaps(t *testing.T, when string) {
	t.Helper()
	snaps := make([]map[string]map[string][]byte, len(d.sides))
	for k, s := range d.sides {
		snap, err := snapshotCollection(s.coll)
		if err != nil {
			t.Fatalf("%s: read %s maps: %v", when, s.name, err)
		}
		snaps[k] = snap
	}
	a, b := snaps[0], snaps[len(snaps)-1]
	for k := 1; k < len(snaps)-1; k++ {
		c, who := snaps[k], d.sides[k].name
		for _, m := range sortedKeys(a) {
			am, bm, cm := a[m], b[m], c[m]
			for _, key := range sortedKeys(am) {
				av, inA := am[key]
				bv, inB := bm[key]
				cv, inC := cm[key]
				if !inB {
					continue // created by one original only: nondeterministic
				}
				if !inC {
					d.fail("%s: map %s key %s missing in %s", when, m, key, who)
					continue
				}
				if off := maskedDiff(av, bv, cv); inA && off != -1 {
					d.fail("%s: map %s key %s differs in %s at byte %d\n got %x\nwant %x", when, m, key, who, off, cv, av)
				}
			}
			for _, key := range sortedKeys(cm) {
				_, inA := am[key]
				_, inB := bm[key]
				if !inA && !inB {
					d.fail("%s: map %s key %s only in %s", when, m, key, who)
				}
			}
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// snapshotCollection reads every map whose contents user space can read:
// entries by hex key, per-CPU values concatenated, and the entries of the
// inner maps of map-in-map types under "outer-key/inner-key" (the outer
// values themselves are map IDs, which differ between collections).
func snapshotCollection(coll *ebpf.Collection) (map[string]map[string][]byte, error) {
	out := map[string]map[string][]byte{}
	for name, m := range coll.Maps {
		entries := map[string][]byte{}
		switch m.Type() {
		case ebpf.ProgramArray, ebpf.PerfEventArray, ebpf.RingBuf, ebpf.CPUMap, ebpf.XSKMap,
			ebpf.SockMap, ebpf.SockHash, ebpf.StackTrace:
			continue
		case ebpf.ArrayOfMaps, ebpf.HashOfMaps:
			key := make([]byte, m.KeySize())
			var id uint32
			it := m.Iterate()
			for it.Next(&key, &id) {
				inner, err := ebpf.NewMapFromID(ebpf.MapID(id))
				if err != nil {
					return nil, fmt.Errorf("map %s: inner map %d: %w", name, id, err)
				}
				err = readMap(inner, hex.EncodeToString(key)+"/", entries)
				inner.Close()
				if err != nil {
					return nil, fmt.Errorf("map %s: inner map of key %x: %w", name, key, err)
				}
			}
			if err := it.Err(); err != nil {
				return nil, fmt.Errorf("map %s: %w", name, err)
			}
		default:
			if err := readMap(m, "", entries); err != nil {
				return nil, fmt.Errorf("map %s: %w", name, err)
			}
		}
		out[name] = entries
	}
	return out, nil
}

func readMap(m *ebpf.Map, prefix string, into map[string][]byte) error {
	switch m.Type() {
	case ebpf.Array, ebpf.Hash, ebpf.LRUHash:
		// Large arrays (a Maglev ring has hundreds of thousands of
		// slots) take one system call per entry to iterate; a batch
		// takes thousands.
		err := readMapBatch(m, prefix, into)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
	}
	key := make([]byte, m.KeySize())
	it := m.Iterate()
	if perCPU(m.Type()) {
		var vals [][]byte
		for it.Next(&key, &vals) {
			into[prefix+hex.EncodeToString(key)] = bytes.Join(vals, nil)
		}
	} else {
		val := make([]byte, m.ValueSize())
		for it.Next(&key, &val) {
			into[prefix+hex.EncodeToString(key)] = bytes.Clone(val)
		}
	}
	return it.Err()
}

// readMapBatch reads a map with BPF_MAP_LOOKUP_BATCH. Keys and values are
// read into slices of byte arrays of the map's key and value size.
func readMapBatch(m *ebpf.Map, prefix string, into map[string][]byte) error {
	const chunk = 4096
	byteType := reflect.TypeFor[byte]()
	keys := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(int(m.KeySize()), byteType)), chunk, chunk)
	vals := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(int(m.ValueSize()), byteType)), chunk, chunk)
	var cursor ebpf.MapBatchCursor
	// A map of n entries needs at most n/chunk+1 batches.
	for range int(m.MaxEntries())/chunk + 2 {
		n, err := m.BatchLookup(&cursor, keys.Interface(), vals.Interface(), nil)
		for i := range n {
			key := hex.EncodeToString(keys.Index(i).Bytes())
			into[prefix+key] = bytes.Clone(vals.Index(i).Bytes())
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("batch lookup did not finish after %d entries", m.MaxEntries())
}

// isArray reports whether maps of type t are indexed by a u32 below
// their size.
func isArray(t ebpf.MapType) bool {
	switch t {
	case ebpf.Array, ebpf.PerCPUArray, ebpf.ArrayOfMaps, ebpf.DevMap:
		return true
	}
	return false
}

func perCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash:
		return true
	}
	return false
}

// fillEntry is one entry written into a map before the run. Entries of a
// map-in-map carry the contents of a fresh inner map instead of a value.
type fillEntry struct {
	key, value []byte
	inner      []fillEntry
}

// fillPlan is the map state every side starts from: a few entries per map,
// with keys built from the traffic generator's address, port and protocol
// pools so that the programs' lookups hit them.
type fillPlan map[string][]fillEntry

// fillable reports whether the plan writes maps of type t. Program arrays
// keep their static contents, global data keeps its initial values.
func fillable(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.Array, ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUHash, ebpf.LRUCPUHash,
		ebpf.LPMTrie, ebpf.ArrayOfMaps, ebpf.HashOfMaps, ebpf.DevMap:
		return true
	}
	return false
}

func newFillPlan(spec *ebpf.CollectionSpec, g *trafficGen) fillPlan {
	plan := fillPlan{}
	names := make([]string, 0, len(spec.Maps))
	for name := range spec.Maps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ms := spec.Maps[name]
		if strings.HasPrefix(name, ".") || !fillable(ms.Type) {
			continue
		}
		n := 24
		if !isArray(ms.Type) {
			// Leave room for the entries of later phases and for
			// the ones the programs create.
			n = min(n, int(ms.MaxEntries)/(2*corpusPhases))
		}
		plan[name] = g.entries(ms, n)
	}
	return plan
}

// entries makes up to n entries for a map of spec ms.
func (g *trafficGen) entries(ms *ebpf.MapSpec, n int) []fillEntry {
	n = min(n, int(ms.MaxEntries))
	var out []fillEntry
	for i := range n {
		e := fillEntry{key: g.mapKey(ms)}
		if i < 4 && isArray(ms.Type) {
			// Slots 0-3 always get a value: they are the indices
			// network functions use most (the ingress ifindex
			// among them, see xdpIngressIfindex).
			e.key = binary.LittleEndian.AppendUint32(nil, uint32(i))
		}
		switch ms.Type {
		case ebpf.ArrayOfMaps, ebpf.HashOfMaps:
			e.inner = g.entries(ms.InnerMap, 8)
		case ebpf.DevMap:
			// The loopback device always exists; the value may be
			// struct bpf_devmap_val, whose program fd 0 means none.
			e.value = make([]byte, ms.ValueSize)
			binary.LittleEndian.PutUint32(e.value, 1)
		default:
			e.value = g.mapValue(int(ms.ValueSize))
		}
		out = append(out, e)
	}
	return out
}

// mapSlots estimates how many entries reading all maps of spec costs: every
// slot of an array (arrays always have all their entries), but only the
// entries a hash map can get in a test run, which are few whatever its
// capacity.
func mapSlots(spec *ebpf.CollectionSpec) int {
	const hashEntries = 2 * corpusPackets
	slots := func(ms *ebpf.MapSpec) int {
		if isArray(ms.Type) {
			return int(ms.MaxEntries)
		}
		return min(int(ms.MaxEntries), hashEntries)
	}
	n := 0
	for _, ms := range spec.Maps {
		if ms.InnerMap != nil {
			n += slots(ms) * slots(ms.InnerMap)
			continue
		}
		n += slots(ms)
	}
	return n
}

func (fp fillPlan) apply(spec *ebpf.CollectionSpec, coll *ebpf.Collection) error {
	for _, name := range sortedKeys(fp) {
		m := coll.Maps[name]
		if m == nil {
			return fmt.Errorf("map %s not loaded", name)
		}
		for _, e := range fp[name] {
			if e.inner == nil {
				if err := putValue(m, e.key, e.value); err != nil {
					return fmt.Errorf("map %s key %x: %w", name, e.key, err)
				}
				continue
			}
			is := spec.Maps[name].InnerMap.Copy()
			is.Name = "corpus_inner"
			inner, err := ebpf.NewMap(is)
			if err != nil {
				return fmt.Errorf("map %s: create inner map: %w", name, err)
			}
			for _, ie := range e.inner {
				if err := putValue(inner, ie.key, ie.value); err != nil {
					inner.Close()
					return fmt.Errorf("map %s key %x: inner key %x: %w", name, e.key, ie.key, err)
				}
			}
			err = m.Put(e.key, inner)
			inner.Close()
			if err != nil {
				return fmt.Errorf("map %s key %x: %w", name, e.key, err)
			}
		}
	}
	return nil
}

func putValue(m *ebpf.Map, key, value []byte) error {
	if !perCPU(m.Type()) {
		return m.Put(key, value)
	}
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = value
	}
	return m.Put(key, vals)
}

// trafficGen generates packets and map contents from small pools of
// addresses, ports and protocols, so that generated packets hit generated
// map entries. It is deterministic for a given seed.
type trafficGen struct {
	r *rand.Rand
	// hot are the few flows most packets belong to and most map keys
	// are made of, as in real traffic with a skewed flow popularity.
	hot []flow
}

// flow is the addressing of one generated connection. proto is TCP or UDP
// for hot flows and any of the pool protocols otherwise.
type flow struct {
	src4, dst4, src6, dst6 net.IP
	sport, dport           uint16
	proto                  uint8
}

// hotFlows is the number of hot flows.
const hotFlows = 16

var (
	poolIPv4 = []net.IP{
		net.IPv4(10, 0, 0, 1), net.IPv4(10, 0, 0, 2), net.IPv4(10, 1, 2, 3), net.IPv4(192, 168, 1, 10),
		net.IPv4(192, 168, 1, 20), net.IPv4(172, 16, 5, 4), net.IPv4(8, 8, 8, 8), net.IPv4(1, 1, 1, 1),
	}
	poolIPv6 = []net.IP{
		net.ParseIP("2001:db8::1"), net.ParseIP("2001:db8::2"), net.ParseIP("2001:db8:1::10"),
		net.ParseIP("fe80::1"), net.ParseIP("2001:db8:ffff::ff"),
	}
	poolPorts  = []uint16{80, 443, 53, 22, 3074, 5060, 123, 8080, 12345, 40000}
	poolProtos = []uint8{6, 17, 1, 58, 47}
	poolMACs   = []net.HardwareAddr{
		{0x02, 0, 0, 0, 0, 1}, {0x02, 0, 0, 0, 0, 2}, {0x02, 0, 0, 0, 0, 3}, {0x0a, 0xbb, 0xcc, 0xdd, 0xee, 0xff},
	}
	poolVLANs = []uint16{10, 20, 100}
)

func newTrafficGen(seed uint64) *trafficGen {
	g := &trafficGen{r: rand.New(rand.NewPCG(seed, 0x6d6f727068657573))}
	for range hotFlows {
		f := g.randomFlow()
		f.proto = pick(g, []uint8{6, 17})
		g.hot = append(g.hot, f)
	}
	return g
}

func (g *trafficGen) randomFlow() flow {
	return flow{
		src4: g.ipv4(), dst4: g.ipv4(), src6: g.ipv6(), dst6: g.ipv6(),
		sport: g.port(), dport: g.port(), proto: pick(g, poolProtos),
	}
}

// flow returns a hot flow with probability p, else a random one.
func (g *trafficGen) flow(p float64) flow {
	if g.chance(p) {
		return pick(g, g.hot)
	}
	return g.randomFlow()
}

func pick[T any](g *trafficGen, pool []T) T { return pool[g.r.IntN(len(pool))] }

func (g *trafficGen) chance(p float64) bool { return g.r.Float64() < p }

func (g *trafficGen) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	return b
}

func (g *trafficGen) ipv4() net.IP {
	if g.chance(0.9) {
		return pick(g, poolIPv4).To4()
	}
	return net.IP(g.bytes(4))
}

func (g *trafficGen) ipv6() net.IP {
	if g.chance(0.9) {
		return pick(g, poolIPv6)
	}
	return net.IP(g.bytes(16))
}

func (g *trafficGen) port() uint16 {
	if g.chance(0.85) {
		return pick(g, poolPorts)
	}
	return uint16(g.r.Uint32())
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// mapKey makes a key for a map of spec ms: an index for arrays, a prefix
// for LPM tries, and for hashes one of the layouts network functions use
// for keys of that size, filled from the pools.
func (g *trafficGen) mapKey(ms *ebpf.MapSpec) []byte {
	n := int(ms.KeySize)
	switch {
	case isArray(ms.Type):
		idx := g.r.Uint32N(ms.MaxEntries)
		if g.chance(0.7) {
			idx = g.r.Uint32N(min(ms.MaxEntries, 16))
		}
		return binary.LittleEndian.AppendUint32(nil, idx)
	case ms.Type == ebpf.LPMTrie:
		return g.lpmKey(n)
	}
	f := g.flow(0.75)
	var k []byte
	switch n {
	case 2:
		k = be16(f.dport)
	case 4:
		switch g.r.IntN(4) {
		case 0:
			k = f.dst4
		case 1:
			k = f.src4
		case 2:
			k = binary.LittleEndian.AppendUint32(nil, g.r.Uint32N(16))
		default:
			k = append(be16(f.dport), f.proto, 0)
		}
	case 6:
		k = pick(g, poolMACs)
	case 8:
		switch g.r.IntN(4) {
		case 0, 1:
			port := f.dport
			if g.chance(0.2) {
				port = 0
			}
			k = append(append(slices.Clone(f.dst4), be16(port)...), f.proto, 0)
		case 2:
			k = append(slices.Clone(f.src4), f.dst4...)
		default:
			k = binary.LittleEndian.AppendUint64(nil, uint64(g.r.IntN(16)))
		}
	case 16:
		switch g.r.IntN(3) {
		case 0:
			k = f.dst6
		case 1:
			k = f.src6
		default:
			k = append(slices.Clone(f.src4), f.dst4...)
			k = append(k, be16(f.sport)...)
			k = append(k, be16(f.dport)...)
			k = append(k, f.proto, 0, 0, 0)
		}
	default:
		for len(k) < n {
			switch g.r.IntN(5) {
			case 0:
				k = append(k, f.src4...)
			case 1:
				k = append(k, f.dst4...)
			case 2:
				k = append(k, be16(f.dport)...)
			case 3:
				k = append(k, f.proto)
			default:
				k = append(k, 0)
			}
		}
	}
	k = slices.Clone(k)
	k = append(k, make([]byte, max(0, n-len(k)))...)
	return k[:n]
}

// lpmKey makes a struct bpf_lpm_trie_key: a host-order prefix length and
// the data, masked to the prefix.
func (g *trafficGen) lpmKey(n int) []byte {
	var data []byte
	var lens []uint32
	f := g.flow(0.75)
	switch n - 4 {
	case 4:
		data, lens = slices.Clone(f.dst4), []uint32{8, 16, 24, 32, 32}
	case 16:
		data, lens = slices.Clone(f.dst6), []uint32{32, 48, 64, 128, 128}
	default:
		data = g.bytes(n - 4)
		lens = []uint32{uint32(8 * (n - 4))}
	}
	plen := pick(g, lens)
	for i := range data {
		switch bit := uint32(8 * i); {
		case bit >= plen:
			data[i] = 0
		case bit+8 > plen:
			data[i] &= byte(0xff << (bit + 8 - plen))
		}
	}
	return append(binary.LittleEndian.AppendUint32(nil, plen), data...)
}

// mapValue makes a value of n bytes out of 32-bit words that are small
// integers (flag sets, indices, actions), pool addresses, pool ports or
// random.
func (g *trafficGen) mapValue(n int) []byte {
	var v []byte
	for len(v) < n {
		switch x := g.r.IntN(10); {
		case x < 4:
			v = binary.LittleEndian.AppendUint32(v, pick(g, []uint32{0, 1, 1, 2, 3, 4, 5, 7}))
		case x < 6:
			v = append(v, g.ipv4()...)
		case x < 7:
			v = append(v, be16(g.port())...)
			v = append(v, be16(g.port())...)
		default:
			v = append(v, g.bytes(4)...)
		}
	}
	return v[:n]
}

// packet generates one frame: Ethernet with zero to two VLAN tags carrying
// IPv4, IPv6 (sometimes with extension headers), ARP or something unknown,
// with TCP (sometimes with options), UDP, ICMP or other payloads; some
// frames are then truncated, corrupted, padded or replaced by noise.
func (g *trafficGen) packet() []byte {
	if g.chance(0.02) {
		return g.bytes(14 + g.r.IntN(80))
	}
	eth := &layers.Ethernet{SrcMAC: pick(g, poolMACs), DstMAC: pick(g, poolMACs)}
	if g.chance(0.05) {
		eth.DstMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	}
	ls := []gopacket.SerializableLayer{eth}
	setType := func(t layers.EthernetType) { eth.EthernetType = t }
	switch x := g.r.IntN(100); {
	case x < 5:
		outer := &layers.Dot1Q{VLANIdentifier: pick(g, poolVLANs)}
		inner := &layers.Dot1Q{VLANIdentifier: pick(g, poolVLANs), Priority: uint8(g.r.IntN(8))}
		eth.EthernetType = layers.EthernetTypeQinQ
		if g.chance(0.5) {
			eth.EthernetType = layers.EthernetTypeDot1Q
		}
		outer.Type = layers.EthernetTypeDot1Q
		ls = append(ls, outer, inner)
		setType = func(t layers.EthernetType) { inner.Type = t }
	case x < 25:
		tag := &layers.Dot1Q{VLANIdentifier: pick(g, poolVLANs)}
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, tag)
		setType = func(t layers.EthernetType) { tag.Type = t }
	}

	var (
		ipv6     bool
		netLayer gopacket.NetworkLayer
		proto    layers.IPProtocol // transport protocol
		f        = g.flow(0.6)
	)
	if g.chance(0.2) {
		f.proto = pick(g, poolProtos)
	}
	switch x := g.r.IntN(100); {
	case x < 50:
		ip := &layers.IPv4{
			Version: 4, TTL: 64, SrcIP: f.src4, DstIP: f.dst4, Protocol: layers.IPProtocol(f.proto),
		}
		if f.proto == 58 || g.chance(0.03) {
			ip.Protocol = layers.IPProtocol(pick(g, []uint8{1, 4, 132}))
		}
		switch y := g.r.IntN(20); {
		case y == 0:
			ip.TTL = 1
		case y == 1:
			ip.TTL = 0
		case y < 4:
			ip.TTL = uint8(g.r.Uint32())
		}
		if g.chance(0.2) {
			ip.TOS = uint8(g.r.Uint32())
		}
		switch y := g.r.IntN(20); {
		case y == 0:
			ip.Flags = layers.IPv4MoreFragments
		case y == 1:
			ip.FragOffset = uint16(1 + g.r.IntN(100))
		case y < 8:
			ip.Flags = layers.IPv4DontFragment
		}
		if g.chance(0.08) {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		setType(layers.EthernetTypeIPv4)
		ls = append(ls, ip)
		netLayer, proto = ip, ip.Protocol
	case x < 80:
		ip := &layers.IPv6{
			Version: 6, HopLimit: 64, SrcIP: f.src6, DstIP: f.dst6, NextHeader: layers.IPProtocol(f.proto),
		}
		if f.proto == 1 {
			ip.NextHeader = layers.IPProtocolICMPv6
		}
		if g.chance(0.1) {
			ip.HopLimit = uint8(g.r.IntN(2))
		}
		setType(layers.EthernetTypeIPv6)
		ls = append(ls, ip)
		netLayer, proto, ipv6 = ip, ip.NextHeader, true
		if g.chance(0.1) {
			// A hop-by-hop or destination options header (8 bytes,
			// PadN) in front of the transport header.
			ext := []byte{byte(ip.NextHeader), 0, 1, 4, 0, 0, 0, 0}
			ip.NextHeader = pick(g, []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination})
			ls = append(ls, gopacket.Payload(ext))
		}
	case x < 88:
		setType(layers.EthernetTypeARP)
		ls = append(ls, &layers.ARP{
			AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: uint16(1 + g.r.IntN(2)),
			SourceHwAddress: eth.SrcMAC, SourceProtAddress: g.ipv4(),
			DstHwAddress: make([]byte, 6), DstProtAddress: g.ipv4(),
		})
		return g.finish(ls, false)
	default:
		setType(layers.EthernetType(pick(g, []uint16{0x88cc, 0x8847, 0x0806, 0x9000, 0x0800})))
		ls = append(ls, gopacket.Payload(g.bytes(g.r.IntN(64))))
		return g.finish(ls, false)
	}

	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport),
			Seq: g.r.Uint32(), Window: 65535}
		switch g.r.IntN(7) {
		case 0:
			tcp.SYN = true
		case 1:
			tcp.SYN, tcp.ACK = true, true
		case 2, 3:
			tcp.ACK = true
		case 4:
			tcp.FIN, tcp.ACK = true, true
		case 5:
			tcp.RST = true
		default:
			tcp.PSH, tcp.ACK = true, true
		}
		if g.chance(0.3) {
			tcp.Options = g.tcpOptions()
		}
		_ = tcp.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, tcp)
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		_ = udp.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, udp)
	case layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{
			TypeCode: layers.CreateICMPv4TypeCode(pick(g, []uint8{0, 3, 8, 11}), uint8(g.r.IntN(2))),
			Id:       uint16(g.r.Uint32()), Seq: uint16(g.r.IntN(10)),
		})
	case layers.IPProtocolICMPv6:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(pick(g, []uint8{128, 129, 135, 136, 1}), 0)}
		_ = icmp.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, icmp)
	}
	return g.finish(ls, ipv6)
}

func (g *trafficGen) tcpOptions() []layers.TCPOption {
	var opts []layers.TCPOption
	if g.chance(0.8) {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4,
			OptionData: be16(uint16(500 + g.r.IntN(9000)))})
	}
	if g.chance(0.5) {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindNop})
	}
	if g.chance(0.5) {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3,
			OptionData: []byte{byte(g.r.IntN(15))}})
	}
	if g.chance(0.5) {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2})
	}
	if g.chance(0.4) {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10,
			OptionData: g.bytes(8)})
	}
	return opts
}

// finish adds a payload, serializes the layers and applies the
// malformations.
func (g *trafficGen) finish(ls []gopacket.SerializableLayer, ipv6 bool) []byte {
	var payload []byte
	switch x := g.r.IntN(10); {
	case x < 2:
		payload = make([]byte, g.r.IntN(120))
	case x < 3:
		payload = bytes.Repeat([]byte{0xff}, g.r.IntN(120))
	default:
		payload = g.bytes(g.r.IntN(160))
	}
	ls = append(ls, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		// The layers are built above from valid field values; failing
		// to serialize them is a bug in the generator.
		panic(fmt.Sprintf("serialize generated packet: %v", err))
	}
	pkt := slices.Clone(buf.Bytes())
	switch x := g.r.IntN(100); {
	case x < 8:
		pkt = pkt[:g.r.IntN(len(pkt))]
	case x < 13:
		i := g.r.IntN(min(len(pkt), 64))
		pkt[i] ^= byte(1 + g.r.IntN(255))
	case x < 18 || (ipv6 && x < 30):
		// Ethernet trailer padding after the L3 packet.
		pkt = append(pkt, make([]byte, 1+g.r.IntN(40))...)
	}
	return pkt
}
