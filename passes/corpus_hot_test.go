package passes_test

import (
	"context"
	"maps"
	"math/rand"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/instrument"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/optimize"
	"github.com/morpheus-go/morpheus/passes"
)

// TestHotCorpusWarm runs the whole pipeline with hot keys over every
// corpus object and sample NF, without their configurations: packets
// generated for the object are first replayed through the original, the
// maps it then holds (connections, learned entries, counters) become the
// snapshot, and their keys the heatmap, hottest first. That exercises
// hotcache (hit tails, keys in a caller's frame, tripwires) on code it was
// not written against. A candidate the differential test finds behaving
// differently fails the test: that is a wrong rewrite. A candidate the
// verifier refuses is the safety net working and is only logged.
func TestHotCorpusWarm(t *testing.T) {
	kerneltest.Require(t)
	objs, err := filepath.Glob("../testdata/corpus/*.o")
	if err != nil {
		t.Fatal(err)
	}
	nfs, err := filepath.Glob("../nf/*/*_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	objs = append(objs, nfs...)
	if len(objs) < 10 {
		t.Fatalf("found only %d objects", len(objs))
	}
	cached := 0
	for _, obj := range objs {
		t.Run(filepath.Base(obj), func(t *testing.T) {
			spec, err := ebpf.LoadCollectionSpec(obj)
			if err != nil {
				t.Fatal(err)
			}
			pkts := skewed(optimize.Generate(spec, mapstate.New(), nil, 300, rand.New(rand.NewSource(1))))
			st, heat := warmState(t, spec, pkts)
			rep, err := optimize.Run(context.Background(), spec, st, heat, optimize.Options{
				Passes: passes.DefaultOptions(), Packets: pkts, Generated: 200, Seed: 2,
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, pr := range rep.Programs {
				if d := pr.Differential; d != nil && d.MismatchCount > 0 {
					t.Errorf("%s: the candidate behaves differently:\n%s", pr.Program, d)
				}
				if !pr.Accepted {
					t.Logf("%s: not accepted: %s", pr.Program, pr.Reason)
				}
				for _, r := range pr.Remarks {
					if r.Pass == "hotcache" && !r.Applied {
						t.Logf("%s: %s", pr.Program, r)
					}
					if r.Applied && r.Pass == "hotcache" && strings.Contains(r.Message, "hot keys cached") {
						cached++
						t.Logf("%s: %s", pr.Program, r)
					}
				}
			}
		})
	}
	if cached == 0 {
		t.Error("no lookup was cached anywhere in the corpus: the test exercises nothing")
	}
}

// warmState builds a configuration and a heatmap for an object that
// comes without either. The object's lookups are profiled (every lookup
// recorded) over pkts with empty maps; every other key a hash or LPM
// lookup asked for becomes an entry with deterministic value bytes, so
// that the packets hit and miss. pkts are then replayed through the
// original with that configuration, and what its hash, LRU, LPM and array
// maps hold afterwards (connections, learned entries, counters) is the
// snapshot. The heatmap is the profile's key counts.
func warmState(t *testing.T, spec *ebpf.CollectionSpec, pkts [][]byte) (*mapstate.State, *heatmap.Heatmap) {
	t.Helper()
	heat := profile(t, spec, mapstate.New(), pkts)
	cfg := mapstate.New()
	rnd := rand.New(rand.NewSource(3))
	for name, keys := range heat.Maps {
		ms := spec.Maps[name]
		if ms == nil || (ms.Type != ebpf.Hash && ms.Type != ebpf.LPMTrie) {
			continue
		}
		for i, k := range keys {
			if i%2 == 0 && i/2 < int(ms.MaxEntries) {
				v := make([]byte, ms.ValueSize)
				rnd.Read(v)
				cfg.Put(name, k.Key, v)
			}
		}
	}
	coll, err := cfg.Load(spec.Copy(), ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for _, name := range slices.Sorted(maps.Keys(coll.Programs)) {
		if p := coll.Programs[name]; runnable(p.Type()) {
			replay(p, pkts)
		}
	}
	st := mapstate.New()
	for name, ms := range spec.Maps {
		switch ms.Type {
		case ebpf.Hash, ebpf.LRUHash, ebpf.LPMTrie, ebpf.Array:
		default:
			continue
		}
		if strings.HasPrefix(name, ".") {
			continue // global data: the loader's business
		}
		m, err := mapstate.SnapshotMap(coll.Maps[name])
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Entries) > 0 {
			st.Maps[name] = m
		}
	}
	return st, heat
}

// profile records every lookup of every XDP and TC program of spec over
// pkts, with st loaded, and returns the key counts.
func profile(t *testing.T, spec *ebpf.CollectionSpec, st *mapstate.State, pkts [][]byte) *heatmap.Heatmap {
	t.Helper()
	var hs []*heatmap.Heatmap
	for _, name := range slices.Sorted(maps.Keys(spec.Programs)) {
		if !runnable(spec.Programs[name].Type) {
			continue
		}
		v, err := instrument.Instrument(spec, name, instrument.Options{Rate: 1, MaxInline: -1})
		if err != nil {
			continue // nothing to record in this program
		}
		coll, err := st.Load(v.Spec.Copy(), ebpf.CollectionOptions{})
		if err != nil {
			t.Fatalf("%s: load the instrumented variant: %v", name, err)
		}
		replay(coll.Programs[name], pkts)
		h, err := v.Collect(coll.Maps)
		coll.Close()
		if err != nil {
			t.Fatalf("%s: collect: %v", name, err)
		}
		hs = append(hs, h)
	}
	return heatmap.Merge(hs...)
}

// skewed makes a trace with locality of distinct packets: the i-th comes
// about 256/(i+1) times (at least once), spread over the trace.
func skewed(pkts [][]byte) [][]byte {
	var out [][]byte
	for round := 0; ; round++ {
		n := len(out)
		for i, p := range pkts {
			if round == 0 || round < 256/(i+1) {
				out = append(out, p)
			}
		}
		if len(out) == n {
			return out
		}
	}
}

// runnable reports whether programs of type t run on packets here.
func runnable(t ebpf.ProgramType) bool { return t == ebpf.XDP || t == ebpf.SchedCLS }

// replay runs p on every packet, stopping at the first that cannot be
// test-run.
func replay(p *ebpf.Program, pkts [][]byte) {
	for _, pkt := range pkts {
		if _, err := p.Run(&ebpf.RunOptions{Data: pkt}); err != nil {
			return
		}
	}
}
