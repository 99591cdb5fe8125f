package passes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	mbits "math/bits"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// The DIR plan of dss: an IPv4 LPM trie (a u32 prefix length and four
// data bytes) answered by direct indexing, in the manner of DPDK's
// rte_lpm DIR-24-8, cut to three levels so that every table fits the
// kernel's limits (DIR-16-8-8):
//
//	level 1: 65,536 entries indexed by the address's top 16 bits,
//	level 2: blocks of 256 entries indexed by its third byte, one block
//	         per /16 that holds a prefix longer than /16,
//	level 3: blocks of 256 entries indexed by its fourth byte, one block
//	         per /24 that holds a prefix longer than /24.
//
// An entry is 0 (no prefix matches), a leaf id 1..L (the longest prefix
// covering the entry's whole range, L distinct values) or L+1+b, block b
// of the next level. Leaf id i's value bytes sit at offset i×value_size of
// the leaf table (slot 0 unused), so the result register points at bytes
// identical to the trie's value, as bpf_map_lookup_elem's would. Entries
// are u16 when L plus the blocks of either level fit in 16 bits (halving
// the cache footprint), u32 otherwise.
//
// Every table is the single element of its own BPF_F_RDONLY_PROG array,
// reached through a direct value pointer (ld_imm64 BPF_PSEUDO_MAP_VALUE
// works only into single-element arrays), so a lookup is two to four
// dependent loads and no helper call. An array's value may not exceed
// KMALLOC_MAX_SIZE (4 MiB with 4 KiB pages and MAX_PAGE_ORDER 10), which
// dirMaxBytes bounds for all tables together. The verifier must prove
// every access in range: the first index is masked to 16 bits, a block
// reference is range-checked against the block count and a leaf id
// against L before it scales; those checks never fail at run time.
//
// The plan answers only keys whose prefix length is 32: an entry of
// length L matches an address only if the key's prefix length is at least
// L, which a prefix length of 32 (the trie's maximum) always is. A site
// whose prefix length is the constant 32 needs no test; one whose prefix
// length comes from the program tests it and sends any other value to the
// original lookup (which also answers NULL above 32). A constant below 32
// gets the other plans.

// dirMaxBytes bounds the DIR tables of one trie together: a few MiB of
// kernel memory, each table below KMALLOC_MAX_SIZE.
const dirMaxBytes = 4 << 20

// dirMinEntries is the smallest trie the DIR plan is costed for: its
// first level is 128 KiB whatever the table, which only pays for tables
// whose hash or chains no longer stay cache resident either. A variable so
// that tests can run small hand-written tables through the plan.
var dirMinEntries = 1024

// costPerMiB charges a DIR plan's memory: its tables compete for the
// caches with everything else the NF touches, and the swap loads them.
// It is kept small because the estimates understate the DIR plan's lead:
// on the benchmark router (2,592 routes, replay harness) the DIR path
// measured 41-48 ns per packet net of the floor where the /24 hash plan
// measured 72-76 (dss.go), while the model puts them only a few ns apart.
const costPerMiB = 1.0

// dirTable is the DIR-16-8-8 form of an IPv4 trie snapshot.
type dirTable struct {
	// leaves are the distinct values in byte order; leaf id i is
	// leaves[i-1].
	leaves [][]byte
	// l1 holds 65,536 entries, l2 and l3 their blocks of 256 entries
	// one after the other.
	l1, l2, l3 []uint32
	// width is the size of an entry in bytes, 2 or 4.
	width int
}

// nLeaf is L, the largest leaf id.
func (t *dirTable) nLeaf() uint32 { return uint32(len(t.leaves)) }

// blocks2 and blocks3 count the blocks of levels 2 and 3.
func (t *dirTable) blocks2() int { return len(t.l2) / 256 }
func (t *dirTable) blocks3() int { return len(t.l3) / 256 }

// dirShape is what the tables of a set of IPv4 trie nodes are made of,
// known before they are built: the blocks of levels 2 and 3 in address
// order, the leaves (distinct values) in byte order with each node's leaf
// id, and the entry width.
type dirShape struct {
	s2, s3 []uint32 // a /16 or /24 (address >> 16 or >> 8) per block
	leaves [][]byte
	leaf   []uint32 // leaf id of nodes[i]
	width  int
}

