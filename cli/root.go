package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
)

// A command file registers its command in init with addCommand; the root
// command built by newRoot reads the list. Adding a command is adding one
// file:
//
//	// cmd_dags_pause.go
//	func init() { addCommand("dags", newDAGsPauseCmd) }
//
//	func newDAGsPauseCmd(a *app) *cobra.Command {
//		return &cobra.Command{
//			Use:   "pause DAG_ID",
//			Short: "...",
//			Long:  "...",
//			Args:  exactArgs(1),
//			RunE:  func(cmd *cobra.Command, args []string) error { ... a.config ... a.logger ... },
//		}
//	}
//
// parent is the space-separated path of the parent command below the root:
// "" for a top-level command, "dags", "tasks", "db". A new group (such as
// "db") is a command registered with parent "" whose constructor returns
// groupCommand(...); its subcommands register with parent "db".
var commandDefs []commandDef

type commandDef struct {
	parent string
	build  func(*app) *cobra.Command
}

// addCommand registers build as a subcommand of the command at parent.
// Call it from an init function.
func addCommand(parent string, build func(*app) *cobra.Command) {
	commandDefs = append(commandDefs, commandDef{parent: parent, build: build})
}

func init() {
	// Run the persistent hooks of every ancestor, so that a command group
	// may add its own PersistentPreRunE without bypassing the root's
	// configuration step.
	cobra.EnableTraverseRunHooks = true
}

// app is what every command shares: the DAGs of this binary, the output
// streams, and the configuration resolved from flags and environment
// before a command runs.
type app struct {
	registry  *dag.Registry
	stdout    io.Writer
	stderr    io.Writer
	lookupEnv func(string) (string, bool)
	clock     clock.Clock
	// workerArgs and workerEnv, when set, replace the worker-child role
	// and add to the environment of the pool `trellis serve` starts
	// (`trellis bench --serve` points them at its own child role).
	workerArgs []string
	workerEnv  []string

	// config and logger are set by the root's PersistentPreRunE, before
	// any command's RunE.
	config Config
	logger *slog.Logger
}

// execute runs the command line args with a and returns the exit code
// (see run).
func (a *app) execute(ctx context.Context, args []string) int {
	stderr := a.stderr
	root, err := newRoot(a, commandDefs)
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	if args == nil {
		args = []string{} // nil would make cobra read os.Args
	}
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	if cmd == nil {
		cmd = root
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return 2
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	return 1
}

// newRoot builds the command tree: the root with its persistent flags, and
// every command of defs (those registered with addCommand), parents before
// children.
func newRoot(a *app, defs []commandDef) (*cobra.Command, error) {
	root := &cobra.Command{
		Use:   "trellis",
		Short: "Trellis runs DAGs of tasks on schedules",
		Long: `Trellis runs directed acyclic graphs (DAGs) of tasks, written in Go, on cron
schedules or on demand, with retries, timeouts, trigger rules and branches.

The DAGs are those compiled into this binary: the example DAGs of package dags
in the trellis build of this repository, or the DAGs a module of your own
hands to cli.Main. Adding a DAG means adding its Go code and rebuilding.

Every flag below can also be set with the environment variable named in its
help; a flag given on the command line wins over the environment.`,
		Example: `  trellis dags list
  trellis dags validate
  trellis dags show etl_example --format dot | dot -Tsvg > etl_example.svg
  trellis dags test etl_example`,
		Args:          groupArgs,
		RunE:          groupRun,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := resolveConfig(cmd.Root().PersistentFlags(), a.lookupEnv)
			if err != nil {
				return err
			}
			a.config = cfg
			a.logger = cfg.Logger(a.stderr)
			return nil
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })
	addConfigFlags(root.PersistentFlags())

	defs = slices.Clone(defs)
	// Parents before children: a path with fewer elements is built first.
	slices.SortStableFunc(defs, func(x, y commandDef) int {
		return pathDepth(x.parent) - pathDepth(y.parent)
	})
	for _, def := range defs {
		parent, err := findCommand(root, def.parent)
		if err != nil {
			return nil, err
		}
		cmd := def.build(a)
		if cmd == nil {
			return nil, fmt.Errorf("command under %q: constructor returned nil", def.parent)
		}
		for _, sibling := range parent.Commands() {
			if sibling.Name() == cmd.Name() {
				return nil, fmt.Errorf("command %q registered twice under %q", cmd.Name(), parent.CommandPath())
			}
		}
		parent.AddCommand(cmd)
	}
	return root, nil
}

func pathDepth(p string) int { return len(strings.Fields(p)) }

// findCommand returns the command at the space-separated path below root.
func findCommand(root *cobra.Command, path string) (*cobra.Command, error) {
	cur := root
	for _, name := range strings.Fields(path) {
		var next *cobra.Command
		for _, c := range cur.Commands() {
			if c.Name() == name {
				next = c
				break
			}
		}
		if next == nil {
			return nil, fmt.Errorf("command registered under %q: no command %q below %q", path, name, cur.CommandPath())
		}
		cur = next
	}
	return cur, nil
}

// groupCommand returns a command that only groups subcommands: run without
// arguments it prints its help; with an unknown subcommand it is a usage
// error with suggestions.
func groupCommand(use, short, long string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  groupArgs,
		RunE:  groupRun,
	}
}

func groupArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	return &usageError{err: errors.New(msg)}
}

func groupRun(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// exactArgs is cobra.ExactArgs whose error is a usage error naming the
// expected arguments from the command's Use line.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		return &usageError{err: fmt.Errorf("%q takes %d argument(s) (usage: %s), got %d", cmd.CommandPath(), n, cmd.UseLine(), len(args))}
	}
}

// usageError is a mistake in how the command was called; run prints it
// with a pointer to --help and exits 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usageError with a formatted message.
func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// exitError makes run exit with code after printing err (nothing when err
// is nil: the command has already said what went wrong).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// errSilentFailure ends a command with exit code 1 after it has printed
// why.
var errSilentFailure = &exitError{code: 1}
