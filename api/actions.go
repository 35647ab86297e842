package api

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// relatives returns ids plus, as asked, every task upstream and/or
// downstream of them (transitively) in d, in d's topological order when it
// has one, else in the order found.
func relatives(d *dag.DAG, ids []string, upstream, downstream bool) []string {
	seen := map[string]bool{}
	var walk func(t *dag.Task, up bool)
	walk = func(t *dag.Task, up bool) {
		next := t.Downstream()
		if up {
			next = t.Upstream()
		}
		for _, n := range next {
			if !seen[n.ID()] {
				seen[n.ID()] = true
				walk(n, up)
			}
		}
	}
	for _, id := range ids {
		seen[id] = true
		if t := d.Task(id); t != nil {
			if upstream {
				walk(t, true)
			}
			if downstream {
				walk(t, false)
			}
		}
	}
	out := make([]string, 0, len(seen))
	added := make(map[string]bool, len(seen))
	add := func(id string) {
		if seen[id] && !added[id] {
			added[id] = true
			out = append(out, id)
		}
	}
	if order, err := d.TopologicalOrder(); err == nil {
		for _, t := range order {
			add(t.ID())
		}
	}
	for _, id := range ids { // ids unknown to the binary's DAG, or a cyclic DAG
		add(id)
	}
	rest := make([]string, 0, len(seen)-len(out))
	for id := range seen {
		if !added[id] {
			rest = append(rest, id)
		}
	}
	slices.Sort(rest)
	return append(out, rest...)
}

