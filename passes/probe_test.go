package passes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// probeKeys returns n distinct random keys of size bytes.
func probeKeys(n, size int, seed int64) [][]byte {
	rnd := rand.New(rand.NewSource(seed))
	seen := map[string]bool{}
	var out [][]byte
	for len(out) < n {
		k := make([]byte, size)
		rnd.Read(k)
		if !seen[string(k)] {
			seen[string(k)] = true
			out = append(out, k)
		}
	}
	return out
}

// probeDecode reads back the chunk values stored in slot s of data.
func probeDecode(t *probeTable, l probeLayout, data []byte, s int) []uint64 {
	var vals []uint64
	for _, ch := range t.chunks {
		vals = append(vals, probeChunkValue(data[t.slotsOff()+s*l.slotSize+l.keyBase:], ch))
	}
	return vals
}

func TestProbePlacement(t *testing.T) {
	fitsAll := func(int, int) bool { return true }
	tests := []struct {
		name   string
		n      int
		size   int
		keyOff int16
		skip   func(int) bool
		ways   int // forced; 0: the search's choice
		want   bool
	}{
		{"one key", 1, 4, -8, nil, 0, true},
		{"two keys", 2, 4, -8, nil, 0, true},
		{"20 VIP-like keys (u64)", 20, 8, -8, nil, 0, true},
		{"64 MAC+VLAN keys", 64, 8, -8, nil, 0, true},
		{"64 keys, misaligned (two words)", 64, 8, -12, nil, 0, true},
		{"48 6-byte keys (word+half, packed)", 48, 6, -8, nil, 0, true},
		{"64 16-byte keys (multiplied)", 64, 16, -16, nil, 0, true},
		{"13-byte keys, odd offset", 40, 13, -13, nil, 0, true},
		{"constant bytes skipped", 30, 8, -8, func(i int) bool { return i >= 6 }, 0, true},
		{"two slots a bucket", 64, 8, -8, nil, 2, true},
		{"two slots, 5 keys", 5, 4, -8, nil, 2, true},
		{"200 keys (displaced)", 200, 8, -8, nil, 0, true},
		{"1024 MAC+VLAN keys (displaced)", 1024, 8, -8, nil, 0, true},
		{"1024 16-byte keys (displaced, multiplied)", 1024, 16, -16, nil, 0, true},
		{"500 6-byte keys (displaced, packed)", 500, 6, -8, nil, 0, true},
		{"4000 keys (displaced)", 4000, 4, -4, nil, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func(old int) { probeForceWays = old }(probeForceWays)
			probeForceWays = tt.ways
			skip := tt.skip
			if skip == nil {
				skip = func(int) bool { return false }
			}
			keys := probeKeys(tt.n, tt.size, int64(tt.n*100+tt.size))
			for _, k := range keys {
				for i := range k {
					if skip(i) {
						k[i] = 0xaa // constant at the site: equal in every key
					}
				}
			}
			chs := probeChunks(tt.keyOff, tt.size, skip)
			start := time.Now()
			pt := placeProbe(keys, chs, fitsAll)
			took := time.Since(start)
			if (pt != nil) != tt.want {
				t.Fatalf("placed %v, want %v", pt != nil, tt.want)
			}
			if pt == nil {
				return
			}
			t.Logf("%d keys: 2^%d buckets x %d, %d groups, %d hash evaluations, %v", tt.n, pt.bits, pt.ways, len(pt.disp), pt.tries, took)
			if (pt.disp != nil) != (tt.n > probePlainMaxKeys) {
				t.Fatalf("displaced %v for %d keys", pt.disp != nil, tt.n)
			}
			if took > 200*time.Millisecond {
				t.Fatalf("placement took %v", took)
			}
			if tt.ways != 0 && pt.ways != tt.ways {
				t.Fatalf("%d ways, want %d", pt.ways, tt.ways)
			}
			// Bounded: every shape at most probeTries multipliers.
			if max := (probeExtraBits + 1 + 3) * probeTries * tt.n; pt.tries > max {
				t.Fatalf("%d hash evaluations, more than the bound %d", pt.tries, max)
			}
			// Collision-free: one key per slot, in its own bucket.
			used := map[int]bool{}
			for i, k := range keys {
				s := pt.slot[i]
				if used[s] {
					t.Fatalf("slot %d holds two keys", s)
				}
				used[s] = true
				if b := pt.bucketOf(k); b != s/pt.ways {
					t.Fatalf("key %x in bucket %d's slot %d but hashes to bucket %d", k, s/pt.ways, s, b)
				}
			}
			// Deterministic: the same keys give the same table.
			again := placeProbe(keys, chs, fitsAll)
			if again.mult != pt.mult || again.bits != pt.bits || again.ways != pt.ways || !slices.Equal(again.slot, pt.slot) || !slices.Equal(again.disp, pt.disp) {
				t.Fatal("a second search placed the keys differently")
			}
			// Empty slots hold sentinels that hash to another bucket.
			results := make([][]byte, len(keys))
			for i := range results {
				results[i] = []byte{byte(i), 1, 2, 3}
			}
			l := newProbeLayout(tt.keyOff, chs, tt.size, 4, false)
			data := pt.encode(l, keys, results)
			base := pt.slotsOff()
			for g, d := range pt.disp {
				if got := binary.LittleEndian.Uint32(data[4*g:]); got != d {
					t.Fatalf("group %d: displacement %d in the table, want %d", g, got, d)
				}
			}
			for s := range (len(data) - base) / l.slotSize {
				vals := probeDecode(pt, l, data, s)
				if b := pt.bucketOfVals(vals); !used[s] && b == s/pt.ways {
					t.Fatalf("empty slot %d holds a key of its own bucket", s)
				}
			}
			for i := range keys {
				at := base + pt.slot[i]*l.slotSize + l.valOff
				if !bytes.Equal(data[at:at+4], results[i]) {
					t.Fatalf("key %d: value %x, want %x", i, data[at:at+4], results[i])
				}
			}
		})
	}
}

