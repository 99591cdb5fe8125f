//go:build linux

package testbed

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

// TestExternalNF drives a testbed whose NF is attached by someone else
// (here the test, through the namespace path, as an agent would): the
// generator starts without Attach, the trace is replaced while it runs,
// and a following sampler sums over the swapped programs.
func TestExternalNF(t *testing.T) {
	kerneltest.Require(t)
	frames := testFrames(t)
	tb, err := New(context.Background(), Options{ExternalNF: true, LinkPrefix: "mx", SampleInterval: 20 * time.Millisecond, Burst: 1 << 14, MaxDuration: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	if !strings.HasPrefix(tb.NFLinkName(), "mxnf") || !strings.HasPrefix(tb.GenLinkName(), "mxgen") {
		t.Errorf("links %s, %s: want the mx prefix", tb.GenLinkName(), tb.NFLinkName())
	}
	genIno, nfIno := tb.NamespaceInodes()
	if genIno == 0 || nfIno == 0 || genIno == nfIno {
		t.Errorf("namespace inodes %d, %d", genIno, nfIno)
	}
	if err := tb.LoadTrace(frames); err != nil {
		t.Fatal(err)
	}

	// Attach as an outsider: open the namespace by path.
	ns, err := netns.GetFromPath(tb.NFNetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	slow, fast := dropProg(t, 200), dropProg(t, 0)
	var l link.Link
	if err := inNamespace(ns, func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: slow, Interface: tb.NFIfindex(), Flags: link.XDPDriverMode})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if tb.Attached() != nil {
		t.Error("Attached reports a program the testbed did not attach")
	}
	id := func(p *ebpf.Program) ebpf.ProgramID {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	if got, err := tb.AttachedID(); err != nil || got != id(slow) {
		t.Fatalf("AttachedID = %d, %v; want %d", got, err, id(slow))
	}

	s := tb.StartFollowingSampler()
	if err := tb.Start(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := l.Update(fast); err != nil {
		t.Fatal(err)
	}
	// Replace the trace on the running generator: the run goes on.
	if err := tb.ReplaceTrace(frames[:len(frames)/2]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := tb.Err(); err != nil {
		t.Fatal(err)
	}
	g, err := tb.Stop()
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if g.Sent == 0 || g.Elapsed < 300*time.Millisecond {
		t.Errorf("generator stats %+v: want the frames of both traces over the whole run", g)
	}
	samples := s.Samples()
	seen := map[ebpf.ProgramID]bool{}
	busyFast := 0
	for i, x := range samples {
		seen[x.ProgramID] = true
		if i > 0 && x.RunCount < samples[i-1].RunCount {
			t.Errorf("sample %d: run count went down (%d -> %d)", i, samples[i-1].RunCount, x.RunCount)
		}
		if x.ProgramID == id(fast) && x.PPS > 0 {
			busyFast++
		}
	}
	t.Logf("%d samples, programs %v, generator %+v", len(samples), seen, g)
	if !seen[id(slow)] || !seen[id(fast)] || busyFast == 0 {
		t.Errorf("samples cover %v with %d busy samples of the fast program; want both programs", seen, busyFast)
	}
}

// TestStartWithoutNF checks that a testbed that attaches the NF itself
// still refuses to start with nothing attached, and that the link prefix
// is bounded.
func TestStartWithoutNF(t *testing.T) {
	kerneltest.Require(t)
	if _, err := New(context.Background(), Options{LinkPrefix: "long"}); err == nil {
		t.Error("a 4-character link prefix was accepted")
	}
	tb, err := New(context.Background(), Options{Frames: testFrames(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	if err := tb.Start(context.Background(), 100); err == nil {
		t.Error("generator started with nothing attached")
	}
	if got, err := tb.AttachedID(); err != nil || got != 0 {
		t.Errorf("AttachedID = %d, %v; want 0", got, err)
	}
}

// TestOnThreadRestores checks that a thread used in a namespace goes back
// to the original namespace before it is released.
func TestOnThreadRestores(t *testing.T) {
	kerneltest.Require(t)
	self := func() string {
		l, err := os.Readlink("/proc/thread-self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	var orig string
	if err := onThread(func() error { orig = self(); return nil }); err != nil {
		t.Fatal(err)
	}
	tb, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	for range 20 {
		if err := tb.InNF(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// Every thread of the process is back where it started.
	for _, task := range tasksNet(t) {
		if task != orig {
			t.Errorf("a thread is in %s, not the original %s", task, orig)
		}
	}
	if _, err := netlink.LinkByName(tb.NFLinkName()); err == nil {
		t.Errorf("%s visible in the original namespace", tb.NFLinkName())
	}
}

// tasksNet returns the network namespace of every thread of the process.
func tasksNet(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if l, err := os.Readlink("/proc/self/task/" + e.Name() + "/ns/net"); err == nil {
			out = append(out, l)
		}
	}
	return out
}
