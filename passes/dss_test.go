package passes

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/program"
	"github.com/morpheus-go/morpheus/traffic"
	"github.com/morpheus-go/morpheus/verify"
)

// dssProg is the name of the hand-written test programs.
const dssProg = "dsstest"

// Packet layout of the hand-written programs: the key comes from the
// bytes at dssKeyAt (for LPM maps the prefix length is the byte at
// dssPlenAt), and a hit writes the value's first word at offset 0.
const (
	dssPlenAt = 14
	dssKeyAt  = 16
)

// lookupOpts shapes the hand-written test program of dssLookupSpec.
type lookupOpts struct {
	// valueOff is the offset of the value word written to the packet.
	valueOff int16
	// constPlen >= 0 stores that constant as the LPM prefix length
	// instead of the packet's byte at dssPlenAt.
	constPlen int
	// writeValue also stores through the value pointer; deleteKey makes
	// the data plane delete the key after a hit.
	writeValue, deleteKey bool
	// twice looks a second key up in the same table, from the packet
	// bytes at dssKeyAt+dssSecond, and writes its value word at offset 4.
	twice bool
}

// dssSecond is where the second key of lookupOpts.twice starts, relative
// to dssKeyAt.
const dssSecond = 20

// dssLookupSpec builds an XDP program that looks a key taken from the
// packet up in the map "tbl" (LPM: prefixlen byte, then keySize-4 data
// bytes; otherwise keySize bytes), writes the value's word at valueOff
// over the packet's first bytes and returns XDP_TX on a hit, XDP_DROP on a
// miss.
func dssLookupSpec(ms *ebpf.MapSpec, o lookupOpts) *ebpf.CollectionSpec {
	ks := int(ms.KeySize)
	keyOff := -int16((ks + 7) / 8 * 8)
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R7),
		asm.Add.Imm(asm.R4, int32(dssKeyAt+dssSecond+ks)),
		asm.JGT.Reg(asm.R4, asm.R3, "drop"),
	}
	// key stores the key found at packet offset at on the stack.
	key := func(at int) {
		data, dataOff := ks, keyOff
		if ms.Type == ebpf.LPMTrie {
			if o.constPlen >= 0 {
				insns = append(insns, asm.StoreImm(asm.R10, keyOff, int64(o.constPlen), asm.Word))
			} else {
				insns = append(insns,
					asm.LoadMem(asm.R5, asm.R7, dssPlenAt, asm.Byte),
					asm.StoreMem(asm.R10, keyOff, asm.R5, asm.Word))
			}
			data, dataOff = ks-4, keyOff+4
		}
		// Copy the key bytes in the largest loads the key size allows.
		for off := 0; off < data; {
			sz := asm.Word
			switch {
			case data-off >= 8 && int(dataOff)%8 == 0 && off%8 == 0:
				sz = asm.DWord
			case data-off >= 4:
			case data-off >= 2:
				sz = asm.Half
			default:
				sz = asm.Byte
			}
			insns = append(insns,
				asm.LoadMem(asm.R5, asm.R7, int16(at+off), sz),
				asm.StoreMem(asm.R10, dataOff+int16(off), asm.R5, sz))
			off += sz.Sizeof()
		}
		insns = append(insns,
			asm.LoadMapPtr(asm.R1, 0).WithReference("tbl"),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, int32(keyOff)),
			asm.FnMapLookupElem.Call(),
		)
	}
	key(dssKeyAt)
	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.LoadMem(asm.R5, asm.R0, o.valueOff, asm.Word),
		asm.StoreMem(asm.R7, 0, asm.R5, asm.Word),
	)
	if o.writeValue {
		insns = append(insns, asm.StoreImm(asm.R0, 0, 1, asm.Word))
	}
	if o.deleteKey {
		insns = append(insns,
			asm.LoadMapPtr(asm.R1, 0).WithReference("tbl"),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, int32(keyOff)),
			asm.FnMapDeleteElem.Call())
	}
	if o.twice {
		key(dssKeyAt + dssSecond)
		insns = append(insns,
			asm.JEq.Imm(asm.R0, 0, "tx"),
			asm.LoadMem(asm.R5, asm.R0, o.valueOff, asm.Word),
			asm.StoreMem(asm.R7, 4, asm.R5, asm.Word),
		)
	}
	insns = append(insns,
		asm.Mov.Imm(asm.R0, 3).WithSymbol("tx"), // XDP_TX
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
		asm.Return(),
	)
	insns[0] = insns[0].WithSymbol(dssProg)
	resolveJumps(insns)
	m := ms.Copy()
	m.Name = "tbl"
	return &ebpf.CollectionSpec{
		Maps:     map[string]*ebpf.MapSpec{"tbl": m},
		Programs: map[string]*ebpf.ProgramSpec{dssProg: {Name: dssProg, Type: ebpf.XDP, License: "GPL", Instructions: insns}},
	}
}

// resolveJumps turns the symbolic jumps of a hand-written function into
// offsets, as the ELF reader leaves them for Lift.
func resolveJumps(insns asm.Instructions) {
	at := map[string]asm.RawInstructionOffset{}
	for it := insns.Iterate(); it.Next(); {
		if sym := it.Ins.Symbol(); sym != "" {
			at[sym] = it.Offset
		}
	}
	for it := insns.Iterate(); it.Next(); {
		ins := it.Ins
		if ins.OpCode.Class().IsJump() && ins.OpCode.JumpOp() != asm.Call && ins.Reference() != "" {
			ins.Offset = int16(at[ins.Reference()] - it.Offset - 1)
			*ins = ins.WithReference("")
		}
		if it.Index > 0 {
			*ins = ins.WithSymbol("") // only functions have symbols
		}
	}
}

func lpmSpec(dataBytes int) *ebpf.MapSpec {
	return &ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: uint32(4 + dataBytes), ValueSize: 8, MaxEntries: 4096, Flags: 1 /* BPF_F_NO_PREALLOC */}
}

func hashSpec(keySize, valueSize, maxEntries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{Type: ebpf.Hash, KeySize: keySize, ValueSize: valueSize, MaxEntries: maxEntries}
}

func noPrealloc(ms *ebpf.MapSpec) *ebpf.MapSpec {
	ms.Flags |= bpfFNoPrealloc
	return ms
}

