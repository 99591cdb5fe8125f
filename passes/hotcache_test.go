package passes

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"slices"
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

func TestHotTreeChunks(t *testing.T) {
	none := func(int) bool { return false }
	tests := []struct {
		name    string
		keyOff  int16
		size    int
		skip    func(int) bool
		want    []keyChunk
		wantHex string // chunkBE of bytes 0..size-1 per chunk
	}{
		{"4 bytes aligned", -8, 4, none, []keyChunk{{0, asm.Word}}, "00010203"},
		{"6 bytes (MAC)", -8, 6, none, []keyChunk{{0, asm.Word}, {4, asm.Half}}, "00010203 0405"},
		{"8 bytes (MAC+VLAN)", -104, 8, none, []keyChunk{{0, asm.DWord}}, "0001020304050607"},
		{"8 bytes misaligned", -12, 8, none, []keyChunk{{0, asm.Word}, {4, asm.Word}}, "00010203 04050607"},
		{"16 bytes", -16, 16, none, []keyChunk{{0, asm.DWord}, {8, asm.DWord}}, "0001020304050607 08090a0b0c0d0e0f"},
		{"LPM host key skips the constant prefix length", -8, 8, func(i int) bool { return i < 4 }, []keyChunk{{4, asm.Word}}, "04050607"},
		{"odd offset", -7, 7, none, []keyChunk{{0, asm.Byte}, {1, asm.Half}, {3, asm.Word}}, "00 0102 03040506"},
		{"hole in the middle", -8, 8, func(i int) bool { return i == 2 }, []keyChunk{{0, asm.Half}, {3, asm.Byte}, {4, asm.Word}}, "0001 03 04050607"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := treeChunks(tt.keyOff, tt.size, tt.skip)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("chunks %v, want %v", got, tt.want)
			}
			key := make([]byte, tt.size)
			for i := range key {
				key[i] = byte(i)
			}
			var hex []string
			for _, ch := range got {
				hex = append(hex, fmt.Sprintf("%0*x", 2*ch.size.Sizeof(), chunkBE(key, ch)))
			}
			if h := strings.Join(hex, " "); h != tt.wantHex {
				t.Fatalf("big-endian chunks %s, want %s", h, tt.wantHex)
			}
		})
	}
}

// hotTreeProg copies an n-byte key from the frame at hotKeyPkt to the
// stack at keyOff byte by byte, looks it up in "tbl" and returns the
// value's first u32, or XDP_PASS on a miss.
func hotTreeProg(n int, keyOff int16) asm.Instructions {
	g := newGoldenAsm()
	g.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, int32(hotKeyPkt+n)),
	)
	g.jump(asm.JGT.Reg(asm.R4, asm.R3, ""), "drop")
	for i := range n {
		g.add(asm.LoadMem(asm.R5, asm.R2, int16(hotKeyPkt+i), asm.Byte), asm.StoreMem(asm.R10, keyOff+int16(i), asm.R5, asm.Byte))
	}
	goldenLookup(g, "tbl", keyOff)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
	g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
	g.label("miss").add(asm.Mov.Imm(asm.R0, 2), asm.Return())
	goldenDrop(g)
	return g.done()
}

// hotKeyPkt is where hotTreeProg reads its key in the frame.
const hotKeyPkt = 14

