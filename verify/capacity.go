package verify

import (
	"fmt"
	"maps"
	"math/bits"
	"slices"

	"github.com/cilium/ebpf"
)

// Small test copies of hash maps (DiffOptions.InsertBounds).
//
// Reading a hash map back walks all of its buckets, one per max_entries
// rounded up to a power of two, however few elements it holds: the
// periodic checks of a 65,536-entry conntrack table cost a quarter of a
// millisecond per copy even when it holds a few thousand flows. The test
// therefore creates its copies of hash maps with fewer entries when that
// provably changes nothing a program can observe:
//
//   - A hash map's max_entries decides only when an insert fails (E2BIG;
//     an update of an existing key never needs a new element) and, for an
//     LRU map, when an element is evicted. Lookups, updates and deletes of
//     a map that is not full behave the same whatever its capacity. The
//     verifier does not use a hash map's max_entries (arrays bound their
//     indexes by it, so arrays are never shrunk; neither are LPM tries,
//     map-in-maps, program arrays, or maps of a collection with
//     map-in-maps, whose inner maps must match a template).
//   - A program could still observe the capacity directly: by reading
//     the map's struct bpf_map (max_entries through BTF) or calling a
//     kfunc such as bpf_map_sum_elem_count. The caller names in
//     InsertBounds only maps whose every use, in every program, is a
//     lookup, update or delete helper call or an access through a value
//     pointer (see optimize's insertBounds).
//   - The map never fills in the test: its copy holds at most the entries
//     it was filled with plus, per packet, InsertBounds[name] inserts (an
//     upper bound on the update calls one packet's runs can make, in the
//     originals and in the candidate), and its capacity is at least that
//     for MaxPackets packets plus CapacitySlack. Session.Run checks the
//     bound with the packets it gets and the entries the copies may hold
//     (what Reset wrote plus the bound of every Run since) and refuses to
//     run a test that could fill a copy.
//   - LRU maps with a common LRU list can evict before max_entries
//     elements are in use: a CPU that finds its local free list empty
//     takes LOCAL_FREE_TARGET (128) free nodes from the global list and
//     shrinks (evicts) when the global list has fewer, and free nodes can
//     sit on other CPUs' local free lists (up to LOCAL_FREE_TARGET each,
//     plus their pending nodes that were deleted, which return to the
//     owner's local list). CapacitySlack covers that four times over.
//     Per-CPU LRU lists (BPF_F_NO_COMMON_LRU) split the capacity between
//     CPUs, so those maps are never shrunk.
//
// Both originals and the candidate are sized from the same bounds and
// MaxPackets (the candidate's with its own bounds, which the optimizer
// takes at least as large as the originals'), so the copies normally have
// the same size; either way none of them can become full, so each
// behaves exactly as with the spec's capacity.

// lruLocalFreeTarget is LOCAL_FREE_TARGET of kernel/bpf/bpf_lru_list.c.
const lruLocalFreeTarget = 128

// bpfFNoCommonLRU is BPF_F_NO_COMMON_LRU.
const bpfFNoCommonLRU = 1 << 1

// CapacitySlack is the number of elements beyond the worst case that a
// shrunk test copy of a hash map keeps free on a machine with cpus
// possible CPUs (see the LRU free lists above).
func CapacitySlack(cpus int) int { return 4 * lruLocalFreeTarget * max(cpus, 1) }

// possibleCPUs is the kernel's number of possible CPUs, or a generous
// guess if it cannot be read (the slack only grows with it).
func possibleCPUs() int {
	n, err := ebpf.PossibleCPU()
	if err != nil || n < 1 {
		return 1024
	}
	return n
}

// headroom is what a shrunk map copy may still take.
type headroom struct {
	// bound is the inserts per packet, size the copy's max_entries,
	// maxPackets the packets it was sized for.
	bound, maxPackets int
	size              uint32
	// count bounds the elements the copy may hold now: what Reset or
	// the load wrote, plus bound per packet run since.
	count int
}

// shrinkable reports whether the test may create ms with fewer entries:
// a hash map type whose capacity only decides when it is full, in a
// collection without map-in-maps.
func shrinkable(spec *ebpf.CollectionSpec, ms *ebpf.MapSpec) bool {
	switch ms.Type {
	case ebpf.Hash, ebpf.PerCPUHash:
	case ebpf.LRUHash, ebpf.LRUCPUHash:
		if ms.Flags&bpfFNoCommonLRU != 0 {
			return false
		}
	default:
		return false
	}
	if ms.InnerMap != nil || ms.Pinning != ebpf.PinNone {
		return false
	}
	for _, other := range spec.Maps {
		if other.Type == ebpf.ArrayOfMaps || other.Type == ebpf.HashOfMaps {
			return false
		}
	}
	return true
}

