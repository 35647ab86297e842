package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// MaxCallWait bounds the "wait" of a call made through the API.
const MaxCallWait = 5 * time.Minute

// callPoll is how often a waiting call answer re-reads the call besides
// the store's wake-ups (a call instance ending wakes nobody by itself).
const callPoll = 100 * time.Millisecond

// mapIndexParam reads the map_index path parameter.
func mapIndexParam(r *http.Request) (int, error) {
	v, err := pathParam(r, "map_index")
	if err != nil {
		return 0, err
	}
	n, perr := strconv.Atoi(v)
	if perr != nil || n < -1 {
		return 0, badRequest("map_index must be an integer of at least -1, got %q", v)
	}
	return n, nil
}

// getMappedTaskInstance returns one call instance of a callable (map
// index ≥ 0) or, with map index -1, the instance of a static task:
// GET …/taskInstances/{task_id}/{map_index}. It carries the instance's
// caller and the calls it waits on.
func (a *api) getMappedTaskInstance(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, taskID, err := tiParams(r)
	if err != nil {
		return err
	}
	mi, err := mapIndexParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if mi < 0 {
		ti, run, err := a.getStoredTI(ctx, dagID, runID, taskID)
		if err != nil {
			return err
		}
		return a.writeOneTI(w, r, ti, run)
	}
	run, err := a.getStoredRun(ctx, dagID, runID)
	if err != nil {
		return err
	}
	ti, err := a.store.GetCallInstance(ctx, dagID, runID, taskID, mi)
	if isNotFound(err) {
		return taskInstanceNotFound(dagID, runID, taskID+"["+strconv.Itoa(mi)+"]")
	}
	if err != nil {
		return err
	}
	return a.writeOneTI(w, r, ti, run)
}

