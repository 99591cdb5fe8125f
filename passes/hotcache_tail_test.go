package passes

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
)

// Results of the hit-tail programs: a fresh hit returns the stamp it
// read, a refresh 3, a miss (learned now) 2, a short frame 1.
const (
	tailRefresh = 3
	tailLearned = 2
	// tailFresh is how long a stamp stays fresh.
	tailFresh = 100
)

// tailKeys are goldenTail's entries (key and stamp); the first two are
// hot, and tailMissKey is a hot key absent from the table.
var (
	tailKeys    = []uint32{goldenIP(192, 0, 2, 1), goldenIP(192, 0, 2, 2), goldenIP(198, 51, 100, 7)}
	tailStamps  = []uint32{1000, 5000, 42}
	tailMissKey = goldenIP(10, 0, 0, 1)
	// tailOddStamp is the second key's stamp in the bump variant.
	tailOddStamp = uint32(5001)
)

// goldenTail is a learning table in the style of an L2 switch's source
// lookup: the key comes from the frame, "now" from the frame too (at
// rwValOff); a known key whose stamp is fresh returns it without writing,
// a stale one gets its stamp refreshed in place, an unknown key is
// inserted. With callee, the lookup sits in a static function that gets
// the key by pointer from the caller's frame. With counter, every hit
// writes the value (a hit counter) and the cache could never pay.
func goldenTail(callee, counter bool) (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	return goldenTailOpts(callee, counter, false)
}

// goldenTailOpts is goldenTail; with bump, an odd stamp first moves "now"
// (R7, which the code after the lookup still reads) 1000 ahead, so a hit
// on an odd stamp changes a live register before it decides anything.
func goldenTailOpts(callee, counter, bump bool) (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	rwPrologue(g)
	g.add(asm.LoadMem(asm.R7, asm.R2, rwValOff, asm.Word))
	learn := func(keyAt func() []asm.Instruction) {
		g.add(asm.LoadMapPtr(asm.R1, 0).WithReference("rw"))
		g.add(keyAt()...)
		g.add(asm.FnMapLookupElem.Call())
		g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
		if counter {
			g.add(
				asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
				asm.Add.Imm(asm.R1, 1),
				asm.StoreMem(asm.R0, 0, asm.R1, asm.Word),
				asm.Mov.Imm(asm.R0, 0),
				asm.Return(),
			)
		} else {
			g.add(asm.LoadMem(asm.R1, asm.R0, 0, asm.Word))
			if bump {
				g.add(asm.Mov.Reg(asm.R2, asm.R1), asm.And.Imm(asm.R2, 1))
				g.jump(asm.JEq.Imm(asm.R2, 0, ""), "even")
				g.add(asm.Add.Imm(asm.R7, 1000))
				g.label("even")
			}
			g.add(
				asm.Mov.Reg(asm.R2, asm.R7),
				asm.Sub.Reg(asm.R2, asm.R1),
			)
			g.jump(asm.JGT.Imm(asm.R2, tailFresh, ""), "refresh")
			g.add(asm.Mov.Reg(asm.R0, asm.R1), asm.Return())
			g.label("refresh").add(
				asm.StoreMem(asm.R0, 0, asm.R7, asm.Word),
				asm.Mov.Imm(asm.R0, tailRefresh),
				asm.Return(),
			)
		}
		g.label("miss").add(
			asm.StoreMem(asm.R10, -8, asm.R7, asm.Word),
			asm.LoadMapPtr(asm.R1, 0).WithReference("rw"),
		)
		g.add(keyAt()...)
		g.add(
			asm.Mov.Reg(asm.R3, asm.R10),
			asm.Add.Imm(asm.R3, -8),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, tailLearned),
			asm.Return(),
		)
	}
	onStack := func() []asm.Instruction {
		return []asm.Instruction{asm.Mov.Reg(asm.R2, asm.R10), asm.Add.Imm(asm.R2, -4)}
	}
	if callee {
		g.add(
			asm.Mov.Reg(asm.R1, asm.R10),
			asm.Add.Imm(asm.R1, -4),
			asm.Mov.Reg(asm.R2, asm.R7),
			asm.Call.Label("learn"),
			asm.Return(),
		)
		goldenDrop(g)
		// learn(key *u32, now u32): the key pointer stays in R6.
		g.add(asm.Mov.Reg(asm.R6, asm.R1).WithSymbol("learn"), asm.Mov.Reg(asm.R7, asm.R2))
		learn(func() []asm.Instruction { return []asm.Instruction{asm.Mov.Reg(asm.R2, asm.R6)} })
	} else {
		learn(onStack)
		goldenDrop(g)
	}
	rw := &ebpf.MapSpec{Name: "rw", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 64}
	st := mapstate.New()
	for i, k := range tailKeys {
		stamp := tailStamps[i]
		if bump && i == 1 {
			stamp = tailOddStamp
		}
		st.Put("rw", goldenU32(k), goldenU32(stamp))
	}
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{"rw": {
		{Key: goldenU32(tailKeys[0]), Count: 100},
		{Key: goldenU32(tailKeys[1]), Count: 50},
		{Key: goldenU32(tailMissKey), Count: 20}, // a cached miss
	}}}
	return goldenCollection(g.done(), rw), st, heat
}

