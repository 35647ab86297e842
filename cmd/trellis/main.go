// Command trellis defines, checks, runs and serves the DAGs of this
// binary. See `trellis --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-dag/trellis/dag"
	_ "github.com/trellis-dag/trellis/dags" // registers the DAGs
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, dag.Default(), os.LookupEnv)
	stop()
	os.Exit(code)
}