func TestProbePlacementLimits(t *testing.T) {
	chs := []keyChunk{{0, asm.Word}}
	t.Run("keys equal in every compared chunk", func(t *testing.T) {
		keys := [][]byte{{1, 2, 3, 4, 5}, {1, 2, 3, 4, 6}} // byte 4 not compared
		if pt := placeProbe(keys, chs, func(int, int) bool { return true }); pt != nil {
			t.Fatal("placed keys that no slot can tell apart")
		}
	})
	t.Run("nothing fits", func(t *testing.T) {
		if pt := placeProbe(probeKeys(8, 4, 1), chs, func(int, int) bool { return false }); pt != nil {
			t.Fatal("placed keys in a table that does not fit")
		}
	})
	t.Run("too large for probeMaxBytes", func(t *testing.T) {
		// 64 keys with 8 KiB values: even 64 slots exceed the bound.
		keys := probeKeys(64, 4, 2)
		results := make([][]byte, len(keys))
		for i := range results {
			results[i] = make([]byte, 8<<10)
		}
		if pp := planProbe(keys, results, chs, -8, 4, 8<<10); pp != nil {
			t.Fatalf("planned a table of %d bytes", len(pp.data))
		}
	})
	t.Run("64 keys well under a millisecond", func(t *testing.T) {
		keys := probeKeys(64, 8, 3)
		start := time.Now()
		const runs = 20
		for range runs {
			if placeProbe(keys, []keyChunk{{0, asm.DWord}}, func(int, int) bool { return true }) == nil {
				t.Fatal("not placed")
			}
		}
		// Generous against a loaded machine; typical is a few µs.
		if per := time.Since(start) / runs; per > 5*time.Millisecond {
			t.Fatalf("%v per placement", per)
		}
	})
}