func goldenTailMain() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	return goldenTail(false, false)
}

// tailFrame is a frame for goldenTail.
func tailFrame(key, now uint32) []byte {
	f := make([]byte, 64)
	binary.LittleEndian.PutUint32(f[goldenKeyOff:], key)
	binary.LittleEndian.PutUint32(f[rwValOff:], now)
	return f
}

// TestHotHitTail: a lookup whose value is written only when stale is
// cached; hits that only read never run the lookup, and every write runs
// the original code after a redone lookup, whose tripwire trips the guard.
func TestHotHitTail(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		callee, counter, bump bool
		want                  string
	}{
		{name: "own frame", want: "hits run a copy of the code after the lookup"},
		{name: "key in the caller's frame", callee: true, want: "hits run a copy of the code after the lookup"},
		{name: "written on every hit", counter: true, want: "the value is written on every path of a hit"},
		{name: "a live register changes on a hit", bump: true, want: "hits run a copy of the code after the lookup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, st, heat := goldenTailOpts(tc.callee, tc.counter, tc.bump)
			c := runHot(t, spec, st, heat, 8)
			if !slices.ContainsFunc(c.Remarks, func(r Remark) bool { return strings.Contains(r.Message, tc.want) }) {
				t.Fatalf("no remark %q in %v", tc.want, c.Remarks)
			}
			if tc.counter {
				if slices.ContainsFunc(c.Remarks, func(r Remark) bool {
					return r.Applied && r.Pass == "hotcache" && strings.Contains(r.Message, "hot keys cached")
				}) {
					t.Fatalf("a cache was placed: %v", c.Remarks)
				}
				return
			}
			kerneltest.Require(t)
			var packets [][]byte
			for i, k := range append(slices.Clone(tailKeys), tailMissKey, 7) {
				for _, now := range []uint32{0, 1000, 1000 + tailFresh, 1001 + tailFresh, 5000 + 3, 7000} {
					packets = append(packets, tailFrame(k, now+uint32(i)))
				}
			}
			coll := loadChecked(t, c, st, packets)
			defer coll.Close()
			if tc.bump {
				// The odd stamp's hit bails before moving R7: the
				// redone lookup's code moves it once, so a fresh
				// "now" is stale by 1000 and refreshed to now+1000.
				now := tailOddStamp + 1
				ret, err := coll.Programs[goldenProg].Run(&ebpf.RunOptions{Data: tailFrame(tailKeys[1], now)})
				if err != nil {
					t.Fatal(err)
				}
				got, err := coll.Maps["rw"].LookupBytes(goldenU32(tailKeys[1]))
				if err != nil {
					t.Fatal(err)
				}
				if ret != tailRefresh || binary.LittleEndian.Uint32(got) != now+1000 {
					t.Fatalf("odd stamp: result %d, stamp %d; want %d and %d", ret, binary.LittleEndian.Uint32(got), tailRefresh, now+1000)
				}
				return
			}
			tailCheckKernel(t, c, coll)
		})
	}
}

// tailCheckKernel proves who answers: with the table emptied behind the
// guard's back, a fresh hot key still gets its cached stamp (no lookup
// ran); a stale one redoes the lookup, which now misses, so the key is
// learned (result 2) and the tripwire before that write trips the guard;
// from then on every key takes the original code.
func tailCheckKernel(t *testing.T, c *Context, coll *ebpf.Collection) {
	t.Helper()
	prog, rw, guards := coll.Programs[goldenProg], coll.Maps["rw"], coll.Maps[guard.MapName]
	run := func(key, now uint32) uint32 {
		t.Helper()
		ret, err := prog.Run(&ebpf.RunOptions{Data: tailFrame(key, now)})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	for _, k := range tailKeys {
		if err := rw.Delete(goldenU32(k)); err != nil {
			t.Fatal(err)
		}
	}
	k0, k1 := tailKeys[0], tailKeys[1]
	if got := run(k0, tailStamps[0]+1); got != tailStamps[0] {
		t.Fatalf("fresh hot key: got %d, want the cached stamp %d", got, tailStamps[0])
	}
	if got := run(k1, tailStamps[1]+tailFresh); got != tailStamps[1] {
		t.Fatalf("fresh hot key: got %d, want the cached stamp %d", got, tailStamps[1])
	}
	slot, _ := c.Guards.Slot("rw")
	buf, err := guards.LookupBytes(uint32(0))
	if err != nil {
		t.Fatal(err)
	}
	if g := binary.LittleEndian.Uint64(buf[8*slot:]); g == guard.Tripped {
		t.Fatal("the guard tripped on reads")
	}
	if got := run(k0, tailStamps[0]+tailFresh+1); got != tailLearned {
		t.Fatalf("stale hot key after the table was emptied: got %d, want %d (the redone lookup misses)", got, tailLearned)
	}
	if buf, err = guards.LookupBytes(uint32(0)); err != nil {
		t.Fatal(err)
	}
	if g := binary.LittleEndian.Uint64(buf[8*slot:]); g != guard.Tripped {
		t.Fatalf("guard holds %#x after the write, want all ones", g)
	}
	if got := run(k1, tailStamps[1]+1); got != tailLearned {
		t.Fatalf("after the trip: got %d for a deleted key, want %d from the original code", got, tailLearned)
	}
}
