package passes

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
	"github.com/morpheus-go/morpheus/verify"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of TestGolden")

// goldenProg is the name of the hand-written golden programs.
const goldenProg = "golden"

// goldenAsm assembles a program whose jumps name labels: Lift wants the
// numeric offsets the ELF reader produces, not symbolic jumps.
type goldenAsm struct {
	insns  asm.Instructions
	raw    int
	labels map[string]int
	fixups map[int]string // instruction index -> label
}

func newGoldenAsm() *goldenAsm {
	return &goldenAsm{labels: map[string]int{}, fixups: map[int]string{}}
}

// add appends instructions.
func (g *goldenAsm) add(ins ...asm.Instruction) *goldenAsm {
	for _, in := range ins {
		g.insns = append(g.insns, in)
		g.raw += int(in.Size() / asm.InstructionSize)
	}
	return g
}

// label names the next instruction.
func (g *goldenAsm) label(name string) *goldenAsm {
	g.labels[name] = g.raw
	return g
}

// jump appends a jump to label; its Offset is filled in by done.
func (g *goldenAsm) jump(ins asm.Instruction, label string) *goldenAsm {
	g.fixups[len(g.insns)] = label
	return g.add(ins.WithReference(""))
}

// done resolves the jumps.
func (g *goldenAsm) done() asm.Instructions {
	raw := 0
	for i := range g.insns {
		raw += int(g.insns[i].Size() / asm.InstructionSize)
		if l, ok := g.fixups[i]; ok {
			to, found := g.labels[l]
			if !found {
				panic("golden program: no label " + l)
			}
			g.insns[i].Offset = int16(to - raw)
		}
	}
	return g.insns
}

// goldenKeyOff is where the programs read their 4-byte key from the frame
// (the IPv4 source address of an Ethernet/IPv4 frame).
const goldenKeyOff = 26

// goldenPrologue loads the key from the packet into R5 (dropping frames
// too short for it) and keeps the context in R6.
func goldenPrologue(g *goldenAsm) {
	g.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, goldenKeyOff+4),
	)
	g.jump(asm.JGT.Reg(asm.R4, asm.R3, ""), "drop")
	g.add(asm.LoadMem(asm.R5, asm.R2, goldenKeyOff, asm.Word))
}

// goldenDrop is the shared "drop" exit.
func goldenDrop(g *goldenAsm) {
	g.label("drop").add(asm.Mov.Imm(asm.R0, 1), asm.Return())
}

func goldenLookup(g *goldenAsm, mapName string, keyOff int16) {
	g.add(
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapName),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, int32(keyOff)),
		asm.FnMapLookupElem.Call(),
	)
}

func goldenCollection(insns asm.Instructions, maps ...*ebpf.MapSpec) *ebpf.CollectionSpec {
	cs := &ebpf.CollectionSpec{Maps: map[string]*ebpf.MapSpec{}, Programs: map[string]*ebpf.ProgramSpec{
		goldenProg: {Name: goldenProg, Type: ebpf.XDP, License: "GPL", Instructions: insns},
	}}
	for _, m := range maps {
		cs.Maps[m.Name] = m
	}
	return cs
}

func goldenU32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func goldenIP(a, b, c, d byte) uint32 { return binary.LittleEndian.Uint32([]byte{a, b, c, d}) }

// goldenCase is one hand-written program run through some passes.
type goldenCase struct {
	name   string
	passes []string
	build  func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap)
	// keys are key values worth sending (hits of the tables).
	keys []uint32
	opts func(*Options)
	// layout, if set, overrides the cost models' choice (forceLayout).
	layout string
}

