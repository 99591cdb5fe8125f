//go:build linux

package l2switch

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpRedirect = 4
)

const (
	macH1     = "02:00:00:00:00:01"
	macH2     = "02:00:00:00:00:02"
	macH3     = "02:00:00:00:00:03"
	macStatic = "02:00:5e:00:01:01"
	macBcast  = "ff:ff:ff:ff:ff:ff"
	macMcast  = "01:00:5e:00:00:fb"
)

// env is a network namespace with four veth ends used as switch ports:
// BPF_PROG_TEST_RUN only accepts an ingress ifindex of an existing device
// in the caller's namespace.
type env struct {
	ns  netns.NsHandle
	idx map[string]uint32 // port name -> ifindex; "lo" is never a port
}

func newEnv(t *testing.T) *env {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New() // also moves this thread into it
	if err == nil {
		err = netns.Set(orig)
	}
	orig.Close()
	if err != nil {
		// The thread may be in the wrong namespace: let it die with the
		// goroutine instead of unlocking it.
		t.Fatalf("create netns: %v", err)
	}
	runtime.UnlockOSThread()
	// Closing the last handle destroys the namespace and its veths.
	t.Cleanup(func() { ns.Close() })

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e := &env{ns: ns, idx: map[string]uint32{"lo": 1}}
	for _, pair := range [][2]string{{"A", "B"}, {"C", "D"}} {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sw" + pair[0]}, PeerName: "sw" + pair[1]}
		if err := h.LinkAdd(veth); err != nil {
			t.Fatalf("add veth: %v", err)
		}
		for _, n := range pair {
			l, err := h.LinkByName("sw" + n)
			if err != nil {
				t.Fatal(err)
			}
			e.idx[n] = uint32(l.Attrs().Index)
		}
	}
	return e
}

// xdpMd mirrors struct xdp_md for the BPF_PROG_TEST_RUN context.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run executes prog on pkt as if received on ifindex, from inside the
// namespace that holds the device.
func (e *env) run(t *testing.T, prog *ebpf.Program, ifindex uint32, pkt []byte) (uint32, []byte) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(e.ns); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	out := make([]byte, len(pkt)+64)
	opts := ebpf.RunOptions{Data: pkt, DataOut: out,
		Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: ifindex}}
	ret, runErr := prog.Run(&opts)
	if err := netns.Set(orig); err != nil {
		t.Fatalf("restore netns: %v", err) // thread stays locked and dies
	}
	runtime.UnlockOSThread()
	if runErr != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", runErr)
	}
	return ret, opts.DataOut
}

func monotonicNs(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// frame is an Ethernet frame with optional tags and an IPv4/UDP payload.
type frame struct {
	dst, src string
	tags     []uint16 // TCIs, outermost first
	qinq     bool
	arp      bool
}

func (f frame) bytes(t *testing.T) []byte {
	t.Helper()
	next := layers.EthernetTypeIPv4
	if f.arp {
		next = layers.EthernetTypeARP
	}
	eth := &layers.Ethernet{SrcMAC: mac(t, f.src), DstMAC: mac(t, f.dst), EthernetType: next}
	ls := []gopacket.SerializableLayer{eth}
	for i, tci := range f.tags {
		typ := layers.EthernetTypeDot1Q
		if i == 0 && f.qinq {
			typ = layers.EthernetTypeQinQ
		}
		if i == 0 {
			eth.EthernetType = typ
		} else {
			ls[len(ls)-1].(*layers.Dot1Q).Type = typ
		}
		ls = append(ls, &layers.Dot1Q{Priority: uint8(tci >> 13), VLANIdentifier: tci & 0xfff, Type: next})
	}
	if f.arp {
		ls = append(ls, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
			SourceHwAddress: mac(t, f.src), SourceProtAddress: []byte{10, 0, 0, 1},
			DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 2}})
	} else {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
			SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
		udp := &layers.UDP{SrcPort: 5000, DstPort: 6000}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, ip, udp, gopacket.Payload("l2switch test payload"))
	}
	return kerneltest.Frame(t, ls...)
}