// lpmState fills "tbl" with n distinct prefixes of the given lengths
// (cycled), each with a value whose first word identifies it.
func lpmState(dataBytes, n int, lengths []int, seed int64) *mapstate.State {
	rnd := rand.New(rand.NewSource(seed))
	s := mapstate.New()
	seen := map[string]bool{}
	for i := 0; i < n; {
		plen := lengths[i%len(lengths)]
		key := make([]byte, 4+dataBytes)
		binary.LittleEndian.PutUint32(key, uint32(plen))
		rnd.Read(key[4:])
		mask := lpmMask(len(key), uint32(plen))
		for j := 4; j < len(key); j++ {
			key[j] &= mask[j]
		}
		if seen[string(key)] {
			continue
		}
		seen[string(key)] = true
		val := binary.LittleEndian.AppendUint32(nil, uint32(1000+i))
		s.Put("tbl", key, binary.LittleEndian.AppendUint32(val, uint32(i)))
		i++
	}
	return s
}

// mixedState fills "tbl" with n prefixes of the dominant length and,
// for each other length in others, that many prefixes nested the way a
// routing table nests them: a longer prefix lies inside a dominant one, a
// shorter one covers a dominant one (every other) or lies elsewhere.
// Values name the prefix.
func mixedState(dataBytes, n, dominant int, others map[int]int, seed int64) *mapstate.State {
	rnd := rand.New(rand.NewSource(seed))
	s := mapstate.New()
	seen := map[string]bool{}
	i := 0
	put := func(plen int, data []byte) bool {
		key := append(binary.LittleEndian.AppendUint32(nil, uint32(plen)), data...)
		maskKey(key, uint32(plen))
		if seen[string(key)] {
			return false
		}
		seen[string(key)] = true
		val := binary.LittleEndian.AppendUint32(nil, uint32(1000+i))
		s.Put("tbl", key, binary.LittleEndian.AppendUint32(val, uint32(plen)))
		i++
		return true
	}
	var dom [][]byte
	for len(dom) < n {
		data := make([]byte, dataBytes)
		rnd.Read(data)
		if put(dominant, data) {
			dom = append(dom, data)
		}
	}
	lens := make([]int, 0, len(others))
	for l := range others {
		lens = append(lens, l)
	}
	slices.Sort(lens)
	for _, l := range lens {
		for made := 0; made < others[l]; {
			data := make([]byte, dataBytes)
			rnd.Read(data)
			if l > dominant || made%2 == 0 {
				// Inside (or covering) a dominant prefix: its first bits.
				base := dom[rnd.Intn(len(dom))]
				mask := lpmMask(4+dataBytes, uint32(min(l, dominant)))[4:]
				for j := range data {
					data[j] = base[j]&mask[j] | data[j]&^mask[j]
				}
			}
			if put(l, data) || l == 0 {
				made++
			}
		}
	}
	return s
}

// intState fills "tbl" with the given integer keys and values of size vs
// that name their key.
func intState(keySize, vs int, keys []uint64) *mapstate.State {
	s := mapstate.New()
	for i, k := range keys {
		key := make([]byte, keySize)
		copy(key, binary.LittleEndian.AppendUint64(nil, k))
		val := make([]byte, vs)
		for j := 0; j+4 <= vs; j += 4 {
			binary.LittleEndian.PutUint32(val[j:], uint32(k)*7+uint32(j)+uint32(i))
		}
		s.Put("tbl", key, val)
	}
	return s
}

func keyRange(lo, n, step uint64) []uint64 {
	var out []uint64
	for i := range n {
		out = append(out, lo+i*step)
	}
	return out
}

// runDss lifts prog out of spec (with state's variables applied), runs the
// named passes and lowers the result.
func runDss(t *testing.T, spec *ebpf.CollectionSpec, prog string, state *mapstate.State, names ...string) (*Context, asm.Instructions) {
	t.Helper()
	return runDssHeat(t, spec, prog, state, nil, names...)
}

// runDssHeat is runDss with a heatmap.
func runDssHeat(t *testing.T, spec *ebpf.CollectionSpec, prog string, state *mapstate.State, heat *heatmap.Heatmap, names ...string) (*Context, asm.Instructions) {
	t.Helper()
	coll := spec.Copy()
	if err := state.ApplySpec(coll); err != nil {
		t.Fatal(err)
	}
	p, err := program.Lift(coll.Programs[prog])
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Passes = names
	c := &Context{Coll: coll, Prog: p, State: state, Heat: heat, Guards: guard.NewTable(), Opts: opts}
	if err := Run(c); err != nil {
		t.Fatal(err)
	}
	insns, err := c.Prog.Lower()
	if err != nil {
		t.Fatal(err)
	}
	return c, insns
}

// dssRemark returns the dss remark for map m, failing if there is not
// exactly one kind.
func dssRemark(t *testing.T, c *Context, m string) Remark {
	t.Helper()
	var found []Remark
	for _, r := range c.Remarks {
		if r.Pass == "dss" && r.Map == m {
			found = append(found, r)
		}
	}
	if len(found) == 0 {
		t.Fatalf("no dss remark for map %s; remarks: %v", m, c.Remarks)
	}
	for _, r := range found[1:] {
		if r.Applied != found[0].Applied || r.Message != found[0].Message {
			t.Fatalf("dss remarks disagree for map %s: %v", m, found)
		}
	}
	return found[0]
}

// checkSites checks that dss rewrote want lookup sites of "tbl" and that
// they share one specialized map.
func checkSites(t *testing.T, c *Context, want int) {
	t.Helper()
	applied := 0
	for _, r := range c.Remarks {
		if r.Pass == "dss" && r.Applied {
			applied++
		}
	}
	var made []string
	for name := range c.Coll.Maps {
		if strings.HasPrefix(name, "dh") || strings.HasPrefix(name, "da") {
			made = append(made, name)
		}
	}
	if applied != want || len(made) != 1 {
		t.Fatalf("%d sites rewritten into maps %v, want %d sites sharing one map; remarks %v", applied, made, want, c.Remarks)
	}
}

// differential checks the candidate against the original on packets: the
// kernel must load it and every verdict, packet and map must agree.
func differential(t *testing.T, c *Context, prog string, insns asm.Instructions, state *mapstate.State, packets [][]byte) {
	t.Helper()
	rep, err := verify.Differential(context.Background(), c.Coll, state, verify.Candidate{prog: insns}, packets, verify.DiffOptions{MapCheckInterval: -1})
	if err != nil {
		var ve *verify.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("verifier rejected the candidate: %v\n%s", ve, c.Prog)
		}
		t.Fatal(err)
	}
	if !rep.Passed() {
		t.Fatalf("differential test failed: %s\n%s", rep, c.Prog)
	}
	// The packets must take more than one path through the original, or
	// agreement proves little (hits and misses alike).
	orig, err := state.Load(c.Coll.Copy(), ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	verdicts := map[uint32]int{}
	for _, f := range packets {
		v, err := orig.Programs[prog].Run(&ebpf.RunOptions{Data: f})
		if err != nil {
			t.Fatal(err)
		}
		verdicts[v]++
	}
	if len(verdicts) < 2 {
		t.Fatalf("every packet got the same verdict %v: the test does not exercise hits and misses", verdicts)
	}
	t.Logf("differential: %d packets, %d runs, no mismatch; original verdicts %v", rep.Packets, rep.Runs, verdicts)
}

