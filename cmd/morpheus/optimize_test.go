package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/optimize"
	"github.com/morpheus-go/morpheus/traffic"
	"github.com/morpheus-go/morpheus/verify"
)

var optUpdate = flag.Bool("update", false, "rewrite the golden files in testdata")

const routerObj = "../../nf/router/bpf_bpfel.o"

// execCLI runs the root command in-process with args.
func execCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// optDurations matches what time.Duration.String prints.
var optDurations = regexp.MustCompile(`\b(\d+h)?(\d+m)?\d+(\.\d+)?(ns|µs|ms|s)\b`)

// normalize replaces optDurations, the only part of the output that changes
// from run to run.
func optNormalize(s string) string { return optDurations.ReplaceAllString(s, "<t>") }

func optGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *optUpdate {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it after review):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func optWriteJSON(t *testing.T, dir, name string, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func optWriteFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// routerFiles writes the router's example configuration as a --state file
// and a --heatmap naming hosts inside its routes.
func routerFiles(t *testing.T) (state, heat string) {
	t.Helper()
	dir := t.TempDir()
	cfg := router.ExampleConfig()
	s, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	h := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for i, r := range cfg.Routes {
		a := netip.MustParsePrefix(r.Prefix).Addr().As4()
		a[3] |= 7
		key := append(binary.LittleEndian.AppendUint32(nil, 32), a[:]...)
		h.Maps[router.MapRoutes] = append(h.Maps[router.MapRoutes], heatmap.Key{Key: key, Count: uint64(1000 - i)})
	}
	return optWriteJSON(t, dir, "state.json", s), optWriteJSON(t, dir, "heat.json", h)
}

// TestOptimizeRouter runs `morpheus optimize` on the router with its
// example state and a heatmap, as text (golden, timings normalized), with
// --diff (golden) and as JSON.
func TestOptimizeRouter(t *testing.T) {
	kerneltest.Require(t)
	state, heat := routerFiles(t)
	base := []string{"optimize", routerObj, "--state", state, "--heatmap", heat, "--ingress", "1", "--generate", "300"}
	cases := []struct {
		name   string
		args   []string
		golden string
		check  func(t *testing.T, out string)
	}{
		{name: "text", args: base, golden: "optimize_router.golden"},
		{name: "diff", args: append(append([]string{}, base...), "--diff", "--strict"), golden: "optimize_router_diff.golden"},
		{name: "round trip", args: append(append([]string{}, base...), "--passes", "none"), golden: "optimize_router_none.golden"},
		{name: "json", args: append(append([]string{}, base...), "--json"), check: func(t *testing.T, out string) {
			var doc struct {
				Object   string            `json:"object"`
				Programs []json.RawMessage `json:"programs"`
			}
			if err := json.Unmarshal([]byte(out), &doc); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
			if doc.Object != routerObj || len(doc.Programs) != 1 {
				t.Fatalf("object %q, %d programs", doc.Object, len(doc.Programs))
			}
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(doc.Programs[0], &fields); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"program", "instructions_before", "instructions_after", "passes", "remarks", "verifier",
				"differential", "accepted", "optimize_time_ns", "verify_time_ns", "differential_time_ns", "optimize_with_verifier_ns"} {
				if _, ok := fields[f]; !ok {
					t.Errorf("program JSON lacks %q", f)
				}
			}
			var p struct {
				Accepted     bool           `json:"accepted"`
				Differential *verify.Report `json:"differential"`
			}
			if err := json.Unmarshal(doc.Programs[0], &p); err != nil {
				t.Fatal(err)
			}
			if !p.Accepted || p.Differential == nil || p.Differential.Packets == 0 || p.Differential.MismatchCount != 0 {
				t.Errorf("want an accepted candidate with a clean differential test: %s", doc.Programs[0])
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := execCLI(t, c.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if c.golden != "" {
				optGolden(t, c.golden, optNormalize(out))
			}
			if c.check != nil {
				c.check(t, out)
			}
		})
	}
}

// TestOptimizeErrors checks that bad input is refused with a message that
// names the problem: the file, the map and the entry.
func TestOptimizeErrors(t *testing.T) {
	dir := t.TempDir()
	okKey := "2000000001020300"
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no object", []string{"optimize"}, "accepts 1 arg"},
		{"missing object", []string{"optimize", filepath.Join(dir, "nope.o")}, "cannot read object"},
		{"not ELF", []string{"optimize", optWriteFile(t, dir, "x.o", "not an object")}, "not an ELF file"},
		{"unknown program", []string{"optimize", routerObj, "--program", "nope"}, `no program "nope" in the object (it has: xdp_router)`},
		{"unknown pass", []string{"optimize", routerObj, "--passes", "mapinline,nope"}, `--passes: unknown pass "nope"`},
		{"state not JSON", []string{"optimize", routerObj, "--state", optWriteFile(t, dir, "s1.json", "{")}, "--state: "},
		{"state unknown field", []string{"optimize", routerObj, "--state", optWriteFile(t, dir, "s2.json", `{"mapz": {}}`)}, `unknown field "mapz"`},
		{"state unknown map", []string{"optimize", routerObj, "--state", optWriteFile(t, dir, "s3.json", `{"maps": {"rotues": {"entries": []}}}`)}, `map "rotues" does not exist in the object`},
		{"state short key", []string{"optimize", routerObj, "--state", optWriteFile(t, dir, "s4.json",
			`{"maps": {"routes": {"entries": [{"key": "`+okKey+`", "value": "0000000000000000"}, {"key": "20", "value": "0000000000000000"}]}}}`)},
			`map "routes" entry 1: key has 1 bytes, map key size is 8`},
		{"state bad hex", []string{"optimize", routerObj, "--state", optWriteFile(t, dir, "s5.json",
			`{"maps": {"routes": {"entries": [{"key": "zz", "value": "00"}]}}}`)}, "bad hex"},
		{"heatmap not JSON", []string{"optimize", routerObj, "--heatmap", optWriteFile(t, dir, "h1.json", "[")}, "--heatmap: "},
		{"heatmap unknown map", []string{"optimize", routerObj, "--heatmap", optWriteFile(t, dir, "h2.json", `{"maps": {"nope": []}}`)}, `heatmap: map "nope" does not exist in the object`},
		{"heatmap key size", []string{"optimize", routerObj, "--heatmap", optWriteFile(t, dir, "h3.json",
			`{"maps": {"routes": [{"key": "`+okKey+`", "count": 3}, {"key": "0102", "count": 1}]}}`)}, `heatmap: map "routes" key 1: 2 bytes, map key size is 8`},
		{"heatmap empty key", []string{"optimize", routerObj, "--heatmap", optWriteFile(t, dir, "h4.json", `{"maps": {"routes": [{"key": "", "count": 1}]}}`)}, `map "routes" key 0: empty key`},
		{"packets not pcap", []string{"optimize", routerObj, "--packets", optWriteFile(t, dir, "p.pcap", "nope")}, "pcap: not a pcap stream"},
		{"negative limit", []string{"optimize", routerObj, "--top-k", "-1"}, "must not be negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := execCLI(t, c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v (output %q), want it to contain %q", err, out, c.want)
			}
		})
	}
}

