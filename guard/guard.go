// Package guard implements the version guards that keep cached and inlined
// map contents consistent with the live maps.
//
// A guard is a u64 version in one slot of an array map. Optimized code reads
// it through a direct map-value pointer and compares it with the version it
// was specialized to; on mismatch it runs the original code path. Whoever
// changes a guarded map bumps its guard first, so the very next packet after
// the change takes the original path until the optimizer has re-specialized.
// This kernel refuses kprobes, so the bump is done by the control-plane API
// and by bumps injected before data-plane writes, not by a probe on the
// map-update path.
package guard

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
)

// MapName is the name of the guard map in optimized collections.
const MapName = "morpheus_guards"

// MaxGuards is the number of slots of the guard map.
const MaxGuards = 256

// Spec returns the map spec of the guard table: a single-element array
// whose value holds all slots, because the kernel gives programs a direct
// value pointer (ld_imm64 BPF_PSEUDO_MAP_VALUE) only into single-element
// arrays. Slot i is the u64 at offset 8*i.
func Spec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       MapName,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  8 * MaxGuards,
		MaxEntries: 1,
	}
}

// Table assigns guard slots to maps and remembers the version each slot
// holds. It is safe for concurrent use.
type Table struct {
	mu       sync.Mutex
	slots    map[string]uint32
	versions map[string]uint64
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{slots: map[string]uint32{}, versions: map[string]uint64{}}
}

// Slot returns the slot of the named map, assigning the next free one.
func (t *Table) Slot(mapName string) (uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.slots[mapName]; ok {
		return s, nil
	}
	if len(t.slots) >= MaxGuards {
		return 0, fmt.Errorf("guard table full (%d maps guarded)", MaxGuards)
	}
	s := uint32(len(t.slots))
	t.slots[mapName] = s
	return s, nil
}

// Version returns the version the named map's guard holds.
func (t *Table) Version(mapName string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.versions[mapName]
}

// Guarded lists the maps that have a slot, sorted.
func (t *Table) Guarded() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	names := make([]string, 0, len(t.slots))
	for n := range t.slots {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Bump increments the version of the named map's guard in the live guard
// map. Call it before changing the map: code specialized to the old
// contents stops using them from the next packet on.
func (t *Table) Bump(guards *ebpf.Map, mapName string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	slot, ok := t.slots[mapName]
	if !ok {
		return nil // nothing specialized to this map
	}
	v := t.versions[mapName] + 1
	buf, err := guards.LookupBytes(uint32(0))
	if err != nil || len(buf) != 8*MaxGuards {
		return fmt.Errorf("read guard map: %v", err)
	}
	binary.LittleEndian.PutUint64(buf[8*slot:], v)
	if err := guards.Put(uint32(0), buf); err != nil {
		return fmt.Errorf("bump guard of map %s: %w", mapName, err)
	}
	t.versions[mapName] = v
	return nil
}