// goldenCases: one row per program and pass selection. A new pass adds
// rows here (a program that exercises it, its pass name and the keys its
// tables hold); `go test ./passes -run TestGolden -update` writes the
// golden file.
var goldenCases = []goldenCase{
	{name: "mapinline_hash", passes: []string{"mapinline"}, build: goldenHash, keys: goldenHashKeys},
	{name: "mapinline_lpm", passes: []string{"mapinline"}, build: goldenLPM, keys: []uint32{goldenIP(10, 1, 2, 3), goldenIP(10, 9, 9, 9), goldenIP(192, 168, 7, 1)}},
	{name: "hotcache_hash", passes: []string{"hotcache"}, build: goldenHot, keys: goldenHashKeys,
		opts: func(o *Options) { o.MaxInline, o.TopK = 2, 2 }},
	{name: "hotcache_tree", passes: []string{"hotcache"}, build: goldenHotTree, keys: goldenHotTreeKeys,
		opts: func(o *Options) { o.MaxInline, o.TopK = 2, 24 }, layout: "tree"},
	{name: "hotcache_probe", passes: []string{"hotcache"}, build: goldenHotTree, keys: goldenHotTreeKeys,
		opts: func(o *Options) { o.MaxInline, o.TopK = 2, 24 }},
	{name: "hotcache_probe_displaced", passes: []string{"hotcache"}, build: goldenDisplaced, keys: goldenDisplacedKeys[:40],
		opts: func(o *Options) { o.MaxInline = 2 }},
	{name: "hotcache_rw_tripwire", passes: []string{"hotcache"}, build: goldenRW, keys: goldenHashKeys},
	{name: "hotcache_hit_tail", passes: []string{"hotcache"}, build: goldenTailMain, keys: tailKeys},
	{name: "mapinline_probe", passes: []string{"mapinline"}, build: goldenProbe, keys: goldenHotTreeKeys},
	{name: "constprop_rodata", passes: []string{"constprop"}, build: goldenRodata},
	{name: "constprop_features", passes: []string{"constprop"}, build: goldenFeatures},
	{name: "constprop_ingress", passes: []string{"constprop"}, build: goldenIngress, opts: func(o *Options) { o.Ingress = kerneltest.LoIfindex }},
	{name: "constprop_dce_features", passes: []string{"constprop", "dce"}, build: goldenFeatures},
	{name: "dce_dead_defs", passes: []string{"dce"}, build: goldenDeadDefs},
	{name: "dss_lpm", passes: []string{"dss"}, build: goldenDssLPM, keys: goldenDssLPMKeys,
		opts: func(o *Options) { o.MaxInline = 2 }},
	{name: "dss_lpm_mixed", passes: []string{"dss"}, build: goldenDssMixed, keys: goldenDssMixedKeys,
		opts: func(o *Options) { o.MaxInline = 4 }},
	{name: "dss_array", passes: []string{"dss"}, build: goldenDssArray, keys: goldenDssArrayKeys,
		opts: func(o *Options) { o.MaxInline = 2 }},
	{name: "dss_dir", passes: []string{"dss"}, build: goldenDssDIR, keys: goldenDssDIRKeys},
	{name: "dce_stack_stores", passes: []string{"dce"}, build: goldenStackStores},
	{name: "storemerge_key", passes: []string{"storemerge"}, build: goldenStoreMerge},
}

var goldenHashKeys = []uint32{goldenIP(192, 0, 2, 1), goldenIP(192, 0, 2, 2), goldenIP(198, 51, 100, 7)}

// goldenHash: a lookup in a 3-entry read-only hash; the value is the verdict.
func goldenHash() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(asm.StoreMem(asm.R10, -4, asm.R5, asm.Word))
	goldenLookup(g, "acl", -4)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
	g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
	g.label("miss").add(asm.Mov.Imm(asm.R0, 2), asm.Return())
	goldenDrop(g)
	acl := &ebpf.MapSpec{Name: "acl", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16}
	st := mapstate.New()
	for i, k := range goldenHashKeys {
		st.Put("acl", goldenU32(k), goldenU32(uint32(1+i)))
	}
	return goldenCollection(g.done(), acl), st, nil
}

// goldenHot: the same lookup in a table too large to inline, with two hot
// keys (one of them a miss).
func goldenHot() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, st, _ := goldenHash()
	st.Put("acl", goldenU32(goldenIP(203, 0, 113, 9)), goldenU32(3))
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{"acl": {
		{Key: goldenU32(goldenHashKeys[1]), Count: 90},
		{Key: goldenU32(goldenIP(10, 0, 0, 1)), Count: 40},
	}}}
	return spec, st, heat
}

// goldenLPM: a host lookup in an LPM trie holding a /8 and a /24.
func goldenLPM() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(asm.StoreImm(asm.R10, -8, 32, asm.Word), asm.StoreMem(asm.R10, -4, asm.R5, asm.Word))
	goldenLookup(g, "routes", -8)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
	g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
	g.label("miss").add(asm.Mov.Imm(asm.R0, 2), asm.Return())
	goldenDrop(g)
	routes := &ebpf.MapSpec{Name: "routes", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 16, Flags: 1} // BPF_F_NO_PREALLOC
	st := mapstate.New()
	st.Put("routes", append(goldenU32(8), 10, 0, 0, 0), goldenU32(3))
	st.Put("routes", append(goldenU32(24), 10, 1, 2, 0), goldenU32(1))
	return goldenCollection(g.done(), routes), st, nil
}

