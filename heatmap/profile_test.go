package heatmap

import (
	"fmt"
	"testing"
)

func hm(counts map[string]uint64) *Heatmap {
	h := &Heatmap{Maps: map[string][]Key{}}
	for k, c := range counts {
		h.Maps["m"] = append(h.Maps["m"], Key{Key: []byte(k), Count: c})
	}
	return h
}

func countsOf(h *Heatmap) map[string]uint64 {
	out := map[string]uint64{}
	for _, k := range h.Maps["m"] {
		out[string(k.Key)] = k.Count
	}
	return out
}

func TestMerge(t *testing.T) {
	got := countsOf(Merge(hm(map[string]uint64{"a": 2, "b": 1}), nil, hm(map[string]uint64{"a": 3, "c": 4})))
	want := map[string]uint64{"a": 5, "b": 1, "c": 4}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("merge = %v, want %v", got, want)
	}
}

func TestProfileDecay(t *testing.T) {
	tests := []struct {
		name    string
		decay   float64
		windows []map[string]uint64
		want    map[string]uint64
	}{
		{"sum", 1, []map[string]uint64{{"a": 4}, {"a": 4, "b": 1}}, map[string]uint64{"a": 8, "b": 1}},
		{"last window only", 0, []map[string]uint64{{"a": 100}, {"b": 3}}, map[string]uint64{"b": 3}},
		{"halve", 0.5, []map[string]uint64{{"a": 8, "b": 1}, {"c": 2}, {}}, map[string]uint64{"a": 2, "c": 1}},
		// b decays to 0.25 < DefaultMinCount and is forgotten.
		{"forget cold keys", 0.5, []map[string]uint64{{"b": 1}, {}, {}}, map[string]uint64{}},
		{"traffic shift", 0.5, []map[string]uint64{{"old": 100}, {"new": 100}, {"new": 100}}, map[string]uint64{"old": 25, "new": 150}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewProfile(tc.decay)
			for _, w := range tc.windows {
				p.Merge(hm(w))
			}
			if p.Windows() != len(tc.windows) {
				t.Errorf("windows = %d", p.Windows())
			}
			if got := countsOf(p.Heatmap()); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("profile = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestProfileTopFollowsTraffic(t *testing.T) {
	p := NewProfile(0.5)
	p.Merge(hm(map[string]uint64{"old": 1000, "new": 10}))
	p.Merge(hm(map[string]uint64{"new": 600}))
	p.Merge(hm(map[string]uint64{"new": 600}))
	if top := p.Heatmap().Top("m", 1); string(top[0].Key) != "new" {
		t.Fatalf("top key %q, want new", top[0].Key)
	}
}

// A profile keeps a decayed sum of the windows the agent drains from the
// kernel's heat maps.
func ExampleProfile() {
	p := NewProfile(0.5)
	p.Merge(&Heatmap{Maps: map[string][]Key{"routes": {{Key: []byte{1}, Count: 80}, {Key: []byte{2}, Count: 20}}}})
	p.Merge(&Heatmap{Maps: map[string][]Key{"routes": {{Key: []byte{2}, Count: 100}}}})
	for _, k := range p.Heatmap().Top("routes", 2) {
		fmt.Printf("%x %d\n", []byte(k.Key), k.Count)
	}
	// Output:
	// 02 110
	// 01 40
}
