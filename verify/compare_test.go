package verify

import (
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

func TestNDMask(t *testing.T) {
	if !littleEndian {
		t.Skip("expectations are written for a little-endian host")
	}
	tests := []struct {
		name string
		a, b []byte
		want []int // masked offsets
	}{
		{"equal", []byte{1, 2, 3}, []byte{1, 2, 3}, nil},
		// A clock: bytes 0 and 2 differ, byte 1 happens to agree, and a
		// value between the two may differ in all three.
		{"clock low bytes", []byte{0xff, 0x00, 0x10, 7, 0, 0, 0, 0}, []byte{0x01, 0x00, 0x11, 7, 0, 0, 0, 0}, []int{0, 1, 2}},
		// Words are independent: only the second word is touched.
		{"second word", make([]byte, 16), append(make([]byte, 9), 1, 0, 0, 0, 0, 0, 0), []int{8, 9}},
		// A short trailing word.
		{"partial word", []byte{0, 0, 0, 0, 0, 0, 0, 0, 5, 6}, []byte{0, 0, 0, 0, 0, 0, 0, 0, 5, 7}, []int{8, 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			for i, m := range ndMask(tt.a, tt.b) {
				if m {
					got = append(got, i)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("masked %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCompareBytes(t *testing.T) {
	tests := []struct {
		name    string
		a, b, c []byte
		wantOff int // -2: no mismatch
		wantND  int
		detail  string
	}{
		{"equal", []byte{1, 2}, []byte{1, 2}, []byte{1, 2}, -2, 0, ""},
		{"byte", []byte{1, 2, 3}, []byte{1, 2, 3}, []byte{1, 9, 3}, 1, 0, "out byte 1: expected 02, got 09"},
		{"excluded byte", []byte{1, 2, 3}, []byte{1, 5, 3}, []byte{1, 9, 3}, -2, 1, ""},
		{"excluded and real", []byte{1, 2, 3}, []byte{1, 5, 3}, []byte{1, 9, 4}, 2, 0, "out byte 2"},
		{"length", []byte{1, 2, 3}, []byte{1, 2, 3}, []byte{1, 2}, 2, 0, "out length: expected 3 bytes, got 2"},
		{"length nondeterministic", []byte{1, 2, 3}, []byte{1, 2}, []byte{1}, -2, 3, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _, _, nd := compareBytes(tt.a, tt.b, tt.c, "out")
			switch {
			case tt.wantOff == -2 && m != nil:
				t.Errorf("unexpected mismatch %+v", m)
			case tt.wantOff != -2 && (m == nil || m.Offset != tt.wantOff || !strings.Contains(m.Detail, tt.detail)):
				t.Errorf("mismatch %+v, want offset %d and %q", m, tt.wantOff, tt.detail)
			}
			if nd != tt.wantND {
				t.Errorf("%d excluded bytes, want %d", nd, tt.wantND)
			}
		})
	}
}

func TestEntryPrograms(t *testing.T) {
	ret := asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}
	spec := &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"jmp": {Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 2,
				Contents: []ebpf.MapKV{{Key: uint32(0), Value: "stage"}}},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			"main":   {Type: ebpf.XDP, Instructions: ret},
			"stage":  {Type: ebpf.XDP, Instructions: ret},
			"tc":     {Type: ebpf.SchedCLS, Instructions: ret},
			"filter": {Type: ebpf.SocketFilter, Instructions: ret},
		},
	}
	tests := []struct {
		name      string
		cand      Candidate
		requested []string
		want      []string
		wantErr   string
	}{
		{"candidate entry", Candidate{"main": ret}, nil, []string{"main"}, ""},
		{"candidate tail target adds entries", Candidate{"stage": ret}, nil, []string{"main", "stage", "tc"}, ""},
		{"no candidate: entry points", nil, nil, []string{"main", "tc"}, ""},
		{"socket filter candidate falls back to entries", Candidate{"filter": ret}, nil, []string{"main", "tc"}, ""},
		{"requested order kept", nil, []string{"tc", "main", "tc"}, []string{"tc", "main"}, ""},
		{"requested wrong type", nil, []string{"filter"}, nil, "only XDP, SchedCLS and SchedACT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := entryPrograms(spec, tt.cand, tt.requested)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
