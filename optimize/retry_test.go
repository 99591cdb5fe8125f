package optimize

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/passes"
)

func TestComplexityRejection(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{fmt.Errorf("load: %w", unix.E2BIG), true},
		{errors.New("BPF program is too large. Processed 1000001 insn"), true},
		{errors.New("The sequence of 8193 jumps is too complex."), true},
		{errors.New("R1 invalid mem access 'scalar'"), false},
		{fmt.Errorf("load: %w", unix.EACCES), false},
	} {
		if got := ComplexityRejection(c.err); got != c.want {
			t.Errorf("ComplexityRejection(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestRetryWithoutConstprop optimizes the corpus ACL, whose constprop
// candidate (folded code plus the guarded fallback copy) exceeds the
// verifier's complexity limit: the driver must retry without constprop,
// report both attempts and keep the accepted second one.
func TestRetryWithoutConstprop(t *testing.T) {
	kerneltest.Require(t)
	spec, err := ebpf.LoadCollectionSpec("../testdata/corpus/acl_v1.o")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), spec, nil, nil, Options{Program: "xdp_acl", Passes: passes.DefaultOptions(), Generated: 60, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	p := rep.Programs[0]
	t.Logf("accepted %v %s; attempts %+v", p.Accepted, p.Reason, p.Attempts)
	if len(p.Attempts) != 2 {
		t.Fatalf("%d attempts, want 2 (verifier: %s)", len(p.Attempts), firstLine(p.Verifier))
	}
	if !slices.Contains(p.Attempts[0].Passes, "constprop") || slices.Contains(p.Attempts[1].Passes, "constprop") {
		t.Errorf("attempt passes %v then %v: want constprop dropped in the retry", p.Attempts[0].Passes, p.Attempts[1].Passes)
	}
	if p.Attempts[0].Verifier == "ok" || p.Attempts[1].Verifier != "ok" {
		t.Errorf("attempt verifiers %q, %q", p.Attempts[0].Verifier, p.Attempts[1].Verifier)
	}
	if !p.Accepted {
		t.Errorf("retry not accepted: %s", p.Reason)
	}
	for _, pr := range p.Passes {
		if pr.Name == "constprop" {
			t.Errorf("kept report lists constprop")
		}
	}
}

func TestShapeIgnoresConstants(t *testing.T) {
	a := asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.JEq.Imm(asm.R0, 7, "out"), asm.Return()}
	b := asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.JEq.Imm(asm.R0, 9, "out"), asm.Return()}
	c := asm.Instructions{asm.Mov.Imm(asm.R1, 1), asm.JEq.Imm(asm.R1, 7, "out"), asm.Return()}
	if Shape(a) != Shape(b) {
		t.Error("candidates differing in immediates have different shapes")
	}
	if Shape(a) == Shape(c) {
		t.Error("candidates differing in registers have the same shape")
	}
}

func TestSpread(t *testing.T) {
	var pkts [][]byte
	for i := range 1000 {
		pkts = append(pkts, []byte{byte(i), byte(i >> 8)})
	}
	got := spread(pkts, 128)
	if len(got) != 128 || got[0][0] != 0 || got[127][0] != pkts[992][0] {
		t.Errorf("spread: %d packets, first %v, last %v", len(got), got[0], got[len(got)-1])
	}
	if len(spread(pkts[:10], 128)) != 10 {
		t.Error("spread of fewer packets than the bound changed them")
	}
}