func mac(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func withTags(f frame, tags ...uint16) *frame {
	f.tags = tags
	return &f
}

// baseConfig: A and B are access ports of VLAN 10; A also carries VLAN 20
// tagged; C is a tagged-only trunk for VLANs 10, 20 and 30; D is disabled.
func baseConfig(e *env) *Config {
	A, B, C, D := e.idx["A"], e.idx["B"], e.idx["C"], e.idx["D"]
	return &Config{
		Ports: []Port{
			{Ifindex: A, Name: "A", PVID: 10},
			{Ifindex: B, Name: "B", PVID: 10},
			{Ifindex: C, Name: "C"},
			{Ifindex: D, Name: "D", PVID: 10, Disabled: true},
		},
		VLANs: []VLAN{
			{ID: 10, Untagged: []uint32{A, B, D}, Tagged: []uint32{C}},
			{ID: 20, Tagged: []uint32{A, C}},
			{ID: 30, Tagged: []uint32{C}},
		},
		StaticFDB: []StaticEntry{{MAC: macStatic, VLAN: 10, Ifindex: B}},
	}
}

// fdbRow describes an FDB entry by port name. age is how old a preset
// entry is; in expectations, fresh means learned or refreshed by the run.
type fdbRow struct {
	mac   string
	vid   uint16
	port  string
	age   time.Duration
	fresh bool
}

type swCase struct {
	name    string
	cfg     func(*Config)
	pre     []fdbRow // dynamic entries present before the run
	port    string   // ingress port
	in      frame
	mutate  func([]byte) []byte
	verdict uint32
	want    *frame   // expected output frame; nil: input unchanged
	fdb     []fdbRow // expected dynamic entries afterwards (static ones are checked separately)
	// Expected ingress counters besides rx, and the egress port for tx.
	outcome string // "flooded", "dropped_vlan", "dropped_hairpin", "dropped_invalid", or "" when forwarded
	learned uint64
	moved   uint64
	egress  string
}

func swCases() []swCase {
	h1h2 := frame{dst: macH2, src: macH1}
	h1h2Pri := *withTags(h1h2, 0xa000) // priority 5, VID 0
	return []swCase{
		{name: "unknown unicast floods and learns", port: "A", in: h1h2, verdict: xdpPass,
			fdb: []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}}, outcome: "flooded", learned: 1},
		{name: "broadcast ARP floods and learns", port: "B", in: frame{dst: macBcast, src: macH1, arp: true}, verdict: xdpPass,
			fdb: []fdbRow{{mac: macH1, vid: 10, port: "B", fresh: true}}, outcome: "flooded", learned: 1},
		{name: "multicast floods", port: "A", in: frame{dst: macMcast, src: macH1}, verdict: xdpPass,
			fdb: []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}}, outcome: "flooded", learned: 1},
		{name: "known unicast access to access", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "B", age: time.Second}},
			verdict: xdpRedirect,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "B", age: time.Second}},
			learned: 1, egress: "B"},
		{name: "access to trunk pushes tag", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "C", age: time.Second}},
			verdict: xdpRedirect, want: withTags(h1h2, 10),
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "C", age: time.Second}},
			learned: 1, egress: "C"},
		{name: "trunk to access pops tag", port: "C", in: *withTags(h1h2, 10),
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "A", age: time.Second}},
			verdict: xdpRedirect, want: &h1h2,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "C", fresh: true}, {mac: macH2, vid: 10, port: "A", age: time.Second}},
			learned: 1, egress: "A"},
		{name: "trunk to tagged member keeps tag", port: "C", in: *withTags(h1h2, 0x6014),
			pre:     []fdbRow{{mac: macH2, vid: 20, port: "A", age: time.Second}},
			verdict: xdpRedirect,
			fdb:     []fdbRow{{mac: macH1, vid: 20, port: "C", fresh: true}, {mac: macH2, vid: 20, port: "A", age: time.Second}},
			learned: 1, egress: "A"},
		{name: "priority tag gets PVID on trunk egress", port: "A", in: h1h2Pri,
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "C", age: time.Second}},
			verdict: xdpRedirect, want: withTags(h1h2, 0xa00a),
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "C", age: time.Second}},
			learned: 1, egress: "C"},
		{name: "priority tag popped on access egress", port: "A", in: h1h2Pri,
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "B", age: time.Second}},
			verdict: xdpRedirect, want: &h1h2,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "B", age: time.Second}},
			learned: 1, egress: "B"},
		{name: "QinQ classified by outer tag, outer tag popped", port: "C", in: frame{dst: macH2, src: macH1, tags: []uint16{10, 99}, qinq: true},
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "B", age: time.Second}},
			verdict: xdpRedirect, want: withTags(h1h2, 99),
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "C", fresh: true}, {mac: macH2, vid: 10, port: "B", age: time.Second}},
			learned: 1, egress: "B"},
		{name: "hairpin drops", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "A", age: time.Second}},
			verdict: xdpDrop,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "A", age: time.Second}},
			outcome: "dropped_hairpin", learned: 1},
		{name: "VLAN the port is not in drops without learning", port: "B", in: *withTags(h1h2, 20), verdict: xdpDrop, outcome: "dropped_vlan"},
		{name: "unconfigured VLAN drops", port: "C", in: *withTags(h1h2, 99), verdict: xdpDrop, outcome: "dropped_vlan"},
		{name: "untagged on tagged-only trunk drops", port: "C", in: h1h2, verdict: xdpDrop, outcome: "dropped_vlan"},
		{name: "egress port not in VLAN drops", port: "C", in: *withTags(h1h2, 20),
			pre:     []fdbRow{{mac: macH2, vid: 20, port: "B", age: time.Second}},
			verdict: xdpDrop,
			fdb:     []fdbRow{{mac: macH1, vid: 20, port: "C", fresh: true}, {mac: macH2, vid: 20, port: "B", age: time.Second}},
			outcome: "dropped_vlan", learned: 1},
		{name: "egress port disabled drops", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "D", age: time.Second}},
			verdict: xdpDrop,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "D", age: time.Second}},
			outcome: "dropped_vlan", learned: 1},
		{name: "disabled port drops without learning", port: "D", in: h1h2, verdict: xdpDrop, outcome: "dropped_invalid"},
		{name: "unconfigured port drops", port: "lo", in: h1h2, verdict: xdpDrop, outcome: "dropped_invalid"},
		{name: "multicast source drops", port: "A", in: frame{dst: macH2, src: macMcast}, verdict: xdpDrop, outcome: "dropped_invalid"},
		{name: "zero source drops", port: "A", in: frame{dst: macH2, src: "00:00:00:00:00:00"}, verdict: xdpDrop, outcome: "dropped_invalid"},
		{name: "truncated VLAN tag drops", port: "C", in: *withTags(h1h2, 10), mutate: func(b []byte) []byte { return b[:16] },
			verdict: xdpDrop, outcome: "dropped_invalid"},
		{name: "bad IHL is switched (L2 does not parse L3)", port: "A", in: h1h2, mutate: func(b []byte) []byte { b[14] = 0x43; return b },
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "B", age: time.Second}},
			verdict: xdpRedirect,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "B", age: time.Second}},
			learned: 1, egress: "B"},
		{name: "moved MAC updates the entry", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH1, vid: 10, port: "B", age: time.Second}},
			verdict: xdpPass,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}},
			outcome: "flooded", moved: 1},
		{name: "known source is not rewritten", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH1, vid: 10, port: "A", age: 10 * time.Second}},
			verdict: xdpPass,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", age: 10 * time.Second}},
			outcome: "flooded"},
		{name: "old known source refreshed in place", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH1, vid: 10, port: "A", age: 200 * time.Second}},
			verdict: xdpPass,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}},
			outcome: "flooded"},
		{name: "expired source relearned", port: "A", in: h1h2,
			pre:     []fdbRow{{mac: macH1, vid: 10, port: "A", age: 400 * time.Second}},
			verdict: xdpPass,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}},
			outcome: "flooded", learned: 1},
		{name: "expired destination floods", port: "A", in: h1h2, cfg: func(c *Config) { c.AgingTime = "5s" },
			pre:     []fdbRow{{mac: macH2, vid: 10, port: "B", age: 6 * time.Second}},
			verdict: xdpPass,
			fdb:     []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}, {mac: macH2, vid: 10, port: "B", age: 6 * time.Second}},
			outcome: "flooded", learned: 1},
		{name: "static entry forwards", port: "A", in: frame{dst: macStatic, src: macH1}, verdict: xdpRedirect,
			fdb: []fdbRow{{mac: macH1, vid: 10, port: "A", fresh: true}}, learned: 1, egress: "B"},
		{name: "static entry does not move", port: "A", in: frame{dst: macBcast, src: macStatic}, verdict: xdpPass,
			outcome: "flooded"},
		{name: "learning disabled globally", port: "A", in: h1h2, cfg: func(c *Config) { off := false; c.Learning = &off },
			verdict: xdpPass, outcome: "flooded"},
		{name: "learning disabled on the port", port: "A", in: h1h2, cfg: func(c *Config) { c.Ports[0].NoLearning = true },
			verdict: xdpPass, outcome: "flooded"},
	}
}

