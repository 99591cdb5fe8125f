package verify

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
)

// inserter stores value under the packet's bytes 14-17 in map flows on
// every packet; with wrongKey set it stores value+1 for that key.
func inserter(value int32, wrongKey uint32) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 18),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R5, asm.R2, 14, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R5, asm.Word),
		asm.Mov.Imm(asm.R7, value),
		asm.StoreMem(asm.RFP, -16, asm.R7, asm.DWord),
	}
	if wrongKey != 0 {
		insns = append(insns,
			asm.JNE.Imm(asm.R5, int32(wrongKey), "put"),
			asm.Mov.Imm(asm.R7, value+1),
			asm.StoreMem(asm.RFP, -16, asm.R7, asm.DWord),
		)
	}
	insns = append(insns,
		asm.LoadMapPtr(asm.R1, 0).WithReference("flows").WithSymbol("put"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -16),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("out"),
		asm.Return(),
	)
	return insns
}

// keyFrame is a 64-byte frame whose bytes 14-17 hold key.
func keyFrame(key uint32) []byte {
	p := make([]byte, 64)
	binary.NativeEndian.PutUint32(p[14:], key)
	return p
}

// TestShrunkMaps checks that hash maps created smaller for the test
// (DiffOptions.InsertBounds) compare as at full size: a map inserted
// into on every packet passes, a candidate storing a wrong value on a
// late packet is still caught, a map the test could fill is not shrunk,
// and a test with more packets than planned is refused.
func TestShrunkMaps(t *testing.T) {
	kerneltest.Require(t)
	const late = 2990
	tests := []struct {
		name       string
		typ        ebpf.MapType
		maxEntries uint32
		filled     int // entries in the state
		packets    int
		maxPackets int
		wrongKey   uint32
		wantSize   uint32 // 0: not shrunk
		wantErr    string
		wantMap    bool // a map mismatch on the late packet's key
	}{
		{name: "insert every packet", typ: ebpf.Hash, maxEntries: 65536, filled: 1000, packets: 3000, maxPackets: 3000, wantSize: 8192},
		{name: "lru insert every packet", typ: ebpf.LRUHash, maxEntries: 65536, filled: 1000, packets: 3000, maxPackets: 3000, wantSize: 8192},
		{name: "wrong value on a late packet", typ: ebpf.Hash, maxEntries: 65536, filled: 1000, packets: 3000, maxPackets: 3000, wrongKey: 1 + late, wantSize: 8192, wantMap: true},
		{name: "lru wrong value on a late packet", typ: ebpf.LRUHash, maxEntries: 65536, filled: 1000, packets: 3000, maxPackets: 3000, wrongKey: 1 + late, wantSize: 8192, wantMap: true},
		{name: "lru near capacity", typ: ebpf.LRUHash, maxEntries: 8192, filled: 6000, packets: 1000, maxPackets: 1000},
		{name: "more packets than planned", typ: ebpf.Hash, maxEntries: 65536, filled: 10, packets: 3000, maxPackets: 100, wantErr: "too few"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := &ebpf.CollectionSpec{
				Maps: map[string]*ebpf.MapSpec{
					"flows": {Name: "flows", Type: tt.typ, KeySize: 4, ValueSize: 8, MaxEntries: tt.maxEntries},
				},
				Programs: map[string]*ebpf.ProgramSpec{
					"ins": {Name: "ins", Type: ebpf.XDP, License: "GPL", Instructions: inserter(7, 0)},
				},
			}
			state := mapstate.New()
			for i := range tt.filled {
				// Keys the packets do not use, beyond them.
				state.Put("flows", binary.NativeEndian.AppendUint32(nil, uint32(1<<20+i)), binary.NativeEndian.AppendUint64(nil, 3))
			}
			var packets [][]byte
			for i := range tt.packets {
				packets = append(packets, keyFrame(uint32(1+i)))
			}
			opts := DiffOptions{InsertBounds: map[string]int{"flows": 1}, MaxPackets: tt.maxPackets}
			r, err := Differential(context.Background(), spec, state, Candidate{"ins": inserter(7, tt.wrongKey)}, packets, opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.MapCapacities["flows"]; got != tt.wantSize {
				t.Errorf("test copy of flows has %d entries, want %d (0: as the spec)", got, tt.wantSize)
			}
			if !tt.wantMap {
				if !r.Passed() {
					t.Fatalf("identical candidate rejected: %+v", r.Mismatches)
				}
				return
			}
			if r.Passed() || len(r.Mismatches) != 1 {
				t.Fatalf("wrong candidate: passed %v, mismatches %+v", r.Passed(), r.Mismatches)
			}
			m := r.Mismatches[0]
			if m.Kind != KindMap || m.Map != "flows" || binary.NativeEndian.Uint32(m.Key) != tt.wrongKey || m.Packet < late {
				t.Errorf("mismatch %+v, want map flows key %d at packet %d or later", m, tt.wrongKey, late)
			}
		})
	}
}

func TestTestCapacity(t *testing.T) {
	cpus := 2
	slack := CapacitySlack(cpus)
	tests := []struct {
		name                       string
		max                        uint32
		entries, bound, maxPackets int
		want                       uint32
	}{
		{"fits in a smaller power of two", 65536, 1000, 1, 3000, 8192},
		{"exact power of two", 65536, 4096 - 1 - slack, 1, 1, 4096},
		{"one more needs the next", 65536, 4096 - slack, 1, 1, 8192},
		{"not smaller than the spec", 8192, 6000, 1, 1000, 0},
		{"no packets planned", 65536, 10, 1, 0, 0},
		{"read only", 65536, 10, 0, 3000, 2048},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms := &ebpf.MapSpec{Type: ebpf.Hash, MaxEntries: tt.max}
			if got := testCapacity(ms, tt.entries, tt.bound, tt.maxPackets, cpus); got != tt.want {
				t.Errorf("testCapacity = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestShrunkMapsReset checks that a session whose hash map copies were
// sized for one state refuses a Reset to a state with too many entries
// for them, and that Originals.SizedFor tells the packets they suit.
func TestShrunkMapsReset(t *testing.T) {
	kerneltest.Require(t)
	spec := &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"flows": {Name: "flows", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 65536},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			"ins": {Name: "ins", Type: ebpf.XDP, License: "GPL", Instructions: inserter(7, 0)},
		},
	}
	fill := func(n int) *mapstate.State {
		s := mapstate.New()
		for i := range n {
			s.Put("flows", binary.NativeEndian.AppendUint32(nil, uint32(1<<20+i)), binary.NativeEndian.AppendUint64(nil, 3))
		}
		return s
	}
	opts := DiffOptions{InsertBounds: map[string]int{"flows": 1}, MaxPackets: 100}
	o, err := LoadOriginals(spec, fill(10), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if !o.SizedFor(100) || o.SizedFor(101) {
		t.Errorf("SizedFor(100), SizedFor(101) = %v, %v; want true, false", o.SizedFor(100), o.SizedFor(101))
	}
	if err := o.Reset(fill(500)); err != nil {
		t.Fatalf("reset within the capacity: %v", err)
	}
	if err := o.Reset(fill(5000)); err == nil || !strings.Contains(err.Error(), "too few") {
		t.Fatalf("reset beyond the capacity: %v, want too few entries", err)
	}
}
