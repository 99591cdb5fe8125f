package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

// clientFlags are the connection flags of every client command.
type clientFlags struct {
	addr      string
	token     string
	tokenFile string
	json      bool
}

func (f *clientFlags) register(cmd *cobra.Command) {
	addr := os.Getenv("MORPHEUS_API")
	if addr == "" {
		addr = api.DefaultAddress
	}
	cmd.Flags().StringVar(&f.addr, "api", addr, "daemon API address: unix:/path, host:port or URL ($MORPHEUS_API)")
	cmd.Flags().StringVar(&f.token, "token", os.Getenv("MORPHEUS_TOKEN"), "bearer token ($MORPHEUS_TOKEN)")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "read the bearer token from a file")
	cmd.Flags().BoolVar(&f.json, "json", false, "print the API's JSON")
}

func (f *clientFlags) client() (*api.Client, error) {
	tok := f.token
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, err
		}
		tok = strings.TrimSpace(string(b))
	}
	return api.NewClient(f.addr, tok)
}

// clientCmd builds a client command: run gets a connected client and
// returns the value to print (as JSON with --json, else through text).
func clientCmd[T any](use, short string, args cobra.PositionalArgs, run func(ctx context.Context, c *api.Client, args []string) (T, error), text func(w io.Writer, v T) error) *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			v, err := run(cmd.Context(), c, args)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			return text(out, v)
		},
	}
	f.register(cmd)
	return cmd
}

// newClientCmds returns the commands that talk to a running daemon.
func newClientCmds() []*cobra.Command {
	return []*cobra.Command{
		newStatusCmd(), newMapCmd(), newHeatmapCmd(), newCycleCmd(),
		newEnableCmd(true), newEnableCmd(false), newEventsCmd(),
	}
}

type status struct {
	Programs []api.Program `json:"programs"`
	Stats    *api.Stats    `json:"stats"`
}