func loadSwitch(t *testing.T, cfg *Config) *ebpf.Collection {
	t.Helper()
	coll, err := Load(cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { coll.Close() })
	return coll
}

func TestL2Switch(t *testing.T) {
	kerneltest.Require(t)
	e := newEnv(t)
	for _, tc := range swCases() {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(e)
			if tc.cfg != nil {
				tc.cfg(cfg)
			}
			coll := loadSwitch(t, cfg)
			fdb := coll.Maps[MapFDB]
			now := monotonicNs(t)
			preTS := map[string]uint64{}
			for _, r := range tc.pre {
				k := bpfFdbKey{Vid: r.vid}
				copy(k.Mac[:], mac(t, r.mac))
				ts := now - uint64(r.age)
				preTS[fmt.Sprint(r.mac, r.vid)] = ts
				if err := fdb.Put(&k, &bpfFdbEntry{Ifindex: e.idx[r.port], UpdatedNs: ts}); err != nil {
					t.Fatal(err)
				}
			}

			in := tc.in.bytes(t)
			if tc.mutate != nil {
				in = tc.mutate(in)
			}
			orig := bytes.Clone(in)
			t0 := monotonicNs(t)
			verdict, out := e.run(t, coll.Programs[Program], e.idx[tc.port], in)
			t1 := monotonicNs(t)

			if verdict != tc.verdict {
				t.Errorf("verdict %d, want %d", verdict, tc.verdict)
			}
			want := orig
			if tc.want != nil {
				want = tc.want.bytes(t)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output frame differs\n got %x\nwant %x", out, want)
			}

			// FDB: the static entry is untouched, dynamic entries as expected.
			got, err := ReadFDB(fdb)
			if err != nil {
				t.Fatal(err)
			}
			var dynamic []FDBEntry
			for _, g := range got {
				if g.Static {
					if g.MAC.String() != macStatic || g.VLAN != 10 || g.Ifindex != e.idx["B"] || g.UpdatedNs != 0 {
						t.Errorf("static entry changed: %+v", g)
					}
					continue
				}
				dynamic = append(dynamic, g)
			}
			if len(dynamic) != len(tc.fdb) {
				t.Errorf("fdb has %d dynamic entries %+v, want %d", len(dynamic), dynamic, len(tc.fdb))
			}
			for _, w := range tc.fdb {
				var found *FDBEntry
				for i := range dynamic {
					if dynamic[i].MAC.String() == w.mac && dynamic[i].VLAN == w.vid {
						found = &dynamic[i]
					}
				}
				if found == nil {
					t.Errorf("fdb: no entry for %s VLAN %d", w.mac, w.vid)
					continue
				}
				if found.Ifindex != e.idx[w.port] {
					t.Errorf("fdb %s VLAN %d: ifindex %d, want %d (%s)", w.mac, w.vid, found.Ifindex, e.idx[w.port], w.port)
				}
				if w.fresh {
					if found.UpdatedNs < t0 || found.UpdatedNs > t1 {
						t.Errorf("fdb %s VLAN %d: timestamp %d not within the run [%d, %d]", w.mac, w.vid, found.UpdatedNs, t0, t1)
					}
				} else if ts := preTS[fmt.Sprint(w.mac, w.vid)]; found.UpdatedNs != ts {
					t.Errorf("fdb %s VLAN %d: timestamp %d rewritten, want %d", w.mac, w.vid, found.UpdatedNs, ts)
				}
			}

			// Per-port counters.
			stats, err := ReadStats(coll.Maps[MapStats])
			if err != nil {
				t.Fatal(err)
			}
			wantStats := map[uint32]PortStats{}
			ing := PortStats{RxPackets: 1, RxBytes: uint64(len(in)), Learned: tc.learned, Moved: tc.moved}
			switch tc.outcome {
			case "flooded":
				ing.Flooded = 1
			case "dropped_vlan":
				ing.DroppedVLAN = 1
			case "dropped_hairpin":
				ing.DroppedHairpin = 1
			case "dropped_invalid":
				ing.DroppedInvalid = 1
			case "":
			default:
				t.Fatalf("bad outcome %q", tc.outcome)
			}
			wantStats[e.idx[tc.port]] = ing
			if tc.egress != "" {
				wantStats[e.idx[tc.egress]] = PortStats{TxPackets: 1, TxBytes: uint64(len(want))}
			}
			if len(stats) != len(wantStats) {
				t.Errorf("stats for %d ports %+v, want %d", len(stats), stats, len(wantStats))
			}
			for ifindex, w := range wantStats {
				if stats[ifindex] != w {
					t.Errorf("stats of ifindex %d:\n got %+v\nwant %+v", ifindex, stats[ifindex], w)
				}
			}
		})
	}
}

