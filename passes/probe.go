package passes

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"

	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/program"
)

// The hashed probe is the third lookup layout next to compareChain and
// searchTree: a perfect hash over a fixed key set, built at optimization
// time and read with one table load and one or two well-predicted
// compares, however many keys it holds.
//
// Hash. The key chunks (probeChunks: those of treeChunks, without the
// bytes the site passes as constants unless including them makes fewer
// loads) are loaded from the stack, zero-extended, and combined into one 64-bit
// value v: packed side by side when they hold at most 8 bytes together
// (v is then the key itself, so distinct keys give distinct v), otherwise
// folded as v = v*M ^ c for every further chunk. The bucket is the top b
// bits of v*M, for an odd 64-bit multiplier M. placeProbe searches M (a
// fixed-seed generator: the same keys give the same table) and b, from
// ceil(log2 N) up to probeExtraBits more, for a placement where no two
// keys share a bucket; failing that, for one where no three do, with two
// slots per bucket compared one after the other. Each try costs N hash
// evaluations and the tries are bounded (probeTries per size), so
// placing 64 keys stays far below a millisecond; with no placement the
// site keeps its other layouts. Tables beyond probeMaxBytes are not
// made.
//
// Table. The buckets live in the single element of a frozen
// BPF_F_RDONLY_PROG array reached through a direct value pointer, as the
// DIR tables of dss. A slot holds the compared chunks at their key
// offsets (shifted so that each is aligned as its stack load), a result
// byte when some key's cached result is a miss (1: the
// value follows, 0: the lookup answers NULL), then the value bytes at an
// 8-aligned offset; slots are 8-aligned. An empty slot holds a sentinel
// key that hashes to another bucket: a key that reaches the slot hashes
// to this bucket, so it never equals the sentinel, and empty slots need
// no presence test. The shift leaves the bucket below 2^b, which the
// verifier tracks exactly, so the slot address is a map value pointer
// with a bounded variable offset inside value_size; a hit leaves R0
// pointing at the slot's value bytes, which the program reads like the
// map's own value.
//
// Code (one chunk, one way):
//
//	r3 = *(u64 *)(r10 + keyOff)
//	r4 = r3
//	r5 = M ll
//	r4 *= r5
//	r4 >>= 64 - b
//	r4 <<= log2(slot size)         (or *= slot size)
//	r0 = map_value(table, 0)
//	r0 += r4
//	r4 = *(u64 *)(r0 + 0)
//	if r3 != r4 goto miss
//	r0 += value offset             (hit: R0 is the value pointer)
//
// Only R0 and R3-R5 are written: they are dead before any helper call,
// and R1 and R2 keep the lookup's arguments for a miss that runs the
// original lookup.

const (
	// probeExtraBits is how many bits beyond ceil(log2 N) the search
	// may give the table.
	probeExtraBits = 4
	// probeTries bounds the multipliers tried per table size.
	probeTries = 128
	// probeMaxBytes bounds a probe table: it is one array value, loaded
	// at every swap, and only the hot slots should compete for the
	// caches.
	probeMaxBytes = 256 << 10
	// probeSeed seeds the multiplier search.
	probeSeed = 0x9e3779b97f4a7c15
)

// probeChunks picks the chunks a probe at a site hashes and compares:
// those of treeChunks without the bytes the site passes as constants, or,
// if fewer, with them (keys that contradict the constants are never
// placed, so the bytes are equal in every key and cost nothing to
// compare, and one 8-byte load beats three smaller ones).
func probeChunks(keyOff int16, keySize int, constByte func(int) bool) []keyChunk {
	skip := treeChunks(keyOff, keySize, constByte)
	all := treeChunks(keyOff, keySize, func(int) bool { return false })
	if len(skip) > 0 && len(skip) <= len(all) {
		return skip
	}
	return all
}

// probeHashCost is the probe's hash and addressing in compare-and-branch
// units (see hotCache): the multiplier, the multiply, the shift, the
// scaling, the table address and its add, and the dependent slot load.
// They are straight-line instructions with no branch to mispredict,
// which is why they cost less than a unit each.
const probeHashCost = 4

// costMispredict is a mispredicted branch in compare-and-branch units,
// for mapinline's choice between a chain and a probe (inlineProbe): a
// flushed pipeline is about 15 cycles, but the figure is set lower so
// that chains keep tables of three or four equally likely entries (as
// the key takes one or two compares), whose constant hits later passes
// (taildup, constprop) fold.
const costMispredict = 6

