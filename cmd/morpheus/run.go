package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/morpheus-go/morpheus/agent"
	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/instrument"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/nf/ddos"
	"github.com/morpheus-go/morpheus/nf/firewall"
	"github.com/morpheus-go/morpheus/nf/l2switch"
	"github.com/morpheus-go/morpheus/nf/lb"
	"github.com/morpheus-go/morpheus/nf/router"
	"github.com/morpheus-go/morpheus/passes"
)

// daemonConfig is the YAML file of `morpheus run`.
type daemonConfig struct {
	API struct {
		// Listen is "unix:/path" or "host:port" (default api.DefaultAddress).
		Listen string `yaml:"listen"`
		// TokenFile holds the bearer token clients must send.
		TokenFile string `yaml:"token_file"`
		// AllowRemote permits a non-loopback TCP address (a token is then
		// required).
		AllowRemote bool `yaml:"allow_remote"`
	} `yaml:"api"`
	// PinDir is a bpffs directory; each NF pins under PinDir/NAME and
	// survives a daemon restart (the next daemon adopts it).
	PinDir string `yaml:"pin_dir"`
	// BPFStats turns on the kernel's run-time statistics (default true):
	// without them there are no packets or ns/packet figures.
	BPFStats  *bool           `yaml:"bpf_stats"`
	Optimizer optimizerConfig `yaml:"optimizer"`
	NFs       []nfConfig      `yaml:"nfs"`
}

// optimizerConfig tunes the agent; an NF's section overrides the global
// one field by field.
type optimizerConfig struct {
	Period            time.Duration `yaml:"period"`
	FingerprintPeriod time.Duration `yaml:"fingerprint_period"`
	// Passes names the passes to run (default all); "none" runs none.
	Passes    []string `yaml:"passes"`
	MaxInline int      `yaml:"max_inline"`
	TopK      int      `yaml:"top_k"`
	// Generated is the number of differential-test packets per cycle.
	Generated int   `yaml:"generated"`
	Seed      int64 `yaml:"seed"`
	// MaxSnapshotEntries bounds the entries read from one map per cycle.
	MaxSnapshotEntries int `yaml:"max_snapshot_entries"`
	// Profile turns on adaptive profiling; without it the hot keys come
	// only from an NF's heatmap file.
	Profile *profileConfig `yaml:"profile"`
}

// profileConfig configures the agent's adaptive profiling: each cycle an
// instrumented variant runs for Window, sampling lookups at SampleRate.
type profileConfig struct {
	SampleRate float64       `yaml:"sample_rate"`
	Window     time.Duration `yaml:"window"`
	Decay      float64       `yaml:"decay"`
	// Sampler is "countdown" (default) or "prandom".
	Sampler string `yaml:"sampler"`
	// Recorder is "ring" (default: per-CPU rings, cheapest) or "hash" (the
	// seed's per-CPU hash per map).
	Recorder string `yaml:"recorder"`
}

func (p *profileConfig) options() (*agent.ProfileOptions, error) {
	if p == nil {
		return nil, nil
	}
	if p.SampleRate < 0 || p.SampleRate > 1 {
		return nil, fmt.Errorf("sample_rate %v: want a fraction in (0, 1]", p.SampleRate)
	}
	if p.Decay < 0 || p.Decay > 1 {
		return nil, fmt.Errorf("decay %v: want a weight in [0, 1]", p.Decay)
	}
	o := &agent.ProfileOptions{Window: p.Window, Rate: p.SampleRate, Decay: p.Decay}
	if p.Sampler != "" {
		s, err := instrument.ParseSampler(p.Sampler)
		if err != nil {
			return nil, err
		}
		o.Sampler = s
	}
	switch p.Recorder {
	case "", "ring":
	case "hash":
		o.HashRecorder = true
	default:
		return nil, fmt.Errorf("recorder %q: want ring or hash", p.Recorder)
	}
	return o, nil
}

