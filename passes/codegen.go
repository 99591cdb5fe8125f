package passes

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/program"
)

// bpfFRdonlyProg is BPF_F_RDONLY_PROG: programs may only read the map.
const bpfFRdonlyProg = 1 << 7

// insertAfter places blocks right after anchor in f's layout.
func insertAfter(f *program.Func, anchor *program.Block, blocks ...*program.Block) {
	i := slices.Index(f.Blocks, anchor)
	f.Blocks = slices.Insert(f.Blocks, i+1, blocks...)
}

// isolateCall splits the block around the instruction at index i, so that
// the instruction sits alone in a block. It returns that block and the
// block that continues after it; b keeps the instructions before i and
// falls through to the call block.
func isolateCall(p *program.Program, f *program.Func, b *program.Block, i int) (call, after *program.Block) {
	call, after = p.NewBlock(), p.NewBlock()
	call.Insns = []asm.Instruction{b.Insns[i]}
	after.Insns = append([]asm.Instruction(nil), b.Insns[i+1:]...)
	after.Target, after.Next = b.Target, b.Next
	b.Insns = b.Insns[:i:i]
	b.Target, b.Next = nil, call
	call.Next = after
	insertAfter(f, b, call, after)
	return call, after
}

// guardCheck returns instructions that compare the guard of mapName with
// the version the code is specialized to, and jump to fallback on mismatch.
// It clobbers scratch (and scratch+1 for versions beyond 31 bits).
func (c *Context) guardCheck(p *program.Program, mapName string, scratch asm.Register, fallback *program.Block) (*program.Block, error) {
	slot, err := c.Guards.Slot(mapName)
	if err != nil {
		return nil, err
	}
	if _, ok := c.Coll.Maps[guard.MapName]; !ok {
		c.Coll.Maps[guard.MapName] = guard.Spec()
	}
	version := c.Guards.Version(mapName)
	g := p.NewBlock()
	g.Insns = []asm.Instruction{
		asm.LoadMapValue(scratch, 0, slot*8).WithReference(guard.MapName),
		asm.LoadMem(scratch, scratch, 0, asm.DWord),
	}
	if version <= math.MaxInt32 {
		g.Insns = append(g.Insns, asm.JNE.Imm(scratch, int32(version), ""))
	} else {
		g.Insns = append(g.Insns,
			asm.LoadImm(scratch+1, int64(version), asm.DWord),
			asm.JNE.Reg(scratch, scratch+1, ""))
	}
	g.Insns[len(g.Insns)-1] = clearRef(g.Insns[len(g.Insns)-1])
	g.Target = fallback
	return g, nil
}

// clearRef drops the label a jump constructor attaches: the model links
// blocks, not symbols.
func clearRef(ins asm.Instruction) asm.Instruction {
	ins.Offset = 0
	return ins.WithReference("")
}

// addCacheMap adds a program-read-only array holding values, and returns
// its name. Pointers into it replace pointers into the original map; the
// verifier rejects any write through them.
func (c *Context) addCacheMap(of string, valueSize uint32, values [][]byte) string {
	c.cacheSeq++
	name := fmt.Sprintf("mc%d_%s", c.cacheSeq, of)
	if len(name) > 15 {
		name = name[:15]
	}
	// One element holding every value: direct value pointers only work
	// into single-element arrays.
	var all []byte
	for _, v := range values {
		all = append(all, v...)
	}
	c.Coll.Maps[name] = frozenArray(name, all)
	return name
}

// frozenArray is the spec of a read-only (for programs) array of one
// element holding data: the form of every table the passes compile, since
// direct value pointers only work into single-element arrays.
func frozenArray(name string, data []byte) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  uint32(len(data)),
		MaxEntries: 1,
		Flags:      bpfFRdonlyProg,
		Contents:   []ebpf.MapKV{{Key: uint32(0), Value: data}},
	}
}

