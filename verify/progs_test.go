package verify

import (
	"encoding/binary"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/mapstate"
)

// nf describes a small network function written in eBPF assembly: it looks
// up the IPv4 destination in the hash map "verdicts" (miss: pass) and
// counts every packet in slot 0 of the array "counters". Knobs change one
// behaviour each, so that a candidate differs from the original in exactly
// one known way.
type nf struct {
	typ ebpf.ProgramType // XDP (default) or SchedCLS
	// overrideDst/overrideVerdict: packets to this destination get this
	// verdict regardless of the map.
	overrideDst     [4]byte
	overrideVerdict int32
	// writeTTL, if non-zero, is stored into the IPv4 TTL byte (offset 22).
	writeTTL byte
	// inc is what the counter is increased by (0 means 1).
	inc int32
	// perCPU makes "counters" a per-CPU array.
	perCPU bool
	// ktime stores bpf_ktime_get_ns() >> ktimeShift into "seen" keyed by
	// the destination.
	ktime      bool
	ktimeShift int32
	// randomDrop drops a packet when bpf_get_prandom_u32() is odd.
	randomDrop bool
	// mark stores this value into skb->mark (SchedCLS only, if non-zero).
	mark int32
	// tail puts the logic into program "logic", reached from program
	// "entry" through the program array "jmp".
	tail bool
	// noBoundsCheck omits the packet bounds check (the verifier refuses).
	noBoundsCheck bool
	// big adds an unused array map of bigEntries entries.
	big bool
	// extraIncDst, if set, makes packets to this destination count
	// twice.
	extraIncDst [4]byte
	// storeVerdict stores the verdict found plus 0x100 back into the
	// "verdicts" entry: a write into a map the original only reads.
	storeVerdict bool
}

// bigEntries is above AutoMapCheckEntries.
const bigEntries = AutoMapCheckEntries + 1000

const (
	xdpDrop = 1
	xdpPass = 2
	xdpTX   = 3
	tcOK    = 0
	tcShot  = 2
)

func (n nf) pass() int32 {
	if n.typ == ebpf.SchedCLS {
		return tcOK
	}
	return xdpPass
}

func (n nf) drop() int32 {
	if n.typ == ebpf.SchedCLS {
		return tcShot
	}
	return xdpDrop
}

// dstImm is the value a 32-bit load of the address bytes yields.
func dstImm(ip [4]byte) int32 {
	return int32(binary.NativeEndian.Uint32(ip[:]))
}

// logic returns the main program.
func (n nf) logic() asm.Instructions {
	dataOff, endOff := int16(0), int16(4) // struct xdp_md
	if n.typ == ebpf.SchedCLS {
		dataOff, endOff = 76, 80 // struct __sk_buff
	}
	inc := n.inc
	if inc == 0 {
		inc = 1
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.Mov.Imm(asm.R7, n.pass()),
		asm.Mov.Imm(asm.R8, 0),
	}
	if n.mark != 0 {
		insns = append(insns, asm.StoreImm(asm.R6, 8, int64(n.mark), asm.Word))
	}
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R6, dataOff, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, endOff, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 34),
	)
	if !n.noBoundsCheck {
		insns = append(insns, asm.JGT.Reg(asm.R4, asm.R3, "count"))
	}
	insns = append(insns,
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R5, 0x0008, "count"), // EtherType 0x0800 read little-endian
	)
	if n.writeTTL != 0 {
		insns = append(insns, asm.StoreImm(asm.R2, 22, int64(n.writeTTL), asm.Byte))
	}
	insns = append(insns,
		asm.LoadMem(asm.R8, asm.R2, 30, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R8, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference("verdicts"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "after_lookup"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
	)
	if n.storeVerdict {
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.Add.Imm(asm.R1, 0x100),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.Word),
		)
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R0, asm.R0).WithSymbol("after_lookup"),
	)
	if n.overrideDst != [4]byte{} {
		insns = append(insns,
			asm.JNE.Imm(asm.R8, dstImm(n.overrideDst), "no_override"),
			asm.Mov.Imm(asm.R7, n.overrideVerdict),
			asm.Mov.Reg(asm.R0, asm.R0).WithSymbol("no_override"),
		)
	}
	if n.ktime {
		insns = append(insns,
			asm.FnKtimeGetNs.Call(),
			asm.RSh.Imm(asm.R0, n.ktimeShift),
			asm.StoreMem(asm.RFP, -16, asm.R0, asm.DWord),
			asm.LoadMapPtr(asm.R1, 0).WithReference("seen"),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -16),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
		)
	}
	if n.randomDrop {
		insns = append(insns,
			asm.FnGetPrandomU32.Call(),
			asm.And.Imm(asm.R0, 1),
			asm.JEq.Imm(asm.R0, 0, "count"),
			asm.Mov.Imm(asm.R7, n.drop()),
		)
	}
	insns = append(insns,
		asm.StoreImm(asm.RFP, -8, 0, asm.Word).WithSymbol("count"),
		asm.LoadMapPtr(asm.R1, 0).WithReference("counters"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, inc),
	)
	if n.extraIncDst != [4]byte{} {
		// R8 (the destination) survives the calls: callee-saved.
		insns = append(insns,
			asm.JNE.Imm(asm.R8, dstImm(n.extraIncDst), "add"),
			asm.Add.Imm(asm.R1, inc),
		)
	}
	insns = append(insns,
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord).WithSymbol("add"),
		asm.Mov.Reg(asm.R0, asm.R7).WithSymbol("out"),
		asm.Return(),
	)
	return insns
}

