package instrument

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/nf/router"
)

// bpfFNoPrealloc is BPF_F_NO_PREALLOC, which LPM tries require.
const bpfFNoPrealloc = 1

// testSpec is a collection with one XDP program "prog" that looks up
//
//	lpm   (LPM trie) with a stack key            -> instrumented
//	big   (1024-entry hash) with a stack key     -> instrumented
//	small (16-entry hash)                        -> too small
//	arr   (array)                                -> arrays are not profiled
//	big   with a key inside arr's value          -> instrumented, key pointer spilled
//
// and returns XDP_PASS if the LPM lookup hit (R7 carries its result
// across the other lookups), else XDP_DROP.
func testSpec() *ebpf.CollectionSpec {
	maps := map[string]*ebpf.MapSpec{
		"lpm":   {Name: "lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 1024, Flags: bpfFNoPrealloc},
		"big":   {Name: "big", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1024},
		"small": {Name: "small", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16},
		"arr":   {Name: "arr", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 8},
	}
	lookup := func(m string, keyOff int32) []asm.Instruction {
		return []asm.Instruction{
			asm.LoadMapPtr(asm.R1, 0).WithReference(m),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, keyOff),
			asm.FnMapLookupElem.Call(),
		}
	}
	insns := asm.Instructions{
		asm.StoreImm(asm.R10, -8, 32, asm.Word),
		asm.StoreImm(asm.R10, -4, 0x0100000a, asm.Word), // 10.0.0.1
	}
	insns[0] = insns[0].WithSymbol("prog")
	insns = append(insns, lookup("lpm", -8)...)
	insns = append(insns,
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.StoreImm(asm.R10, -12, 5, asm.Word),
	)
	insns = append(insns, lookup("big", -12)...)
	insns = append(insns, lookup("small", -12)...)
	insns = append(insns, lookup("arr", -12)...)
	insns = append(insns,
		// Jumps inside a function carry raw offsets, as in an ELF.
		asm.Instruction{OpCode: asm.JEq.Op(asm.ImmSource), Dst: asm.R0, Offset: 4}, // to out
		asm.LoadMapPtr(asm.R1, 0).WithReference("big"),
		asm.Mov.Reg(asm.R2, asm.R0),
		asm.FnMapLookupElem.Call(),
		asm.Mov.Imm(asm.R0, 1),                                                     // out: XDP_DROP
		asm.Instruction{OpCode: asm.JEq.Op(asm.ImmSource), Dst: asm.R7, Offset: 1}, // to ret
		asm.Mov.Imm(asm.R0, 2),                                                     // XDP_PASS
		asm.Return(),                                                               // ret
	)
	return &ebpf.CollectionSpec{
		Maps: maps,
		Programs: map[string]*ebpf.ProgramSpec{
			"prog": {Name: "prog", Type: ebpf.XDP, License: "GPL", Instructions: insns},
		},
	}
}

func instrumentedMaps(v *Variant) []string {
	var out []string
	for _, s := range v.Sites {
		out = append(out, s.Map)
	}
	return out
}

func TestSiteSelection(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want []string
	}{
		{"default", Options{}, []string{"lpm", "big", "big"}},
		{"maps filter", Options{Maps: []string{"big"}}, []string{"big", "big"}},
		{"any size", Options{MaxInline: -1}, []string{"lpm", "big", "small", "big"}},
		{"few entries", Options{Entries: map[string]int{"big": 64, "lpm": 1}}, []string{"lpm"}},
		{"entries above limit", Options{Entries: map[string]int{"small": 65}}, []string{"lpm", "big", "small", "big"}},
		{"sites filter", Options{Sites: []int{0}}, []string{"lpm"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Instrument(testSpec(), "prog", tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := instrumentedMaps(v); !slices.Equal(got, tc.want) {
				t.Errorf("instrumented %v, want %v (skipped %+v)", got, tc.want, v.Skipped)
			}
			for _, s := range v.Sites {
				if v.HeatMaps[s.Map] != s.HeatMap || v.Spec.Maps[s.HeatMap] == nil {
					t.Errorf("site %+v: heat map not recorded", s)
				}
				if hs := v.Spec.Maps[s.HeatMap]; hs.Type != ebpf.PerCPUHash || hs.KeySize != s.KeySize || hs.ValueSize != 8 || len(hs.Name) > 15 {
					t.Errorf("heat map spec %+v", hs)
				}
			}
		})
	}
}