// probeCost is the expected cost of a probe per lookup over nch chunks:
// load and combine each chunk, hash and address, compare each chunk; a
// second way compares again for about half of the lookups, and a result
// byte (some cached result is a miss) is one more load and test.
func probeCost(nch, ways int, flag bool) float64 {
	c := 2*float64(nch) + probeHashCost + float64(nch)
	if ways == 2 {
		c += 0.5 * float64(nch)
	}
	if flag {
		c++
	}
	return c
}

// probeForceWays, set only by tests, restricts the search to tables of
// that many slots per bucket.
var probeForceWays int

// probeTable is a collision-free placement of keys into 2^bits buckets of
// ways slots each.
type probeTable struct {
	chunks []keyChunk // key chunks hashed and compared
	mult   uint64
	bits   int
	ways   int   // 1 or 2
	slot   []int // per key: bucket*ways + way
	tries  int   // hash evaluations the search spent (for tests)
	// disp, for a displaced table (probe_chd.go), holds the displacement
	// of each of the 2^gbits groups; nil for a plain one.
	disp  []uint32
	gbits int
}

// bucketOfVals is the bucket of a key with chunk values vals.
func (t *probeTable) bucketOfVals(vals []uint64) int {
	v := probeCombine(vals, t.chunks, t.mult)
	if t.disp != nil {
		return t.displaced(v)
	}
	return probeBucket(v, t.mult, t.bits)
}

// probeChunkValue is the zero-extended value a load of ch from key gives.
func probeChunkValue(key []byte, ch keyChunk) uint64 {
	var b [8]byte
	copy(b[:], key[ch.off:ch.off+ch.size.Sizeof()])
	return binary.LittleEndian.Uint64(b[:])
}

// probePacked reports whether the chunks fit one 64-bit value side by
// side.
func probePacked(chs []keyChunk) bool {
	n := 0
	for _, ch := range chs {
		n += ch.size.Sizeof()
	}
	return n <= 8
}

// probeCombine is v for chunk values vals, exactly as the emitted code
// computes it.
func probeCombine(vals []uint64, chs []keyChunk, m uint64) uint64 {
	v := vals[0]
	if probePacked(chs) {
		shift := 8 * chs[0].size.Sizeof()
		for k := 1; k < len(chs); k++ {
			v |= vals[k] << shift
			shift += 8 * chs[k].size.Sizeof()
		}
		return v
	}
	for k := 1; k < len(chs); k++ {
		v = v*m ^ vals[k]
	}
	return v
}

// probeBucket is the bucket of v in a table of 2^b buckets.
func probeBucket(v, m uint64, b int) int {
	return int((v * m) >> (64 - b))
}

// bucketOf is the bucket of key in t.
func (t *probeTable) bucketOf(key []byte) int {
	vals := make([]uint64, len(t.chunks))
	for k, ch := range t.chunks {
		vals[k] = probeChunkValue(key, ch)
	}
	return t.bucketOfVals(vals)
}

