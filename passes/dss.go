package passes

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/program"
)

// dataStructSpec is the data structure specialization pass (DSS). It looks
// at the snapshot of every read-only hash and LPM map too large for
// mapinline and, where the contents allow a cheaper structure with the same
// answers, gives the lookup site a new map of that structure:
//
//   - an LPM trie whose entries all have one prefix length P becomes a hash
//     on the first ceil(P/8) bytes of the key data, masked to P bits. The
//     program's key is copied to a free stack slot (its own key stays as
//     it was) and masked there. An entry of length P matches a search key
//     iff the key's prefixlen field is >= P and the first P bits agree, and
//     the kernel answers NULL to a prefixlen above the trie's maximum, so a
//     prefixlen outside P..max is a miss: decided at compile time when the
//     site passes a constant, tested at run time otherwise. The hash holds the
//     original value bytes, so the returned pointer reads the same data.
//   - a hash with integer keys (1, 2, 4 or 8 bytes) spanning at most
//     maxArraySlots values becomes an array indexed by key - min: one
//     frozen single-element array map holding every slot, addressed through
//     a direct value pointer (no helper call at all). A slot is the value
//     bytes, a presence byte and padding to 8 bytes; a key outside the span
//     or an absent slot is a miss, as it was in the hash.
//
// Every rewrite sits behind the original map's guard: when the control
// plane changes the map it bumps the guard first and the original lookup
// runs until the optimizer has re-decided from the new snapshot. The pass
// is a pure function of the snapshot, so that re-run may specialize
// differently or not at all. Only lookups whose returned pointer is only
// read qualify (the new maps are BPF_F_RDONLY_PROG, so the verifier would
// also reject a write), and only maps the data plane never writes.
//
// Cost function. A specialization is made only if its estimated cost per
// lookup, guard included, is at most dssMargin of the original's. The
// estimates are rough nanoseconds on the reference machine class; they only
// need to rank structures:
//
//	LPM trie:  call + depth × (node load + prefix compare),
//	           depth = min(P, ceil(log2 N)) + 1 (the kernel trie is path
//	           compressed: about one node per bit of branching, never more
//	           than one per prefix bit), compare = 1 per 8 data bytes
//	hash:      call + jhash (2 + 2 per 4 key bytes) + bucket and element
//	           loads + key compare (1 per 8 bytes)
//	our array: a handful of instructions + one slot load
//
// with call = 5, a dependent load into a large table = 8 and an instruction
// = 0.5. For 2,592 /24 routes this estimates the trie at 122 ns, close to the
// ~110 ns measured over the replay floor (design.md), and the guarded hash
// path at 31 ns; the replay harness measured the router's own cost go from
// 162-177 to 72-76 ns per packet with it.
// An array must also not outgrow the hash it replaces: its bytes may not
// exceed the estimated footprint of the original hash (its elements, all
// max_entries of them unless BPF_F_NO_PREALLOC, and its bucket array), so
// a sparse key set stays a hash.
func dataStructSpec(c *Context) error {
	sites, err := c.lookupSites()
	if err != nil {
		return err
	}
	res, err := c.Analysis()
	if err != nil {
		return err
	}
	// Rewrite from the last site of a block to the first so that earlier
	// instruction indices stay valid.
	sort.SliceStable(sites, func(i, j int) bool { return sites[i].index > sites[j].index })
	d := &dss{c: c, res: res, taken: map[string][]int{}, made: map[string]string{}}
	for _, s := range sites {
		ms := c.Coll.Maps[s.mapName]
		if ms == nil || (ms.Type != ebpf.Hash && ms.Type != ebpf.LPMTrie) {
			continue // not a structure this pass converts
		}
		// Size first: the fallback lookup of a table mapinline compiled
		// is no longer rewritable, and its size says why better.
		entries := c.entries(s.mapName)
		if len(entries) == 0 || len(entries) <= c.Opts.MaxInline {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d entries: left to mapinline", len(entries))
			continue
		}
		if why := c.tableRewritable(s, ms); why != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
			continue
		}
		if bad := badEntry(entries, ms); bad != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", bad)
			continue
		}
		if ms.Type == ebpf.LPMTrie {
			err = d.lpmToHash(s, ms, entries)
		} else {
			err = d.hashToArray(s, ms, entries)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Per-lookup cost estimates in rough nanoseconds; see dataStructSpec.
const (
	costCall  = 5.0 // helper call and argument setup
	costLoad  = 8.0 // dependent load into a table larger than L1
	costInsn  = 0.5 // one straight-line instruction
	costGuard = 4 * costInsn
	// dssMargin is the largest ratio of new to old estimated cost at
	// which a specialization pays for its guard and code size.
	dssMargin = 0.75
	// maxArraySlots bounds the key span of a hash turned into an array,
	// maxArrayBytes its size.
	maxArraySlots = 4096
	maxArrayBytes = 1 << 20
)

// lpmCost estimates a trie lookup over n entries of length plen with
// dataBytes bytes of key data.
func lpmCost(n int, plen uint32, dataBytes int) float64 {
	depth := min(int(plen), bits.Len(uint(max(n-1, 0)))) + 1
	return costCall + float64(depth)*(costLoad+math.Ceil(float64(dataBytes)/8))
}

// hashCost estimates a hash lookup with a key of keyBytes bytes.
func hashCost(keyBytes int) float64 {
	return costCall + 2 + 2*math.Ceil(float64(keyBytes)/4) + 2*costLoad + math.Ceil(float64(keyBytes)/8)
}

// arrayCost is the array path: load the key, rebase, range check, scale,
// address, presence load and test, then one load of the slot.
const arrayCost = costGuard + 8*costInsn + costLoad

// hashBytes estimates the kernel memory of a hash map holding n entries:
// its elements (a 48-byte header, key and value rounded to 8), one per max
// entry unless BPF_F_NO_PREALLOC, and a bucket array of 16-byte heads
// rounded to a power of two.
func hashBytes(ms *ebpf.MapSpec, n int) uint64 {
	elem := 48 + roundUp(uint64(ms.KeySize), 8) + roundUp(uint64(ms.ValueSize), 8)
	elems := uint64(ms.MaxEntries)
	if ms.Flags&bpfFNoPrealloc != 0 {
		elems = uint64(n)
	}
	buckets := uint64(1) << bits.Len64(uint64(max(ms.MaxEntries, 1))-1)
	return elems*elem + 16*buckets
}

// bpfFNoPrealloc is BPF_F_NO_PREALLOC: hash elements are allocated on
// insertion.
const bpfFNoPrealloc = 1

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// badEntry reports snapshot entries whose sizes do not fit the map.
func badEntry(entries []mapstate.Entry, ms *ebpf.MapSpec) string {
	for i, e := range entries {
		if uint32(len(e.Key)) != ms.KeySize || uint32(len(e.Value)) != ms.ValueSize {
			return fmt.Sprintf("snapshot entry %d has a %d-byte key and %d-byte value, the map %d and %d", i, len(e.Key), len(e.Value), ms.KeySize, ms.ValueSize)
		}
	}
	return ""
}

// dss holds the state of one run of the pass.
type dss struct {
	c   *Context
	res *analysis.Result
	// taken lists the scratch stack slots handed out per function in this
	// run: the analysis is not recomputed between sites.
	taken map[string][]int
	// made maps an original map to the specialized map built for it, so
	// that several lookup sites of one table share one copy.
	made map[string]string
}

// lpmToHash specializes a lookup in an LPM trie whose entries share one
// prefix length.
func (d *dss) lpmToHash(s lookupSite, ms *ebpf.MapSpec, entries []mapstate.Entry) error {
	c := d.c
	dataBytes := int(ms.KeySize) - 4
	if dataBytes <= 0 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "LPM key of %d bytes has no data", ms.KeySize)
		return nil
	}
	lengths := map[uint32]int{}
	for _, e := range entries {
		lengths[binary.LittleEndian.Uint32(e.Key)]++
	}
	if len(lengths) != 1 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "entries have %d prefix lengths (%s): no single-length hash", len(lengths), lengthSummary(lengths))
		return nil
	}
	plen := binary.LittleEndian.Uint32(entries[0].Key)
	if plen == 0 || plen > uint32(dataBytes*8) {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "prefix length /%d does not select key bytes", plen)
		return nil
	}
	if *s.keyOff%4 != 0 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "LPM key at fp%+d is not 4-byte aligned", *s.keyOff)
		return nil
	}
	keyBytes := int(plen+7) / 8
	// The kernel's trie returns NULL for a search prefixlen above the
	// trie's maximum, and no entry of length plen matches one below plen.
	maxPlen := uint32(dataBytes * 8)
	keyPlen, plenConst := s.lpmPrefixLen()
	alwaysMiss := plenConst && (keyPlen < plen || keyPlen > maxPlen)

	oldCost := lpmCost(len(entries), plen, dataBytes)
	scratchBytes := 8 * ((keyBytes + 7) / 8)
	copies := copyChunks(int(*s.keyOff)+4, 0, keyBytes, dataBytes, scratchBytes)
	newCost := costGuard + hashCost(keyBytes) + costInsn*float64(4+2*len(copies))
	if !plenConst {
		newCost += 3 * costInsn
	}
	if alwaysMiss {
		newCost = costGuard + 2*costInsn
	}
	if newCost > dssMargin*oldCost {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "estimated %.0f ns per lookup as a hash vs %.0f as a trie: below the margin", newCost, oldCost)
		return nil
	}

	p := c.Prog
	var spec []*program.Block
	var hashName string
	miss := p.NewBlock()
	if alwaysMiss {
		// The lookup's constant prefix length matches no entry.
		spec = []*program.Block{miss}
	} else {
		slot, ok := d.scratch(s.fn.Name, keyBytes)
		if !ok {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "no free stack slot for the %d-byte masked key", keyBytes)
			return nil
		}
		hashName = d.lpmHash(s.mapName, ms, entries, plen, keyBytes)
		if !plenConst {
			check := p.NewBlock()
			check.Insns = []asm.Instruction{
				asm.LoadMem(asm.R3, asm.R10, *s.keyOff, asm.Word),
				clearRef(asm.JLT.Imm(asm.R3, int32(plen), "")),
			}
			check.Target = miss
			checkMax := p.NewBlock()
			checkMax.Insns = []asm.Instruction{clearRef(asm.JGT.Imm(asm.R3, int32(maxPlen), ""))}
			checkMax.Target = miss
			spec = append(spec, check, checkMax)
		}
		look := p.NewBlock()
		// The slot is 8-byte aligned like offset 0 above: same chunks.
		for _, ch := range copies {
			look.Insns = append(look.Insns,
				asm.LoadMem(asm.R3, asm.R10, int16(int(*s.keyOff)+4+ch.off), ch.size),
				asm.StoreMem(asm.R10, int16(slot+ch.off), asm.R3, ch.size))
		}
		if plen%8 != 0 {
			last := int16(slot + keyBytes - 1)
			look.Insns = append(look.Insns,
				asm.LoadMem(asm.R3, asm.R10, last, asm.Byte),
				asm.And.Imm32(asm.R3, int32(byte(0xff<<(8-plen%8)))),
				asm.StoreMem(asm.R10, last, asm.R3, asm.Byte))
		}
		look.Insns = append(look.Insns,
			asm.LoadMapPtr(asm.R1, 0).WithReference(hashName),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, int32(slot)),
			asm.FnMapLookupElem.Call(),
		)
		spec = append(spec, look)
	}
	if err := d.emit(s, spec, miss); err != nil {
		return err
	}
	if alwaysMiss {
		c.changed(s.fn.Name, s.block.ID, s.mapName, "lookup prefix length %d never matches a /%d entry of a %d-bit trie: constant miss behind guard", keyPlen, plen, maxPlen)
		return nil
	}
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d /%d prefixes as hash %s on the %d-byte masked key behind guard (est. %.0f -> %.0f ns per lookup)",
		len(entries), plen, hashName, keyBytes, oldCost, newCost)
	return nil
}

