package passes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// randomLPMEntries makes n entries of a trie with dataBytes bytes of key
// data: lengths drawn from lens (any length up to the maximum when nil),
// about half of them nested in or around an earlier entry, with values
// from a small pool; a few duplicates (equal under their mask) test the
// last-write rule.
func randomLPMEntries(rnd *rand.Rand, n, dataBytes int, lens []int) []mapstate.Entry {
	maxPlen := 8 * dataBytes
	var out []mapstate.Entry
	var datas [][]byte
	for range n {
		plen := rnd.Intn(maxPlen + 1)
		if lens != nil {
			plen = lens[rnd.Intn(len(lens))]
		}
		data := make([]byte, dataBytes)
		rnd.Read(data)
		if len(datas) > 0 && rnd.Intn(2) == 0 {
			base := datas[rnd.Intn(len(datas))]
			keep := uint32(rnd.Intn(maxPlen + 1))
			mask := lpmMask(4+dataBytes, keep)[4:]
			for j := range data {
				data[j] = base[j]&mask[j] | data[j]&^mask[j]
			}
		}
		if len(out) > 0 && rnd.Intn(50) == 0 {
			data = slices.Clone(out[rnd.Intn(len(out))].Key[4:])
		}
		datas = append(datas, data)
		key := append(binary.LittleEndian.AppendUint32(nil, uint32(plen)), data...)
		out = append(out, mapstate.Entry{Key: key, Value: binary.LittleEndian.AppendUint32(nil, uint32(rnd.Intn(n/3+1)))})
	}
	return out
}

// randomHeat makes heatmap keys for "tbl": addresses inside random nodes
// (most with the full prefix length, some with plen, some shorter or
// beyond the maximum) and random addresses, with random counts.
func randomHeat(rnd *rand.Rand, nodes []lpmNode, n int, plen int) *heatmap.Heatmap {
	keySize := len(nodes[0].key)
	maxPlen := uint32(8 * (keySize - 4))
	h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	seen := map[string]bool{}
	for range n {
		k := make([]byte, keySize)
		rnd.Read(k[4:])
		if rnd.Intn(4) != 0 {
			nd := nodes[rnd.Intn(len(nodes))]
			mask := lpmMask(keySize, nd.plen)
			for j := 4; j < keySize; j++ {
				k[j] = nd.key[j] | k[j]&^mask[j]
			}
		}
		kp := maxPlen
		switch {
		case plen >= 0:
			kp = uint32(plen)
		case rnd.Intn(8) == 0:
			kp = uint32(rnd.Intn(int(maxPlen) + 3))
		}
		binary.LittleEndian.PutUint32(k, kp)
		if seen[string(k)] {
			continue
		}
		seen[string(k)] = true
		h.Maps["tbl"] = append(h.Maps["tbl"], heatmap.Key{Key: k, Count: uint64(1 + rnd.Intn(1000))})
	}
	return h
}

// planSummary renders everything a plan's cost and code depend on.
func planSummary(pl *lpmPlan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "/%d keyBytes %d chainLonger %v complete %v lo %d expanded %d blocks %d excluded %d hashed %d base %v rest %v share %v hot %d gain %v cost %v\n",
		pl.plen, pl.keyBytes, pl.chainLonger, pl.complete, pl.lo, pl.expanded, pl.expandedBlocks, pl.excluded, pl.nHashed, pl.base, pl.rest, pl.restShare, len(pl.hot), pl.hotGain, pl.cost())
	for _, set := range [][]lpmNode{pl.longer, pl.shorter} {
		fmt.Fprintf(&b, "%d:", len(set))
		for _, n := range set {
			fmt.Fprintf(&b, " %x=%x", n.key, n.value)
		}
		b.WriteByte('\n')
	}
	for _, h := range pl.hot {
		fmt.Fprintf(&b, "hot %x %v\n", h.key, h.weight)
	}
	return b.String()
}

// blocksSummary renders a plan's hash contents in order.
func blocksSummary(pl *lpmPlan) string {
	var b strings.Builder
	for _, n := range pl.blocks() {
		fmt.Fprintf(&b, "%d %x=%x\n", n.plen, n.key, n.value)
	}
	return b.String()
}

