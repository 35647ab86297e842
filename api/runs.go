package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// dagRunFields are the members of Airflow's DAGRun object.
var dagRunFields = []string{
	"dag_run_id", "dag_id", "logical_date", "execution_date", "start_date", "end_date",
	"data_interval_start", "data_interval_end", "last_scheduling_decision", "run_type", "state",
	"external_trigger", "conf", "note",
}

// runOrder lists the order_by fields of run lists (Airflow's names, which
// the store accepts as they are).
var runOrder = map[string]string{
	"id": "id", "dag_id": "dag_id", "dag_run_id": "dag_run_id", "run_type": "run_type", "state": "state",
	"logical_date": "logical_date", "execution_date": "execution_date",
	"data_interval_start": "data_interval_start", "data_interval_end": "data_interval_end",
	"start_date": "start_date", "end_date": "end_date", "queued_at": "queued_at",
}

// defaultRunOrder is Airflow's default order of run lists: creation order.
const defaultRunOrder = "id"

// orderBy translates an order_by value with an optional "-" through names.
// An empty value is passed on as it is (the caller's default).
func orderBy(value string, names map[string]string) (string, error) {
	if value == "" {
		return "", nil
	}
	field, desc := strings.CutPrefix(value, "-")
	to, ok := names[field]
	if !ok {
		keys := make([]string, 0, len(names))
		for k := range names {
			keys = append(keys, k)
		}
		return "", badRequest("ordering with %q is not supported; use one of %s (with - for descending)",
			value, strings.Join(sortedStrings(keys), ", "))
	}
	if desc {
		return "-" + to, nil
	}
	return to, nil
}

// runStates validates run state filter values.
func runStates(values []string, name string) ([]state.RunState, error) {
	var out []state.RunState
	for _, v := range values {
		s := state.RunState(v)
		if !s.Valid() {
			return nil, badRequest("%s: unknown DAG run state %q (want one of queued, running, success, failed)", name, v)
		}
		out = append(out, s)
	}
	return out, nil
}

// timeRange is an inclusive range filter; nil ends are open.
type timeRange struct{ gte, lte *time.Time }

func (tr timeRange) contains(t *time.Time) bool {
	if tr.gte == nil && tr.lte == nil {
		return true
	}
	if t == nil {
		return false
	}
	return (tr.gte == nil || !t.Before(*tr.gte)) && (tr.lte == nil || !t.After(*tr.lte))
}

func (tr timeRange) set() bool { return tr.gte != nil || tr.lte != nil }

// queryRange reads the parameters <name>_gte and <name>_lte.
func queryRange(q query, name string) (timeRange, error) {
	var tr timeRange
	var err error
	if tr.gte, err = q.time(name + "_gte"); err != nil {
		return tr, err
	}
	if tr.lte, err = q.time(name + "_lte"); err != nil {
		return tr, err
	}
	return tr, nil
}

// bodyRange reads the members <name>_gte and <name>_lte.
func bodyRange(b body, name string) (timeRange, error) {
	var tr timeRange
	var err error
	if tr.gte, err = b.timeField(name+"_gte", false); err != nil {
		return tr, err
	}
	if tr.lte, err = b.timeField(name+"_lte", false); err != nil {
		return tr, err
	}
	return tr, nil
}

// updatedAt is when a run last changed state: Trellis keeps the times of
// its state changes, not a separate update time.
func updatedAt(queued time.Time, started, ended *time.Time) *time.Time {
	t := queued
	for _, x := range []*time.Time{started, ended} {
		if x != nil && x.After(t) {
			t = *x
		}
	}
	if t.IsZero() {
		return nil
	}
	return &t
}

// scanBatch is how many rows a list with filters the store cannot apply
// reads at a time.
const scanBatch = 500

// listRuns returns one page of the runs matching q and, when residual is
// not nil, residual too, with the number of matches. The store applies q;
// residual is applied while reading the matches in batches, never holding
// more than a batch and the page.
func (a *api) listRuns(ctx context.Context, q store.RunQuery, p page, residual func(store.Run) bool) ([]store.Run, int, error) {
	if residual == nil {
		q.Limit, q.Offset = p.limit, p.offset
		runs, total, err := a.store.ListRuns(ctx, q)
		if runs == nil {
			runs = []store.Run{}
		}
		return runs, total, err
	}
	out := []store.Run{}
	total := 0
	q.Limit = scanBatch
	for q.Offset = 0; ; q.Offset += scanBatch {
		runs, _, err := a.store.ListRuns(ctx, q)
		if err != nil {
			return nil, 0, err
		}
		for _, r := range runs {
			if !residual(r) {
				continue
			}
			if total >= p.offset && len(out) < p.limit {
				out = append(out, r)
			}
			total++
		}
		if len(runs) < scanBatch {
			return out, total, nil
		}
	}
}