// keyFrames builds 64-byte frames carrying key bytes at dssKeyAt and plen
// at dssPlenAt.
func keyFrame(plen byte, key []byte) []byte {
	f := make([]byte, 64)
	copy(f, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
	f[dssPlenAt] = plen
	copy(f[dssKeyAt:], key)
	return f
}

// lpmFrames probes every entry (at its own length and longer, with host
// bits varied), neighbours and random keys, with prefix lengths below, at
// and above the entries' and beyond the trie's maximum.
func lpmFrames(state *mapstate.State, dataBytes int, seed int64) [][]byte {
	rnd := rand.New(rand.NewSource(seed))
	var out [][]byte
	plens := []byte{0, 1, 7, 8, 15, 16, 19, 20, 23, 24, 25, 31, 32, 33, 56, 60, 64, 65, 127, 128, 129, 255}
	for _, e := range state.Maps["tbl"].Entries {
		p := binary.LittleEndian.Uint32(e.Key)
		key := append([]byte(nil), e.Key[4:]...)
		out = append(out, keyFrame(byte(min(p, 255)), key))
		host := append([]byte(nil), key...)
		host[len(host)-1] ^= byte(rnd.Intn(256))
		out = append(out, keyFrame(byte(8*dataBytes), host), keyFrame(plens[rnd.Intn(len(plens))], host))
		near := append([]byte(nil), key...)
		near[rnd.Intn(len(near))] ^= 1 << rnd.Intn(8)
		out = append(out, keyFrame(byte(8*dataBytes), near))
	}
	for range 200 {
		key := make([]byte, dataBytes)
		rnd.Read(key)
		out = append(out, keyFrame(plens[rnd.Intn(len(plens))], key))
	}
	return out
}

// secondKeys gives each frame the key of the next frame as its second key
// (lookupOpts.twice).
func secondKeys(frames [][]byte, n int) {
	for i, f := range frames {
		next := frames[(i+1)%len(frames)]
		copy(f[dssKeyAt+dssSecond:], next[dssKeyAt:dssKeyAt+n])
	}
}

// intFrames probes every key, its neighbours and random keys.
func intFrames(keySize int, keys []uint64, seed int64) [][]byte {
	rnd := rand.New(rand.NewSource(seed))
	var out [][]byte
	put := func(k uint64) {
		out = append(out, keyFrame(0, binary.LittleEndian.AppendUint64(nil, k)[:keySize]))
	}
	for _, k := range keys {
		put(k)
		put(k + 1)
		put(k - 1)
	}
	for range 100 {
		put(rnd.Uint64())
		put(uint64(rnd.Intn(1 << 16)))
	}
	return out
}

func TestDssCostModel(t *testing.T) {
	for _, tc := range []struct {
		name          string
		n             int
		plen          uint32
		data, keyByte int
		want          bool
	}{
		{"2592 /24 routes", 2592, 24, 4, 3, true},
		{"65 /24 routes", 65, 24, 4, 3, true},
		{"4 /24 routes", 4, 24, 4, 3, false},
		{"1000 IPv6 /64", 1000, 64, 16, 8, true},
		{"two /1 prefixes", 2, 1, 4, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := lpmCost(tc.n, tc.plen, tc.data)
			nw := costGuard + hashCost(tc.keyByte) + 4*costInsn
			if got := nw <= dssMargin*old; got != tc.want {
				t.Errorf("trie %.1f vs hash %.1f: specialize %v, want %v", old, nw, got, tc.want)
			}
		})
	}
	if lpmCost(2592, 24, 4) <= lpmCost(100, 24, 4) || lpmCost(100, 24, 16) <= lpmCost(100, 24, 4) {
		t.Error("trie cost must grow with entries and key width")
	}
	if arrayCost > dssMargin*hashCost(4) {
		t.Errorf("array path %.1f not clearly cheaper than a u32 hash %.1f", arrayCost, hashCost(4))
	}
}

func TestDssCopyChunks(t *testing.T) {
	for _, tc := range []struct {
		src, dst, n, srcLimit, dstLimit int
		want                            []keyChunk
	}{
		{-4, -16, 3, 4, 8, []keyChunk{{0, asm.Word}}},
		{-4, -16, 3, 3, 8, []keyChunk{{0, asm.Half}, {2, asm.Byte}}},
		{-20, -16, 8, 16, 8, []keyChunk{{0, asm.Word}, {4, asm.Word}}},
		{-16, -16, 16, 16, 16, []keyChunk{{0, asm.DWord}, {8, asm.DWord}}},
		{-13, -8, 2, 3, 8, []keyChunk{{0, asm.Byte}, {1, asm.Byte}}},
	} {
		got := copyChunks(tc.src, tc.dst, tc.n, tc.srcLimit, tc.dstLimit)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("copyChunks(%d, %d, %d, %d, %d) = %v, want %v", tc.src, tc.dst, tc.n, tc.srcLimit, tc.dstLimit, got, tc.want)
		}
	}
}