// lpmHash adds the hash map that replaces an LPM trie whose entries all
// have prefix length plen: key = the first keyBytes data bytes masked to
// plen bits, value = the entry's value.
func (d *dss) lpmHash(of string, ms *ebpf.MapSpec, entries []mapstate.Entry, plen uint32, keyBytes int) string {
	if name, ok := d.made[of]; ok {
		return name
	}
	mask := lpmMask(int(ms.KeySize), plen)[4 : 4+keyBytes]
	// Keys equal under the mask are one trie node: the last write wins.
	byKey := map[string][]byte{}
	var order []string
	for _, e := range entries {
		k := make([]byte, keyBytes)
		for i := range k {
			k[i] = e.Key[4+i] & mask[i]
		}
		if _, ok := byKey[string(k)]; !ok {
			order = append(order, string(k))
		}
		byKey[string(k)] = e.Value
	}
	contents := make([]ebpf.MapKV, 0, len(order))
	for _, k := range order {
		contents = append(contents, ebpf.MapKV{Key: []byte(k), Value: byKey[k]})
	}
	name := d.mapName("dh", of)
	d.c.Coll.Maps[name] = &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.Hash,
		KeySize:    uint32(keyBytes),
		ValueSize:  ms.ValueSize,
		MaxEntries: uint32(len(contents)),
		Flags:      bpfFRdonlyProg,
		Contents:   contents,
	}
	d.made[of] = name
	return name
}