// testCapacity returns the max_entries of the test's copy of a map that
// holds entries elements before a test of up to maxPackets packets
// inserting up to bound elements each: the worst case plus the slack,
// rounded up to a power of two (the bucket count is one anyway); 0 if
// that is not smaller than the spec's.
func testCapacity(ms *ebpf.MapSpec, entries, bound, maxPackets, cpus int) uint32 {
	if bound < 0 || maxPackets <= 0 || entries < 0 {
		return 0
	}
	need := uint64(entries) + uint64(maxPackets)*uint64(bound) + uint64(CapacitySlack(cpus))
	if need >= uint64(ms.MaxEntries) {
		return 0
	}
	size := uint64(1) << bits.Len64(need-1)
	if size >= uint64(ms.MaxEntries) {
		return 0
	}
	return uint32(size)
}

// shrinkMaps lowers the max_entries of cs's maps named in opts'
// InsertBounds as far as testCapacity allows, for state's entries, and
// returns what the copies may still take per map.
func shrinkMaps(cs *ebpf.CollectionSpec, entries func(name string) int, opts DiffOptions) map[string]*headroom {
	if opts.MaxPackets <= 0 || len(opts.InsertBounds) == 0 {
		return nil
	}
	out := map[string]*headroom{}
	cpus := possibleCPUs()
	for name, bound := range opts.InsertBounds {
		ms, ok := cs.Maps[name]
		if !ok || !shrinkable(cs, ms) {
			continue
		}
		n := entries(name) + len(ms.Contents)
		size := testCapacity(ms, n, bound, opts.MaxPackets, cpus)
		if size == 0 {
			continue
		}
		ms.MaxEntries = size
		out[name] = &headroom{bound: bound, maxPackets: opts.MaxPackets, size: size, count: n}
	}
	return out
}

// checkHeadroom returns an error if a test of packets packets could fill
// one of in's shrunk copies.
func (in *instance) checkHeadroom(packets int) error {
	slack := CapacitySlack(possibleCPUs())
	for _, name := range slices.Sorted(maps.Keys(in.headroom)) {
		h := in.headroom[name]
		if need := uint64(h.count) + uint64(packets)*uint64(h.bound) + uint64(slack); need > uint64(h.size) {
			return fmt.Errorf("verify: the test's copy of map %q was created with %d entries, too few for %d more packets (it may hold %d, each packet may add %d)",
				name, h.size, packets, h.count, h.bound)
		}
	}
	return nil
}

// refill records that map name of in was reset to entries elements, and
// returns an error if the copy is then too small for the packets it was
// sized for.
func (in *instance) refill(name string, entries int) error {
	h := in.headroom[name]
	if h == nil {
		return nil
	}
	h.count = entries
	if need := uint64(entries) + uint64(h.maxPackets)*uint64(h.bound) + uint64(CapacitySlack(possibleCPUs())); need > uint64(h.size) {
		return fmt.Errorf("verify: the test's copy of map %q was created with %d entries, too few for %d entries and %d packets", name, h.size, entries, h.maxPackets)
	}
	return nil
}

// ran accounts for a test of packets packets in the copies' headroom.
func (in *instance) ran(packets int) {
	for _, h := range in.headroom {
		h.count += packets * h.bound
	}
}

// mapCapacities returns the max_entries of the test's copies of the
// shrunk maps of in.
func (in *instance) mapCapacities() map[string]uint32 {
	if len(in.headroom) == 0 {
		return nil
	}
	out := map[string]uint32{}
	for name, h := range in.headroom {
		out[name] = h.size
	}
	return out
}

// SizedFor reports whether the copies' maps were sized for tests of
// packets packets (DiffOptions.MaxPackets); copies without shrunk maps
// suit any test.
func (o *Originals) SizedFor(packets int) bool {
	for _, in := range o.insts {
		if in == nil {
			continue
		}
		for _, h := range in.headroom {
			if h.maxPackets < packets {
				return false
			}
		}
	}
	return true
}