// goldenRodata: a .rodata flag decides a branch, and .rodata values feed
// arithmetic with BPF's corner cases (32-bit wrap-around, division and
// modulo by zero, arithmetic shift of a negative value).
func goldenRodata() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(
		asm.LoadMapValue(asm.R1, 0, 0).WithReference(".rodata"),
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // enabled = 1
	)
	g.jump(asm.JEq.Imm(asm.R2, 0, ""), "drop")
	g.add(
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // 0xfffffffe
		asm.Add.Imm32(asm.R3, 3),                 // w3 = 1 (wraps, zero-extended)
		asm.Mov.Imm(asm.R7, 9),
		asm.Mov.Imm(asm.R8, 0),
		asm.Div.Reg(asm.R7, asm.R8), // 9 / 0 = 0
		asm.Mov.Imm(asm.R9, 5),
		asm.Mod.Reg(asm.R9, asm.R8), // 5 % 0 = 5
		asm.Mov.Imm(asm.R4, -16),
		asm.ArSh.Imm(asm.R4, 2), // -4
	)
	g.jump(asm.JNE.Imm(asm.R7, 0, ""), "drop")
	g.jump(asm.JSGT.Imm(asm.R4, 0, ""), "drop")
	g.jump(asm.JNE.Imm32(asm.R3, 1, ""), "drop")
	g.add(
		asm.Mov.Reg(asm.R0, asm.R9),
		asm.Sub.Imm(asm.R0, 3), // XDP_PASS
	)
	g.jump(asm.JEq.Reg(asm.R5, asm.R3, ""), "drop") // depends on the packet: stays
	g.add(asm.Return())
	goldenDrop(g)
	ro := make([]byte, 8)
	binary.LittleEndian.PutUint32(ro[0:], 1)
	binary.LittleEndian.PutUint32(ro[4:], 0xfffffffe)
	rodata := &ebpf.MapSpec{Name: ".rodata", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1,
		Flags: bpfFRdonlyProg, Contents: []ebpf.MapKV{{Key: uint32(0), Value: ro}}}
	return goldenCollection(g.done(), rodata), mapstate.New(), nil
}

// goldenFeatures: a feature-flag array read with constant indices. Flag 1
// (off) guards a call of a subprogram, flag 2 holds a multiplier; the
// stats array is written by the data plane and must not be folded.
func goldenFeatures() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(asm.Mov.Reg(asm.R9, asm.R5), asm.StoreImm(asm.R10, -8, 1, asm.Word))
	goldenLookup(g, "features", -8)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "nofeat")
	g.add(asm.LoadMem(asm.R1, asm.R0, 0, asm.Word))
	g.jump(asm.JEq.Imm(asm.R1, 0, ""), "nofeat")
	g.add(asm.Mov.Reg(asm.R1, asm.R9), asm.Call.Label("feature"), asm.Return())
	g.label("nofeat").add(asm.StoreImm(asm.R10, -8, 2, asm.Word))
	goldenLookup(g, "features", -8)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
	g.add(
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word), // 7
		asm.Mul.Imm(asm.R7, 3),                   // 21
		asm.StoreImm(asm.R10, -8, 0, asm.Word),
	)
	goldenLookup(g, "stats", -8)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
	g.add(
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.DWord),
		asm.Mov.Reg(asm.R0, asm.R7),
		asm.Sub.Imm(asm.R0, 19), // XDP_PASS
		asm.Return(),
	)
	goldenDrop(g)
	g.add(asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("feature"), asm.And.Imm(asm.R0, 3), asm.Return())
	features := &ebpf.MapSpec{Name: "features", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 4}
	stats := &ebpf.MapSpec{Name: "stats", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1}
	st := mapstate.New()
	st.Put("features", goldenU32(0), goldenU32(1))
	st.Put("features", goldenU32(1), goldenU32(0))
	st.Put("features", goldenU32(2), goldenU32(7))
	return goldenCollection(g.done(), features, stats), st, nil
}

// goldenDeadDefs: dead register definitions, a lookup whose result is
// never read, a goto to the next block and a chain of blocks to merge.
func goldenDeadDefs() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(
		asm.Mov.Reg(asm.R9, asm.R5),
		asm.Mov.Imm(asm.R7, 5),
		asm.Add.Imm(asm.R7, 1), // r7 is never read
		asm.StoreImm(asm.R10, -8, 0, asm.Word),
	)
	goldenLookup(g, "table", -8) // result overwritten below
	g.add(asm.LoadImm(asm.R8, 0x1234567890, asm.DWord))
	g.jump(asm.Ja.Label(""), "next")
	g.label("next").add(asm.Mov.Imm(asm.R0, 2))
	g.jump(asm.JEq.Imm(asm.R9, 0, ""), "same")
	g.label("same").add(asm.Return())
	goldenDrop(g)
	table := &ebpf.MapSpec{Name: "table", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2}
	return goldenCollection(g.done(), table), mapstate.New(), nil
}