// writeOneTI answers one task instance with its call links.
func (a *api) writeOneTI(w http.ResponseWriter, r *http.Request, ti store.TaskInstance, run store.Run) error {
	ctx := r.Context()
	c := a.newTIContext(ctx)
	out := toTaskInstance(ti, run.LogicalDate, c.kind(ti.DAGID, ti.TaskID))
	if ti.CallerID != 0 {
		callers, err := a.store.TaskInstancesByID(ctx, []int64{ti.CallerID})
		if err != nil {
			return err
		}
		if len(callers) == 1 {
			out.Caller = &callRefJSON{TaskID: callers[0].TaskID, MapIndex: callers[0].MapIndex}
		}
	}
	if ti.State == "deferred" {
		callees, err := a.store.Callees(ctx, ti.ID)
		if err != nil {
			return err
		}
		for _, x := range callees {
			if !x.State.Terminal() {
				out.WaitingOnCalls = append(out.WaitingOnCalls, callRefJSON{TaskID: x.TaskID, MapIndex: x.MapIndex})
			}
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// getMappedTaskInstances lists the call instances of a callable in one
// run, by map index: GET …/taskInstances/{task_id}/listMapped.
func (a *api) getMappedTaskInstances(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, taskID, err := tiParams(r)
	if err != nil {
		return err
	}
	q := query{r.URL.Query()}
	p, err := pageParams(q, a.defLimit, a.maxLimit)
	if err != nil {
		return err
	}
	var f taskFilter
	if f.q.States, err = taskStates(q.list("state"), "query parameter \"state\""); err != nil {
		return err
	}
	order, _, err := q.one("order_by")
	if err != nil {
		return err
	}
	switch order {
	case "", "map_index":
		order = "map_index"
	case "-map_index", "state", "-state", "start_date", "-start_date", "end_date", "-end_date", "try_number", "-try_number":
	default:
		return badRequest("order_by %q is not one of map_index, state, start_date, end_date, try_number (prefix - to reverse)", order)
	}
	ctx := r.Context()
	run, err := a.getStoredRun(ctx, dagID, runID)
	if err != nil {
		return err
	}
	if d := a.registry.Lookup(dagID); d != nil {
		if t := d.Task(taskID); t == nil {
			return notFound("Task not found", "Task with id: '%s' not found in DAG '%s'", taskID, dagID)
		}
	}
	f.q.DAGIDs, f.q.DAGRunIDs, f.q.TaskIDs, f.q.OrderBy = []string{dagID}, []string{runID}, []string{taskID}, order
	f.q.Limit, f.q.Offset = p.limit, p.offset
	tis, total, err := a.store.ListTaskInstances(ctx, f.q)
	if err != nil {
		return err
	}
	rtis := make([]store.RunTaskInstance, 0, len(tis))
	for _, ti := range tis {
		if ti.MapIndex >= 0 {
			rtis = append(rtis, store.RunTaskInstance{TaskInstance: ti, LogicalDate: run.LogicalDate})
		}
	}
	return a.newTIContext(ctx).write(w, rtis, total)
}

// callRequestFields are the members of a call request.
var callRequestFields = []string{"arguments", "dag_run_id", "wait"}

// callResponse answers a call made through the API.
type callResponse struct {
	DAGID    string          `json:"dag_id"`
	DAGRunID string          `json:"dag_run_id"`
	TaskID   string          `json:"task_id"`
	MapIndex int             `json:"map_index"`
	State    string          `json:"state"`
	Result   json.RawMessage `json:"result"`
	Error    *string         `json:"error"`
}

// postCall calls a callable from outside, as a task would (Pynenc's
// fibonacci(30).result): POST /api/v1/dags/{dag_id}/calls/{task_id} with
// {"arguments": …, "dag_run_id": optional, "wait": optional duration}.
// The call is made (or deduplicated) in the given run, which must not have
// finished, or in a manual run created for it; the answer comes once the
// call has ended or "wait" (default 0, at most 5m) has passed: 200 when
// it has ended, 202 while it runs.
func (a *api) postCall(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	taskID, err := pathParam(r, "task_id")
	if err != nil {
		return err
	}
	b, err := decodeBody(r, callRequestFields, nil)
	if err != nil {
		return err
	}
	raw, ok := b["arguments"]
	if !ok {
		return badRequest("field \"arguments\" is required: the call's arguments as JSON (null for none)")
	}
	args, err := dag.CanonicalJSON(raw)
	if err != nil {
		return badRequest("field \"arguments\" %v", err)
	}
	runID, _, err := b.stringField("dag_run_id", false)
	if err != nil {
		return err
	}
	waitText, hasWait, err := b.stringField("wait", false)
	if err != nil {
		return err
	}
	var wait time.Duration
	if hasWait {
		if wait, err = time.ParseDuration(waitText); err != nil || wait < 0 || wait > MaxCallWait {
			return badRequest("field \"wait\" must be a duration between 0s and %v, like \"30s\", got %q", MaxCallWait, waitText)
		}
	}
	d := a.registry.Lookup(dagID)
	if d == nil {
		return dagNotFound(dagID)
	}
	t := d.Task(taskID)
	if t == nil || t.Kind() != dag.KindCallable {
		return notFound("Callable not found", "DAG '%s' has no callable task '%s'", dagID, taskID)
	}
	ctx := r.Context()
	var run store.Run
	if runID != "" {
		if run, err = a.getStoredRun(ctx, dagID, runID); err != nil {
			return err
		}
	} else {
		now := time.Now().UTC()
		run, err = a.triggerer.TriggerRun(ctx, dagID, TriggerRequest{RunID: "call__" + now.Format(time.RFC3339Nano),
			Note: "made for a call of " + dag.CallLabel(taskID, args)})
		if isNotFound(err) {
			return dagNotFound(dagID)
		}
		if err != nil {
			return err
		}
		a.metrics.RunCreated(dagID, string(store.RunManual))
	}
	key := store.CallKey(args)
	if !t.Dedup() {
		key = fmt.Sprintf("~api.%d", time.Now().UnixNano())
	}
	states, err := a.store.Call(ctx, store.CallBatch{RunID: run.ID, MaxCalls: d.MaxCalls(), Now: time.Now().UTC(),
		Calls: []store.NewCall{{TaskID: taskID, Key: key, Arguments: args}}})
	if err != nil {
		return err
	}
	cs := states[0]
	if cs.Refused != "" {
		return conflict("call %s: %s", dag.CallLabel(taskID, args), cs.Refused)
	}
	if !cs.State.Terminal() && wait > 0 {
		if cs, err = a.waitCall(ctx, cs, wait); err != nil {
			return err
		}
	}
	out := callResponse{DAGID: dagID, DAGRunID: run.RunID, TaskID: taskID, MapIndex: cs.MapIndex, State: string(cs.State),
		Result: json.RawMessage("null")}
	if cs.Output != nil {
		out.Result = cs.Output
	}
	if cs.State.Terminal() && cs.Error != "" {
		e := cs.Error
		out.Error = &e
	}
	status := http.StatusOK
	if !cs.State.Terminal() {
		status = http.StatusAccepted
	}
	return writeJSON(w, status, out)
}

// waitCall waits until the call cs has ended or wait has passed, woken by
// the store's wake-ups and re-reading every callPoll.
func (a *api) waitCall(ctx context.Context, cs store.CallState, wait time.Duration) (store.CallState, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	sub, err := a.store.Listen(wctx, store.TopicRunsChanged, store.TopicTasksReady)
	if err != nil {
		return cs, err
	}
	defer sub.Close()
	tick := time.NewTicker(callPoll)
	defer tick.Stop()
	for {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return cs, ctx.Err()
			}
			return cs, nil
		case <-sub.C():
		case <-tick.C:
		}
		got, err := a.store.CallResults(wctx, []int64{cs.ID})
		if errors.Is(err, context.DeadlineExceeded) {
			return cs, nil
		}
		if err != nil {
			return cs, err
		}
		cs = got[0]
		if cs.State.Terminal() {
			return cs, nil
		}
	}
}
