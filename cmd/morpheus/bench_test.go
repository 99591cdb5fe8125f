package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/instrument"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/passes"
)

// TestBenchCommand runs the whole command on the two NFs whose evaluation
// configuration optimizes fastest, with few packets and one short round:
// JSON and text output, a pcap trace. (bench.TestCompareNFs covers every
// NF, the firewall's tail calls included, on smaller configurations.)
func TestBenchCommand(t *testing.T) {
	kerneltest.Require(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		nf       string
		programs int
	}{
		{"ddos", 1},
		{"l2switch", 1},
	} {
		t.Run(tc.nf, func(t *testing.T) {
			out, err := runCLI(t, "bench", "--nf", tc.nf, "--locality", "low", "--packets", "2000", "--flows", "200",
				"--rounds", "1", "--repeat", "4096", "--warmup", "0", "--diff-packets", "100", "--generated", "100", "--json")
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			var c bench.Comparison
			if err := json.Unmarshal([]byte(out), &c); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if c.NF != tc.nf || c.Locality != "low" || c.Packets != 2000 || len(c.Programs) != tc.programs || c.FloorNs <= 0 {
				t.Errorf("comparison %+v", c)
			}
		})
	}
	// A pcap trace replaces the generated one.
	pcap := filepath.Join(dir, "t.pcap")
	if _, err := runCLI(t, "trace", "gen", "--nf", "ddos", "--packets", "1000", "--flows", "100", "-o", pcap); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "bench", "--nf", "ddos", "--trace", pcap, "--rounds", "1", "--repeat", "2048", "--warmup", "0",
		"--diff-packets", "50", "--generated", "50")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, want := range []string{"ddos, given locality: 1000 packets", "floor", "original", "optimized", "speedup"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestBenchAgainst runs `bench --against` with two objects (the
// l2switch's own build and bench's deliberately slow one): the JSON has a
// row per object and the slow one measures slower; the table names both.
func TestBenchAgainst(t *testing.T) {
	kerneltest.Require(t)
	const orig, slow = "../../nf/l2switch/bpf_bpfel.o", "../../bench/testdata/l2switch_slow.o"
	args := []string{"bench", "--nf", "l2switch", "--locality", "high", "--packets", "2000", "--flows", "200",
		"--rounds", "3", "--repeat", "16384", "--warmup", "1024", "--against", orig, "--against", slow}
	for _, tc := range []struct {
		name string
		json bool
		want []string
	}{
		{"json", true, nil},
		{"table", false, []string{"l2switch, high locality: 2000 packets; maps filled from the warmed-up state; the original against 2 objects",
			"floor", "original", "noise", "bpf_bpfel", "l2switch_slow", slow}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := args
			if tc.json {
				a = append(a[:len(a):len(a)], "--json")
			}
			out, err := runCLI(t, a...)
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if !tc.json {
				return
			}
			var vc bench.VariantComparison
			if err := json.Unmarshal([]byte(out), &vc); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if vc.NF != "l2switch" || !vc.Warm || len(vc.Variants) != 2 || vc.Variants[0].Path != orig || !(vc.Control > 0) {
				t.Fatalf("comparison %+v", vc)
			}
			if s := vc.Variants[1].Speedup; !(s < 0.6) {
				t.Errorf("slow variant measured %.2fx the original's speed", s)
			}
		})
	}
}

func TestBenchErrors(t *testing.T) {
	for name, args := range map[string][]string{
		"no nf":        {"bench"},
		"unknown nf":   {"bench", "--nf", "nat"},
		"bad locality": {"bench", "--nf", "router", "--locality", "some"},
		"all + trace":  {"bench", "--all", "--trace", "x.pcap"},
		"no trace":     {"bench", "--nf", "router", "--trace", "/nonexistent.pcap"},
		"live + all":   {"bench", "--all", "--live"},
		"bad heat":     {"bench", "--nf", "ddos", "--heat", "guess", "--packets", "500", "--rounds", "1", "--repeat", "1024"},
		"against all":  {"bench", "--all", "--against", "../../nf/l2switch/bpf_bpfel.o"},
		"against live": {"bench", "--nf", "l2switch", "--live", "--against", "../../nf/l2switch/bpf_bpfel.o"},
		"against none": {"bench", "--nf", "l2switch", "--packets", "500", "--against", "/nonexistent.o"},
		"against lb":   {"bench", "--nf", "l2switch", "--packets", "500", "--against", "../../nf/lb/lb_bpfel.o"},
	} {
		t.Run(name, func(t *testing.T) {
			if out, err := runCLI(t, args...); err == nil {
				t.Errorf("succeeded: %s", out)
			}
		})
	}
}

func TestSpliceMarkdown(t *testing.T) {
	dir := t.TempDir()
	gen := mdBegin + "\nnew tables\n" + mdEnd + "\n"
	for _, tc := range []struct {
		name, before, after string
		fail                bool
	}{
		{"append", "# Benchmarks\n\nintro\n", "# Benchmarks\n\nintro\n\n" + gen, false},
		{"replace keeps the rest", "# B\n\n" + mdBegin + "\nold\n" + mdEnd + "\n\n## Instrumentation overhead\n\nkept\n",
			"# B\n\n" + mdBegin + "\nnew tables\n" + mdEnd + "\n\n## Instrumentation overhead\n\nkept\n", false},
		{"unbalanced", "# B\n" + mdEnd + "\n" + mdBegin + "\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".md")
			if err := os.WriteFile(p, []byte(tc.before), 0o644); err != nil {
				t.Fatal(err)
			}
			err := spliceMarkdown(p, gen)
			if tc.fail {
				if err == nil {
					t.Fatal("spliced a file with unbalanced markers")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(p)
			if string(got) != tc.after {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.after)
			}
		})
	}
}

var testTime = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestRenderMarkdown(t *testing.T) {
	bf := &benchFlags{rounds: 7, repeat: 1 << 20}
	bf.packets, bf.size, bf.flows, bf.miss, bf.seed = defaultPackets, 64, 1000, 0.1, 1
	bf.topK, bf.maxInline, bf.heat, bf.sampleRate, bf.control = passes.DefaultOptions().TopK, passes.DefaultOptions().MaxInline, bench.HeatInstrument, instrument.DefaultRate, true
	results := []*bench.Comparison{
		{NF: "router", Locality: "high", FloorNs: 70, OriginalNs: 200, OptimizedNs: 100, Speedup: 2, EndToEnd: 1.6, Control: 1.02,
			Result: &bench.Result{Rounds: 7, Repeat: 1 << 20},
			Programs: []bench.ProgramOutcome{{Program: "xdp_router", Accepted: true, XlatedOriginal: 770, XlatedOptimized: 799,
				Applied: []string{"hotcache: xdp_router b51 map routes: applied: 8 hot keys cached"},
				Skipped: []string{"hotcache: xdp_router b9 map ifconfig: skipped: array"}}}},
		{NF: "router", Locality: "low", FloorNs: 70, OriginalNs: 200, OptimizedNs: 190, Speedup: 200.0 / 190, EndToEnd: 1.03,
			Result: &bench.Result{Rounds: 7, Repeat: 1 << 20}},
	}
	md := renderMarkdown(results, bf, machine{Kernel: "Linux 6.18", CPUs: 2, CPU: "test", Load: "1 1 1"}, testTime)
	for _, want := range []string{
		mdBegin, mdEnd, "| router | 2.00x (1.94x) | 1.05x (1.77x) | - |", "### router",
		"| high | 70.0 | 200.0 | 100.0 | 2.00x | 1.60x | 1.94x | 1.02x |", "xdp_router 770→799",
		"`go run ./cmd/morpheus bench --all --markdown-file BENCHMARKS.md`", "hotcache ×1",
		"  - left alone: hotcache: xdp_router b9 map ifconfig: skipped: array",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestBenchLive runs `bench --live` on a small DDoS filter: the testbed
// comes up, both programs carry live traffic, and the JSON says so.
func TestBenchLive(t *testing.T) {
	kerneltest.Require(t)
	out, err := runCLI(t, "bench", "--nf", "ddos", "--live", "--rounds", "1", "--period", "200ms", "--packets", "2000",
		"--flows", "100", "--diff-packets", "50", "--generated", "50", "--json")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var lc liveComparison
	if err := json.Unmarshal([]byte(out), &lc); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if lc.NF != "ddos" || !(lc.Original.PPS > 0) || !(lc.Optimized.PPS > 0) || !(lc.Original.NsPerPacket > 0) || lc.Generator.Sent == 0 {
		t.Errorf("live comparison %+v", lc)
	}
}
