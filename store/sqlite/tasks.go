package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/internal/sqlorder"
)

// tiCols are the columns of store.TaskInstance (tiFrom); a Sensor's next
// poke is in sensor_pokes.
const tiCols = `ti.id, ti.run_id, ti.dag_id, r.run_id, ti.task_id, ti.state, ti.try_number, ti.max_tries,
	ti.priority, ti.trigger_rule, ti.queued_at, ti.started_at, ti.ended_at, ti.next_retry_at, ti.worker_id,
	ti.hostname, ti.pid, ti.heartbeat_at, ti.output, ti.error, coalesce(ti.next_check_at, CASE WHEN ti.state = 'deferred'
	THEN (SELECT p.due_at FROM sensor_pokes p WHERE p.ti_id = ti.id AND p.try_number = ti.try_number) END), coalesce(ti.wait_event, ''),
	ti.trigger_timeout, ti.pool, ti.pool_slots, coalesce(ti.concurrency_key, ''), ti.map_index, ti.arguments,
	coalesce(ti.parent_ti_id, 0), ti.waiting_on`

const tiFrom = ` FROM task_instances ti JOIN dag_runs r ON r.id = ti.run_id`

func scanTI(sc scanner) (store.TaskInstance, error) {
	var (
		ti                                   store.TaskInstance
		st, rule                             string
		queued, started, ended, retry, hbeat sql.NullInt64
		check, deadline                      sql.NullInt64
		output, args                         sql.NullString
	)
	if err := sc.Scan(&ti.ID, &ti.RunID, &ti.DAGID, &ti.DAGRunID, &ti.TaskID, &st, &ti.TryNumber, &ti.MaxTries,
		&ti.Priority, &rule, &queued, &started, &ended, &retry, &ti.WorkerID, &ti.Hostname, &ti.PID, &hbeat,
		&output, &ti.Error, &check, &ti.WaitEvent, &deadline, &ti.Pool, &ti.PoolSlots, &ti.ConcurrencyKey, &ti.MapIndex,
		&args, &ti.CallerID, &ti.WaitingOn); err != nil {
		return store.TaskInstance{}, err
	}
	ti.Arguments = rawJSON(args)
	ti.ConcurrencyKey = strings.TrimPrefix(ti.ConcurrencyKey, store.KeyPrefixKey)
	ti.State, ti.TriggerRule = state.TaskState(st), dag.TriggerRule(rule)
	ti.QueuedAt, ti.StartedAt, ti.EndedAt = ptrUS(queued), ptrUS(started), ptrUS(ended)
	ti.NextRetryAt, ti.HeartbeatAt = ptrUS(retry), ptrUS(hbeat)
	ti.Output = rawJSON(output)
	ti.NextCheckAt, ti.TriggerTimeout = ptrUS(check), ptrUS(deadline)
	return ti, nil
}

