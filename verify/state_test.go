package verify

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
)

// TestApplyStateBatches writes maps large enough for batch updates (and a
// key listed twice, whose last value must win) and reads them back.
func TestApplyStateBatches(t *testing.T) {
	kerneltest.Require(t)
	for _, typ := range []ebpf.MapType{ebpf.Hash, ebpf.Array, ebpf.LPMTrie} {
		t.Run(typ.String(), func(t *testing.T) {
			spec := &ebpf.MapSpec{Type: typ, KeySize: 4, ValueSize: 8, MaxEntries: 1024}
			key := func(i uint32) []byte { return binary.BigEndian.AppendUint32(nil, i) }
			if typ == ebpf.LPMTrie {
				spec.KeySize, spec.Flags = 8, bpfFNoPrealloc
				key = func(i uint32) []byte {
					return binary.BigEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 32), i)
				}
			} else if typ == ebpf.Array {
				key = func(i uint32) []byte { return binary.LittleEndian.AppendUint32(nil, i) }
			}
			m, err := ebpf.NewMap(spec)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			st := mapstate.New()
			const n = 3 * batchMin
			for i := range uint32(n) {
				st.Put("m", key(i), binary.LittleEndian.AppendUint64(nil, uint64(i)))
			}
			st.Put("m", key(5), binary.LittleEndian.AppendUint64(nil, 99))
			if err := applyState(st, map[string]*ebpf.Map{"m": m}); err != nil {
				t.Fatal(err)
			}
			for i := range uint32(n) {
				want := uint64(i)
				if i == 5 {
					want = 99
				}
				var got []byte
				if err := m.Lookup(key(i), &got); err != nil {
					t.Fatalf("key %d: %v", i, err)
				}
				if !bytes.Equal(got, binary.LittleEndian.AppendUint64(nil, want)) {
					t.Fatalf("key %d: %x, want %d", i, got, want)
				}
			}
		})
	}
}
