//go:build linux

package bench

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

// seenValue is one entry of the recorder's map.
type seenValue struct {
	Count, Len, Last, Fails uint32
}

// recorderInsns is an NF that records, keyed by the packet's first byte,
// how often it saw the packet, the frame length and the last byte, then
// (if adjust is non-zero) moves the head by adjust bytes (negative grows
// the frame, as encapsulation does) and, if tail is non-zero, the tail by
// tail bytes, counting its own failures to do so.
func recorderInsns(seen *ebpf.Map, adjust, tail int32) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 1),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R8, asm.R2, 0, asm.Byte), // key = first byte
		asm.Sub.Reg(asm.R3, asm.R2),
		asm.Mov.Reg(asm.R9, asm.R3), // length
		asm.StoreMem(asm.RFP, -4, asm.R8, asm.Word),
		asm.LoadMapPtr(asm.R1, seen.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R1, asm.R7, 0, asm.Word),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R7, 0, asm.R1, asm.Word),
		asm.StoreMem(asm.R7, 4, asm.R9, asm.Word),
		// last byte via bpf_xdp_load_bytes(ctx, len-1, fp-8, 1)
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R9),
		asm.Add.Imm(asm.R2, -1),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -8),
		asm.Mov.Imm(asm.R4, 1),
		asm.FnXdpLoadBytes.Call(),
		asm.LoadMem(asm.R1, asm.RFP, -8, asm.Byte),
		asm.StoreMem(asm.R7, 8, asm.R1, asm.Word),
	}
	if adjust != 0 {
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, adjust),
			asm.FnXdpAdjustHead.Call(),
			asm.JEq.Imm(asm.R0, 0, "head_done"),
			asm.LoadMem(asm.R1, asm.R7, 12, asm.Word),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R7, 12, asm.R1, asm.Word),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("head_done"),
		)
	}
	if tail != 0 {
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, tail),
			asm.FnXdpAdjustTail.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R7, 12, asm.Word),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R7, 12, asm.R1, asm.Word),
		)
	}
	return append(insns,
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("out"),
		asm.Return(),
	)
}

// loopInsns is an NF that spins a data-dependent bounded loop n times.
func loopInsns(n int32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
		asm.Sub.Reg(asm.R3, asm.R2),
		asm.Mov.Imm(asm.R0, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.Mul.Imm(asm.R3, 31).WithSymbol("loop"),
		asm.Add.Reg(asm.R3, asm.R4),
		asm.Xor.Imm(asm.R3, 0x5bd1),
		asm.Add.Imm(asm.R4, 1),
		asm.JLT.Imm(asm.R4, n, "loop"),
		asm.And.Imm(asm.R3, 1),
		asm.Mov.Reg(asm.R0, asm.R3),
		asm.Add.Imm(asm.R0, xdpDrop),
		asm.Return(),
	}
}

func loadXDP(t testing.TB, name string, insns asm.Instructions) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// numberedTrace returns n packets; packet i starts with byte i, is 60+i
// bytes long and ends with byte 0xff-i.
func numberedTrace(n int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		p := make([]byte, 60+i)
		p[0] = byte(i)
		for j := 1; j < len(p)-1; j++ {
			p[j] = 0xaa
		}
		p[len(p)-1] = byte(0xff - i)
		out = append(out, p)
	}
	return out
}

// TestReplay checks that the driver replays packet i into the frame at
// its own length, whatever the NF does to the head and tail of the frame.
func TestReplay(t *testing.T) {
	kerneltest.Require(t)
	const n, rounds = 40, 5
	trace := numberedTrace(n)
	h, err := New(trace, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	for _, tc := range []struct {
		name         string
		adjust, tail int32
	}{
		{"plain", 0, 0},
		{"encap", -20, 0},    // grows at the head, like IP-in-IP
		{"vlan_pop", 4, 0},   // shrinks at the head
		{"grow_tail", 0, 30}, // grows at the tail
		{"push_and_trim", -4, -10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 256})
			if err != nil {
				t.Fatal(err)
			}
			defer seen.Close()
			nf := loadXDP(t, "recorder", recorderInsns(seen, tc.adjust, tc.tail))
			if _, err := h.Run(nf, n*rounds); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				var v seenValue
				if err := seen.Lookup(uint32(i), &v); err != nil {
					t.Fatal(err)
				}
				want := seenValue{Count: rounds, Len: uint32(len(trace[i])), Last: uint32(0xff - i)}
				if v != want {
					t.Errorf("packet %d: NF saw %+v, want %+v", i, v, want)
				}
			}
			var extra seenValue
			if err := seen.Lookup(uint32(n), &extra); err != nil {
				t.Fatal(err)
			}
			if extra.Count != 0 {
				t.Errorf("NF saw %d packets starting with byte %d, which is not in the trace", extra.Count, n)
			}
		})
	}
}

