package cli

import "github.com/spf13/cobra"

func init() {
	addCommand("", func(*app) *cobra.Command {
		return groupCommand("tasks", "Run and inspect single tasks",
			`Commands on single tasks of the DAGs compiled into this binary.`)
	})
}