// TestL2SwitchLearningSequence runs a conversation through one switch
// instance: unknown unicast floods, the reply is forwarded to the learned
// port, and a host that moves is followed.
func TestL2SwitchLearningSequence(t *testing.T) {
	kerneltest.Require(t)
	e := newEnv(t)
	coll := loadSwitch(t, baseConfig(e))
	prog := coll.Programs[Program]
	steps := []struct {
		port    string
		in      frame
		verdict uint32
		want    *frame
	}{
		{"A", frame{dst: macH2, src: macH1}, xdpPass, nil},     // H2 unknown: flood, learn H1@A
		{"B", frame{dst: macH1, src: macH2}, xdpRedirect, nil}, // H1@A known: forward, learn H2@B
		{"A", frame{dst: macH2, src: macH1}, xdpRedirect, nil}, // H2@B known now
		{"C", frame{dst: macH2, src: macH1, tags: []uint16{10}}, xdpRedirect, // H1 moves to the trunk
			&frame{dst: macH2, src: macH1}},
		{"B", frame{dst: macH1, src: macH2}, xdpRedirect, withTags(frame{dst: macH1, src: macH2}, 10)}, // follows H1 to C
		{"C", frame{dst: macH3, src: macH1, tags: []uint16{20}}, xdpPass, nil},                         // same MAC, other VLAN: separate entry
	}
	for i, s := range steps {
		in := s.in.bytes(t)
		verdict, out := e.run(t, prog, e.idx[s.port], in)
		want := in
		if s.want != nil {
			want = s.want.bytes(t)
		}
		if verdict != s.verdict || !bytes.Equal(out, want) {
			t.Fatalf("step %d: verdict %d out %x, want %d %x", i, verdict, out, s.verdict, want)
		}
	}
	got, err := ReadFDB(coll.Maps[MapFDB])
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, g := range got {
		rows = append(rows, fmt.Sprintf("%s/%d@%d", g.MAC, g.VLAN, g.Ifindex))
	}
	wantRows := []string{
		fmt.Sprintf("%s/10@%d", macH1, e.idx["C"]),
		fmt.Sprintf("%s/10@%d", macH2, e.idx["B"]),
		fmt.Sprintf("%s/10@%d", macStatic, e.idx["B"]),
		fmt.Sprintf("%s/20@%d", macH1, e.idx["C"]),
	}
	if strings.Join(rows, " ") != strings.Join(wantRows, " ") {
		t.Errorf("fdb:\n got %v\nwant %v", rows, wantRows)
	}
	stats, err := ReadStats(coll.Maps[MapStats])
	if err != nil {
		t.Fatal(err)
	}
	if s := stats[e.idx["C"]]; s.Moved != 1 || s.Learned != 1 || s.RxPackets != 2 {
		t.Errorf("trunk stats %+v, want 1 moved, 1 learned, 2 received", s)
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() *Config { return ExampleConfig() }
	tests := []struct {
		name   string
		modify func(c *Config)
		errSub string
	}{
		{"valid", func(c *Config) {}, ""},
		{"learning off", func(c *Config) { off := false; c.Learning = &off }, ""},
		{"bad aging time", func(c *Config) { c.AgingTime = "soon" }, "aging_time"},
		{"aging below 1s", func(c *Config) { c.AgingTime = "10ms" }, "below 1s"},
		{"ifindex 0", func(c *Config) { c.Ports[0].Ifindex = 0 }, "out of range"},
		{"ifindex too big", func(c *Config) { c.Ports[0].Ifindex = 300 }, "out of range"},
		{"duplicate port", func(c *Config) { c.Ports[1].Ifindex = 2 }, "listed twice"},
		{"PVID 4095", func(c *Config) { c.Ports[0].PVID = 4095 }, "PVID 4095"},
		{"PVID without membership", func(c *Config) { c.Ports[0].PVID = 20 }, "not a member of its PVID 20"},
		{"too many ports", func(c *Config) {
			c.Ports = nil
			for i := 1; i <= MaxPorts+1; i++ {
				c.Ports = append(c.Ports, Port{Ifindex: uint32(i)})
			}
		}, "at most 64"},
		{"VLAN 0", func(c *Config) { c.VLANs[0].ID = 0 }, "out of range"},
		{"VLAN 4095", func(c *Config) { c.VLANs[0].ID = 4095 }, "out of range"},
		{"duplicate VLAN", func(c *Config) { c.VLANs[1].ID = 10 }, "defined twice"},
		{"VLAN member not a port", func(c *Config) { c.VLANs[1].Tagged = append(c.VLANs[1].Tagged, 9) }, "not a configured port"},
		{"port tagged and untagged", func(c *Config) { c.VLANs[0].Tagged = append(c.VLANs[0].Tagged, 2) }, "more than once"},
		{"empty VLAN", func(c *Config) { c.VLANs[1].Tagged = nil }, "no member ports"},
		{"static bad MAC", func(c *Config) { c.StaticFDB[0].MAC = "zz" }, "bad MAC"},
		{"static multicast MAC", func(c *Config) { c.StaticFDB[0].MAC = "01:00:5e:00:00:01" }, "not a unicast"},
		{"static unknown VLAN", func(c *Config) { c.StaticFDB[0].VLAN = 30 }, "VLAN 30 is not configured"},
		{"static unknown port", func(c *Config) { c.StaticFDB[0].Ifindex = 9 }, "not a configured port"},
		{"static port outside VLAN", func(c *Config) { c.StaticFDB[0].VLAN = 20; c.StaticFDB[0].Ifindex = 2 }, "not a member of VLAN 20"},
		{"static duplicate", func(c *Config) { c.StaticFDB = append(c.StaticFDB, c.StaticFDB[0]) }, "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.modify(c)
			err := c.Validate()
			if tt.errSub == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errSub) {
				t.Fatalf("error %v, want it to mention %q", err, tt.errSub)
			}
		})
	}
}

