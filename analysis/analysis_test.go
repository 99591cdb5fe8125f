package analysis

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// checkNull returns if r0 == 0 to "out", which returns XDP_PASS.
func checkNull(r asm.Register) item { return J(asm.JEq.Imm(r, 0, ""), "out") }

var out = seq(L("out"), retOK)

// packetKey loads the IPv4 destination (packet offset 30) into fp-4 after
// a bounds check.
var packetKey = seq(
	asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
	asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
	asm.Mov.Reg(asm.R4, asm.R2),
	asm.Add.Imm(asm.R4, 34),
	J(asm.JGT.Reg(asm.R4, asm.R3, ""), "out"),
	asm.LoadMem(asm.R5, asm.R2, 30, asm.Word),
	asm.StoreMem(asm.R10, -4, asm.R5, asm.Word),
)

func keyString(op *Operand) string {
	if op == nil {
		return "<nil>"
	}
	return op.String()
}

func TestSites(t *testing.T) {
	type want struct {
		kind      SiteKind
		m         string
		key       string
		reads     []string // "off:size"
		writes    int
		escapes   []string // substrings
		inline    bool
		hotcache  bool
		constKey  bool
		readOnly  map[string]bool
		untracked []string
	}
	tests := []struct {
		name string
		prog []item
		want want
	}{
		{
			name: "const key, value read",
			prog: seq(
				asm.StoreImm(asm.R10, -4, 5, asm.Word),
				lookup("hash", -4),
				checkNull(asm.R0),
				asm.LoadMem(asm.R1, asm.R0, 8, asm.DWord),
				retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[05 00 00 00]", reads: []string{"8:8"},
				inline: true, hotcache: true, constKey: true, readOnly: map[string]bool{"hash": true}},
		},
		{
			name: "key from packet",
			prog: seq(packetKey, lookup("hash", -4), checkNull(asm.R0),
				asm.LoadMem(asm.R1, asm.R0, 0, asm.Word), retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[p30 p31 p32 p33]", reads: []string{"0:4"},
				inline: true, hotcache: true, readOnly: map[string]bool{"hash": true}},
		},
		{
			name: "LPM key with constant prefix length and packet address",
			prog: seq(packetKey,
				asm.StoreImm(asm.R10, -8, 32, asm.Word),
				asm.LoadMem(asm.R5, asm.R10, -4, asm.Word),
				asm.StoreMem(asm.R10, -16, asm.R5, asm.Word),
				asm.StoreImm(asm.R10, -12, 0, asm.Word),
				lookup("lpm", -8), checkNull(asm.R0), retOK, out),
			want: want{kind: SiteLookup, m: "lpm", key: "stack-8[20 00 00 00 p30 p31 p32 p33]",
				inline: true, hotcache: true, readOnly: map[string]bool{"lpm": true}},
		},
		{
			name: "value written",
			prog: seq(asm.StoreImm(asm.R10, -4, 1, asm.Word), lookup("hash", -4), checkNull(asm.R0),
				asm.StoreImm(asm.R0, 4, 7, asm.Word), retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[01 00 00 00]", writes: 1,
				hotcache: true, constKey: true, readOnly: map[string]bool{"hash": false}},
		},
		{
			name: "atomic add through the value",
			prog: seq(asm.StoreImm(asm.R10, -4, 1, asm.Word), lookup("hash", -4), checkNull(asm.R0),
				asm.Mov.Imm(asm.R1, 1), asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 8), retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[01 00 00 00]", writes: 1,
				hotcache: true, constKey: true, readOnly: map[string]bool{"hash": false}},
		},
		{
			name: "value escapes into a helper that reads it",
			prog: seq(asm.StoreImm(asm.R10, -4, 1, asm.Word), lookup("hash", -4), checkNull(asm.R0),
				mapPtr(asm.R1, "other"), asm.Mov.Reg(asm.R2, asm.R10), asm.Add.Imm(asm.R2, -4),
				asm.Mov.Reg(asm.R3, asm.R0), asm.Mov.Imm(asm.R4, 0), asm.FnMapUpdateElem.Call(), retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[01 00 00 00]", reads: []string{"0:16"},
				escapes: []string{"passed to helper FnMapUpdateElem"}, hotcache: true, constKey: true,
				readOnly: map[string]bool{"hash": true, "other": false}},
		},
		{
			name: "value pointer stored to map memory",
			prog: seq(asm.StoreImm(asm.R10, -4, 1, asm.Word), lookup("hash", -4), checkNull(asm.R0),
				mapValue(asm.R1, ".data", 0), asm.StoreMem(asm.R1, 0, asm.R0, asm.DWord), retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[01 00 00 00]",
				escapes: []string{"stored to map memory"}, constKey: true,
				readOnly: map[string]bool{"hash": false, ".data": false}, untracked: []string{"hash"}},
		},
		{
			name: "spill and fill of the value pointer across a call",
			prog: seq(asm.StoreImm(asm.R10, -4, 3, asm.Word), lookup("hash", -4), checkNull(asm.R0),
				asm.StoreMem(asm.R10, -16, asm.R0, asm.DWord),
				asm.FnKtimeGetNs.Call(),
				asm.LoadMem(asm.R1, asm.R10, -16, asm.DWord),
				asm.StoreMem(asm.R1, 0, asm.R0, asm.DWord),
				asm.LoadMem(asm.R2, asm.R1, 8, asm.Half),
				retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[03 00 00 00]", reads: []string{"8:2"}, writes: 1,
				hotcache: true, constKey: true, readOnly: map[string]bool{"hash": false}},
		},
		{
			name: "map pointer merged from two maps",
			prog: seq(asm.StoreImm(asm.R10, -4, 3, asm.Word),
				asm.LoadMem(asm.R2, asm.R1, 12, asm.Word),
				mapPtr(asm.R1, "hash"),
				J(asm.JEq.Imm(asm.R2, 0, ""), "m"),
				mapPtr(asm.R1, "other"),
				L("m"),
				asm.Mov.Reg(asm.R2, asm.R10), asm.Add.Imm(asm.R2, -4),
				asm.FnMapLookupElem.Call(), retOK),
			want: want{kind: SiteLookup, m: "", key: "stack-4[0]",
				readOnly: map[string]bool{"hash": false, "other": false}, untracked: []string{"hash", "other"}},
		},
		{
			name: "dead merged map pointer is harmless",
			prog: seq(asm.StoreImm(asm.R10, -4, 3, asm.Word),
				asm.LoadMem(asm.R2, asm.R1, 12, asm.Word),
				mapPtr(asm.R6, "hash"),
				J(asm.JEq.Imm(asm.R2, 0, ""), "m"),
				mapPtr(asm.R6, "other"),
				L("m"),
				lookup("hash", -4), retOK),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[03 00 00 00]", inline: true, hotcache: true,
				constKey: true, readOnly: map[string]bool{"hash": true, "other": true}},
		},
		{
			name: "variable offset into the value",
			prog: seq(asm.StoreImm(asm.R10, -4, 1, asm.Word), lookup("hash", -4), checkNull(asm.R0),
				asm.FnGetPrandomU32.Call().WithSymbol(""),
				asm.Mov.Reg(asm.R6, asm.R0), retOK, out),
			want: want{kind: SiteLookup, m: "hash", key: "stack-4[01 00 00 00]", inline: true, hotcache: true,
				constKey: true, readOnly: map[string]bool{"hash": true}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, res := analyze(t, testColl(), tt.prog, Options{})
			s := findSite(t, res, tt.want.kind, tt.want.m)
			if got := keyString(s.Key); got != tt.want.key {
				t.Errorf("key = %s, want %s", got, tt.want.key)
			}
			var reads []string
			for _, r := range s.Reads {
				reads = append(reads, offString(r.Offset, r.OffsetKnown)+":"+itoa(r.Size))
			}
			if !slices.Equal(reads, tt.want.reads) {
				t.Errorf("reads = %v, want %v", reads, tt.want.reads)
			}
			if len(s.Writes) != tt.want.writes {
				t.Errorf("writes = %v, want %d", s.Writes, tt.want.writes)
			}
			for _, e := range tt.want.escapes {
				if !slices.ContainsFunc(s.Escapes, func(x string) bool { return strings.Contains(x, e) }) {
					t.Errorf("escapes = %v, want one containing %q", s.Escapes, e)
				}
			}
			if len(tt.want.escapes) == 0 && len(s.Escapes) > 0 {
				t.Errorf("unexpected escapes %v", s.Escapes)
			}
			if s.Inline.OK != tt.want.inline || s.HotCache.OK != tt.want.hotcache || s.ConstKey.OK != tt.want.constKey {
				t.Errorf("inline/hotcache/constkey = %v %v %v (%v %v %v), want %v %v %v",
					s.Inline.OK, s.HotCache.OK, s.ConstKey.OK, s.Inline.Reasons, s.HotCache.Reasons, s.ConstKey.Reasons,
					tt.want.inline, tt.want.hotcache, tt.want.constKey)
			}
			for m, ro := range tt.want.readOnly {
				if mi := res.Maps[m]; mi.ReadOnly != ro {
					t.Errorf("map %s read-only = %v (%v), want %v", m, mi.ReadOnly, mi.Reasons, ro)
				}
			}
			for m, mi := range res.Maps {
				if mi.Untracked != slices.Contains(tt.want.untracked, m) {
					t.Errorf("map %s untracked = %v (%v)", m, mi.Untracked, mi.Reasons)
				}
			}
			if _, err := json.Marshal(res.Sites); err != nil {
				t.Errorf("sites do not marshal: %v", err)
			}
		})
	}
}