// hashToArray specializes a lookup in a hash with small integer keys.
func (d *dss) hashToArray(s lookupSite, ms *ebpf.MapSpec, entries []mapstate.Entry) error {
	c := d.c
	var size asm.Size
	switch ms.KeySize {
	case 1:
		size = asm.Byte
	case 2:
		size = asm.Half
	case 4:
		size = asm.Word
	case 8:
		size = asm.DWord
	default:
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d-byte key is not an integer", ms.KeySize)
		return nil
	}
	if int(*s.keyOff)%int(ms.KeySize) != 0 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "key at fp%+d is not aligned for a %d-byte load", *s.keyOff, ms.KeySize)
		return nil
	}
	// Keys as the program loads them (little-endian), last write wins.
	values := map[uint64][]byte{}
	for _, e := range entries {
		k := make([]byte, 8)
		copy(k, e.Key)
		values[binary.LittleEndian.Uint64(k)] = e.Value
	}
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for k := range values {
		lo, hi = min(lo, k), max(hi, k)
	}
	if hi-lo >= maxArraySlots {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "keys span %d..%d, more than %d array slots", lo, hi, maxArraySlots)
		return nil
	}
	span := hi - lo + 1
	slotSize := roundUp(uint64(ms.ValueSize)+1, 8)
	if ms.ValueSize >= math.MaxInt16 || span*slotSize > maxArrayBytes {
		// The presence byte's offset must fit a load's 16-bit offset,
		// and one array value must stay far below kmalloc's limit.
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d slots of %d bytes are too large for one array value", span, slotSize)
		return nil
	}
	if arr, hb := span*slotSize, hashBytes(ms, len(values)); arr > hb {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d keys over a span of %d: the array (%d bytes) would outgrow the hash (~%d bytes)", len(values), span, arr, hb)
		return nil
	}
	oldCost, newCost := hashCost(int(ms.KeySize)), arrayCost
	if newCost > dssMargin*oldCost {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "estimated %.0f ns per lookup as an array vs %.0f as a hash: below the margin", newCost, oldCost)
		return nil
	}

	name, ok := d.made[s.mapName]
	if !ok {
		all := make([]byte, span*slotSize)
		for k, v := range values {
			at := (k - lo) * slotSize
			copy(all[at:], v)
			all[at+uint64(ms.ValueSize)] = 1
		}
		name = d.mapName("da", s.mapName)
		c.Coll.Maps[name] = &ebpf.MapSpec{
			Name:       name,
			Type:       ebpf.Array,
			KeySize:    4,
			ValueSize:  uint32(len(all)),
			MaxEntries: 1,
			Flags:      bpfFRdonlyProg,
			Contents:   []ebpf.MapKV{{Key: uint32(0), Value: all}},
		}
		d.made[s.mapName] = name
	}

	p := c.Prog
	miss := p.NewBlock()
	idx := p.NewBlock()
	idx.Insns = []asm.Instruction{asm.LoadMem(asm.R3, asm.R10, *s.keyOff, size)}
	switch {
	case lo == 0:
	case lo <= math.MaxInt32:
		idx.Insns = append(idx.Insns, asm.Sub.Imm(asm.R3, int32(lo)))
	default:
		idx.Insns = append(idx.Insns, asm.LoadImm(asm.R4, int64(lo), asm.DWord), asm.Sub.Reg(asm.R3, asm.R4))
	}
	// Unsigned: a key below lo wrapped around and is out of range too.
	idx.Insns = append(idx.Insns, clearRef(asm.JGE.Imm(asm.R3, int32(span), "")))
	idx.Target = miss
	slot := p.NewBlock()
	if bits.OnesCount64(slotSize) == 1 {
		slot.Insns = append(slot.Insns, asm.LSh.Imm(asm.R3, int32(bits.TrailingZeros64(slotSize))))
	} else {
		slot.Insns = append(slot.Insns, asm.Mul.Imm(asm.R3, int32(slotSize)))
	}
	slot.Insns = append(slot.Insns,
		asm.LoadMapValue(asm.R0, 0, 0).WithReference(name),
		asm.Add.Reg(asm.R0, asm.R3),
		asm.LoadMem(asm.R3, asm.R0, int16(ms.ValueSize), asm.Byte),
		clearRef(asm.JEq.Imm(asm.R3, 0, "")),
	)
	slot.Target = miss
	idx.Next = slot
	if err := d.emit(s, []*program.Block{idx, slot}, miss); err != nil {
		return err
	}
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d integer keys in %d..%d as array %s behind guard (est. %.0f -> %.0f ns per lookup)",
		len(values), lo, hi, name, oldCost, newCost)
	return nil
}

