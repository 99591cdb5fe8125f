package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"gopkg.in/yaml.v3"

	"github.com/morpheus-go/morpheus/agent"
	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/internal/kerneltest"
)

const validConfig = `
api:
  listen: 127.0.0.1:9099
  token_file: token
pin_dir: /sys/fs/bpf/morpheus
optimizer:
  period: 5s
  passes: [mapinline, dce]
  max_inline: 16
  profile: {sample_rate: 0.1, window: 200ms, decay: 0.25, sampler: prandom}
nfs:
  - name: r1
    builtin: router
    heatmap: heat.json
    config:
      interfaces: [{ifindex: 2, mac: "02:00:00:00:02:01"}]
      nexthops: [{name: gw, ifindex: 2, mac: "02:00:00:00:02:fe"}]
      routes: [{prefix: 0.0.0.0/0, via: gw}]
    optimizer: {top_k: 4}
    programs:
      - name: xdp_router
        attach:
          - {interface: eth0, xdp: native}
          - {interface: eth1, netns: /var/run/netns/x, xdp: generic}
  - name: f1
    object: /abs/fw.o
    state: state.json
    programs:
      - name: xdp_firewall
        optimize: false
        attach: [{interface: eth2, tc: egress, priority: 3, handle: 7}]
      - name: fw_conntrack
        attach: [{prog_array: fw_stages, index: 1}]
`

func TestParseDaemonConfig(t *testing.T) {
	c, err := parseDaemonConfig(strings.NewReader(validConfig), "/etc/morpheus")
	if err != nil {
		t.Fatal(err)
	}
	if c.API.TokenFile != "/etc/morpheus/token" || c.NFs[0].Heatmap != "/etc/morpheus/heat.json" || c.NFs[1].State != "/etc/morpheus/state.json" || c.NFs[1].Object != "/abs/fw.o" {
		t.Errorf("relative paths not resolved against the config's directory: %+v", c)
	}
	o := c.Optimizer.merge(c.NFs[0].Optimizer)
	if o.Period != 5*time.Second || o.TopK != 4 || o.MaxInline != 16 {
		t.Errorf("merged optimizer options %+v", o)
	}
	if po, err := o.Profile.options(); err != nil || po.Rate != 0.1 || po.Window != 200*time.Millisecond || po.Decay != 0.25 || po.Sampler.String() != "prandom" {
		t.Errorf("profile options %+v, %v", po, err)
	}
	if p := o.passOptions(); p.TopK != 4 || p.MaxInline != 16 || strings.Join(p.Passes, ",") != "mapinline,dce" {
		t.Errorf("pass options %+v", p)
	}
	var got []string
	for _, n := range c.NFs {
		for _, p := range n.Programs {
			for _, a := range p.Attach {
				at, err := a.attachment(p.Name)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintf("%s %s %s %d/%d", at, at.XDPMode, at.Netns, at.Priority, at.Handle))
			}
		}
	}
	want := []string{
		"xdp_router xdp@eth0 native  0/0",
		"xdp_router xdp@eth1 generic /var/run/netns/x 0/0",
		"xdp_firewall tc-egress@eth2 auto  3/7",
		"fw_conntrack tail-call@fw_stages[1] auto  0/0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("attachments:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if c.NFs[1].Programs[0].Optimize == nil || *c.NFs[1].Programs[0].Optimize {
		t.Errorf("optimize: false not parsed")
	}
	if def, err := parseDaemonConfig(strings.NewReader("nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{interface: e, xdp: auto}]}]}]"), "."); err != nil || def.API.Listen != api.DefaultAddress {
		t.Errorf("default listen address: %v %+v", err, def)
	}
}