func getTI(ctx context.Context, q querier, dagID, runID, taskID string) (store.TaskInstance, error) {
	ti, err := scanTI(q.QueryRowContext(ctx, `SELECT `+tiCols+tiFrom+`
		WHERE r.dag_id = ? AND r.run_id = ? AND ti.task_id = ? AND ti.call_key = ''`, dagID, runID, taskID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.TaskInstance{}, fmt.Errorf("task %q of run %q of dag %q: %w", taskID, runID, dagID, store.ErrNotFound)
	}
	return ti, err
}

func getCallTI(ctx context.Context, q querier, dagID, runID, taskID string, mapIndex int) (store.TaskInstance, error) {
	ti, err := scanTI(q.QueryRowContext(ctx, `SELECT `+tiCols+tiFrom+`
		WHERE r.dag_id = ? AND r.run_id = ? AND ti.task_id = ? AND ti.map_index = ?`, dagID, runID, taskID, mapIndex))
	if errors.Is(err, sql.ErrNoRows) {
		return store.TaskInstance{}, fmt.Errorf("call %s[%d] of run %q of dag %q: %w", taskID, mapIndex, runID, dagID, store.ErrNotFound)
	}
	return ti, err
}

// GetCallInstance returns the call instance mapIndex of callable taskID.
func (s *Store) GetCallInstance(ctx context.Context, dagID, runID, taskID string, mapIndex int) (store.TaskInstance, error) {
	ti, err := getCallTI(ctx, s.rdb, dagID, runID, taskID, mapIndex)
	if err != nil {
		return store.TaskInstance{}, fmt.Errorf("get call instance: %w", mapErr(err))
	}
	return ti, nil
}

// TaskInstancesByID returns the task instances ids that exist.
func (s *Store) TaskInstancesByID(ctx context.Context, ids []int64) ([]store.TaskInstance, error) {
	out := []store.TaskInstance{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+tiCols+tiFrom+` WHERE ti.id IN (SELECT value FROM json_each(?))`, idList(ids))
	if err != nil {
		return nil, fmt.Errorf("get task instances by id: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		ti, err := scanTI(rows)
		if err != nil {
			return nil, fmt.Errorf("get task instances by id: %w", err)
		}
		out = append(out, ti)
	}
	return out, rows.Err()
}

func getTIByID(ctx context.Context, q querier, id int64) (store.TaskInstance, error) {
	ti, err := scanTI(q.QueryRowContext(ctx, `SELECT `+tiCols+tiFrom+` WHERE ti.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.TaskInstance{}, fmt.Errorf("task instance #%d: %w", id, store.ErrNotFound)
	}
	return ti, err
}

// GetTaskInstance returns one task instance.
func (s *Store) GetTaskInstance(ctx context.Context, dagID, runID, taskID string) (store.TaskInstance, error) {
	ti, err := getTI(ctx, s.rdb, dagID, runID, taskID)
	if err != nil {
		return store.TaskInstance{}, fmt.Errorf("get task instance: %w", mapErr(err))
	}
	return ti, nil
}

// taskOrder maps TaskQuery.OrderBy names to columns.
var taskOrder = sqlorder.Order{Default: "id", Tie: "ti.id", Columns: map[string]string{
	"id":              "ti.id",
	"dag_id":          "ti.dag_id",
	"run_id":          "r.run_id",
	"dag_run_id":      "r.run_id",
	"task_id":         "ti.task_id",
	"state":           "ti.state",
	"try_number":      "ti.try_number",
	"map_index":       "ti.map_index",
	"priority":        "ti.priority",
	"priority_weight": "ti.priority",
	"logical_date":    "r.logical_date",
	"execution_date":  "r.logical_date",
	"queued_at":       "ti.queued_at",
	"queued_when":     "ti.queued_at",
	"start_date":      "ti.started_at",
	"started_at":      "ti.started_at",
	"end_date":        "ti.ended_at",
	"ended_at":        "ti.ended_at",
	"duration":        "(ti.ended_at - ti.started_at)",
}}

// ListTaskInstances returns the task instances matching q and their total
// count (ignoring Limit and Offset). Default order: by id (creation order,
// which is the DAG's task order within a run).
func (s *Store) ListTaskInstances(ctx context.Context, q store.TaskQuery) ([]store.TaskInstance, int, error) {
	rtis, total, err := s.ListRunTaskInstances(ctx, q)
	return store.Instances(rtis), total, err
}

// ListRunTaskInstances is ListTaskInstances with each instance's run's
// logical date, from the same join.
func (s *Store) ListRunTaskInstances(ctx context.Context, q store.TaskQuery) ([]store.RunTaskInstance, int, error) {
	if q.Limit < 0 || q.Offset < 0 {
		return nil, 0, fmt.Errorf("list task instances: negative limit %d or offset %d", q.Limit, q.Offset)
	}
	order, err := taskOrder.Clause(q.OrderBy)
	if err != nil {
		return nil, 0, fmt.Errorf("list task instances: %w", err)
	}
	var w where
	w.inList("r.dag_id", q.DAGIDs)
	w.inList("r.run_id", q.DAGRunIDs)
	w.inList("ti.task_id", q.TaskIDs)
	states := make([]string, len(q.States))
	for i, st := range q.States {
		if !st.Valid() {
			return nil, 0, fmt.Errorf("list task instances: unknown task state %q", st)
		}
		states[i] = string(st)
	}
	w.inList("ti.state", states)
	w.timeRange("ti.started_at", q.StartDateGTE, q.StartDateLTE)
	w.timeRange("ti.ended_at", q.EndDateGTE, q.EndDateLTE)
	w.timeRange("r.logical_date", q.LogicalDateGTE, q.LogicalDateLTE)
	var out []store.RunTaskInstance
	var total int
	// Within runs the page query counts the matches too (one statement);
	// across runs they may be many, and are counted apart.
	inRuns := len(q.DAGRunIDs) > 0
	err = s.read(ctx, "list task instances", func(stx *sql.Tx) error {
		tx := s.reads.inTx(stx)
		count := func() error {
			return tx.QueryRowContext(ctx, `SELECT count(*)`+tiFrom+w.sql(), w.args...).Scan(&total)
		}
		cols := tiCols + `, r.logical_date`
		if inRuns {
			cols += `, count(*) OVER ()`
		} else if err := count(); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+cols+tiFrom+w.sql()+order+` LIMIT ? + 0 OFFSET ?`,
			append(w.args[:len(w.args):len(w.args)], sqlLimit(q.Limit), q.Offset)...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var logical int64
			extra := withExtra{rows, []any{&logical}}
			if inRuns {
				extra.dest = append(extra.dest, &total)
			}
			ti, err := scanTI(extra)
			if err != nil {
				return err
			}
			out = append(out, store.RunTaskInstance{TaskInstance: ti, LogicalDate: fromUS(logical)})
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if inRuns && len(out) == 0 && q.Offset > 0 {
			return count() // a page past the end: how many there are still counts
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// instanceState is one instance of a run as clear sees it.
type instanceState struct {
	id    int64
	state state.TaskState
}

// clear resets the named instances of run ri to be run again (running
// ones to restarting: their try is re-queued when it ends), gives them
// their retries again, and recomputes the upstream counters of the cleared
// instances and of their direct downstream instances. It does not decide
// anything; the caller evaluates. Returns the ids of the cleared instances
// in task order.
func (e *engine) clear(ri *runInfo, taskIDs []string) ([]int64, error) {
	rows, err := e.w.query(`SELECT id, task_id, state FROM task_instances WHERE run_id = ? AND call_key = ''`, ri.id)
	if err != nil {
		return nil, fmt.Errorf("clear: read instances: %w", err)
	}
	inst := map[string]*instanceState{}
	for rows.Next() {
		var id int64
		var task, st string
		if err := rows.Scan(&id, &task, &st); err != nil {
			rows.Close()
			return nil, err
		}
		inst[task] = &instanceState{id: id, state: state.TaskState(st)}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, id := range taskIDs {
		if inst[id] == nil {
			return nil, fmt.Errorf("clear: task %q is not in the run: %w", id, store.ErrNotFound)
		}
		want[id] = true
	}
	var cleared []int64
	affected := map[string]bool{}
	for _, id := range ri.st.ids {
		if !want[id] {
			continue
		}
		ti := inst[id]
		if ti.state == state.Running || ti.state == state.Restarting {
			if _, err := e.w.exec(`UPDATE task_instances SET state = 'restarting',
					max_tries = try_number + retries + 1 WHERE id = ?`, ti.id); err != nil {
				return nil, fmt.Errorf("clear %q: %w", id, err)
			}
			ti.state = state.Restarting
		} else {
			if _, err := e.w.exec(`UPDATE task_instances SET state = 'none', queued_at = NULL, started_at = NULL,
					ended_at = NULL, next_retry_at = NULL, heartbeat_at = NULL, worker_id = '', hostname = '',
					pid = 0, output = NULL, error = '', resumed = false, deferred_state = NULL, event_payload = NULL, wait_event = NULL, next_check_at = NULL, trigger_timeout = NULL, max_tries = try_number + retries + 1
				WHERE id = ?`, ti.id); err != nil {
				return nil, fmt.Errorf("clear %q: %w", id, err)
			}
			ti.state = state.None
		}
		cleared = append(cleared, ti.id)
		affected[id] = true
		for _, d := range ri.st.downstream(id) {
			affected[d] = true
		}
	}
	for _, id := range ri.st.ids {
		if !affected[id] || inst[id] == nil {
			continue
		}
		var u state.Upstream
		for _, up := range ri.st.upstream(id) {
			if ui := inst[up]; ui != nil && ui.state.Terminal() {
				u = u.Add(ui.state)
			}
		}
		if _, err := e.w.exec(`UPDATE task_instances SET up_success = ?, up_failed = ?, up_skipped = ?,
				up_upstream_failed = ?, up_removed = ? WHERE id = ?`,
			u.Success, u.Failed, u.Skipped, u.UpstreamFailed, u.Removed, inst[id].id); err != nil {
			return nil, fmt.Errorf("clear: recount upstream of %q: %w", id, err)
		}
	}
	e.touch(ri.id)
	if len(cleared) > 0 {
		e.w.wake(store.TopicRunsChanged)
	}
	return cleared, nil
}

// ClearTasks resets the named task instances of a run (with downstream,
// every task downstream of them too) to be run again and puts a finished
// run back to running. Instances whose upstream allow are queued at once;
// running ones become restarting and are re-queued when their try ends.
func (s *Store) ClearTasks(ctx context.Context, dagID, runID string, taskIDs []string, downstream bool, now time.Time) ([]store.TaskInstance, error) {
	op := fmt.Sprintf("clear tasks %q of run %q of dag %q", taskIDs, runID, dagID)
	if len(taskIDs) == 0 {
		return nil, fmt.Errorf("%s: no task ids", op)
	}
	var out []store.TaskInstance
	err := s.write(ctx, op, func(w *txn) error {
		out = nil
		run, err := getRun(w.ctx, w, dagID, runID)
		if err != nil {
			return err
		}
		e := newEngine(w, now)
		ri, err := e.run(run.ID)
		if err != nil {
			return err
		}
		for _, id := range taskIDs {
			if !ri.st.has(id) {
				return fmt.Errorf("task %q is not in the run's structure: %w", id, store.ErrNotFound)
			}
		}
		ids := taskIDs
		if downstream {
			ids = ri.st.downstreamClosure(taskIDs)
		}
		cleared, err := e.clear(ri, ids)
		if err != nil {
			return err
		}
		if err := rerunFailedCalls(w, cleared, now); err != nil {
			return err
		}
		if _, err := w.exec(`UPDATE dag_runs SET state = 'running', ended_at = NULL,
				started_at = coalesce(started_at, ?) WHERE id = ?`, us(now), ri.id); err != nil {
			return err
		}
		ri.state = state.RunRunning
		w.wake(store.TopicRunsChanged)
		for _, id := range ri.st.ids {
			if !contains(ids, id) {
				continue
			}
			if err := e.evaluate(ri, id); err != nil {
				return err
			}
		}
		if err := e.settle(); err != nil {
			return err
		}
		for _, id := range cleared {
			ti, err := getTIByID(w.ctx, w, id)
			if err != nil {
				return err
			}
			out = append(out, ti)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// SetTaskState marks one task instance success, failed or skipped by hand
// and releases its downstream instances as a finish would (a change from
// one final state to another moves the downstream counters). A running
// try loses its instance: its worker is told at the next heartbeat.
func (s *Store) SetTaskState(ctx context.Context, dagID, runID, taskID string, st state.TaskState, now time.Time) (store.TaskInstance, error) {
	op := fmt.Sprintf("set task %q of run %q of dag %q to %s", taskID, runID, dagID, st)
	if st != state.Success && st != state.Failed && st != state.Skipped {
		return store.TaskInstance{}, fmt.Errorf("%s: a task can be set to success, failed or skipped, not %q", op, st)
	}
	var out store.TaskInstance
	err := s.write(ctx, op, func(w *txn) error {
		ti, err := getTI(w.ctx, w, dagID, runID, taskID)
		if err != nil {
			return err
		}
		if ti.State == st {
			out = ti
			return nil
		}
		if !state.CanTransition(ti.State, st) {
			return fmt.Errorf("%w: a %s task cannot be marked %s", store.ErrConflict, ti.State, st)
		}
		if _, err := w.exec(`UPDATE task_instances SET state = ?, ended_at = ?, next_retry_at = NULL,
				next_check_at = NULL, wait_event = NULL, trigger_timeout = NULL, deferred_state = NULL,
				error = CASE WHEN ? = 'success' THEN '' ELSE error END WHERE id = ?`,
			string(st), us(now), string(st), ti.ID); err != nil {
			return err
		}
		e := newEngine(w, now)
		ri, err := e.run(ti.RunID)
		if err != nil {
			return err
		}
		var was state.TaskState
		if ti.State.Terminal() {
			was = ti.State
		}
		e.touch(ri.id)
		if err := e.release(ri, finished{taskID: taskID, state: st, was: was}); err != nil {
			return err
		}
		if err := e.settle(); err != nil {
			return err
		}
		w.wake(store.TopicRunsChanged, store.TopicTasksReady) // a running instance marked by hand frees its slots
		out, err = getTIByID(w.ctx, w, ti.ID)
		return err
	})
	if err != nil {
		return store.TaskInstance{}, err
	}
	return out, nil
}

// GetOutput returns the output of taskID in the run with internal id
// runID; ErrNotFound when the task does not exist or has no output.
func (s *Store) GetOutput(ctx context.Context, runID int64, taskID string) (json.RawMessage, error) {
	var out sql.NullString
	err := s.rdb.QueryRowContext(ctx, `SELECT output FROM task_instances WHERE run_id = ? AND task_id = ? AND call_key = ''`,
		runID, taskID).Scan(&out)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get output of task %q in run #%d: %w", taskID, runID, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get output of task %q in run #%d: %w", taskID, runID, mapErr(err))
	}
	if !out.Valid {
		return nil, fmt.Errorf("get output of task %q in run #%d: no output: %w", taskID, runID, store.ErrNotFound)
	}
	return json.RawMessage(out.String), nil
}

// withExtra scans a row of tiCols followed by more columns into the
// columns and dest.
type withExtra struct {
	rows *sql.Rows
	dest []any
}

func (w withExtra) Scan(dest ...any) error { return w.rows.Scan(append(dest, w.dest...)...) }
