package analysis

import (
	"path/filepath"
	"sort"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/program"
)

// objectFiles lists the sample NF objects and the corpus.
func objectFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pat := range []string{"../nf/*/*.o", "../testdata/corpus/*.o"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	sort.Strings(files)
	return files
}

// analyzeObject analyses every program of an object file.
func analyzeObject(t *testing.T, path string, opts Options) (*ebpf.CollectionSpec, map[string]*Result) {
	t.Helper()
	coll, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]*Result{}
	names := make([]string, 0, len(coll.Programs))
	for n := range coll.Programs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p, err := program.Lift(coll.Programs[n])
		if err != nil {
			t.Fatalf("%s/%s: lift: %v", path, n, err)
		}
		res, err := Analyze(coll, p, opts)
		if err != nil {
			t.Fatalf("%s/%s: %v", path, n, err)
		}
		out[n] = res
	}
	return coll, out
}

func TestObjectsSmoke(t *testing.T) {
	for _, f := range objectFiles(t) {
		_, res := analyzeObject(t, f, Options{})
		for n, r := range res {
			t.Logf("%s/%s:\n%s", f, n, r.Summary())
		}
	}
}