func newStatusCmd() *cobra.Command {
	return clientCmd("status", "Show the programs a daemon runs and their optimization", cobra.NoArgs,
		func(ctx context.Context, c *api.Client, _ []string) (status, error) {
			progs, err := c.Programs(ctx)
			if err != nil {
				return status{}, err
			}
			st, err := c.Stats(ctx)
			return status{Programs: progs, Stats: st}, err
		},
		func(w io.Writer, s status) error {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "PROGRAM\tSTATE\tVERSION\tPROG ID\tINSNS\tPACKETS\tNS/PKT\tGUARDS\tLAST CYCLE")
			for _, p := range s.Programs {
				state := "original"
				switch {
				case !p.Enabled:
					state = "disabled"
				case p.Profiling:
					state = "profiling"
				case p.Optimized:
					state = "optimized"
				}
				nsPkt := "-"
				if p.Run.Packets > 0 {
					nsPkt = fmt.Sprintf("%.1f", float64(p.Run.RunTime)/float64(p.Run.Packets))
				}
				var guards []string
				for _, g := range p.Guards {
					s := g.Map
					if g.Elided {
						s += "(elided)"
					}
					if g.Tripped {
						s += "(tripped)"
					}
					guards = append(guards, s)
				}
				last := p.LastOutcome
				if p.LastReason != "" {
					last += ": " + p.LastReason
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d→%d\t%d\t%s\t%s\t%s\n", p.ID(), state, p.Version, p.ProgramID,
					p.InstructionsOriginal, p.InstructionsRunning, p.Run.Packets, nsPkt, dash(strings.Join(guards, ",")), dash(last))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			st := s.Stats
			_, err := fmt.Fprintf(w, "\ncycles %d, swaps %d, verifier rejections %d, differential failures %d, guard bumps %d, de-optimizations %d\n",
				st.Cycles, st.Swaps, st.VerifierRejections, st.DifferentialFailures, st.GuardBumps, st.Deoptimizations)
			return err
		})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newMapCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "map",
		Short: "Read and change the maps of a running daemon (changes go through the guards)",
		Long: "Read and change the maps of a running daemon. Maps are named NAME, or NF:NAME when\n" +
			"several network functions have one of that name. Keys and values are hex strings of\n" +
			"exactly the map's key and value size. Updates and deletes bump the map's guard first\n" +
			"and trigger a re-optimization.",
	}
	cmd.AddCommand(
		clientCmd("list", "List the maps", cobra.NoArgs,
			func(ctx context.Context, c *api.Client, _ []string) ([]api.Map, error) { return c.Maps(ctx) },
			func(w io.Writer, maps []api.Map) error {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "MAP\tTYPE\tKEY\tVALUE\tMAX\tGUARDED\tTRUSTED BY")
				for _, m := range maps {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%v\t%s\n", m.ID(), m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Guarded, dash(strings.Join(m.TrustedBy, ",")))
				}
				return tw.Flush()
			}),
		clientCmd("get MAP [KEY]", "Print one entry, or every entry without KEY", cobra.RangeArgs(1, 2),
			func(ctx context.Context, c *api.Client, args []string) ([]mapstate.Entry, error) {
				if len(args) == 1 {
					return c.Entries(ctx, args[0])
				}
				key, err := parseHexArg("KEY", args[1])
				if err != nil {
					return nil, err
				}
				e, err := c.Lookup(ctx, args[0], key)
				return []mapstate.Entry{e}, err
			},
			writeEntries),
		clientCmd("update MAP KEY VALUE", "Write an entry (guarded)", cobra.ExactArgs(3),
			func(ctx context.Context, c *api.Client, args []string) (*api.ChangeResponse, error) {
				key, err := parseHexArg("KEY", args[1])
				if err != nil {
					return nil, err
				}
				val, err := parseHexArg("VALUE", args[2])
				if err != nil {
					return nil, err
				}
				return c.Update(ctx, args[0], key, val)
			},
			writeChange),
		clientCmd("delete MAP KEY", "Delete an entry (guarded)", cobra.ExactArgs(2),
			func(ctx context.Context, c *api.Client, args []string) (*api.ChangeResponse, error) {
				key, err := parseHexArg("KEY", args[1])
				if err != nil {
					return nil, err
				}
				return c.Delete(ctx, args[0], key)
			},
			writeChange),
	)
	return cmd
}

