package passes

import (
	"encoding/binary"
	"maps"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
)

// storeMerge writes lookup keys to the stack as whole 64-bit words. Code
// built from C structs stores a key field by field (a MAC as a word and a
// half, a VLAN id as another half), and whatever reads the key next reads
// it in wider words: the helper's hash, or a hot cache's probe loading
// eight bytes at once. A load that spans several pending narrow stores
// cannot take its bytes from the store buffer and waits until they reach
// the cache, a store-forwarding stall of a dozen cycles or more, on every
// lookup. storeMerge replaces the narrow stores a block makes into an
// 8-byte slot of a lookup key with one 64-bit store of the same bytes,
// assembled in a register where the last of them was: the stored values
// (still in their registers), the other bytes of the slot reloaded as
// they are. Memory ends up byte for byte as before.
//
// A slot is merged only where some reader would wait: a load of a 32-bit
// word of a hashed map's key (the helper's hash) or of the slot whole (a
// probe or search tree a pass emitted, Context.wideReads) that spans two
// stores. An LPM trie's key, or one read back as it was written, stays.
// And only when nothing between its first narrow store and the last can
// see the difference: no call, no load or store that may touch the slot
// (through R10 at an overlapping offset, or through a pointer the analysis
// cannot place outside the stack), every byte written at most once, and
// two registers no instruction of that stretch uses, dead before and
// after it, to assemble the word in. Each store becomes an OR of its
// value into the word where it stood, so its register may change after.
//
// The slot's bytes no store of the block writes are reloaded to complete
// the word, whether or not the program wrote them before: the verifier
// lets a privileged loader (CAP_PERFMON, as the agent runs) read
// uninitialized stack, and the word stores back what was there.
func storeMerge(c *Context) error {
	if c.Coll.ByteOrder != nil && c.Coll.ByteOrder != binary.LittleEndian {
		c.skipped(c.Prog.Funcs[0].Name, -1, "", "big-endian program: the merged word would be assembled in the other byte order")
		return nil
	}
	if len(c.wideReads) == 0 && !slices.ContainsFunc(slices.Collect(maps.Values(c.Coll.Maps)), func(ms *ebpf.MapSpec) bool { return hashedKey(ms.Type) }) {
		return nil // no reader that could wait: spare the analysis
	}
	res, err := c.Analysis()
	if err != nil {
		return err
	}
	sites, err := c.lookupSites()
	if err != nil {
		return err
	}
	// slots maps each 8-byte slot holding key bytes to the parts of the
	// keys in it and how wide their readers read them.
	slots := map[int16][]keyPart{}
	for _, s := range sites {
		ms := c.Coll.Maps[s.mapName]
		key, ok := s.keyAt()
		if !ok || ms == nil {
			continue
		}
		masks := map[int16]uint8{}
		for o := key.frameOff; o < key.frameOff+int16(ms.KeySize); o++ {
			masks[o&^7] |= 1 << (o - o&^7)
		}
		for slot, m := range masks {
			kp := keyPart{mask: m}
			switch {
			case c.wideReads[slot]:
				kp.granule = 8 // a probe or search tree loads the slot whole
			case hashedKey(ms.Type):
				kp.granule = 4 // the helper's hash reads 32-bit words
			default:
				continue // read as it was written, or byte by byte
			}
			if !slices.Contains(slots[slot], kp) {
				slots[slot] = append(slots[slot], kp)
			}
		}
	}
	if len(slots) == 0 {
		return nil
	}
	for _, f := range c.Prog.Funcs {
		for _, b := range f.Blocks {
			if n := mergeBlock(res, b, slots); n > 0 {
				c.changed(f.Name, b.ID, "", "%d lookup key slots written as one 64-bit store each instead of narrow stores (no store-forwarding stall when the key is read in words)", n)
			}
		}
	}
	return nil
}

// mergePiece is one narrow store of a slot: size bytes at offset off in
// the slot, from register src or the constant imm.
type mergePiece struct {
	at   int // instruction index
	off  int
	size asm.Size
	src  asm.Register
	imm  bool
	val  int64
}

// slotMerge is a slot of a block whose narrow stores are merged: each
// store becomes an OR into acc, and after the last one the slot's other
// bytes are reloaded and acc is stored as one word.
type slotMerge struct {
	slot   int16
	pieces []mergePiece
	// acc collects the bytes and tmp (when a stored register is still
	// needed after its store) shifts a piece; neither is touched by the
	// block between the first and the last store, nor needed after.
	acc, tmp asm.Register
}

func (m *slotMerge) first() int { return m.pieces[0].at }
func (m *slotMerge) last() int  { return m.pieces[len(m.pieces)-1].at }

