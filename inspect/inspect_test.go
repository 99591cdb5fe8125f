package inspect

import (
	"encoding/json"
	"errors"
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
