package agent

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
	"github.com/morpheus-go/morpheus/nf/router"
)

var nsSeq atomic.Int32

// testNetns is a network namespace with a veth pair inside.
type testNetns struct {
	name, path string
	veth, peer string
}

// newTestNetns creates a named namespace holding veth0 <-> veth1 (both
// up) and removes it when the test ends.
func newTestNetns(tb testing.TB) *testNetns {
	tb.Helper()
	name := fmt.Sprintf("mph-agent-%d-%d", os.Getpid(), nsSeq.Add(1))
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		tb.Fatalf("return to the test's namespace: %v", serr) // thread stays locked
	}
	runtime.UnlockOSThread()
	orig.Close()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	tb.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}
	if err := h.LinkAdd(veth); err != nil {
		tb.Fatalf("add veth: %v", err)
	}
	for _, n := range []string{"veth0", "veth1"} {
		l, err := h.LinkByName(n)
		if err != nil {
			tb.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			tb.Fatal(err)
		}
	}
	return &testNetns{name: name, path: filepath.Join("/var/run/netns", name), veth: "veth0", peer: "veth1"}
}

// xdpAttached reports whether an XDP program is attached to dev.
func (ns *testNetns) xdpAttached(tb testing.TB, dev string) bool {
	tb.Helper()
	h, err := netlinkHandle(ns.path)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		tb.Fatal(err)
	}
	return l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
}

func testLogger(tb testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ tb testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// XDP verdicts.
const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpRedirect = 4
)

// udpFrame builds an Ethernet/IPv4/UDP frame to dst.
func udpFrame(tb testing.TB, dst string) []byte {
	tb.Helper()
	eth := &layers.Ethernet{
		SrcMAC:       net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55},
		DstMAC:       net.HardwareAddr{0x02, 0, 0, 0, 0x01, 0x01},
		EthernetType: layers.EthernetTypeIPv4,
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Id: 1, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IPv4(172, 16, 0, 1).To4(), DstIP: net.ParseIP(dst).To4()}
	udp := &layers.UDP{SrcPort: 1000, DstPort: 53}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		tb.Fatal(err)
	}
	return kerneltest.Frame(tb, eth, ip, udp, gopacket.Payload([]byte("morpheus agent test")))
}

type runResult struct {
	verdict uint32
	out     []byte
}

// testRun runs prog once on pkt (ingress ifindex 1, as the kernel reports
// for test runs) through kerneltest.Run; the agent's tests compare the
// lower-case fields of runResult.
func testRun(tb testing.TB, prog *ebpf.Program, pkt []byte) runResult {
	tb.Helper()
	r := kerneltest.Run(tb, prog, pkt)
	return runResult{r.Verdict, r.Out}
}

// runID runs pkt through the program with the given ID.
func runID(tb testing.TB, id ebpf.ProgramID, pkt []byte) runResult {
	tb.Helper()
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		tb.Fatalf("program %d: %v", id, err)
	}
	defer p.Close()
	return testRun(tb, p, pkt)
}

// testRouterConfig is the example router plus ingress interface 1, the
// interface test runs arrive on, so that test runs are routed.
func testRouterConfig() *router.Config {
	cfg := router.ExampleConfig()
	cfg.Interfaces = append(cfg.Interfaces, router.Interface{Ifindex: 1, MAC: "02:00:00:00:01:01"})
	return cfg
}

// routeEntry returns the routes-map key and value of prefix in cfg.
func routeEntry(tb testing.TB, cfg *router.Config, prefix string) (key, value []byte) {
	tb.Helper()
	st, err := cfg.State()
	if err != nil {
		tb.Fatal(err)
	}
	_, p, err := net.ParseCIDR(prefix)
	if err != nil {
		tb.Fatal(err)
	}
	ones, _ := p.Mask.Size()
	want := binary.LittleEndian.AppendUint32(nil, uint32(ones))
	want = append(want, p.IP.To4()...)
	for _, e := range st.Maps[router.MapRoutes].Entries {
		if bytes.Equal(e.Key, want) {
			return e.Key, e.Value
		}
	}
	tb.Fatalf("no route %s in the config", prefix)
	return nil, nil
}

