//go:build linux

package bench

import (
	"context"
	"testing"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/traffic"
)

// TestWarm checks that Warm leaves the state the NF's own writes create:
// the switch learns its flows' source addresses, the load balancer pins its
// flows in the connection table, and maps the data plane only reads keep
// the configuration's contents.
func TestWarm(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		nf       string
		written  string // a map the data plane fills
		readOnly string // a map the data plane only reads
	}{
		{nf: "l2switch", written: "fdb", readOnly: "vlans"},
		{nf: "lb", written: "conns", readOnly: "vips"},
	} {
		t.Run(tc.nf, func(t *testing.T) {
			sc, err := NewScenario(ScenarioOptions{NF: tc.nf, Flows: 100, Trace: traffic.Options{
				Packets: 2048, Locality: traffic.LocalityHigh, MissShare: 0.1, Seed: 3,
			}})
			if err != nil {
				t.Fatal(err)
			}
			before := entries(sc, tc.written)
			ro := entries(sc, tc.readOnly)
			if err := sc.Warm(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := entries(sc, tc.written); got <= before {
				t.Errorf("%s: %d entries after the warm-up, %d before: the NF's writes are missing", tc.written, got, before)
			}
			if got := entries(sc, tc.readOnly); got != ro {
				t.Errorf("%s: %d entries after the warm-up, want the configuration's %d", tc.readOnly, got, ro)
			}
			if sc.State.Variables == nil && tc.nf == "lb" {
				t.Error("the configuration's global variables were dropped")
			}
			n := entries(sc, tc.written)
			if err := sc.Warm(context.Background()); err != nil || entries(sc, tc.written) != n {
				t.Errorf("a second Warm changed the state (err %v)", err)
			}
		})
	}
}

func entries(sc *Scenario, m string) int {
	if s := sc.State.Maps[m]; s != nil {
		return len(s.Entries)
	}
	return 0
}
