package optimize

import (
	"context"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/traffic"
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

// TestOptimizeRouterHotCache gives a router too large to inline a heatmap
// of hot destinations: hotcache must put them in front of the LPM lookup
// and the candidate must pass the verifier and the differential test.
func TestOptimizeRouterHotCache(t *testing.T) {
	kerneltest.Require(t)
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := traffic.RouterConfig(200, []uint32{1}, 7)
	if err != nil {
		t.Fatal(err)
	}
	state, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for i, r := range cfg.Routes[:6] {
		p := netip.MustParsePrefix(r.Prefix).Addr().As4()
		p[3] |= 1 // a host inside the route
		key := binary.LittleEndian.AppendUint32(nil, 32)
		heat.Maps["routes"] = append(heat.Maps["routes"], heatmap.Key{Key: append(key, p[:]...), Count: uint64(100 - i)})
	}
	// dss would take this table first (with the same hot keys in front of
	// its hash); leave it out so the test keeps exercising hotcache.
	popts := passes.DefaultOptions()
	popts.Passes = []string{"mapinline", "hotcache", "constprop", "dce"}
	rep, err := Run(context.Background(), spec, state, heat, Options{Passes: popts, Generated: 300, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	p := rep.Programs[0]
	cached := false
	for _, r := range p.Remarks {
		if r.Pass == "hotcache" && r.Map == "routes" && r.Applied && strings.Contains(r.Message, "hot keys cached") {
			cached = true
		}
	}
	if !cached {
		t.Fatalf("hotcache did not rewrite the routes lookup: %v", p.Remarks)
	}
	if !p.Accepted {
		t.Fatalf("candidate rejected: %s (verifier: %s, differential: %v)", p.Reason, p.Verifier, p.Differential)
	}
}

func TestLineDiff(t *testing.T) {
	cases := []struct {
		name string
		a, b []string
		want []string
	}{
		{"same", []string{"x", "y"}, []string{"x", "y"}, []string{"      x", "      y"}},
		{"insert", []string{"x", "z"}, []string{"x", "y", "z"}, []string{"      x", "+     y", "      z"}},
		{"replace last", []string{"x", "goto b1"}, []string{"x", "load", "goto b2"}, []string{"      x", "+     load", "+     goto b2", "-     goto b1"}},
		{"remove all", []string{"x"}, nil, []string{"-     x"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := lineDiff(c.a, c.b)
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestWithContext(t *testing.T) {
	in := []string{"      a", "      b", "      c", "      d", "+     e", "      f", "      g", "      h", "      i", "      j", "-     k"}
	want := []string{"      ... 2 unchanged", "      c", "      d", "+     e", "      f", "      g", "      ... 1 unchanged", "      i", "      j", "-     k"}
	if got := withContext(in, 2); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestGroupRemarks(t *testing.T) {
	rs := []passes.Remark{
		{Pass: "mapinline", Func: "f", Block: 1, Map: "c", Message: "per-CPU"},
		{Pass: "mapinline", Func: "f", Block: 5, Map: "r", Applied: true, Message: "inlined"},
		{Pass: "mapinline", Func: "f", Block: 3, Map: "c", Message: "per-CPU"},
		{Pass: "dce", Func: "f", Block: -1, Applied: true, Message: "removed"},
	}
	want := []string{
		"skipped mapinline  f b1 b3 [map c]: per-CPU",
		"applied mapinline  f b5 [map r]: inlined",
		"applied dce        f: removed",
	}
	if got := GroupRemarks(rs, true); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
