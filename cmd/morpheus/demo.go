package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/morpheus-go/morpheus/demo"
	"github.com/morpheus-go/morpheus/traffic"
)

// demoFlags are the demo command's flags.
type demoFlags struct {
	nf       string
	duration time.Duration
	out      string
	locality string
	verbose  bool
}

func newDemoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo [--nf NAME] [--duration D] [--out DIR] [--locality high|low|none]",
		Short: "Live demo: an NF under the optimizer on a veth testbed, with throughput, events and plots",
		Long: "Create two network namespaces joined by a veth pair, run the NF (the router with 2,592 routes\n" +
			"by default) under the agent on one end and replay a trace into it with the XDP live-frames\n" +
			"generator from the other, printing throughput and ns/packet (bpf_stats) every second, in four\n" +
			"phases: baseline with the optimizer off; optimizer on (profiling, cycles, swaps); a change of\n" +
			"the NF's main table through the guarded map API, proven used at once by a test run of the\n" +
			"optimized program; a traffic shift to a new hot set. Ends with a summary table and writes\n" +
			"plots and an HTML page to --out (default a new temporary directory). Everything it creates\n" +
			"is removed at the end and on Ctrl-C. Needs root.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd, &f) },
	}
	fs := cmd.Flags()
	fs.StringVar(&f.nf, "nf", demo.DefaultNF, fmt.Sprintf("network function, one of %v", demo.NFs))
	fs.DurationVar(&f.duration, "duration", demo.DefaultDuration, "total duration of the four phases (each takes its share)")
	fs.StringVar(&f.out, "out", "", "directory for the plots and the HTML page (default: a new temporary directory)")
	fs.StringVar(&f.locality, "locality", string(traffic.LocalityHigh), "traffic locality: high, low or none")
	fs.BoolVarP(&f.verbose, "verbose", "v", false, "log the agent's info messages to stderr")
	return cmd
}

func runDemo(cmd *cobra.Command, f *demoFlags) error {
	loc, err := traffic.ParseLocality(f.locality)
	if err != nil {
		return err
	}
	if err := demo.Check(); err != nil {
		return err
	}
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelInfo
	}
	// Ctrl-C or SIGTERM cancels the run; Run tears everything down
	// before it returns.
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := cmd.OutOrStdout()
	rep, err := demo.Run(ctx, demo.Options{
		NF:       f.nf,
		Duration: f.duration,
		OutDir:   f.out,
		Locality: loc,
		Out:      out,
		Logger:   slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})),
	})
	if ctx.Err() != nil {
		fmt.Fprintln(out, "interrupted: everything the demo created was removed")
		return fmt.Errorf("demo interrupted")
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nplots and page in %s (open %s)\n", rep.OutDir, rep.Files[len(rep.Files)-1])
	return nil
}
