package mapstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrNotIterable is returned by Snapshot for maps whose contents cannot be
// read back from user space (for example program arrays).
var ErrNotIterable = errors.New("map contents cannot be read from user space")

// Raw is a map's contents as two flat buffers, the form a batch lookup
// returns. Comparing two Raw snapshots costs no allocation per entry,
// which is what the differential test does after every packet.
type Raw struct {
	KeySize   int
	ValueSize int // per CPU
	CPUs      int // 1 unless the map is per-CPU
	PerCPU    bool
	N         int    // number of entries
	Keys      []byte // N * KeySize
	Values    []byte // N * CPUs * ValueSize
	// Iterated is set when the map was read key by key (no batch
	// support): reading it costs two system calls per entry.
	Iterated bool

	// Batch buffers, kept for the next Read of a map of the same shape.
	keyBuf, valBuf reflect.Value
}

// Key returns the i-th key.
func (r *Raw) Key(i int) []byte { return r.Keys[i*r.KeySize : (i+1)*r.KeySize : (i+1)*r.KeySize] }

// Value returns all values (every CPU's) of the i-th entry.
func (r *Raw) Value(i int) []byte {
	n := r.CPUs * r.ValueSize
	return r.Values[i*n : (i+1)*n : (i+1)*n]
}

// ReadRaw reads every entry of m, in the order the kernel returns them.
//
// Maps are read with batch lookups (BPF_MAP_LOOKUP_BATCH): a few system
// calls per map instead of two per entry. The differential test snapshots
// every map of three collections; nf/lb's 261k-slot ring array took
// seconds entry by entry. Map types without batch support (LPM tries, for
// one) are iterated key by key.
func ReadRaw(m *ebpf.Map) (*Raw, error) {
	r := &Raw{}
	if err := r.Read(m); err != nil {
		return nil, err
	}
	return r, nil
}

// Read is ReadRaw into r, reusing r's buffers: a caller reading the same
// map over and over (the differential test, after every packet) allocates
// nothing once the buffers have grown.
func (r *Raw) Read(m *ebpf.Map) error {
	switch m.Type() {
	case ebpf.ProgramArray, ebpf.PerfEventArray, ebpf.RingBuf, ebpf.ArrayOfMaps, ebpf.HashOfMaps,
		ebpf.DevMap, ebpf.DevMapHash, ebpf.CPUMap, ebpf.XSKMap, ebpf.SockMap, ebpf.SockHash:
		return ErrNotIterable
	}
	r.KeySize, r.ValueSize, r.CPUs, r.PerCPU = int(m.KeySize()), int(m.ValueSize()), 1, PerCPU(m.Type())
	if r.PerCPU {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return err
		}
		r.CPUs = n
	}
	r.Iterated = false
	err := r.readBatch(m)
	if errors.Is(err, errNoBatch) {
		r.Iterated = true
		err = r.readIterate(m)
	}
	return err
}

// SnapshotMap reads every entry of m, sorted by key. Per-CPU values are
// returned per CPU in Values.
func SnapshotMap(m *ebpf.Map) (*Map, error) {
	r, err := ReadRaw(m)
	if err != nil {
		return nil, err
	}
	r.Sort()
	return r.Map(), nil
}

// Map converts r to entries that share r's buffers.
func (r *Raw) Map() *Map {
	out := &Map{}
	if r.N == 0 {
		return out
	}
	out.Entries = make([]Entry, r.N)
	for i := range r.N {
		e := &out.Entries[i]
		e.Key = r.Key(i)
		v := r.Value(i)
		if !r.PerCPU {
			e.Value = v
			continue
		}
		e.Values = make([]Hex, r.CPUs)
		for c := range r.CPUs {
			e.Values[c] = v[c*r.ValueSize : (c+1)*r.ValueSize : (c+1)*r.ValueSize]
		}
	}
	return out
}

// Sort orders the entries by key bytes. It sorts indices by the keys'
// first eight bytes (read big-endian, so integer order is byte order) and
// permutes the buffers once.
func (r *Raw) Sort() {
	type item struct {
		prefix uint64
		i      int
	}
	items := make([]item, r.N)
	sorted := true
	for i := range r.N {
		var p [8]byte
		k := r.Key(i)
		copy(p[:], k)
		items[i] = item{binary.BigEndian.Uint64(p[:]), i}
		if i > 0 && sorted && bytes.Compare(r.Key(i-1), k) > 0 {
			sorted = false
		}
	}
	if sorted {
		return
	}
	slices.SortFunc(items, func(a, b item) int {
		if a.prefix != b.prefix {
			if a.prefix < b.prefix {
				return -1
			}
			return 1
		}
		return bytes.Compare(r.Key(a.i), r.Key(b.i))
	})
	keys := make([]byte, 0, len(r.Keys))
	vals := make([]byte, 0, len(r.Values))
	for _, it := range items {
		keys = append(keys, r.Key(it.i)...)
		vals = append(vals, r.Value(it.i)...)
	}
	r.Keys, r.Values = keys, vals
}