// eventually polls cond every 10 ms for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func programGone(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return true
	}
	p.Close()
	return false
}

func mapGone(id ebpf.MapID) bool {
	m, err := ebpf.NewMapFromID(id)
	if err != nil {
		return true
	}
	m.Close()
	return false
}

// mustProgram opens a program by ID; it is closed when the test ends.
func mustProgram(tb testing.TB, id ebpf.ProgramID) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		tb.Fatalf("program %d: %v", id, err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// abandon drops every handle without restoring, detaching or unpinning,
// as a killed process would. Tests use it to simulate a crash.
func (n *NF) abandon() {
	n.cancel()
	n.cycleMu.Lock()
	defer n.cycleMu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ps := range n.progs {
		if ps.running != nil {
			ps.running.close()
		}
		ps.original.Close()
		for _, at := range ps.atts {
			if x, ok := at.(*xdpAttacher); ok && x.l != nil {
				x.l.Close()
			}
		}
	}
	for _, m := range n.maps {
		m.Close()
	}
	n.guards.Close()
	if n.stateMap != nil {
		n.stateMap.Close()
	}
	n.stopped, n.closed = true, true
	close(n.done)
	n.events.closeAll()
}

// ifindex returns the index of dev in the namespace.
func (ns *testNetns) ifindex(tb testing.TB, dev string) int {
	tb.Helper()
	h, err := netlinkHandle(ns.path)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		tb.Fatal(err)
	}
	return l.Attrs().Index
}

// send transmits frames out of dev (inside the namespace) through a
// packet socket.
func (ns *testNetns) send(tb testing.TB, dev string, frames [][]byte) {
	tb.Helper()
	idx := ns.ifindex(tb, dev)
	var fd int
	err := inNetns(ns.path, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		return err
	})
	if err != nil {
		tb.Fatalf("packet socket: %v", err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: idx, Halen: 6}
	for i, f := range frames {
		if err := unix.Sendto(fd, f, 0, sa); err != nil {
			tb.Fatalf("send frame %d: %v", i, err)
		}
	}
}

// forwardConfig is testRouterConfig plus the veth at ifindex: frames to
// 203.0.113.0/24 arriving there go back out of it (XDP_TX), so a frame
// sent from the peer is forwarded and counted as tx.
func forwardConfig(ifindex int) *router.Config {
	cfg := testRouterConfig()
	found := false
	for i := range cfg.Interfaces {
		if cfg.Interfaces[i].Ifindex == uint32(ifindex) {
			cfg.Interfaces[i].StrictDestMAC = false // test frames carry another MAC
			found = true
		}
	}
	if !found {
		cfg.Interfaces = append(cfg.Interfaces, router.Interface{Ifindex: uint32(ifindex), MAC: "02:00:00:00:0a:01"})
	}
	cfg.NextHops = append(cfg.NextHops, router.NextHop{Name: "back", Ifindex: uint32(ifindex), MAC: "02:00:00:00:0a:fe"})
	cfg.Routes = append(cfg.Routes, router.Route{Prefix: "203.0.113.0/24", Via: "back"})
	return cfg
}

// tailCallAttachments adds a prog-array slot "mph_slot" to spec for the
// entry program main and returns the attachments of an NF run without an
// interface: main in that slot, and every tail-call target in its own
// slot of the object's prog arrays.
func tailCallAttachments(spec *ebpf.CollectionSpec, main string) []Attachment {
	spec.Maps["mph_slot"] = &ebpf.MapSpec{Name: "mph_slot", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	atts := []Attachment{{Program: main, Kind: TailCall, ProgArray: "mph_slot"}}
	for _, name := range sortedMapNames(spec) {
		ms := spec.Maps[name]
		if ms.Type != ebpf.ProgramArray {
			continue
		}
		for _, kv := range ms.Contents {
			prog, ok := kv.Value.(string)
			idx, ok2 := kv.Key.(uint32)
			if ok && ok2 {
				atts = append(atts, Attachment{Program: prog, Kind: TailCall, ProgArray: name, Index: idx})
			}
		}
	}
	return atts
}
