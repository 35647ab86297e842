// Command hello is a trellis binary built in a module of its own: the
// whole trellis command line (serve, worker, dags, tasks, db, ...) for the
// DAGs of package pipelines. Worker processes re-execute this binary, so
// the Go functions of those DAGs run in them.
//
//	go run . dags list
//	go run . dags test greet
//	go run . serve
package main

import (
	"github.com/trellis-dag/trellis/cli"

	"example.com/hello/pipelines"
)

func main() { cli.Main(cli.DAGs(pipelines.All()...)) }