// splitmix64 is the search's generator: fixed, so that a placement never
// depends on the Go version.
func splitmix64(s *uint64) uint64 {
	*s += 0x9e3779b97f4a7c15
	z := *s
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// placeProbe searches a placement of keys (distinct, at least one) hashed
// on chs, preferring one slot per bucket and then the smallest table. fits
// says whether a table of the given buckets and ways is small enough. It
// returns nil when no placement is found within the budget.
func placeProbe(keys [][]byte, chs []keyChunk, fits func(buckets, ways int) bool) *probeTable {
	if len(keys) == 0 || len(chs) == 0 {
		return nil
	}
	vals := make([][]uint64, len(keys))
	for i, key := range keys {
		vals[i] = make([]uint64, len(chs))
		for k, ch := range chs {
			vals[i][k] = probeChunkValue(key, ch)
		}
	}
	seen := map[string]bool{}
	for _, key := range keys {
		var id []byte
		for _, ch := range chs {
			id = append(id, key[ch.off:ch.off+ch.size.Sizeof()]...)
		}
		if seen[string(id)] {
			// Equal in every compared chunk: no slot could tell them
			// apart.
			return nil
		}
		seen[string(id)] = true
	}
	packed := probePacked(chs)
	combined := make([]uint64, len(keys))
	if packed {
		for i := range keys {
			combined[i] = probeCombine(vals[i], chs, 0)
		}
	}
	bmin := max(1, bits.Len(uint(len(keys)-1)))
	type shape struct{ bits, ways int }
	var shapes []shape
	for b := bmin; b <= bmin+probeExtraBits; b++ {
		shapes = append(shapes, shape{b, 1})
	}
	for b := max(1, bmin-1); b <= bmin+1; b++ {
		shapes = append(shapes, shape{b, 2})
	}
	if len(keys) > probePlainMaxKeys {
		// A plain table this full almost never places without
		// collisions: go straight to displacement.
		shapes = nil
	}
	seed := uint64(probeSeed)
	tries := 0
	for _, sh := range shapes {
		if probeForceWays != 0 && sh.ways != probeForceWays {
			continue
		}
		if !fits(1<<sh.bits, sh.ways) || len(keys) > sh.ways<<sh.bits {
			continue
		}
		fill := make([]int, 1<<sh.bits)
		slot := make([]int, len(keys))
		for range probeTries {
			m := splitmix64(&seed) | 1
			clear(fill)
			ok := true
			for i := range keys {
				tries++
				v := combined[i]
				if !packed {
					v = probeCombine(vals[i], chs, m)
				}
				bk := probeBucket(v, m, sh.bits)
				if fill[bk] == sh.ways {
					ok = false
					break
				}
				slot[i] = bk*sh.ways + fill[bk]
				fill[bk]++
			}
			if ok {
				t := &probeTable{chunks: chs, mult: m, bits: sh.bits, ways: sh.ways, slot: slot, tries: tries}
				if t.sentinels() != nil {
					return t
				}
			}
		}
	}
	if probeForceWays == 2 {
		return nil
	}
	return placeDisplaced(vals, chs, packed, combined, fits)
}

// sentinels returns, for every bucket, chunk values that hash to another
// bucket, or nil if some bucket has none among the candidates tried.
func (t *probeTable) sentinels() [][]uint64 {
	out := make([][]uint64, 1<<t.bits)
	found := 0
	vals := make([]uint64, len(t.chunks))
	for j := uint64(0); j < 64 && found < len(out); j++ {
		for k, ch := range t.chunks {
			// Candidate j: a multiple of the golden ratio, cut to the
			// chunk's size (a value its load can give).
			vals[k] = (j + uint64(k)) * 0x9e3779b97f4a7c15 >> (64 - 8*ch.size.Sizeof())
		}
		bk := t.bucketOfVals(vals)
		for b := range out {
			if out[b] == nil && b != bk {
				out[b] = append([]uint64(nil), vals...)
				found++
			}
		}
	}
	if found < len(out) {
		return nil
	}
	return out
}

// probeLayout is where a slot's parts sit.
type probeLayout struct {
	// keyBase is where the key's byte 0 sits in a slot: the key's stack
	// offset modulo the largest chunk's size, so that every chunk has
	// the alignment in the (8-aligned) slot that its load has on the
	// stack.
	keyBase  int
	flagOff  int  // the result byte, if flag
	flag     bool // a result byte follows the key
	valOff   int
	slotSize int
}

// newProbeLayout lays out slots for a key of keySize bytes at fp+keyOff,
// compared in chunks chs, and values of valueSize bytes.
func newProbeLayout(keyOff int16, chs []keyChunk, keySize, valueSize int, flag bool) probeLayout {
	align := 1
	for _, ch := range chs {
		align = max(align, ch.size.Sizeof())
	}
	l := probeLayout{keyBase: (int(keyOff)%align + align) % align, flag: flag}
	l.flagOff = l.keyBase + keySize
	n := l.flagOff
	if flag {
		n++
	}
	l.valOff = int(roundUp(uint64(n), 8))
	l.slotSize = int(roundUp(uint64(l.valOff+valueSize), 8))
	return l
}

// keyAt is the offset of chunk ch in a slot.
func (l probeLayout) keyAt(ch keyChunk) int { return l.keyBase + ch.off }

// probeBytes is the size of a table with the given shape.
func (l probeLayout) probeBytes(buckets, ways int) int { return buckets * ways * l.slotSize }

// encode lays out the table: key i in its slot with results[i], the value
// bytes (nil: a cached miss); every empty slot holds its bucket's
// sentinel.
func (t *probeTable) encode(l probeLayout, keys [][]byte, results [][]byte) []byte {
	base := t.slotsOff()
	out := make([]byte, base+l.probeBytes(1<<t.bits, t.ways))
	for g, d := range t.disp {
		binary.LittleEndian.PutUint32(out[4*g:], d)
	}
	used := make([]bool, (len(out)-base)/l.slotSize)
	for i, key := range keys {
		at := base + t.slot[i]*l.slotSize
		used[t.slot[i]] = true
		for _, ch := range t.chunks {
			copy(out[at+l.keyAt(ch):], key[ch.off:ch.off+ch.size.Sizeof()])
		}
		if results[i] != nil {
			if l.flag {
				out[at+l.flagOff] = 1
			}
			copy(out[at+l.valOff:], results[i])
		}
	}
	sent := t.sentinels()
	for s, u := range used {
		if u {
			continue
		}
		at := base + s*l.slotSize
		for k, ch := range t.chunks {
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], sent[s/t.ways][k])
			copy(out[at+l.keyAt(ch):], b[:ch.size.Sizeof()])
		}
	}
	return out
}