// probeInlineCase builds hotTreeProg's collection with a read-only table
// of n random keys of size bytes, its key at fp+keyOff (0: the 8-aligned
// slot below the key), and returns the keys.
func probeInlineCase(n, size int, keyOff int16, seed int64) (*ebpf.CollectionSpec, *mapstate.State, [][]byte) {
	if keyOff == 0 {
		keyOff = -int16((size + 7) &^ 7)
	}
	tbl := &ebpf.MapSpec{Name: "tbl", Type: ebpf.Hash, KeySize: uint32(size), ValueSize: 4, MaxEntries: 1024}
	st := mapstate.New()
	keys := probeKeys(n, size, seed)
	for i, k := range keys {
		st.Put("tbl", k, goldenU32(uint32(100+i)))
	}
	return goldenCollection(hotTreeProg(size, keyOff), tbl), st, keys
}

// probePackets returns frames for the keys of a probe table: every key,
// per bucket class (occupied but a different key, empty) up to eight
// keys, random keys, and a frame too short for the key.
func probePackets(t *testing.T, pt *probeTable, keys [][]byte, size int, seed int64) [][]byte {
	t.Helper()
	rnd := rand.New(rand.NewSource(seed))
	occupied := map[int]bool{}
	for _, k := range keys {
		occupied[pt.bucketOf(k)] = true
	}
	held := map[string]bool{}
	for _, k := range keys {
		held[string(k)] = true
	}
	send := slices.Clone(keys)
	var collide, empty int
	for tries := 0; tries < 100000 && (collide < 8 || empty < 8); tries++ {
		k := make([]byte, size)
		rnd.Read(k)
		if held[string(k)] {
			continue
		}
		if occupied[pt.bucketOf(k)] {
			if collide < 8 {
				send, collide = append(send, k), collide+1
			}
		} else if empty < 8 {
			send, empty = append(send, k), empty+1
		}
	}
	if collide == 0 {
		t.Fatal("no key found that hashes to an occupied bucket")
	}
	if empty == 0 && len(occupied) < 1<<pt.bits {
		t.Fatal("no key found that hashes to an empty bucket")
	}
	var packets [][]byte
	for _, k := range send {
		f := make([]byte, 64)
		rnd.Read(f)
		copy(f[hotKeyPkt:], k)
		packets = append(packets, f)
	}
	return append(packets, make([]byte, hotKeyPkt+size-1))
}

// TestProbeInlineKernel: mapinline compiles whole tables as probes (one
// and two slots a bucket, packed and multiplied keys); the verifier
// accepts them, they answer like the map on hits, colliding misses, empty
// buckets and random keys, and a tripped guard sends every key to the map.
func TestProbeInlineKernel(t *testing.T) {
	kerneltest.Require(t)
	defer func(l string, w int) { forceLayout, probeForceWays = l, w }(forceLayout, probeForceWays)
	forceLayout = "probe"
	type variant struct {
		ways, n, size int
		keyOff        int16 // 0: 8-aligned
		pipeline      bool  // every pass, not mapinline alone
	}
	var variants []variant
	for _, ways := range []int{1, 2} {
		for _, n := range []int{1, 5, 20, 64} {
			for _, size := range []int{4, 6, 8, 16} {
				variants = append(variants, variant{ways, n, size, 0, false})
			}
		}
	}
	variants = append(variants,
		// Keys at unaligned stack offsets: slots keep each chunk's
		// alignment.
		variant{1, 20, 8, -12, false}, variant{1, 20, 13, -13, false}, variant{2, 30, 6, -7, false},
		// The whole pipeline: constprop must not fold loads through
		// the probe's variable-offset pointer.
		variant{1, 20, 8, 0, true}, variant{2, 64, 16, 0, true})
	for _, v := range variants {
		ways, n, size := v.ways, v.n, v.size
		t.Run(fmt.Sprintf("ways%d/N%d/key%d@%d/pipeline=%v", ways, n, size, v.keyOff, v.pipeline), func(t *testing.T) {
			probeForceWays = ways
			spec, st, keys := probeInlineCase(n, size, v.keyOff, int64(1000*ways+10*n+size))
			prog, err := program.Lift(spec.Programs[goldenProg])
			if err != nil {
				t.Fatal(err)
			}
			opts := DefaultOptions()
			if !v.pipeline {
				opts.Passes = []string{"mapinline"}
			}
			c := &Context{Coll: spec, Prog: prog, State: st, Guards: guard.NewTable(), Opts: opts}
			if err := Run(c); err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(c.Remarks, func(r Remark) bool {
				return r.Applied && strings.Contains(r.Message, fmt.Sprintf("%d entries inlined as a hashed probe", n))
			}) {
				t.Fatalf("no probe remark in %v", c.Remarks)
			}
			keyOff := v.keyOff
			if keyOff == 0 {
				keyOff = -int16((size + 7) &^ 7)
			}
			pt := placeProbe(keys, probeChunks(keyOff, size, func(int) bool { return false }), func(int, int) bool { return true })
			if pt.ways != ways {
				t.Fatalf("replayed placement has %d ways, want %d", pt.ways, ways)
			}
			packets := probePackets(t, pt, keys, size, int64(n))
			probeCheckKernel(t, c, st, packets, func(key string) bool { return true })
		})
	}
}

