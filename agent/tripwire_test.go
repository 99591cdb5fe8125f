package agent

import (
	"context"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/l2switch"
)

// TestTripwireRearm runs the L2 switch with a heatmap on its fdb (written
// by the data plane): the cycle caches the forwarding lookup behind
// tripwires. A tripped guard (what a learning write does) is re-armed by
// the next cycle, which swaps in a candidate for the fresh version, and
// changes of the fdb are not fingerprint mismatches.
func TestTripwireRearm(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	spec, err := l2switch.Spec()
	if err != nil {
		t.Fatal(err)
	}
	cfg := l2switch.ExampleConfig()
	st, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	fdbKey := st.Maps[l2switch.MapFDB].Entries[0].Key
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{l2switch.MapFDB: {{Key: fdbKey, Count: 100}}}}
	spec.Maps["mph_slot"] = &ebpf.MapSpec{Name: "mph_slot", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	nf, err := Load(ctx, spec, st, []Attachment{{Program: l2switch.Program, Kind: TailCall, ProgArray: "mph_slot"}},
		Options{Name: "l2switch", Generated: 200, Logger: testLogger(t), Profiler: StaticProfiler{Heat: heat}})
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	cycle := func() ProgramCycle {
		t.Helper()
		cs, err := nf.Cycle(ctx)
		if err != nil || len(cs.Programs) != 1 {
			t.Fatalf("cycle: %v, %+v", err, cs)
		}
		return cs.Programs[0]
	}
	if pc := cycle(); pc.Outcome != OutcomeSwapped {
		t.Fatalf("first cycle: %s %s", pc.Outcome, pc.Reason)
	}
	ps, _ := nf.Program(l2switch.Program)
	if !slices.Contains(ps.Guarded, l2switch.MapFDB) || !nf.table.DataPlane(l2switch.MapFDB) {
		t.Fatalf("fdb not guarded by tripwires: guarded %v", ps.Guarded)
	}
	// A data-plane write changes the fdb and trips its guard.
	slot, _ := nf.table.Slot(l2switch.MapFDB)
	buf, err := nf.guards.LookupBytes(uint32(0))
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(buf[8*slot:], guard.Tripped)
	if err := nf.guards.Put(uint32(0), buf); err != nil {
		t.Fatal(err)
	}
	learned := append([]byte{0x02, 0xaa, 0, 0, 0, 1}, 10, 0)
	if err := nf.maps[l2switch.MapFDB].Put(learned, make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	if n := nf.CheckFingerprints(ctx); n != 0 {
		t.Fatalf("%d fingerprint mismatches for a map the data plane writes", n)
	}
	before := nf.table.Version(l2switch.MapFDB)
	if pc := cycle(); pc.Outcome != OutcomeSwapped {
		t.Fatalf("cycle after the trip: %s %s, want a swap to the re-armed version", pc.Outcome, pc.Reason)
	}
	buf, err = nf.guards.LookupBytes(uint32(0))
	if err != nil {
		t.Fatal(err)
	}
	if v := nf.table.Version(l2switch.MapFDB); v != before+1 || binary.LittleEndian.Uint64(buf[8*slot:]) != v {
		t.Fatalf("after the cycle: table version %d (was %d), guard %d", v, before, binary.LittleEndian.Uint64(buf[8*slot:]))
	}
	if !slices.ContainsFunc(nf.Events(0), func(e Event) bool { return e.Kind == EventGuardBump && e.Map == l2switch.MapFDB }) {
		t.Fatal("no guard event for the re-arm")
	}
}