// TestDssDecisions checks what the pass does with each kind of table, from
// the remarks alone (no kernel needed).
func TestDssDecisions(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ms         *ebpf.MapSpec
		state      *mapstate.State
		constPlen  int
		writeValue bool
		deleteKey  bool
		applied    bool
		message    string
	}{
		{"lpm one length", lpmSpec(4), lpmState(4, 300, []int{24}, 1), -1, false, false, true, "300 /24 prefixes as hash"},
		{"lpm const plen", lpmSpec(4), lpmState(4, 300, []int{24}, 1), 32, false, false, true, "as hash"},
		{"lpm const plen too short", lpmSpec(4), lpmState(4, 300, []int{24}, 1), 16, false, false, true, "constant miss"},
		{"lpm const plen too long", lpmSpec(4), lpmState(4, 300, []int{24}, 1), 33, false, false, true, "constant miss"},
		{"lpm mixed lengths", lpmSpec(4), lpmState(4, 300, []int{16, 24, 24, 32}, 1), -1, false, false, false, "3 prefix lengths (/16 x75, /24 x150, /32 x75): the best plan"},
		{"lpm many lengths", lpmSpec(4), lpmState(4, 600, []int{8, 16, 20, 24, 28, 32}, 1), -1, false, false, false, "below the margin"},
		{"lpm dominant with few others", lpmSpec(4), mixedState(4, 300, 24, map[int]int{0: 1, 16: 4, 32: 6}, 1), -1, false, false, true, "294 /24 prefixes and 4 of /16../23 expanded into 1022 /24 blocks hashed on the 3-byte masked key (6 with longer prefixes inside left to the trie), then the trie"},
		{"lpm dominant, many shorter", lpmSpec(4), mixedState(4, 300, 24, map[int]int{0: 1, 16: 100}, 1), -1, false, false, true, "300 /24 prefixes hashed on the 3-byte masked key, then the trie"},
		{"lpm dominant, many longer", lpmSpec(4), mixedState(4, 600, 24, map[int]int{32: 70}, 1), -1, false, false, true, "with longer prefixes inside left to the trie), then the trie"},
		{"lpm too many longer", lpmSpec(4), mixedState(4, 300, 24, map[int]int{32: 100}, 1), -1, false, false, false, "(86 with longer prefixes inside left to the trie), then the trie (est. 46% of lookups), is estimated at 78 ns per lookup vs 95 as a trie: below the margin"},
		{"lpm dominant, const plen drops longer", lpmSpec(4), mixedState(4, 300, 24, map[int]int{0: 1, 32: 100}, 1), 24, false, false, true, "300 /24 prefixes hashed on the 3-byte masked key, 1 shorter prefixes chained, then miss"},
		{"lpm small", lpmSpec(4), lpmState(4, 40, []int{24}, 1), -1, false, false, false, "40 entries: left to mapinline"},
		{"lpm value written", lpmSpec(4), lpmState(4, 300, []int{24}, 1), -1, true, false, false, "data plane writes this map"},
		{"lpm written by data plane", lpmSpec(4), lpmState(4, 300, []int{24}, 1), -1, false, true, false, "data plane writes this map"},
		{"hash dense u16", hashSpec(2, 12, 1024), intState(2, 12, keyRange(1000, 300, 2)), 0, false, false, true, "300 integer keys in 1000..1598 as array"},
		{"hash dense u32", hashSpec(4, 16, 4096), intState(4, 16, keyRange(10, 200, 10)), 0, false, false, true, "as array"},
		{"hash wide span", hashSpec(4, 16, 4096), intState(4, 16, keyRange(0, 100, 1000)), 0, false, false, false, "more than 4096 array slots"},
		{"hash sparse", hashSpec(4, 16, 128), intState(4, 16, keyRange(0, 100, 40)), 0, false, false, false, "would outgrow the hash"},
		{"hash sparse preallocated", hashSpec(4, 16, 4096), intState(4, 16, keyRange(0, 100, 40)), 0, false, false, true, "as array"},
		{"hash sparse no prealloc", noPrealloc(hashSpec(4, 16, 4096)), intState(4, 16, keyRange(0, 100, 40)), 0, false, false, false, "would outgrow the hash"},
		{"hash huge values", hashSpec(4, 1024, 4096), intState(4, 1024, keyRange(0, 1100, 1)), 0, false, false, false, "too large for one array value"},
		{"hash struct key", hashSpec(12, 8, 1024), intState(12, 8, keyRange(0, 100, 1)), 0, false, false, false, "12-byte key is not an integer"},
		{"hash small", hashSpec(4, 16, 1024), intState(4, 16, keyRange(0, 64, 1)), 0, false, false, false, "64 entries: left to mapinline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := dssLookupSpec(tc.ms, lookupOpts{constPlen: tc.constPlen, writeValue: tc.writeValue, deleteKey: tc.deleteKey})
			c, _ := runDss(t, spec, dssProg, tc.state, "dss")
			r := dssRemark(t, c, "tbl")
			if r.Applied != tc.applied || !strings.Contains(r.Message, tc.message) {
				t.Errorf("remark %q (applied %v), want %q (applied %v)", r.Message, r.Applied, tc.message, tc.applied)
			}
		})
	}
}

// TestDssLPMToHashKernel runs LPM tables of one prefix length, with the
// prefix length taken from the packet or constant, through the verifier
// and the differential test.
func TestDssLPMToHashKernel(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		name      string
		dataBytes int
		plen      int
		constPlen int
		n         int
		twice     bool
	}{
		{"ipv4 /24 packet plen", 4, 24, -1, 500, false},
		{"ipv4 /20 packet plen", 4, 20, -1, 300, false},
		{"ipv4 /24 const plen", 4, 24, 32, 300, false},
		{"ipv4 /8 const plen", 4, 8, 32, 200, false},
		{"ipv6 /64 packet plen", 16, 64, -1, 300, false},
		{"ipv6 /60 packet plen", 16, 60, -1, 300, false},
		{"ipv6 /124 const plen", 16, 124, 128, 300, false},
		{"ipv4 /24 two sites", 4, 24, -1, 300, true},
		{"ipv6 /48 two sites", 16, 48, 128, 300, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := lpmState(tc.dataBytes, tc.n, []int{tc.plen}, int64(tc.plen))
			spec := dssLookupSpec(lpmSpec(tc.dataBytes), lookupOpts{constPlen: tc.constPlen, twice: tc.twice})
			c, insns := runDss(t, spec, dssProg, state, "dss")
			if r := dssRemark(t, c, "tbl"); !r.Applied {
				t.Fatalf("dss not applied: %s", r.Message)
			}
			frames := lpmFrames(state, tc.dataBytes, 3)
			if tc.twice {
				secondKeys(frames, tc.dataBytes)
			}
			checkSites(t, c, map[bool]int{false: 1, true: 2}[tc.twice])
			differential(t, c, dssProg, insns, state, frames)
		})
	}
}

