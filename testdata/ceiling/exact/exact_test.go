//go:build linux

// Package exact belongs to the ceiling experiment (see ../README.md). Its test
// checks the claim that the FREE_* variants and the oracles behave like
// the original NF on the bench scenarios.
package exact

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/traffic"
)

// timestamps are the value bytes holding clock readings, which differ
// between any two runs: the FDB's updated_ns and a connection's
// last_seen_ns.
var timestamps = map[string][2]int{"fdb": {8, 16}, "conns": {8, 16}}

// TestExact replays each bench scenario's trace (the bench command's
// defaults, every locality), packet by packet, through the original NF and
// each exact variant (copy, free_*, the oracles, wide_keys), each loaded with the warmed state, and requires the
// same verdict and output frame for every packet and the same map contents
// at the end (clock readings aside). Run it as root:
//
//	go test ./testdata/ceiling/exact/
func TestExact(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		nf       string
		variants []string
	}{
		// oracle_nolearn is exact on these scenarios only: every source
		// is learned in the warm-up.
		{"l2switch", []string{"copy", "free_ports", "free_vlans", "free_src", "free_dst", "oracle", "oracle_nolearn", "wide_keys"}},
		{"lb", []string{"copy", "free_vips", "free_backends", "oracle", "wide_keys"}},
	} {
		for _, loc := range traffic.Localities {
			t.Run(tc.nf+"/"+string(loc), func(t *testing.T) {
				sc, err := bench.NewScenario(bench.ScenarioOptions{NF: tc.nf, Flows: bench.DefaultFlows, Trace: traffic.Options{
					Packets: 100000, Locality: loc, PacketSize: 64, MissShare: 0.1, Seed: 1,
				}})
				if err != nil {
					t.Fatal(err)
				}
				if err := sc.Warm(context.Background()); err != nil {
					t.Fatal(err)
				}
				for _, v := range tc.variants {
					t.Run(v, func(t *testing.T) { compare(t, sc, "../"+tc.nf+"_"+v+".o") })
				}
			})
		}
	}
}

func compare(t *testing.T, sc *bench.Scenario, object string) {
	// Both programs' runs must land in the same per-CPU slots.
	kerneltest.PinCPU(t)
	orig, err := sc.State.Load(sc.Spec.Copy(), ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	spec, err := ebpf.LoadCollectionSpec(object)
	if err != nil {
		t.Fatal(err)
	}
	variant, err := sc.State.Load(spec, ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer variant.Close()
	ctx := kerneltest.XDPContext(sc.Ingress)
	run := func(p *ebpf.Program, frame []byte) (uint32, []byte) {
		out := make([]byte, len(frame)+256)
		opts := ebpf.RunOptions{Data: frame, DataOut: out, Context: ctx}
		ret, err := p.Run(&opts)
		if err != nil {
			t.Fatal(err)
		}
		return ret, opts.DataOut
	}
	mismatches := 0
	for i, f := range sc.Frames {
		r1, o1 := run(orig.Programs[sc.Program], f)
		r2, o2 := run(variant.Programs[sc.Program], f)
		if r1 != r2 || !bytes.Equal(o1, o2) {
			if mismatches++; mismatches <= 5 {
				t.Errorf("packet %d: original %d %x, variant %d %x", i, r1, o1, r2, o2)
			}
		}
	}
	if mismatches > 0 {
		t.Fatalf("%d of %d packets differ", mismatches, len(sc.Frames))
	}
	for name, m := range orig.Maps {
		if name == ".rodata" || m.Type() == ebpf.ProgramArray {
			continue
		}
		a, err := snapshot(m, timestamps[name])
		if err != nil {
			t.Fatal(err)
		}
		b, err := snapshot(variant.Maps[name], timestamps[name])
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("map %s differs after the trace", name)
		}
	}
}

// snapshot renders a map's contents with the bytes in mask zeroed.
func snapshot(m *ebpf.Map, mask [2]int) (string, error) {
	s, err := mapstate.SnapshotMap(m)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	for _, e := range s.Entries {
		for _, v := range append([]mapstate.Hex{e.Value}, e.Values...) {
			if len(v) >= mask[1] {
				clear(v[mask[0]:mask[1]])
			}
		}
		fmt.Fprintf(&b, "%x=%x%x\n", e.Key, e.Value, e.Values)
	}
	return b.String(), nil
}