// probeCheckKernel verifies and differentially tests the rewritten
// program, then checks on the loaded candidate that the table answers
// (cached(key) for keys it holds) while the guard holds, with the map
// emptied behind its back, and that after a guard bump every key goes to
// the (empty) map.
func probeCheckKernel(t *testing.T, c *Context, st *mapstate.State, packets [][]byte, cached func(string) bool) {
	t.Helper()
	coll := loadChecked(t, c, st, packets)
	defer coll.Close()
	want := map[string]uint32{}
	for _, e := range st.Maps["tbl"].Entries {
		want[string(e.Key)] = binary.LittleEndian.Uint32(e.Value)
		if err := coll.Maps["tbl"].Delete(e.Key); err != nil {
			t.Fatal(err)
		}
	}
	prog := coll.Programs[goldenProg]
	n := int(c.Coll.Maps["tbl"].KeySize)
	run := func(tripped bool) {
		t.Helper()
		for _, pkt := range packets {
			if len(pkt) < hotKeyPkt+n {
				continue
			}
			key := string(pkt[hotKeyPkt : hotKeyPkt+n])
			exp := uint32(2)
			if v, ok := want[key]; ok && cached(key) && !tripped {
				exp = v
			}
			got, err := prog.Run(&ebpf.RunOptions{Data: pkt})
			if err != nil {
				t.Fatal(err)
			}
			if got != exp {
				t.Fatalf("key %x (guard tripped %v): got %d, want %d", key, tripped, got, exp)
			}
		}
	}
	run(false)
	slot, err := c.Guards.Slot("tbl")
	if err != nil {
		t.Fatal(err)
	}
	g := make([]byte, 8*guard.MaxGuards)
	binary.LittleEndian.PutUint64(g[8*slot:], 1)
	if err := coll.Maps[guard.MapName].Put(uint32(0), g); err != nil {
		t.Fatal(err)
	}
	run(true)
}

