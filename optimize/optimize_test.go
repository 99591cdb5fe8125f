package optimize

import (
	"context"
	"testing"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/passes"
)

func TestOptimizeRouterSmallConfig(t *testing.T) {
	kerneltest.Require(t)
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	state, err := router.ExampleConfig().State()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), spec, state, nil, Options{Passes: passes.DefaultOptions(), Generated: 500, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Programs {
		for _, r := range p.Remarks {
			t.Log(r)
		}
		t.Logf("%s: %d -> %d insns, verifier %s, accepted %v %s", p.Program, p.InstructionsBefore, p.InstructionsAfter, p.Verifier, p.Accepted, p.Reason)
		if p.Differential != nil {
			t.Log(p.Differential.String())
		}
		if !p.Accepted {
			t.Fatalf("candidate rejected: %s", p.Reason)
		}
	}
}