// runFilter is a run list request.
type runFilter struct {
	q       store.RunQuery
	updated timeRange
}

func (f runFilter) residual() func(store.Run) bool {
	if !f.updated.set() {
		return nil
	}
	return func(r store.Run) bool {
		return f.updated.contains(updatedAt(r.QueuedAt, r.StartedAt, r.EndedAt))
	}
}

func (f *runFilter) setRanges(logical, start, end timeRange) {
	f.q.LogicalDateGTE, f.q.LogicalDateLTE = logical.gte, logical.lte
	f.q.StartDateGTE, f.q.StartDateLTE = start.gte, start.lte
	f.q.EndDateGTE, f.q.EndDateLTE = end.gte, end.lte
}

func writeRuns(w http.ResponseWriter, runs []store.Run, total int, fields []string) error {
	items := make([]any, len(runs))
	for i, r := range runs {
		var err error
		if items[i], err = project(toRun(r), fields); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"dag_runs": items, "total_entries": total})
}

// getRuns lists the runs of a DAG, or of all DAGs with dag_id ~:
// GET /api/v1/dags/{dag_id}/dagRuns.
func (a *api) getRuns(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	q := query{r.URL.Query()}
	p, err := pageParams(q, a.defLimit, a.maxLimit)
	if err != nil {
		return err
	}
	var f runFilter
	var logical, start, end timeRange
	if logical, err = queryRange(q, "execution_date"); err != nil {
		return err
	}
	if start, err = queryRange(q, "start_date"); err != nil {
		return err
	}
	if end, err = queryRange(q, "end_date"); err != nil {
		return err
	}
	if f.updated, err = queryRange(q, "updated_at"); err != nil {
		return err
	}
	f.setRanges(logical, start, end)
	if f.q.States, err = runStates(q.list("state"), "query parameter \"state\""); err != nil {
		return err
	}
	ob, _, err := q.one("order_by")
	if err != nil {
		return err
	}
	if f.q.OrderBy, err = orderBy(cmp.Or(ob, defaultRunOrder), runOrder); err != nil {
		return err
	}
	fields, err := returnFields(q, dagRunFields)
	if err != nil {
		return err
	}
	if dagID != "~" {
		if _, err := a.getStoredDAG(r.Context(), dagID); err != nil {
			return err
		}
		f.q.DAGIDs = []string{dagID}
	}
	runs, total, err := a.listRuns(r.Context(), f.q, p, f.residual())
	if err != nil {
		return err
	}
	return writeRuns(w, runs, total, fields)
}

// listRunsForm are the members of Airflow's ListDagRunsForm.
var listRunsForm = []string{
	"order_by", "page_offset", "page_limit", "dag_ids", "states", "execution_date_gte",
	"execution_date_lte", "start_date_gte", "start_date_lte", "end_date_gte", "end_date_lte",
}

// postListRuns lists runs across DAGs: POST /api/v1/dags/~/dagRuns/list.
func (a *api) postListRuns(w http.ResponseWriter, r *http.Request) error {
	b, err := decodeBody(r, listRunsForm, nil)
	if err != nil {
		return err
	}
	p, err := a.bodyPage(b)
	if err != nil {
		return err
	}
	var f runFilter
	if f.q.DAGIDs, err = b.idsField("dag_ids", "DAG id", validDAGID); err != nil {
		return err
	}
	states, err := b.stringsField("states")
	if err != nil {
		return err
	}
	if f.q.States, err = runStates(states, "field \"states\""); err != nil {
		return err
	}
	var logical, start, end timeRange
	if logical, err = bodyRange(b, "execution_date"); err != nil {
		return err
	}
	if start, err = bodyRange(b, "start_date"); err != nil {
		return err
	}
	if end, err = bodyRange(b, "end_date"); err != nil {
		return err
	}
	f.setRanges(logical, start, end)
	ob, _, err := b.stringField("order_by", false)
	if err != nil {
		return err
	}
	if f.q.OrderBy, err = orderBy(cmp.Or(ob, defaultRunOrder), runOrder); err != nil {
		return err
	}
	if f.q.DAGIDs != nil && len(f.q.DAGIDs) == 0 {
		// An empty list selects nothing (a nil one selects every DAG).
		return writeRuns(w, nil, 0, nil)
	}
	runs, total, err := a.listRuns(r.Context(), f.q, p, nil)
	if err != nil {
		return err
	}
	return writeRuns(w, runs, total, nil)
}

