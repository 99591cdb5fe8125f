package analysis

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/program"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

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
	for n, ps := range coll.Programs {
		p, err := program.Lift(ps)
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

// TestObjects analyses every program of every object and checks facts
// that must hold for any program.
func TestObjects(t *testing.T) {
	files := objectFiles(t)
	if len(files) == 0 {
		t.Skip("no objects")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			for _, opts := range []Options{{}, {ConstRodata: true}} {
				_, res := analyzeObject(t, f, opts)
				for n, r := range res {
					checkInvariants(t, n, r)
				}
			}
		})
	}
}

func checkInvariants(t *testing.T, prog string, r *Result) {
	t.Helper()
	for i, s := range r.Sites {
		if s.ID != i {
			t.Errorf("%s: site %d has ID %d", prog, i, s.ID)
		}
		if s.Inline.OK && (!s.HotCache.OK || s.Key == nil || s.Key.Location != "stack" || len(s.Escapes) > 0 ||
			len(s.Writes) > 0 || !r.Maps[s.Map].ReadOnly) {
			t.Errorf("%s: site %d inline-eligible without its preconditions: %+v", prog, i, s)
		}
		if s.Write && r.Maps[s.Map] != nil && r.Maps[s.Map].ReadOnly {
			t.Errorf("%s: map %s read-only with write site %d", prog, s.Map, i)
		}
		for _, o := range s.Origins {
			if r.Sites[o].Kind != SiteLookup && r.Sites[o].Kind != SiteStorage {
				t.Errorf("%s: site %d origin %d is a %s", prog, i, o, r.Sites[o].Kind)
			}
		}
	}
	for name, mi := range r.Maps {
		if mi.ReadOnly && (len(mi.WriteSites) > 0 || mi.Untracked || len(mi.Reasons) > 0) {
			t.Errorf("%s: map %s read-only with reasons %v", prog, name, mi.Reasons)
		}
	}
	if _, err := json.Marshal(struct {
		Sites []*Site
		Maps  map[string]*MapInfo
	}{r.Sites, r.Maps}); err != nil {
		t.Errorf("%s: JSON: %v", prog, err)
	}
}

// TestNFFacts checks facts known from the NF sources.
func TestNFFacts(t *testing.T) {
	tests := []struct {
		obj, prog string
		ro, rw    []string
		check     func(t *testing.T, r *Result)
	}{
		{obj: "../nf/router/bpf_bpfel.o", prog: "xdp_router",
			ro: []string{"routes", "nexthops", "ifconfig"}, rw: []string{"counters"},
			check: func(t *testing.T, r *Result) {
				s := onlyLookup(t, r, "routes")
				if s.Key.Location != "stack" || !s.Key.OffKnown || s.Key.Size != 8 {
					t.Errorf("routes key = %+v", s.Key)
				}
				// prefixlen = 32, then the destination address from the packet.
				if b := s.Key.Bytes; b[0].Kind != "const" || b[0].Value != 32 || b[4].Kind != "packet" {
					t.Errorf("routes key bytes = %s", s.Key)
				}
				if !s.Inline.OK || !s.HotCache.OK {
					t.Errorf("routes lookup not inline/hotcache eligible: %v %v", s.Inline.Reasons, s.HotCache.Reasons)
				}
				if len(s.Reads) == 0 {
					t.Errorf("routes lookup without reads")
				}
			}},
		{obj: "../nf/l2switch/bpf_bpfel.o", prog: "xdp_l2switch", ro: []string{"ports", "vlans"}, rw: []string{"fdb", "stats"}},
		{obj: "../nf/lb/lb_bpfel.o", prog: "xdp_lb", ro: []string{"vips", "backends", "ring"}, rw: []string{"conns", "stats"}},
		{obj: "../nf/firewall/firewall_bpfel.o", prog: "xdp_firewall", ro: []string{"features"}, rw: []string{"counters"}},
		{obj: "../nf/firewall/firewall_bpfel.o", prog: "fw_conntrack", ro: []string{"features"}, rw: []string{"ct"}},
		{obj: "../nf/ddos/ddos_bpfel.o", prog: "xdp_ddos", ro: []string{"blocklist", "blocklist_lpm"}, rw: []string{"rate", "stats"}},
	}
	for _, tt := range tests {
		t.Run(tt.prog, func(t *testing.T) {
			if _, err := os.Stat(tt.obj); err != nil {
				t.Skipf("%s not built", tt.obj)
			}
			_, res := analyzeObject(t, tt.obj, Options{})
			r := res[tt.prog]
			if r == nil {
				t.Fatalf("no program %s", tt.prog)
			}
			for _, m := range tt.ro {
				if mi := r.Maps[m]; mi == nil || !mi.ReadOnly {
					t.Errorf("map %s should be read-only: %+v", m, mi)
				}
			}
			for _, m := range tt.rw {
				if mi := r.Maps[m]; mi == nil || mi.ReadOnly || len(mi.WriteSites) == 0 {
					t.Errorf("map %s should be written by the data plane: %+v", m, mi)
				}
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

func onlyLookup(t *testing.T, r *Result, m string) *Site {
	t.Helper()
	var found *Site
	for _, s := range r.Sites {
		if s.Kind == SiteLookup && s.Map == m {
			if found != nil {
				t.Fatalf("two lookups of %s", m)
			}
			found = s
		}
	}
	if found == nil {
		t.Fatalf("no lookup of %s", m)
	}
	return found
}

// TestGolden compares the router's site and map tables with a golden file.
// Regenerate with: go test ./analysis -run TestGolden -update
func TestGolden(t *testing.T) {
	const obj = "../nf/router/bpf_bpfel.o"
	if _, err := os.Stat(obj); err != nil {
		t.Skipf("%s not built", obj)
	}
	_, res := analyzeObject(t, obj, Options{})
	var sb strings.Builder
	names := make([]string, 0, len(res))
	for n := range res {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		sb.WriteString("program " + n + "\n" + res[n].Summary() + "\n")
	}
	golden := filepath.Join("testdata", "router.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if sb.String() != string(want) {
		t.Errorf("router analysis differs from %s (if the object was rebuilt on purpose, run with -update):\n%s",
			golden, sb.String())
	}
}