// dirShapeOf computes the shape for nodes (8-byte keys, any order).
func dirShapeOf(nodes []lpmNode) *dirShape {
	sh := &dirShape{leaf: make([]uint32, len(nodes))}
	// A /16 with a longer prefix inside gets a level-2 block, a /24 with
	// a longer prefix inside a level-3 block.
	var seen2 [65536 / 64]uint64
	for _, n := range nodes {
		a := binary.BigEndian.Uint32(n.key[4:8])
		if n.plen > 16 {
			seen2[a>>22] |= 1 << (a >> 16 % 64)
		}
		if n.plen > 24 {
			sh.s3 = append(sh.s3, a>>8)
		}
	}
	for w, bits := range seen2 {
		for ; bits != 0; bits &= bits - 1 {
			sh.s2 = append(sh.s2, uint32(64*w+mbits.TrailingZeros64(bits)))
		}
	}
	slices.Sort(sh.s3)
	sh.s3 = slices.Compact(sh.s3)
	// Leaves: number the distinct values as they come, then renumber
	// them in byte order.
	first := map[string]uint32{}
	for i, n := range nodes {
		id, ok := first[string(n.value)]
		if !ok {
			id = uint32(len(sh.leaves))
			first[string(n.value)] = id
			sh.leaves = append(sh.leaves, n.value)
		}
		sh.leaf[i] = id
	}
	order := make([]uint32, len(sh.leaves))
	for k := range order {
		order[k] = uint32(k)
	}
	slices.SortFunc(order, func(a, b uint32) int { return bytes.Compare(sh.leaves[a], sh.leaves[b]) })
	rank := make([]uint32, len(order))
	sorted := make([][]byte, len(order))
	for r, k := range order {
		rank[k] = uint32(r + 1)
		sorted[r] = sh.leaves[k]
	}
	sh.leaves = sorted
	for i, k := range sh.leaf {
		sh.leaf[i] = rank[k]
	}
	sh.width = 2
	if len(sh.leaves)+max(len(sh.s2), len(sh.s3)) > math.MaxUint16 {
		sh.width = 4
	}
	return sh
}

// bytes is the memory of the tables with valueSize-byte values.
func (sh *dirShape) bytes(valueSize int) uint64 {
	return uint64(sh.width)*uint64(65536+256*(len(sh.s2)+len(sh.s3))) + uint64(len(sh.leaves)+1)*uint64(valueSize)
}

// dirSize computes the tables' sizes for nodes before building them: the
// entry width, the number of level-2 and level-3 blocks and of distinct
// values, and the bytes of all tables with valueSize-byte values.
func dirSize(nodes []lpmNode, valueSize int) (width, b2, b3, leaves int, total uint64) {
	sh := dirShapeOf(nodes)
	return sh.width, len(sh.s2), len(sh.s3), len(sh.leaves), sh.bytes(valueSize)
}

// buildDIR builds the tables for IPv4 trie nodes (8-byte keys, data
// masked to their length, any order). It is deterministic: blocks are
// numbered in address order, leaves in value byte order.
func buildDIR(nodes []lpmNode) *dirTable { return dirShapeOf(nodes).build(nodes) }

