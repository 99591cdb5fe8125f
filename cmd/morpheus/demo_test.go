package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

func TestDemoFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		err  string
	}{
		{"unknown NF", []string{"demo", "--nf", "bridge"}, `unknown network function "bridge"`},
		{"too short", []string{"demo", "--duration", "1s"}, "too short"},
		{"bad locality", []string{"demo", "--locality", "medium"}, "medium"},
		{"arguments", []string{"demo", "extra"}, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := execute(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

// TestDemoInterrupt runs the command and cancels it as Ctrl-C would once
// the optimizer is switched on: it must say so and leave nothing behind.
func TestDemoInterrupt(t *testing.T) {
	kerneltest.Require(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &cancelOnOutput{marker: "== phase 2", cancel: cancel}
	root := newRootCmd()
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs([]string{"demo", "--duration", "30s", "--out", dir})
	err := root.ExecuteContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("got %v, want the interruption", err)
	}
	text := out.String()
	for _, want := range []string{"morpheus demo: router", "routes 2593", "== phase 1", "baseline", "everything the demo created was removed"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	// No plots for an interrupted run.
	if files, _ := filepath.Glob(filepath.Join(dir, "*.png")); len(files) != 0 {
		t.Errorf("interrupted run wrote %v", files)
	}
	if links, _ := os.ReadDir("/sys/class/net"); len(links) > 0 {
		for _, l := range links {
			if strings.HasPrefix(l.Name(), "mdgen") || strings.HasPrefix(l.Name(), "mdnf") {
				t.Errorf("interface %s left in the root namespace", l.Name())
			}
		}
	}
}

// cancelOnOutput cancels once the output contains marker.
type cancelOnOutput struct {
	mu     sync.Mutex
	b      strings.Builder
	marker string
	cancel context.CancelFunc
}

func (w *cancelOnOutput) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.b.Write(p)
	if strings.Contains(w.b.String(), w.marker) {
		w.cancel()
	}
	return n, err
}

func (w *cancelOnOutput) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