func TestSkipReasons(t *testing.T) {
	v, err := Instrument(testSpec(), "prog", Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"small": "16 entries: small enough to inline whole",
		"arr":   "Array maps are not profiled",
	}
	if len(v.Skipped) != len(want) {
		t.Errorf("skipped %+v", v.Skipped)
	}
	for _, s := range v.Sites {
		switch {
		case s.KeyLocation == "stack" && (s.KeySpill != 0 || s.KeyOff >= 0):
			t.Errorf("stack key site %+v", s)
		case s.KeyLocation == "map_value" && (s.KeySpill >= 0 || s.KeySpill%8 != 0):
			t.Errorf("map value key site %+v needs an aligned scratch slot", s)
		case s.KeyLocation != "stack" && s.KeyLocation != "map_value":
			t.Errorf("site %+v", s)
		}
	}
	for _, s := range v.Skipped {
		if want[s.Map] != s.Reason {
			t.Errorf("site %d (%s) skipped for %q, want %q", s.Site, s.Map, s.Reason, want[s.Map])
		}
	}
}

// The original code survives unchanged: its instructions appear in order
// in the variant, which only inserts code (jump offsets aside).
func TestOriginalIsSubsequence(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec func() (*ebpf.CollectionSpec, error)
		prog string
	}{
		{"hand-written", func() (*ebpf.CollectionSpec, error) { return testSpec(), nil }, "prog"},
		{"router", router.Spec, router.Program},
	} {
		for _, o := range []Options{{Rate: 1}, {Rate: 0.05}, {Rate: 0.05, Sampler: SamplerPrandom}} {
			t.Run(fmt.Sprintf("%s/%g/%s", tc.name, o.Rate, o.Sampler), func(t *testing.T) {
				spec, err := tc.spec()
				if err != nil {
					t.Fatal(err)
				}
				v, err := Instrument(spec, tc.prog, o)
				if err != nil {
					t.Fatal(err)
				}
				orig, got := spec.Programs[tc.prog].Instructions, v.Spec.Programs[tc.prog].Instructions
				if len(got) <= len(orig) {
					t.Fatalf("variant has %d instructions, original %d", len(got), len(orig))
				}
				j := 0
				for _, ins := range got {
					if j < len(orig) && sameInsn(ins, orig[j]) {
						j++
					}
				}
				if j != len(orig) {
					t.Errorf("original instruction %d (%v) not found in order in the variant", j, orig[j])
				}
				if !slices.Equal(v.Original, orig) {
					t.Error("Variant.Original differs from the input program")
				}
				if len(spec.Maps) == len(v.Spec.Maps) {
					t.Error("the input spec's maps were modified or nothing was added")
				}
			})
		}
	}
}