// TestProbeHotKernel: hotcache's probe with one and two slots a bucket,
// cached misses among the hot keys, and keys that hash to occupied and
// empty buckets; keys outside the cache run the original lookup.
func TestProbeHotKernel(t *testing.T) {
	kerneltest.Require(t)
	defer func(l string, w int) { forceLayout, probeForceWays = l, w }(forceLayout, probeForceWays)
	forceLayout = "probe"
	for _, ways := range []int{1, 2} {
		for _, k := range []int{3, 33, 300, 500} {
			for _, n := range []int{6, 8, 16} {
				if ways == 2 && k > probePlainMaxKeys {
					continue // displaced tables have one slot a bucket
				}
				t.Run(fmt.Sprintf("ways%d/K%d/key%d", ways, k, n), func(t *testing.T) {
					probeForceWays = ways
					spec, st, heat, packets := hotTreeCase(k, n, int64(7*k+n+ways))
					c := runHot(t, spec, st, heat, k)
					want := "hashed probe,"
					if k > probePlainMaxKeys {
						want = "hashed probe with displacements"
					}
					if !slices.ContainsFunc(c.Remarks, func(r Remark) bool { return r.Applied && strings.Contains(r.Message, want) }) {
						t.Fatalf("no remark %q in %v", want, c.Remarks)
					}
					var hot [][]byte
					for _, h := range heat.Maps["tbl"] {
						hot = append(hot, h.Key)
					}
					keyOff := -int16((n + 7) &^ 7)
					pt := placeProbe(hot, probeChunks(keyOff, n, func(int) bool { return false }), func(int, int) bool { return true })
					packets = append(packets, probePackets(t, pt, hot, n, int64(k))...)
					isHot := map[string]bool{}
					for _, h := range hot {
						isHot[string(h)] = true
					}
					probeCheckKernel(t, c, st, packets, func(key string) bool { return isHot[key] })
				})
			}
		}
	}
}

// TestInlineLayoutCostModel: mapinline keeps a chain for a few entries or
// a dominant hot entry (put first) and takes the probe for many equally
// likely ones.
func TestInlineLayoutCostModel(t *testing.T) {
	uniform := func(i int) uint64 { return 100 }
	tests := []struct {
		name   string
		n      int
		counts func(i int) uint64 // nil: no heatmap
		probe  bool
	}{
		{"3 entries, no heatmap", 3, nil, false},
		{"4 entries, no heatmap (8-byte keys: two compares each in a chain)", 4, nil, true},
		{"8 entries, no heatmap", 8, nil, true},
		{"20 entries, no heatmap", 20, nil, true},
		{"20 entries, flat heatmap", 20, uniform, true},
		{"20 entries, the last one dominant", 20, func(i int) uint64 { return map[bool]uint64{true: 100000, false: 1}[i == 19] }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, st, keys := probeInlineCase(tt.n, 8, 0, int64(tt.n))
			prog, err := program.Lift(spec.Programs[goldenProg])
			if err != nil {
				t.Fatal(err)
			}
			var heat *heatmap.Heatmap
			if tt.counts != nil {
				heat = &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
				for i, k := range keys {
					heat.Maps["tbl"] = append(heat.Maps["tbl"], heatmap.Key{Key: k, Count: tt.counts(i)})
				}
			}
			opts := DefaultOptions()
			opts.Passes = []string{"mapinline"}
			c := &Context{Coll: spec, Prog: prog, State: st, Heat: heat, Guards: guard.NewTable(), Opts: opts}
			if err := Run(c); err != nil {
				t.Fatal(err)
			}
			var msg string
			for _, r := range c.Remarks {
				if r.Applied {
					msg = r.Message
				}
			}
			if got := strings.Contains(msg, "hashed probe"); got != tt.probe {
				t.Fatalf("remark %q: probe %v, want %v", msg, got, tt.probe)
			}
			if tt.probe {
				return
			}
			// The chain tests the hottest entry first: its first
			// compare (after the guard's, against version 0) is
			// against the dominant key's first word.
			want := keys[0]
			if tt.counts != nil {
				want = keys[len(keys)-1]
			}
			first := int32(binary.LittleEndian.Uint32(want))
			for _, f := range c.Prog.Funcs {
				for _, b := range f.Blocks {
					for _, ins := range b.Insns {
						if ins.OpCode.JumpOp() == asm.JNE && ins.Dst == asm.R3 && ins.OpCode.Source() == asm.ImmSource && ins.Constant != 0 {
							if int32(ins.Constant) != first {
								t.Fatalf("the chain's first compare is against %#x, want %#x (the hottest key)", uint32(ins.Constant), uint32(first))
							}
							return
						}
					}
				}
			}
			t.Fatal("no compare found")
		})
	}
}