type nfConfig struct {
	Name string `yaml:"name"`
	// Object is the path of a clang-built BPF ELF object; Builtin names a
	// sample NF (router, l2switch, lb, firewall, ddos) whose object is
	// built in.
	Object  string `yaml:"object"`
	Builtin string `yaml:"builtin"`
	// State is a map-state JSON file (the `optimize --state` format).
	State string `yaml:"state"`
	// Config is the typed configuration of a builtin NF (its Config type).
	Config yaml.Node `yaml:"config"`
	// Heatmap is a heatmap JSON file used as the NF's hot keys.
	Heatmap   string           `yaml:"heatmap"`
	Optimizer *optimizerConfig `yaml:"optimizer"`
	Programs  []programConfig  `yaml:"programs"`
}

type programConfig struct {
	Name string `yaml:"name"`
	// Optimize false starts the program with optimization disabled.
	Optimize *bool          `yaml:"optimize"`
	Attach   []attachConfig `yaml:"attach"`
}

type attachConfig struct {
	Interface string `yaml:"interface"`
	// Netns is the path of the interface's network namespace.
	Netns string `yaml:"netns"`
	// XDP is the XDP mode: native, generic or auto.
	XDP string `yaml:"xdp"`
	// TC is the clsact hook: ingress or egress.
	TC       string `yaml:"tc"`
	Priority uint16 `yaml:"priority"`
	Handle   uint32 `yaml:"handle"`
	// ProgArray and Index place the program in a prog-array slot.
	ProgArray string  `yaml:"prog_array"`
	Index     *uint32 `yaml:"index"`
}

// builtins load the sample NFs from their typed configuration.
var builtins = map[string]func(cfg *yaml.Node) (*ebpf.CollectionSpec, *mapstate.State, error){
	"router":   builtin(router.Spec, func(c *router.Config) (*mapstate.State, error) { return c.State() }),
	"l2switch": builtin(l2switch.Spec, func(c *l2switch.Config) (*mapstate.State, error) { return c.State() }),
	"lb":       builtin(lb.Spec, func(c *lb.Config) (*mapstate.State, error) { return c.State() }),
	"firewall": builtin(firewall.Spec, func(c *firewall.Config) (*mapstate.State, error) { return c.State() }),
	"ddos":     builtin(ddos.Spec, func(c *ddos.Config) (*mapstate.State, error) { return c.State() }),
}

func builtin[C any](spec func() (*ebpf.CollectionSpec, error), state func(*C) (*mapstate.State, error)) func(*yaml.Node) (*ebpf.CollectionSpec, *mapstate.State, error) {
	return func(node *yaml.Node) (*ebpf.CollectionSpec, *mapstate.State, error) {
		s, err := spec()
		if err != nil {
			return nil, nil, err
		}
		if node.Kind == 0 {
			return s, nil, nil
		}
		var cfg C
		if err := decodeStrict(node, &cfg); err != nil {
			return nil, nil, err
		}
		st, err := state(&cfg)
		return s, st, err
	}
}