// TestReadmeConfig keeps the example configuration in the README valid.
func TestReadmeConfig(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## Daemon and HTTP API")
	if !ok {
		t.Fatal("README has no daemon section")
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	if !ok {
		t.Fatal("README daemon section has no yaml example")
	}
	block, _, _ = strings.Cut(block, "```")
	c, err := parseDaemonConfig(strings.NewReader(block), "/etc/morpheus")
	if err != nil {
		t.Fatalf("README example: %v", err)
	}
	if _, _, err := builtins[c.NFs[0].Builtin](&c.NFs[0].Config); err != nil {
		t.Fatalf("README example's router config: %v", err)
	}
}

func TestParseDaemonConfigErrors(t *testing.T) {
	const prog = `programs: [{name: p, attach: [{interface: e, xdp: native}]}]`
	tests := []struct {
		name, yaml, err string
	}{
		{"no nfs", `api: {listen: "unix:/x"}`, "no network functions"},
		{"unknown field", `nfs: [{name: a, objekt: a.o, ` + prog + `}]`, "field objekt not found"},
		{"unknown top-level field", "apis: {}\nnfs: []", "field apis not found"},
		{"missing name", `nfs: [{object: a.o, ` + prog + `}]`, "name is missing"},
		{"name with colon", `nfs: [{name: "a:b", object: a.o, ` + prog + `}]`, "may not contain"},
		{"duplicate name", `nfs: [{name: a, object: a.o, ` + prog + `}, {name: a, object: b.o, ` + prog + `}]`, "name used twice"},
		{"object and builtin", `nfs: [{name: a, object: a.o, builtin: router, ` + prog + `}]`, "exactly one of object and builtin"},
		{"neither", `nfs: [{name: a, ` + prog + `}]`, "exactly one of object and builtin"},
		{"unknown builtin", `nfs: [{name: a, builtin: nat, ` + prog + `}]`, `unknown builtin "nat"`},
		{"config without builtin", `nfs: [{name: a, object: a.o, config: {x: 1}, ` + prog + `}]`, "config is for builtin"},
		{"config and state", `nfs: [{name: a, builtin: router, state: s.json, config: {routes: []}, ` + prog + `}]`, "config or state, not both"},
		{"no programs", `nfs: [{name: a, object: a.o}]`, "no programs"},
		{"no attach", `nfs: [{name: a, object: a.o, programs: [{name: p}]}]`, "no attach points"},
		{"two kinds", `nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{interface: e, xdp: native, tc: ingress}]}]}]`, "exactly one of xdp, tc and prog_array"},
		{"bad xdp mode", `nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{interface: e, xdp: offload}]}]}]`, `xdp mode "offload"`},
		{"bad tc hook", `nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{interface: e, tc: both}]}]}]`, `tc hook "both"`},
		{"no interface", `nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{xdp: native}]}]}]`, "interface is missing"},
		{"slot without index", `nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{prog_array: pa}]}]}]`, "needs an index"},
		{"slot with interface", `nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{prog_array: pa, index: 0, interface: e}]}]}]`, "takes no interface"},
		{"bad pass", `optimizer: {passes: [inline]}` + "\n" + `nfs: [{name: a, object: a.o, ` + prog + `}]`, "optimizer.passes"},
		{"bad sample rate", `optimizer: {profile: {sample_rate: 5}}` + "\n" + `nfs: [{name: a, object: a.o, ` + prog + `}]`, "sample_rate 5"},
		{"bad sampler", `optimizer: {profile: {sampler: dice}}` + "\n" + `nfs: [{name: a, object: a.o, ` + prog + `}]`, "dice"},
		{"bad duration", `optimizer: {period: soon}` + "\n" + `nfs: [{name: a, object: a.o, ` + prog + `}]`, "soon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseDaemonConfig(strings.NewReader(tt.yaml), "/etc")
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("error %v, want %q", err, tt.err)
			}
		})
	}
}

func TestBuiltinConfig(t *testing.T) {
	tests := []struct {
		builtin, config, err string
	}{
		{"router", `{interfaces: [{ifindex: 2, mac: "02:00:00:00:02:01"}], nexthops: [{name: gw, ifindex: 2, mac: "02:00:00:00:02:fe"}], routes: [{prefix: 10.0.0.0/8, via: gw}]}`, ""},
		{"router", `{routes: [{prefix: 10.0.0.0/8, via: nowhere}]}`, "nowhere"},
		{"router", `{rutes: []}`, "field rutes not found"},
		{"ddos", `{packets_per_window: 100, window: 1s, blocklist: [{source: 10.0.0.0/8}]}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.builtin+" "+tt.config, func(t *testing.T) {
			var node yaml.Node
			if err := yaml.Unmarshal([]byte(tt.config), &node); err != nil {
				t.Fatal(err)
			}
			spec, state, err := builtins[tt.builtin](node.Content[0])
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec == nil || state == nil || len(state.Maps) == 0 {
				t.Fatalf("spec %v, state %+v", spec != nil, state)
			}
		})
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		err     string
	}{
		{"ok", "  tok3n\n", 0o600, ""},
		{"world readable", "tok", 0o644, "accessible by other users"},
		{"group readable", "tok", 0o640, "chmod 600"},
		{"empty", "\n", 0o600, "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name)
			if err := os.WriteFile(p, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			tok, err := readToken(p)
			if tt.err == "" {
				if err != nil || tok != "tok3n" {
					t.Fatalf("readToken = %q, %v", tok, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("error %v, want %q", err, tt.err)
			}
		})
	}
	if _, err := readToken(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing token file accepted")
	}
}

// TestRunRefusesRemote checks the listen policy before anything is loaded.
func TestRunRefusesRemote(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(cfg, []byte(`nfs: [{name: a, object: a.o, programs: [{name: p, attach: [{interface: e, xdp: native}]}]}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		f    runFlags
		err  string
	}{
		{"non-loopback", runFlags{config: cfg, listen: "0.0.0.0:0", logLevel: "info"}, "not a loopback address"},
		{"remote without token", runFlags{config: cfg, listen: "0.0.0.0:0", allowRemote: true, logLevel: "info"}, "needs a token"},
		{"bad log level", runFlags{config: cfg, logLevel: "loud"}, "--log-level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runDaemon(t.Context(), tt.f, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("error %v, want %q", err, tt.err)
			}
		})
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testNetns creates a named network namespace holding a veth pair
// veth0/veth1 and returns its path and the pair's ifindexes.
func testNetns(t *testing.T) (path string, if0, if1 int) {
	t.Helper()
	name := fmt.Sprintf("morpheus-run-%d", os.Getpid())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name) // switches this thread into it
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("creating network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("leaving the test namespace: %v", err) // thread stays locked and is discarded
	}
	orig.Close()
	runtime.UnlockOSThread()
	t.Cleanup(func() {
		ns.Close()
		netns.DeleteNamed(name)
	})

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth pair: %v", err)
	}
	for i, n := range []string{"veth0", "veth1"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if0 = l.Attrs().Index
		} else {
			if1 = l.Attrs().Index
		}
	}
	return "/var/run/netns/" + name, if0, if1
}