// TestDssMixedLPMKernel runs tries of one dominant prefix length with
// nested prefixes of other lengths (a default route, shorter aggregates,
// longer prefixes and hosts inside dominant ones) through the verifier and
// the differential test: few others make a complete plan (chains around
// the hash, no trie), many others leave the rest to the trie.
func TestDssMixedLPMKernel(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		name      string
		dataBytes int
		dominant  int
		n         int
		others    map[int]int
		constPlen int
		twice     bool
		want      string
		// shape, if set, makes dss choose a plan of that shape:
		// complete, chained (longer chained, trie behind) or trie
		// (no chain, trie behind).
		shape string
	}{
		{"ipv4 /24 + default, few /16", 4, 24, 400, map[int]int{0: 1, 16: 6}, -1, false, "400 /24 prefixes hashed on the 3-byte masked key, 7 shorter prefixes chained, then miss", ""},
		{"ipv4 small /24 table + default, /16, /32", 4, 24, 70, map[int]int{0: 1, 16: 3, 32: 6}, -1, false, "6 longer prefixes chained, 70 /24 prefixes and 3 of /16../23 expanded into 766 /24 blocks hashed on the 3-byte masked key, 4 shorter prefixes chained, then miss", ""},
		{"ipv4 /24 + /8, /28, /32, const plen", 4, 24, 400, map[int]int{8: 3, 28: 4, 32: 5}, 32, false, "4 /28 prefixes and 400 of /24../27 expanded into 6391 /28 blocks hashed on the 4-byte masked key, then the trie", ""},
		{"ipv4 /20 + default, /12, /22, /31", 4, 20, 300, map[int]int{0: 1, 12: 4, 22: 5, 31: 3}, -1, false, "5 /22 prefixes and 304 of /12../21 expanded into 5280 /22 blocks hashed on the 3-byte masked key, then the trie", ""},
		{"ipv4 /24 + many /16", 4, 24, 400, map[int]int{0: 1, 16: 120, 32: 5}, -1, false, "then the trie", ""},
		{"ipv4 /24 + many /16, /32 chained", 4, 24, 400, map[int]int{0: 1, 16: 70, 32: 30}, -1, false, "30 longer prefixes chained, 400 /24 prefixes hashed on the 3-byte masked key, then the trie", "chained"},
		{"ipv4 /24 + many /16, /32 chained, expanded", 4, 24, 400, map[int]int{0: 1, 16: 50, 32: 30}, -1, false, "30 longer prefixes chained, 400 /24 prefixes and 50 of /16../23 expanded into", "chained+expand"},
		{"ipv4 /24 + /16, /32 complete, expanded", 4, 24, 400, map[int]int{0: 1, 16: 10, 32: 10}, -1, false, "10 longer prefixes chained, 400 /24 prefixes and 10 of /16../23 expanded into", "complete+expand"},
		{"ipv6 /48 + many /32, /64 chained", 16, 48, 400, map[int]int{0: 1, 32: 70, 64: 20}, -1, false, "20 longer prefixes chained, 400 /48 prefixes hashed on the 6-byte masked key, then the trie", "chained"},
		{"ipv4 /24 + /8, /28, /32 complete", 4, 24, 400, map[int]int{0: 1, 8: 3, 28: 4, 32: 5}, -1, false, "9 longer prefixes chained, 400 /24 prefixes hashed on the 3-byte masked key, 4 shorter prefixes chained, then miss", "complete"},
		{"ipv4 /24 + many /32", 4, 24, 600, map[int]int{0: 1, 32: 70}, -1, false, "left to the trie), then the trie", ""},
		{"ipv4 /24 mixed, two sites", 4, 24, 300, map[int]int{0: 1, 16: 3, 32: 4}, -1, true, "then the trie", ""},
		{"ipv6 /48 + default, /32, /64, /128", 16, 48, 300, map[int]int{0: 1, 32: 4, 64: 6, 128: 4}, -1, false, "left to the trie), then the trie", ""},
		{"ipv6 /64 + /56, /128, const plen", 16, 64, 300, map[int]int{56: 5, 128: 5}, 128, false, "5 longer prefixes chained, 300 /64 prefixes hashed on the 8-byte masked key, 5 shorter prefixes chained, then miss", "complete"},
		{"ipv6 /64 + /56, /128, const plen, model", 16, 64, 300, map[int]int{56: 5, 128: 5}, 128, false, "295 /64 prefixes and 5 of /56../63 expanded into 1277 /64 blocks hashed on the 8-byte masked key (5 with longer prefixes inside left to the trie), then the trie", ""},
		{"ipv6 /60 + many /48", 16, 60, 300, map[int]int{0: 1, 48: 100, 127: 3}, -1, false, "then the trie", ""},
		{"ipv6 /48 mixed, two sites", 16, 48, 300, map[int]int{40: 3, 64: 3}, 128, true, "then miss", "complete"},
		{"ipv6 /48 mixed, two sites, trie", 16, 48, 300, map[int]int{40: 3, 64: 3}, 128, true, "left to the trie), then the trie", "trie"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := mixedState(tc.dataBytes, tc.n, tc.dominant, tc.others, int64(tc.n+tc.dominant))
			spec := dssLookupSpec(lpmSpec(tc.dataBytes), lookupOpts{constPlen: tc.constPlen, twice: tc.twice})
			if tc.shape != "" {
				planFilter = func(pl *lpmPlan) bool {
					shape, expand := strings.CutSuffix(tc.shape, "+expand")
					return map[string]bool{"complete": pl.complete, "chained": !pl.complete && pl.chainLonger, "trie": !pl.chainLonger}[shape] && expand == (pl.expanded > 0)
				}
				defer func() { planFilter = nil }()
			}
			c, insns := runDss(t, spec, dssProg, state, "dss")
			r := dssRemark(t, c, "tbl")
			if !r.Applied || !strings.Contains(r.Message, tc.want) {
				t.Fatalf("remark %s, want applied with %q", r, tc.want)
			}
			t.Log(r)
			frames := lpmFrames(state, tc.dataBytes, 3)
			if tc.twice {
				secondKeys(frames, tc.dataBytes)
			}
			checkSites(t, c, map[bool]int{false: 1, true: 2}[tc.twice])
			differential(t, c, dssProg, insns, state, frames)
		})
	}
}