func sameInsn(a, b asm.Instruction) bool {
	if a.OpCode.JumpOp() != asm.InvalidJumpOp && a.OpCode.JumpOp() != asm.Call && a.OpCode.JumpOp() != asm.Exit {
		return a.OpCode == b.OpCode && a.Dst == b.Dst && a.Src == b.Src
	}
	return a.OpCode == b.OpCode && a.Dst == b.Dst && a.Src == b.Src && a.Constant == b.Constant &&
		a.Offset == b.Offset && a.Reference() == b.Reference()
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec *ebpf.CollectionSpec
		prog string
		opts Options
		want string
	}{
		{"rate above 1", testSpec(), "prog", Options{Rate: 1.5}, "not in (0, 1]"},
		{"negative rate", testSpec(), "prog", Options{Rate: -0.1}, "not in (0, 1]"},
		{"rate below countdown range", testSpec(), "prog", Options{Rate: 1e-10}, "below the countdown sampler"},
		{"unknown program", testSpec(), "nope", Options{}, `program "nope"`},
		{"no sites", testSpec(), "prog", Options{Maps: []string{"arr"}}, ErrNoSites.Error()},
		{"bad sampler", testSpec(), "prog", Options{Sampler: 7}, "unknown sampler"},
		{"bad recorder", testSpec(), "prog", Options{Recorder: 3}, "unknown recorder"},
		{"nil spec", nil, "prog", Options{}, "nil collection spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Instrument(tc.spec, tc.prog, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	_, err := Instrument(testSpec(), "prog", Options{Maps: []string{"arr"}})
	if !errors.Is(err, ErrNoSites) {
		t.Errorf("%v is not ErrNoSites", err)
	}
}

func TestNames(t *testing.T) {
	spec := testSpec()
	spec.Maps["a_very_long_map_name"] = &ebpf.MapSpec{Name: "a_very_long_map", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 8, Flags: bpfFNoPrealloc}
	spec.Maps["hm_lpm"] = &ebpf.MapSpec{Name: "hm_lpm", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	for _, tc := range []struct{ prefix, base, want string }{
		{"hm_", "lpm", "hm_lpm1"},
		{"hm_", "a_very_long_map_name", "hm_a_very_long_"},
		{"hm_", "with-dash", "hm_with_dash"},
		{"hm_ctl", "", "hm_ctl"},
	} {
		if got := uniqueName(spec, tc.prefix, tc.base); got != tc.want {
			t.Errorf("uniqueName(%q, %q) = %q, want %q", tc.prefix, tc.base, got, tc.want)
		}
	}
}

func TestControlSlots(t *testing.T) {
	for _, tc := range []struct{ cpus, want int }{{0, 1}, {1, 1}, {2, 2}, {3, 4}, {64, 64}, {65, 128}, {100000, 4096}} {
		if got := controlSlots(tc.cpus); got != tc.want {
			t.Errorf("controlSlots(%d) = %d, want %d", tc.cpus, got, tc.want)
		}
	}
}

func TestRingEntries(t *testing.T) {
	for _, tc := range []struct{ want, slots, keySize, out uint32 }{
		{DefaultRingEntries, 2, 8, DefaultRingEntries},
		{1000, 2, 8, 512},           // rounded down to a power of two
		{0, 2, 8, 8},                // at least 8 entries
		{1 << 20, 2, 8, 1 << 17},    // 2 x (64 + 2^17 x 8) bytes fit 4 MiB
		{1 << 14, 4096, 16, 1 << 5}, // many CPUs share the 4 MiB
	} {
		got := ringEntries(tc.want, tc.slots, tc.keySize)
		if got != tc.out || uint64(tc.slots)*uint64(ringStride(tc.keySize, got)) > maxRingValue {
			t.Errorf("ringEntries(%d, %d, %d) = %d, want %d", tc.want, tc.slots, tc.keySize, got, tc.out)
		}
	}
	if ringStride(5, 8)%lineSize != 0 {
		t.Error("ring stride is not a multiple of a cache line")
	}
}

func TestSamplerNames(t *testing.T) {
	for _, s := range []Sampler{SamplerCountdown, SamplerPrandom} {
		got, err := ParseSampler(s.String())
		if err != nil || got != s {
			t.Errorf("ParseSampler(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseSampler("often"); err == nil {
		t.Error("unknown sampler accepted")
	}
	for _, r := range []Recorder{RecorderHash, RecorderRing} {
		got, err := ParseRecorder(r.String())
		if err != nil || got != r {
			t.Errorf("ParseRecorder(%q) = %v, %v", r, got, err)
		}
	}
	if _, err := ParseRecorder("tape"); err == nil {
		t.Error("unknown recorder accepted")
	}
}

// Instrument the router's route lookup at the seed's 5%: the LPM trie is
// profiled with its whole 8-byte key (prefix length and address).
func ExampleInstrument() {
	spec, err := router.Spec()
	if err != nil {
		panic(err)
	}
	v, err := Instrument(spec, router.Program, Options{Rate: 0.05})
	if err != nil {
		panic(err)
	}
	for _, s := range v.Sites {
		fmt.Printf("%s: %d-byte key at fp%d counted in %s\n", s.Map, s.KeySize, s.KeyOff, s.HeatMap)
	}
	fmt.Println("rate", v.Rate, "sampler", v.Sampler, "added", v.Added())
	// Output:
	// routes: 8-byte key at fp-16 counted in hm_routes
	// rate 0.05 sampler countdown added [hm_ctl hm_routes]
}