// forEachRun calls fn for the runs of one DAG matching q, oldest logical
// date first, reading them in batches.
func (a *api) forEachRun(ctx context.Context, q store.RunQuery, fn func(store.Run) error) error {
	q.OrderBy = "logical_date"
	q.Limit = scanBatch
	for q.Offset = 0; ; q.Offset += scanBatch {
		runs, _, err := a.store.ListRuns(ctx, q)
		if err != nil {
			return err
		}
		for _, r := range runs {
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(runs) < scanBatch {
			return nil
		}
	}
}

// runTaskInstances returns every task instance of one run matching the
// task ids (nil: all) and states (nil: all).
func (a *api) runTaskInstances(ctx context.Context, run store.Run, taskIDs []string, states []state.TaskState) ([]store.TaskInstance, error) {
	q := store.TaskQuery{
		DAGIDs: []string{run.DAGID}, DAGRunIDs: []string{run.RunID},
		TaskIDs: taskIDs, States: states, Limit: scanBatch,
	}
	var out []store.TaskInstance
	for q.Offset = 0; ; q.Offset += scanBatch {
		tis, _, err := a.store.ListTaskInstances(ctx, q)
		if err != nil {
			return nil, err
		}
		out = append(out, tis...)
		if len(tis) < scanBatch {
			return out, nil
		}
	}
}

func ref(ti store.TaskInstance, logicalDate time.Time) taskInstanceRefJSON {
	return taskInstanceRefJSON{TaskID: ti.TaskID, DAGID: ti.DAGID, ExecutionDate: formatTime(logicalDate), DAGRunID: ti.DAGRunID}
}

func writeRefs(w http.ResponseWriter, refs []taskInstanceRefJSON) error {
	if refs == nil {
		refs = []taskInstanceRefJSON{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"task_instances": refs})
}

// clearForm are the members of Airflow's ClearTaskInstances.
var clearForm = []string{
	"dry_run", "task_ids", "start_date", "end_date", "only_failed", "only_running", "reset_dag_runs",
	"dag_run_id", "include_upstream", "include_downstream", "include_future", "include_past",
}

// clearRequest is a validated ClearTaskInstances body.
type clearRequest struct {
	dryRun, onlyFailed, onlyRunning    bool
	upstream, downstream, future, past bool
	taskIDs                            []string
	runID                              string
	start, end                         *time.Time
}

func parseClear(b body) (clearRequest, error) {
	var c clearRequest
	var err error
	for _, f := range []struct {
		name string
		def  bool
		into *bool
	}{
		{"dry_run", true, &c.dryRun}, {"only_failed", true, &c.onlyFailed}, {"only_running", false, &c.onlyRunning},
		{"include_upstream", false, &c.upstream}, {"include_downstream", false, &c.downstream},
		{"include_future", false, &c.future}, {"include_past", false, &c.past},
	} {
		if *f.into, err = b.boolField(f.name, f.def); err != nil {
			return c, err
		}
	}
	if _, err := b.boolField("reset_dag_runs", true); err != nil {
		return c, err
	}
	if c.taskIDs, err = b.idsField("task_ids", "task id", validDAGID); err != nil {
		return c, err
	}
	if c.taskIDs != nil && len(c.taskIDs) == 0 {
		return c, badRequest("field \"task_ids\" must list at least one task id")
	}
	if c.runID, _, err = b.stringField("dag_run_id", true); err != nil {
		return c, err
	}
	if c.runID != "" && !validRunID(c.runID) {
		return c, badRequest("field \"dag_run_id\" %q is not a valid DAG run id", c.runID)
	}
	if c.start, err = b.timeField("start_date", false); err != nil {
		return c, err
	}
	if c.end, err = b.timeField("end_date", false); err != nil {
		return c, err
	}
	switch {
	case c.onlyFailed && c.onlyRunning:
		return c, badRequest("only_failed and only_running cannot both be true (only_failed defaults to true)")
	case c.start != nil && c.end != nil && c.end.Before(*c.start):
		return c, badRequest("end_date is before start_date")
	case c.runID != "" && (c.start != nil || c.end != nil):
		return c, badRequest("give either dag_run_id or start_date/end_date, not both")
	case c.runID == "" && (c.future || c.past):
		return c, badRequest("include_future and include_past need dag_run_id")
	}
	return c, nil
}

// postClearTaskInstances resets task instances so they run again and puts
// their runs back to running: POST /api/v1/dags/{dag_id}/clearTaskInstances.
// As in Airflow, dry_run and only_failed default to true; the runs are
// the one named by dag_run_id (with include_past/include_future, also
// the earlier/later ones) or those with a logical date between start_date
// and end_date; the tasks are task_ids (default all) with, as asked, their
// upstream and downstream tasks; of these, the instances in the states
// selected by only_failed (failed, upstream_failed) or only_running are
// cleared. It answers the instances cleared (or, dry, that would be).
func (a *api) postClearTaskInstances(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	b, err := decodeBody(r, clearForm, nil)
	if err != nil {
		return err
	}
	c, err := parseClear(b)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := a.getStoredDAG(ctx, dagID); err != nil {
		return err
	}
	taskIDs := c.taskIDs
	if c.upstream || c.downstream {
		d, err := a.binaryDAG(dagID)
		if err != nil {
			return err
		}
		if taskIDs == nil {
			for _, t := range d.Tasks() {
				taskIDs = append(taskIDs, t.ID())
			}
		}
		taskIDs = relatives(d, taskIDs, c.upstream, c.downstream)
	}
	var states []state.TaskState
	switch {
	case c.onlyFailed:
		states = []state.TaskState{state.Failed, state.UpstreamFailed}
	case c.onlyRunning:
		states = []state.TaskState{state.Running}
	}
	q := store.RunQuery{DAGIDs: []string{dagID}, LogicalDateGTE: c.start, LogicalDateLTE: c.end}
	if c.runID != "" {
		anchor, err := a.getStoredRun(ctx, dagID, c.runID)
		if err != nil {
			return err
		}
		ld := anchor.LogicalDate
		q.LogicalDateGTE, q.LogicalDateLTE = &ld, &ld
		if c.past {
			q.LogicalDateGTE = nil
		}
		if c.future {
			q.LogicalDateLTE = nil
		}
		if !c.past && !c.future {
			refs, err := a.clearRun(ctx, anchor, taskIDs, states, c.dryRun)
			if err != nil {
				return err
			}
			return writeRefs(w, refs)
		}
	}
	var refs []taskInstanceRefJSON
	err = a.forEachRun(ctx, q, func(run store.Run) error {
		rs, err := a.clearRun(ctx, run, taskIDs, states, c.dryRun)
		refs = append(refs, rs...)
		return err
	})
	if err != nil {
		return err
	}
	return writeRefs(w, refs)
}

// clearRun clears the matching task instances of one run.
func (a *api) clearRun(ctx context.Context, run store.Run, taskIDs []string, states []state.TaskState, dry bool) ([]taskInstanceRefJSON, error) {
	tis, err := a.runTaskInstances(ctx, run, taskIDs, states)
	if err != nil || len(tis) == 0 {
		return nil, err
	}
	if !dry {
		ids := make([]string, len(tis))
		for i, ti := range tis {
			ids[i] = ti.TaskID
		}
		tis, err = a.store.ClearTasks(ctx, run.DAGID, run.RunID, ids, false, a.clock.Now().UTC())
		a.changed()
		if err != nil {
			if isNotFound(err) {
				return nil, nil // the run was deleted meanwhile
			}
			return nil, storeError(err, "DAGRun '"+run.RunID+"' of DAG '"+run.DAGID+"'")
		}
	}
	refs := make([]taskInstanceRefJSON, len(tis))
	for i, ti := range tis {
		refs[i] = ref(ti, run.LogicalDate)
	}
	return refs, nil
}

// updateStateForm are the members of Airflow's UpdateTaskInstancesState.
var updateStateForm = []string{
	"dry_run", "task_id", "execution_date", "dag_run_id", "include_upstream",
	"include_downstream", "include_future", "include_past", "new_state",
}

// postUpdateTaskInstancesState marks a task (with, as asked, its upstream
// and downstream tasks, in its run and, as asked, earlier and later runs)
// success, failed or skipped: POST /api/v1/dags/{dag_id}/updateTaskInstancesState.
// As in Airflow, dry_run defaults to true, and the instances already in
// new_state are left alone. It answers the instances changed (or, dry,
// that would be).
func (a *api) postUpdateTaskInstancesState(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	b, err := decodeBody(r, updateStateForm, nil)
	if err != nil {
		return err
	}
	var dry, up, down, future, past bool
	for _, f := range []struct {
		name string
		def  bool
		into *bool
	}{
		{"dry_run", true, &dry}, {"include_upstream", false, &up}, {"include_downstream", false, &down},
		{"include_future", false, &future}, {"include_past", false, &past},
	} {
		if *f.into, err = b.boolField(f.name, f.def); err != nil {
			return err
		}
	}
	taskID, ok, err := b.stringField("task_id", false)
	if err != nil {
		return err
	}
	if !ok {
		return badRequest("field \"task_id\" is required")
	}
	if !dag.ValidID(taskID) {
		return badRequest("field \"task_id\" %q is not a valid task id", taskID)
	}
	ns, ok, err := b.stringField("new_state", false)
	if err != nil {
		return err
	}
	newState := state.TaskState(ns)
	switch {
	case !ok:
		return badRequest("field \"new_state\" is required (success, failed or skipped)")
	case newState != state.Success && newState != state.Failed && newState != state.Skipped:
		return badRequest("field \"new_state\" must be success, failed or skipped, got %q", ns)
	}
	runID, hasRun, err := b.stringField("dag_run_id", false)
	if err != nil {
		return err
	}
	if hasRun && !validRunID(runID) {
		return badRequest("field \"dag_run_id\" %q is not a valid DAG run id", runID)
	}
	logical, err := b.timeField("execution_date", false)
	if err != nil {
		return err
	}
	if hasRun == (logical != nil) {
		return badRequest("give exactly one of dag_run_id and execution_date")
	}
	ctx := r.Context()
	if _, err := a.getStoredDAG(ctx, dagID); err != nil {
		return err
	}
	taskIDs := []string{taskID}
	d := a.registry.Lookup(dagID)
	if d == nil && (up || down) {
		return dagNotFound(dagID)
	}
	if d != nil {
		if d.Task(taskID) == nil {
			return notFound("Task not found", "Task with task_id: '%s' not found in DAG '%s'", taskID, dagID)
		}
		taskIDs = relatives(d, taskIDs, up, down)
	}
	var anchor store.Run
	if hasRun {
		if anchor, err = a.getStoredRun(ctx, dagID, runID); err != nil {
			return err
		}
	} else {
		runs, _, err := a.store.ListRuns(ctx, store.RunQuery{DAGIDs: []string{dagID},
			LogicalDateGTE: logical, LogicalDateLTE: logical, Limit: 1})
		if err != nil {
			return err
		}
		if len(runs) == 0 {
			return notFound("DAGRun not found", "DAGRun of DAG '%s' with logical date '%s' not found", dagID, formatTime(*logical))
		}
		anchor = runs[0]
	}
	mark := func(run store.Run) ([]taskInstanceRefJSON, error) {
		return a.markRun(ctx, run, taskIDs, newState, dry)
	}
	if !past && !future {
		refs, err := mark(anchor)
		if err != nil {
			return err
		}
		return writeRefs(w, refs)
	}
	ld := anchor.LogicalDate
	q := store.RunQuery{DAGIDs: []string{dagID}, LogicalDateGTE: &ld, LogicalDateLTE: &ld}
	if past {
		q.LogicalDateGTE = nil
	}
	if future {
		q.LogicalDateLTE = nil
	}
	var refs []taskInstanceRefJSON
	err = a.forEachRun(ctx, q, func(run store.Run) error {
		rs, err := mark(run)
		refs = append(refs, rs...)
		return err
	})
	if err != nil {
		return err
	}
	return writeRefs(w, refs)
}

// markRun sets the instances of taskIDs in one run to s, in the order of
// taskIDs (upstream first), skipping those already in s and those the
// store refuses to move to s.
func (a *api) markRun(ctx context.Context, run store.Run, taskIDs []string, s state.TaskState, dry bool) ([]taskInstanceRefJSON, error) {
	tis, err := a.runTaskInstances(ctx, run, taskIDs, nil)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]store.TaskInstance, len(tis))
	for _, ti := range tis {
		byID[ti.TaskID] = ti
	}
	var refs []taskInstanceRefJSON
	for _, id := range taskIDs {
		ti, ok := byID[id]
		if !ok || ti.State == s {
			continue
		}
		if !dry {
			ti, err = a.store.SetTaskState(ctx, run.DAGID, run.RunID, id, s, a.clock.Now().UTC())
			a.changed()
			if err != nil {
				if isNotFound(err) || isConflict(err) {
					// Deleted meanwhile, or in a state that cannot move
					// to s: it is not among the instances changed.
					continue
				}
				return nil, err
			}
		}
		refs = append(refs, ref(ti, run.LogicalDate))
	}
	return refs, nil
}
