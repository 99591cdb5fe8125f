package verify

import (
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

// openFDs counts the file descriptors of this process.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestLoad(t *testing.T) {
	kerneltest.Require(t)

	// Warm up caches that stay open for the life of the process (kernel
	// BTF, feature probes) before counting descriptors.
	if coll, err := Load(nf{}.spec(), nil, LoadOptions{}); err != nil {
		t.Fatal(err)
	} else {
		coll.Close()
	}

	tests := []struct {
		name string
		cand Candidate
		opts LoadOptions
		// wantVerifier names the rejected program; "" means success.
		wantVerifier string
		wantLog      string
		wantErr      string
	}{
		{name: "original"},
		{name: "candidate", cand: nf{overrideDst: ip2, overrideVerdict: xdpPass}.candidate()},
		{name: "candidate with log", cand: nf{inc: 2}.candidate(), opts: LoadOptions{LogLevel: ebpf.LogLevelInstruction}},
		{name: "missing bounds check", cand: nf{noBoundsCheck: true}.candidate(),
			wantVerifier: "logic", wantLog: "invalid access to packet"},
		{name: "short log tail", cand: nf{noBoundsCheck: true}.candidate(), opts: LoadOptions{LogTail: 2},
			wantVerifier: "logic", wantLog: "processed"},
		{name: "unknown program", cand: Candidate{"other": nf{}.logic()}, wantErr: `"other" does not exist`},
		{name: "empty program", cand: Candidate{"logic": nil}, wantErr: "no instructions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := openFDs(t)
			coll, err := Load(nf{}.spec(), tt.cand, tt.opts)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
			case tt.wantVerifier != "":
				var ve *VerifierError
				if !errors.As(err, &ve) {
					t.Fatalf("error %v (%T), want *VerifierError", err, err)
				}
				if ve.Program != tt.wantVerifier || !ve.Candidate || len(ve.Log) == 0 {
					t.Errorf("VerifierError program %q candidate %v log %d lines", ve.Program, ve.Candidate, len(ve.Log))
				}
				if tt.opts.LogTail > 0 && (len(ve.Log) != tt.opts.LogTail || ve.Omitted == 0) {
					t.Errorf("log tail %d lines, %d omitted; want %d", len(ve.Log), ve.Omitted, tt.opts.LogTail)
				}
				if msg := err.Error(); !strings.Contains(msg, `"`+tt.wantVerifier+`"`) || !strings.Contains(msg, tt.wantLog) {
					t.Errorf("error text lacks program name or %q:\n%s", tt.wantLog, msg)
				}
				var cve *ebpf.VerifierError
				if !errors.As(err, &cve) {
					t.Errorf("cilium VerifierError not reachable through errors.As")
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if tt.opts.LogLevel != 0 && coll.Programs["logic"].VerifierLog == "" {
					t.Errorf("log level %v gave no verifier log", tt.opts.LogLevel)
				}
				coll.Close()
			}
			if after := openFDs(t); after != before {
				t.Errorf("%d file descriptors before, %d after: the load left something behind", before, after)
			}
		})
	}
}

