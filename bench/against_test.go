//go:build linux

package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/traffic"
)

// Objects the variant tests measure: the l2switch NF's own build (the
// original, loaded from its file) and testdata/l2switch_slow.o, the same
// source with 16 clock reads for each of the original's one.
const (
	l2switchObject = "../nf/l2switch/bpf_bpfel.o"
	l2switchSlow   = "testdata/l2switch_slow.o"
	lbObject       = "../nf/lb/lb_bpfel.o"
)

func variantScenario(t *testing.T) *Scenario {
	t.Helper()
	sc, err := NewScenario(ScenarioOptions{NF: "l2switch", Flows: 200, Trace: traffic.Options{
		Packets: 4096, Locality: traffic.LocalityHigh, MissShare: 0.1, Seed: 1,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// TestCompareVariants measures variants of the l2switch against the
// original in one run: a copy of the original measures about as fast as
// the original, the slow build several times slower. The bounds are wide:
// the ratios of identical programs stray by up to about 40% on a busy
// 2-core machine, the slow build costs about four times the original.
func TestCompareVariants(t *testing.T) {
	kerneltest.Require(t)
	sc := variantScenario(t)
	var variants []*Variant
	for _, path := range []string{l2switchObject, l2switchSlow} {
		v, err := LoadVariant(sc, path)
		if err != nil {
			t.Fatal(err)
		}
		variants = append(variants, v)
	}
	vc, err := CompareVariants(context.Background(), sc, variants, CompareOptions{
		Measure: Options{Rounds: 5, Repeat: 1 << 16, Warmup: 1 << 12},
		Control: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("floor %.1f original %.1f control %.2f", vc.FloorNs, vc.OriginalNs, vc.Control)
	if !vc.Warm || vc.Packets != 4096 || vc.XlatedOriginal == 0 || !(vc.OriginalNs > 0) || !(vc.Control > 0) {
		t.Errorf("comparison %+v", vc)
	}
	for i, tc := range []struct {
		name     string
		min, max float64
	}{
		{"bpf_bpfel", 0.5, 2},
		{"l2switch_slow", 0, 0.5},
	} {
		v := vc.Variants[i]
		t.Logf("%s: %.1f ns/pkt, speedup %.2f, xlated %d", v.Name, v.NsPerPacket, v.Speedup, v.Xlated)
		if v.Name != tc.name || v.Xlated == 0 {
			t.Errorf("variant %d: %+v, want %s", i, v, tc.name)
		}
		if !(v.Speedup >= tc.min && v.Speedup <= tc.max) {
			t.Errorf("%s: speedup %.2f, want %.1f..%.1f", v.Name, v.Speedup, tc.min, tc.max)
		}
	}
}

// TestVariantErrors checks that an unusable object is refused with an
// error that names the problem, before anything is measured.
func TestVariantErrors(t *testing.T) {
	kerneltest.Require(t)
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.o")
	if err := os.WriteFile(corrupt, []byte("\x7fELF not really"), 0o644); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(l2switchObject)
	if err != nil {
		t.Fatal(err)
	}
	reserved := filepath.Join(dir, OriginalName+".o")
	if err := os.WriteFile(reserved, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	sc := variantScenario(t)
	for _, tc := range []struct {
		name  string
		paths []string
		// edit, if set, changes the first variant after loading it.
		edit func(*Variant)
		// want is a part of the error.
		want string
	}{
		{"missing object", []string{filepath.Join(dir, "nonexistent.o")}, nil, "no such file"},
		{"corrupt object", []string{corrupt}, nil, "corrupt.o"},
		{"no entry program", []string{lbObject}, nil, `has no program "xdp_l2switch"`},
		{"reserved name", []string{reserved}, nil, `name "original" is taken`},
		{"same name twice", []string{l2switchObject, l2switchObject}, nil, `name "bpf_bpfel" is taken`},
		{"no variants", nil, nil, "no variants"},
		{"state does not fit", []string{l2switchObject}, func(v *Variant) { v.Spec.Maps["vlans"].ValueSize *= 2 }, "load bpf_bpfel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var variants []*Variant
			var err error
			for _, p := range tc.paths {
				var v *Variant
				if v, err = LoadVariant(sc, p); err != nil {
					break
				}
				variants = append(variants, v)
			}
			if err == nil && tc.edit != nil {
				tc.edit(variants[0])
			}
			if err == nil {
				_, err = CompareVariants(context.Background(), sc, variants, CompareOptions{Measure: Options{Rounds: 1, Repeat: 1 << 10}})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
