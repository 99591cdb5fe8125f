package mapstate

import (
	"bytes"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, json, want string
	}{
		{"not json", `{`, "map state"},
		{"unknown field", `{"maps": {}, "mapz": 1}`, "unknown field"},
		{"bad hex", `{"maps": {"m": {"entries": [{"key": "zz", "value": "00"}]}}}`, "bad hex"},
		{"missing key", `{"maps": {"m": {"entries": [{"value": "00"}]}}}`, `map "m" entry 0: missing "key"`},
		{"value and values", `{"maps": {"m": {"entries": [{"key": "00", "value": "00", "values": ["00"]}]}}}`, "not both"},
		{"null map", `{"maps": {"m": null}}`, `map "m"`},
		{"number as key", `{"maps": {"m": {"entries": [{"key": 5}]}}}`, "hex string"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.json))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestCheckSizes(t *testing.T) {
	spec := &ebpf.CollectionSpec{Maps: map[string]*ebpf.MapSpec{
		"h": {Name: "h", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 2},
	}}
	cases := []struct {
		name, json, want string
	}{
		{"ok", `{"maps": {"h": {"entries": [{"key": "01000000", "value": "0x0000000000000001"}]}}}`, ""},
		{"short key", `{"maps": {"h": {"entries": [{"key": "01", "value": "0000000000000001"}]}}}`, `map "h" entry 0: key has 1 bytes, map key size is 4`},
		{"long value", `{"maps": {"h": {"entries": [{"key": "01000000", "value": "000000000000000100"}]}}}`, "value 0: has 9 bytes"},
		{"unknown map", `{"maps": {"x": {"entries": []}}}`, `map "x" does not exist`},
		{"too many", `{"maps": {"h": {"entries": [{"key": "01000000", "value": "0000000000000000"}, {"key": "02000000", "value": "0000000000000000"}, {"key": "03000000", "value": "0000000000000000"}]}}}`, "at most 2"},
		{"values on non-per-cpu", `{"maps": {"h": {"entries": [{"key": "01000000", "values": ["0000000000000000"]}]}}}`, "only for per-CPU"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse(strings.NewReader(c.json))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Check(spec)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestApplyAndSnapshot(t *testing.T) {
	kerneltest.Require(t)
	hash, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer hash.Close()
	percpu, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer percpu.Close()

	s := New()
	s.Put("h", []byte{2, 0, 0, 0}, []byte{0xbb, 0, 0, 0})
	s.Put("h", []byte{1, 0, 0, 0}, []byte{0xaa, 0, 0, 0})
	s.Put("p", []byte{1, 0, 0, 0}, []byte{7, 0, 0, 0, 0, 0, 0, 0})
	if err := s.Apply(map[string]*ebpf.Map{"h": hash, "p": percpu}); err != nil {
		t.Fatal(err)
	}
	got, err := SnapshotMap(hash)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != 2 || !bytes.Equal(got.Entries[0].Key, []byte{1, 0, 0, 0}) || got.Entries[0].Value[0] != 0xaa {
		t.Fatalf("hash snapshot not sorted or wrong: %+v", got.Entries)
	}
	pc, err := SnapshotMap(percpu)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := ebpf.PossibleCPU()
	e := pc.Entries[1]
	if len(e.Values) != n {
		t.Fatalf("per-CPU entry has %d values, want one per CPU (%d)", len(e.Values), n)
	}
	for cpu, v := range e.Values {
		if v[0] != 7 {
			t.Fatalf("cpu %d value %x: a single value must be written to every CPU", cpu, v)
		}
	}
	if err := s.Apply(map[string]*ebpf.Map{"h": hash}); err == nil || !strings.Contains(err.Error(), `map "p" does not exist`) {
		t.Fatalf("missing map: got %v", err)
	}
}

// TestSnapshotBatchMatchesIteration fills maps of every kind that batch
// lookups treat differently (arrays, hashes with their bucket-size
// limit, per-CPU values padded to 8 bytes, LPM tries without batch
// support) and checks that SnapshotMap returns what key-by-key iteration
// returns.
func TestSnapshotBatchMatchesIteration(t *testing.T) {
	kerneltest.Require(t)
	cases := []struct {
		name    string
		spec    ebpf.MapSpec
		entries int
	}{
		{"array", ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 100_000}, 0},
		{"array odd value", ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 7, MaxEntries: 300}, 0},
		{"hash", ebpf.MapSpec{Type: ebpf.Hash, KeySize: 12, ValueSize: 16, MaxEntries: 20_000}, 20_000},
		{"hash small", ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 8}, 3},
		{"hash empty", ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 8}, 0},
		{"lru hash", ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 8, ValueSize: 8, MaxEntries: 4096}, 1000},
		{"percpu array", ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 12, MaxEntries: 50}, 0},
		{"percpu hash", ebpf.MapSpec{Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 16, MaxEntries: 2000}, 1500},
		{"lpm trie", ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 500, Flags: 1}, 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := ebpf.NewMap(&c.spec)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			s := New()
			n := c.entries
			if c.spec.Type == ebpf.Array || c.spec.Type == ebpf.PerCPUArray {
				n = int(c.spec.MaxEntries) / 3 // arrays hold every index anyway
			}
			for i := range n {
				key := make([]byte, c.spec.KeySize)
				val := make([]byte, c.spec.ValueSize)
				for j := range key {
					key[j] = byte(i >> (8 * (j % 4)))
				}
				if c.spec.Type == ebpf.LPMTrie {
					key[0], key[1], key[2], key[3] = 32, 0, 0, 0
				}
				for j := range val {
					val[j] = byte(i*7 + j)
				}
				s.Put("m", key, val)
			}
			if err := s.Apply(map[string]*ebpf.Map{"m": m}); err != nil {
				t.Fatal(err)
			}
			got, err := SnapshotMap(m)
			if err != nil {
				t.Fatal(err)
			}
			raw := &Raw{KeySize: int(m.KeySize()), ValueSize: int(m.ValueSize()), CPUs: 1, PerCPU: PerCPU(m.Type())}
			if raw.PerCPU {
				raw.CPUs, _ = ebpf.PossibleCPU()
			}
			if err := raw.readIterate(m); err != nil {
				t.Fatal(err)
			}
			want := raw.Map()
			sort.Slice(want.Entries, func(i, j int) bool { return bytes.Compare(want.Entries[i].Key, want.Entries[j].Key) < 0 })
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("batch snapshot (%d entries) differs from iteration (%d entries)", len(got.Entries), len(want.Entries))
			}
			if len(got.Entries) < n {
				t.Fatalf("snapshot has %d entries, %d were written", len(got.Entries), n)
			}
		})
	}
}