// decodeStrict decodes a YAML node rejecting unknown fields (yaml.Node's
// own Decode does not), so a typo in the config is an error.
func decodeStrict(node *yaml.Node, v any) error {
	b, err := yaml.Marshal(node)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// parseDaemonConfig reads and validates a daemon config. Relative paths in
// it are relative to the config file's directory.
func parseDaemonConfig(r io.Reader, dir string) (*daemonConfig, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var c daemonConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	rel(&c.API.TokenFile)
	if c.API.Listen == "" {
		c.API.Listen = api.DefaultAddress
	}
	if len(c.NFs) == 0 {
		return nil, errors.New("config: no network functions under nfs")
	}
	seen := map[string]bool{}
	for i := range c.NFs {
		n := &c.NFs[i]
		rel(&n.Object)
		rel(&n.State)
		rel(&n.Heatmap)
		where := fmt.Sprintf("config: nfs[%d] (%s)", i, n.Name)
		switch {
		case n.Name == "":
			return nil, fmt.Errorf("config: nfs[%d]: name is missing", i)
		case strings.ContainsAny(n.Name, ":/ "):
			return nil, fmt.Errorf("%s: name may not contain ':', '/' or spaces", where)
		case seen[n.Name]:
			return nil, fmt.Errorf("%s: name used twice", where)
		case (n.Object == "") == (n.Builtin == ""):
			return nil, fmt.Errorf("%s: set exactly one of object and builtin", where)
		case n.Builtin != "" && builtins[n.Builtin] == nil:
			return nil, fmt.Errorf("%s: unknown builtin %q (have ddos, firewall, l2switch, lb, router)", where, n.Builtin)
		case n.Config.Kind != 0 && n.Builtin == "":
			return nil, fmt.Errorf("%s: config is for builtin NFs; give an object's map contents as a state file", where)
		case n.Config.Kind != 0 && n.State != "":
			return nil, fmt.Errorf("%s: set config or state, not both", where)
		case len(n.Programs) == 0:
			return nil, fmt.Errorf("%s: no programs to attach", where)
		}
		seen[n.Name] = true
		for j, p := range n.Programs {
			if len(p.Attach) == 0 {
				return nil, fmt.Errorf("%s: programs[%d] (%s): no attach points", where, j, p.Name)
			}
			for k, a := range p.Attach {
				if _, err := a.attachment(p.Name); err != nil {
					return nil, fmt.Errorf("%s: programs[%d] (%s): attach[%d]: %w", where, j, p.Name, k, err)
				}
			}
		}
		o := c.Optimizer.merge(n.Optimizer)
		if _, err := o.Profile.options(); err != nil {
			return nil, fmt.Errorf("%s: optimizer.profile: %w", where, err)
		}
		if len(o.Passes) > 0 {
			if _, err := passes.ParsePassList(strings.Join(o.Passes, ",")); err != nil {
				return nil, fmt.Errorf("%s: optimizer.passes: %w", where, err)
			}
		}
	}
	return &c, nil
}

// attachment converts one attach point.
func (a attachConfig) attachment(program string) (agent.Attachment, error) {
	at := agent.Attachment{Program: program, Interface: a.Interface, Netns: a.Netns, Priority: a.Priority, Handle: a.Handle}
	kinds := 0
	if a.XDP != "" {
		kinds++
		at.Kind = agent.XDP
		switch a.XDP {
		case "native":
			at.XDPMode = agent.XDPNative
		case "generic":
			at.XDPMode = agent.XDPGeneric
		case "auto":
			at.XDPMode = agent.XDPAuto
		default:
			return at, fmt.Errorf("xdp mode %q: want native, generic or auto", a.XDP)
		}
	}
	if a.TC != "" {
		kinds++
		switch a.TC {
		case "ingress":
			at.Kind = agent.TCIngress
		case "egress":
			at.Kind = agent.TCEgress
		default:
			return at, fmt.Errorf("tc hook %q: want ingress or egress", a.TC)
		}
	}
	if a.ProgArray != "" {
		kinds++
		if a.Index == nil {
			return at, errors.New("prog_array needs an index")
		}
		at.Kind, at.ProgArray, at.Index = agent.TailCall, a.ProgArray, *a.Index
	}
	switch {
	case kinds != 1:
		return at, errors.New("set exactly one of xdp, tc and prog_array")
	case at.Kind != agent.TailCall && a.Interface == "":
		return at, errors.New("interface is missing")
	case at.Kind == agent.TailCall && a.Interface != "":
		return at, errors.New("a prog_array slot takes no interface")
	}
	return at, nil
}

// merge returns o with the fields set in override replaced.
func (o optimizerConfig) merge(override *optimizerConfig) optimizerConfig {
	if override == nil {
		return o
	}
	r := *override
	if r.Period == 0 {
		r.Period = o.Period
	}
	if r.FingerprintPeriod == 0 {
		r.FingerprintPeriod = o.FingerprintPeriod
	}
	if r.Passes == nil {
		r.Passes = o.Passes
	}
	if r.MaxInline == 0 {
		r.MaxInline = o.MaxInline
	}
	if r.TopK == 0 {
		r.TopK = o.TopK
	}
	if r.Generated == 0 {
		r.Generated = o.Generated
	}
	if r.Seed == 0 {
		r.Seed = o.Seed
	}
	if r.MaxSnapshotEntries == 0 {
		r.MaxSnapshotEntries = o.MaxSnapshotEntries
	}
	if r.Profile == nil {
		r.Profile = o.Profile
	}
	return r
}

func (o optimizerConfig) passOptions() passes.Options {
	p := passes.DefaultOptions()
	if o.MaxInline > 0 {
		p.MaxInline = o.MaxInline
	}
	if o.TopK > 0 {
		p.TopK = o.TopK
	}
	if len(o.Passes) > 0 {
		// Validated by parseDaemonConfig.
		p.Passes, _ = passes.ParsePassList(strings.Join(o.Passes, ","))
		if p.Passes == nil {
			p.Passes = []string{}
		}
	}
	return p
}

// readToken reads a token file, refusing one other users can read.
func readToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("token file %s is accessible by other users (mode %04o); chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

type runFlags struct {
	config      string
	listen      string
	allowRemote bool
	logLevel    string
	logJSON     bool
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run network functions under the optimizer and serve the control API",
		Long: "Run loads the network functions of a YAML config, attaches them, optimizes them\n" +
			"continuously and serves the HTTP API, Prometheus metrics and the status page.\n" +
			"SIGINT or SIGTERM restores the original programs and exits.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDaemon(ctx, f, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "daemon configuration (YAML)")
	cmd.Flags().StringVar(&f.listen, "listen", "", "API address, overrides the config (unix:/path or host:port)")
	cmd.Flags().BoolVar(&f.allowRemote, "allow-remote", false, "allow a non-loopback API address (requires a token)")
	cmd.Flags().StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	cmd.Flags().BoolVar(&f.logJSON, "log-json", false, "log JSON lines instead of text")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// runDaemon runs until ctx is done.
func runDaemon(ctx context.Context, f runFlags, logOut io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	if f.logJSON {
		log = slog.New(slog.NewJSONHandler(logOut, hopts))
	} else {
		log = slog.New(slog.NewTextHandler(logOut, hopts))
	}

	file, err := os.Open(f.config)
	if err != nil {
		return err
	}
	cfg, err := parseDaemonConfig(file, filepath.Dir(f.config))
	file.Close()
	if err != nil {
		return err
	}
	if f.listen != "" {
		cfg.API.Listen = f.listen
	}
	allowRemote := cfg.API.AllowRemote || f.allowRemote
	var token string
	if cfg.API.TokenFile != "" {
		if token, err = readToken(cfg.API.TokenFile); err != nil {
			return err
		}
	}
	if allowRemote && token == "" {
		return errors.New("a non-loopback API needs a token: set api.token_file")
	}

	if cfg.BPFStats == nil || *cfg.BPFStats {
		// Held open for the daemon's lifetime; the kernel turns the
		// statistics off again when the last holder closes.
		closer, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			log.Warn("cannot enable bpf_stats; packets and ns/packet will read zero", "err", err)
		} else {
			defer closer.Close()
		}
	}

	// Listen before loading anything so a busy address fails fast.
	ln, err := api.Listen(ctx, cfg.API.Listen, allowRemote)
	if err != nil {
		return err
	}
	defer ln.Close()

	nfs, err := loadNFs(ctx, cfg, log)
	if err != nil {
		return err
	}
	backend, err := api.NewAgentBackend(nfs)
	if err != nil {
		shutdownNFs(nfs, cfg.PinDir != "", log)
		return err
	}
	srv := api.NewServer(backend, api.Options{Token: token, CheckHost: ln.Loopback, Logger: log.With("component", "api")})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(nfs)+1)
	for _, n := range nfs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.NF.Run(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("network function %s: %w", n.NF.Name(), err)
				cancel()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, ln); err != nil {
			errc <- fmt.Errorf("api: %w", err)
			cancel()
		}
	}()
	log.Info("morpheus running", "api", cfg.API.Listen, "nfs", len(nfs), "token", token != "")
	<-ctx.Done()
	log.Info("shutting down: restoring the original programs")
	wg.Wait()
	backend.Close()
	shutdownNFs(nfs, cfg.PinDir != "", log)
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		log.Info("stopped")
	}
	return errors.Join(errs...)
}