// emit isolates the lookup call and puts the map's guard and spec in front
// of it. spec's blocks run in order, each falling through to the next; the
// last one leaves the lookup's result in R0 and continues after the
// lookup. miss, if any block jumps to it, gets R0 = NULL and continues
// there too. On guard mismatch the original call runs.
func (d *dss) emit(s lookupSite, spec []*program.Block, miss *program.Block) error {
	p := d.c.Prog
	call, after := isolateCall(p, s.fn, s.block, s.index)
	g, err := d.c.guardCheck(p, s.mapName, asm.R3, call)
	if err != nil {
		return err
	}
	blocks := []*program.Block{g}
	for _, b := range spec {
		if b != miss {
			blocks = append(blocks, b)
		}
	}
	for i, b := range blocks[:len(blocks)-1] {
		b.Next = blocks[i+1]
	}
	if last := blocks[len(blocks)-1]; last == g {
		g.Next = miss
	} else {
		last.Next = after // Lower adds the jump
	}
	// The kernel rejects unreachable code: miss only goes in if used.
	if slices.ContainsFunc(blocks, func(b *program.Block) bool { return b.Target == miss || b.Next == miss }) {
		miss.Insns = append(miss.Insns, asm.Mov.Imm(asm.R0, 0))
		miss.Next = after
		blocks = append(blocks, miss)
	}
	s.block.Next = g
	insertAfter(s.fn, s.block, blocks...)
	return nil
}