// TestLoadMapReplacements loads a candidate against the maps of a running
// original, as the optimizer does before a swap.
func TestLoadMapReplacements(t *testing.T) {
	kerneltest.Require(t)
	live, err := Load(nf{}.spec(), nil, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := routes().Apply(live.Maps); err != nil {
		t.Fatal(err)
	}
	cand, err := Load(nf{}.spec(), nf{inc: 5}.candidate(), LoadOptions{MapReplacements: map[string]*ebpf.Map{
		"verdicts": live.Maps["verdicts"], "counters": live.Maps["counters"],
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer cand.Close()

	tests := []struct {
		dst  [4]byte
		want uint32
	}{{ip1, xdpPass}, {ip2, xdpDrop}, {ip3, xdpTX}, {ip4, xdpPass}}
	for _, tt := range tests {
		if got := kerneltest.Run(t, cand.Programs["logic"], frame(tt.dst)).Verdict; got != tt.want {
			t.Errorf("dst %v: verdict %d, want %d from the live map", tt.dst, got, tt.want)
		}
	}
	var count uint64
	if err := live.Maps["counters"].Lookup(uint32(0), &count); err != nil {
		t.Fatal(err)
	}
	if count != 5*uint64(len(tests)) {
		t.Errorf("live counter %d, want %d: the candidate did not share the map", count, 5*len(tests))
	}
}

// TestMinFrameSize checks MinFrameSize against the running kernel.
func TestMinFrameSize(t *testing.T) {
	kerneltest.Require(t)
	coll, err := Load(nf{}.spec(), nil, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for _, tt := range []struct {
		size int
		ok   bool
	}{{MinFrameSize - 1, false}, {MinFrameSize, true}} {
		_, err := coll.Programs["logic"].Run(&ebpf.RunOptions{Data: make([]byte, tt.size)})
		if (err == nil) != tt.ok {
			t.Errorf("%d-byte frame: error %v, want ok=%v", tt.size, err, tt.ok)
		}
	}
}

// TestLoadBatchedContents checks that Load writes the contents of large
// maps itself (in batches, after the load) exactly as the collection
// loader would: every entry, the last value of a key listed twice, the
// loader's own conversion for keys that are not byte slices, nothing
// into a replacement map, and the caller's spec left as it was.
func TestLoadBatchedContents(t *testing.T) {
	kerneltest.Require(t)
	u32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	spec := nf{}.spec()
	var table, typed []ebpf.MapKV
	for i := range uint32(2 * batchMin) {
		table = append(table, ebpf.MapKV{Key: u32(i), Value: u32(i + 1000)})
		typed = append(typed, ebpf.MapKV{Key: i, Value: i + 2000})
	}
	table = append(table, ebpf.MapKV{Key: u32(7), Value: u32(7777)}) // listed twice: the last wins
	spec.Maps["table"] = &ebpf.MapSpec{Name: "table", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4 * batchMin, Contents: table}
	spec.Maps["typed"] = &ebpf.MapSpec{Name: "typed", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 2 * batchMin, Contents: typed}
	want := map[string]map[uint32]uint32{"table": {}, "typed": {}}
	for i := range uint32(2 * batchMin) {
		want["table"][i] = i + 1000
		want["typed"][i] = i + 2000
	}
	want["table"][7] = 7777

	if later := takeContents(spec.Copy(), nil); later.Maps["table"] == nil || later.Maps["typed"] != nil {
		t.Fatalf("takeContents took %v, want table alone (typed is the loader's)", slices.Sorted(maps.Keys(later.Maps)))
	}
	contents := func(m *ebpf.Map) map[uint32]uint32 {
		got := map[uint32]uint32{}
		var k, v uint32
		for it := m.Iterate(); it.Next(&k, &v); {
			got[k] = v
		}
		return got
	}
	coll, err := Load(spec, nil, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for name, w := range want {
		if got := contents(coll.Maps[name]); !maps.Equal(got, w) {
			t.Errorf("map %s holds %d entries, want %d (%v)", name, len(got), len(w), got)
		}
	}
	if len(spec.Maps["table"].Contents) != len(table) || len(spec.Maps["typed"].Contents) != len(typed) {
		t.Errorf("the caller's spec lost its contents")
	}

	// A replacement map is the caller's: its contents stay.
	live, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4 * batchMin})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := live.Put(uint32(1), uint32(1)); err != nil {
		t.Fatal(err)
	}
	cand, err := Load(spec, nil, LoadOptions{MapReplacements: map[string]*ebpf.Map{"table": live}})
	if err != nil {
		t.Fatal(err)
	}
	cand.Close()
	if got := contents(live); !maps.Equal(got, map[uint32]uint32{1: 1}) {
		t.Errorf("replacement map holds %v after the load, want only its own entry", got)
	}

	// Contents the map cannot hold fail the load, leaving nothing open.
	before := openFDs(t)
	spec.Maps["table"].MaxEntries = batchMin
	if coll, err := Load(spec, nil, LoadOptions{}); err == nil {
		coll.Close()
		t.Errorf("contents beyond max_entries loaded")
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d file descriptors before, %d after a failed load", before, after)
	}
}