// TestDssHotKernel gives a mixed trie a heatmap: dss compiles the hot
// exact keys (hits of the hash, of the trie behind it, a miss and a
// prefix length beyond the trie's) with their precomputed answers in
// front, and the candidate must agree with the original on them and on
// everything else. A heatmap spread thin over many keys gets no chain.
func TestDssHotKernel(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		name      string
		dataBytes int
		others    map[int]int
		skewed    bool
		want      string
	}{
		{"ipv4 skewed", 4, map[int]int{0: 1, 16: 100, 32: 4}, true, "hot keys"},
		{"ipv6 skewed", 16, map[int]int{40: 100, 128: 4}, true, "hot keys"},
		{"ipv4 flat", 4, map[int]int{0: 1, 16: 100, 32: 4}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dominant := map[int]int{4: 24, 16: 48}[tc.dataBytes]
			state := mixedState(tc.dataBytes, 400, dominant, tc.others, 11)
			rnd := rand.New(rand.NewSource(12))
			heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
			add := func(plen uint32, data []byte, count uint64) {
				heat.Maps["tbl"] = append(heat.Maps["tbl"], heatmap.Key{Key: append(goldenU32(plen), data...), Count: count})
			}
			full := uint32(8 * tc.dataBytes)
			var hot [][]byte
			for i, e := range state.Maps["tbl"].Entries {
				data := slices.Clone(e.Key[4:])
				data[len(data)-1] ^= byte(rnd.Intn(256)) // a host inside
				count := uint64(1 + rnd.Intn(3))
				if tc.skewed && i%97 == 0 {
					count = 5000 / uint64(1+len(hot))
					hot = append(hot, data)
				}
				add(full, data, count)
			}
			miss := make([]byte, tc.dataBytes)
			miss[0] = 0xff // no /0 in the ipv6 table: a miss there
			add(full, miss, map[bool]uint64{true: 3000, false: 2}[tc.skewed])
			add(full+1, state.Maps["tbl"].Entries[0].Key[4:], map[bool]uint64{true: 2000, false: 2}[tc.skewed])
			spec := dssLookupSpec(lpmSpec(tc.dataBytes), lookupOpts{constPlen: -1})
			c, insns := runDssHeat(t, spec, dssProg, state, heat, "dss")
			r := dssRemark(t, c, "tbl")
			if !r.Applied || strings.Contains(r.Message, "hot keys") != (tc.want != "") {
				t.Fatalf("remark %s, want applied and hot keys %v", r, tc.want != "")
			}
			t.Log(r)
			frames := lpmFrames(state, tc.dataBytes, 3)
			for _, h := range heat.Maps["tbl"] {
				frames = append(frames, keyFrame(byte(binary.LittleEndian.Uint32(h.Key)), h.Key[4:]))
			}
			differential(t, c, dssProg, insns, state, frames)
		})
	}
}

// TestDssHashToArrayKernel runs integer-keyed hashes through the verifier
// and the differential test.
func TestDssHashToArrayKernel(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		name     string
		keySize  uint32
		valSize  uint32
		valueOff int16
		keys     []uint64
		twice    bool
	}{
		{"u16 keys from 1000, odd value size", 2, 13, 8, keyRange(1000, 300, 2), false},
		{"u32 keys from 0", 4, 16, 12, keyRange(0, 100, 1), false},
		{"u32 keys, power-of-two slot", 4, 24, 4, keyRange(7, 200, 3), false},
		{"u8 keys", 1, 4, 0, keyRange(1, 200, 1), false},
		{"u64 keys above 2^32", 8, 8, 4, keyRange(1<<33, 500, 1), false},
		{"u32 keys, two sites", 4, 16, 0, keyRange(50, 100, 1), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := intState(int(tc.keySize), int(tc.valSize), tc.keys)
			spec := dssLookupSpec(hashSpec(tc.keySize, tc.valSize, 1024), lookupOpts{valueOff: tc.valueOff, twice: tc.twice})
			c, insns := runDss(t, spec, dssProg, state, "dss")
			if r := dssRemark(t, c, "tbl"); !r.Applied {
				t.Fatalf("dss not applied: %s", r.Message)
			}
			frames := intFrames(int(tc.keySize), tc.keys, 5)
			if tc.twice {
				secondKeys(frames, int(tc.keySize))
			}
			checkSites(t, c, map[bool]int{false: 1, true: 2}[tc.twice])
			differential(t, c, dssProg, insns, state, frames)
		})
	}
}

// routerAll24 is a router with n /24 routes (no default route, so every
// entry has one length) on ifindex 1, the ingress of BPF_PROG_TEST_RUN.
func routerAll24(n int, seed int64) *router.Config {
	rnd := rand.New(rand.NewSource(seed))
	cfg := &router.Config{Interfaces: []router.Interface{{Ifindex: 1, MAC: "02:00:00:00:01:01"}}}
	for j := range 8 {
		cfg.NextHops = append(cfg.NextHops, router.NextHop{Name: fmt.Sprintf("nh%d", j), Ifindex: 1, MAC: fmt.Sprintf("02:00:00:00:02:%02x", j+1)})
	}
	seen := map[netip.Prefix]bool{}
	for len(cfg.Routes) < n {
		a := [4]byte{byte(1 + rnd.Intn(223)), byte(rnd.Intn(256)), byte(rnd.Intn(256)), 0}
		if a[0] == 127 {
			continue
		}
		p := netip.PrefixFrom(netip.AddrFrom4(a), 24)
		if seen[p] {
			continue
		}
		seen[p] = true
		r := router.Route{Prefix: p.String(), Via: cfg.NextHops[rnd.Intn(8)].Name}
		if rnd.Intn(50) == 0 {
			r = router.Route{Prefix: p.String(), Action: router.ActionBlackhole}
		}
		cfg.Routes = append(cfg.Routes, r)
	}
	return cfg
}

// routerFrames sends a frame to a host in every route (and to its /24
// neighbour), plus random destinations.
func routerFrames(t *testing.T, cfg *router.Config, seed int64) [][]byte {
	rnd := rand.New(rand.NewSource(seed))
	flow := traffic.Flow{
		SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 9}, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 1, 1},
		SrcIP: netip.MustParseAddr("198.18.0.1"), Proto: traffic.ProtoUDP, SrcPort: 1000, DstPort: 53,
	}
	var out [][]byte
	add := func(a [4]byte) {
		f := flow
		f.DstIP = netip.AddrFrom4(a)
		b, err := traffic.Build(f, 64)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	for _, r := range cfg.Routes {
		a := netip.MustParsePrefix(r.Prefix).Addr().As4()
		a[3] = byte(1 + rnd.Intn(254))
		add(a)
		a[2] ^= 1
		add(a)
	}
	for range 200 {
		add([4]byte{byte(1 + rnd.Intn(222)), byte(rnd.Intn(256)), byte(rnd.Intn(256)), byte(rnd.Intn(256))})
	}
	return out
}