// build builds the tables of sh for the nodes it was computed for.
func (sh *dirShape) build(nodes []lpmNode) *dirTable {
	t := &dirTable{width: sh.width, l1: make([]uint32, 65536), leaves: sh.leaves}
	L := t.nLeaf()
	s2, s3 := sh.s2, sh.s3
	idx2 := make([]uint32, 65536)
	idx3 := func(x uint32) uint32 {
		b, _ := slices.BinarySearch(s3, x)
		return uint32(b)
	}
	t.l2 = make([]uint32, 256*len(s2))
	t.l3 = make([]uint32, 256*len(s3))
	for b, x := range s2 {
		idx2[x] = uint32(b)
		t.l1[x] = L + 1 + uint32(b)
	}
	for b, x := range s3 {
		t.l2[256*idx2[x>>8]+x&0xff] = L + 1 + uint32(b)
	}
	// Paint the nodes shortest first: a longer node covering an entry
	// overwrites a shorter one's leaf, as longest-prefix match requires.
	// Painting over a block reference paints the whole block instead.
	setL2 := func(i uint32, leaf uint32) {
		if e := t.l2[i]; e > L {
			b := e - L - 1
			for k := range uint32(256) {
				t.l3[256*b+k] = leaf
			}
			return
		}
		t.l2[i] = leaf
	}
	setL1 := func(i uint32, leaf uint32) {
		if e := t.l1[i]; e > L {
			b := e - L - 1
			for k := range uint32(256) {
				setL2(256*b+k, leaf)
			}
			return
		}
		t.l1[i] = leaf
	}
	// Shortest first, stable: a counting sort on the length.
	var start [34]int
	for _, n := range nodes {
		start[n.plen+1]++
	}
	for l := 1; l < len(start); l++ {
		start[l] += start[l-1]
	}
	order := make([]int32, len(nodes))
	for i, n := range nodes {
		order[start[n.plen]] = int32(i)
		start[n.plen]++
	}
	for _, i := range order {
		n := &nodes[i]
		a := binary.BigEndian.Uint32(n.key[4:8])
		leaf := sh.leaf[i]
		switch {
		case n.plen <= 16:
			for i := range uint32(1) << (16 - n.plen) {
				setL1(a>>16+i, leaf)
			}
		case n.plen <= 24:
			base := 256*idx2[a>>16] + (a>>8)&0xff
			for j := range uint32(1) << (24 - n.plen) {
				setL2(base+j, leaf)
			}
		default:
			base := 256*idx3(a>>8) + a&0xff
			for k := range uint32(1) << (32 - n.plen) {
				t.l3[base+k] = leaf
			}
		}
	}
	return t
}

// lookup answers an address (most significant byte first) as the
// generated code does: the leaf id (0 for no match) and the level whose
// entry gave it.
func (t *dirTable) lookup(addr uint32) (leaf uint32, level int) {
	L := t.nLeaf()
	e, level := t.l1[addr>>16], 1
	if e > L {
		e, level = t.l2[256*(e-L-1)+(addr>>8)&0xff], 2
		if e > L {
			e, level = t.l3[256*(e-L-1)+addr&0xff], 3
		}
	}
	return e, level
}

// encode lays a table's entries out as the program reads them (host byte
// order, which is little endian on every BPF target we load on).
func (t *dirTable) encode(entries []uint32) []byte {
	out := make([]byte, 0, t.width*len(entries))
	for _, e := range entries {
		if t.width == 2 {
			out = binary.LittleEndian.AppendUint16(out, uint16(e))
		} else {
			out = binary.LittleEndian.AppendUint32(out, e)
		}
	}
	return out
}

// leafBytes is the leaf table: slot 0 unused, leaf id i at i×valueSize.
func (t *dirTable) leafBytes(valueSize int) []byte {
	out := make([]byte, valueSize, valueSize*(len(t.leaves)+1))
	for _, v := range t.leaves {
		out = append(out, v...)
	}
	return out
}

// bytes is the memory of all tables.
func (t *dirTable) bytes(valueSize int) uint64 {
	return uint64(t.width*(len(t.l1)+len(t.l2)+len(t.l3))) + uint64(valueSize*(len(t.leaves)+1))
}

// dirPlan is a DIR table with its cost estimate.
type dirPlan struct {
	t *dirTable
	// cost is the estimated cost per lookup, share the fraction of the
	// traffic resolved at each level (index 0: sent to the original
	// lookup because the prefix length is not 32).
	cost  float64
	share [4]float64
}

// dirPathCost estimates a lookup resolved at level (1-3), guard and
// prefix length test included: the first level's index computation and
// load, about ten instructions and one dependent load per further level,
// and the leaf's scaling into the value table.
func dirPathCost(level int, plenConst bool) float64 {
	insns := 13 + 10*(level-1)
	if !plenConst {
		insns += 2
	}
	return costGuard + costInsn*float64(insns) + float64(level)*costLoad
}

