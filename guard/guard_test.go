package guard

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

func TestSlotsAreStable(t *testing.T) {
	tab := NewTable()
	a, _ := tab.Slot("routes")
	b, _ := tab.Slot("acl")
	again, _ := tab.Slot("routes")
	if a != again || a == b {
		t.Fatalf("slots routes=%d acl=%d routes again=%d", a, b, again)
	}
	if got := tab.Guarded(); len(got) != 2 || got[0] != "acl" {
		t.Fatalf("guarded maps %v", got)
	}
	full := NewTable()
	for i := range MaxGuards {
		if _, err := full.Slot(string(rune('a'+i%26)) + string(rune(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := full.Slot("one-too-many"); err == nil {
		t.Fatal("a full table must refuse another map")
	}
}

func TestBumpWritesTheLiveGuard(t *testing.T) {
	kerneltest.Require(t)
	m, err := ebpf.NewMap(Spec())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tab := NewTable()
	slot, _ := tab.Slot("routes")
	if err := tab.Bump(m, "unguarded"); err != nil {
		t.Fatalf("bumping a map without a guard is a no-op, got %v", err)
	}
	for want := uint64(1); want <= 3; want++ {
		if err := tab.Bump(m, "routes"); err != nil {
			t.Fatal(err)
		}
		var buf []byte
		if buf, err = m.LookupBytes(uint32(0)); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(buf[8*slot:]); got != want || tab.Version("routes") != want {
			t.Fatalf("guard holds %d, table says %d, want %d", got, tab.Version("routes"), want)
		}
	}
}

func TestDataPlaneMark(t *testing.T) {
	tab := NewTable()
	if tab.DataPlane("fdb") {
		t.Fatal("unmarked map reported as data-plane written")
	}
	tab.MarkDataPlane("fdb")
	if !tab.DataPlane("fdb") || tab.DataPlane("routes") {
		t.Fatal("mark not recorded for exactly the marked map")
	}
}

// slotValue reads one slot of the live guard map.
func slotValue(t *testing.T, m *ebpf.Map, slot uint32) uint64 {
	t.Helper()
	buf, err := m.LookupBytes(uint32(0))
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(buf[8*slot:])
}

// trip does what a data-plane tripwire does, from user space.
func trip(t *testing.T, m *ebpf.Map, slot uint32) {
	t.Helper()
	buf, err := m.LookupBytes(uint32(0))
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(buf[8*slot:], Tripped)
	if err := m.Put(uint32(0), buf); err != nil {
		t.Fatal(err)
	}
}

func TestRearmAndSlotWrites(t *testing.T) {
	kerneltest.Require(t)
	tests := []struct {
		name  string
		flags uint32
	}{
		{"mappable", Spec().Flags},
		{"whole-value fallback (an older pinned map)", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := Spec()
			spec.Flags = tt.flags
			m, err := ebpf.NewMap(spec)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			tab := NewTable()
			fdb, _ := tab.Slot("fdb")
			routes, _ := tab.Slot("routes")
			if err := tab.Bump(m, "routes"); err != nil {
				t.Fatal(err)
			}
			// A tripped slot survives a bump of another slot.
			trip(t, m, fdb)
			if err := tab.Bump(m, "routes"); err != nil {
				t.Fatal(err)
			}
			if got := slotValue(t, m, fdb); got != Tripped {
				t.Fatalf("fdb slot %#x after bumping routes, want tripped", got)
			}
			armed, err := tab.Rearm(m)
			if err != nil {
				t.Fatal(err)
			}
			if len(armed) != 1 || armed[0] != "fdb" {
				t.Fatalf("re-armed %v, want [fdb]", armed)
			}
			if got := slotValue(t, m, fdb); got != 1 || tab.Version("fdb") != 1 {
				t.Fatalf("fdb slot %d, table %d after the re-arm, want 1", got, tab.Version("fdb"))
			}
			if got := slotValue(t, m, routes); got != 2 {
				t.Fatalf("routes slot %d, want 2", got)
			}
			if armed, err := tab.Rearm(m); err != nil || len(armed) != 0 {
				t.Fatalf("second re-arm: %v, %v; want nothing to do", armed, err)
			}
		})
	}
}