// lpmSite is a lookup site of "tbl" with the key at fp-16, its prefix
// length the constant plen (or from the packet when plen < 0).
func lpmSite(plen int) lookupSite {
	off := int16(-16)
	s := lookupSite{mapName: "tbl", keyOff: &off}
	if plen >= 0 {
		for _, b := range binary.LittleEndian.AppendUint32(nil, uint32(plen)) {
			s.keyBytes = append(s.keyBytes, analysis.KeyByte{Kind: "const", Value: b})
		}
	}
	return s
}

// TestLPMViewPlansMatchReference costs random tries both ways, plan by
// plan: the arithmetic costing (lpmView.plans) must list the same plans
// as the reference expansion (refPlans) with bit-identical costs, the
// same hash blocks in the same order, and the same stage for every
// traffic key; the chosen plan with its hot keys must be the same too.
func TestLPMViewPlansMatchReference(t *testing.T) {
	type tc struct {
		name      string
		dataBytes int
		n         int
		lens      []int
		plen      int // constant prefix length, -1: from the packet
		heat      bool
		maxInline int
	}
	cases := []tc{
		{"ipv4 all lengths", 4, 200, nil, -1, true, 64},
		{"ipv4 all lengths unmeasured", 4, 200, nil, -1, false, 64},
		{"ipv4 routing mix", 4, 1200, []int{0, 8, 12, 16, 18, 20, 22, 23, 24, 24, 24, 24, 28, 32}, -1, true, 64},
		{"ipv4 routing mix unmeasured", 4, 800, []int{0, 16, 20, 22, 24, 24, 24, 32}, -1, false, 64},
		{"ipv4 near lengths", 4, 1500, []int{14, 15, 16, 17, 18, 19, 20}, -1, true, 64},
		{"ipv4 const 32", 4, 600, []int{0, 8, 16, 20, 24, 24, 32}, 32, true, 64},
		{"ipv4 const 24", 4, 600, []int{0, 8, 16, 20, 22, 24, 24, 28, 32}, 24, true, 64},
		{"ipv4 const 20 unmeasured", 4, 600, []int{0, 8, 16, 18, 20, 24, 32}, 20, false, 64},
		{"ipv4 small inline limit", 4, 400, []int{16, 20, 24, 24, 28, 32}, -1, true, 4},
		{"ipv4 large inline limit", 4, 400, []int{0, 12, 16, 24, 24, 32}, -1, true, 500},
		{"3 data bytes", 3, 300, nil, -1, true, 64},
		{"6 data bytes", 6, 500, []int{8, 16, 24, 30, 32, 40, 48}, -1, true, 64},
		{"9 data bytes", 9, 400, []int{56, 60, 63, 64, 65, 66, 70, 72}, -1, true, 64},
		{"ipv6", 16, 600, []int{0, 32, 48, 56, 60, 64, 64, 64, 72, 128}, -1, true, 64},
		{"ipv6 unmeasured", 16, 400, []int{48, 56, 64, 64, 80, 128}, -1, false, 64},
		{"ipv6 const 128", 16, 400, []int{120, 122, 124, 126, 127, 128}, 128, true, 64},
	}
	for _, c := range cases {
		for seed := range int64(3) {
			t.Run(fmt.Sprintf("%s/seed%d", c.name, seed), func(t *testing.T) {
				t.Parallel() // no package state: pure computations
				rnd := rand.New(rand.NewSource(seed*7919 + int64(c.n)))
				maxPlen := uint32(8 * c.dataBytes)
				nodes, bad := lpmNodes(randomLPMEntries(rnd, c.n, c.dataBytes, c.lens), maxPlen)
				if bad != "" {
					t.Fatal(bad)
				}
				lengths := map[uint32]int{}
				for _, n := range nodes {
					lengths[n.plen]++
				}
				if c.plen >= 0 {
					nodes = slices.DeleteFunc(nodes, func(n lpmNode) bool { return n.plen > uint32(c.plen) })
				}
				s := lpmSite(c.plen)
				ctx := &Context{Opts: Options{MaxInline: c.maxInline, TopK: 64}}
				if c.heat {
					ctx.Heat = randomHeat(rnd, nodes, 300, c.plen)
				}
				ms := &ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: uint32(4 + c.dataBytes), ValueSize: 4}
				refKeys, refMeasured := refTraffic(ctx, s, ms, nodes, maxPlen)
				v := newLPMView(nodes)
				tr, measured := lpmTraffic(ctx, s, ms, v)
				if measured != refMeasured || len(tr.keys) != len(refKeys) {
					t.Fatalf("traffic: %d keys (measured %v), reference %d (%v)", len(tr.keys), measured, len(refKeys), refMeasured)
				}
				for i := range refKeys {
					if !bytes.Equal(tr.keys[i].key, refKeys[i].key) || tr.keys[i].result != refKeys[i].result || tr.keys[i].weight != refKeys[i].weight {
						t.Fatalf("traffic key %d: %x -> %v, reference %x -> %v", i, tr.keys[i].key, tr.keys[i].result, refKeys[i].key, refKeys[i].result)
					}
				}
				trieCost := lpmCost(len(nodes), nodes[0].plen, c.dataBytes)
				plans := 0
				for p := range lengths {
					if p == 0 || (c.plen >= 0 && p > uint32(c.plen)) {
						continue
					}
					want := refPlans(ctx, s, nodes, p, c.plen >= 0, refKeys, trieCost)
					got := v.plans(ctx, s, tr, p, c.plen >= 0, trieCost)
					if len(got) != len(want) {
						t.Fatalf("/%d: %d plans, reference %d", p, len(got), len(want))
					}
					for i := range want {
						if g, w := planSummary(got[i]), planSummary(want[i]); g != w {
							t.Fatalf("/%d plan %d:\n%s\nreference:\n%s", p, i, g, w)
						}
						for k := range refKeys {
							if g, w := got[i].stage(tr.keys[k]), want[i].stage(refKeys[k]); g != w {
								t.Fatalf("/%d plan %d: key %x in stage %d, reference %d", p, i, refKeys[k].key, g, w)
							}
						}
						if g, w := blocksSummary(got[i]), blocksSummary(want[i]); g != w {
							t.Fatalf("/%d plan %d: blocks differ (%d vs reference %d lines)", p, i, strings.Count(g, "\n"), strings.Count(w, "\n"))
						}
						plans++
					}
				}
				keyPlen := uint32(max(c.plen, 0))
				oldCost := lpmCost(len(nodes), nodes[0].plen, c.dataBytes)
				gotBest, _ := chooseLPMPlan(ctx, s, ms, nodes, lengths, keyPlen, c.plen >= 0, oldCost)
				wantBest, _ := refChoose(ctx, s, ms, nodes, lengths, keyPlen, c.plen >= 0, oldCost)
				if (gotBest == nil) != (wantBest == nil) {
					t.Fatalf("best plan %v, reference %v", gotBest, wantBest)
				}
				if gotBest != nil {
					if g, w := planSummary(gotBest), planSummary(wantBest); g != w {
						t.Fatalf("best plan:\n%s\nreference:\n%s", g, w)
					}
					if g, w := blocksSummary(gotBest), blocksSummary(wantBest); g != w {
						t.Fatal("best plan's blocks differ")
					}
				}
				t.Logf("%d nodes, %d lengths, %d traffic keys, %d plans compared", len(nodes), len(lengths), len(refKeys), plans)
			})
		}
	}
}

