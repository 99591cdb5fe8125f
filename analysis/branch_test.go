package analysis

import (
	"math"
	"testing"

	"github.com/cilium/ebpf/asm"
)

// TestCompareConst pins the jump semantics that both the analysis's
// branch pruning and the passes' constant folding rely on.
func TestCompareConst(t *testing.T) {
	for _, tc := range []struct {
		op    asm.JumpOp
		x, y  uint64
		is32  bool
		taken bool
	}{
		{asm.JEq, 1, 1, false, true},
		{asm.JEq, 1 << 32, 0, true, true}, // high halves ignored
		{asm.JEq, 1 << 32, 0, false, false},
		{asm.JGT, math.MaxUint64, 1, false, true},
		{asm.JSGT, math.MaxUint64, 1, false, false}, // -1 > 1 is false signed
		{asm.JSLT, 0xffffffff, 0, true, true},       // -1 as int32
		{asm.JSLT, 0xffffffff, 0, false, false},     // 4294967295 as int64
		{asm.JSet, 6, 1, false, false},
		{asm.JSet, 6, 2, false, true},
		{asm.JLE, 3, 3, false, true},
		{asm.JSGE, 1 << 31, 0, true, false},
	} {
		got, ok := CompareConst(tc.op, tc.x, tc.y, tc.is32)
		if !ok || got != tc.taken {
			t.Errorf("%v %#x, %#x (32-bit %v) = %v, %v; want %v", tc.op, tc.x, tc.y, tc.is32, got, ok, tc.taken)
		}
	}
}