// TestOptimizeShortPacket refuses a trace packet the kernel cannot run.
func TestOptimizeShortPacket(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "short.pcap")
	if err := traffic.WritePcapFile(p, [][]byte{make([]byte, 60), make([]byte, 10)}); err != nil {
		t.Fatal(err)
	}
	_, err := execCLI(t, "optimize", routerObj, "--packets", p)
	if err == nil || !strings.Contains(err.Error(), "packet 1 has 10 bytes") {
		t.Fatalf("got %v", err)
	}
}

func TestOptimizeHelpListsPasses(t *testing.T) {
	out, err := execCLI(t, "optimize", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mapinline", "hotcache", "dce", "--state", "--heatmap", "--strict", "--diff", "\"count\""} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
}

// TestOptimizeAnyObject runs the optimizer over every corpus object and
// sample NF without configuration: no object may make it fail, every
// program that is not accepted says why, and the round trip (--passes
// none) of every program that lifts is accepted. A candidate of the full
// pipeline that the verifier or the differential test rejects is the
// safety net working; it is logged, not failed, since which rewrites the
// verifier takes is the passes' business.
func TestOptimizeAnyObject(t *testing.T) {
	kerneltest.Require(t)
	objs, err := filepath.Glob("../../testdata/corpus/*.o")
	if err != nil {
		t.Fatal(err)
	}
	nfs, err := filepath.Glob("../../nf/*/*_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	objs = append(objs, nfs...)
	if len(objs) < 10 {
		t.Fatalf("found only %d objects", len(objs))
	}
	for _, obj := range objs {
		for _, passList := range []string{"", "none"} {
			t.Run(filepath.Base(obj)+"/passes="+passList, func(t *testing.T) {
				out, err := execCLI(t, "optimize", obj, "--generate", "60", "--json", "--passes", passList)
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				var doc optimizeOutput
				if err := json.Unmarshal([]byte(out), &doc); err != nil {
					t.Fatal(err)
				}
				if len(doc.Programs) == 0 {
					t.Fatal("no programs reported")
				}
				for _, p := range doc.Programs {
					if !p.Accepted && p.Reason == "" {
						t.Errorf("%s: not accepted and no reason", p.Program)
					}
					if !candidateFailed(p.ProgramReport) {
						continue
					}
					first, _, _ := strings.Cut(p.Verifier, "\n")
					if passList == "none" {
						t.Errorf("%s: round trip failed: %s (verifier: %s)", p.Program, p.Reason, first)
					} else {
						t.Logf("%s: candidate rejected, original kept: %s (verifier: %s)", p.Program, p.Reason, first)
					}
				}
			})
		}
	}
}

func TestCandidateFailed(t *testing.T) {
	failed := &verify.Report{Complete: true, Runs: 3, MismatchCount: 1}
	passed := &verify.Report{Complete: true, Runs: 3}
	cases := []struct {
		name string
		p    optimize.ProgramReport
		want bool
	}{
		{"accepted", optimize.ProgramReport{Accepted: true, Verifier: "ok", Differential: passed}, false},
		{"left alone", optimize.ProgramReport{Reason: "left alone: unsupported instruction"}, false},
		{"verifier", optimize.ProgramReport{Verifier: "verifier rejected candidate", Reason: "rejected by the kernel verifier"}, true},
		{"differential", optimize.ProgramReport{Verifier: "ok", Differential: failed, Reason: "differential test found mismatches"}, true},
		{"lowering", optimize.ProgramReport{Reason: "lowering failed: jump out of range"}, true},
		{"pass error", optimize.ProgramReport{Reason: "left alone: optimization failed: pass x: boom"}, true},
		{"no packets program", optimize.ProgramReport{Verifier: "ok", Reason: "not accepted: no differential test possible: no XDP"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := candidateFailed(&c.p); got != c.want {
				t.Errorf("candidateFailed = %v, want %v", got, c.want)
			}
		})
	}
}