// loadNFs loads and attaches every NF of the config; on error the ones
// already loaded are torn down again.
func loadNFs(ctx context.Context, cfg *daemonConfig, log *slog.Logger) ([]api.AgentNF, error) {
	var out []api.AgentNF
	for _, nc := range cfg.NFs {
		n, err := loadNF(ctx, cfg, nc, log)
		if err != nil {
			shutdownNFs(out, false, log)
			return nil, fmt.Errorf("network function %s: %w", nc.Name, err)
		}
		out = append(out, n)
	}
	return out, nil
}

func loadNF(ctx context.Context, cfg *daemonConfig, nc nfConfig, log *slog.Logger) (api.AgentNF, error) {
	var (
		spec  *ebpf.CollectionSpec
		state *mapstate.State
		err   error
	)
	if nc.Builtin != "" {
		if spec, state, err = builtins[nc.Builtin](&nc.Config); err != nil {
			return api.AgentNF{}, err
		}
	} else if spec, err = ebpf.LoadCollectionSpec(nc.Object); err != nil {
		return api.AgentNF{}, err
	}
	if nc.State != "" {
		if state, err = mapstate.ReadFile(nc.State); err != nil {
			return api.AgentNF{}, err
		}
	}
	if state == nil {
		state = mapstate.New()
	}
	o := cfg.Optimizer.merge(nc.Optimizer)
	profile, err := o.Profile.options()
	if err != nil {
		return api.AgentNF{}, err // validated already
	}
	opts := agent.Options{
		Profile:            profile,
		Name:               nc.Name,
		Period:             o.Period,
		FingerprintPeriod:  o.FingerprintPeriod,
		Passes:             o.passOptions(),
		Generated:          o.Generated,
		Seed:               o.Seed,
		MaxSnapshotEntries: o.MaxSnapshotEntries,
		Logger:             log, // the agent adds the NF's name
	}
	if cfg.PinDir != "" {
		opts.PinDir = filepath.Join(cfg.PinDir, nc.Name)
	}
	var heat *api.HeatRecorder
	if nc.Heatmap != "" {
		h, err := heatmap.ReadFile(nc.Heatmap)
		if err != nil {
			return api.AgentNF{}, err
		}
		heat = api.NewHeatRecorder(agent.StaticProfiler{Heat: h})
		opts.Profiler = heat
	}
	var atts []agent.Attachment
	for _, p := range nc.Programs {
		if p.Optimize != nil && !*p.Optimize {
			opts.Disabled = append(opts.Disabled, p.Name)
		}
		for _, a := range p.Attach {
			at, err := a.attachment(p.Name)
			if err != nil {
				return api.AgentNF{}, err // validated already
			}
			atts = append(atts, at)
		}
	}
	n, err := agent.Load(ctx, spec, state, atts, opts)
	if err != nil {
		return api.AgentNF{}, err
	}
	log.Info("network function loaded", "nf", nc.Name, "attachments", len(atts), "adopted", n.Adopted())
	return api.AgentNF{NF: n, Heat: heat}, nil
}

// shutdownNFs restores the original programs. Pinned NFs stay attached
// (the next daemon adopts them); others are detached, since nothing would
// manage them once this process is gone.
func shutdownNFs(nfs []api.AgentNF, pinned bool, log *slog.Logger) {
	for _, n := range nfs {
		var err error
		if pinned {
			err = n.NF.Stop()
		} else {
			err = errors.Join(n.NF.Stop(), n.NF.Close())
		}
		if err != nil {
			log.Error("shutting down network function", "nf", n.NF.Name(), "err", err)
		}
	}
}