// TestMeasureOrdersCost checks that the harness measures a slower NF as
// slower: a 200-iteration loop against a 20-iteration loop and a trivial
// NF, side by side.
func TestMeasureOrdersCost(t *testing.T) {
	kerneltest.Require(t)
	h, err := New(numberedTrace(64), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	progs := map[string]*ebpf.Program{
		"trivial": loadXDP(t, "trivial", asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()}),
		"loop20":  loadXDP(t, "loop20", loopInsns(20)),
		"loop200": loadXDP(t, "loop200", loopInsns(200)),
	}
	var calls, last int
	res, err := h.Measure(context.Background(), progs, Options{
		Rounds: 5, Repeat: 200000, Warmup: 1000,
		Progress: func(done, _ int) { calls++; last = done },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res)
	if calls != 5*4 || last != 5*4 {
		t.Errorf("progress called %d times, last done=%d; want 20, 20", calls, last)
	}
	if res.Floor.RawMedian <= 0 {
		t.Errorf("floor %.1f ns/pkt, want > 0", res.Floor.RawMedian)
	}
	l200, _ := res.Stat("loop200")
	l20, _ := res.Stat("loop20")
	triv, _ := res.Stat("trivial")
	// loop200 costs about ten times loop20; the margins leave room for
	// the machine's noise.
	if !(l200.NsPerPacket > 100) {
		t.Errorf("loop200 costs %.1f ns/pkt net, want > 100", l200.NsPerPacket)
	}
	if !(l200.NsPerPacket > 3*l20.NsPerPacket) {
		t.Errorf("loop200 %.1f ns/pkt is not clearly above loop20 %.1f", l200.NsPerPacket, l20.NsPerPacket)
	}
	if !(l200.NsPerPacket > triv.NsPerPacket+100) {
		t.Errorf("loop200 %.1f ns/pkt is not clearly above trivial %.1f", l200.NsPerPacket, triv.NsPerPacket)
	}
	if r := res.Ratio("loop200", "loop200"); r != 1 {
		t.Errorf("Ratio of a program to itself = %v", r)
	}
	if r := res.Ratio("loop200", "nosuch"); !math.IsNaN(r) {
		t.Errorf("Ratio to an unknown program = %v, want NaN", r)
	}
}

func TestErrors(t *testing.T) {
	kerneltest.Require(t)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		want   string
	}{
		{"empty", nil, "empty trace"},
		{"short", [][]byte{make([]byte, 13)}, "packet 0 is 13 bytes"},
		{"long", [][]byte{make([]byte, 60), make([]byte, MaxPacket+1)}, "packet 1 is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(tc.frames, Config{})
			if err == nil {
				h.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}

	h, err := New(numberedTrace(4), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	sf, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	if _, err := h.Measure(context.Background(), map[string]*ebpf.Program{"sf": sf}, Options{Rounds: 1, Repeat: 10}); err == nil || !strings.Contains(err.Error(), "want XDP") {
		t.Errorf("Measure of a socket filter: %v, want an error naming XDP", err)
	}
	if _, err := h.Run(sf, 10); err == nil {
		t.Error("Run of a socket filter succeeded")
	}
	if _, err := h.Measure(context.Background(), map[string]*ebpf.Program{FloorName: sf}, Options{}); err == nil {
		t.Error("Measure accepted a program named like the floor")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	triv := loadXDP(t, "trivial", asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()})
	if _, err := h.Measure(ctx, map[string]*ebpf.Program{"t": triv}, Options{Rounds: 1, Repeat: 10}); !errors.Is(err, context.Canceled) {
		t.Errorf("Measure with a cancelled context: %v", err)
	}
	if _, err := h.Run(triv, 0); err == nil {
		t.Error("Run with repeat 0 succeeded")
	}
}

func TestDriverErrorMessage(t *testing.T) {
	e := &DriverError{TailCall: 3}
	if !strings.Contains(e.Error(), "tail call 3") {
		t.Errorf("message %q", e.Error())
	}
}
