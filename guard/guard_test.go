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