// stDW is a 64-bit store of an immediate, which asm.StoreImm refuses.
func stDW(dst asm.Register, off int16, v int64) asm.Instruction {
	return asm.Instruction{OpCode: asm.StoreImmOp(asm.DWord), Dst: dst, Offset: off, Constant: v}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

func TestNullCheckRefinement(t *testing.T) {
	p, res := analyze(t, testColl(), seq(
		asm.StoreImm(asm.R10, -4, 1, asm.Word),
		lookup("hash", -4),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.StoreMem(asm.R10, -16, asm.R0, asm.DWord),
		J(asm.JNE.Imm(asm.R0, 0, ""), "ok"),
		asm.Mov.Imm(asm.R0, 1), asm.Return(),
		L("ok"),
		asm.LoadMem(asm.R1, asm.R6, 0, asm.Word),
		retOK), Options{})
	f := p.Funcs[0]
	entry, null, nonNull := f.Blocks[0], f.Blocks[1], f.Blocks[2]

	before := res.StateBefore(entry, len(entry.Insns)-1)
	if v := before.Reg(asm.R6); v.Kind != PtrMapValue || !v.MaybeNull || v.Map != "hash" {
		t.Fatalf("r6 before the check = %v", v)
	}
	st := res.StateBefore(nonNull, 0)
	for _, v := range []Value{st.Reg(asm.R0), st.Reg(asm.R6), st.Stack(-16)} {
		if v.Kind != PtrMapValue || v.MaybeNull {
			t.Errorf("non-null edge: %v, want non-null map value", v)
		}
	}
	st = res.StateBefore(null, 0)
	for _, v := range []Value{st.Reg(asm.R0), st.Reg(asm.R6), st.Stack(-16)} {
		if !v.IsConst() || v.Const != 0 {
			t.Errorf("null edge: %v, want 0", v)
		}
	}
}

func TestLoopTerminates(t *testing.T) {
	p, res := analyze(t, testColl(), seq(
		asm.Mov.Imm(asm.R6, 0),
		L("loop"),
		asm.StoreMem(asm.R10, -4, asm.R6, asm.Word),
		lookup("hash", -4),
		J(asm.JEq.Imm(asm.R0, 0, ""), "next"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		L("next"),
		asm.Add.Imm(asm.R6, 1),
		J(asm.JLT.Imm(asm.R6, 10, ""), "loop"),
		retOK), Options{})
	s := findSite(t, res, SiteLookup, "hash")
	if s.Key.Const {
		t.Errorf("loop key %s must not be constant", s.Key)
	}
	hdr := p.Funcs[0].Blocks[1]
	if v := res.StateBefore(hdr, 0).Reg(asm.R6); v.Kind != Scalar {
		t.Errorf("loop counter at the header = %v, want scalar", v)
	}
}

func TestFunctionCall(t *testing.T) {
	p, res := analyze(t, testColl(), seq(
		asm.StoreImm(asm.R10, -4, 1, asm.Word),
		lookup("hash", -4),
		checkNull(asm.R0),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R6, 42),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -8),
		stDW(asm.R10, -8, 9),
		asm.Call.Label("sub"),
		asm.Mov.Imm(asm.R0, 2),
		asm.Return(),
		out,
		fn("sub", asm.LoadMem(asm.R3, asm.R1, 4, asm.Word)),
		asm.StoreImm(asm.R1, 12, 1, asm.Word),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	), Options{})
	s := findSite(t, res, SiteLookup, "hash")
	if len(s.Reads) != 1 || s.Reads[0].Func != "sub" || s.Reads[0].Offset != 4 {
		t.Errorf("reads = %+v, want one in sub at offset 4", s.Reads)
	}
	if len(s.Writes) != 1 || s.Writes[0].Func != "sub" || s.Writes[0].Offset != 12 {
		t.Errorf("writes = %+v, want one in sub at offset 12", s.Writes)
	}
	if res.Maps["hash"].ReadOnly || res.Maps["hash"].Untracked {
		t.Errorf("hash: %+v, want tracked read-write", res.Maps["hash"])
	}
	// After the call R1-R5 are clobbered, R6 survives.
	b := p.Funcs[0].Blocks[1]
	after := res.StateBefore(b, 6)
	if v := after.Reg(asm.R1); v.Kind != Uninit {
		t.Errorf("r1 after the call = %v", v)
	}
	if v := after.Reg(asm.R6); !v.IsConst() || v.Const != 42 {
		t.Errorf("r6 after the call = %v", v)
	}
	// The callee receives the caller's stack pointer and the value.
	sub := p.Func("sub").Blocks[0]
	in := res.StateBefore(sub, 0)
	if v := in.Reg(asm.R2); v.Kind != PtrParentStack || v.Off != -8 {
		t.Errorf("callee r2 = %v", v)
	}
	if v := in.Reg(asm.R1); v.Kind != PtrMapValue || v.Map != "hash" {
		t.Errorf("callee r1 = %v", v)
	}
	// The callee does not write the caller's frame, so the spill survives.
	if v := after.Stack(-8); !v.IsConst() || v.Const != 9 {
		t.Errorf("caller fp-8 after the call = %v", v)
	}
	if !slices.ContainsFunc(s.Escapes, func(e string) bool { return strings.Contains(e, "passed to function sub") }) {
		t.Errorf("escapes = %v", s.Escapes)
	}
}