// mergeBlock merges the key slots of b it may and returns how many.
func mergeBlock(res *analysis.Result, b *program.Block, slots map[int16][]keyPart) int {
	bySlot := map[int16][]mergePiece{}
	var order []int16
	for i, ins := range b.Insns {
		cls := ins.OpCode.Class()
		if (cls != asm.StXClass && cls != asm.StClass) || ins.Dst != asm.R10 || ins.OpCode.Mode() != asm.MemMode {
			continue
		}
		size := ins.OpCode.Size()
		off := ins.Offset
		slot := off &^ 7
		if size == asm.DWord || len(slots[slot]) == 0 || int(off-slot)+size.Sizeof() > 8 {
			continue
		}
		if _, seen := bySlot[slot]; !seen {
			order = append(order, slot)
		}
		bySlot[slot] = append(bySlot[slot], mergePiece{at: i, off: int(off - slot), size: size, src: ins.Src, imm: cls == asm.StClass, val: ins.Constant})
	}
	taken := regSet(0) // registers some merge of this block assembles in
	edits := map[int][]asm.Instruction{}
	n := 0
	for _, slot := range order {
		m := &slotMerge{slot: slot, pieces: bySlot[slot]}
		split := slices.ContainsFunc(slots[slot], func(kp keyPart) bool { return kp.split(m) })
		if !split || !mergeable(res, b, m) || !m.pickRegs(res, b, taken) {
			// A key part written by one store is read back from it
			// without a stall.
			continue
		}
		taken |= regBit(m.acc) | regBit(m.tmp)
		for at, seq := range m.rewrite(res, b) {
			edits[at] = seq
		}
		n++
	}
	if n == 0 {
		return 0
	}
	var out []asm.Instruction
	for i, ins := range b.Insns {
		if seq, ok := edits[i]; ok {
			out = append(out, seq...)
			continue
		}
		out = append(out, ins)
	}
	b.Insns = out
	return n
}

// keyPart is the bytes of one key in a slot (mask) and the width its
// readers load it in (granule: 4 or 8 bytes, aligned).
type keyPart struct {
	mask    uint8
	granule int
}

// split reports whether some load of the key part, granule bytes wide,
// would read bytes of more than one store: two or more of m's, or one of
// m's and bytes written elsewhere. Such a load waits for the stores.
func (kp keyPart) split(m *slotMerge) bool {
	for g := 0; g < 8; g += kp.granule {
		chunk := uint8((1<<kp.granule - 1) << g)
		want := kp.mask & chunk
		if want == 0 {
			continue
		}
		n := 0
		var written uint8
		for _, p := range m.pieces {
			bytes := uint8((1<<p.size.Sizeof() - 1) << p.off)
			if bytes&want != 0 {
				n++
				written |= bytes
			}
		}
		if want&^written != 0 && n > 0 {
			n++
		}
		if n >= 2 {
			return true
		}
	}
	return false
}

// hashedKey reports whether a lookup in a map of type t hashes its key,
// reading it in 32-bit words.
func hashedKey(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash:
		return true
	}
	return false
}

// mergeable checks the conditions of storeMerge for m.
func mergeable(res *analysis.Result, b *program.Block, m *slotMerge) bool {
	var covered [8]bool
	for _, p := range m.pieces {
		for k := p.off; k < p.off+p.size.Sizeof(); k++ {
			if covered[k] {
				return false // written twice: keep the stores' order
			}
			covered[k] = true
		}
	}
	w := res.Walk(b)
	if w == nil {
		return false
	}
	isPiece := func(i int) bool {
		return slices.ContainsFunc(m.pieces, func(p mergePiece) bool { return p.at == i })
	}
	for i := m.first(); i <= m.last(); i++ {
		ins := b.Insns[i]
		if isPiece(i) {
			continue
		}
		if isCall(ins) || !mayNotTouch(w.At(i), ins, m.slot) {
			return false
		}
	}
	return true
}

// pickRegs chooses acc and tmp: registers no instruction of b touches
// from the first store to the last, dead before the first and after the
// last, and not taken by another merge of the block.
func (m *slotMerge) pickRegs(res *analysis.Result, b *program.Block, taken regSet) bool {
	busy := taken | regBit(asm.R10)
	for r := asm.R0; r <= asm.R9; r++ {
		if res.LiveIn(b, m.first()).Has(r) || res.LiveOut(b, m.last()).Has(r) {
			busy |= regBit(r)
		}
	}
	for _, ins := range b.Insns[m.first() : m.last()+1] {
		use, def := useDef(ins)
		busy |= use | def
	}
	var free []asm.Register
	for r := asm.R0; r <= asm.R9; r++ {
		if busy&regBit(r) == 0 {
			free = append(free, r)
		}
	}
	if len(free) < 2 {
		return false
	}
	m.acc, m.tmp = free[0], free[1]
	return true
}