// TestDssRouter specializes the sample router's routes trie with only /24
// routes, checks the candidate with the verifier and the differential
// test, and then that the guard protects it: after a bump and a route
// change in the live map, the candidate follows the change.
func TestDssRouter(t *testing.T) {
	kerneltest.Require(t)
	for _, n := range []int{500, 2592} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			cfg := routerAll24(n, int64(n))
			state, err := cfg.State()
			if err != nil {
				t.Fatal(err)
			}
			spec, err := router.Spec()
			if err != nil {
				t.Fatal(err)
			}
			c, insns := runDss(t, spec, router.Program, state)
			r := dssRemark(t, c, router.MapRoutes)
			if !r.Applied {
				t.Fatalf("dss not applied to routes: %s", r.Message)
			}
			t.Log(r)
			frames := routerFrames(t, cfg, 9)
			differential(t, c, router.Program, insns, state, frames)
			// 500 routes make a hash, 2,592 DIR tables: both guarded.
			checkGuard(t, c, insns, state, cfg)
		})
	}
}

// checkGuard loads the candidate and changes a route the way the control
// plane does: guard bump first, then the map update.
func checkGuard(t *testing.T, c *Context, insns asm.Instructions, state *mapstate.State, cfg *router.Config) {
	t.Helper()
	cs, err := verify.WithCandidate(c.Coll, verify.Candidate{router.Program: insns})
	if err != nil {
		t.Fatal(err)
	}
	coll, err := state.Load(cs, ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	var route string
	for _, r := range cfg.Routes {
		if r.Action == "" {
			route = r.Prefix
			break
		}
	}
	a := netip.MustParsePrefix(route).Addr().As4()
	a[3] = 77
	frame, err := traffic.Build(traffic.Flow{
		SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 9}, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 1, 1},
		SrcIP: netip.MustParseAddr("198.18.0.1"), DstIP: netip.AddrFrom4(a), Proto: traffic.ProtoUDP, SrcPort: 1, DstPort: 2,
	}, 64)
	if err != nil {
		t.Fatal(err)
	}
	verdict := func() uint32 {
		ret, err := coll.Programs[router.Program].Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	const xdpDrop, xdpTx = 1, 3
	if v := verdict(); v != xdpTx {
		t.Fatalf("packet to %s: verdict %d, want XDP_TX", route, v)
	}
	slot, err := c.Guards.Slot(router.MapRoutes)
	if err != nil {
		t.Fatal(err)
	}
	guards := make([]byte, guard.Spec().ValueSize)
	binary.LittleEndian.PutUint64(guards[8*slot:], c.Guards.Version(router.MapRoutes)+1)
	if err := coll.Maps[guard.MapName].Put(uint32(0), guards); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 8)
	binary.LittleEndian.PutUint32(key, 24)
	copy(key[4:], a[:3])
	if err := coll.Maps[router.MapRoutes].Delete(key); err != nil {
		t.Fatal(err)
	}
	if v := verdict(); v != xdpDrop {
		t.Fatalf("after bump and delete of %s: verdict %d, want XDP_DROP (the original lookup)", route, v)
	}
}

// TestDssRouterConfig specializes the benchmark's router configuration,
// traffic.RouterConfig with 2,592 routes: about 60% /24 routes, the rest
// of seven other lengths and a default route. The routes become DIR-16-8-8
// tables (dir.go), no trie behind them. Also without the
// default route, so that lookups miss as well, and with a heatmap of the
// router's Zipf trace, which may put hot keys in front.
func TestDssRouterConfig(t *testing.T) {
	kerneltest.Require(t)
	cfg, err := traffic.RouterConfig(2592, []uint32{1, 2, 3}, 2592)
	if err != nil {
		t.Fatal(err)
	}
	full, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	lengths := map[int]int{}
	for _, r := range cfg.Routes {
		lengths[netip.MustParsePrefix(r.Prefix).Bits()]++
	}
	t.Logf("route lengths: %v", lengths)
	noDefault := mapstate.New()
	for name, m := range full.Maps {
		for _, e := range m.Entries {
			if name == router.MapRoutes && binary.LittleEndian.Uint32(e.Key) == 0 {
				continue
			}
			noDefault.Put(name, e.Key, e.Value)
		}
	}
	flows, err := traffic.RouterFlows(cfg, 1, 256, 7)
	if err != nil {
		t.Fatal(err)
	}
	trace, err := traffic.Generate(flows, traffic.Options{Packets: 20000, Locality: traffic.LocalityHigh, MissShare: 0.05, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	counts := map[[4]byte]uint64{}
	for _, i := range trace.PacketFlow {
		counts[trace.Flows[i].DstIP.As4()]++
	}
	for a, n := range counts {
		heat.Maps[router.MapRoutes] = append(heat.Maps[router.MapRoutes], heatmap.Key{Key: append(goldenU32(32), a[:]...), Count: n})
	}
	spec, err := router.Spec()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		state *mapstate.State
		heat  *heatmap.Heatmap
	}{
		{"with default route", full, nil},
		{"without default route", noDefault, nil},
		{"with heatmap", full, heat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, insns := runDssHeat(t, spec, router.Program, tc.state, tc.heat)
			r := dssRemark(t, c, router.MapRoutes)
			if !r.Applied || !strings.Contains(r.Message, "DIR-16-8-8") {
				t.Fatalf("dss not applied to the routes as DIR tables: %s", r)
			}
			t.Log(r)
			frames := routerFrames(t, cfg, 9)
			for _, f := range trace.Flows {
				b, err := traffic.Build(f, 64)
				if err != nil {
					t.Fatal(err)
				}
				frames = append(frames, b)
			}
			differential(t, c, router.Program, insns, tc.state, frames)
		})
	}
}

// TestDssL2Switch turns the switch's VLAN hash (u32 VLAN id keys) into an
// array and runs tagged frames of present and absent VLANs through it.
func TestDssL2Switch(t *testing.T) {
	kerneltest.Require(t)
	cfg := &l2switch.Config{AgingTime: "300s", Ports: []l2switch.Port{
		{Ifindex: 1, Name: "lo", PVID: 10}, {Ifindex: 2, Name: "p2", PVID: 10},
	}}
	for v := uint16(10); v < 10+300; v++ {
		if v%7 == 0 {
			continue // holes
		}
		cfg.VLANs = append(cfg.VLANs, l2switch.VLAN{ID: v, Tagged: []uint32{1, 2}})
	}
	state, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := l2switch.Spec()
	if err != nil {
		t.Fatal(err)
	}
	c, insns := runDss(t, spec, l2switch.Program, state)
	r := dssRemark(t, c, l2switch.MapVLANs)
	if !r.Applied {
		t.Fatalf("dss not applied to vlans: %s", r.Message)
	}
	t.Log(r)
	var frames [][]byte
	for v := uint16(0); v < 330; v++ {
		b, err := traffic.Build(traffic.Flow{
			SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, byte(v)}, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 1, 1}, VLAN: v,
			SrcIP: netip.MustParseAddr("10.0.0.1"), DstIP: netip.MustParseAddr("10.0.0.2"), Proto: traffic.ProtoUDP, SrcPort: 1, DstPort: 2,
		}, 64)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, b)
	}
	differential(t, c, l2switch.Program, insns, state, frames)
}