// goldenRun lifts the case's program and runs the selected passes.
func goldenRun(t *testing.T, gc goldenCase) (*Context, *program.Program) {
	t.Helper()
	spec, st, heat := gc.build()
	prog, err := program.Lift(spec.Programs[goldenProg])
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	if gc.opts != nil {
		gc.opts(&opts)
	}
	opts.Passes = gc.passes
	if gc.layout != "" {
		defer func(old string) { forceLayout = old }(forceLayout)
		forceLayout = gc.layout
	}
	c := &Context{Coll: spec, Prog: prog.Clone(), State: st, Heat: heat, Guards: guard.NewTable(), Opts: opts}
	if err := Run(c); err != nil {
		t.Fatal(err)
	}
	return c, prog
}

func goldenText(gc goldenCase, before *program.Program, c *Context) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# passes: %s\n== before\n%s== after\n%s== remarks\n", strings.Join(gc.passes, ","), before, c.Prog)
	for _, r := range c.Remarks {
		fmt.Fprintln(&sb, r)
	}
	return sb.String()
}

// TestGolden compares each case's before/after listing and remarks with
// testdata/NAME.golden, then loads the result through the verifier and
// runs it side by side with the original on frames carrying the keys.
func TestGolden(t *testing.T) {
	for _, gc := range goldenCases {
		t.Run(gc.name, func(t *testing.T) {
			c, before := goldenRun(t, gc)
			got := goldenText(gc, before, c)
			path := filepath.Join("testdata", gc.name+".golden")
			if *updateGolden {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from the golden file (run with -update after checking):\n%s", path, got)
			}
			goldenKernel(t, c, gc)
		})
	}
}

// goldenKernel loads the rewritten program and compares it with the
// original on frames with the case's keys, keys next to them and random
// ones.
func goldenKernel(t *testing.T, c *Context, gc goldenCase) {
	kerneltest.Require(t)
	insns, err := c.Prog.Lower()
	if err != nil {
		t.Fatal(err)
	}
	cand := verify.Candidate{goldenProg: insns}
	coll, err := verify.Load(c.Coll, cand, verify.LoadOptions{})
	if err != nil {
		t.Fatalf("verifier: %v", err)
	}
	coll.Close()
	rnd := rand.New(rand.NewSource(1))
	var packets [][]byte
	keys := append([]uint32{0}, gc.keys...)
	for i := 0; i < 8; i++ {
		keys = append(keys, rnd.Uint32())
	}
	for _, k := range keys {
		for _, d := range []uint32{0, 1 << 24} { // the key and its neighbour in the last byte
			f := make([]byte, 64)
			rnd.Read(f)
			binary.LittleEndian.PutUint32(f[goldenKeyOff:], k+d)
			packets = append(packets, f)
		}
	}
	packets = append(packets, make([]byte, goldenKeyOff+2)) // too short: dropped
	rep, err := verify.Differential(context.Background(), c.Coll, c.State, cand, packets, verify.DiffOptions{})
	if err != nil {
		t.Fatalf("differential: %v", err)
	}
	if !rep.Passed() {
		t.Fatalf("differential test failed:\n%s", rep)
	}
}

// goldenStackStores: a store overwritten before any read and a spill never
// reloaded are dead; a key the lookup reads, a reloaded spill and a store
// into map memory are not.
func goldenStackStores() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(
		asm.StoreImm(asm.R10, -8, 1, asm.Word),        // overwritten below: dead
		asm.StoreImm(asm.R10, -8, 0, asm.Word),        // the key: read by the lookup
		asm.StoreMem(asm.R10, -16, asm.R5, asm.DWord), // reloaded: live
		asm.StoreMem(asm.R10, -24, asm.R6, asm.DWord), // never reloaded: dead
	)
	goldenLookup(g, "table", -8)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
	g.add(
		asm.LoadMem(asm.R1, asm.R10, -16, asm.DWord),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord), // map memory: kept
		asm.Mov.Imm(asm.R0, 2),
		asm.Return(),
	)
	goldenDrop(g)
	table := &ebpf.MapSpec{Name: "table", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2}
	return goldenCollection(g.done(), table), mapstate.New(), nil
}
