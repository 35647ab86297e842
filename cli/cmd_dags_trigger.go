package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/scheduler"
)

func init() { addCommand("dags", newDAGsTriggerCmd) }

func newDAGsTriggerCmd(a *app) *cobra.Command {
	var conf, runID, logicalDate, note string
	cmd := &cobra.Command{
		Use:   "trigger DAG_ID",
		Short: "Create a manual run of a DAG in the database",
		Long: `Trigger records a manual run of the DAG in the database (--database-url) and
starts it at once unless the DAG is paused or already has MaxActiveRuns runs
running; then it waits in state queued. Workers execute its tasks.

The run's params are the DAG's Params overlaid, key by key, by --conf (a
JSON object). Its run id defaults to "manual__<logical date, RFC 3339>" and
its logical date to now; for a scheduled DAG the data interval is the latest
complete interval of the schedule at the logical date.`,
		Example: `  trellis dags trigger etl_example
  trellis dags trigger etl_example --conf '{"rows": 10}' --logical-date 2026-03-01T00:00:00Z`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.lookupDAG(args[0])
			if err != nil {
				return err
			}
			opts := scheduler.TriggerOptions{RunID: strings.TrimSpace(runID), Note: note}
			if strings.TrimSpace(conf) != "" {
				c, err := scheduler.NormalizeConf(json.RawMessage(conf))
				if err != nil {
					return usagef("--conf: %v", err)
				}
				opts.Conf = c
			}
			if logicalDate != "" {
				t, err := parseTimeFlag("--logical-date", logicalDate)
				if err != nil {
					return err
				}
				opts.LogicalDate = &t
			}
			st, err := a.openStore(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer st.Close()
			s := scheduler.New(scheduler.Config{Store: st, Registry: a.registry, Clock: a.clock, Logger: a.logger})
			run, err := s.TriggerRun(cmd.Context(), d.ID(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "triggered run %s of DAG %q: %s, logical date %s, data interval [%s, %s)\n",
				run.RunID, run.DAGID, run.State, run.LogicalDate.UTC().Format(time.RFC3339Nano),
				run.IntervalStart.UTC().Format(time.RFC3339), run.IntervalEnd.UTC().Format(time.RFC3339))
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&conf, "conf", "", `run configuration, a JSON object overlaying the DAG's params, e.g. '{"rows": 0}'`)
	fs.StringVar(&runID, "run-id", "", `run id (default "manual__<logical date>")`)
	fs.StringVar(&logicalDate, "logical-date", "", "logical date, RFC 3339 or YYYY-MM-DD (default now)")
	fs.StringVar(&note, "note", "", "a note stored with the run")
	return cmd
}

// timeFlagLayouts are the forms a time flag accepts; those without a zone
// are UTC.
var timeFlagLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"}

// parseTimeFlag parses the value of a time flag; the error is a usage
// error naming the flag and the accepted forms.
func parseTimeFlag(flag, v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	for _, layout := range timeFlagLayouts {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usagef("%s %q is not a time: want RFC 3339 (2026-03-01T00:00:00Z, 2026-03-01T02:00:00+01:00) "+
		"or a UTC date or time (2026-03-01, 2026-03-01T12:00:00)", flag, v)
}