// entry tail-calls jmp[0] and passes the packet if that fails.
func (n nf) entry() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMapPtr(asm.R2, 0).WithReference("jmp"),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, n.pass()),
		asm.Return(),
	}
}

// spec returns the collection of the original network function.
func (n nf) spec() *ebpf.CollectionSpec {
	if n.typ == ebpf.UnspecifiedProgram {
		n.typ = ebpf.XDP
	}
	counters := ebpf.Array
	if n.perCPU {
		counters = ebpf.PerCPUArray
	}
	cs := &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"verdicts": {Name: "verdicts", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16},
			"counters": {Name: "counters", Type: counters, KeySize: 4, ValueSize: 8, MaxEntries: 4},
			"seen":     {Name: "seen", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 64},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			"logic": {Name: "logic", Type: n.typ, License: "GPL", Instructions: n.logic()},
		},
	}
	if n.big {
		cs.Maps["big"] = &ebpf.MapSpec{Name: "big", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: bigEntries}
	}
	if n.tail {
		cs.Maps["jmp"] = &ebpf.MapSpec{Name: "jmp", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1,
			Contents: []ebpf.MapKV{{Key: uint32(0), Value: "logic"}}}
		cs.Programs["entry"] = &ebpf.ProgramSpec{Name: "entry", Type: n.typ, License: "GPL", Instructions: n.entry()}
	}
	return cs
}

// candidate returns n's logic program as a candidate.
func (n nf) candidate() Candidate {
	if n.typ == ebpf.UnspecifiedProgram {
		n.typ = ebpf.XDP
	}
	return Candidate{"logic": n.logic()}
}

var (
	ip1 = [4]byte{10, 0, 0, 1}
	ip2 = [4]byte{10, 0, 0, 2}
	ip3 = [4]byte{10, 0, 0, 3}
	ip4 = [4]byte{10, 0, 0, 4}
	ip5 = [4]byte{10, 0, 0, 5}
)

// routes maps ip1 to pass, ip2 to drop and ip3 to tx (XDP verdicts).
func routes() *mapstate.State {
	s := mapstate.New()
	put := func(ip [4]byte, v uint32) {
		s.Put("verdicts", ip[:], binary.NativeEndian.AppendUint32(nil, v))
	}
	put(ip1, xdpPass)
	put(ip2, xdpDrop)
	put(ip3, xdpTX)
	return s
}

// frame is a 64-byte IPv4/UDP frame to dst.
func frame(dst [4]byte) []byte {
	p := defaultUDP()
	copy(p[30:34], dst[:])
	ipv4Checksum(p[14:34])
	return p
}

// traffic returns n frames cycling through ip1..ip4.
func traffic(n int) [][]byte {
	ips := [][4]byte{ip1, ip2, ip3, ip4}
	out := make([][]byte, n)
	for i := range out {
		out[i] = frame(ips[i%len(ips)])
	}
	return out
}
