package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/morpheus-go/morpheus/traffic"
)

// runCLI runs the root command with args and returns its output.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestTraceGen writes traces of every NF and locality and checks them: the
// file is a pcap gopacket decodes, the fitted skew (from `trace stats`)
// is near the locality's, and the same seed gives the same bytes.
func TestTraceGen(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		nf, locality string
		extra        []string
		skew         float64
	}{
		{"router", "high", nil, 1.1},
		{"lb", "low", nil, 0.6},
		{"firewall", "none", nil, 0},
		{"ddos", "high", []string{"--skew", "0.9"}, 0.9},
		{"l2switch", "low", []string{"--size", "128", "--malformed", "0.02"}, 0.6},
	} {
		t.Run(tc.nf+"-"+tc.locality, func(t *testing.T) {
			path := filepath.Join(dir, tc.nf+tc.locality+".pcap")
			// No misses: hit and miss flows have their own Zipf ranks,
			// which would blur the fitted curve.
			gen := func(out string) []string {
				return append([]string{"trace", "gen", "--nf", tc.nf, "--locality", tc.locality, "--packets", "100000",
					"--miss", "0", "--seed", "4", "-o", out}, tc.extra...)
			}
			if _, err := runCLI(t, gen(path)...); err != nil {
				t.Fatal(err)
			}
			out, err := runCLI(t, "trace", "stats", "--json", "--top", "3", path)
			if err != nil {
				t.Fatal(err)
			}
			var st traffic.Stats
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if st.Packets != 100000 || st.Skew == nil || len(st.Top) != 3 {
				t.Fatalf("stats %+v", st)
			}
			t.Logf("fitted skew %.3f (want %.2f), %d flows", *st.Skew, tc.skew, st.Flows)
			if math.Abs(*st.Skew-tc.skew) > 0.15 {
				t.Errorf("fitted skew %.3f, want %.2f ± 0.15", *st.Skew, tc.skew)
			}

			// gopacket reads every frame and decodes Ethernet and IPv4.
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r, err := pcapgo.NewReader(f)
			if err != nil {
				t.Fatal(err)
			}
			n, ipv4 := 0, 0
			for {
				data, _, err := r.ReadPacketData()
				if err != nil {
					break
				}
				n++
				p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
				if p.Layer(layers.LayerTypeIPv4) != nil {
					ipv4++
				}
			}
			if n != 100000 || ipv4 < n*9/10 {
				t.Errorf("gopacket read %d frames, %d with IPv4", n, ipv4)
			}

			// Same flags and seed: same bytes.
			again := filepath.Join(dir, "again.pcap")
			if _, err := runCLI(t, gen(again)...); err != nil {
				t.Fatal(err)
			}
			a, _ := os.ReadFile(path)
			b, _ := os.ReadFile(again)
			if !bytes.Equal(a, b) {
				t.Error("same seed gave different traces")
			}
		})
	}
}

func TestTraceErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"nope": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"no nf":         {"trace", "gen", "-o", filepath.Join(dir, "x.pcap")},
		"no output":     {"trace", "gen", "--nf", "router"},
		"unknown nf":    {"trace", "gen", "--nf", "nat", "-o", filepath.Join(dir, "x.pcap")},
		"bad locality":  {"trace", "gen", "--nf", "router", "--locality", "medium", "-o", filepath.Join(dir, "x.pcap")},
		"bad config":    {"trace", "gen", "--nf", "router", "--config", bad, "-o", filepath.Join(dir, "x.pcap")},
		"bad share":     {"trace", "gen", "--nf", "router", "--miss", "1.5", "-o", filepath.Join(dir, "x.pcap")},
		"missing pcap":  {"trace", "stats", filepath.Join(dir, "none.pcap")},
		"not a pcap":    {"trace", "stats", bad},
		"stats no file": {"trace", "stats"},
	} {
		t.Run(name, func(t *testing.T) {
			if out, err := runCLI(t, args...); err == nil {
				t.Errorf("succeeded: %s", out)
			}
		})
	}
}

func TestTraceGenConfig(t *testing.T) {
	dir := t.TempDir()
	cfg, err := traffic.LBConfig(2, 5, 9)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "lb.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "trace", "gen", "--nf", "lb", "--config", path, "--packets", "2000", "--flows", "20", "--json", "-o", filepath.Join(dir, "lb.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	var sum traceSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatal(err)
	}
	// 20 hit and 20 miss flows at most.
	if sum.NF != "lb" || sum.Stats.Packets != 2000 || sum.Stats.Flows > 40 || sum.Stats.Flows < 20 {
		t.Errorf("summary %+v %+v", sum, sum.Stats)
	}
}
