package passes_test

import (
	"context"
	"sort"
	"testing"

	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/optimize"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/program"
)

// fastPath counts the instructions that can run while every guard holds:
// it follows a guard check only to its fall-through (the specialized
// code), never to the original code it falls back to, and counts each
// function reached once.
func fastPath(p *program.Program) (n int, maps map[string]bool) {
	maps = map[string]bool{}
	seenFn := map[string]bool{}
	var walk func(f *program.Func)
	walk = func(f *program.Func) {
		if f == nil || seenFn[f.Name] {
			return
		}
		seenFn[f.Name] = true
		seen := map[*program.Block]bool{}
		stack := []*program.Block{f.Blocks[0]}
		for len(stack) > 0 {
			b := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if seen[b] {
				continue
			}
			seen[b] = true
			n += len(b.Insns)
			for _, ins := range b.Insns {
				if ins.IsLoadFromMap() && ins.Reference() != guard.MapName {
					maps[ins.Reference()] = true
				}
				if ins.IsFunctionReference() {
					walk(p.Func(ins.Reference()))
				}
			}
			if isGuardCheck(b) {
				stack = append(stack, b.Next)
				continue
			}
			stack = append(stack, b.Succs()...)
		}
	}
	walk(p.Funcs[0])
	return n, maps
}

// isGuardCheck recognizes the guard checks of package passes: a direct
// load of the guard slot, ending in a jump to the fallback on mismatch.
func isGuardCheck(b *program.Block) bool {
	t := b.Term()
	return len(b.Insns) >= 3 && b.Insns[0].IsLoadFromMap() && b.Insns[0].Src == asm.PseudoMapValue &&
		b.Insns[0].Reference() == guard.MapName && t != nil && t.OpCode.JumpOp() == asm.JNE
}

// TestConstPropFirewallFeaturesOff runs the pipeline on the firewall with
// every feature off: constprop must fold the feature flags (behind the
// features guard) so that the specialized code of every stage is shorter
// than the original and touches neither the features nor the counters
// map, and the candidates must pass the verifier and the differential
// test.
func TestConstPropFirewallFeaturesOff(t *testing.T) {
	kerneltest.Require(t)
	spec, err := firewall.Spec()
	if err != nil {
		t.Fatal(err)
	}
	state, err := (&firewall.Config{DefaultPolicy: "allow"}).State()
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(spec.Programs))
	for n := range spec.Programs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		coll := spec.Copy()
		if err := state.ApplySpec(coll); err != nil {
			t.Fatal(err)
		}
		prog, err := program.Lift(coll.Programs[name])
		if err != nil {
			t.Fatal(err)
		}
		c := &passes.Context{Coll: coll, Prog: prog.Clone(), State: state, Guards: guard.NewTable(), Opts: passes.DefaultOptions()}
		if err := passes.Run(c); err != nil {
			t.Fatal(err)
		}
		fast, maps := fastPath(c.Prog)
		t.Logf("%s: %d instructions before, %d after (%d on the guarded fast path)", name, prog.NumInstructions(), c.Prog.NumInstructions(), fast)
		if fast >= prog.NumInstructions() {
			t.Errorf("%s: fast path has %d instructions, original %d: feature branches not folded", name, fast, prog.NumInstructions())
		}
		for _, m := range []string{"features", "counters"} {
			if maps[m] {
				t.Errorf("%s: the fast path still uses map %s", name, m)
			}
		}
	}

	rep, err := optimize.Run(context.Background(), spec, state, nil, optimize.Options{Passes: passes.DefaultOptions(), Generated: 300, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Programs {
		if !p.Accepted {
			t.Errorf("%s: candidate rejected: %s (verifier: %.2000s)", p.Program, p.Reason, p.Verifier)
		}
	}
}