// rewrite returns, per store of m, the instructions that replace it.
func (m *slotMerge) rewrite(res *analysis.Result, b *program.Block) map[int][]asm.Instruction {
	out := map[int][]asm.Instruction{}
	started := false
	var constant uint64
	var covered [8]bool
	// add ORs the low size bytes of r, moved to byte off of the slot,
	// into acc; r may be clobbered.
	add := func(seq []asm.Instruction, r asm.Register, off int) []asm.Instruction {
		if off > 0 {
			seq = append(seq, asm.LSh.Imm(r, int32(8*off)))
		}
		if !started {
			started = true
			if r != m.acc {
				seq = append(seq, asm.Mov.Reg(m.acc, r))
			}
			return seq
		}
		return append(seq, asm.Or.Reg(m.acc, r))
	}
	for k, p := range m.pieces {
		var seq []asm.Instruction
		for i := p.off; i < p.off+p.size.Sizeof(); i++ {
			covered[i] = true
		}
		if p.imm {
			mask := uint64(1)<<(8*p.size.Sizeof()) - 1
			constant |= (uint64(p.val) & mask) << (8 * p.off)
		} else {
			// The stored register itself serves when nothing needs
			// it after the store; else tmp.
			r := p.src
			if res.LiveOut(b, p.at).Has(p.src) || p.src == asm.R10 {
				r = m.tmp
			}
			if !started && p.off == 0 {
				r = m.acc
			}
			switch p.size {
			case asm.Word:
				seq = append(seq, asm.Mov.Reg32(r, p.src))
			case asm.Half:
				if r != p.src {
					seq = append(seq, asm.Mov.Reg(r, p.src))
				}
				seq = append(seq, asm.And.Imm(r, 0xffff))
			default:
				if r != p.src {
					seq = append(seq, asm.Mov.Reg(r, p.src))
				}
				seq = append(seq, asm.And.Imm(r, 0xff))
			}
			seq = add(seq, r, p.off)
		}
		if k == len(m.pieces)-1 {
			seq = append(seq, m.finish(covered, constant, started)...)
		}
		out[p.at] = seq
	}
	return out
}

// finish reloads the slot's bytes no store of the block wrote, adds the
// constant pieces and stores acc as one word.
func (m *slotMerge) finish(covered [8]bool, constant uint64, started bool) []asm.Instruction {
	var seq []asm.Instruction
	for _, ch := range gapChunks(covered) {
		r := m.tmp
		if !started {
			r = m.acc
		}
		seq = append(seq, asm.LoadMem(r, asm.R10, m.slot+int16(ch.off), ch.size))
		if ch.off > 0 {
			seq = append(seq, asm.LSh.Imm(r, int32(8*ch.off)))
		}
		if started {
			seq = append(seq, asm.Or.Reg(m.acc, r))
		}
		started = true
	}
	switch {
	case !started:
		seq = append(seq, asm.LoadImm(m.acc, int64(constant), asm.DWord))
	case constant != 0 && constant <= 0x7fffffff:
		seq = append(seq, asm.Or.Imm(m.acc, int32(constant)))
	case constant != 0:
		seq = append(seq, asm.LoadImm(m.tmp, int64(constant), asm.DWord), asm.Or.Reg(m.acc, m.tmp))
	}
	return append(seq, asm.StoreMem(asm.R10, m.slot, m.acc, asm.DWord))
}

// mayNotTouch reports whether ins, with st the state before it, certainly
// neither reads nor writes the 8 bytes at R10+slot.
func mayNotTouch(st *analysis.State, ins asm.Instruction, slot int16) bool {
	cls := ins.OpCode.Class()
	var base asm.Register
	var size int
	switch {
	case cls == asm.LdXClass:
		base, size = ins.Src, ins.OpCode.Size().Sizeof()
	case cls == asm.StClass || cls == asm.StXClass:
		if ins.OpCode.Mode() != asm.MemMode {
			return false // atomics
		}
		base, size = ins.Dst, ins.OpCode.Size().Sizeof()
	case cls == asm.LdClass && ins.OpCode.Mode() != asm.ImmMode:
		return false // legacy packet loads: an implicit call
	default:
		return true // ALU, jumps, 64-bit immediates
	}
	if st == nil {
		return false
	}
	var lo int64
	switch v := st.Reg(base); {
	case base == asm.R10:
		lo = int64(ins.Offset)
	case v.Kind == analysis.PtrStack && v.OffKnown:
		lo = v.Off + int64(ins.Offset)
	case v.Kind == analysis.PtrPacket, v.Kind == analysis.PtrCtx, v.Kind == analysis.PtrMapValue, v.Kind == analysis.PtrMapData:
		return true
	default:
		return false
	}
	return lo+int64(size) <= int64(slot) || lo >= int64(slot)+8
}

// gapChunks covers the bytes of a slot that no piece writes with aligned
// loads, widest first.
func gapChunks(covered [8]bool) []keyChunk {
	var out []keyChunk
	for off := 0; off < 8; {
		if covered[off] {
			off++
			continue
		}
		size := asm.Byte
		for _, s := range []asm.Size{asm.Word, asm.Half} {
			n := s.Sizeof()
			if off%n != 0 || off+n > 8 {
				continue
			}
			free := true
			for k := off; k < off+n; k++ {
				free = free && !covered[k]
			}
			if free {
				size = s
				break
			}
		}
		out = append(out, keyChunk{off: off, size: size})
		off += size.Sizeof()
	}
	return out
}