// keyAddr is where generated code reads a lookup's key: at off from reg,
// which is R10 for a key in the function's own frame and R2 (the lookup's
// key argument, intact until the call) for a key in a caller's frame.
// frameOff is the key's offset from its frame's R10: the verifier checks
// the alignment of stack loads against the frame, so chunks are aligned
// on it.
type keyAddr struct {
	reg      asm.Register
	off      int16
	frameOff int16
}

// stackKey is a key at fp+off in the function's own frame.
func stackKey(off int16) keyAddr { return keyAddr{reg: asm.R10, off: off, frameOff: off} }

// load reads chunk ch of the key into dst.
func (k keyAddr) load(dst asm.Register, ch keyChunk) asm.Instruction {
	return asm.LoadMem(dst, k.reg, k.off+int16(ch.off), ch.size)
}

// keyChunk is a piece of a key compared in one instruction.
type keyChunk struct {
	off  int // byte offset within the key
	size asm.Size
}

// chunks splits a key of n bytes into 4-, 2- and 1-byte loads.
func chunks(from, n int) []keyChunk {
	var out []keyChunk
	for off := from; off < n; {
		switch {
		case n-off >= 4:
			out = append(out, keyChunk{off, asm.Word})
			off += 4
		case n-off >= 2:
			out = append(out, keyChunk{off, asm.Half})
			off += 2
		default:
			out = append(out, keyChunk{off, asm.Byte})
			off++
		}
	}
	return out
}

// chunkValue reads the little-endian value a load of ch from key gives.
func chunkValue(key []byte, ch keyChunk) uint32 {
	switch ch.size {
	case asm.Word:
		return binary.LittleEndian.Uint32(key[ch.off:])
	case asm.Half:
		return uint32(binary.LittleEndian.Uint16(key[ch.off:]))
	}
	return uint32(key[ch.off])
}

// fullMask is the mask of a load of the given size.
func fullMask(size asm.Size) uint32 {
	switch size {
	case asm.Half:
		return 0xffff
	case asm.Byte:
		return 0xff
	}
	return math.MaxUint32
}

// jne32 compares the low 32 bits of r with v: exact for zero-extended
// loads of up to four bytes, whatever v's top bit.
func jne32(r asm.Register, v uint32) asm.Instruction {
	return clearRef(asm.JNE.Imm32(r, int32(v), ""))
}

// matcher is one candidate of a compare chain: the key bytes that must be
// equal (under mask, for prefixes) and the value pointer it yields.
type matcher struct {
	key  []byte
	mask []byte // nil: all bytes must match
	// valueIndex is the entry's slot in the cache map, or -1 for a
	// cached miss (the lookup returns NULL).
	valueIndex int
}

// result is the instruction that sets R0 to the matcher's lookup result:
// a pointer to its value in the cache map, or NULL for a cached miss.
func (m matcher) result(cache string, valueSize uint32) asm.Instruction {
	if m.valueIndex < 0 {
		return asm.Mov.Imm(asm.R0, 0)
	}
	return asm.LoadMapValue(asm.R0, 0, uint32(m.valueIndex)*valueSize).WithReference(cache)
}