// hotTreeCase builds hotTreeProg's collection with a table of 2k+8
// entries and a heatmap whose k hottest keys are two thirds table
// entries and one third keys the table does not hold (cached misses).
func hotTreeCase(k, n int, seed int64) (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap, [][]byte) {
	rnd := rand.New(rand.NewSource(seed))
	keyOff := -int16((n + 7) &^ 7)
	tbl := &ebpf.MapSpec{Name: "tbl", Type: ebpf.Hash, KeySize: uint32(n), ValueSize: 4, MaxEntries: 1024}
	st := mapstate.New()
	var stored, hot [][]byte
	seen := map[string]bool{}
	newKey := func() []byte {
		for {
			key := make([]byte, n)
			rnd.Read(key)
			if !seen[string(key)] {
				seen[string(key)] = true
				return key
			}
		}
	}
	for i := range 2*k + 8 {
		key := newKey()
		st.Put("tbl", key, goldenU32(uint32(100+i)))
		stored = append(stored, key)
	}
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for i := range k {
		key := stored[i]
		if i%3 == 2 {
			key = newKey()
		}
		hot = append(hot, key)
		heat.Maps["tbl"] = append(heat.Maps["tbl"], heatmap.Key{Key: key, Count: uint64(1000 - i)})
	}
	// Keys worth sending: every hot and stored key, the neighbours of
	// each hot key in its first and last byte (they fall between hot
	// keys of the sorted order), and random ones.
	var keys [][]byte
	keys = append(keys, hot...)
	keys = append(keys, stored...)
	for _, h := range hot {
		for _, pos := range []int{0, n - 1} {
			for _, d := range []int{-1, 1} {
				nb := slices.Clone(h)
				nb[pos] = byte(int(nb[pos]) + d)
				keys = append(keys, nb)
			}
		}
	}
	sorted := slices.Clone(hot)
	slices.SortFunc(sorted, bytes.Compare)
	for i := 0; i+1 < len(sorted); i++ {
		// Same first half as one hot key, second half of the next.
		mid := slices.Concat(sorted[i][:n/2], sorted[i+1][n/2:])
		keys = append(keys, mid)
	}
	for range 16 {
		keys = append(keys, newKey())
	}
	var packets [][]byte
	for _, key := range keys {
		f := make([]byte, 64)
		rnd.Read(f)
		copy(f[hotKeyPkt:], key)
		packets = append(packets, f)
	}
	packets = append(packets, make([]byte, hotKeyPkt+n-1)) // too short
	return goldenCollection(hotTreeProg(n, keyOff), tbl), st, heat, packets
}