// goldenDssLPM: the golden LPM program over ten /24 routes (MaxInline is
// lowered so that the table counts as large).
func goldenDssLPM() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, _, _ := goldenLPM()
	st := mapstate.New()
	for i := range 10 {
		st.Put("routes", append(goldenU32(24), 10, byte(i), 1, 0), goldenU32(uint32(1+i%3)))
	}
	return spec, st, nil
}

var goldenDssLPMKeys = []uint32{goldenIP(10, 0, 1, 7), goldenIP(10, 4, 1, 200), goldenIP(10, 9, 1, 1), goldenIP(10, 9, 2, 1)}

// goldenDssMixed: the golden LPM program over ten /24 routes, a host
// route inside one of them, a /16 covering some of them and a default
// route: a chain of the /32, the hash, a chain of the /16 and the /0.
func goldenDssMixed() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, st, _ := goldenDssLPM()
	st.Put("routes", append(goldenU32(32), 10, 4, 1, 9), goldenU32(7))
	st.Put("routes", append(goldenU32(16), 10, 9, 0, 0), goldenU32(8))
	st.Put("routes", append(goldenU32(0), 0, 0, 0, 0), goldenU32(9))
	return spec, st, nil
}

var goldenDssMixedKeys = []uint32{goldenIP(10, 4, 1, 9), goldenIP(10, 4, 1, 10), goldenIP(10, 9, 1, 1), goldenIP(10, 9, 77, 1), goldenIP(192, 0, 2, 1)}

// goldenDssArray: the golden hash program over small integer keys with a
// hole (102).
func goldenDssArray() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, _, _ := goldenHash()
	st := mapstate.New()
	for i, k := range []uint32{100, 101, 103, 104} {
		st.Put("acl", goldenU32(k), goldenU32(uint32(1+i%3)))
	}
	return spec, st, nil
}

var goldenDssArrayKeys = []uint32{99, 100, 101, 102, 103, 104, 105}

// TestDssStackBudget: the masked key needs a stack slot below the frame of
// a program whose subprogram has a deep frame. dss takes it only while the
// frames together stay within 512 bytes.
func TestDssStackBudget(t *testing.T) {
	for _, tc := range []struct {
		subDepth int16
		applied  bool
	}{
		{448, true},  // 64 + 448 = 512
		{480, false}, // 64 + 480 > 512
	} {
		t.Run(fmt.Sprint(tc.subDepth), func(t *testing.T) {
			g := newGoldenAsm()
			goldenPrologue(g)
			g.add(
				asm.StoreMem(asm.R10, -32, asm.R5, asm.DWord), // no hole above the key
				asm.StoreMem(asm.R10, -24, asm.R5, asm.DWord),
				asm.StoreMem(asm.R10, -16, asm.R5, asm.DWord),
				asm.StoreImm(asm.R10, -8, 32, asm.Word),
				asm.StoreMem(asm.R10, -4, asm.R5, asm.Word),
				asm.Call.Label("sub"),
			)
			goldenLookup(g, "routes", -8)
			g.jump(asm.JEq.Imm(asm.R0, 0, ""), "drop")
			g.add(asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), asm.Return())
			goldenDrop(g)
			g.add(asm.StoreMem(asm.R10, -tc.subDepth, asm.R1, asm.DWord).WithSymbol("sub"), asm.Mov.Imm(asm.R0, 0), asm.Return())
			routes := &ebpf.MapSpec{Name: "routes", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 1024, Flags: 1}
			st := mapstate.New()
			for i := range 100 {
				st.Put("routes", append(goldenU32(24), 10, byte(i), 1, 0), goldenU32(2))
			}
			c, insns := runDss(t, goldenCollection(g.done(), routes), goldenProg, st, "dss")
			r := dssRemark(t, c, "routes")
			if r.Applied != tc.applied {
				t.Fatalf("applied %v, want %v: %s", r.Applied, tc.applied, r.Message)
			}
			if !r.Applied {
				return
			}
			kerneltest.Require(t)
			coll, err := verify.Load(c.Coll, verify.Candidate{goldenProg: insns}, verify.LoadOptions{})
			if err != nil {
				t.Fatalf("verifier: %v", err)
			}
			coll.Close()
		})
	}
}

// TestDssDDoS specializes the DDoS filter's prefix blocklist, a trie whose
// result is only tested for NULL, when every blocked prefix is a /24.
func TestDssDDoS(t *testing.T) {
	kerneltest.Require(t)
	rnd := rand.New(rand.NewSource(4))
	cfg := &ddos.Config{PacketsPerWindow: 100}
	var nets [][4]byte
	for len(nets) < 400 {
		a := [4]byte{byte(1 + rnd.Intn(222)), byte(rnd.Intn(256)), byte(rnd.Intn(256)), 0}
		if a[0] == 127 || slices.Contains(nets, a) {
			continue
		}
		nets = append(nets, a)
		cfg.Blocklist = append(cfg.Blocklist, ddos.Block{Source: netip.PrefixFrom(netip.AddrFrom4(a), 24).String()})
	}
	cfg.Blocklist = append(cfg.Blocklist, ddos.Block{Source: "192.0.2.1"}) // a host: the exact hash
	state, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ddos.Spec()
	if err != nil {
		t.Fatal(err)
	}
	c, insns := runDss(t, spec, ddos.Program, state)
	r := dssRemark(t, c, "blocklist_lpm")
	if !r.Applied {
		t.Fatalf("dss not applied to blocklist_lpm: %s", r.Message)
	}
	t.Log(r)
	var frames [][]byte
	src := func(a [4]byte) {
		f, err := traffic.Build(traffic.Flow{
			SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 9}, DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 1, 1},
			SrcIP: netip.AddrFrom4(a), DstIP: netip.MustParseAddr("10.0.0.1"), Proto: traffic.ProtoUDP, SrcPort: 1, DstPort: 2,
		}, 64)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f)
	}
	for _, n := range nets {
		n[3] = byte(rnd.Intn(256))
		src(n)
		n[2]++
		src(n)
	}
	src([4]byte{192, 0, 2, 1})
	differential(t, c, ddos.Program, insns, state, frames)
}