// TestDssMatchesReference runs the whole pass with the arithmetic costing
// and with the reference, on hand-written programs and the router, and
// requires identical code, maps and remarks.
func TestDssMatchesReference(t *testing.T) {
	routerState := func(n int) (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
		spec, err := router.Spec()
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := traffic.RouterConfig(n, []uint32{1, 2, 3}, uint64(n))
		if err != nil {
			t.Fatal(err)
		}
		state, err := cfg.State()
		if err != nil {
			t.Fatal(err)
		}
		flows, err := traffic.RouterFlows(cfg, 1, min(n, 256), 7)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := traffic.Generate(flows, traffic.Options{Packets: 3000, Locality: traffic.LocalityHigh, MissShare: 0.05, Seed: 12})
		if err != nil {
			t.Fatal(err)
		}
		counts := map[[4]byte]uint64{}
		for _, i := range tr.PacketFlow {
			counts[tr.Flows[i].DstIP.As4()]++
		}
		heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
		for a, c := range counts {
			heat.Maps[router.MapRoutes] = append(heat.Maps[router.MapRoutes], heatmap.Key{Key: append(goldenU32(32), a[:]...), Count: c})
		}
		sort.Slice(heat.Maps[router.MapRoutes], func(i, j int) bool {
			return bytes.Compare(heat.Maps[router.MapRoutes][i].Key, heat.Maps[router.MapRoutes][j].Key) < 0
		})
		return spec, state, heat
	}
	hand := func(dataBytes, constPlen int, state *mapstate.State, heat bool) func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
		return func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
			spec := dssLookupSpec(lpmSpec(dataBytes), lookupOpts{constPlen: constPlen})
			if !heat {
				return spec, state, nil
			}
			nodes, _ := lpmNodes(state.Maps["tbl"].Entries, uint32(8*dataBytes))
			return spec, state, randomHeat(rand.New(rand.NewSource(5)), nodes, 200, constPlen)
		}
	}
	for _, tc := range []struct {
		name  string
		prog  string
		setup func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap)
	}{
		{"dominant with others", dssProg, hand(4, -1, mixedState(4, 300, 24, map[int]int{0: 1, 16: 4, 32: 6}, 1), false)},
		{"dominant with others, heat", dssProg, hand(4, -1, mixedState(4, 300, 24, map[int]int{0: 1, 16: 4, 20: 9, 32: 6}, 1), true)},
		{"many longer", dssProg, hand(4, -1, mixedState(4, 600, 24, map[int]int{32: 70}, 1), true)},
		{"const plen", dssProg, hand(4, 24, mixedState(4, 300, 24, map[int]int{0: 1, 32: 100}, 1), false)},
		{"ipv6", dssProg, hand(16, -1, mixedState(16, 400, 64, map[int]int{0: 1, 48: 20, 56: 10, 128: 8}, 1), true)},
		{"router 500", router.Program, func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) { return routerState(500) }},
		{"router 2592", router.Program, func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
			return routerState(traffic.EvalRouterRoutes)
		}},
		{"router 30k /24", router.Program, func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) { return benchRouter(t, 30_000) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := func(choose func(*Context, lookupSite, *ebpf.MapSpec, []lpmNode, map[uint32]int, uint32, bool, float64) (*lpmPlan, []trafficKey)) string {
				lpmChoose = choose
				defer func() { lpmChoose = chooseLPMPlan }()
				spec, state, heat := tc.setup()
				c, insns := runDssHeat(t, spec, tc.prog, state, heat, "dss")
				var b strings.Builder
				for _, r := range c.Remarks {
					fmt.Fprintln(&b, r)
				}
				fmt.Fprintln(&b, insns)
				names := make([]string, 0, len(c.Coll.Maps))
				for n := range c.Coll.Maps {
					names = append(names, n)
				}
				slices.Sort(names)
				for _, n := range names {
					m := c.Coll.Maps[n]
					fmt.Fprintf(&b, "%s %v %d %d %d %d %v\n", n, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Flags, m.Contents)
				}
				return b.String()
			}
			got, want := run(chooseLPMPlan), run(refChoose)
			if got != want {
				t.Fatalf("the pass differs from the reference costing:\n%s\nreference:\n%s", got, want)
			}
			t.Log(strings.SplitN(got, "\n", 2)[0])
		})
	}
}