// runHot runs hotcache alone on spec with the given maximum K.
func runHot(t *testing.T, spec *ebpf.CollectionSpec, st *mapstate.State, heat *heatmap.Heatmap, topK int) *Context {
	t.Helper()
	prog, err := program.Lift(spec.Programs[goldenProg])
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.TopK, opts.MaxInline, opts.Passes = topK, 1, []string{"hotcache"}
	c := &Context{Coll: spec, Prog: prog, State: st, Heat: heat, Guards: guard.NewTable(), Opts: opts}
	if err := Run(c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHotSearchTreeKernel(t *testing.T) {
	kerneltest.Require(t)
	defer func(old string) { forceLayout = old }(forceLayout)
	for _, layout := range []string{"tree", "chain", "probe"} {
		for _, k := range []int{1, 7, 8, 33, 64} {
			for _, n := range []int{4, 6, 8, 16} {
				if layout == "chain" && k > 8 {
					continue // the chain is the small-K layout
				}
				t.Run(fmt.Sprintf("%s/K%d/key%d", layout, k, n), func(t *testing.T) {
					forceLayout = layout
					spec, st, heat, packets := hotTreeCase(k, n, int64(100*k+n))
					c := runHot(t, spec, st, heat, k)
					want := fmt.Sprintf("%d hot keys cached in front of the lookup behind guard (%s", k, map[string]string{"tree": "binary search", "chain": "compare chain", "probe": "hashed probe"}[layout])
					if !slices.ContainsFunc(c.Remarks, func(r Remark) bool { return r.Applied && strings.HasPrefix(r.Message, want) }) {
						t.Fatalf("no remark %q in %v", want, c.Remarks)
					}
					hotCheckKernel(t, c, st, heat, packets)
				})
			}
		}
	}
}

// loadChecked lowers the rewritten program (goldenProg), requires it to
// pass the verifier and the differential test against the original on
// packets, and loads it with st for the caller's own runs.
func loadChecked(t *testing.T, c *Context, st *mapstate.State, packets [][]byte) *ebpf.Collection {
	t.Helper()
	insns, err := c.Prog.Lower()
	if err != nil {
		t.Fatal(err)
	}
	cand := verify.Candidate{goldenProg: insns}
	rep, err := verify.Differential(context.Background(), c.Coll, st, cand, packets, verify.DiffOptions{})
	if err != nil {
		t.Fatalf("differential: %v", err)
	}
	if !rep.Passed() {
		t.Fatalf("differential test failed:\n%s", rep)
	}
	cs, err := verify.WithCandidate(c.Coll, cand)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := st.Load(cs, ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return coll
}

// hotCheckKernel verifies the rewritten program, compares it with the
// original on packets, and then proves that hot keys are answered by the
// cache and every other key by the lookup: with the table emptied behind
// the guard's back, hot keys still give their snapshot results while
// every other key misses.
func hotCheckKernel(t *testing.T, c *Context, st *mapstate.State, heat *heatmap.Heatmap, packets [][]byte) {
	t.Helper()
	coll := loadChecked(t, c, st, packets)
	defer coll.Close()
	tbl := coll.Maps["tbl"]
	want := map[string]uint32{}
	hot := map[string]bool{}
	for _, h := range heat.Maps["tbl"] {
		hot[string(h.Key)] = true
	}
	for _, e := range st.Maps["tbl"].Entries {
		want[string(e.Key)] = binary.LittleEndian.Uint32(e.Value)
		if err := tbl.Delete(e.Key); err != nil {
			t.Fatal(err)
		}
	}
	prog := coll.Programs[goldenProg]
	n := int(c.Coll.Maps["tbl"].KeySize)
	for _, pkt := range packets {
		if len(pkt) < hotKeyPkt+n {
			continue
		}
		key := string(pkt[hotKeyPkt : hotKeyPkt+n])
		exp := uint32(2) // a miss: the table is empty now
		if v, ok := want[key]; ok && hot[key] {
			exp = v
		}
		got, err := prog.Run(&ebpf.RunOptions{Data: pkt})
		if err != nil {
			t.Fatal(err)
		}
		if got != exp {
			t.Fatalf("key %x (hot %v): got %d, want %d", key, hot[key], got, exp)
		}
	}
}

func TestHotCostModel(t *testing.T) {
	spec, st, _, _ := hotTreeCase(64, 8, 1)
	keys := func(counts func(i int) uint64, extra uint64) *heatmap.Heatmap {
		h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
		for i, e := range st.Maps["tbl"].Entries {
			h.Maps["tbl"] = append(h.Maps["tbl"], heatmap.Key{Key: e.Key, Count: counts(i)})
		}
		// The long tail the heatmap saw beyond the table's keys.
		for i := range 2000 {
			k := binary.BigEndian.AppendUint64(nil, uint64(0xff00000000000000)+uint64(i))
			h.Maps["tbl"] = append(h.Maps["tbl"], heatmap.Key{Key: k, Count: extra})
		}
		return h
	}
	tests := []struct {
		name    string
		heat    *heatmap.Heatmap
		topK    int
		applied bool
		wantK   string
		layout  string
	}{
		{"one hot key", keys(func(i int) uint64 { return map[bool]uint64{true: 100000, false: 1}[i == 0] }, 1), 64, true, "1 hot keys", "compare chain"},
		{"zipf-like: many keys, hashed", keys(func(i int) uint64 { return uint64(100000 / (i + 1)) }, 20), 64, true, "64 hot keys", "hashed probe"},
		{"flat: nothing pays", keys(func(int) uint64 { return 1 }, 1), 64, false, "", ""},
		{"TopK is the maximum", keys(func(i int) uint64 { return uint64(100000 / (i + 1)) }, 20), 8, true, "8 hot keys", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := runHot(t, spec, st, tt.heat, tt.topK)
			var msg string
			applied := false
			for _, r := range c.Remarks {
				if r.Map == "tbl" {
					msg, applied = r.Message, r.Applied
				}
			}
			if applied != tt.applied || !strings.HasPrefix(msg, tt.wantK) || !strings.Contains(msg, tt.layout) {
				t.Fatalf("applied %v, remark %q; want applied %v, prefix %q, layout %q", applied, msg, tt.applied, tt.wantK, tt.layout)
			}
		})
	}
}

// RW program layout: the frame carries the key at goldenKeyOff, an
// operation byte after it and a 4-byte value after that.
const (
	rwOpOff  = goldenKeyOff + 4
	rwValOff = rwOpOff + 1
	// Operations: rwUpdate writes the value with bpf_map_update_elem,
	// rwStore through the pointer of a lookup; anything else looks the
	// key up and returns the value's first u32 (XDP_PASS on a miss).
	rwUpdate = 1
	rwStore  = 2
)

// goldenRW: a hash the data plane writes, with one read-only lookup site
// (cacheable) and two write sites (a helper update and an in-place store
// through the pointer of another lookup).
func goldenRW() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	rwPrologue(g)
	g.add(
		asm.LoadMem(asm.R5, asm.R2, rwValOff, asm.Word),
		asm.StoreMem(asm.R10, -8, asm.R5, asm.Word),
		asm.LoadMem(asm.R7, asm.R2, rwOpOff, asm.Byte),
	)
	g.jump(asm.JEq.Imm(asm.R7, rwUpdate, ""), "update")
	g.jump(asm.JEq.Imm(asm.R7, rwStore, ""), "store")
	goldenLookup(g, "rw", -4)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
	g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
	g.label("update").add(
		asm.LoadMapPtr(asm.R1, 0).WithReference("rw"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, -8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
	)
	g.jump(asm.Ja.Label(""), "miss")
	g.label("store")
	goldenLookup(g, "rw", -4)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
	g.add(
		asm.LoadMem(asm.R1, asm.R10, -8, asm.Word),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.Word),
	)
	g.label("miss").add(asm.Mov.Imm(asm.R0, 2), asm.Return())
	goldenDrop(g)
	rw := &ebpf.MapSpec{Name: "rw", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 64}
	st := mapstate.New()
	for i, k := range goldenHashKeys {
		st.Put("rw", goldenU32(k), goldenU32(uint32(10+i)))
	}
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{"rw": {
		{Key: goldenU32(goldenHashKeys[0]), Count: 100},
		{Key: goldenU32(goldenHashKeys[1]), Count: 50},
		{Key: goldenU32(goldenIP(10, 0, 0, 1)), Count: 20}, // a cached miss
	}}}
	return goldenCollection(g.done(), rw), st, heat
}

