package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/state"
)

func init() { addCommand("dags", newDAGsBackfillCmd) }

func newDAGsBackfillCmd(a *app) *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "backfill DAG_ID --from TIME --to TIME",
		Short: "Create the runs of every data interval in a range",
		Long: `Backfill records a run (run type backfill, run id "backfill__<logical date>")
for every interval of the DAG's schedule whose start lies between --from and
--to, both included, oldest first. Intervals that already have a run are
skipped. The runs start as the DAG's MaxActiveRuns allows; the others wait
in state queued and start as running ones finish (the scheduler starts
them). Workers execute the tasks.

Times are RFC 3339 (2026-03-01T00:00:00Z) or UTC dates (2026-03-01).`,
		Example: `  trellis dags backfill etl_example --from 2026-01-01 --to 2026-01-31`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" || to == "" {
				return usagef("backfill needs both --from and --to")
			}
			start, err := parseTimeFlag("--from", from)
			if err != nil {
				return err
			}
			end, err := parseTimeFlag("--to", to)
			if err != nil {
				return err
			}
			if end.Before(start) {
				return usagef("--to %s is before --from %s", end.Format(time.RFC3339), start.Format(time.RFC3339))
			}
			d, err := a.lookupDAG(args[0])
			if err != nil {
				return err
			}
			if d.ScheduleExpr() == "" {
				return usagef("DAG %q has no schedule, so it has no intervals to backfill; use \"trellis dags trigger\"", d.ID())
			}
			st, err := a.openStore(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer st.Close()
			s := scheduler.New(scheduler.Config{Store: st, Registry: a.registry, Clock: a.clock, Logger: a.logger})
			runs, err := s.Backfill(cmd.Context(), d.ID(), start, end)
			if err != nil {
				return err
			}
			if len(runs) == 0 {
				fmt.Fprintf(a.stdout, "no runs created: no interval of DAG %q starts between %s and %s without a run already\n",
					d.ID(), start.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339))
				return nil
			}
			running := 0
			for _, r := range runs {
				if r.State == state.RunRunning {
					running++
				}
				fmt.Fprintf(a.stdout, "%s\t%s\t[%s, %s)\n", r.RunID, r.State,
					r.IntervalStart.UTC().Format(time.RFC3339), r.IntervalEnd.UTC().Format(time.RFC3339))
			}
			fmt.Fprintf(a.stdout, "created %s of DAG %q: %d running, %d queued\n",
				plural(len(runs), "run"), d.ID(), running, len(runs)-running)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&from, "from", "", "start of the range: the first logical date included (RFC 3339 or YYYY-MM-DD)")
	fs.StringVar(&to, "to", "", "end of the range: the last logical date included (RFC 3339 or YYYY-MM-DD)")
	return cmd
}