// Equal reports whether r and o hold the same entries. Both must be
// sorted (see Sort) unless they come from maps that list their keys in a
// fixed order (arrays).
func (r *Raw) Equal(o *Raw) bool {
	return r.N == o.N && r.KeySize == o.KeySize && r.ValueSize == o.ValueSize && r.CPUs == o.CPUs &&
		bytes.Equal(r.Keys, o.Keys) && bytes.Equal(r.Values, o.Values)
}

// errNoBatch says that the map does not support batch lookups.
var errNoBatch = errors.New("no batch lookup")

// batchBytes bounds the buffers of one batch lookup.
const batchBytes = 8 << 20

// batchEntries bounds the entries of one batch lookup.
const batchEntries = 4096

// readBatch reads m with batch lookups. It returns errNoBatch when the
// kernel refuses the first batch for a reason other than its size.
func (r *Raw) readBatch(m *ebpf.Map) error {
	if r.KeySize == 0 || r.ValueSize == 0 {
		return errNoBatch
	}
	// Hash maps fail a batch smaller than their largest bucket with
	// ENOSPC; grow on that error. The batch is sized by the entries, not
	// by MaxEntries: a 65,536-slot hash holding a few hundred entries
	// (the DDoS filter's rate table in the differential test) needs no
	// 2 MiB of buffers per read.
	chunk := min(max(int(m.MaxEntries()), 1), max(batchBytes/(r.KeySize+r.CPUs*r.ValueSize), 64), batchEntries)
	for {
		err := r.readBatches(m, chunk)
		if errors.Is(err, unix.ENOSPC) && chunk < int(m.MaxEntries()) {
			chunk *= 4
			continue
		}
		return err
	}
}

func (r *Raw) readBatches(m *ebpf.Map, chunk int) error {
	// Slices of [KeySize]byte and [ValueSize]byte let cilium/ebpf size the
	// batch from the slice length; their backing memory is contiguous
	// (byte arrays have no padding), so a batch is copied out whole.
	byteT := reflect.TypeOf(byte(0))
	keyT, valT := reflect.ArrayOf(r.KeySize, byteT), reflect.ArrayOf(r.ValueSize, byteT)
	if !r.keyBuf.IsValid() || r.keyBuf.Len() != chunk || r.keyBuf.Type().Elem() != keyT || r.valBuf.Type().Elem() != valT || r.valBuf.Len() != chunk*r.CPUs {
		r.keyBuf = reflect.MakeSlice(reflect.SliceOf(keyT), chunk, chunk)
		r.valBuf = reflect.MakeSlice(reflect.SliceOf(valT), chunk*r.CPUs, chunk*r.CPUs)
	}
	keys, vals := r.keyBuf, r.valBuf
	r.N, r.Keys, r.Values = 0, r.Keys[:0], r.Values[:0]
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := m.BatchLookup(&cursor, keys.Interface(), vals.Interface(), nil)
		done := errors.Is(err, ebpf.ErrKeyNotExist)
		if err != nil && !done {
			if first && !errors.Is(err, unix.ENOSPC) {
				return fmt.Errorf("%w: %v", errNoBatch, err)
			}
			return err
		}
		r.N += n
		r.Keys = append(r.Keys, unsafe.Slice((*byte)(keys.UnsafePointer()), n*r.KeySize)...)
		r.Values = append(r.Values, unsafe.Slice((*byte)(vals.UnsafePointer()), n*r.CPUs*r.ValueSize)...)
		if done {
			return nil
		}
	}
}

// readIterate reads m key by key.
func (r *Raw) readIterate(m *ebpf.Map) error {
	r.N, r.Keys, r.Values = 0, r.Keys[:0], r.Values[:0]
	key := make([]byte, r.KeySize)
	it := m.Iterate()
	if r.PerCPU {
		var vals [][]byte
		for it.Next(&key, &vals) {
			r.N++
			r.Keys = append(r.Keys, key...)
			for _, v := range vals {
				r.Values = append(r.Values, v...)
			}
		}
	} else {
		val := make([]byte, r.ValueSize)
		for it.Next(&key, &val) {
			r.N++
			r.Keys = append(r.Keys, key...)
			r.Values = append(r.Values, val...)
		}
	}
	return it.Err()
}