// rwPrologue keeps the context in R6 and the frame's start in R2, drops
// frames too short for the value at rwValOff, and stores the key at fp-4.
func rwPrologue(g *goldenAsm) {
	g.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, rwValOff+4),
	)
	g.jump(asm.JGT.Reg(asm.R4, asm.R3, ""), "drop")
	g.add(
		asm.LoadMem(asm.R5, asm.R2, goldenKeyOff, asm.Word),
		asm.StoreMem(asm.R10, -4, asm.R5, asm.Word),
	)
}

// rwFrame is a frame for goldenRW.
func rwFrame(key uint32, op byte, val uint32) []byte {
	f := make([]byte, 64)
	binary.LittleEndian.PutUint32(f[goldenKeyOff:], key)
	f[rwOpOff] = op
	binary.LittleEndian.PutUint32(f[rwValOff:], val)
	return f
}

func TestHotRWTripwire(t *testing.T) {
	spec, st, heat := goldenRW()
	c := runHot(t, spec, st, heat, 8)
	var cached, wires int
	for _, r := range c.Remarks {
		switch {
		case r.Applied && strings.Contains(r.Message, "data-plane writes trip the guard"):
			cached++
		case r.Applied && strings.HasPrefix(r.Message, "guard tripwire"):
			wires++
		}
	}
	if cached != 1 || wires != 2 {
		t.Fatalf("%d cached sites and %d tripwires, want 1 and 2:\n%v", cached, wires, c.Remarks)
	}
	if !c.Guards.DataPlane("rw") {
		t.Fatal("the guard of rw is not marked as tripped by the data plane")
	}

	kerneltest.Require(t)
	k0, k1, k2 := goldenHashKeys[0], goldenHashKeys[1], goldenHashKeys[2]
	var packets [][]byte
	for _, k := range []uint32{k0, k1, k2, goldenIP(10, 0, 0, 1), 7} {
		packets = append(packets, rwFrame(k, 0, 0))
	}
	// Writes, each followed by lookups of every key: after the first
	// write the candidate must run the original lookups.
	for i, op := range []byte{rwStore, rwUpdate, rwUpdate, rwStore} {
		packets = append(packets, rwFrame([]uint32{k1, k0, goldenIP(10, 0, 0, 1), k2}[i], op, uint32(500+i)))
		for _, k := range []uint32{k0, k1, k2, goldenIP(10, 0, 0, 1)} {
			packets = append(packets, rwFrame(k, 0, 0))
		}
	}
	coll := loadChecked(t, c, st, packets)
	defer coll.Close()
	prog, rw, guards := coll.Programs[goldenProg], coll.Maps["rw"], coll.Maps[guard.MapName]
	run := func(key uint32, op byte, val uint32) uint32 {
		t.Helper()
		ret, err := prog.Run(&ebpf.RunOptions{Data: rwFrame(key, op, val)})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	slot, _ := c.Guards.Slot("rw")
	guardValue := func() uint64 {
		t.Helper()
		buf, err := guards.LookupBytes(uint32(0))
		if err != nil {
			t.Fatal(err)
		}
		return binary.LittleEndian.Uint64(buf[8*slot:])
	}
	// The cache answers hot keys: a write that bypasses the data plane
	// (and the guard) is not seen. This is the window fingerprints
	// would close for a map without tripwires.
	if err := rw.Put(goldenU32(k0), goldenU32(99)); err != nil {
		t.Fatal(err)
	}
	if got := run(k0, 0, 0); got != 10 {
		t.Fatalf("hot key %x: got %d, want the cached 10", k0, got)
	}
	steps := []struct {
		name     string
		op       byte
		key, val uint32
	}{
		{"helper update", rwUpdate, k0, 77},
		{"store through a looked-up pointer", rwStore, k1, 55},
	}
	for _, s := range steps {
		if err := guards.Put(uint32(0), make([]byte, 8*guard.MaxGuards)); err != nil {
			t.Fatal(err) // the version the candidate expects
		}
		if got := run(s.key, 0, 0); got == s.val {
			t.Fatalf("%s: key %x already holds %d", s.name, s.key, s.val)
		}
		run(s.key, s.op, s.val)
		if g := guardValue(); g != guard.Tripped {
			t.Fatalf("%s: guard holds %#x after the write, want all ones", s.name, g)
		}
		if got := run(s.key, 0, 0); got != s.val {
			t.Fatalf("%s: the lookup after the write gave %d, want %d (the original path)", s.name, got, s.val)
		}
	}
	// Re-arming gives the slot a fresh version: this candidate, built
	// for version 0, keeps taking the original path.
	armed, err := c.Guards.Rearm(guards)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(armed, []string{"rw"}) || guardValue() != 1 || c.Guards.Version("rw") != 1 {
		t.Fatalf("re-armed %v, guard %d, table version %d; want [rw], 1, 1", armed, guardValue(), c.Guards.Version("rw"))
	}
	if err := rw.Put(goldenU32(k1), goldenU32(88)); err != nil {
		t.Fatal(err)
	}
	if got := run(k1, 0, 0); got != 88 {
		t.Fatalf("after the re-arm the old candidate gave %d for %x, want 88 from the map", got, k1)
	}
}

// TestHotRWIneligible: a map the data plane writes is left alone when a
// tripwire cannot be placed or would not cover every writer.
func TestHotRWIneligible(t *testing.T) {
	tests := []struct {
		name  string
		patch func(*ebpf.CollectionSpec)
		want  string
	}{
		{"another program writes it", func(cs *ebpf.CollectionSpec) {
			other := cs.Programs[goldenProg].Copy()
			other.Name = "other"
			cs.Programs["other"] = other
		}, "program other also uses it"},
		{"a write runs after the lookup", func(cs *ebpf.CollectionSpec) {
			cs.Programs[goldenProg].Instructions = goldenRWWriteAfter()
		}, "may run after this lookup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, st, heat := goldenRW()
			tt.patch(spec)
			c := runHot(t, spec, st, heat, 8)
			for _, r := range c.Remarks {
				if r.Applied {
					t.Fatalf("applied %v", r)
				}
			}
			if !slices.ContainsFunc(c.Remarks, func(r Remark) bool { return strings.Contains(r.Message, tt.want) }) {
				t.Fatalf("no remark %q in %v", tt.want, c.Remarks)
			}
		})
	}
}

