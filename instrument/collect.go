package instrument

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
)

// ReadCounts returns the recorded count of every key of a heat map, summed
// over CPUs, keyed by the key's bytes as a string. It does not change the
// map.
func ReadCounts(m *ebpf.Map) (map[string]uint64, error) {
	if err := checkHeatMap(m); err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	key := make([]byte, m.KeySize())
	var vals []uint64
	it := m.Iterate()
	for it.Next(&key, &vals) {
		out[string(key)] = sum(vals)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("instrument: read heat map: %w", err)
	}
	return out, nil
}

// DrainCounts is ReadCounts that also empties the map. Every entry is
// read and deleted in one system call (BPF_MAP_LOOKUP_AND_DELETE_ELEM), so
// an increment is either in the result or still in the map, never lost; a
// key recorded after its entry was drained starts a new entry for the
// next window.
func DrainCounts(m *ebpf.Map) (map[string]uint64, error) {
	keys, err := heatKeys(m)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	var vals []uint64
	for _, k := range keys {
		switch err := m.LookupAndDelete(k, &vals); {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			// Deleted meanwhile (by another reader): nothing to count.
		case err != nil:
			return nil, fmt.Errorf("instrument: drain heat map: %w", err)
		default:
			out[string(k)] += sum(vals)
		}
	}
	return out, nil
}

// Decay multiplies every count of a heat map by factor (in [0, 1]),
// rounding down, and deletes the entries that reach zero, so that counts
// kept in the kernel across windows follow the traffic. An increment made
// between reading and writing back an entry is lost; prefer draining each
// window into a heatmap.Profile, which decays in Go without that race.
func Decay(m *ebpf.Map, factor float64) error {
	if !(factor >= 0 && factor <= 1) {
		return fmt.Errorf("instrument: decay factor %v is not in [0, 1]", factor)
	}
	keys, err := heatKeys(m)
	if err != nil {
		return err
	}
	var vals []uint64
	for _, k := range keys {
		if err := m.Lookup(k, &vals); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return fmt.Errorf("instrument: decay heat map: %w", err)
		}
		var left uint64
		for i, c := range vals {
			vals[i] = uint64(math.Floor(float64(c) * factor))
			left += vals[i]
		}
		if left == 0 {
			err = m.Delete(k)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				err = nil
			}
		} else {
			err = m.Update(k, vals, ebpf.UpdateExist)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("instrument: decay heat map: %w", err)
		}
	}
	return nil
}

// Reset deletes every entry of a heat map.
func Reset(m *ebpf.Map) error {
	keys, err := heatKeys(m)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("instrument: reset heat map: %w", err)
		}
	}
	return nil
}

// Collect reads the variant's heat maps from maps (the Maps of a
// collection loaded from v.Spec) without changing them. The heatmap is
// keyed by the instrumented maps' original names and its counts are
// estimated executions: recorded counts times v.Scale(), rounded. With
// RecorderRing each CPU's ring entries stand for all samples that CPU
// wrote since the last drain.
func (v *Variant) Collect(maps map[string]*ebpf.Map) (*heatmap.Heatmap, error) {
	return v.gather(maps, false)
}

// Drain is Collect that also empties the heat maps, ending a profiling
// window: the next read sees only what was recorded after this one. A
// ring is read and then cleared in two steps, so samples written in
// between are lost (hash entries are read and deleted atomically).
func (v *Variant) Drain(maps map[string]*ebpf.Map) (*heatmap.Heatmap, error) {
	return v.gather(maps, true)
}

// Reset empties the variant's heat maps in maps.
func (v *Variant) Reset(maps map[string]*ebpf.Map) error {
	if v.Recorder == RecorderRing {
		return v.each(maps, clearRing)
	}
	return v.each(maps, Reset)
}

// Decay applies Decay to each of the variant's heat maps in maps. Rings
// hold recent samples only and cannot be decayed: use Drain and a
// heatmap.Profile.
func (v *Variant) Decay(maps map[string]*ebpf.Map, factor float64) error {
	if v.Recorder == RecorderRing {
		return errors.New("instrument: ring recorders keep only recent samples; drain them into a heatmap.Profile")
	}
	return v.each(maps, func(m *ebpf.Map) error { return Decay(m, factor) })
}