func TestStateMatchesSpec(t *testing.T) {
	cfg := ExampleConfig()
	s, err := cfg.State()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := Spec()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(spec); err != nil {
		t.Fatal(err)
	}
	if _, ok := spec.Programs[Program]; !ok {
		t.Fatalf("spec has no program %s", Program)
	}
	for m, n := range map[string]int{MapPorts: 4, MapVLANs: 2, MapFDB: 1} {
		if got := len(s.Maps[m].Entries); got != n {
			t.Errorf("map %s: %d entries, want %d", m, got, n)
		}
	}
	if got := s.Variables[VarAgingNs]; binary.LittleEndian.Uint64(got) != uint64(300*time.Second) {
		t.Errorf("aging variable %x", []byte(got))
	}
	if got := s.Variables[VarLearning]; !bytes.Equal(got, []byte{1}) {
		t.Errorf("learning variable %x, want 01", []byte(got))
	}
	// VLAN 10: ports 0,1,2 untagged, port 3 tagged.
	v := s.Maps[MapVLANs].Entries[0]
	if want := []byte{10, 0, 0, 0}; !bytes.Equal(v.Key, want) {
		t.Errorf("vlan key %x, want %x", []byte(v.Key), want)
	}
	if want := []byte{0x0f, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0, 0}; !bytes.Equal(v.Value, want) {
		t.Errorf("vlan value %x, want %x", []byte(v.Value), want)
	}
	// FDB key: MAC bytes then VLAN id little endian.
	f := s.Maps[MapFDB].Entries[0]
	if want := []byte{0x02, 0x00, 0x5e, 0x00, 0x01, 0x01, 10, 0}; !bytes.Equal(f.Key, want) {
		t.Errorf("fdb key %x, want %x", []byte(f.Key), want)
	}
}
