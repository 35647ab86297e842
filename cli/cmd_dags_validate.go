package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func init() { addCommand("dags", newDAGsValidateCmd) }

func newDAGsValidateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check every DAG and list every problem",
		Long: `Check every DAG of this binary in one pass and list every problem found,
each naming its DAG and task: cycles (with the tasks on the cycle, e.g.
a -> b -> c -> a), duplicate DAG or task ids, edges to tasks of another DAG,
ids that break ^[A-Za-z0-9_.-]{1,250}$, unparsable schedules, an end date
before the start date, invalid option values and tasks without a function
or command.

Exits 1 when there is any problem, 0 with a one-line summary otherwise; run
it in CI before deploying.`,
		Example: `  trellis dags validate`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			dags := a.registry.DAGs()
			problems := a.registry.Validate()
			if len(problems) == 0 {
				tasks := 0
				for _, d := range dags {
					tasks += len(d.Tasks())
				}
				fmt.Fprintf(a.stdout, "%s with %s: no problems found\n", plural(len(dags), "DAG"), plural(tasks, "task"))
				return nil
			}
			writeProblems(a.stdout, problems, "")
			bad := map[string]bool{}
			for _, p := range problems {
				bad[p.DAGID] = true
			}
			fmt.Fprintf(a.stdout, "%s in %s of %d\n", plural(len(problems), "problem"), plural(len(bad), "DAG"), len(dags))
			return errSilentFailure
		},
	}
}