// goldenHotTreeKeys are the hot keys of goldenHotTree: 24 addresses,
// every third one absent from the table (a cached miss).
var goldenHotTreeKeys = func() []uint32 {
	var out []uint32
	for i := range 24 {
		out = append(out, goldenIP(198, 18, byte(i*7), byte(1+i*11)))
	}
	return out
}()

// goldenHotTree: goldenHash's lookup in a 40-entry table with 24 equally
// hot keys: the cost model picks the binary search.
func goldenHotTree() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, _, _ := goldenHash()
	spec.Maps["acl"].MaxEntries = 64
	st := mapstate.New()
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for i, k := range goldenHotTreeKeys {
		if i%3 != 2 {
			st.Put("acl", goldenU32(k), goldenU32(uint32(1+i%3)))
		}
		heat.Maps["acl"] = append(heat.Maps["acl"], heatmap.Key{Key: goldenU32(k), Count: 100})
	}
	for i := range 24 {
		st.Put("acl", goldenU32(goldenIP(203, 0, 113, byte(i))), goldenU32(3))
	}
	return spec, st, heat
}

// goldenRWWriteAfter looks the key up, then updates it, then reads
// through the pointer of the lookup: the original reads the map as the
// update left it, which a cached value could not show.
func goldenRWWriteAfter() asm.Instructions {
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(asm.StoreMem(asm.R10, -4, asm.R5, asm.Word), asm.StoreMem(asm.R10, -8, asm.R5, asm.Word))
	goldenLookup(g, "rw", -4)
	g.add(
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMapPtr(asm.R1, 0).WithReference("rw"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, -8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
	)
	g.jump(asm.JEq.Imm(asm.R7, 0, ""), "drop")
	g.add(asm.LoadMem(asm.R0, asm.R7, 0, asm.Word), asm.Return())
	goldenDrop(g)
	return g.done()
}