// scratch hands out n bytes of stack in fn that no instruction touches,
// as the offset from R10 of their lowest byte, preferring slots closest to
// R10 (they do not deepen the frame). A slot that deepens the frame is only
// taken while the frames of all functions together, each rounded up to 32
// bytes as the verifier does, stay within the 512 bytes a call chain may
// use: no chain can then exceed it, whatever the call graph. (A too deep
// chain would only get the candidate rejected by the verifier, but with
// every other rewrite of the run.)
func (d *dss) scratch(fn string, n int) (int, bool) {
	u := d.res.Stack(fn)
	if u == nil || u.All {
		return 0, false
	}
	need := (n + 7) / 8
	free := func(off int) bool {
		return slices.Contains(u.FreeSlots, off) && !slices.Contains(d.taken[fn], off)
	}
	for _, top := range u.FreeSlots {
		ok := true
		for k := range need {
			ok = ok && free(top-8*k)
		}
		low := top - 8*(need-1)
		if grown := d.frames(fn, low); !ok || (grown > d.frames(fn, 0) && grown > analysis.StackSize) {
			continue
		}
		for k := range need {
			d.taken[fn] = append(d.taken[fn], top-8*k)
		}
		return low, true
	}
	return 0, false
}

// frames is the sum of all functions' frame sizes if fn's frame reached
// down to offset low.
func (d *dss) frames(fn string, low int) int {
	total := 0
	for _, f := range d.c.Prog.Funcs {
		depth := 0
		if u := d.res.Stack(f.Name); u != nil {
			depth = u.Depth
		}
		for _, off := range d.taken[f.Name] {
			depth = min(depth, off)
		}
		if f.Name == fn {
			depth = min(depth, low)
		}
		total += int(roundUp(uint64(-depth), 32))
	}
	return total
}

// mapName names a map DSS adds for map of, unique in the collection and
// within the kernel's 15 characters.
func (d *dss) mapName(prefix, of string) string {
	for {
		d.c.cacheSeq++
		name := fmt.Sprintf("%s%d_%s", prefix, d.c.cacheSeq, of)
		if len(name) > 15 {
			name = name[:15]
		}
		if _, dup := d.c.Coll.Maps[name]; !dup {
			return name
		}
	}
}

// copyChunks splits a copy of n bytes from stack offset src to dst into
// loads and stores the verifier accepts (aligned on both sides). A chunk
// may run past n while it stays within srcLimit bytes of the source and
// dstLimit bytes of the destination, which saves instructions.
func copyChunks(src, dst, n, srcLimit, dstLimit int) []keyChunk {
	var out []keyChunk
	for off := 0; off < n; {
		for _, sz := range []asm.Size{asm.DWord, asm.Word, asm.Half, asm.Byte} {
			w := sz.Sizeof()
			if (src+off)%w != 0 || (dst+off)%w != 0 || off+w > srcLimit || off+w > dstLimit {
				continue
			}
			out = append(out, keyChunk{off, sz})
			off += w
			break
		}
	}
	return out
}

// lengthSummary renders prefix-length counts, shortest first.
func lengthSummary(lengths map[uint32]int) string {
	ls := make([]uint32, 0, len(lengths))
	for l := range lengths {
		ls = append(ls, l)
	}
	slices.Sort(ls)
	var parts []string
	for i, l := range ls {
		if i == 6 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("/%d x%d", l, lengths[l]))
	}
	return strings.Join(parts, ", ")
}
