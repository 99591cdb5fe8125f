package agent

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
)

// tcSpec is a TC classifier whose verdict is the value stored under key 7
// of the hash map "verdicts" (TC_ACT_OK if none), and a second program
// that a prog array can hold.
func tcSpec() *ebpf.CollectionSpec {
	insns := asm.Instructions{
		asm.StoreImm(asm.R10, -4, 7, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, 0).WithReference("verdicts"),
		asm.FnMapLookupElem.Call(),
		jumpOver(asm.JEq.Imm(asm.R0, 0, ""), 2), // to miss
		asm.LoadMem(asm.R0, asm.R0, 0, asm.Word),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0), // miss
		asm.Return(),
	}
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"verdicts": {Name: "verdicts", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16},
			"jmp":      {Name: "jmp", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 4},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			"classify": {Name: "classify", Type: ebpf.SchedCLS, License: "GPL", Instructions: insns},
		},
	}
}

// jumpOver gives a jump a numeric offset, as the ELF reader leaves jumps.
func jumpOver(ins asm.Instruction, off int16) asm.Instruction {
	ins = ins.WithReference("")
	ins.Offset = off
	return ins
}

func u32b(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// TestTCAndTailCall attaches one classifier both as a clsact ingress
// filter and in a prog-array slot, and checks that a cycle swaps both
// (filter replace, prog-array update), that a guarded update reaches the
// running code at once, and that Stop and Close restore and remove them.
func TestTCAndTailCall(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	ns := newTestNetns(t)
	st := mapstate.New()
	st.Put("verdicts", u32b(7), u32b(2)) // TC_ACT_SHOT
	atts := []Attachment{
		{Program: "classify", Kind: TCIngress, Interface: ns.veth, Netns: ns.path},
		{Program: "classify", Kind: TailCall, ProgArray: "jmp", Index: 1},
	}
	nf, err := Load(ctx, tcSpec(), st, atts, Options{Generated: 200, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			nf.Close()
		}
	}()
	ps, err := nf.Program("classify")
	if err != nil {
		t.Fatal(err)
	}
	if ps.RunningID != ps.OriginalID || len(ps.Attachments) != 2 {
		t.Fatalf("after Load: %+v", ps)
	}
	cs, err := nf.Cycle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pc := cs.Programs[0]; pc.Outcome != OutcomeSwapped {
		t.Fatalf("cycle: %s (%s)", pc.Outcome, pc.Reason)
	}
	ps, _ = nf.Program("classify")
	if ps.RunningID == ps.OriginalID {
		t.Fatal("TC filter still runs the original")
	}
	arrayID, err := nf.progs["classify"].atts[1].current()
	if err != nil || arrayID != ps.RunningID {
		t.Fatalf("prog array holds %d (%v), filter %d", arrayID, err, ps.RunningID)
	}
	pkt := udpFrame(t, "10.0.0.1")
	if got := runID(t, ps.RunningID, pkt); got.verdict != 2 {
		t.Fatalf("optimized classifier: %d, want 2", got.verdict)
	}
	m, err := nf.Map("verdicts")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(u32b(7), u32b(0), ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	if got := runID(t, ps.RunningID, pkt); got.verdict != 0 {
		t.Fatalf("after the guarded update: %d, want 0", got.verdict)
	}
	v, err := m.Lookup(u32b(7))
	if err != nil || binary.LittleEndian.Uint32(v) != 0 {
		t.Fatalf("lookup: %x %v", v, err)
	}
	n := 0
	if err := m.Iterate(func(k, v []byte) bool { n++; return true }); err != nil || n != 1 {
		t.Fatalf("iterate: %d entries, %v", n, err)
	}
	if err := m.Update(u32b(7), []byte{1}, ebpf.UpdateAny); err == nil {
		t.Error("short value accepted")
	}
	if err := nf.Stop(); err != nil {
		t.Fatal(err)
	}
	ps, _ = nf.Program("classify")
	arrayID, _ = nf.progs["classify"].atts[1].current()
	if ps.RunningID != ps.OriginalID || arrayID != ps.OriginalID {
		t.Fatalf("after Stop: filter %d, prog array %d, original %d", ps.RunningID, arrayID, ps.OriginalID)
	}
	tc := nf.progs["classify"].atts[0]
	if err := nf.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if _, err := tc.current(); err == nil {
		t.Error("TC filter left after Close")
	}
}

// TestGuardElision marks the running classifier as depending on its map
// without a guard (as a pass that elides a guard would report) and checks
// the protocol: an update through the agent swaps the original back in
// before it writes, and the next cycle optimizes again.
func TestGuardElision(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	st := mapstate.New()
	st.Put("verdicts", u32b(7), u32b(2))
	nf, err := Load(ctx, tcSpec(), st, []Attachment{{Program: "classify", Kind: TailCall, ProgArray: "jmp"}},
		Options{Generated: 100, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	if cs, err := nf.Cycle(ctx); err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		t.Fatalf("cycle: %v %+v", err, cs)
	}
	nf.mu.Lock()
	r := nf.progs["classify"].running
	r.unguarded, r.guarded = []string{"verdicts"}, nil
	nf.mu.Unlock()
	ps, _ := nf.Program("classify")
	if len(ps.Unguarded) != 1 {
		t.Fatalf("status: %+v", ps)
	}
	m, _ := nf.Map("verdicts")
	if err := m.Update(u32b(7), u32b(0), ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	ps, _ = nf.Program("classify")
	if ps.Optimized || ps.RunningID != ps.OriginalID {
		t.Fatalf("after changing a map with an elided guard the optimized program still runs: %+v", ps)
	}
	var restored bool
	for _, e := range nf.Events(0) {
		restored = restored || e.Kind == EventRestore
	}
	if !restored || nf.Stats().Deoptimizations != 1 {
		t.Errorf("no restore recorded: %+v", nf.Stats())
	}
	if cs, err := nf.Cycle(ctx); err != nil || cs.Programs[0].Outcome != OutcomeSwapped {
		t.Fatalf("cycle after the change: %v %+v", err, cs)
	}
	ps, _ = nf.Program("classify")
	if got := runID(t, ps.RunningID, udpFrame(t, "10.0.0.1")); got.verdict != 0 {
		t.Fatalf("re-optimized classifier: %d, want 0", got.verdict)
	}
}

// TestSnapshotLimit checks that a map above MaxSnapshotEntries is not
// snapshotted and that a candidate depending on it is dropped.
func TestSnapshotLimit(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	st := mapstate.New()
	for k := range uint32(5) {
		st.Put("verdicts", u32b(k+3), u32b(2))
	}
	nf, err := Load(ctx, tcSpec(), st, []Attachment{{Program: "classify", Kind: TailCall, ProgArray: "jmp"}},
		Options{Generated: 100, MaxSnapshotEntries: 4, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	cs, err := nf.Cycle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if why := cs.Skipped["verdicts"]; why == "" {
		t.Fatalf("verdicts (16 slots, 5 entries, limit 4) snapshotted: %+v", cs.Skipped)
	}
	if pc := cs.Programs[0]; pc.Outcome != OutcomeSkipped && pc.Outcome != OutcomeNoChange {
		t.Fatalf("candidate depending on an unsnapshotted map: %s (%s)", pc.Outcome, pc.Reason)
	}
	ps, _ := nf.Program("classify")
	if ps.Optimized {
		t.Fatal("optimized against an unsnapshotted map")
	}
}

// TestPeriodicSkip checks that a periodic cycle with nothing changed
// skips the optimizer, and that a change through the agent makes the
// next one run in full.
func TestPeriodicSkip(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	st := mapstate.New()
	st.Put("verdicts", u32b(7), u32b(2))
	nf, err := Load(ctx, tcSpec(), st, []Attachment{{Program: "classify", Kind: TailCall, ProgArray: "jmp"}},
		Options{Generated: 100, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	for i, want := range []struct {
		outcome Outcome
		reason  string
	}{{OutcomeSwapped, ""}, {OutcomeUnchanged, "inputs unchanged"}, {OutcomeUnchanged, "inputs unchanged"}} {
		cs, err := nf.runCycle(ctx, "period")
		if err != nil {
			t.Fatal(err)
		}
		if pc := cs.Programs[0]; pc.Outcome != want.outcome || pc.Reason != want.reason {
			t.Fatalf("periodic cycle %d: %s (%q), want %s (%q)", i, pc.Outcome, pc.Reason, want.outcome, want.reason)
		}
	}
	m, _ := nf.Map("verdicts")
	if err := m.Update(u32b(7), u32b(0), ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	cs, err := nf.runCycle(ctx, "period")
	if err != nil {
		t.Fatal(err)
	}
	if pc := cs.Programs[0]; pc.Outcome != OutcomeSwapped {
		t.Fatalf("periodic cycle after a change: %s (%s)", pc.Outcome, pc.Reason)
	}
}
