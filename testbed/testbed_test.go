//go:build linux

package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/traffic"
)

// dropProg returns an XDP program that drops every frame after spinning
// for loops iterations, so two of them differ in cost.
func dropProg(t testing.TB, loops int32) *ebpf.Program {
	t.Helper()
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, 1)}
	if loops > 0 {
		insns = append(insns,
			asm.Mov.Imm(asm.R2, 0),
			asm.Add.Imm(asm.R2, 1).WithSymbol("spin"),
			asm.JLT.Imm(asm.R2, loops, "spin"),
		)
	}
	insns = append(insns, asm.Return())
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func testFrames(t testing.TB) [][]byte {
	t.Helper()
	cfg, err := traffic.LBConfig(2, 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	set, err := traffic.LBFlows(cfg, 50, 2)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := traffic.Generate(set, traffic.Options{Packets: 512, MissShare: 0.2, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Frames
}

// namespaceHolders lists the tasks and fds of this process that still
// have the namespace id (as "net:[inode]") as their namespace or open.
func namespaceHolders(id string) []string {
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	fds, _ := filepath.Glob("/proc/self/fd/*")
	var out []string
	for _, p := range append(tasks, fds...) {
		if l, err := os.Readlink(p); err == nil && l == id {
			out = append(out, p)
		}
	}
	return out
}

func nsID(t *testing.T, tb *Testbed) string {
	t.Helper()
	var id string
	err := tb.InNF(func() error {
		l, err := os.Readlink("/proc/thread-self/ns/net")
		id = l
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestTestbedLive(t *testing.T) {
	kerneltest.Require(t)
	frames := testFrames(t)
	tb, err := New(context.Background(), Options{Frames: frames, SampleInterval: 20 * time.Millisecond, Burst: 1 << 14, MaxDuration: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			tb.Close()
		}
	}()
	id := nsID(t, tb)
	genName, nfName := tb.genName, tb.nfName
	if _, err := netlink.LinkByName(nfName); err == nil {
		t.Fatalf("%s is visible in the test's own namespace", nfName)
	}
	if err := tb.Start(context.Background(), 1000); err == nil {
		t.Fatal("generator started with nothing attached")
	}

	fast, slow := dropProg(t, 0), dropProg(t, 200)
	if err := tb.Attach(slow); err != nil {
		t.Fatal(err)
	}
	s := tb.StartSampler()

	runs := func(p *ebpf.Program) uint64 {
		st, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.RunCount
	}
	for i, tc := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"slow", slow},
		{"fast after swap", fast},
	} {
		if i > 0 {
			if err := tb.Swap(tc.prog); err != nil {
				t.Fatal(err)
			}
		}
		before := runs(tc.prog)
		const packets = 1 << 17
		if err := tb.Start(context.Background(), packets); err != nil {
			t.Fatal(err)
		}
		g, err := tb.Wait()
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // let the last frames land
		got := runs(tc.prog) - before
		t.Logf("%s: generator sent %d frames (%d failed) at %.2f Mpps; the NF ran %d times", tc.name, g.Sent, g.Failed, g.PPS()/1e6, got)
		if g.Sent != packets || g.Failed != 0 {
			t.Errorf("%s: generator sent %d frames, %d failed; want %d, 0", tc.name, g.Sent, g.Failed, packets)
		}
		// A veth drops what its peer's queue cannot take, so not every
		// frame arrives; most must. The kernel's own few frames on a
		// fresh link (IPv6 neighbour discovery) run the NF too.
		if got < packets/4 || got > packets+64 {
			t.Errorf("%s: NF ran %d times for %d frames sent", tc.name, got, packets)
		}
	}
	s.Stop()
	samples := s.Samples()
	ids := map[ebpf.ProgramID]bool{}
	var busy int
	for _, x := range samples {
		ids[x.ProgramID] = true
		if x.PPS > 0 && x.NsPerPacket > 0 {
			busy++
		}
	}
	t.Logf("%d samples, %d with traffic, programs %v", len(samples), busy, ids)
	if len(ids) != 2 || busy == 0 {
		t.Errorf("samples cover programs %v with %d busy samples; want both programs and traffic", ids, busy)
	}

	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	deadline := time.Now().Add(5 * time.Second)
	for len(namespaceHolders(id)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if h := namespaceHolders(id); len(h) > 0 {
		t.Errorf("namespace %s still held after Close by %v", id, h)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, genName) || strings.HasPrefix(n, nfName) {
			t.Errorf("link %s left behind", n)
		}
	}
}

func TestSummarize(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	samples := []Sample{
		{At: at(0), ProgramID: 1, RunCount: 0, RunTime: 0},
		{At: at(100), ProgramID: 1, RunCount: 1000, RunTime: 50 * time.Microsecond, PPS: 10000},
		{At: at(200), ProgramID: 1, RunCount: 3000, RunTime: 150 * time.Microsecond, PPS: 20000},
		{At: at(300), ProgramID: 2, RunCount: 500, RunTime: 10 * time.Microsecond},
	}
	for _, tc := range []struct {
		id       ebpf.ProgramID
		from, to time.Time
		want     Summary
	}{
		{1, at(0), at(300), Summary{Samples: 2, PPS: 15000, NsPerPacket: 50}},
		{1, at(100), at(200), Summary{Samples: 2, PPS: 20000, NsPerPacket: 50}},
		{2, at(0), at(300), Summary{}},
		{3, at(0), at(300), Summary{}},
	} {
		t.Run(fmt.Sprint(tc.id, tc.from.Sub(t0)), func(t *testing.T) {
			if got := Summarize(samples, tc.id, tc.from, tc.to); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestCompareLive runs the router, configured for the testbed's NF
// interface, under live traffic: two copies alternate on the interface and
// both route the generator's frames (the forwarded counter grows).
func TestCompareLive(t *testing.T) {
	kerneltest.Require(t)
	tb, err := New(context.Background(), Options{SampleInterval: 20 * time.Millisecond, Burst: 1 << 14, MaxDuration: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	sc, err := bench.NewScenario(bench.ScenarioOptions{NF: "router", Ingress: uint32(tb.NFIfindex()), Flows: 200,
		Trace: traffic.Options{Packets: 4096, Locality: traffic.LocalityHigh, MissShare: 0.1, Seed: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.LoadTrace(sc.Frames); err != nil {
		t.Fatal(err)
	}
	progs := map[string]*ebpf.Program{}
	var colls []*ebpf.Collection
	for _, name := range []string{"a", "b"} {
		coll, err := sc.State.Load(sc.Spec.Copy(), ebpf.CollectionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer coll.Close()
		colls = append(colls, coll)
		progs[name] = coll.Programs[sc.Program]
	}
	res, err := tb.CompareLive(context.Background(), progs, LiveOptions{Rounds: 2, Period: 200 * time.Millisecond, Settle: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range res.Programs {
		t.Logf("%s: %.2f Mpps, %.1f ns/pkt over %d rounds", st.Name, st.PPS/1e6, st.NsPerPacket, len(st.Rounds))
		if len(st.Rounds) != 2 || !(st.PPS > 0) || !(st.NsPerPacket > 0) {
			t.Errorf("%s: %+v", st.Name, st)
		}
	}
	t.Logf("generator: %d frames at %.2f Mpps", res.Generator.Sent, res.Generator.PPS()/1e6)
	for i, coll := range colls {
		c, err := router.ReadCounters(coll.Maps[router.MapCounters])
		if err != nil {
			t.Fatal(err)
		}
		if c[router.CounterForwarded].Packets == 0 && c[router.CounterTx].Packets == 0 {
			t.Errorf("router copy %d forwarded nothing: %+v", i, c)
		}
	}
}