// compareChain emits blocks that test the key at fp+keyOff against each
// matcher in order; a match loads the value pointer into R0 and goes to
// after, no match goes to miss. R3-R5 are scratch; R1 and R2 keep the
// lookup's arguments so that miss may be the original call.
func compareChain(p *program.Program, key keyAddr, keySize int, ms []matcher, cache string, valueSize uint32, after, miss *program.Block) []*program.Block {
	chs := chunks(0, keySize)
	// Keys of up to three chunks stay in R3-R5 for the whole chain.
	resident := len(chs) <= 3
	var out []*program.Block
	if resident && len(ms) > 0 {
		load := p.NewBlock()
		for i, ch := range chs {
			load.Insns = append(load.Insns, key.load(asm.R3+asm.Register(i), ch))
		}
		out = append(out, load)
	}
	tests := make([]*program.Block, len(ms))
	for i := range ms {
		tests[i] = p.NewBlock()
	}
	for i, m := range ms {
		next := miss
		if i+1 < len(ms) {
			next = tests[i+1]
		}
		// One block per chunk comparison; the block after the last one
		// is the hit. A matcher with nothing to compare (a /0 prefix)
		// is its own hit.
		cur := tests[i]
		var seq []*program.Block
		for k, ch := range chs {
			var maskV uint32 = math.MaxUint32
			if m.mask != nil {
				maskV = chunkValue(m.mask, ch)
				if maskV == 0 {
					continue
				}
			}
			reg := asm.R3 + asm.Register(k)
			if !resident {
				reg = asm.R3
				cur.Insns = append(cur.Insns, key.load(reg, ch))
			}
			if maskV != fullMask(ch.size) {
				cur.Insns = append(cur.Insns, asm.Mov.Reg32(asm.R0, reg), asm.And.Imm32(asm.R0, int32(maskV)))
				reg = asm.R0
			}
			cur.Insns = append(cur.Insns, jne32(reg, chunkValue(m.key, ch)&maskV))
			cur.Target = next
			seq = append(seq, cur)
			cur = p.NewBlock()
		}
		hit := cur
		hit.Insns = append(hit.Insns, m.result(cache, valueSize), clearRef(asm.Ja.Label("")))
		hit.Target = after
		for k := range seq {
			if k+1 < len(seq) {
				seq[k].Next = seq[k+1]
			} else {
				seq[k].Next = hit
			}
		}
		out = append(out, seq...)
		out = append(out, hit)
	}
	// Link the chain's entry: the resident load falls into the first test.
	if resident && len(ms) > 0 {
		out[0].Next = tests[0]
	}
	return out
}

// treeChunks splits the key bytes a search tree compares into chunks of
// 8, 4, 2 and 1 bytes. Bytes for which skip is true (constant at the
// site, so equal in every candidate key) are not compared. A chunk never
// crosses a skipped byte and is aligned on its size at its stack address
// keyOff+off, because the verifier refuses misaligned stack accesses.
func treeChunks(keyOff int16, keySize int, skip func(i int) bool) []keyChunk {
	var out []keyChunk
	for off := 0; off < keySize; {
		if skip(off) {
			off++
			continue
		}
		end := off
		for end < keySize && !skip(end) {
			end++
		}
		for off < end {
			for _, sz := range []asm.Size{asm.DWord, asm.Word, asm.Half, asm.Byte} {
				n := sz.Sizeof()
				if end-off >= n && (int(keyOff)+off)%n == 0 {
					out = append(out, keyChunk{off, sz})
					off += n
					break
				}
			}
		}
	}
	return out
}

// chunkBE is the chunk's bytes of key as a big-endian integer: comparing
// these integers chunk after chunk orders keys like their bytes.
func chunkBE(key []byte, ch keyChunk) uint64 {
	var v uint64
	for _, b := range key[ch.off : ch.off+ch.size.Sizeof()] {
		v = v<<8 | uint64(b)
	}
	return v
}

// loadChunkBE loads a key chunk into r and converts it to big endian
// (BPF_END), so that unsigned compares order it like bytes.
func loadChunkBE(r asm.Register, key keyAddr, ch keyChunk) []asm.Instruction {
	out := []asm.Instruction{key.load(r, ch)}
	if ch.size != asm.Byte {
		out = append(out, asm.HostTo(asm.BE, r, ch.size))
	}
	return out
}

