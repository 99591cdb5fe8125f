package verify

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
)

// TestResetMap checks that resetMap leaves a map holding exactly the
// wanted entries whatever it held before, for the types reset by
// difference (hash, array, LPM trie) and those emptied and refilled
// (LRU, per-CPU): wanted entries kept, changed, missing; unwanted ones;
// a key wanted twice (the last value wins); an empty state.
func TestResetMap(t *testing.T) {
	kerneltest.Require(t)
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	lpm := func(plen uint32, a byte) []byte { return append(u32(plen), 10, a, 0, 0) }
	type kv struct{ k, v []byte }
	tests := []struct {
		name   string
		spec   ebpf.MapSpec
		before []kv
		want   []kv
		result []kv // the map afterwards; nil: want
	}{
		{
			name:   "hash",
			spec:   ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 128},
			before: []kv{{u32(1), u32(10)}, {u32(2), u32(20)}, {u32(3), u32(30)}},
			want:   []kv{{u32(1), u32(10)}, {u32(2), u32(21)}, {u32(4), u32(40)}, {u32(4), u32(41)}},
			result: []kv{{u32(1), u32(10)}, {u32(2), u32(21)}, {u32(4), u32(41)}},
		},
		{
			name: "hash emptied",
			spec: ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 512},
			before: func() (b []kv) {
				for i := range 300 {
					b = append(b, kv{u32(uint32(i)), u32(1)})
				}
				return b
			}(),
			result: []kv{},
		},
		{
			name:   "array",
			spec:   ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 4},
			before: []kv{{u32(0), u32(5)}, {u32(1), u32(6)}, {u32(3), u32(7)}},
			want:   []kv{{u32(1), u32(6)}, {u32(2), u32(8)}},
			result: []kv{{u32(0), u32(0)}, {u32(1), u32(6)}, {u32(2), u32(8)}, {u32(3), u32(0)}},
		},
		{
			name:   "lpm",
			spec:   ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 64, Flags: bpfFNoPrealloc},
			before: []kv{{lpm(16, 0), u32(1)}, {lpm(24, 1), u32(2)}},
			want:   []kv{{lpm(16, 0), u32(1)}, {lpm(24, 2), u32(3)}},
		},
		{
			name:   "lru",
			spec:   ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 4, ValueSize: 4, MaxEntries: 128},
			before: []kv{{u32(1), u32(10)}, {u32(2), u32(20)}},
			want:   []kv{{u32(2), u32(22)}, {u32(3), u32(33)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ebpf.NewMap(&tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for _, e := range tt.before {
				if err := m.Put(e.k, e.v); err != nil {
					t.Fatal(err)
				}
			}
			want := &mapstate.Map{}
			for _, e := range tt.want {
				want.Entries = append(want.Entries, mapstate.Entry{Key: e.k, Value: e.v})
			}
			if err := resetMap("m", m, &tt.spec, want); err != nil {
				t.Fatal(err)
			}
			exp := tt.result
			if exp == nil {
				exp = tt.want
			}
			wantRaw := map[string]string{}
			for _, e := range exp {
				wantRaw[string(e.k)] = string(e.v)
			}
			var raw mapstate.Raw
			if err := raw.Read(m); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for i := range raw.N {
				got[string(raw.Key(i))] = string(raw.Value(i))
			}
			if len(got) != len(wantRaw) {
				t.Fatalf("map holds %d entries, want %d: %x", len(got), len(wantRaw), got)
			}
			for k, v := range wantRaw {
				if got[k] != v {
					t.Errorf("key %x: value %x, want %x", k, got[k], v)
				}
			}
		})
	}
}
