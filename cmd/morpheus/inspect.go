package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/morpheus-go/morpheus/inspect"
)

func newInspectCmd() *cobra.Command {
	var (
		opts   inspect.Options
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "inspect OBJ...",
		Short: "Describe the programs, maps and map access sites of BPF objects",
		Long: "Describe the programs, maps and map access sites of BPF objects.\n" +
			"With one object, --json prints one report object; with several, an array of them.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var reports []*inspect.Report
			for _, path := range args {
				spec, err := inspect.LoadSpec(path)
				if err != nil {
					return err
				}
				r, err := inspect.Describe(path, spec, opts)
				if err != nil {
					return err
				}
				reports = append(reports, r)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if len(reports) == 1 {
					return enc.Encode(reports[0])
				}
				return enc.Encode(reports)
			}
			for i, r := range reports {
				if i > 0 {
					fmt.Fprintln(out)
				}
				if err := r.WriteText(out); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&opts.Program, "program", "", "describe only this program")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print stable JSON instead of tables")
	return cmd
}