// parseHexArg decodes a hex argument; the server checks its size against
// the map.
func parseHexArg(what, s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"))
	if err != nil {
		return nil, fmt.Errorf("%s %q is not hex: %v", what, s, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", what)
	}
	return b, nil
}

func writeEntries(w io.Writer, es []mapstate.Entry) error {
	for _, e := range es {
		if len(e.Values) > 0 {
			vals := make([]string, len(e.Values))
			for i, v := range e.Values {
				vals[i] = hex.EncodeToString(v)
			}
			if _, err := fmt.Fprintf(w, "%x\t%s\n", []byte(e.Key), strings.Join(vals, " ")); err != nil {
				return err
			}
			continue
		}
		if _, err := fmt.Fprintf(w, "%x\t%x\n", []byte(e.Key), []byte(e.Value)); err != nil {
			return err
		}
	}
	return nil
}

func writeChange(w io.Writer, r *api.ChangeResponse) error {
	verb := "updated"
	if r.Deleted {
		verb = "deleted"
	}
	note := ""
	if r.Guarded {
		note = " (guard bumped, re-optimizing)"
	}
	_, err := fmt.Fprintf(w, "%s %s[%x]%s\n", verb, r.Map, []byte(r.Key), note)
	return err
}

func newHeatmapCmd() *cobra.Command {
	var top int
	cmd := clientCmd("heatmap", "Show the hot keys per map that the optimizer sees", cobra.NoArgs,
		func(ctx context.Context, c *api.Client, _ []string) (map[string]*heatmap.Heatmap, error) {
			return c.Heatmaps(ctx, top)
		},
		func(w io.Writer, hs map[string]*heatmap.Heatmap) error {
			if len(hs) == 0 {
				_, err := fmt.Fprintln(w, "no heatmaps yet")
				return err
			}
			for _, nf := range slices.Sorted(maps.Keys(hs)) {
				h := hs[nf]
				for _, m := range slices.Sorted(maps.Keys(h.Maps)) {
					fmt.Fprintf(w, "%s:%s\n", nf, m)
					keys := h.Top(m, len(h.Maps[m]))
					var total uint64
					for _, k := range keys {
						total += k.Count
					}
					for _, k := range keys {
						pct := 0.0
						if total > 0 {
							pct = 100 * float64(k.Count) / float64(total)
						}
						fmt.Fprintf(w, "  %x\t%d\t%5.1f%%\n", []byte(k.Key), k.Count, pct)
					}
				}
			}
			return nil
		})
	cmd.Flags().IntVar(&top, "top", 0, "keys per map (default: the server's, 20)")
	return cmd
}

func newCycleCmd() *cobra.Command {
	var nf string
	cmd := clientCmd("cycle [PROGRAM]", "Run an optimization cycle now and print its outcome", cobra.MaximumNArgs(1),
		func(ctx context.Context, c *api.Client, args []string) (*api.CycleResult, error) {
			req := api.CycleRequest{NF: nf}
			if len(args) == 1 {
				req.Program = args[0]
			}
			return c.Cycle(ctx, req)
		},
		func(w io.Writer, r *api.CycleResult) error {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "PROGRAM\tOUTCOME\tINSNS\tREASON")
			for _, p := range r.Programs {
				id := p.Program
				if p.NF != "" {
					id = p.NF + ":" + p.Program
				}
				fmt.Fprintf(tw, "%s\t%s\t%d→%d\t%s\n", id, p.Outcome, p.InstructionsBefore, p.InstructionsAfter, dash(p.Reason))
			}
			fmt.Fprintf(tw, "\ncycle took %v\n", r.Duration.Round(time.Millisecond))
			return tw.Flush()
		})
	cmd.Flags().StringVar(&nf, "nf", "", "cycle only this network function")
	return cmd
}

func newEnableCmd(enable bool) *cobra.Command {
	use, short := "disable PROGRAM", "Stop optimizing a program and run its original"
	if enable {
		use, short = "enable PROGRAM", "Resume optimizing a program"
	}
	return clientCmd(use, short, cobra.ExactArgs(1),
		func(ctx context.Context, c *api.Client, args []string) (string, error) {
			return args[0], c.SetEnabled(ctx, args[0], enable)
		},
		func(w io.Writer, prog string) error {
			verb := "disabled"
			if enable {
				verb = "enabled"
			}
			_, err := fmt.Fprintf(w, "optimization %s for %s\n", verb, prog)
			return err
		})
}

func newEventsCmd() *cobra.Command {
	var (
		after uint64
		limit int
	)
	cmd := clientCmd("events", "Show recent optimizer events (cycles, swaps, guard bumps, restores)", cobra.NoArgs,
		func(ctx context.Context, c *api.Client, _ []string) ([]api.Event, error) {
			return c.Events(ctx, after, limit)
		},
		func(w io.Writer, evs []api.Event) error {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tWHAT\tDETAIL")
			for _, e := range evs {
				what := e.Program
				if what == "" {
					what = e.Map
				}
				if e.NF != "" {
					what = strings.TrimSuffix(e.NF+":"+what, ":")
				}
				detail := e.Message
				if e.Duration > 0 {
					detail += fmt.Sprintf(" (%v)", e.Duration.Round(time.Microsecond))
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.TimeOnly), e.Kind, dash(what), dash(detail))
			}
			return tw.Flush()
		})
	cmd.Flags().Uint64Var(&after, "after", 0, "only events after this sequence number")
	cmd.Flags().IntVar(&limit, "limit", 50, "at most this many (the newest)")
	return cmd
}
