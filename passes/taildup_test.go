package passes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

var tailDupKeys = []uint32{goldenIP(192, 0, 2, 1), goldenIP(192, 0, 2, 2), goldenIP(198, 51, 100, 7)}

// tailDupRouter is a router in miniature: a 3-entry read-only hash (key:
// the packet's address; value: next-hop index, flags) that mapinline turns
// into a compare chain, then the code every hit shares: a flag test, a
// next-hop lookup in an array with the route's index, and a static
// function that reads the next hop's verdict through the pointer it gets
// in R2. The route's value pointer is in R7 throughout.
func tailDupRouter(extra func(*goldenAsm)) func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	return tailDupProgram(tailDupShape{extra: extra})
}

// tailDupShape varies tailDupRouter: extra code at the start of the tail,
// another body for the function "verdict", code after its call (R0 holds
// its result and must end as a verdict).
type tailDupShape struct {
	extra, callee, after func(*goldenAsm)
}

func tailDupProgram(sh tailDupShape) func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	return func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
		g := newGoldenAsm()
		goldenPrologue(g)
		g.add(asm.StoreMem(asm.R10, -4, asm.R5, asm.Word))
		goldenLookup(g, "routes", -4)
		g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
		g.add(asm.Mov.Reg(asm.R7, asm.R0))
		if sh.extra != nil {
			sh.extra(g)
		}
		g.add(asm.LoadMem(asm.R1, asm.R7, 4, asm.Word)) // flags
		g.jump(asm.JSet.Imm(asm.R1, 1, ""), "drop")
		g.add(
			asm.LoadMem(asm.R1, asm.R7, 0, asm.Word), // next hop
			asm.StoreMem(asm.R10, -8, asm.R1, asm.Word),
		)
		goldenLookup(g, "nexthops", -8)
		g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
		g.add(
			asm.Mov.Reg(asm.R2, asm.R0),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Call.Label("verdict"),
		)
		if sh.after != nil {
			sh.after(g)
		}
		g.add(asm.Return())
		g.label("miss").add(asm.Mov.Imm(asm.R0, 2), asm.Return())
		goldenDrop(g)
		if sh.callee != nil {
			sh.callee(g)
		} else {
			g.add(
				asm.LoadMem(asm.R0, asm.R2, 0, asm.Word).WithSymbol("verdict"),
				asm.And.Imm(asm.R0, 3),
				asm.Return(),
			)
		}
		routes := &ebpf.MapSpec{Name: "routes", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16}
		nexthops := &ebpf.MapSpec{Name: "nexthops", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 4}
		st := mapstate.New()
		for i, v := range [][2]uint32{{1, 0}, {2, 0}, {0, 1}} {
			st.Put("routes", goldenU32(tailDupKeys[i]), append(goldenU32(v[0]), goldenU32(v[1])...))
		}
		for i, v := range []uint32{1, 3, 2, 0} {
			st.Put("nexthops", goldenU32(uint32(i)), goldenU32(v))
		}
		return goldenCollection(g.done(), routes, nexthops), st, nil
	}
}

var tailDupPasses = []string{"mapinline", "taildup", "constprop", "dce"}

// tailDupGoldenCases are the golden rows of taildup, kept here so that the
// pass's cases live next to it; TestGoldenTailDup runs them as TestGolden
// does.
var tailDupGoldenCases = []goldenCase{
	{name: "taildup_chain", passes: tailDupPasses, build: tailDupRouter(nil), keys: tailDupKeys},
}

