package instrument

import (
	"bytes"
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
// estimated executions: recorded counts times v.Scale(), rounded.
func (v *Variant) Collect(maps map[string]*ebpf.Map) (*heatmap.Heatmap, error) {
	return v.gather(maps, ReadCounts)
}

// Drain is Collect that also empties the heat maps, ending a profiling
// window: the next read sees only what was recorded after this one.
func (v *Variant) Drain(maps map[string]*ebpf.Map) (*heatmap.Heatmap, error) {
	return v.gather(maps, DrainCounts)
}

// Reset empties the variant's heat maps in maps.
func (v *Variant) Reset(maps map[string]*ebpf.Map) error {
	return v.each(maps, Reset)
}

// Decay applies Decay to each of the variant's heat maps in maps.
func (v *Variant) Decay(maps map[string]*ebpf.Map, factor float64) error {
	return v.each(maps, func(m *ebpf.Map) error { return Decay(m, factor) })
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

func (v *Variant) gather(maps map[string]*ebpf.Map, read func(*ebpf.Map) (map[string]uint64, error)) (*heatmap.Heatmap, error) {
	h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	scale := v.Scale()
	for _, orig := range sortedKeys(v.HeatMaps) {
		m, err := v.heatMap(maps, orig)
		if err != nil {
			return nil, err
		}
		counts, err := read(m)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.HeatMaps[orig], err)
		}
		keys := make([]heatmap.Key, 0, len(counts))
		for k, c := range counts {
			keys = append(keys, heatmap.Key{Key: []byte(k), Count: uint64(math.Round(float64(c) * scale))})
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
