// Package cli is the whole trellis command line — serve, scheduler, worker,
// api, dags, tasks, db, bench, version — as a library, so that a module of
// its own can build a trellis binary for its DAGs:
//
//	func main() { cli.Main(cli.DAGs(mydags.All()...)) }
//
// Worker processes re-execute the running binary, so the binary that calls
// Main is the one whose Go functions the tasks run.
package cli

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
)

// An Option chooses what the command serves.
type Option func(*settings)

type settings struct {
	registry *dag.Registry
	dags     []*dag.DAG
}

// Registry makes the command serve the DAGs of r instead of those of
// dag.Default() (where dag.Register records them).
func Registry(r *dag.Registry) Option {
	return func(s *settings) { s.registry = r }
}

// DAGs makes the command serve ds. Without a Registry option they are the
// only DAGs served (dag.Default() is not used); with one, they are added
// to it. Registration never panics: a bad DAG is reported by
// `trellis dags validate` and `trellis serve`.
func DAGs(ds ...*dag.DAG) Option {
	return func(s *settings) { s.dags = append(s.dags, ds...) }
}

// registryOf returns the registry the options choose.
func registryOf(opts []Option) *dag.Registry {
	var s settings
	for _, o := range opts {
		o(&s)
	}
	reg := s.registry
	switch {
	case reg == nil && s.dags != nil:
		reg = dag.NewRegistry()
	case reg == nil:
		reg = dag.Default()
	}
	for _, d := range s.dags {
		reg.Register(d)
	}
	return reg
}

// Main runs the trellis command line of os.Args and exits the process
// with its exit code. SIGINT and SIGTERM cancel the command (a graceful
// stop of serve, worker and the rest).
func Main(opts ...Option) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, os.Args[1:], os.Stdout, os.Stderr, opts...)
	stop()
	os.Exit(code)
}

// Run executes the trellis command line args (without the program name),
// reading configuration from the process environment, and returns the
// exit code: 0 on success, 1 when the command failed (invalid DAGs, a
// failed run, a runtime error), 2 on a usage error (bad flags or
// arguments, an unknown DAG).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, opts ...Option) int {
	return run(ctx, args, stdout, stderr, registryOf(opts), os.LookupEnv)
}

// run is Run against registry with the environment lookupEnv.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, registry *dag.Registry, lookupEnv func(string) (string, bool)) int {
	a := &app{registry: registry, stdout: stdout, stderr: stderr, lookupEnv: lookupEnv, clock: clock.Real{}}
	return a.execute(ctx, args)
}
