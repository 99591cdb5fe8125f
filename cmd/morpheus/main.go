// Command morpheus is the command-line front end of the Morpheus run-time
// optimizer for eBPF/XDP network functions. Every subcommand is a thin
// layer over the library packages.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "morpheus:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

// exitError carries a specific exit status out of a subcommand.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "morpheus",
		Short:         "Run-time optimizer for eBPF/XDP network functions",
		Long:          "Morpheus specializes running eBPF/XDP programs to their live configuration and traffic,\nverifies every rewrite against the original, and swaps it in atomically.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newInspectCmd())
	root.AddCommand(newOptimizeCmd())
	root.AddCommand(newTraceCmd())
	root.AddCommand(newBenchCmd())
	root.AddCommand(newRunCmd())
	root.AddCommand(newClientCmds()...)
	root.AddCommand(newDemoCmd())
	return root
}
