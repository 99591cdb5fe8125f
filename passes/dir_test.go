package passes

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/verify"
)

// randomIPv4Nodes makes a random IPv4 trie of n entries: lengths spread
// over /0../32, about half of them nested inside (or around) an earlier
// entry, values from a small pool so that leaves are shared.
func randomIPv4Nodes(rnd *rand.Rand, n int) []lpmNode {
	var entries []mapstate.Entry
	var addrs []uint32
	for range n {
		plen := uint32(rnd.Intn(33))
		a := rnd.Uint32()
		if len(addrs) > 0 && rnd.Intn(2) == 0 {
			// Share the first bits of an earlier entry: nested or
			// overlapping.
			base := addrs[rnd.Intn(len(addrs))]
			keep := uint32(rnd.Intn(33))
			mask := ^uint32(0) << (32 - keep)
			if keep == 0 {
				mask = 0
			}
			a = base&mask | a&^mask
		}
		addrs = append(addrs, a)
		key := binary.LittleEndian.AppendUint32(nil, plen)
		key = binary.BigEndian.AppendUint32(key, a)
		entries = append(entries, mapstate.Entry{Key: key, Value: binary.LittleEndian.AppendUint32(nil, uint32(rnd.Intn(n/4+1)))})
	}
	nodes, bad := lpmNodes(entries, 32)
	if bad != "" {
		panic(bad)
	}
	return nodes
}

// TestDirBuilder checks the DIR tables against the reference LPM
// (lpmResult, the kernel trie's semantics) on random tables: every
// prefix's first and last address and addresses around them, and random
// addresses, must get the same value or the same miss.
func TestDirBuilder(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		seed int64
	}{
		{"empty", 0, 1},
		{"one", 1, 2},
		{"small", 20, 3},
		{"medium", 500, 4},
		{"large", 5000, 5},
		{"default route only", -1, 6},
		{"host routes only", -32, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rnd := rand.New(rand.NewSource(tc.seed))
			var nodes []lpmNode
			switch tc.n {
			case -1:
				nodes, _ = lpmNodes([]mapstate.Entry{{Key: make([]byte, 8), Value: []byte{9, 9, 9, 9}}}, 32)
			case -32:
				var es []mapstate.Entry
				for range 300 {
					k := binary.LittleEndian.AppendUint32(nil, 32)
					es = append(es, mapstate.Entry{Key: binary.BigEndian.AppendUint32(k, rnd.Uint32()&0x0303ffff), Value: []byte{byte(rnd.Intn(5)), 0, 0, 0}})
				}
				nodes, _ = lpmNodes(es, 32)
			default:
				nodes = randomIPv4Nodes(rnd, tc.n)
			}
			dt := buildDIR(nodes)
			var probes []uint32
			for _, n := range nodes {
				a := binary.BigEndian.Uint32(n.key[4:8])
				last := a | ^(^uint32(0) << (32 - n.plen))
				if n.plen == 0 {
					last = ^uint32(0)
				}
				probes = append(probes, a, last, a-1, last+1, a|rnd.Uint32()&^(^uint32(0)<<(32-n.plen)))
			}
			for range 20000 {
				probes = append(probes, rnd.Uint32())
			}
			levels := map[int]int{}
			for _, a := range probes {
				key := binary.LittleEndian.AppendUint32(nil, 32)
				key = binary.BigEndian.AppendUint32(key, a)
				want := lpmResult(nodes, key, 32)
				leaf, level := dt.lookup(a)
				levels[level]++
				switch {
				case want == nil && leaf != 0:
					t.Fatalf("%08x: DIR leaf %d (%x), reference miss", a, leaf, dt.leaves[leaf-1])
				case want != nil && leaf == 0:
					t.Fatalf("%08x: DIR miss, reference /%d %x", a, want.plen, want.value)
				case want != nil && !bytes.Equal(dt.leaves[leaf-1], want.value):
					t.Fatalf("%08x: DIR %x, reference /%d %x", a, dt.leaves[leaf-1], want.plen, want.value)
				}
			}
			// Deterministic: the same nodes in another order build the
			// same tables.
			shuffled := append([]lpmNode(nil), nodes...)
			rnd.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			again := buildDIR(shuffled)
			if !bytes.Equal(dt.encode(dt.l1), again.encode(again.l1)) || !bytes.Equal(dt.encode(dt.l2), again.encode(again.l2)) ||
				!bytes.Equal(dt.encode(dt.l3), again.encode(again.l3)) || !bytes.Equal(dt.leafBytes(4), again.leafBytes(4)) {
				t.Fatal("tables depend on the order of the nodes")
			}
			_, b2, b3, nl, total := dirSize(nodes, 4)
			if b2 != dt.blocks2() || b3 != dt.blocks3() || nl != len(dt.leaves) || total != dt.bytes(4) {
				t.Fatalf("dirSize %d/%d/%d/%d, built %d/%d/%d/%d", b2, b3, nl, total, dt.blocks2(), dt.blocks3(), len(dt.leaves), dt.bytes(4))
			}
			t.Logf("%d nodes: %d+%d blocks, %d leaves, u%d, %d bytes; probes by level %v", len(nodes), b2, b3, nl, 8*dt.width, total, levels)
		})
	}
}