// runNotFound is the 404 for an unknown run.
func runNotFound(dagID, runID string) error {
	return notFound("DAGRun not found", "DAGRun with DAG ID: '%s' and DagRun ID: '%s' not found", dagID, runID)
}

// runParams reads the dag_id and dag_run_id path parameters.
func runParams(r *http.Request) (dagID, runID string, err error) {
	if dagID, err = pathParam(r, "dag_id"); err != nil {
		return "", "", err
	}
	if runID, err = pathParam(r, "dag_run_id"); err != nil {
		return "", "", err
	}
	return dagID, runID, nil
}

func (a *api) getStoredRun(ctx context.Context, dagID, runID string) (store.Run, error) {
	run, err := a.store.GetRun(ctx, dagID, runID)
	if err != nil {
		if isNotFound(err) {
			return run, runNotFound(dagID, runID)
		}
		return run, err
	}
	return run, nil
}

// getRun returns one run: GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}.
func (a *api) getRun(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, err := runParams(r)
	if err != nil {
		return err
	}
	fields, err := returnFields(query{r.URL.Query()}, dagRunFields)
	if err != nil {
		return err
	}
	run, err := a.getStoredRun(r.Context(), dagID, runID)
	if err != nil {
		return err
	}
	out, err := project(toRun(run), fields)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// postRunFields are the DAGRun members a trigger may set; the others are
// read-only. Without data_interval_start and data_interval_end the data
// interval of a manual run is derived from the DAG's schedule.
var (
	postRunFields   = []string{"dag_run_id", "logical_date", "execution_date", "conf", "note", "data_interval_start", "data_interval_end"}
	postRunReadOnly = []string{"dag_id", "start_date", "end_date", "last_scheduling_decision", "run_type", "state",
		"external_trigger"}
)

// triggerRequest validates the body of POST …/dagRuns.
func triggerRequest(b body) (TriggerRequest, error) {
	var req TriggerRequest
	runID, ok, err := b.stringField("dag_run_id", true)
	if err != nil {
		return req, err
	}
	if ok {
		if !runIDPattern.MatchString(runID) {
			return req, badRequest("field \"dag_run_id\" %q must be 1 to 250 characters from A-Z a-z 0-9 _ . ~ : + -", runID)
		}
		req.RunID = runID
	}
	logical, err := b.timeField("logical_date", true)
	if err != nil {
		return req, err
	}
	execution, err := b.timeField("execution_date", true)
	if err != nil {
		return req, err
	}
	switch {
	case logical != nil && execution != nil && !logical.Equal(*execution):
		return req, badRequest("logical_date and execution_date differ; give one of them (execution_date is deprecated)")
	case logical != nil:
		req.LogicalDate = logical
	default:
		req.LogicalDate = execution
	}
	if req.IntervalStart, err = b.timeField("data_interval_start", true); err != nil {
		return req, err
	}
	if req.IntervalEnd, err = b.timeField("data_interval_end", true); err != nil {
		return req, err
	}
	switch {
	case (req.IntervalStart == nil) != (req.IntervalEnd == nil):
		return req, badRequest("give both data_interval_start and data_interval_end, or neither")
	case req.IntervalStart != nil && req.IntervalEnd.Before(*req.IntervalStart):
		return req, badRequest("data_interval_end %s is before data_interval_start %s",
			formatTime(*req.IntervalEnd), formatTime(*req.IntervalStart))
	}
	if m, ok := b["conf"]; ok && !isNull(m) {
		var obj map[string]json.RawMessage
		if json.Unmarshal(m, &obj) != nil {
			return req, badRequest("field \"conf\" must be a JSON object, got %s", jsonKind(m))
		}
		if err := checkJSONText("field \"conf\"", m); err != nil {
			return req, err
		}
		if _, err := dag.ParseConf(m); err != nil {
			var ce *dag.ConfError
			if errors.As(err, &ce) {
				return req, badRequest("field %q: %s", ce.Path, ce.Problem)
			}
			return req, badRequest("field \"conf\": %v", err)
		}
		req.Conf = m
	}
	if req.Note, _, err = b.stringField("note", true); err != nil {
		return req, err
	}
	if err := checkText("field \"note\"", req.Note); err != nil {
		return req, err
	}
	return req, nil
}

// postRun triggers a manual run: POST /api/v1/dags/{dag_id}/dagRuns.
func (a *api) postRun(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	b, err := decodeBody(r, postRunFields, postRunReadOnly)
	if err != nil {
		return err
	}
	req, err := triggerRequest(b)
	if err != nil {
		return err
	}
	ctx := r.Context()
	d, err := a.getStoredDAG(ctx, dagID)
	if err != nil {
		return err
	}
	if !d.Active {
		return notFound("DAG not found", "DAG with dag_id: '%s' is not in this binary any more (inactive); it cannot be triggered", dagID)
	}
	run, err := a.triggerer.TriggerRun(ctx, dagID, req)
	switch {
	case isNotFound(err):
		return dagNotFound(dagID)
	case isConflict(err):
		if req.RunID != "" {
			if _, gerr := a.store.GetRun(ctx, dagID, req.RunID); gerr == nil {
				return conflict("DAGRun with DAG ID: '%s' and DAGRun ID: '%s' already exists", dagID, req.RunID)
			}
		}
		if req.LogicalDate != nil {
			return conflict("DAGRun with DAG ID: '%s' and DAGRun logical date: '%s' already exists",
				dagID, formatTime(*req.LogicalDate))
		}
		return conflict("a DAGRun of DAG '%s' with this run id or logical date already exists", dagID)
	case err != nil:
		return err
	}
	a.metrics.RunCreated(dagID, string(store.RunManual))
	return writeJSON(w, http.StatusOK, toRun(run))
}

// patchRun marks a run success or failed (which cancels it), or queued
// (which runs again the tasks of a finished run that failed or were
// upstream_failed): PATCH /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}.
func (a *api) patchRun(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, err := runParams(r)
	if err != nil {
		return err
	}
	b, err := decodeBody(r, []string{"state"}, nil)
	if err != nil {
		return err
	}
	s, ok, err := b.stringField("state", false)
	if err != nil {
		return err
	}
	if !ok {
		return badRequest("field \"state\" is required (success, failed or queued)")
	}
	target := state.RunState(s)
	switch target {
	case state.RunSuccess, state.RunFailed, state.RunQueued:
	default:
		return badRequest("field \"state\" must be success, failed or queued, got %q", s)
	}
	ctx := r.Context()
	current, err := a.getStoredRun(ctx, dagID, runID)
	if err != nil {
		return err
	}
	if target == state.RunQueued {
		return a.requeueRun(ctx, w, current)
	}
	run, err := a.store.SetRunState(ctx, dagID, runID, target, a.clock.Now().UTC())
	a.changed()
	if err != nil {
		if isNotFound(err) {
			return runNotFound(dagID, runID)
		}
		return storeError(err, "DAGRun '"+runID+"' of DAG '"+dagID+"'")
	}
	return writeJSON(w, http.StatusOK, toRun(run))
}

// requeueRun answers PATCH state=queued: a queued or running run is left
// as it is (it runs already); a finished run gets its failed and
// upstream_failed task instances cleared with everything downstream of
// them (so the tasks a cancellation skipped run too), and runs them again.
func (a *api) requeueRun(ctx context.Context, w http.ResponseWriter, run store.Run) error {
	if run.State.Terminal() {
		tis, err := a.runTaskInstances(ctx, run, nil, []state.TaskState{state.Failed, state.UpstreamFailed})
		if err != nil {
			return err
		}
		if len(tis) > 0 {
			ids := make([]string, len(tis))
			for i, ti := range tis {
				ids[i] = ti.TaskID
			}
			_, err = a.store.ClearTasks(ctx, run.DAGID, run.RunID, ids, true, a.clock.Now().UTC())
			a.changed()
			if err != nil {
				return storeError(err, "DAGRun '"+run.RunID+"' of DAG '"+run.DAGID+"'")
			}
		}
		if run, err = a.getStoredRun(ctx, run.DAGID, run.RunID); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, toRun(run))
}

// deleteRun removes a run with its task instances and logs:
// DELETE /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}. A running run is
// marked failed first, which fails its running tries (their workers stop
// them on their next heartbeat) and skips its unstarted tasks.
func (a *api) deleteRun(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, err := runParams(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	run, err := a.getStoredRun(ctx, dagID, runID)
	if err != nil {
		return err
	}
	// A run cleared or started between the two steps is marked again.
	for range 3 {
		if run.State == state.RunRunning {
			if _, err = a.store.SetRunState(ctx, dagID, runID, state.RunFailed, a.clock.Now().UTC()); err != nil && !isConflict(err) {
				break
			}
		}
		if err = a.store.DeleteRun(ctx, dagID, runID); !isConflict(err) {
			break
		}
		run.State = state.RunRunning
	}
	a.changed()
	if err != nil {
		if isNotFound(err) {
			return runNotFound(dagID, runID)
		}
		return storeError(err, "DAGRun '"+runID+"' of DAG '"+dagID+"'")
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