// describe renders the table's shape for remarks.
func (t *probeTable) describe(l probeLayout) string {
	if t.disp != nil {
		return fmt.Sprintf("hashed probe with displacements, 2^%d slots in %d groups, %d bytes", t.bits, len(t.disp), t.slotsOff()+l.probeBytes(1<<t.bits, 1))
	}
	way := "1 slot"
	if t.ways == 2 {
		way = "2 slots"
	}
	return fmt.Sprintf("hashed probe, 2^%d buckets of %s, %d bytes", t.bits, way, l.probeBytes(1<<t.bits, t.ways))
}

// probeBlocks emits the probe of the key at fp+keyOff in table (see the
// comment at the top of this file). A hit leaves the value pointer in R0
// and jumps to after, a cached miss leaves NULL in R0 and jumps to after,
// a key the table does not hold goes to miss with R1 and R2 intact. It
// returns the blocks, entry first.
func probeBlocks(p *program.Program, key keyAddr, t *probeTable, l probeLayout, table string, after, miss *program.Block) []*program.Block {
	chs := t.chunks
	load := key.load
	h := p.NewBlock()
	// v into R4 (R3 a temporary; with one chunk R3 keeps it for the
	// compare), M in R5.
	h.Insns = append(h.Insns, load(asm.R3, chs[0]), asm.Mov.Reg(asm.R4, asm.R3),
		asm.LoadImm(asm.R5, int64(t.mult), asm.DWord))
	packed := probePacked(chs)
	shift := 8 * chs[0].size.Sizeof()
	for _, ch := range chs[1:] {
		h.Insns = append(h.Insns, load(asm.R3, ch))
		if packed {
			h.Insns = append(h.Insns, asm.LSh.Imm(asm.R3, int32(shift)), asm.Or.Reg(asm.R4, asm.R3))
			shift += 8 * ch.size.Sizeof()
		} else {
			h.Insns = append(h.Insns, asm.Mul.Reg(asm.R4, asm.R5), asm.Xor.Reg(asm.R4, asm.R3))
		}
	}
	h.Insns = append(h.Insns, asm.Mul.Reg(asm.R4, asm.R5))
	if t.disp != nil {
		h.Insns = append(h.Insns, t.displacedSlot(table)...)
	} else {
		// The shift leaves at most b bits: the verifier bounds the
		// offset by it, no mask needed.
		h.Insns = append(h.Insns, asm.RSh.Imm(asm.R4, int32(64-t.bits)))
	}
	bucket := t.ways * l.slotSize
	if bits.OnesCount(uint(bucket)) == 1 {
		h.Insns = append(h.Insns, asm.LSh.Imm(asm.R4, int32(bits.TrailingZeros(uint(bucket)))))
	} else {
		h.Insns = append(h.Insns, asm.Mul.Imm(asm.R4, int32(bucket)))
	}
	h.Insns = append(h.Insns, asm.LoadMapValue(asm.R0, 0, uint32(t.slotsOff())).WithReference(table), asm.Add.Reg(asm.R0, asm.R4))
	out := []*program.Block{h}

	var null *program.Block
	if l.flag {
		null = p.NewBlock()
		null.Insns = []asm.Instruction{asm.Mov.Imm(asm.R0, 0), clearRef(asm.Ja.Label(""))}
		null.Target = after
	}
	// way emits the compare of one slot at byte offset base of the
	// bucket; a mismatch goes to next.
	cur := h
	for w := range t.ways {
		base := w * l.slotSize
		next := miss
		var nextBlock *program.Block
		if w+1 < t.ways {
			nextBlock = p.NewBlock()
			next = nextBlock
		}
		for _, ch := range chs {
			if len(chs) > 1 {
				cur.Insns = append(cur.Insns, load(asm.R3, ch))
			}
			cur.Insns = append(cur.Insns,
				asm.LoadMem(asm.R4, asm.R0, int16(base+l.keyAt(ch)), ch.size),
				clearRef(asm.JNE.Reg(asm.R3, asm.R4, "")))
			cur.Target = next
			nb := p.NewBlock()
			cur.Next = nb
			cur = nb
			out = append(out, cur)
		}
		// cur is the hit of this slot.
		if l.flag {
			cur.Insns = append(cur.Insns,
				asm.LoadMem(asm.R4, asm.R0, int16(base+l.flagOff), asm.Byte),
				clearRef(asm.JEq.Imm(asm.R4, 0, "")))
			cur.Target = null
			nb := p.NewBlock()
			cur.Next = nb
			cur = nb
			out = append(out, cur)
		}
		cur.Insns = append(cur.Insns, asm.Add.Imm(asm.R0, int32(base+l.valOff)), clearRef(asm.Ja.Label("")))
		cur.Target = after
		if nextBlock != nil {
			out = append(out, nextBlock)
			cur = nextBlock
		}
	}
	if null != nil {
		out = append(out, null)
	}
	return out
}