func TestCallWritingParentFrame(t *testing.T) {
	p, res := analyze(t, testColl(), seq(
		stDW(asm.R10, -8, 9),
		asm.Mov.Reg(asm.R1, asm.R10),
		asm.Add.Imm(asm.R1, -8),
		asm.Call.Label("sub"),
		asm.LoadMem(asm.R0, asm.R10, -8, asm.DWord),
		asm.Return(),
		fn("sub", stDW(asm.R1, 0, 1)),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	), Options{})
	b := p.Funcs[0].Blocks[0]
	if v := res.StateBefore(b, 5).Reg(asm.R0); v.IsConst() {
		t.Errorf("fp-8 after a callee wrote the frame = %v, want unknown", v)
	}
}

func TestRodataConstant(t *testing.T) {
	prog := seq(
		mapValue(asm.R1, ".rodata", 4),
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, -4, asm.Byte),
		J(asm.JEq.Imm(asm.R2, 42, ""), "yes"),
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
		L("yes"),
		retOK)
	for _, tt := range []struct {
		name     string
		opts     Options
		variable []byte
		want     Value
		reach    bool // the not-equal branch is reachable
	}{
		{"off", Options{}, nil, scalar(), true},
		{"contents", Options{ConstRodata: true}, nil, constant(42), false},
		{"variable applied", Options{ConstRodata: true}, []byte{7, 0, 0, 0}, constant(7), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			coll := testColl()
			if tt.variable != nil {
				coll.Variables["cfg"] = &ebpf.VariableSpec{Name: "cfg", SectionName: ".rodata", Offset: 4, Value: tt.variable}
			}
			p, res := analyze(t, coll, prog, tt.opts)
			b := p.Funcs[0].Blocks[0]
			st := res.StateBefore(b, 3)
			if got := st.Reg(asm.R2); !got.equal(tt.want) {
				t.Errorf("r2 = %v, want %v", got, tt.want)
			}
			if tt.opts.ConstRodata {
				if got := st.Reg(asm.R3); !got.IsConst() || got.Const != 1 {
					t.Errorf("r3 = %v, want 1", got)
				}
			}
			if got := res.Reachable(p.Funcs[0].Blocks[1]); got != tt.reach {
				t.Errorf("not-equal branch reachable = %v, want %v", got, tt.reach)
			}
			if !res.Maps[".rodata"].ReadOnly {
				t.Errorf(".rodata not read-only: %v", res.Maps[".rodata"].Reasons)
			}
		})
	}
}

