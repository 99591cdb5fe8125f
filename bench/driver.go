//go:build linux

package bench

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Layout of the driver's per-CPU state (one entry of the state map).
const (
	stateIdx      = 0  // u64: index of the next trace packet
	stateBase     = 8  // u64: frame start (ctx->data) this test run began with
	stateCur      = 16 // u64: scratch, ctx->data of the current run
	stateErrHead  = 24 // u64: bpf_xdp_adjust_head failures
	stateErrTail  = 32 // u64: bpf_xdp_adjust_tail failures
	stateErrStore = 40 // u64: bpf_xdp_store_bytes failures or bad slot length
	stateErrCall  = 48 // u64: tail calls that did not happen
	stateErrSlot  = 56 // u64: trace slot lookups that failed
	stateSize     = 64
)

// slotHeader is the size of the header in front of each trace slot's bytes:
// a u32 packet length and 4 bytes of padding.
const slotHeader = 8

// maxDrift is the largest head movement (in bytes, either way) the driver
// undoes. XDP_PACKET_HEADROOM is 256, so a program cannot move the head
// further than that; a larger difference means the kernel handed the driver
// a new buffer (a new test run, or a retry after a signal) and the current
// position becomes the new base.
const maxDrift = 256

// driverInsns returns the driver program. It runs once per packet:
//
//  1. Undo whatever the previous packet's NF did to the head of the frame
//     (encapsulation, VLAN push/pop) with bpf_xdp_adjust_head, so every
//     packet starts at the same headroom. The start of the frame is kept in
//     the per-CPU state as an address, which needs a privileged loader.
//  2. Take the next trace packet (per-CPU cursor, wrapping at n).
//  3. Set the frame's length to the packet's with bpf_xdp_adjust_tail and
//     copy the packet in with bpf_xdp_store_bytes.
//  4. Tail-call the NF in slot 0 of the prog array, or, for the live
//     generator (progs nil), return XDP_TX.
//
// Every failure is counted in the state and ends the run with XDP_ABORTED,
// so the harness can refuse a measurement that did not replay the trace.
func driverInsns(state, trace, progs *ebpf.Map, n uint32, slot uint32) asm.Instructions {
	fail := func(label string, off int16) asm.Instructions {
		return asm.Instructions{
			asm.LoadMem(asm.R1, asm.R7, off, asm.DWord).WithSymbol(label),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R7, off, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, int32(xdpAborted)),
			asm.Return(),
		}
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),

		// r7 = &state[0] (this CPU's copy)
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, state.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "have_state"),
		asm.Mov.Imm(asm.R0, int32(xdpAborted)),
		asm.Return(),
		asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("have_state"),

		// r2 = ctx->data as a number: store the packet pointer into the
		// state and read it back.
		asm.LoadMem(asm.R1, asm.R6, 0, asm.Word),
		asm.StoreMem(asm.R7, stateCur, asm.R1, asm.DWord),
		asm.LoadMem(asm.R2, asm.R7, stateCur, asm.DWord),
		asm.LoadMem(asm.R3, asm.R7, stateBase, asm.DWord),
		asm.JEq.Imm(asm.R3, 0, "rebase"),
		// r4 = drift = data - base; a drift outside ±maxDrift is a new buffer.
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Sub.Reg(asm.R4, asm.R3),
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.Add.Imm(asm.R5, maxDrift),
		asm.JGT.Imm(asm.R5, 2*maxDrift, "rebase"),
		asm.JEq.Imm(asm.R4, 0, "head_ok"),
		asm.Mov.Imm(asm.R2, 0),
		asm.Sub.Reg(asm.R2, asm.R4),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnXdpAdjustHead.Call(),
		asm.JNE.Imm(asm.R0, 0, "err_head"),
		asm.Ja.Label("head_ok"),
		asm.StoreMem(asm.R7, stateBase, asm.R2, asm.DWord).WithSymbol("rebase"),

		// r8 = cursor; advance it, wrapping at n.
		asm.LoadMem(asm.R8, asm.R7, stateIdx, asm.DWord).WithSymbol("head_ok"),
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Add.Imm(asm.R1, 1),
		asm.JLT.Imm(asm.R1, int32(n), "store_idx"),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.R7, stateIdx, asm.R1, asm.DWord).WithSymbol("store_idx"),

		// r9 = &trace[cursor]
		asm.StoreMem(asm.RFP, -8, asm.R8, asm.Word),
		asm.LoadMapPtr(asm.R1, trace.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "err_slot"),
		asm.Mov.Reg(asm.R9, asm.R0),

		// Resize the frame to the packet's length.
		asm.LoadMem(asm.R2, asm.R9, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.LoadMem(asm.R4, asm.R6, 0, asm.Word), // data
		asm.Sub.Reg(asm.R3, asm.R4),              // current length
		asm.Sub.Reg(asm.R2, asm.R3),              // want - have
		asm.JEq.Imm(asm.R2, 0, "len_ok"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnXdpAdjustTail.Call(),
		asm.JNE.Imm(asm.R0, 0, "err_tail"),

		// Copy the packet in.
		asm.LoadMem(asm.R4, asm.R9, 0, asm.Word).WithSymbol("len_ok"),
		asm.JEq.Imm(asm.R4, 0, "err_store"),
		asm.JGT.Imm(asm.R4, int32(slot), "err_store"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R9),
		asm.Add.Imm(asm.R3, slotHeader),
		asm.FnXdpStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "err_store"),
	}
	if progs == nil {
		insns = append(insns, asm.Mov.Imm(asm.R0, xdpTX), asm.Return())
	} else {
		// Run the NF. A tail call that returns did not happen.
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, progs.FD()),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnTailCall.Call(),
		)
		insns = append(insns, fail("err_call", stateErrCall)...)
	}
	insns = append(insns, fail("err_head", stateErrHead)...)
	insns = append(insns, fail("err_slot", stateErrSlot)...)
	insns = append(insns, fail("err_tail", stateErrTail)...)
	insns = append(insns, fail("err_store", stateErrStore)...)
	return insns
}

// XDP verdicts.
const (
	xdpAborted = 0
	xdpDrop    = 1
	xdpPass    = 2
	xdpTX      = 3
)

// floorInsns is the trivial NF whose cost is the harness's own: XDP_DROP.
func floorInsns() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R0, xdpDrop),
		asm.Return(),
	}
}