// probePlan is a placed probe and its table bytes.
type probePlan struct {
	t    *probeTable
	l    probeLayout
	data []byte
	flag bool
}

// planProbe places keys (at fp+keyOff) whose lookup results are results
// (nil: a miss), hashed and compared on chs, in a table of at most
// probeMaxBytes; nil if no placement is found.
func planProbe(keys, results [][]byte, chs []keyChunk, keyOff int16, keySize, valueSize int) *probePlan {
	flag := false
	for _, r := range results {
		if r == nil {
			flag = true
		}
	}
	l := newProbeLayout(keyOff, chs, keySize, valueSize, flag)
	fits := func(buckets, ways int) bool {
		// Slot offsets must fit a load's 16-bit offset.
		return ways*l.slotSize <= 1<<14 && l.probeBytes(buckets, ways) <= probeMaxBytes
	}
	t := placeProbe(keys, chs, fits)
	if t == nil {
		return nil
	}
	return &probePlan{t: t, l: l, data: t.encode(l, keys, results), flag: flag}
}

// emitProbe isolates the lookup at s and puts the map's guard and the
// probe in front of it. With fallbackOnMiss a key the table does not hold
// runs the original lookup; otherwise the table is the whole map and such
// a key is a miss (NULL).
func (c *Context) emitProbe(s lookupSite, pp *probePlan, fallbackOnMiss bool) error {
	p := c.Prog
	call, after := isolateCall(p, s.fn, s.block, s.index)
	g, err := c.guardCheck(p, s.mapName, asm.R3, call)
	if err != nil {
		return err
	}
	miss := call
	if !fallbackOnMiss {
		miss = p.NewBlock()
		miss.Insns = []asm.Instruction{asm.Mov.Imm(asm.R0, 0), clearRef(asm.Ja.Label(""))}
		miss.Target = after
	}
	return c.emitProbeAt(s, pp, miss, after, g)
}

// emitProbeAt puts the probe after the guard g of the isolated lookup at
// s: a key the table does not hold goes to miss, every answer continues
// at after.
func (c *Context) emitProbeAt(s lookupSite, pp *probePlan, miss, after, g *program.Block) error {
	p := c.Prog
	table := c.addCacheMap(s.mapName, uint32(len(pp.data)), [][]byte{pp.data})
	key, _ := s.keyAt()
	c.readsWide(key, pp.t.chunks)
	body := probeBlocks(p, key, pp.t, pp.l, table, after, miss)
	blocks := append([]*program.Block{g}, body...)
	if !slices.Contains(s.fn.Blocks, miss) {
		blocks = append(blocks, miss)
	}
	g.Next = body[0]
	s.block.Next = g
	insertAfter(s.fn, s.block, blocks...)
	return nil
}
