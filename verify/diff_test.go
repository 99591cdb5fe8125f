package verify

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand"
	"runtime"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
)

func TestDifferential(t *testing.T) {
	kerneltest.Require(t)

	// Hot traffic plus edge cases derived from it.
	mixed := append(traffic(40), EdgeCases(traffic(4), 200, rand.New(rand.NewSource(7)))...)
	tc := ebpf.SchedCLS
	ingress := make([]byte, xdpMDSize)
	binary.NativeEndian.PutUint32(ingress[12:], 1) // ingress_ifindex: lo

	tests := []struct {
		name      string
		orig      nf
		cand      nf
		packets   [][]byte
		opts      DiffOptions
		wantPass  bool
		wantCount int // expected MismatchCount; -1: any > 0; -2: not checked (nor Passed)
		check     func(t *testing.T, r *Report)
	}{
		{
			name: "identical", packets: mixed, wantPass: true,
			check: func(t *testing.T, r *Report) {
				if r.MapCheck != "every packet" || r.MapChecks != len(mixed) {
					t.Errorf("map checks: %q %d, want every packet %d", r.MapCheck, r.MapChecks, len(mixed))
				}
				if r.Nondeterministic.Any() {
					t.Errorf("deterministic program reported nondeterminism: %+v", r.Nondeterministic)
				}
				if len(r.Programs) != 1 || r.Programs[0] != "logic" {
					t.Errorf("programs %v, want [logic]", r.Programs)
				}
			},
		},
		{
			name: "verdict for one key", cand: nf{overrideDst: ip2, overrideVerdict: xdpPass},
			packets: traffic(4), wantCount: 1,
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Packet != 1 || m.Kind != KindVerdict || m.Program != "logic" ||
					m.Expected != "XDP_DROP (1)" || m.Got != "XDP_PASS (2)" {
					t.Errorf("mismatch %+v", m)
				}
			},
		},
		{
			name: "output byte", cand: nf{writeTTL: 0x3f}, packets: traffic(8), wantCount: 8,
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Packet != 0 || m.Kind != KindOutput || m.Offset != 22 ||
					!strings.Contains(m.Detail, "expected 40, got 3f") {
					t.Errorf("mismatch %+v", m)
				}
			},
		},
		{
			name: "output stops at max mismatches", cand: nf{writeTTL: 0x3f}, packets: traffic(8),
			opts: DiffOptions{MaxMismatches: 3}, wantCount: 3,
			check: func(t *testing.T, r *Report) {
				if r.Complete || r.Packets != 3 || len(r.Mismatches) != 3 {
					t.Errorf("complete %v packets %d kept %d, want stop after 3", r.Complete, r.Packets, len(r.Mismatches))
				}
			},
		},
		{
			name: "map write", cand: nf{inc: 2}, packets: traffic(10), wantCount: 1,
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Packet != 0 || m.Kind != KindMap || m.Map != "counters" || string(m.Key) != "\x00\x00\x00\x00" ||
					m.CPU != nil || m.Expected != "0100000000000000" || m.Got != "0200000000000000" {
					t.Errorf("mismatch %+v", m)
				}
			},
		},
		{
			name: "map write found at the end only", cand: nf{inc: 2}, packets: traffic(10),
			opts: DiffOptions{MapCheckInterval: -1}, wantCount: 1,
			check: func(t *testing.T, r *Report) {
				if r.MapChecks != 1 || r.MapCheck != "end" || r.Mismatches[0].Packet != 9 {
					t.Errorf("checks %d %q, mismatch at %d; want one check at packet 9", r.MapChecks, r.MapCheck, r.Mismatches[0].Packet)
				}
			},
		},
		{
			name: "map write in a map left out of the periodic checks", cand: nf{inc: 2}, packets: traffic(10),
			opts: DiffOptions{MapCheckInterval: 4, PeriodicMaps: []string{"seen"}}, wantCount: 1,
			check: func(t *testing.T, r *Report) {
				// Periodic checks after 4 and 8 read only seen; the end
				// reads every map and finds the counter.
				if r.MapChecks != 3 || r.Mismatches[0].Packet != 9 || r.Mismatches[0].Map != "counters" ||
					!strings.Contains(r.MapCheck, "for the maps programs may write (seen)") {
					t.Errorf("checks %d %q, mismatch %+v; want the counter found at the end", r.MapChecks, r.MapCheck, r.Mismatches[0])
				}
			},
		},
		{
			name: "hash maps without preallocation", packets: mixed, opts: DiffOptions{NoPrealloc: true}, wantPass: true,
		},
		{
			name: "hash maps without preallocation: map write", cand: nf{inc: 2}, packets: traffic(10),
			opts: DiffOptions{NoPrealloc: true}, wantCount: 1,
		},
		{
			name: "map checks every 4 packets", packets: traffic(10), opts: DiffOptions{MapCheckInterval: 4}, wantPass: true,
			check: func(t *testing.T, r *Report) {
				if r.MapChecks != 3 || r.MapCheck != "every 4 packets" {
					t.Errorf("checks %d %q, want 3 (after 4, 8 and the end)", r.MapChecks, r.MapCheck)
				}
			},
		},
		{
			name: "large maps: compared at the end", orig: nf{big: true}, cand: nf{big: true}, packets: traffic(50), wantPass: true,
			check: func(t *testing.T, r *Report) {
				if r.MapChecks != 1 || !strings.HasPrefix(r.MapCheck, "end (maps hold") {
					t.Errorf("checks %d %q, want one at the end", r.MapChecks, r.MapCheck)
				}
			},
		},
		{
			name: "large maps: compared on mismatch", orig: nf{big: true},
			cand: nf{big: true, inc: 2, overrideDst: ip2, overrideVerdict: xdpPass}, packets: traffic(50), wantCount: -1,
			check: func(t *testing.T, r *Report) {
				// The verdict differs on packet 1, so maps are compared
				// there and the counter difference shows up at once.
				var got []string
				for _, m := range r.Mismatches {
					got = append(got, fmt.Sprintf("%d:%s", m.Packet, m.Kind))
				}
				if len(got) < 2 || got[0] != "1:verdict" || got[1] != "1:map" || r.Mismatches[1].Map != "counters" {
					t.Errorf("mismatches %v, want the verdict and the counter on packet 1", got)
				}
			},
		},
		{
			name: "per-CPU counter identical", orig: nf{perCPU: true}, cand: nf{perCPU: true},
			packets: mixed, wantPass: true,
		},
		{
			name: "per-CPU counter differs", orig: nf{perCPU: true}, cand: nf{perCPU: true, inc: 3},
			packets: traffic(5), wantCount: 1,
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Kind != KindMap || m.Map != "counters" || m.CPU == nil || *m.CPU != r.CPU ||
					m.Expected != "0100000000000000" || m.Got != "0300000000000000" {
					t.Errorf("mismatch %+v (pinned cpu %d)", m, r.CPU)
				}
			},
		},
		{
			name: "clock in a map value", orig: nf{ktime: true}, cand: nf{ktime: true},
			packets: traffic(200), wantPass: true,
			check: func(t *testing.T, r *Report) {
				nd := r.Nondeterministic
				if nd.MapBytes == 0 || nd.Packets == 0 || nd.Verdicts != 0 || nd.MapKeys != 0 {
					t.Errorf("nondeterminism %+v, want map bytes and packets only", nd)
				}
			},
		},
		{
			name: "clock stored differently", orig: nf{ktime: true}, cand: nf{ktime: true, ktimeShift: 1},
			packets: traffic(8), wantCount: -1,
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Kind != KindMap || m.Map != "seen" || m.Packet != 0 {
					t.Errorf("mismatch %+v", m)
				}
			},
		},
		{
			name: "random verdicts", orig: nf{randomDrop: true}, cand: nf{randomDrop: true},
			packets: traffic(64), opts: DiffOptions{MaxMismatches: 1000}, wantCount: -2,
			check: func(t *testing.T, r *Report) {
				if r.Nondeterministic.Verdicts == 0 {
					t.Errorf("random verdicts not seen as nondeterministic: %+v", r.Nondeterministic)
				}
				// Runs where both originals drew the same bit but the
				// candidate another are reported, and flagged.
				for _, m := range r.Mismatches {
					if m.Kind != KindVerdict || !m.Nondeterministic {
						t.Errorf("unexpected mismatch %v", m)
					}
				}
			},
		},
		{
			name: "random verdicts do not hide a real difference", orig: nf{randomDrop: true}, cand: nf{randomDrop: true, inc: 2},
			packets: traffic(32), opts: DiffOptions{MaxMismatches: 1000}, wantCount: -1,
			check: func(t *testing.T, r *Report) {
				found := false
				for _, m := range r.Mismatches {
					if m.Kind == KindMap && m.Map == "counters" && !m.Nondeterministic {
						found = true
					}
				}
				if !found {
					t.Errorf("counter mismatch not reported: %v", r)
				}
			},
		},
		{
			name: "tail call, periodic checks of the counters only", orig: nf{tail: true}, cand: nf{tail: true},
			packets: traffic(8), opts: DiffOptions{MapCheckInterval: 2, PeriodicMaps: []string{"counters"}}, wantPass: true,
			check: func(t *testing.T, r *Report) {
				// The program array is planned without a read and
				// found unreadable at the end; four periodic checks
				// of the counters, then every map after the last.
				if !slicesContain(r.SkippedMaps, "jmp") || r.MapChecks != 5 {
					t.Errorf("skipped %v, %d checks; want jmp skipped and 5 checks", r.SkippedMaps, r.MapChecks)
				}
			},
		},
		{
			name: "through a tail call", orig: nf{tail: true}, cand: nf{tail: true, overrideDst: ip2, overrideVerdict: xdpPass},
			packets: traffic(4), wantCount: 2,
			check: func(t *testing.T, r *Report) {
				if strings.Join(r.Programs, ",") != "entry,logic" || !slicesContain(r.SkippedMaps, "jmp") {
					t.Errorf("programs %v skipped %v", r.Programs, r.SkippedMaps)
				}
				m := r.Mismatches[0]
				if m.Program != "entry" || m.Kind != KindVerdict || m.Packet != 1 {
					t.Errorf("mismatch %+v, want a verdict of entry on packet 1", m)
				}
			},
		},
		{
			name: "tail call entry only", orig: nf{tail: true}, cand: nf{tail: true},
			packets: mixed, opts: DiffOptions{Programs: []string{"entry"}}, wantPass: true,
		},
		{
			name: "xdp context with ingress ifindex", packets: traffic(8), opts: DiffOptions{Context: ingress}, wantPass: true,
		},
		{
			name: "tc identical", orig: nf{typ: tc, mark: 7}, cand: nf{typ: tc, mark: 7}, packets: mixed, wantPass: true,
			check: func(t *testing.T, r *Report) {
				// The skb test runner refuses IPv4 frames cut short of
				// the IPv4 header; the edge cases contain some.
				if r.Skipped == 0 || r.Runs+r.Skipped != len(mixed) || !strings.Contains(r.SkipReason, "invalid argument") {
					t.Errorf("runs %d skipped %d (%s), want some skipped of %d", r.Runs, r.Skipped, r.SkipReason, len(mixed))
				}
			},
		},
		{
			name: "read-only maps are not read back", packets: mixed, wantPass: true,
			opts: DiffOptions{PeriodicMaps: []string{"counters"}, ReadOnlyMaps: []string{"verdicts", "seen"}},
			check: func(t *testing.T, r *Report) {
				if fmt.Sprint(r.ReadOnlyMaps) != "[seen verdicts]" {
					t.Errorf("read-only maps %v, want [seen verdicts]", r.ReadOnlyMaps)
				}
			},
		},
		{
			// Only the last packet goes to ip5: the periodic checks
			// (which read the second original only when the candidate
			// differs) and the final check must see the counter.
			name: "map written differently on the last packet only", cand: nf{extraIncDst: ip5},
			packets: append(traffic(40), frame(ip5)), wantCount: 1,
			opts: DiffOptions{PeriodicMaps: []string{"counters"}, ReadOnlyMaps: []string{"verdicts", "seen"}, MapCheckInterval: 8},
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Packet != 40 || m.Kind != KindMap || m.Map != "counters" {
					t.Errorf("mismatch %+v, want counters after packet 40", m)
				}
			},
		},
		{
			// The kernel refuses the candidate's write into a map
			// created read-only: loaded again without the flag, the
			// write is compared and found.
			name: "write into a map expected read-only", cand: nf{storeVerdict: true},
			packets: traffic(8), wantCount: -1,
			opts: DiffOptions{ReadOnlyMaps: []string{"verdicts"}},
			check: func(t *testing.T, r *Report) {
				if len(r.ReadOnlyMaps) != 0 {
					t.Errorf("read-only maps %v after a write, want none", r.ReadOnlyMaps)
				}
				found := false
				for _, m := range r.Mismatches {
					found = found || (m.Kind == KindMap && m.Map == "verdicts")
				}
				if !found {
					t.Errorf("no mismatch in verdicts:\n%v", r)
				}
			},
		},
		{
			name: "tc verdict", orig: nf{typ: tc}, cand: nf{typ: tc, overrideDst: ip4, overrideVerdict: tcShot},
			packets: traffic(4), wantCount: 1,
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Packet != 3 || m.Expected != "TC_ACT_OK (0)" || m.Got != "TC_ACT_SHOT (2)" {
					t.Errorf("mismatch %+v", m)
				}
			},
		},
		{
			name: "tc mark", orig: nf{typ: tc, mark: 7}, cand: nf{typ: tc, mark: 9}, packets: traffic(2), wantCount: 2,
			check: func(t *testing.T, r *Report) {
				m := r.Mismatches[0]
				if m.Kind != KindContext || m.Offset != 8 || !strings.Contains(m.Detail, "expected 07, got 09") {
					t.Errorf("mismatch %+v", m)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Differential(context.Background(), tt.orig.spec(), routes(), tt.cand.candidate(), tt.packets, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantCount != -2 && r.Passed() != tt.wantPass {
				t.Fatalf("passed %v, want %v:\n%v", r.Passed(), tt.wantPass, r)
			}
			switch {
			case tt.wantCount == -1 && r.MismatchCount == 0:
				t.Fatalf("want mismatches, got none:\n%v", r)
			case tt.wantCount >= 0 && r.MismatchCount != tt.wantCount:
				t.Fatalf("%d mismatches, want %d:\n%v", r.MismatchCount, tt.wantCount, r)
			}
			if len(r.Mismatches) > r.MismatchCount {
				t.Errorf("%d mismatches kept, %d counted", len(r.Mismatches), r.MismatchCount)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
			t.Log(r)
		})
	}
}

// TestSessionReset runs several tests on one loaded session: Reset puts
// every map of the three collections back to a state (also one that
// differs from the loaded one), so each run behaves as on fresh
// collections, and a wrong candidate is found after every reset.
func TestSessionReset(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	packets := append(traffic(20), frame(ip5))
	noRoutes := mapstate.New()
	tests := []struct {
		name      string
		cand      nf
		opts      DiffOptions
		wantCount int
	}{
		{"identical", nf{}, DiffOptions{}, 0},
		{"identical, read-only maps", nf{}, DiffOptions{ReadOnlyMaps: []string{"verdicts", "seen"}, PeriodicMaps: []string{"counters"}}, 0},
		{"late counter", nf{extraIncDst: ip5}, DiffOptions{ReadOnlyMaps: []string{"verdicts", "seen"}, PeriodicMaps: []string{"counters"}}, 1},
		{"verdict write", nf{storeVerdict: true}, DiffOptions{ReadOnlyMaps: []string{"verdicts"}}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSession(nf{}.spec(), routes(), tt.cand.candidate(), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i, st := range []*mapstate.State{routes(), noRoutes, routes()} {
				if i > 0 {
					if err := s.Reset(st); err != nil {
						t.Fatal(err)
					}
				}
				// Every map holds exactly st (counters zero).
				for j, in := range s.insts {
					got, err := mapstate.SnapshotMap(in.coll.Maps["verdicts"])
					if err != nil {
						t.Fatal(err)
					}
					if want := st.Maps["verdicts"]; len(got.Entries) != len(want.GetEntries()) {
						t.Fatalf("reset %d: instance %d verdicts has %d entries, want %d", i, j, len(got.Entries), len(want.GetEntries()))
					}
					var c uint64
					if err := in.coll.Maps["counters"].Lookup(uint32(0), &c); err != nil || c != 0 {
						t.Fatalf("reset %d: instance %d counter %d (%v), want 0", i, j, c, err)
					}
				}
				r, err := s.Run(ctx, packets)
				if err != nil {
					t.Fatal(err)
				}
				// The same as on freshly loaded collections.
				fresh, err := Differential(ctx, nf{}.spec(), st, tt.cand.candidate(), packets, tt.opts)
				if err != nil {
					t.Fatal(err)
				}
				if r.MismatchCount != fresh.MismatchCount || r.MapChecks != fresh.MapChecks {
					t.Fatalf("run %d after reset: %v\nfresh collections: %v", i, r, fresh)
				}
				if st == noRoutes {
					continue // no verdict is ever stored
				}
				switch {
				case tt.wantCount == -1 && r.MismatchCount == 0, tt.wantCount >= 0 && r.MismatchCount != tt.wantCount:
					t.Fatalf("run %d: %d mismatches, want %d:\n%v", i, r.MismatchCount, tt.wantCount, r)
				}
			}
		})
	}
}

// TestOriginalsReuse keeps one pair of originals across several
// candidates and states (as the optimizer's Baseline does across cycles):
// every test must report what a test on fresh collections reports, a
// wrong candidate included.
func TestOriginalsReuse(t *testing.T) {
	kerneltest.Require(t)
	ctx := context.Background()
	packets := append(traffic(20), frame(ip5))
	opts := DiffOptions{ReadOnlyMaps: []string{"verdicts", "seen"}, PeriodicMaps: []string{"counters"}, NoPrealloc: true}
	other := routes()
	other.Put("verdicts", ip4[:], binary.NativeEndian.AppendUint32(nil, xdpDrop))
	o, err := LoadOriginals(nf{}.spec(), routes(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Close() }()
	for i, tc := range []struct {
		cand nf
		st   *mapstate.State
	}{
		{nf{}, routes()},
		{nf{extraIncDst: ip5}, routes()},
		{nf{}, other},
		{nf{storeVerdict: true}, other},
		{nf{overrideDst: ip2, overrideVerdict: xdpTX}, mapstate.New()},
		{nf{}, routes()},
		{nf{inc: 2}, routes()},
	} {
		fresh, err := Differential(ctx, nf{}.spec(), tc.st, tc.cand.candidate(), packets, opts)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewCandidateSession(o, nf{}.spec(), tc.st, tc.cand.candidate(), opts)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Run(ctx, packets)
		o = s.Release()
		if err != nil {
			t.Fatal(err)
		}
		if r.Passed() != fresh.Passed() || r.MismatchCount != fresh.MismatchCount || r.MapChecks != fresh.MapChecks {
			t.Fatalf("test %d on reused originals: %v\nfresh collections: %v", i, r, fresh)
		}
		if wrong := tc.cand != (nf{}); wrong == r.Passed() {
			t.Fatalf("test %d: passed %v for candidate %+v:\n%v", i, r.Passed(), tc.cand, r)
		}
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestDifferentialErrors(t *testing.T) {
	kerneltest.Require(t)
	spec := nf{}.spec()
	tests := []struct {
		name    string
		cand    Candidate
		packets [][]byte
		opts    DiffOptions
		want    string
	}{
		{"no packets", nil, nil, DiffOptions{}, "at least one packet"},
		{"short packet", nil, [][]byte{make([]byte, 13)}, DiffOptions{}, "packet 0 has 13 bytes"},
		{"unknown candidate", Candidate{"nope": nf{}.logic()}, traffic(1), DiffOptions{}, `"nope" does not exist`},
		{"unknown entry", nil, traffic(1), DiffOptions{Programs: []string{"nope"}}, `"nope" does not exist`},
		{"verifier", nf{noBoundsCheck: true}.candidate(), traffic(1), DiffOptions{}, `verifier rejected candidate program "logic"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Differential(context.Background(), spec, routes(), tt.cand, tt.packets, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q (report %v)", err, tt.want, r)
			}
		})
	}
}

func TestDifferentialCancel(t *testing.T) {
	kerneltest.Require(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, err := Differential(ctx, nf{}.spec(), routes(), nil, traffic(4), DiffOptions{})
	if err != context.Canceled || r == nil || r.Packets != 0 || r.Passed() {
		t.Fatalf("got %v, %v; want a partial report and context.Canceled", r, err)
	}
}

func TestReportJSON(t *testing.T) {
	kerneltest.Require(t)
	r, err := Differential(context.Background(), nf{}.spec(), routes(), nf{inc: 2}.candidate(), traffic(2), DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"programs", "packets", "total", "complete", "cpu", "map_check", "map_checks",
		"mismatch_count", "mismatches", "nondeterministic"} {
		if _, ok := got[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	m := got["mismatches"].([]any)[0].(map[string]any)
	if m["kind"] != "map" || m["map"] != "counters" || m["key"] != "00000000" {
		t.Errorf("mismatch JSON %v", m)
	}
	if !strings.Contains(r.String(), "FAILED") || !strings.Contains(r.String(), "map counters key 00000000") {
		t.Errorf("summary:\n%v", r)
	}
}

// TestPinToOneCPU checks that the differential test's thread is pinned
// to the CPU it runs on, and that the old affinity comes back.
func TestPinToOneCPU(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	restore, cpu, err := pinToOneCPU()
	if err != nil {
		t.Fatal(err)
	}
	var pinned unix.CPUSet
	if err := unix.SchedGetaffinity(0, &pinned); err != nil {
		t.Fatal(err)
	}
	now := currentCPU()
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if pinned.Count() != 1 || !pinned.IsSet(cpu) || !before.IsSet(cpu) {
		t.Errorf("pinned to %d CPUs (CPU %d set: %v), want CPU %d alone", pinned.Count(), cpu, pinned.IsSet(cpu), cpu)
	}
	if now != cpu {
		t.Errorf("runs on CPU %d while pinned to CPU %d", now, cpu)
	}
	var after unix.CPUSet
	if err := unix.SchedGetaffinity(0, &after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("affinity not restored")
	}
	if first := firstCPU(&before); first < 0 || !before.IsSet(first) {
		t.Errorf("firstCPU %d of a non-empty set", first)
	}
}
