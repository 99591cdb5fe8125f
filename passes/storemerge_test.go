package passes

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// smKeys are the MAC+VLAN keys of goldenStoreMerge's table (the frame's
// first six bytes and a VLAN id of 10), with their verdicts.
var smKeys = [][]byte{
	{0x02, 0xaa, 0x55, 0, 0, 1, 10, 0},
	{0x02, 0xaa, 0x55, 0, 0, 2, 10, 0},
}

// goldenStoreMerge builds an 8-byte MAC+VLAN key the way clang does for
// an L2 switch's FDB: the VLAN id as a half in one block, then the MAC
// from the frame as a word and a half whose source registers are reused
// right after their stores, and looks it up in a hash. With between, a
// load of the key slot sits between the MAC's stores, which must keep
// them apart.
func goldenStoreMergeOpts(between bool) (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	return goldenStoreMergeMap(between, ebpf.Hash)
}

// goldenStoreMergeMap is goldenStoreMergeOpts with a map of type typ.
func goldenStoreMergeMap(between bool, typ ebpf.MapType) (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	g.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
	)
	g.jump(asm.JGT.Reg(asm.R4, asm.R3, ""), "drop")
	g.add(
		asm.Mov.Imm(asm.R7, 10), // the VLAN id
		asm.StoreMem(asm.R10, -2, asm.R7, asm.Half),
	)
	g.jump(asm.JEq.Imm(asm.R7, 0, ""), "drop")
	g.add(
		asm.LoadMem(asm.R1, asm.R2, 4, asm.Half),
		asm.StoreMem(asm.R10, -4, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, asm.R2, 0, asm.Word), // R1 reused
	)
	if between {
		g.add(asm.LoadMem(asm.R5, asm.R10, -4, asm.Half))
	}
	g.add(asm.StoreMem(asm.R10, -8, asm.R1, asm.Word))
	goldenLookup(g, "fdb", -8)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "miss")
	g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
	g.label("miss").add(asm.Mov.Imm(asm.R0, 2), asm.Return())
	goldenDrop(g)
	fdb := &ebpf.MapSpec{Name: "fdb", Type: typ, KeySize: 8, ValueSize: 4, MaxEntries: 64}
	st := mapstate.New()
	if typ == ebpf.LPMTrie {
		fdb.Flags = 1                                   // BPF_F_NO_PREALLOC
		return goldenCollection(g.done(), fdb), st, nil // the MACs are no prefixes
	}
	for i, k := range smKeys {
		st.Put("fdb", k, goldenU32(uint32(3+i)))
	}
	return goldenCollection(g.done(), fdb), st, nil
}

func goldenStoreMerge() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	return goldenStoreMergeOpts(false)
}

// TestStoreMerge: the MAC+VLAN key's narrow stores become 64-bit stores
// of the same bytes, one in each block that writes the key (the verdicts
// of known and unknown MACs are the original's), and a load of the slot
// between the MAC's stores keeps those two as they are.
func TestStoreMerge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		between bool
		lpm     bool
		merges  int // blocks whose key stores were merged
		narrow  int // narrow key stores left
	}{
		{name: "key built field by field", merges: 2},
		{name: "key slot read between its stores", between: true, merges: 1, narrow: 2},
		// An LPM trie reads its key in bytes and words as written: no
		// load waits for two stores, nothing to merge.
		{name: "key of an LPM trie", lpm: true, narrow: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ := ebpf.Hash
			if tc.lpm {
				typ = ebpf.LPMTrie
			}
			spec, st, _ := goldenStoreMergeMap(tc.between, typ)
			prog, err := program.Lift(spec.Programs[goldenProg])
			if err != nil {
				t.Fatal(err)
			}
			opts := DefaultOptions()
			opts.Passes = []string{"storemerge"}
			c := &Context{Coll: spec, Prog: prog, State: st, Guards: guard.NewTable(), Opts: opts}
			if err := Run(c); err != nil {
				t.Fatal(err)
			}
			merges := 0
			for _, r := range c.Remarks {
				if r.Applied && strings.Contains(r.Message, "one 64-bit store") {
					merges++
				}
			}
			if merges != tc.merges {
				t.Fatalf("%d blocks merged, want %d: %v\n%s", merges, tc.merges, c.Remarks, c.Prog)
			}
			narrow := 0
			for _, f := range c.Prog.Funcs {
				for _, b := range f.Blocks {
					for _, ins := range b.Insns {
						if ins.OpCode.Class() == asm.StXClass && ins.Dst == asm.R10 && ins.OpCode.Size() != asm.DWord {
							narrow++
						}
					}
				}
			}
			if narrow != tc.narrow {
				t.Fatalf("%d narrow key stores left, want %d:\n%s", narrow, tc.narrow, c.Prog)
			}
			kerneltest.Require(t)
			var packets [][]byte
			for _, mac := range [][]byte{smKeys[0][:6], smKeys[1][:6], {0x02, 0xaa, 0x55, 0, 0, 9}} {
				f := make([]byte, 64)
				copy(f, mac)
				binary.BigEndian.PutUint16(f[12:], 0x0800)
				packets = append(packets, f)
			}
			coll := loadChecked(t, c, st, packets)
			defer coll.Close()
			wants := []uint32{3, 4, 2}
			if tc.lpm {
				wants = []uint32{2, 2, 2}
			}
			for i, want := range wants {
				got, err := coll.Programs[goldenProg].Run(&ebpf.RunOptions{Data: packets[i]})
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("frame %d: verdict %d, want %d", i, got, want)
				}
			}
		})
	}
}
