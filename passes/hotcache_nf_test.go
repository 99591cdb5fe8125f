package passes_test

import (
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/guard"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/optimize"
	"github.com/morpheus-go/morpheus/passes"
	"github.com/morpheus-go/morpheus/traffic"
)

// TestHotL2SwitchFDB: the switch's fdb is written by the data plane (MAC
// learning), its forwarding lookup only reads. hotcache caches the hot
// destinations behind a guard that both learning writes trip. The
// differential test first sends frames from sources the snapshot has
// learned (the cache answers) and then from new ones (learning trips the
// guard, the original path answers); afterwards the loaded candidate
// shows both: a hot destination deleted behind the guard's back is still
// forwarded from the cache, and after one learning frame it floods.
func TestHotL2SwitchFDB(t *testing.T) {
	kerneltest.Require(t)
	const ingress = 1 // loopback: BPF_PROG_TEST_RUN resolves it
	spec, err := l2switch.Spec()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := traffic.L2SwitchConfig([]uint32{ingress, 2, 3, 4}, 4, 0, 8)
	if err != nil {
		t.Fatal(err)
	}
	state, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	set, err := traffic.L2SwitchFlows(cfg, ingress, 200, 9)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: 3000, Locality: traffic.LocalityHigh, Seed: 12})
	if err != nil {
		t.Fatal(err)
	}
	pvid := uint16(0)
	for _, p := range cfg.Ports {
		if p.Ifindex == ingress {
			pvid = p.PVID
		}
	}
	vidOf := func(f traffic.Flow) uint16 {
		if f.VLAN != 0 {
			return f.VLAN
		}
		return pvid
	}
	fdbKey := func(mac []byte, vid uint16) []byte {
		return binary.LittleEndian.AppendUint16(slices.Clone(mac[:6]), vid)
	}
	// Sources with an even last byte are learned already, fresh: the
	// data plane neither adds nor refreshes them during the test.
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	now := uint64(ts.Nano())
	learned := func(f traffic.Flow) bool { return f.SrcMAC[5]%2 == 0 }
	counts := map[string]uint64{}
	var known, unknown [][]byte
	for i, fi := range tr.PacketFlow {
		f := tr.Flows[fi]
		counts[string(fdbKey(f.DstMAC, vidOf(f)))]++
		if learned(f) {
			// The source lookup's keys: instrumentation counts both
			// sites of the map together.
			counts[string(fdbKey(f.SrcMAC, vidOf(f)))]++
			entry := binary.LittleEndian.AppendUint32(nil, ingress)
			entry = binary.LittleEndian.AppendUint32(entry, 0)
			entry = binary.LittleEndian.AppendUint64(entry, now)
			state.Put(l2switch.MapFDB, fdbKey(f.SrcMAC, vidOf(f)), entry)
			known = append(known, tr.Frames[i])
		} else {
			unknown = append(unknown, tr.Frames[i])
		}
	}
	state = dedupe(state)
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for k, n := range counts {
		heat.Maps[l2switch.MapFDB] = append(heat.Maps[l2switch.MapFDB], heatmap.Key{Key: mapstate.Hex(k), Count: n})
	}
	xdpCtx := make([]byte, 24)
	binary.LittleEndian.PutUint32(xdpCtx[12:], ingress)
	opts := passes.DefaultOptions()
	opts.TopK = 64
	rep, err := optimize.Run(context.Background(), spec, state, heat, optimize.Options{
		Passes: opts, Packets: slices.Concat(known, unknown[:min(len(unknown), 300)]), Generated: 500, Seed: 13, Context: xdpCtx,
	})
	if err != nil {
		t.Fatal(err)
	}
	pr := rep.Programs[0]
	if pr.Differential == nil || pr.Differential.MismatchCount > 0 || !pr.Accepted {
		t.Fatalf("candidate not accepted: %s\n%v", pr.Reason, pr.Differential)
	}
	var cached, tails, wires int
	for _, r := range pr.Remarks {
		if r.Pass != "hotcache" || !r.Applied || r.Map != l2switch.MapFDB {
			continue
		}
		switch {
		case strings.Contains(r.Message, "data-plane writes trip the guard"):
			cached++
			if strings.Contains(r.Message, "hits run a copy of the code after the lookup") {
				tails++
			}
		case strings.HasPrefix(r.Message, "guard tripwire"):
			wires++
		}
		t.Log(r)
	}
	// The destination lookup (read only) and fdb_learn's source lookup
	// (its timestamp is refreshed in place: a hit tail).
	if cached != 2 || tails != 1 || wires != 2 {
		t.Fatalf("%d cached fdb sites (%d with a hit tail) and %d tripwires, want 2 (1) and 2: %v", cached, tails, wires, pr.Remarks)
	}

	// The loaded candidate: hits come from the cache, and a learning
	// frame sends the next one down the original path.
	coll, err := state.Load(pr.Candidate.Spec, ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	prog := coll.Programs[l2switch.Program]
	run := func(frame []byte) uint32 {
		t.Helper()
		ret, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: ctxFor(xdpCtx, frame)})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	const xdpPass = 2
	orig, err := state.Load(spec.Copy(), ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	// A hot destination the switch knows: the original does not flood
	// frames to it (it forwards them, or drops them for the egress
	// port's reasons).
	var hit, hot []byte
	want := uint32(0)
	for _, h := range heat.Top(l2switch.MapFDB, 64) {
		for _, fr := range known {
			if f, err := traffic.Parse(fr); err != nil || string(fdbKey(f.DstMAC, vidOf(f))) != string(h.Key) {
				continue
			}
			ret, err := orig.Programs[l2switch.Program].Run(&ebpf.RunOptions{Data: fr, Context: ctxFor(xdpCtx, fr)})
			if err != nil {
				t.Fatal(err)
			}
			if ret != xdpPass {
				hit, hot, want = fr, h.Key, ret
			}
			break
		}
		if hit != nil {
			break
		}
	}
	if hit == nil {
		t.Fatal("no learned-source frame to a known hot destination")
	}
	if got := run(hit); got != want {
		t.Fatalf("hot destination: verdict %d, want %d as the original", got, want)
	}
	if err := coll.Maps[l2switch.MapFDB].Delete([]byte(hot)); err != nil {
		t.Fatal(err)
	}
	if got := run(hit); got != want {
		t.Fatalf("hot destination deleted behind the guard: verdict %d, want the cached %d", got, want)
	}
	run(unknown[0]) // learns a source: trips the guard
	slot, err := pr.Candidate.Guards.Slot(l2switch.MapFDB)
	if err != nil {
		t.Fatal(err)
	}
	if g, err := coll.Maps[guard.MapName].LookupBytes(uint32(0)); err != nil || binary.LittleEndian.Uint64(g[8*slot:]) != guard.Tripped {
		t.Fatalf("guard of fdb after a learning frame: %x, %v; want tripped", g[8*slot:8*slot+8], err)
	}
	if got := run(hit); got != xdpPass {
		t.Fatalf("after a learning frame: verdict %d, want flood (the original lookup misses)", got)
	}
}

// ctxFor is an XDP context for frame: the kernel wants data_end to be
// the frame's length.
func ctxFor(ctx, frame []byte) []byte {
	c := slices.Clone(ctx)
	binary.LittleEndian.PutUint32(c[4:], uint32(len(frame)))
	return c
}

// dedupe keeps the last value of every key of every map.
func dedupe(st *mapstate.State) *mapstate.State {
	for _, m := range st.Maps {
		seen := map[string]int{}
		var out []mapstate.Entry
		for _, e := range m.Entries {
			if i, ok := seen[string(e.Key)]; ok {
				out[i] = e
				continue
			}
			seen[string(e.Key)] = len(out)
			out = append(out, e)
		}
		m.Entries = out
	}
	return st
}
