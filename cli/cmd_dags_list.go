package cli

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/dag"
)

func init() { addCommand("dags", newDAGsListCmd) }

// dagListing is one row of `dags list`; its JSON form is the row of
// --format json.
type dagListing struct {
	DAGID       string     `json:"dag_id"`
	Description string     `json:"description,omitempty"`
	Schedule    string     `json:"schedule"` // "" = manual only
	NextRun     *time.Time `json:"next_run"` // nil = none (manual, invalid, or past its end date)
	Tasks       int        `json:"tasks"`    // task count
	Tags        []string   `json:"tags"`     // never null
	Error       string     `json:"schedule_error,omitempty"`
}

func newDAGsListCmd(a *app) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the DAGs with their schedules and next run times",
		Long: `List every DAG of this binary, sorted by id: its schedule, when the
scheduler would next create a run for it, its number of tasks and its tags.

NEXT RUN is computed from the schedule, the start date and the end date
alone, as of now (UTC): it is the end of the first data interval that ends
after now. The database is not read, so pauses and runs already made are not
taken into account; a DAG without schedule shows "manual".

The registry is validated too: when any DAG has problems they are printed on
stderr after the list and the command exits 1.`,
		Example: `  trellis dags list
  trellis dags list --format json | jq -r '.[].dag_id'`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return usagef("--format %q: want table or json", format)
			}
			rows := listDAGs(a.registry.DAGs(), a.clock.Now())
			if format == "json" {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rows); err != nil {
					return fmt.Errorf("write DAG list: %w", err)
				}
			} else if err := writeDAGTable(a, rows); err != nil {
				return err
			}
			if problems := a.registry.Validate(); len(problems) > 0 {
				fmt.Fprintf(a.stderr, "\n%s (run \"trellis dags validate\"):\n", plural(len(problems), "problem"))
				writeProblems(a.stderr, problems, "  ")
				return errSilentFailure
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return cmd
}

func listDAGs(dags []*dag.DAG, now time.Time) []dagListing {
	rows := make([]dagListing, 0, len(dags))
	for _, d := range dags {
		r := dagListing{
			DAGID:       d.ID(),
			Description: d.Description(),
			Schedule:    d.ScheduleExpr(),
			Tasks:       len(d.Tasks()),
			Tags:        d.Tags(),
		}
		if r.Tags == nil {
			r.Tags = []string{}
		}
		tt, err := d.ParsedSchedule()
		switch {
		case err != nil:
			r.Error = err.Error()
		case tt != nil:
			if next, ok := nextRun(tt, d.StartDate(), d.EndDate(), now); ok {
				next = next.UTC()
				r.NextRun = &next
			}
		}
		rows = append(rows, r)
	}
	slices.SortStableFunc(rows, func(x, y dagListing) int { return strings.Compare(x.DAGID, y.DAGID) })
	return rows
}

func writeDAGTable(a *app, rows []dagListing) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DAG ID\tSCHEDULE\tNEXT RUN (UTC)\tTASKS\tTAGS")
	for _, r := range rows {
		sched, next := r.Schedule, "-"
		switch {
		case r.Schedule == "":
			sched, next = "manual", "-"
		case r.Error != "":
			next = "invalid schedule"
		case r.NextRun != nil:
			next = r.NextRun.Format(time.RFC3339)
		}
		tags := strings.Join(r.Tags, ",")
		if tags == "" {
			tags = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", r.DAGID, sched, next, r.Tasks, tags)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write DAG list: %w", err)
	}
	return nil
}

// nextRun returns when a run of a DAG with timetable tt would next be
// created after now, from the schedule alone: the end of the first data
// interval [s, e) with e > now, s at or after start (when set) and s no
// later than end (when set). ok is false when there is none.
func nextRun(tt *dag.Timetable, start, end, now time.Time) (time.Time, bool) {
	if every := tt.Every(); every > 0 {
		if start.IsZero() {
			return now.Add(every), true
		}
		fire := start.Add(every)
		if now.After(start) {
			k := now.Sub(start)/every + 1
			fire = start.Add(k * every)
		}
		if !end.IsZero() && fire.Add(-every).After(end) {
			return time.Time{}, false
		}
		return fire, true
	}
	if !start.IsZero() {
		first := tt.Next(start.Add(-time.Nanosecond)) // first activation at or after start
		if first.IsZero() {
			return time.Time{}, false
		}
		if first.After(now) {
			if !end.IsZero() && first.After(end) {
				return time.Time{}, false
			}
			fire := tt.Next(first)
			return fire, !fire.IsZero()
		}
	}
	fire := tt.Next(now)
	if fire.IsZero() {
		return time.Time{}, false
	}
	// The interval ending at fire starts at the last activation at or
	// before now; it is after end exactly when an activation falls in
	// (end, now].
	if !end.IsZero() && end.Before(now) && !tt.Next(end).After(now) {
		return time.Time{}, false
	}
	return fire, true
}
