package verify

import (
	"reflect"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
)

// TestCompareSorted checks that comparing sorted snapshots with the same
// keys in step reports exactly what compareMap reports: mismatches,
// nondeterministic bytes, per-CPU values.
func TestCompareSorted(t *testing.T) {
	raw := func(perCPU bool, cpus int, keys []byte, vals []byte) *mapstate.Raw {
		return &mapstate.Raw{KeySize: 1, ValueSize: 2, CPUs: cpus, PerCPU: perCPU, N: len(keys), Keys: keys, Values: vals}
	}
	tests := []struct {
		name    string
		typ     ebpf.MapType
		perCPU  bool
		cpus    int
		a, b, c []byte // values of keys 1, 2, 3
		// mismatches and nondeterministic bytes expected.
		mismatches, nd int
	}{
		{"equal", ebpf.Hash, false, 1, []byte{1, 1, 2, 2, 3, 3}, []byte{1, 1, 2, 2, 3, 3}, []byte{1, 1, 2, 2, 3, 3}, 0, 0},
		{"candidate differs", ebpf.Hash, false, 1, []byte{1, 1, 2, 2, 3, 3}, []byte{1, 1, 2, 2, 3, 3}, []byte{1, 1, 2, 9, 3, 3}, 1, 0},
		{"clock", ebpf.Hash, false, 1, []byte{1, 1, 2, 2, 3, 3}, []byte{1, 1, 7, 2, 3, 3}, []byte{1, 1, 5, 2, 3, 3}, 0, 1},
		{"clock and mismatch", ebpf.Hash, false, 1, []byte{1, 1, 2, 2, 3, 3}, []byte{1, 1, 7, 2, 3, 3}, []byte{1, 8, 5, 2, 3, 4}, 2, 1},
		{"per CPU", ebpf.PerCPUHash, true, 2, []byte{1, 1, 0, 0, 2, 2, 0, 0, 3, 3, 0, 0}, []byte{1, 1, 0, 0, 2, 2, 0, 5, 3, 3, 0, 0}, []byte{1, 1, 0, 1, 2, 2, 0, 4, 3, 3, 0, 0}, 1, 2},
	}
	keys := []byte{1, 2, 3}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := func(sorted bool) *Report {
				d := &differ{ndLoc: map[string]struct{}{}, reported: map[string]struct{}{}, maxMismatches: 100,
					report: &Report{Mismatches: []Mismatch{}}}
				a, b, c := raw(tt.perCPU, tt.cpus, keys, tt.a), raw(tt.perCPU, tt.cpus, keys, tt.b), raw(tt.perCPU, tt.cpus, keys, tt.c)
				if sorted {
					if !sameKeys(a, b) || !sameKeys(a, c) {
						t.Fatal("sameKeys: false for the same keys")
					}
					d.compareSorted(3, "m", tt.typ, a, b, c)
				} else {
					d.compareMap(3, "m", tt.typ, a.Map(), b.Map(), c.Map())
				}
				return d.report
			}
			got, want := run(true), run(false)
			if got.MismatchCount != tt.mismatches || got.Nondeterministic.MapBytes != tt.nd {
				t.Errorf("%d mismatches, %d nondeterministic bytes; want %d, %d", got.MismatchCount, got.Nondeterministic.MapBytes, tt.mismatches, tt.nd)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("in step: %+v\nindexed: %+v", got, want)
			}
		})
	}
}
