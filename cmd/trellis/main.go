// Command trellis defines, checks, runs and serves the example DAGs of
// package dags. See `trellis --help`; package cli builds the same command
// for the DAGs of another module.
package main

import (
	"github.com/trellis-dag/trellis/cli"
	_ "github.com/trellis-dag/trellis/dags" // registers the DAGs
)

func main() { cli.Main() }