// searchTree emits a balanced binary search over matchers, which must be
// sorted by key bytes (bytes.Compare) and free of masks and duplicates.
// Each node compares the key at fp+keyOff with its matcher chunk by
// chunk, most significant first: lower goes left, higher right, equal in
// every chunk is the node's hit, which loads the value pointer (or NULL
// for a cached miss) into R0 and jumps to after. An empty subtree is
// miss. regs supplies the registers: with at least len(chs) of them (plus
// one for 8-byte constants above 31 bits), the chunks are loaded once and
// stay resident; otherwise each comparison reloads its chunk into regs[0]
// and regs[1] holds constants. regs must hold at least two registers, all
// dead at the lookup, and never R1 or R2 (the lookup's arguments, which
// miss may need). It returns the blocks, entry first.
func searchTree(p *program.Program, key keyAddr, chs []keyChunk, ms []matcher, regs []asm.Register, cache string, valueSize uint32, after, miss *program.Block) []*program.Block {
	needConst := false
	for _, m := range ms {
		for _, ch := range chs {
			if ch.size == asm.DWord && chunkBE(m.key, ch) > math.MaxInt32 {
				needConst = true
			}
		}
	}
	resident := len(chs) <= len(regs) && (!needConst || len(chs) < len(regs))
	chunkReg := func(k int) asm.Register {
		if resident {
			return regs[k]
		}
		return regs[0]
	}
	constReg := regs[len(regs)-1]
	if !resident {
		constReg = regs[1]
	}
	var out []*program.Block
	var node func(lo, hi int) *program.Block
	node = func(lo, hi int) *program.Block {
		if lo >= hi {
			return miss
		}
		mid := (lo + hi) / 2
		left, right := node(lo, mid), node(mid+1, hi)
		m := ms[mid]
		hit := p.NewBlock()
		hit.Insns = append(hit.Insns, m.result(cache, valueSize), clearRef(asm.Ja.Label("")))
		hit.Target = after
		// Built from the last chunk back, so each test knows what
		// follows it when its chunk is equal.
		blocks := []*program.Block{hit}
		next := hit
		for k := len(chs) - 1; k >= 0; k-- {
			ch := chs[k]
			r := chunkReg(k)
			v := chunkBE(m.key, ch)
			var prep []asm.Instruction
			if !resident {
				prep = loadChunkBE(r, key, ch)
			}
			cmp := func(op asm.JumpOp) asm.Instruction {
				switch {
				case ch.size != asm.DWord:
					return clearRef(op.Imm32(r, int32(uint32(v)), ""))
				case v <= math.MaxInt32:
					return clearRef(op.Imm(r, int32(v), ""))
				}
				return clearRef(op.Reg(r, constReg, ""))
			}
			if ch.size == asm.DWord && v > math.MaxInt32 {
				prep = append(prep, asm.LoadImm(constReg, int64(v), asm.DWord))
			}
			first := p.NewBlock()
			first.Insns = prep
			if left == miss && right == miss {
				// Nothing else to find below this node: one test.
				first.Insns = append(first.Insns, cmp(asm.JNE))
				first.Target, first.Next = miss, next
				blocks = append([]*program.Block{first}, blocks...)
			} else {
				second := p.NewBlock()
				first.Insns = append(first.Insns, cmp(asm.JLT))
				first.Target, first.Next = left, second
				second.Insns = []asm.Instruction{cmp(asm.JGT)}
				second.Target, second.Next = right, next
				blocks = append([]*program.Block{first, second}, blocks...)
			}
			next = first
		}
		// Subtrees are laid out after this node's tests and hit.
		out = append(out, blocks...)
		return next
	}
	entry := node(0, len(ms))
	// node appends a parent's tests after its subtrees: rotate the
	// root's group (the last one appended) to the front, so that the
	// entry comes first and needs no jump.
	i := slices.Index(out, entry)
	out = append(slices.Clone(out[i:]), out[:i]...)
	if resident {
		load := p.NewBlock()
		for k, ch := range chs {
			load.Insns = append(load.Insns, loadChunkBE(regs[k], key, ch)...)
		}
		load.Next = entry
		out = append([]*program.Block{load}, out...)
	}
	return out
}
