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
//
// # Data-plane tripwires
//
// A map the data plane writes can still be cached if every data-plane
// write site trips the guard first: the injected code stores [Tripped]
// (all ones) into the slot, a value no version ever takes (versions count
// up from zero), so the optimized code takes the original path from that
// write on. The data plane cannot know the next version, so the agent
// re-arms tripped slots ([Table.Rearm]) to a fresh version before it
// snapshots the maps for the next candidate; a write after the re-arm
// trips the slot again, which is safe. Maps guarded this way are marked
// ([Table.MarkDataPlane]): their contents change legitimately behind the
// agent's back, so a fingerprint mismatch is no evidence of a bypassing
// writer.
//
// # Slot writes
//
// The guard map is memory-mappable, and the table writes one slot with
// one atomic 64-bit store through the mapping: a read-modify-write of the
// whole value could undo a tripwire the data plane stored into another
// slot in between. A guard map that cannot be mapped (pinned by an older
// agent) is written as a whole, as before tripwires existed.
package guard

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// MapName is the name of the guard map in optimized collections.
const MapName = "morpheus_guards"

// MaxGuards is the number of slots of the guard map.
const MaxGuards = 256

// Tripped is the value a data-plane tripwire stores into a slot. Versions
// count up from zero and never reach it, so a tripped slot never matches.
const Tripped = math.MaxUint64

// bpfFMmapable is BPF_F_MMAPABLE: user space may mmap the array.
const bpfFMmapable = 1 << 10

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
		// Mappable so that one slot is written with one atomic store
		// (see "Slot writes").
		Flags: bpfFMmapable,
	}
}

// Table assigns guard slots to maps and remembers the version each slot
// holds. It is safe for concurrent use.
type Table struct {
	mu       sync.Mutex
	slots    map[string]uint32
	versions map[string]uint64
	// dataPlane holds the maps whose data-plane write sites trip the
	// guard (see MarkDataPlane).
	dataPlane map[string]bool
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{slots: map[string]uint32{}, versions: map[string]uint64{}, dataPlane: map[string]bool{}}
}

// MarkDataPlane records that the data plane writes the named map and that
// code cached from it trips its guard before every such write. Passes
// call it when they inject the tripwires. The mark is a property of the
// program's code (its write sites), so it holds for every candidate.
func (t *Table) MarkDataPlane(mapName string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dataPlane[mapName] = true
}

// DataPlane reports whether the named map was marked by MarkDataPlane:
// its contents change without the agent, by design, and its guard is
// tripped by the data plane itself. A fingerprint mismatch of such a map
// is not a bypassing writer.
func (t *Table) DataPlane(mapName string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dataPlane[mapName]
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
	if err := writeSlot(guards, slot, v); err != nil {
		return fmt.Errorf("bump guard of map %s: %w", mapName, err)
	}
	t.versions[mapName] = v
	return nil
}

// Rearm gives every slot that a data-plane tripwire set to Tripped a
// fresh version, and returns the maps it re-armed, sorted. Call it before
// snapshotting the maps for a new candidate: the candidate then compares
// with the fresh version, and the snapshot holds every write made before
// the re-arm. A write after the re-arm trips the slot again; a slot that
// is tripped while Rearm runs stays tripped or gets the fresh version,
// and either is safe because the snapshot follows. Code that still
// expects the old version keeps taking the original path.
func (t *Table) Rearm(guards *ebpf.Map) ([]string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	live, err := guards.LookupBytes(uint32(0))
	if err != nil || len(live) != 8*MaxGuards {
		return nil, fmt.Errorf("read guard map: %v", err)
	}
	var out []string
	for name, slot := range t.slots {
		if binary.LittleEndian.Uint64(live[8*slot:]) != Tripped {
			continue
		}
		v := t.versions[name] + 1
		if err := writeSlot(guards, slot, v); err != nil {
			return out, fmt.Errorf("re-arm guard of map %s: %w", name, err)
		}
		t.versions[name] = v
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

// writeSlot stores v into one slot of the live guard map: one atomic
// 64-bit store through a shared mapping, so that a tripwire the data plane
// stores into another slot meanwhile is never overwritten. A map that
// cannot be mapped is written as a whole (read, modify, update).
func writeSlot(guards *ebpf.Map, slot uint32, v uint64) error {
	if guards.Flags()&bpfFMmapable != 0 {
		size := (8*MaxGuards + os.Getpagesize() - 1) &^ (os.Getpagesize() - 1)
		mem, err := unix.Mmap(guards.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map the guard map: %w", err)
		}
		// The mapping is page aligned, so every slot is 8-byte aligned.
		atomic.StoreUint64((*uint64)(unsafe.Pointer(&mem[8*slot])), v)
		return unix.Munmap(mem)
	}
	buf, err := guards.LookupBytes(uint32(0))
	if err != nil || len(buf) != 8*MaxGuards {
		return fmt.Errorf("read guard map: %v", err)
	}
	binary.LittleEndian.PutUint64(buf[8*slot:], v)
	return guards.Put(uint32(0), buf)
}