// TestGoldenTailDup compares the listing of each taildup golden case with
// testdata/NAME.golden (-update rewrites it) and runs the result through
// the verifier and side by side with the original.
func TestGoldenTailDup(t *testing.T) {
	for _, gc := range tailDupGoldenCases {
		t.Run(gc.name, func(t *testing.T) {
			c, before := goldenRun(t, gc)
			got := goldenText(gc, before, c)
			path := filepath.Join("testdata", gc.name+".golden")
			if *updateGolden {
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

// TestTailDupDecisions checks which merges taildup copies and the reason
// it gives for those it leaves alone; every result must pass the
// verifier and behave as the original.
func TestTailDupDecisions(t *testing.T) {
	// A bounded loop at the start of the tail (r3 counts 4 down to 0).
	loop := func(g *goldenAsm) {
		g.add(asm.Mov.Imm(asm.R3, 4))
		g.label("spin").add(asm.Sub.Imm(asm.R3, 1))
		g.jump(asm.JNE.Imm(asm.R3, 0, ""), "spin")
	}
	for _, tc := range []struct {
		name    string
		gc      goldenCase
		copies  int    // taildup remarks applied (the chain's 3 hits and its miss: r0 = NULL, a short tail)
		skip    string // a skipped remark that must appear
		applied string // an applied taildup remark that must appear
		folded  string // an applied constprop remark that must appear
	}{
		{name: "chain hits", gc: goldenCase{passes: tailDupPasses, build: tailDupRouter(nil)}, copies: 4,
			folded: "folded to snapshot value 0x3 behind guard"},
		{name: "without constprop", gc: goldenCase{passes: []string{"mapinline", "taildup", "dce"}, build: tailDupRouter(nil)},
			skip: "constprop is not selected"},
		{name: "loop in the tail", gc: goldenCase{passes: tailDupPasses, build: tailDupRouter(loop)},
			skip: "contains a loop"},
		{name: "inlined callee clobbering live registers", gc: goldenCase{passes: tailDupPasses, build: tailDupProgram(tailDupShape{
			// The callee uses its own frame through a copied frame
			// pointer and writes R6 and R7; the caller reads R7 (the
			// route) after the call, so R7 is spilled around it.
			callee: func(g *goldenAsm) {
				g.add(
					asm.LoadMem(asm.R0, asm.R2, 0, asm.Word).WithSymbol("verdict"),
					asm.StoreMem(asm.R10, -8, asm.R0, asm.DWord),
					asm.Mov.Reg(asm.R6, asm.R10),
					asm.Add.Imm(asm.R6, -8),
					asm.Mov.Imm(asm.R7, 99),
					asm.LoadMem(asm.R0, asm.R6, 0, asm.DWord),
					asm.Add.Reg(asm.R0, asm.R7),
					asm.Return(),
				)
			},
			after: func(g *goldenAsm) {
				g.add(
					asm.LoadMem(asm.R1, asm.R7, 0, asm.Word),
					asm.Add.Reg(asm.R0, asm.R1),
					asm.And.Imm(asm.R0, 3),
				)
			},
		})}, copies: 4, applied: "callee verdict inlined", folded: "reload of a constant stack slot folded to 0x3"},
		{name: "callee with a call stays a function", gc: goldenCase{passes: tailDupPasses, build: tailDupProgram(tailDupShape{
			callee: func(g *goldenAsm) {
				g.add(
					asm.Mov.Reg(asm.R1, asm.R2).WithSymbol("verdict"),
					asm.Call.Label("leaf"),
					asm.Return(),
					asm.LoadMem(asm.R0, asm.R1, 0, asm.Word).WithSymbol("leaf"),
					asm.And.Imm(asm.R0, 3),
					asm.Return(),
				)
			},
		})}, copies: 4, applied: "callee clones verdict_td"},
		// The hits' values decide nothing: only the miss (a known
		// NULL, whose check it decides) gets its short tail.
		{name: "value meets only packet data", gc: goldenCase{passes: tailDupPasses, build: tailDupOpaque},
			copies: 1, applied: "where r0=0x0"},
		{name: "constants, short tail", gc: goldenCase{passes: tailDupPasses, build: tailDupConsts(4)}, copies: 1},
		{name: "constants, long tail", gc: goldenCase{passes: tailDupPasses, build: tailDupConsts(80)},
			skip: "only constants are known"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.gc.name, tc.gc.keys = tc.name, tailDupKeys
			c, _ := goldenRun(t, tc.gc)
			copies := 0
			var skips, applied, dups []string
			for _, r := range c.Remarks {
				switch {
				case r.Pass == "taildup" && r.Applied:
					copies++
					dups = append(dups, r.Message)
				case r.Pass == "taildup":
					skips = append(skips, r.Message)
				case r.Applied:
					applied = append(applied, r.Message)
				}
			}
			if copies != tc.copies {
				t.Errorf("%d tails duplicated, want %d; remarks:\n%v", copies, tc.copies, c.Remarks)
			}
			if tc.skip != "" && !strings.Contains(strings.Join(skips, "\n"), tc.skip) {
				t.Errorf("no skipped remark with %q in %q", tc.skip, skips)
			}
			if tc.applied != "" && !strings.Contains(strings.Join(dups, "\n"), tc.applied) {
				t.Errorf("no applied taildup remark with %q in %q", tc.applied, dups)
			}
			if tc.folded != "" && !strings.Contains(strings.Join(applied, "\n"), tc.folded) {
				t.Errorf("no applied remark with %q in %q", tc.folded, applied)
			}
			goldenKernel(t, c, tc.gc)
		})
	}
}

// tailDupConsts merges two constants (a header offset of 14 or 18,
// chosen by the packet's key) into a tail of filler instructions and a
// branch on the offset.
func tailDupConsts(filler int) func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	return func() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
		g := newGoldenAsm()
		goldenPrologue(g)
		g.add(asm.Mov.Imm(asm.R3, 14))
		g.jump(asm.JSet.Imm(asm.R5, 1, ""), "merge")
		g.add(asm.Mov.Imm(asm.R3, 18))
		g.label("merge").add(asm.Mov.Imm(asm.R8, 0))
		for range filler {
			g.add(asm.Add.Reg(asm.R8, asm.R5))
		}
		g.jump(asm.JEq.Imm(asm.R3, 14, ""), "drop")
		g.add(asm.Mov.Reg(asm.R0, asm.R8), asm.And.Imm(asm.R0, 3), asm.Return())
		goldenDrop(g)
		return goldenCollection(g.done()), mapstate.New(), nil
	}
}

// tailDupOpaque looks the packet's address up in the routes hash and
// tests the value's flags against the address itself: folding the load
// decides nothing, so the tail is not worth a copy per hit.
func tailDupOpaque() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, st, _ := tailDupRouter(nil)()
	g := newGoldenAsm()
	goldenPrologue(g)
	g.add(asm.StoreMem(asm.R10, -4, asm.R5, asm.Word), asm.Mov.Reg(asm.R9, asm.R5))
	goldenLookup(g, "routes", -4)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
	g.add(asm.LoadMem(asm.R1, asm.R0, 4, asm.Word), asm.And.Reg(asm.R1, asm.R9))
	g.jump(asm.JNE.Imm(asm.R1, 0, ""), "drop")
	g.add(asm.Mov.Imm(asm.R0, 2), asm.Return())
	goldenDrop(g)
	spec.Programs[goldenProg].Instructions = g.done()
	return spec, st, nil
}