// ReadRing returns the samples in a ring recorder's map: per key, the
// number of samples its entries stand for (each CPU's entries weighted by
// the samples that CPU wrote over the entries its ring holds).
func ReadRing(m *ebpf.Map, keySize, entries uint32) (map[string]float64, error) {
	stride := ringStride(keySize, entries)
	if m == nil || m.Type() != ebpf.Array || m.MaxEntries() != 1 || m.ValueSize()%stride != 0 {
		return nil, fmt.Errorf("instrument: %v is not a ring of %d %d-byte keys", m, entries, keySize)
	}
	var val []byte
	if err := m.Lookup(uint32(0), &val); err != nil {
		return nil, fmt.Errorf("instrument: read ring: %w", err)
	}
	padded := (keySize + 7) &^ 7
	out := map[string]float64{}
	for base := uint32(0); base+stride <= uint32(len(val)); base += stride {
		pos := binary.LittleEndian.Uint64(val[base:])
		n := min(pos, uint64(entries))
		if n == 0 {
			continue
		}
		w := float64(pos) / float64(n)
		for i := uint64(0); i < n; i++ {
			at := base + lineSize + uint32(i)*padded
			out[string(val[at:at+keySize])] += w
		}
	}
	return out, nil
}

// clearRing zeroes a ring recorder's map.
func clearRing(m *ebpf.Map) error {
	if err := m.Update(uint32(0), make([]byte, m.ValueSize()), ebpf.UpdateExist); err != nil {
		return fmt.Errorf("instrument: clear ring: %w", err)
	}
	return nil
}

func (v *Variant) each(maps map[string]*ebpf.Map, fn func(*ebpf.Map) error) error {
	for _, orig := range sortedKeys(v.HeatMaps) {
		m, err := v.heatMap(maps, orig)
		if err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return fmt.Errorf("%s: %w", v.HeatMaps[orig], err)
		}
	}
	return nil
}

func (v *Variant) heatMap(maps map[string]*ebpf.Map, orig string) (*ebpf.Map, error) {
	hm := v.HeatMaps[orig]
	if m := maps[hm]; m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("instrument: heat map %q of %q is not loaded", hm, orig)
}

func (v *Variant) gather(maps map[string]*ebpf.Map, drain bool) (*heatmap.Heatmap, error) {
	h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	scale := v.Scale()
	for _, orig := range sortedKeys(v.HeatMaps) {
		m, err := v.heatMap(maps, orig)
		if err != nil {
			return nil, err
		}
		counts, err := v.read(m, orig, drain)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.HeatMaps[orig], err)
		}
		keys := make([]heatmap.Key, 0, len(counts))
		for k, c := range counts {
			keys = append(keys, heatmap.Key{Key: []byte(k), Count: uint64(math.Round(c * scale))})
		}
		sort.Slice(keys, func(i, j int) bool {
			if keys[i].Count != keys[j].Count {
				return keys[i].Count > keys[j].Count
			}
			return bytes.Compare(keys[i].Key, keys[j].Key) < 0
		})
		h.Maps[orig] = keys
	}
	return h, nil
}

// read returns the samples recorded for map orig in m, as counts.
func (v *Variant) read(m *ebpf.Map, orig string, drain bool) (map[string]float64, error) {
	if v.Recorder == RecorderRing {
		ms := v.Spec.Maps[orig]
		if ms == nil {
			return nil, fmt.Errorf("instrument: map %q is not in the variant's spec", orig)
		}
		out, err := ReadRing(m, ms.KeySize, v.RingEntries)
		if err == nil && drain {
			err = clearRing(m)
		}
		return out, err
	}
	read := ReadCounts
	if drain {
		read = DrainCounts
	}
	counts, err := read(m)
	if err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(counts))
	for k, c := range counts {
		out[k] = float64(c)
	}
	return out, nil
}

func checkHeatMap(m *ebpf.Map) error {
	if m == nil {
		return errors.New("instrument: nil heat map")
	}
	if m.Type() != ebpf.PerCPUHash || m.ValueSize() != 8 {
		return fmt.Errorf("instrument: %v is not a heat map (per-CPU hash of u64)", m)
	}
	return nil
}

// heatKeys lists the keys of a heat map. Deleting while iterating would
// restart the kernel's walk, so the keys are collected first.
func heatKeys(m *ebpf.Map) ([][]byte, error) {
	if err := checkHeatMap(m); err != nil {
		return nil, err
	}
	var keys [][]byte
	var prev any // nil asks for the first key
	for {
		next := make([]byte, m.KeySize())
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return keys, nil
		}
		if err != nil {
			return nil, fmt.Errorf("instrument: list heat map: %w", err)
		}
		keys = append(keys, next)
		prev = next
	}
}

func sum(vals []uint64) uint64 {
	var s uint64
	for _, v := range vals {
		s += v
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