func TestStackBytes(t *testing.T) {
	p, res := analyze(t, testColl(), seq(
		asm.LoadImm(asm.R1, 0x1122334455667788, asm.DWord),
		asm.StoreMem(asm.R10, -8, asm.R1, asm.DWord),
		asm.StoreImm(asm.R10, -6, 0xab, asm.Byte),
		asm.LoadMem(asm.R2, asm.R10, -8, asm.Word),
		asm.LoadMem(asm.R3, asm.R10, -8, asm.DWord),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return()), Options{})
	b := p.Funcs[0].Blocks[0]
	st := res.StateBefore(b, 5)
	if v := st.Reg(asm.R2); !v.IsConst() || v.Const != 0x55ab7788 {
		t.Errorf("r2 = %v", v)
	}
	if v := st.Reg(asm.R3); !v.IsConst() || v.Const != 0x1122334455ab7788 {
		t.Errorf("r3 = %v", v)
	}
	u := res.Stack("test")
	if u.All || u.Depth != -8 || len(u.FreeSlots) != numSlots-1 || u.FreeSlots[0] != -16 {
		t.Errorf("stack usage = %+v", u)
	}
}

func TestFoldALU(t *testing.T) {
	tests := []struct {
		op   asm.ALUOp
		a, b uint64
		is64 bool
		want uint64
	}{
		{asm.Add, 0xffffffff, 1, false, 0},
		{asm.Add, 0xffffffff, 1, true, 0x100000000},
		{asm.Sub, 0, 1, false, 0xffffffff},
		{asm.Div, 10, 0, true, 0},
		{asm.Mod, 10, 0, true, 10},
		{asm.Mod, 0x1_0000_000a, 0, false, 10},
		{asm.Div, 10, 3, true, 3},
		{asm.SDiv, uint64(1<<64 - 10), 3, true, uint64(1<<64 - 3)},
		{asm.SMod, uint64(1<<64 - 10), 3, true, uint64(1<<64 - 1)},
		{asm.SDiv, 1 << 63, uint64(1<<64 - 1), true, 1 << 63},
		{asm.SMod, 5, 0, false, 5},
		{asm.LSh, 1, 65, true, 2},
		{asm.ArSh, 0x80000000, 4, false, 0xf8000000},
		{asm.ArSh, 1 << 63, 63, true, 1<<64 - 1},
		{asm.RSh, 1 << 63, 63, true, 1},
		{asm.Xor, 0xff, 0x0f, true, 0xf0},
		{asm.Neg, 1, 0, false, 0xffffffff},
	}
	for _, tt := range tests {
		got, ok := foldALU(tt.op, tt.a, tt.b, tt.is64)
		if !ok || got != tt.want {
			t.Errorf("%v(%#x, %#x, 64=%v) = %#x, want %#x", tt.op, tt.a, tt.b, tt.is64, got, tt.want)
		}
	}
}

