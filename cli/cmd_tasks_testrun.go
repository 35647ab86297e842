package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

func init() { addCommand("tasks", newTasksTestCmd) }

func newTasksTestCmd(a *app) *cobra.Command {
	var (
		rf        runFlags
		tryNumber int
		outputs   []string
	)
	cmd := &cobra.Command{
		Use:   "test DAG_ID TASK_ID",
		Short: "Run one task once, in this process, and print its log and outcome",
		Long: `Run one try of one task in this process, ignoring its upstream tasks and its
trigger rule, print its log as it is written and then its outcome: the state
(success, failed or skipped), the error, the output it recorded and, for a
Branch task, the tasks it follows. Nothing is recorded in the database.

The task reads the outputs of other tasks only from --output TASK=JSON flags;
reading any other task's output fails as if that task had recorded none.
Retries are not made: use --try-number to run the task as a given try.

Exits 0 when the task succeeded or was skipped, 1 when it failed, 2 on a
usage error.`,
		Example: `  trellis tasks test test print_test1
  trellis tasks test etl_example extract --try-number 2 --conf '{"rows": 3}'
  trellis tasks test etl_example choose_load --output 'transform={"rows": 0}'`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tryNumber < 1 {
				return usagef("--try-number must be at least 1, got %d", tryNumber)
			}
			d, err := a.lookupDAG(args[0])
			if err != nil {
				return err
			}
			task, err := lookupTask(d, args[1])
			if err != nil {
				return err
			}
			given, err := parseOutputs(d, outputs)
			if err != nil {
				return err
			}
			lr, err := rf.resolve(d, a.clock.Now())
			if err != nil {
				return err
			}
			start, end := dataInterval(d, lr.logicalDate)
			info := dag.RunInfo{
				DAGID: d.ID(), RunID: lr.runID, TaskID: task.ID(), TryNumber: tryNumber,
				LogicalDate: lr.logicalDate, IntervalStart: start, IntervalEnd: end, Params: lr.params,
			}
			fmt.Fprintf(a.stdout, "running task %s of DAG %s (run %s, try %d)\n", task.ID(), d.ID(), lr.runID, tryNumber)
			began := time.Now()
			out := taskrun.Run(cmd.Context(), taskrun.Try{Task: task, Info: info, Log: a.stdout, Outputs: given})
			writeOutcome(a, out, time.Since(began))
			if out.State == state.Failed {
				return errSilentFailure
			}
			return nil
		},
	}
	rf.add(cmd.Flags())
	cmd.Flags().IntVar(&tryNumber, "try-number", 1, "the try number the task sees (1 = first try)")
	cmd.Flags().StringArrayVar(&outputs, "output", nil, "output of another task of the DAG the task may read, as TASK=JSON (repeatable)")
	return cmd
}

// parseOutputs parses --output TASK=JSON values for the tasks of d.
func parseOutputs(d *dag.DAG, vals []string) (memOutputs, error) {
	m := memOutputs{}
	for _, v := range vals {
		id, js, ok := strings.Cut(v, "=")
		if !ok || id == "" {
			return nil, usagef("--output %q: want TASK=JSON, e.g. extract='[1,2,3]'", v)
		}
		if d.Task(id) == nil {
			return nil, usagef("--output %q: DAG %q has no task %q", v, d.ID(), id)
		}
		if !json.Valid([]byte(js)) {
			return nil, usagef("--output %q: the value after %q= is not valid JSON", v, id)
		}
		m[id] = json.RawMessage(js)
	}
	return m, nil
}

func writeOutcome(a *app, out taskrun.Outcome, took time.Duration) {
	fmt.Fprintf(a.stdout, "\noutcome:  %s in %s\n", out.State, fmtDuration(took))
	if out.Err != nil {
		label := "error:   "
		if out.State == state.Skipped {
			label = "reason:  "
		}
		fmt.Fprintf(a.stdout, "%s %v\n", label, out.Err)
	}
	if out.Permanent {
		fmt.Fprintln(a.stdout, "retry:    no (permanent failure)")
	}
	if out.Output != nil {
		fmt.Fprintf(a.stdout, "output:   %s\n", out.Output)
	}
	if out.Follow != nil {
		fmt.Fprintf(a.stdout, "follows:  %s\n", strings.Join(out.Follow, ", "))
	}
}

// fmtDuration rounds d for people: to the millisecond from 1ms, to the
// microsecond below.
func fmtDuration(d time.Duration) string {
	if d >= time.Millisecond {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}
