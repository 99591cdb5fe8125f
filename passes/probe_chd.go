package passes

import (
	"math/bits"
	"slices"

	"github.com/cilium/ebpf/asm"
)

// Displaced probes. One multiplier places a few dozen keys without
// collisions in a table a few times their number, but not hundreds: the
// chance that N keys hashed into M slots all differ falls like
// exp(-N²/2M). For more keys the probe hashes in two steps, as
// hash-and-displace perfect hashing does (CHD): the top bits of x = v*M
// pick one of 2^g groups of about four keys, the next bits give the key's
// home h in a table of 2^b slots, and the group's displacement d, chosen
// at optimization time and stored in front of the slots, moves it:
//
//	slot = h ^ d[group]
//
// XOR with a constant maps the group's distinct homes to distinct slots,
// so placing a group is finding a d whose slots are all free; groups go
// largest first, into a table at most half full, where free patterns are
// plentiful. The lookup pays one more dependent load than a plain probe
// (the displacement) and a few ALU instructions:
//
//	r4 *= r5                 (x)
//	r5 = r4
//	r5 >>= 64 - g
//	r5 <<= 2
//	r0 = map_value(table, 0)
//	r0 += r5
//	r5 = *(u32 *)(r0 + 0)    (d)
//	r4 <<= g
//	r4 >>= 64 - b            (h)
//	r4 ^= r5
//	r4 &= 2^b - 1            (for the verifier: d is data to it)
//
// and then addresses and compares the slot like a plain probe. Empty
// slots hold sentinels as in a plain table, computed with the same slot
// function.

// probePlainMaxKeys is the most keys a plain (one-multiplier) table is
// searched for; beyond it only displacement is tried.
const probePlainMaxKeys = 128

// chdGroupKeys is the mean number of keys per displacement group.
const chdGroupKeys = 4

// chdCost is what the displacement adds to a probe, in compare-and-branch
// units (see hotCache): one dependent load and five ALU instructions.
const chdCost = 2

// displaced is the slot of combined key value v.
func (t *probeTable) displaced(v uint64) int {
	x := v * t.mult
	g := x >> (64 - t.gbits)
	h := (x << t.gbits) >> (64 - t.bits)
	return int((h ^ uint64(t.disp[g])) & (1<<t.bits - 1))
}

// slotsOff is the offset of the slots in the table: after the
// displacements, 8-aligned.
func (t *probeTable) slotsOff() int {
	return int(roundUp(uint64(4*len(t.disp)), 8))
}

// displacedSlot computes the slot index of x (in R4) into R4, using R5 and
// R0 (see above).
func (t *probeTable) displacedSlot(table string) []asm.Instruction {
	return []asm.Instruction{
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.RSh.Imm(asm.R5, int32(64-t.gbits)),
		asm.LSh.Imm(asm.R5, 2),
		asm.LoadMapValue(asm.R0, 0, 0).WithReference(table),
		asm.Add.Reg(asm.R0, asm.R5),
		asm.LoadMem(asm.R5, asm.R0, 0, asm.Word),
		asm.LSh.Imm(asm.R4, int32(t.gbits)),
		asm.RSh.Imm(asm.R4, int32(64-t.bits)),
		asm.Xor.Reg(asm.R4, asm.R5),
		asm.And.Imm(asm.R4, int32(1<<t.bits-1)),
	}
}

// placeDisplaced searches a displaced placement of the keys whose chunk
// values are vals (combined, when packed, holds their combined values):
// tables from twice the keys up, a fixed sequence of multipliers per size.
// fits says whether a table of that many slots is small enough. It
// returns nil when none is found within the budget.
func placeDisplaced(vals [][]uint64, chs []keyChunk, packed bool, combined []uint64, fits func(buckets, ways int) bool) *probeTable {
	n := len(vals)
	seed := uint64(probeSeed) ^ 0xc4d
	tries := 0
	for b := bits.Len(uint(n-1)) + 1; b <= bits.Len(uint(n-1))+2; b++ {
		gbits := max(1, bits.Len(uint(n-1))-bits.Len(chdGroupKeys-1))
		if b > 20 || !fits(1<<b, 1) || 4<<gbits > probeMaxBytes/4 {
			continue
		}
		for range probeTries / 8 {
			m := splitmix64(&seed) | 1
			t := &probeTable{chunks: chs, mult: m, bits: b, ways: 1, gbits: gbits}
			tries += n
			if t.displace(vals, packed, combined) && t.sentinels() != nil {
				t.tries = tries
				return t
			}
		}
	}
	return nil
}

// displace chooses t.disp and t.slot for the keys, or reports that the
// multiplier does not work (two keys of a group share their home, or a
// group finds no free pattern).
func (t *probeTable) displace(vals [][]uint64, packed bool, combined []uint64) bool {
	n := len(vals)
	groups := make([][]int, 1<<t.gbits)
	home := make([]uint64, n)
	for i := range n {
		v := combined[i]
		if !packed {
			v = probeCombine(vals[i], t.chunks, t.mult)
		}
		x := v * t.mult
		g := x >> (64 - t.gbits)
		home[i] = (x << t.gbits) >> (64 - t.bits)
		groups[g] = append(groups[g], i)
	}
	order := make([]int, 0, len(groups))
	for g, members := range groups {
		if len(members) > 0 {
			order = append(order, g)
		}
		for a := range members {
			for _, j := range members[a+1:] {
				if home[members[a]] == home[j] {
					return false
				}
			}
		}
	}
	// Largest groups first; ties by group number, for a deterministic
	// table.
	slices.SortStableFunc(order, func(a, b int) int { return len(groups[b]) - len(groups[a]) })
	size := uint64(1) << t.bits
	used := make([]bool, size)
	t.disp = make([]uint32, len(groups))
	t.slot = make([]int, n)
	for _, g := range order {
		d, ok := uint64(0), false
		for ; d < size; d++ {
			ok = true
			for _, i := range groups[g] {
				if used[home[i]^d] {
					ok = false
					break
				}
			}
			if ok {
				break
			}
		}
		if !ok {
			return false
		}
		t.disp[g] = uint32(d)
		for _, i := range groups[g] {
			t.slot[i] = int(home[i] ^ d)
			used[t.slot[i]] = true
		}
	}
	return true
}