// TestDirCostModel: the DIR plan beats the hash plans and the trie for
// the benchmark's kind of table and stays within its memory bound.
func TestDirCostModel(t *testing.T) {
	for level, want := range map[int]float64{1: 16.5, 2: 29.5, 3: 42.5} {
		if got := dirPathCost(level, true); got != want {
			t.Errorf("dirPathCost(%d) = %v, want %v", level, got, want)
		}
	}
	if dirPathCost(2, false) <= dirPathCost(2, true) {
		t.Error("a prefix length test must cost something")
	}
	if hp := costGuard + hashCost(3); dirPathCost(2, true) >= hp+4*costInsn {
		t.Errorf("two DIR levels (%v) should beat the /24 hash path (%v)", dirPathCost(2, true), hp)
	}
}

// dirFrames probes a sample of the entries of "tbl" (each at its own
// prefix length, inside it at /32, just past it at /32) and random
// addresses with prefix lengths around 32.
func dirFrames(state *mapstate.State, most int, seed int64) [][]byte {
	rnd := rand.New(rand.NewSource(seed))
	es := state.Maps["tbl"].Entries
	var out [][]byte
	for i := 0; i < len(es); i += max(1, len(es)/most) {
		e := es[i]
		p := binary.LittleEndian.Uint32(e.Key)
		a := binary.BigEndian.Uint32(e.Key[4:])
		out = append(out, keyFrame(byte(p), e.Key[4:]))
		for _, b := range []uint32{a | rnd.Uint32()&^(^uint32(0)<<(32-p)), a | ^(^uint32(0) << (32 - p)) + 1} {
			if p == 0 {
				b = rnd.Uint32()
			}
			out = append(out, keyFrame(32, binary.BigEndian.AppendUint32(nil, b)))
		}
	}
	plens := []byte{32, 32, 32, 31, 24, 33, 64, 255, 0}
	for range 300 {
		out = append(out, keyFrame(plens[rnd.Intn(len(plens))], binary.BigEndian.AppendUint32(nil, rnd.Uint32())))
	}
	return out
}

// TestDirKernel runs hand-written lookups of IPv4 tries with the DIR plan
// through the verifier and the differential test: constant prefix length
// 32 and the prefix length from the packet (any value, the trie answers
// what is not 32), tables whose lookups end at each level, with and
// without a default route (misses), and u32 entries.
func TestDirKernel(t *testing.T) {
	kerneltest.Require(t)
	defer func(n int) { dirMinEntries = n }(dirMinEntries)
	dirMinEntries = 1
	routing := map[int]int{8: 4, 12: 10, 16: 40, 20: 50, 22: 50, 28: 20, 32: 20}
	withDefault := map[int]int{0: 1}
	for l, n := range routing {
		withDefault[l] = n
	}
	for _, tc := range []struct {
		name      string
		state     func() *mapstate.State
		max       uint32
		constPlen int
		want      string
		levels    []int
	}{
		{"routing, default, const plen", func() *mapstate.State { return mixedState(4, 1000, 24, withDefault, 1) }, 4096, 32, "u16 entries", []int{1, 2, 3}},
		{"routing, default, packet plen", func() *mapstate.State { return mixedState(4, 1000, 24, withDefault, 2) }, 4096, -1, "u16 entries", []int{1, 2, 3}},
		{"routing, no default, packet plen", func() *mapstate.State { return mixedState(4, 1000, 24, routing, 3) }, 4096, -1, "u16 entries", []int{1, 2, 3}},
		{"routing, no default, const plen", func() *mapstate.State { return mixedState(4, 300, 24, routing, 4) }, 4096, 32, "u16 entries", []int{1, 2, 3}},
		{"up to /16: one level", func() *mapstate.State { return lpmState(4, 1500, []int{12, 16}, 5) }, 4096, -1, "(0 level-2 and 0 level-3 blocks", []int{1}},
		{"up to /24: two levels", func() *mapstate.State { return mixedState(4, 800, 24, map[int]int{0: 1, 16: 30, 20: 30}, 6) }, 4096, 32, "and 0 level-3 blocks", []int{1, 2}},
		{"u32 entries", func() *mapstate.State { return mixedState(4, 1<<16, 16, map[int]int{24: 40, 32: 10}, 7) }, 1<<16 + 100, 32, "u32 entries", []int{1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := tc.state()
			ms := lpmSpec(4)
			ms.MaxEntries = tc.max
			spec := dssLookupSpec(ms, lookupOpts{constPlen: tc.constPlen})
			c, insns := runDss(t, spec, dssProg, state, "dss")
			r := dssRemark(t, c, "tbl")
			if !r.Applied || !strings.Contains(r.Message, "DIR-16-8-8") || !strings.Contains(r.Message, tc.want) {
				t.Fatalf("remark %s, want the DIR plan with %q", r, tc.want)
			}
			t.Log(r)
			frames := dirFrames(state, 3000, 9)
			// The probes must reach every level the table has, hit and
			// miss (or hit the default route).
			nodes, _ := lpmNodes(state.Maps["tbl"].Entries, 32)
			dt := buildDIR(nodes)
			seen := map[int]int{}
			for _, f := range frames {
				if tc.constPlen < 0 && f[dssPlenAt] != 32 {
					continue
				}
				leaf, level := dt.lookup(binary.BigEndian.Uint32(f[dssKeyAt:]))
				seen[level]++
				seen[-int(min(leaf, 1))]++ // -1 hits, 0 misses
			}
			for _, l := range tc.levels {
				if seen[l] == 0 {
					t.Fatalf("no probe ends at level %d: %v", l, seen)
				}
			}
			if seen[-1] == 0 || (len(dt.l1) > 0 && dt.l1[0] == 0 && seen[0] == 0) {
				t.Fatalf("probes must hit, and miss where the table has no default route: %v", seen)
			}
			t.Logf("probes at /32 by level %v (key -1: hits, 0: misses)", seen)
			rep, err := verify.Differential(context.Background(), c.Coll, state, verify.Candidate{dssProg: insns}, frames, verify.DiffOptions{MapCheckInterval: -1})
			if err != nil {
				t.Fatalf("%v\n%s", err, c.Prog)
			}
			if !rep.Passed() {
				t.Fatalf("differential test failed: %s\n%s", rep, c.Prog)
			}
			t.Logf("differential: %d packets, %d runs, no mismatch", rep.Packets, rep.Runs)
		})
	}
}

