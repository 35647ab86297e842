package cli

import "github.com/spf13/cobra"

func init() {
	addCommand("", func(*app) *cobra.Command {
		return groupCommand("dags", "List, check, show and test the DAGs of this binary",
			`Commands on the DAGs compiled into this binary (the files of the dags
package).

Commands that act on one DAG refuse it when it has problems of its own and
print them; problems of other DAGs are printed as warnings and do not stop
them. "dags validate" and "dags list" report every problem and exit 1.`)
	})
}