// TestLPMNodesMatchReference: lpmNodes sorts and merges snapshot entries
// as the reference (map and stable sort) does, for packed and unpacked key
// sizes, duplicates and entries beyond the maximum.
func TestLPMNodesMatchReference(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dataBytes int
		n         int
		lens      []int
	}{
		{"ipv4", 4, 3000, nil},
		{"ipv4 routes", 4, 3000, []int{0, 8, 16, 24, 24, 32}},
		{"1 byte", 1, 300, nil},
		{"7 bytes", 7, 1000, nil},
		{"8 bytes", 8, 1000, []int{0, 32, 60, 64}},
		{"ipv6", 16, 2000, []int{0, 48, 64, 64, 128}},
	} {
		for seed := range int64(3) {
			t.Run(fmt.Sprintf("%s/seed%d", tc.name, seed), func(t *testing.T) {
				rnd := rand.New(rand.NewSource(seed))
				entries := randomLPMEntries(rnd, tc.n, tc.dataBytes, tc.lens)
				// Heavy duplication: every tenth entry rewrites an
				// earlier key (unmasked bits differ) with a new value.
				for i := 10; i < len(entries); i += 10 {
					k := slices.Clone(entries[rnd.Intn(i)].Key)
					k[len(k)-1] ^= 1
					entries[i] = mapstate.Entry{Key: k, Value: []byte{byte(i), 1, 2, 3}}
				}
				maxPlen := uint32(8 * tc.dataBytes)
				got, gotBad := lpmNodes(entries, maxPlen)
				want, wantBad := refNodes(entries, maxPlen)
				if gotBad != wantBad || len(got) != len(want) {
					t.Fatalf("%d nodes (%q), reference %d (%q)", len(got), gotBad, len(want), wantBad)
				}
				for i := range want {
					if got[i].plen != want[i].plen || !bytes.Equal(got[i].key, want[i].key) || !bytes.Equal(got[i].value, want[i].value) {
						t.Fatalf("node %d: /%d %x=%x, reference /%d %x=%x", i, got[i].plen, got[i].key, got[i].value, want[i].plen, want[i].key, want[i].value)
					}
				}
				entries[len(entries)/2].Key[0] = byte(maxPlen + 1)
				_, gotBad = lpmNodes(entries, maxPlen)
				_, wantBad = refNodes(entries, maxPlen)
				if gotBad != wantBad || gotBad == "" {
					t.Fatalf("beyond the maximum: %q, reference %q", gotBad, wantBad)
				}
			})
		}
	}
}