// TestDirSmallTablesStayHashes: below dirMinEntries the DIR plan is not
// costed, and a constant prefix length other than 32 never gets it.
func TestDirSmallTablesStayHashes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		n         int
		constPlen int
		dir       bool
	}{
		{"small", 500, 32, false},
		{"large", 1500, 32, true},
		{"large, packet plen", 1500, -1, true},
		{"large, const /24", 1500, 24, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := mixedState(4, tc.n, 24, map[int]int{0: 1, 16: 20, 32: 20}, 8)
			spec := dssLookupSpec(lpmSpec(4), lookupOpts{constPlen: tc.constPlen})
			c, _ := runDss(t, spec, dssProg, state, "dss")
			r := dssRemark(t, c, "tbl")
			if got := strings.Contains(r.Message, "DIR-16-8-8"); got != tc.dir {
				t.Fatalf("remark %s: DIR %v, want %v", r, got, tc.dir)
			}
			var dirMaps int
			for name, m := range c.Coll.Maps {
				if strings.HasPrefix(name, "d1") && m.Type == ebpf.Array && m.MaxEntries == 1 && m.Flags&bpfFRdonlyProg != 0 {
					dirMaps++
				}
			}
			if (dirMaps == 1) != tc.dir {
				t.Fatalf("%d level-1 tables, want DIR %v", dirMaps, tc.dir)
			}
		})
	}
}

// goldenDssDIR: the golden LPM program (constant prefix length 32) over
// 1,127 routes, enough for the DIR plan: a /8 and a hundred /16s answered
// by level 1, 1,024 /24s by level 2, a /28 and a /32 inside one of them
// by level 3; no default route, so that other addresses miss.
func goldenDssDIR() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, _, _ := goldenLPM()
	spec.Maps["routes"].MaxEntries = 2048
	st := mapstate.New()
	put := func(plen uint32, v uint32, a ...byte) { st.Put("routes", append(goldenU32(plen), a...), goldenU32(v)) }
	put(8, 3, 10, 0, 0, 0)
	for x := range 100 {
		put(16, uint32(1+x%3), 11, byte(x), 0, 0)
	}
	for a := range 4 {
		for b := range 256 {
			put(24, uint32(1+(a+b)%3), 12, byte(a), byte(b), 0)
		}
	}
	put(28, 7, 12, 0, 1, 16)
	put(32, 8, 12, 0, 2, 9)
	return spec, st, nil
}

var goldenDssDIRKeys = []uint32{goldenIP(10, 1, 2, 3), goldenIP(11, 5, 0, 1), goldenIP(12, 1, 7, 1), goldenIP(12, 0, 1, 20), goldenIP(12, 0, 1, 40), goldenIP(12, 0, 2, 9), goldenIP(13, 0, 0, 1)}
