package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/store"
)

func init() {
	addCommand("dags", func(a *app) *cobra.Command { return newDAGsPauseCmd(a, true) })
	addCommand("dags", func(a *app) *cobra.Command { return newDAGsPauseCmd(a, false) })
}

// newDAGsPauseCmd builds `dags pause` (paused) or `dags unpause`.
func newDAGsPauseCmd(a *app, paused bool) *cobra.Command {
	verb, short, long := "pause", "Stop scheduling a DAG",
		`Pause marks the DAG paused in the database: the scheduler creates no runs for
it and starts none of its queued runs; runs already running finish. Manual
runs triggered meanwhile wait in state queued.`
	if !paused {
		verb, short, long = "unpause", "Resume scheduling a DAG",
			`Unpause lets the scheduler create the DAG's runs again. The intervals missed
while it was paused follow the catchup rules: Catchup(true) creates a run for
every one of them, Catchup(false) only for the latest. Queued runs start as
MaxActiveRuns allows.`
	}
	return &cobra.Command{
		Use:     verb + " DAG_ID",
		Short:   short,
		Long:    long,
		Example: "  trellis dags " + verb + " etl_example",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			st, err := a.openStore(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer st.Close()
			if a.registry.Lookup(id) == nil {
				// Not in this binary: it may still be recorded (a DAG that
				// was removed); otherwise the id is unknown.
				if _, err := st.GetDAG(cmd.Context(), id); errors.Is(err, store.ErrNotFound) {
					return a.unknownDAG(id)
				} else if err != nil {
					return err
				}
			}
			s := scheduler.New(scheduler.Config{Store: st, Registry: a.registry, Clock: a.clock, Logger: a.logger})
			if err := s.SetPaused(cmd.Context(), id, paused); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "DAG %q %sd\n", id, verb)
			return nil
		},
	}
}
