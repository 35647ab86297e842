package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/store"
)

func init() { addCommand("tasks", newTasksLogsCmd) }

func newTasksLogsCmd(a *app) *cobra.Command {
	var try int
	cmd := &cobra.Command{
		Use:   "logs DAG_ID RUN_ID TASK_ID",
		Short: "Print the stored log of one try of a task instance",
		Long: `Logs prints the log the workers stored for one try of a task of a run in the
database (--database-url): what a Shell task wrote to stdout and stderr, the
lines of a Func task's Context.Logger(), a panic's stack trace. A log that
reached the size cap ends with a truncation marker.

Without --try it prints the latest try of the task instance; --try N picks
an earlier one (tries count from 1). The log goes to stdout as it was
written, nothing added, so it can be piped.

Exits 1, naming what is missing, when the DAG, the run, the task or the try
does not exist, or when the task has not started a try yet. The DAG need not
be compiled into this binary: a run of a DAG removed since keeps its logs.`,
		Example: `  trellis tasks logs etl_example manual__2026-03-01T00:00:00Z extract
  trellis tasks logs etl_example scheduled__2026-03-01T00:00:00Z load --try 1`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("try") && try < 1 {
				return usagef("--try must be at least 1, got %d", try)
			}
			st, err := a.openStore(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer st.Close()
			log, err := readTaskLog(cmd.Context(), st, args[0], args[1], args[2], try)
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(log)
			return err
		},
	}
	cmd.Flags().IntVar(&try, "try", 0, "the try whose log to print, from 1 (default the latest)")
	return cmd
}

// readTaskLog returns the log of try of task taskID in run runID of DAG
// dagID; try 0 means the latest try. An error names what does not exist.
func readTaskLog(ctx context.Context, st store.Store, dagID, runID, taskID string, try int) ([]byte, error) {
	ti, err := st.GetTaskInstance(ctx, dagID, runID, taskID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, missingTaskInstance(ctx, st, dagID, runID, taskID)
	}
	if err != nil {
		return nil, fmt.Errorf("read task %q of run %q of DAG %q: %w", taskID, runID, dagID, err)
	}
	if ti.TryNumber == 0 {
		return nil, fmt.Errorf("task %q of run %q of DAG %q has not started a try yet (state %s): it has no log",
			taskID, runID, dagID, ti.State)
	}
	if try == 0 {
		try = ti.TryNumber
	}
	if try > ti.TryNumber {
		tries := fmt.Sprintf("%d tries", ti.TryNumber)
		if ti.TryNumber == 1 {
			tries = "1 try"
		}
		return nil, fmt.Errorf("task %q of run %q of DAG %q has no try %d: it has had %s", taskID, runID, dagID, try, tries)
	}
	log, err := st.ReadLog(ctx, dagID, runID, taskID, try)
	if err != nil {
		// The instance exists and had the try: only a concurrent delete
		// or clear gets here.
		return nil, fmt.Errorf("read the log of try %d of task %q of run %q of DAG %q: %w", try, taskID, runID, dagID, err)
	}
	return log, nil
}

// missingTaskInstance explains which of the DAG, the run and the task does
// not exist.
func missingTaskInstance(ctx context.Context, st store.Store, dagID, runID, taskID string) error {
	if _, err := st.GetRun(ctx, dagID, runID); errors.Is(err, store.ErrNotFound) {
		if _, err := st.GetDAG(ctx, dagID); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("unknown DAG %q: the database has no DAG of that id", dagID)
		} else if err != nil {
			return fmt.Errorf("read DAG %q: %w", dagID, err)
		}
		return fmt.Errorf("DAG %q has no run %q", dagID, runID)
	} else if err != nil {
		return fmt.Errorf("read run %q of DAG %q: %w", runID, dagID, err)
	}
	return fmt.Errorf("run %q of DAG %q has no task %q", runID, dagID, taskID)
}