// costDIR weighs t with traffic: each key pays the path to the level that
// answers it, or, if its prefix length is not 32 (only possible when not
// constant), the test and the original lookup; plus the memory charge.
func costDIR(t *dirTable, traffic []trafficKey, plenConst bool, valueSize int, trieCost float64) *dirPlan {
	pl := &dirPlan{t: t}
	var total, sum float64
	for _, k := range traffic {
		total += k.weight
		if binary.LittleEndian.Uint32(k.key) != 32 {
			pl.share[0] += k.weight
			sum += k.weight * (costGuard + 2*costInsn + trieCost)
			continue
		}
		_, level := t.lookup(binary.BigEndian.Uint32(k.key[4:8]))
		pl.share[level] += k.weight
		sum += k.weight * dirPathCost(level, plenConst)
	}
	if total > 0 {
		sum /= total
		for i := range pl.share {
			pl.share[i] /= total
		}
	} else {
		sum = dirPathCost(1, plenConst)
	}
	pl.cost = sum + costPerMiB*float64(t.bytes(valueSize))/(1<<20)
	return pl
}

// describe renders the plan for remarks.
func (pl *dirPlan) describe(valueSize int) string {
	t := pl.t
	s := fmt.Sprintf("DIR-16-8-8 tables (%d level-2 and %d level-3 blocks of 256 u%d entries, %d distinct values, %d KiB; est. %.0f%%/%.0f%%/%.0f%% of lookups end at levels 1/2/3",
		t.blocks2(), t.blocks3(), 8*t.width, len(t.leaves), (t.bytes(valueSize)+1023)/1024, 100*pl.share[1], 100*pl.share[2], 100*pl.share[3])
	if pl.share[0] > 0 {
		s += fmt.Sprintf(", %.0f%% to the trie", 100*pl.share[0])
	}
	return s + ")"
}

// dirMaps adds the plan's tables to the collection, shared by the sites
// of one trie: names of the level-1, level-2, level-3 and leaf tables
// (level 2 and 3 empty when they have no blocks).
func (d *dss) dirMaps(of string, valueSize int, t *dirTable) [4]string {
	if names, ok := d.dirs[of]; ok {
		return names
	}
	var names [4]string
	add := func(prefix string, data []byte) string {
		if len(data) == 0 {
			return ""
		}
		name := d.mapName(prefix, of)
		d.c.Coll.Maps[name] = frozenArray(name, data)
		return name
	}
	names[0] = add("d1", t.encode(t.l1))
	names[1] = add("d2", t.encode(t.l2))
	names[2] = add("d3", t.encode(t.l3))
	names[3] = add("dv", t.leafBytes(valueSize))
	d.dirs[of] = names
	return names
}

