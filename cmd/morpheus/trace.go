package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/morpheus-go/morpheus/bench"
	"github.com/morpheus-go/morpheus/traffic"
)

// scenarioFlags are the flags that describe an NF, its configuration and
// its traffic, shared by `trace gen` and `bench`.
type scenarioFlags struct {
	nf, locality, config string
	skew                 float64
	flows, packets, size int
	miss, malformed      float64
	seed                 uint64
}

// defaultPackets is long enough for the fitted skew of `trace stats` to be
// meaningful at 1,000 flows, and short enough to fit the replay harness.
const defaultPackets = 100000

func (f *scenarioFlags) register(fs *pflag.FlagSet, withNF bool) {
	if withNF {
		fs.StringVar(&f.nf, "nf", "", "network function: "+strings.Join(bench.NFs, ", "))
		fs.StringVar(&f.locality, "locality", "high", "flow popularity: high (Zipf s=1.1), low (0.6) or none (uniform)")
	}
	fs.StringVar(&f.config, "config", "", "the NF's JSON configuration (default: generated at the seed evaluation's sizes from --seed); "+
		"for router and l2switch, ifindex 1 (the ingress) must be a configured port")
	fs.Float64Var(&f.skew, "skew", 0, "Zipf exponent overriding the locality preset (0 keeps the preset)")
	fs.IntVar(&f.flows, "flows", bench.DefaultFlows, "number of hit flows (and of miss flows) drawn from the configuration")
	fs.IntVar(&f.packets, "packets", defaultPackets, "trace length in packets")
	fs.IntVar(&f.size, "size", 64, "frame size in bytes without FCS (never shorter than the headers)")
	fs.Float64Var(&f.miss, "miss", 0.1, "share of packets from flows that match nothing in the configuration")
	fs.Float64Var(&f.malformed, "malformed", 0, "share of malformed packets")
	fs.Uint64Var(&f.seed, "seed", 1, "seed of the configuration, the flows and the trace")
}

// options turns the flags into scenario options for nf and loc.
func (f *scenarioFlags) options(nf string, loc traffic.Locality) (bench.ScenarioOptions, error) {
	o := bench.ScenarioOptions{
		NF:    nf,
		Flows: f.flows,
		Trace: traffic.Options{
			Packets: f.packets, Locality: loc, Skew: f.skew, PacketSize: f.size,
			MissShare: f.miss, MalformedShare: f.malformed, Seed: f.seed,
		},
	}
	if f.packets <= 0 || f.flows <= 0 {
		return o, errors.New("--packets and --flows must be positive")
	}
	if f.config != "" {
		data, err := os.ReadFile(f.config)
		if err != nil {
			return o, err
		}
		o.Config = data
	}
	return o, nil
}

func newTraceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Generate and describe packet traces",
	}
	cmd.AddCommand(newTraceGenCmd(), newTraceStatsCmd())
	return cmd
}

func newTraceGenCmd() *cobra.Command {
	var (
		sf     scenarioFlags
		out    string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "gen --nf NAME -o FILE.pcap",
		Short: "Write a Zipf trace for a network function to a pcap file",
		Long: "Write a trace for a network function to a pcap file. Flows are derived from the NF's\n" +
			"configuration (given with --config, or generated at the sizes of the seed's evaluation):\n" +
			"hit flows match it (a route, a VIP, a rule), miss flows do not. Flow popularity is Zipf\n" +
			"with the locality's skew. The same flags and seed always give the same bytes.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if sf.nf == "" || out == "" {
				return errors.New("--nf and -o are required")
			}
			loc, err := traffic.ParseLocality(sf.locality)
			if err != nil {
				return err
			}
			o, err := sf.options(sf.nf, loc)
			if err != nil {
				return err
			}
			sc, err := bench.NewScenario(o)
			if err != nil {
				return err
			}
			if err := traffic.WritePcapFile(out, sc.Frames); err != nil {
				return err
			}
			st := traffic.Analyze(sc.Frames, 0)
			summary := traceSummary{Output: out, NF: sf.nf, Locality: string(loc), Seed: sf.seed, Stats: st}
			if asJSON {
				return writeJSON(cmd, summary)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %s trace, %s locality, seed %d\n%s", out, sf.nf, loc, sf.seed, st)
			return nil
		},
	}
	sf.register(cmd.Flags(), true)
	cmd.Flags().StringVarP(&out, "output", "o", "", "pcap file to write")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the summary as stable JSON")
	return cmd
}

// traceSummary is what `trace gen --json` prints.
type traceSummary struct {
	Output   string         `json:"output"`
	NF       string         `json:"nf"`
	Locality string         `json:"locality"`
	Seed     uint64         `json:"seed"`
	Stats    *traffic.Stats `json:"stats"`
}

func newTraceStatsCmd() *cobra.Command {
	var (
		top    int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "stats FILE.pcap",
		Short: "Describe a pcap trace: packets, flows, fitted Zipf skew, top flows",
		Long: "Describe a pcap trace: packets, flows (MACs, VLAN, addresses, protocol, ports), the Zipf\n" +
			"exponent fitted to the flows' rank/frequency curve (least squares on log-log over the\n" +
			"flows with at least 10 packets) and the most frequent flows.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			frames, err := traffic.ReadPcapFile(args[0])
			if err != nil {
				return err
			}
			st := traffic.Analyze(frames, top)
			if asJSON {
				return writeJSON(cmd, st)
			}
			fmt.Fprint(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().IntVar(&top, "top", 10, "number of most frequent flows to list")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print stable JSON")
	return cmd
}

// writeJSON prints v as indented JSON on the command's output.
func writeJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