// xdpAttached reports whether an XDP program is attached to veth0.
func xdpAttached(t *testing.T, nsPath string) bool {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("veth0")
	if err != nil {
		t.Fatal(err)
	}
	x := l.Attrs().Xdp
	return x != nil && x.Attached
}

// TestRunDaemon runs the router under the daemon in a network namespace
// and drives it through the API: status, bpf_stats, a forced cycle, a
// guarded map update, metrics, then a clean shutdown.
func TestRunDaemon(t *testing.T) {
	kerneltest.Require(t)
	nsPath, if0, if1 := testNetns(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "morpheus.sock")
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("e2e-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`
api:
  listen: unix:%s
  token_file: token
optimizer:
  period: 1h
  seed: 1
  profile: {window: 100ms}
nfs:
  - name: edge
    builtin: router
    config:
      interfaces:
        - {ifindex: %d, mac: "02:00:00:00:00:01"}
        - {ifindex: %d, mac: "02:00:00:00:00:02"}
      nexthops:
        - {name: a, ifindex: %d, mac: "02:00:00:00:00:fa"}
        - {name: b, ifindex: %d, mac: "02:00:00:00:00:fb"}
      routes:
        - {prefix: 10.0.0.0/8, via: a}
        - {prefix: 192.168.0.0/16, via: b}
        - {prefix: 198.51.100.0/24, action: blackhole}
    programs:
      - name: xdp_router
        attach: [{interface: veth0, netns: %s, xdp: generic}]
`, sock, if0, if1, if0, if1, nsPath)
	cfgPath := filepath.Join(dir, "morpheus.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		// Through the command, so flags and the signal handling are
		// what a user gets.
		root := newRootCmd()
		root.SetOut(logs)
		root.SetErr(logs)
		root.SetArgs([]string{"run", "--config", cfgPath, "--log-level", "debug"})
		done <- root.ExecuteContext(ctx)
	}()
	defer func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs)
		}
	}()

	c, err := api.NewClient("unix:"+sock, "e2e-token")
	if err != nil {
		t.Fatal(err)
	}
	var progs []api.Program
	deadline := time.Now().Add(60 * time.Second)
	for {
		progs, err = c.Programs(ctx)
		if err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited early: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not answer: %v", err)
		}
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v mode %v, want 0600", err, fi.Mode())
	}
	if len(progs) != 1 || progs[0].ID() != "edge:xdp_router" || !strings.Contains(strings.Join(progs[0].Attach, " "), "xdp@veth0") {
		t.Fatalf("programs %+v", progs)
	}
	if !xdpAttached(t, nsPath) {
		t.Fatal("router not attached to veth0")
	}
	bad, err := api.NewClient("unix:"+sock, "wrong")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Programs(ctx); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token over the socket: %v", err)
	}

	// A forced cycle specializes the router to its three routes.
	res, err := c.Cycle(ctx, api.CycleRequest{Program: "xdp_router"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Programs) != 1 || res.Programs[0].Program != "xdp_router" {
		t.Fatalf("cycle result %+v", res)
	}
	switch res.Programs[0].Outcome {
	case string(agent.OutcomeSwapped), string(agent.OutcomeUnchanged):
	default:
		t.Fatalf("cycle outcome %+v, want swapped or unchanged (the first cycle of Run may have swapped already)", res.Programs[0])
	}
	p, err := c.Program(ctx, "xdp_router")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Optimized || p.Version < 1 || p.InstructionsRunning == p.InstructionsOriginal {
		t.Fatalf("after the cycle: %+v", p)
	}

	// Packets through the running program show up in bpf_stats.
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(p.ProgramID))
	if err != nil {
		t.Fatalf("opening the running program %d: %v", p.ProgramID, err)
	}
	frame := make([]byte, 64)
	copy(frame, []byte{0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00, 0x45})
	_, err = prog.Run(&ebpf.RunOptions{Data: frame, Repeat: 1000})
	prog.Close()
	if err != nil {
		t.Fatal(err)
	}
	if p, err = c.Program(ctx, "xdp_router"); err != nil || p.Run.Packets < 1000 || p.Run.RunTime <= 0 {
		t.Fatalf("run stats after 1000 test runs: %v %+v", err, p.Run)
	}

	// A guarded update through the API bumps the routes' guard.
	entries, err := c.Entries(ctx, "routes")
	if err != nil || len(entries) != 3 {
		t.Fatalf("routes: %v %+v", err, entries)
	}
	key := append([]byte{32, 0, 0, 0}, 198, 51, 100, 7)
	if _, err := c.Update(ctx, "routes", key, entries[0].Value); err != nil {
		t.Fatal(err)
	}
	if e, err := c.Lookup(ctx, "edge:routes", key); err != nil || !bytes.Equal(e.Value, entries[0].Value) {
		t.Fatalf("lookup after update: %v %+v", err, e)
	}
	if _, err := c.Update(ctx, "routes", key[:4], entries[0].Value); err == nil || !strings.Contains(err.Error(), "key has 4 bytes") {
		t.Fatalf("short key: %v", err)
	}
	st, err := c.Stats(ctx)
	if err != nil || st.GuardBumps < 1 || st.Cycles < 1 || st.Swaps < 1 || st.ProfileWindows < 1 {
		t.Fatalf("stats %v %+v", err, st)
	}
	// Events reach the API asynchronously (the agent publishes them to a
	// subscriber), so wait for the guard bump.
	for start := time.Now(); ; {
		evs, err := c.Events(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]bool{}
		for _, e := range evs {
			kinds[e.Kind] = true
		}
		if kinds[string(agent.EventCycle)] && kinds[string(agent.EventSwap)] && kinds[string(agent.EventGuardBump)] {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("events %+v lack a cycle, a swap or a guard bump", evs)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if _, err := c.Heatmaps(ctx, 5); err != nil {
		t.Fatal(err)
	}

	// Metrics over the socket.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://localhost/metrics", nil)
	req.Header.Set("Authorization", "Bearer e2e-token")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`morpheus_program_packets_total{nf="edge",program="xdp_router"}`, "morpheus_cycles_total", "morpheus_guard_bumps_total", "morpheus_profile_windows_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	req, _ = http.NewRequestWithContext(ctx, "GET", "http://localhost/", nil)
	if resp, err = hc.Do(req); err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "/static/app.js") {
		t.Errorf("status page: %d %s", resp.StatusCode, body)
	}

	// Disabling restores the original program; enabling optimizes again.
	if err := c.SetEnabled(ctx, "xdp_router", false); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Program(ctx, "xdp_router"); err != nil || p.Optimized || p.Enabled {
		t.Fatalf("after disable: %v %+v", err, p)
	}
	if err := c.SetEnabled(ctx, "xdp_router", true); err != nil {
		t.Fatal(err)
	}
	// Enabling queues a cycle of its own, so the forced one may find
	// nothing left to swap.
	if res, err := c.Cycle(ctx, api.CycleRequest{NF: "edge"}); err != nil || len(res.Programs) != 1 ||
		(res.Programs[0].Outcome != string(agent.OutcomeSwapped) && res.Programs[0].Outcome != string(agent.OutcomeUnchanged)) {
		t.Fatalf("cycle after enable: %v %+v", err, res)
	}
	if p, err := c.Program(ctx, "xdp_router"); err != nil || !p.Optimized || !p.Enabled {
		t.Fatalf("after enable and a cycle: %v %+v", err, p)
	}

	// The CLI against the daemon.
	out, err := execute(t, "status", "--api", "unix:"+sock, "--token", "e2e-token")
	if err != nil || !strings.Contains(out, "edge:xdp_router") || !strings.Contains(out, "optimized") {
		t.Fatalf("morpheus status: %v\n%s", err, out)
	}

	// SIGTERM restores the original, detaches it (no pin directory) and
	// removes the socket. The daemon's handler catches the signal, so it
	// does not end the test process.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("daemon did not stop")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	if xdpAttached(t, nsPath) {
		t.Errorf("router still attached after shutdown without a pin directory")
	}
	if !strings.Contains(logs.String(), "restoring the original programs") {
		t.Errorf("log lacks the shutdown:\n%s", logs)
	}
}