func TestALUInstructions(t *testing.T) {
	tests := []struct {
		name string
		ins  []asm.Instruction
		want Value
	}{
		{"be16", []asm.Instruction{asm.Mov.Imm(asm.R1, 0x1234), asm.HostTo(asm.BE, asm.R1, asm.Half)}, constant(0x3412)},
		{"le32 truncates", []asm.Instruction{asm.LoadImm(asm.R1, 0x1_2233_4455, asm.DWord), asm.HostTo(asm.LE, asm.R1, asm.Word)},
			constant(0x22334455)},
		{"bswap64", []asm.Instruction{asm.Mov.Imm(asm.R1, 1), asm.BSwap(asm.R1, asm.DWord)}, constant(1 << 56)},
		{"mov32 zero-extends", []asm.Instruction{asm.Mov.Imm(asm.R1, -1), asm.Mov.Reg32(asm.R1, asm.R1)}, constant(0xffffffff)},
		{"movsx8", []asm.Instruction{asm.Mov.Imm(asm.R1, 0x80), asm.MovSX8.Reg(asm.R1, asm.R1)},
			constant(uint64(1<<64 - 0x80))},
		{"div by unknown zero", []asm.Instruction{asm.FnGetPrandomU32.Call(), asm.Mov.Reg(asm.R1, asm.R0), asm.Div.Imm(asm.R1, 0)}, constant(0)},
		{"packet scalar", []asm.Instruction{asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), asm.LoadMem(asm.R1, asm.R2, 12, asm.Half),
			asm.HostTo(asm.BE, asm.R1, asm.Half)}, Value{Kind: Scalar, Packet: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prog := []item{}
			for _, ins := range tt.ins {
				prog = append(prog, I(ins))
			}
			prog = append(prog, retOK...)
			p, res := analyze(t, testColl(), prog, Options{})
			b := p.Funcs[0].Blocks[0]
			if got := res.StateBefore(b, len(tt.ins)).Reg(asm.R1); !got.equal(tt.want) {
				t.Errorf("r1 = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLiveness(t *testing.T) {
	p, res := analyze(t, testColl(), seq(
		asm.Mov.Reg(asm.R6, asm.R1), // 0
		asm.StoreImm(asm.R10, -4, 1, asm.Word),
		lookup("hash", -4),                       // 2..5
		asm.Mov.Reg(asm.R7, asm.R0),              // 6
		asm.LoadMem(asm.R0, asm.R6, 0, asm.Word), // 7
		asm.Add.Reg(asm.R0, asm.R7),              // 8
		asm.Return(),                             // 9
	), Options{})
	b := p.Funcs[0].Blocks[0]
	r := func(rs ...asm.Register) RegSet {
		s := fpReg
		for _, x := range rs {
			s = s.Add(x)
		}
		return s
	}
	tests := []struct {
		i       int
		in, out RegSet
	}{
		{0, r(asm.R1), r(asm.R6)},
		{5, r(asm.R1, asm.R2, asm.R6), r(asm.R0, asm.R6)},
		{6, r(asm.R0, asm.R6), r(asm.R6, asm.R7)},
		{9, r(asm.R0), r()},
	}
	for _, tt := range tests {
		if got := res.LiveIn(b, tt.i); got != tt.in {
			t.Errorf("live-in %d = %v, want %v", tt.i, got, tt.in)
		}
		if got := res.LiveOut(b, tt.i); got != tt.out {
			t.Errorf("live-out %d = %v, want %v", tt.i, got, tt.out)
		}
	}
	if free := res.LiveIn(b, 6).Free(); !slices.Equal(free, []asm.Register{asm.R1, asm.R2, asm.R3, asm.R4, asm.R5, asm.R7, asm.R8, asm.R9}) {
		t.Errorf("free registers = %v", free)
	}
}

func TestTailCallAndRedirect(t *testing.T) {
	coll := testColl()
	coll.Maps["jmp"] = &ebpf.MapSpec{Name: "jmp", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 4}
	coll.Maps["dev"] = &ebpf.MapSpec{Name: "dev", Type: ebpf.DevMap, KeySize: 4, ValueSize: 4, MaxEntries: 4}
	_, res := analyze(t, coll, seq(
		mapPtr(asm.R2, "jmp"), asm.Mov.Imm(asm.R3, 2), asm.FnTailCall.Call(),
		mapPtr(asm.R1, "dev"), asm.Mov.Imm(asm.R2, 3), asm.Mov.Imm(asm.R3, 0), asm.FnRedirectMap.Call(),
		asm.Return()), Options{})
	tc := findSite(t, res, SiteTailCall, "jmp")
	if tc.Key.String() != "register[02 00 00 00]" || !tc.ConstKey.OK {
		t.Errorf("tail call key %v", tc.Key)
	}
	rd := findSite(t, res, SiteRedirect, "dev")
	if rd.Key.String() != "register[03 00 00 00]" {
		t.Errorf("redirect key %v", rd.Key)
	}
	if !res.Maps["jmp"].ReadOnly || !res.Maps["dev"].ReadOnly {
		t.Errorf("prog array / devmap must be read-only")
	}
}

func TestUnknownHelperClobbersStack(t *testing.T) {
	p, res := analyze(t, testColl(), seq(
		stDW(asm.R10, -8, 5),
		stDW(asm.R10, -16, 6),
		asm.Mov.Reg(asm.R1, asm.R10),
		asm.Add.Imm(asm.R1, -8),
		asm.BuiltinFunc(999).Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return()), Options{})
	st := res.StateBefore(p.Funcs[0].Blocks[0], 5)
	if v := st.Stack(-8); v.IsConst() {
		t.Errorf("fp-8 after an unknown helper = %v", v)
	}
	if v := st.Stack(-16); !v.IsConst() || v.Const != 6 {
		t.Errorf("fp-16 below the pointer = %v, want 6", v)
	}
}