// TestDirMatchesReference: the DIR tables and sizes are those of the
// reference builder, entry for entry, on random tries and routing tables.
func TestDirMatchesReference(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		lens []int
	}{
		{"all lengths", 3000, nil},
		{"routes", 5000, []int{0, 8, 12, 16, 20, 22, 24, 24, 24, 24, 28, 32}},
		{"long", 3000, []int{25, 26, 28, 30, 31, 32}},
		{"one value", 500, []int{16, 24}},
	} {
		for seed := range int64(3) {
			t.Run(fmt.Sprintf("%s/seed%d", tc.name, seed), func(t *testing.T) {
				rnd := rand.New(rand.NewSource(seed))
				entries := randomLPMEntries(rnd, tc.n, 4, tc.lens)
				if tc.name == "one value" {
					for i := range entries {
						entries[i].Value = []byte{1, 2, 3, 4}
					}
				}
				nodes, _ := lpmNodes(entries, 32)
				got, want := buildDIR(nodes), refBuildDIR(nodes)
				if got.width != want.width || !slices.Equal(got.l1, want.l1) || !slices.Equal(got.l2, want.l2) || !slices.Equal(got.l3, want.l3) ||
					!slices.EqualFunc(got.leaves, want.leaves, bytes.Equal) {
					t.Fatalf("tables differ: width %d/%d, blocks %d+%d / %d+%d, leaves %d/%d", got.width, want.width,
						got.blocks2(), got.blocks3(), want.blocks2(), want.blocks3(), len(got.leaves), len(want.leaves))
				}
				w1, b21, b31, l1, t1 := dirSize(nodes, 8)
				w2, b22, b32, l2, t2 := refDirSize(nodes, 8)
				if w1 != w2 || b21 != b22 || b31 != b32 || l1 != l2 || t1 != t2 {
					t.Fatalf("dirSize %d/%d/%d/%d/%d, reference %d/%d/%d/%d/%d", w1, b21, b31, l1, t1, w2, b22, b32, l2, t2)
				}
			})
		}
	}
}
