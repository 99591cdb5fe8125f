package passes

import (
	"context"
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
	"github.com/morpheus-go/morpheus/program"
	"github.com/morpheus-go/morpheus/verify"
)

// goldenIngress reads its verdict from a per-port array indexed by
// ctx->ingress_ifindex, as a switch or router reads its port settings.
// Port 1 (lo, the interface of test runs) says XDP_TX, port 0 (a run
// without a context) XDP_PASS.
func goldenIngress() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	g := newGoldenAsm()
	g.add(
		asm.LoadMem(asm.R2, asm.R1, 12, asm.Word), // ingress_ifindex
		asm.StoreMem(asm.R10, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference("ports"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
	)
	g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
	g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
	goldenDrop(g)
	st := mapstate.New()
	st.Put("ports", goldenU32(0), goldenU32(2))
	st.Put("ports", goldenU32(1), goldenU32(3))
	return goldenCollection(g.done(), cpArray("ports", ebpf.Array, 8)), st, nil
}

// TestConstPropIngress: with Options.Ingress, constprop folds the port's
// settings, and the program checks the interface at its entry: a frame
// from the interface it was specialized to gets the folded answer, any
// other frame the original code's. Test runs come from lo, so the second
// case specializes to another interface to take the original path.
func TestConstPropIngress(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ingress uint32
		want    string // a remark, "" for none about the ingress
		fromLo  uint32 // the verdict of a frame from lo after the map changed
	}{
		{name: "attached to lo", ingress: kerneltest.LoIfindex, want: "specialized to ingress_ifindex 1, checked once at program entry", fromLo: 3},
		{name: "attached elsewhere", ingress: 7, want: "specialized to ingress_ifindex 7", fromLo: 1},
		{name: "attachment unknown", ingress: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, st, _ := goldenIngress()
			prog, err := program.Lift(spec.Programs[goldenProg])
			if err != nil {
				t.Fatal(err)
			}
			opts := DefaultOptions()
			opts.Passes, opts.Ingress = []string{"constprop"}, tc.ingress
			c := &Context{Coll: spec, Prog: prog, State: st, Guards: guard.NewTable(), Opts: opts}
			if err := Run(c); err != nil {
				t.Fatal(err)
			}
			specialized := slices.ContainsFunc(c.Remarks, func(r Remark) bool { return r.Applied && strings.Contains(r.Message, "ingress_ifindex") })
			if tc.want == "" {
				if specialized {
					t.Fatalf("specialized without an ingress: %v", c.Remarks)
				}
				return
			}
			if !slices.ContainsFunc(c.Remarks, func(r Remark) bool { return r.Applied && strings.Contains(r.Message, tc.want) }) {
				t.Fatalf("no remark %q in %v", tc.want, c.Remarks)
			}
			kerneltest.Require(t)
			insns, err := c.Prog.Lower()
			if err != nil {
				t.Fatal(err)
			}
			cand := verify.Candidate{goldenProg: insns}
			frame := make([]byte, 64)
			lo := kerneltest.XDPContext(kerneltest.LoIfindex)
			rep, err := verify.Differential(context.Background(), c.Coll, st, cand, [][]byte{frame}, verify.DiffOptions{Context: lo})
			if err != nil {
				t.Fatal(err)
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
			defer coll.Close()
			// Behind the guard's back lo's setting changes: the
			// specialized path keeps the folded answer, the original
			// code reads the map.
			if err := coll.Maps["ports"].Put(uint32(kerneltest.LoIfindex), uint32(1)); err != nil {
				t.Fatal(err)
			}
			ctx := slices.Clone(lo)
			binary.LittleEndian.PutUint32(ctx[4:], uint32(len(frame)))
			got, err := coll.Programs[goldenProg].Run(&ebpf.RunOptions{Data: frame, Context: ctx})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.fromLo {
				t.Errorf("frame from lo: verdict %d, want %d", got, tc.fromLo)
			}
		})
	}
}
