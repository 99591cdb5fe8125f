package inspect

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleObjects(t *testing.T) []string {
	t.Helper()
	objs, err := filepath.Glob("../nf/*/*_bpfel.o")
	if err != nil || len(objs) == 0 {
		t.Fatalf("no sample NF objects found (%v)", err)
	}
	return objs
}

func TestDescribeSampleObjects(t *testing.T) {
	for _, obj := range sampleObjects(t) {
		t.Run(filepath.Base(obj), func(t *testing.T) {
			spec, err := LoadSpec(obj)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Describe(obj, spec, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Programs) != len(spec.Programs) || len(r.Maps) != len(spec.Maps) {
				t.Fatalf("report has %d programs and %d maps, object %d and %d",
					len(r.Programs), len(r.Maps), len(spec.Programs), len(spec.Maps))
			}
			for _, p := range r.Programs {
				if p.LiftError != "" {
					t.Errorf("program %s does not lift: %s", p.Name, p.LiftError)
				}
				if p.Blocks == 0 || len(p.Functions) == 0 || p.Instructions == 0 {
					t.Errorf("program %s has an empty shape: %+v", p.Name, p)
				}
				if p.Functions[0].Name != p.Name {
					t.Errorf("program %s: first function is %s", p.Name, p.Functions[0].Name)
				}
			}
			// The JSON form round-trips and keeps its field names.
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			for _, field := range []string{`"programs"`, `"maps"`, `"instructions"`, `"key_size"`, `"max_entries"`} {
				if !strings.Contains(string(b), field) {
					t.Errorf("JSON lacks %s", field)
				}
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	truncated, err := os.ReadFile(sampleObjects(t)[0])
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, want string
	}{
		{"missing file", filepath.Join(dir, "nope.o"), "cannot read object"},
		{"not ELF", write("text.o", []byte("hello world, not an object")), "not an ELF file"},
		{"empty", write("empty.o", nil), "not an ELF file"},
		{"truncated ELF", write("trunc.o", truncated[:len(truncated)/3]), "not a loadable BPF object"},
		{"directory", dir, "not"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadSpec(c.path)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestMissingProgram(t *testing.T) {
	obj := sampleObjects(t)[0]
	spec, err := LoadSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Describe(obj, spec, Options{Program: "no_such_prog"})
	if !errors.Is(err, ErrNoProgram) {
		t.Fatalf("want ErrNoProgram, got %v", err)
	}
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGoldenRouter pins the text and JSON reports of the router object,
// which show the analysis: review the diff, then go test -update.
func TestGoldenRouter(t *testing.T) {
	const obj = "../nf/router/bpf_bpfel.o"
	spec, err := LoadSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Describe("nf/router/bpf_bpfel.o", spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ file, got string }{
		{"router.golden", text.String()},
		{"router.json.golden", string(js) + "\n"},
	} {
		path := filepath.Join("testdata", c.file)
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(c.got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test -update creates it)", err)
		}
		if c.got != string(want) {
			t.Errorf("%s differs (review, then go test -update):\n%s", path, c.got)
		}
	}
}

// TestAnalysisEveryObject checks that every sample NF and corpus program
// is analysed, or says why not, and that the router's facts are there.
func TestAnalysisEveryObject(t *testing.T) {
	corpus, err := filepath.Glob("../testdata/corpus/*.o")
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range append(sampleObjects(t), corpus...) {
		spec, err := LoadSpec(obj)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Describe(obj, spec, Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Programs {
			if p.Analysis == nil && p.AnalysisError == "" && p.LiftError == "" {
				t.Errorf("%s %s: no analysis and no reason", obj, p.Name)
			}
			if p.Analysis == nil {
				continue
			}
			for _, s := range p.Analysis.Sites {
				for _, k := range []string{EligInline, EligHotCache, EligConstKey} {
					e, ok := s.Eligible[k]
					if !ok || (!e.OK && len(e.Reasons) == 0) {
						t.Errorf("%s %s site %d: eligibility %s without reason", obj, p.Name, s.ID, k)
					}
				}
			}
		}
	}
	spec, err := LoadSpec("../nf/router/bpf_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Describe("router", spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := r.Programs[0].Analysis
	access := map[string]string{}
	for _, m := range a.Maps {
		access[m.Name] = m.Access
	}
	want := map[string]string{"routes": "RO", "nexthops": "RO", "ifconfig": "RO", "counters": "RW"}
	for m, acc := range want {
		if access[m] != acc {
			t.Errorf("map %s: access %q, want %q", m, access[m], acc)
		}
	}
	found := false
	for _, s := range a.Sites {
		if s.Map == "routes" && s.Kind == "lookup" {
			found = true
			if s.KeyBytes == nil || s.KeyBytes.Const != 4 || s.KeyBytes.Packet != 4 {
				t.Errorf("routes lookup key bytes %+v, want 4 constant (prefix length) and 4 from the packet", s.KeyBytes)
			}
			if !s.Eligible[EligInline].OK || !s.Eligible[EligHotCache].OK {
				t.Errorf("routes lookup not eligible: %+v", s.Eligible)
			}
		}
	}
	if !found {
		t.Error("no routes lookup site")
	}
}
