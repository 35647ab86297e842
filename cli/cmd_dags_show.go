package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/dag"
)

func init() { addCommand("dags", newDAGsShowCmd) }

func newDAGsShowCmd(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "show DAG_ID",
		Short: "Show a DAG's tasks and edges as text, Graphviz DOT or JSON",
		Long: `Show one DAG: its options, its tasks with their settings and its edges.

Formats:
  text  a readable tree of the tasks in dependency order (default)
  dot   a Graphviz digraph; render it with dot -Tsvg or dot -Tpng
  json  {"dag_id", ..., "nodes": [...], "edges": [...]} for other tools

A DAG with problems of its own is not shown: its problems are printed and
the command exits 1.`,
		Example: `  trellis dags show etl_example
  trellis dags show test --format dot | dot -Tsvg > test.svg
  trellis dags show backup_automation --format json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var write func(*dag.DAG) error
			switch format {
			case "text":
				write = func(d *dag.DAG) error { return dag.WriteText(a.stdout, d) }
			case "dot":
				write = func(d *dag.DAG) error { return dag.WriteDOT(a.stdout, d) }
			case "json":
				write = func(d *dag.DAG) error { return dag.WriteJSON(a.stdout, d) }
			default:
				return usagef("--format %q: want text, dot or json", format)
			}
			d, err := a.lookupDAG(args[0])
			if err != nil {
				return err
			}
			if err := write(d); err != nil {
				return fmt.Errorf("show DAG %q: %w", d.ID(), err)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "text", "output format: text, dot or json")
	return cmd
}