// emitDIR puts the DIR lookup in front of the lookup at s, behind the
// map's guard:
//
//	guard → [prefix length != 32: original lookup] →
//	level 1 → leaf | level 2 → leaf | level 3 → leaf | miss
//
// R3 and R4 are scratch (the call clobbers them anyway); R1 and R2 still
// hold the call's arguments when the prefix length test sends the key to
// the original lookup. A hit leaves R0 pointing into the leaf table, a
// miss leaves 0, and both continue after the lookup.
func (d *dss) emitDIR(s lookupSite, valueSize int, t *dirTable, names [4]string, plenConst bool) error {
	p := d.c.Prog
	keyOff := *s.keyOff
	call, after := isolateCall(p, s.fn, s.block, s.index)
	g, err := d.c.guardCheck(p, s.mapName, asm.R3, call)
	if err != nil {
		return err
	}
	L := int32(t.nLeaf())
	size, shift := asm.Half, int32(1)
	if t.width == 4 {
		size, shift = asm.Word, 2
	}
	miss := p.NewBlock()
	miss.Insns = []asm.Instruction{asm.Mov.Imm(asm.R0, 0)}
	miss.Next = after

	// leaf: R3 holds an entry known to be at most L.
	leaf := p.NewBlock()
	leaf.Insns = []asm.Instruction{clearRef(asm.JEq.Imm(asm.R3, 0, ""))}
	leaf.Target = miss
	scale := p.NewBlock()
	scale.Insns = []asm.Instruction{
		asm.Mul.Imm(asm.R3, int32(valueSize)),
		asm.LoadMapValue(asm.R0, 0, 0).WithReference(names[3]),
		asm.Add.Reg(asm.R0, asm.R3),
	}
	leaf.Next, scale.Next = scale, after

	// level loads the entry of block R3 (already range-checked) at the
	// key's data byte dataByte from table, and goes to leaf if it is a
	// leaf or to next with the entry in R3 otherwise.
	level := func(table string, dataByte int16, blocks int, next *program.Block) []*program.Block {
		b := p.NewBlock()
		b.Insns = []asm.Instruction{
			asm.Sub.Imm(asm.R3, L+1),
			// Never taken: every reference names a block. The
			// verifier needs the bound.
			clearRef(asm.JGE.Imm(asm.R3, int32(blocks), "")),
		}
		b.Target = miss
		ld := p.NewBlock()
		ld.Insns = []asm.Instruction{
			asm.LSh.Imm(asm.R3, 8),
			asm.LoadMem(asm.R4, asm.R10, keyOff+4+dataByte, asm.Byte),
			// Add, not or: the verifier's bound stays exact.
			asm.Add.Reg(asm.R3, asm.R4),
			asm.LSh.Imm(asm.R3, shift),
			asm.LoadMapValue(asm.R0, 0, 0).WithReference(table),
			asm.Add.Reg(asm.R0, asm.R3),
			asm.LoadMem(asm.R3, asm.R0, 0, size),
			clearRef(asm.JLE.Imm(asm.R3, L, "")),
		}
		ld.Target, ld.Next = leaf, next
		b.Next = ld
		return []*program.Block{b, ld}
	}
	var l2, l3 []*program.Block
	next2 := miss
	if t.blocks3() > 0 {
		l3 = level(names[2], 3, t.blocks3(), miss)
		next2 = l3[0]
	}
	next1 := miss
	if t.blocks2() > 0 {
		l2 = level(names[1], 2, t.blocks2(), next2)
		next1 = l2[0]
	}
	l1 := p.NewBlock()
	l1.Insns = []asm.Instruction{
		asm.LoadMem(asm.R3, asm.R10, keyOff+4, asm.Half),
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.And.Imm(asm.R3, 0xffff), // bounds for the verifier
		asm.LSh.Imm(asm.R3, shift),
		asm.LoadMapValue(asm.R0, 0, 0).WithReference(names[0]),
		asm.Add.Reg(asm.R0, asm.R3),
		asm.LoadMem(asm.R3, asm.R0, 0, size),
		clearRef(asm.JGT.Imm(asm.R3, L, "")),
	}
	l1.Target, l1.Next = next1, leaf

	blocks := []*program.Block{g}
	if !plenConst {
		chk := p.NewBlock()
		chk.Insns = []asm.Instruction{
			asm.LoadMem(asm.R3, asm.R10, keyOff, asm.Word),
			clearRef(asm.JNE.Imm(asm.R3, 32, "")),
		}
		chk.Target, chk.Next = call, l1
		g.Next = chk
		blocks = append(blocks, chk)
	} else {
		g.Next = l1
	}
	blocks = append(blocks, l1, leaf, scale)
	blocks = append(blocks, l2...)
	blocks = append(blocks, l3...)
	blocks = append(blocks, miss)
	s.block.Next = g
	insertAfter(s.fn, s.block, blocks...)
	return nil
}

// tryDIR costs the DIR plan for an IPv4 trie and makes it if it beats
// both the best other plan (bestCost, +Inf if none) and the margin. It
// reports whether it rewrote the site.
func (d *dss) tryDIR(s lookupSite, ms *ebpf.MapSpec, nodes []lpmNode, lengths map[uint32]int, traffic []trafficKey, keyPlen uint32, plenConst bool, oldCost, bestCost float64) (bool, error) {
	c := d.c
	if ms.KeySize != 8 || len(nodes) < dirMinEntries || (plenConst && keyPlen != 32) {
		return false, nil
	}
	vs := int(ms.ValueSize)
	sh := dirShapeOf(nodes)
	if sh.bytes(vs) > dirMaxBytes {
		return false, nil
	}
	t := sh.build(nodes)
	pl := costDIR(t, traffic, plenConst, vs, oldCost)
	if pl.cost >= bestCost || pl.cost > dssMargin*oldCost {
		return false, nil
	}
	names := d.dirMaps(s.mapName, vs, t)
	if err := d.emitDIR(s, vs, t, names, plenConst); err != nil {
		return false, err
	}
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d prefix lengths (%s) as %s behind guard (est. %.0f -> %.0f ns per lookup)",
		len(lengths), lengthSummary(lengths), pl.describe(vs), oldCost, pl.cost)
	return true, nil
}