// BenchmarkSnapshotArray reads an array of the size of nf/lb's ring
// (256 VIPs x 1021 slots) with batch lookups and key by key.
func BenchmarkSnapshotArray(b *testing.B) {
	kerneltest.Require(b)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 256 * 1021})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for _, bc := range []struct {
		name string
		fn   func(*ebpf.Map) (*Map, error)
	}{{"batch", SnapshotMap}, {"iterate", func(m *ebpf.Map) (*Map, error) {
		r := &Raw{KeySize: 4, ValueSize: 4, CPUs: 1}
		if err := r.readIterate(m); err != nil {
			return nil, err
		}
		r.Sort()
		return r.Map(), nil
	}}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := bc.fn(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadRawSparseHash reads a hash map with 65,536 slots and 100
// entries (nf/firewall's connection table early in a trace): a batch
// lookup walks every bucket, so its cost follows the map's capacity.
func BenchmarkReadRawSparseHash(b *testing.B) {
	kerneltest.Require(b)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 24, MaxEntries: 65536})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for i := range 100 {
		key := make([]byte, 16)
		key[0], key[1] = byte(i), 1
		if err := m.Put(key, make([]byte, 24)); err != nil {
			b.Fatal(err)
		}
	}
	var r Raw
	for b.Loop() {
		if err := r.Read(m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadRawArray reads an array of 4,096 entries, the automatic
// per-packet check limit of the differential test.
func BenchmarkReadRawArray(b *testing.B) {
	kerneltest.Require(b)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 4096})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	var r Raw
	for b.Loop() {
		if err := r.Read(m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadRawLPM reads an LPM trie of 500 entries.
func BenchmarkReadRawLPM(b *testing.B) {
	kerneltest.Require(b)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 1000, Flags: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for i := range 500 {
		if err := m.Put([]byte{24, 0, 0, 0, 10, byte(i >> 8), byte(i), 0}, make([]byte, 8)); err != nil {
			b.Fatal(err)
		}
	}
	var r Raw
	for b.Loop() {
		if err := r.Read(m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(map[bool]float64{true: 1}[r.Iterated], "iterated")
}
