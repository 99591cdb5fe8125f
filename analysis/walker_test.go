package analysis

import (
	"path/filepath"
	"testing"
)

// TestWalkerMatchesStateBefore checks on every object that a Walker hands
// out exactly the states StateBefore computes, including the index past a
// terminator, and that it refuses to go backwards.
func TestWalkerMatchesStateBefore(t *testing.T) {
	files := objectFiles(t)
	if len(files) == 0 {
		t.Skip("no objects")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, res := analyzeObject(t, f, Options{ConstRodata: true})
			for n, r := range res {
				for _, fs := range r.a.funcs {
					for _, b := range fs.f.Blocks {
						w := r.Walk(b)
						if (w == nil) != !r.Reachable(b) {
							t.Fatalf("%s %s: walker %v, reachable %v", n, b.Label(), w != nil, r.Reachable(b))
						}
						if w == nil {
							continue
						}
						for i := 0; i <= len(b.Insns); i++ {
							got, want := w.At(i), r.StateBefore(b, i)
							if !got.equal(want) {
								t.Fatalf("%s %s: state before %d differs:\nwalker %v\nreplay %v", n, b.Label(), i, got, want)
							}
						}
						if len(b.Insns) > 0 && w.At(0) != nil {
							t.Fatalf("%s %s: walker went backwards", n, b.Label())
						}
					}
				}
			}
		})
	}
}
