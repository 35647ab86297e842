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
)

// Call records the calls of a running try (store.Caller) in one write
// transaction; SQLite's single writer serialises calls, finishes and
// deferrals, so no row is locked.
func (s *Store) Call(ctx context.Context, b store.CallBatch) ([]store.CallState, error) {
	if len(b.Calls) == 0 {
		return []store.CallState{}, nil
	}
	if err := checkCalls(b); err != nil {
		return nil, err
	}
	var out []store.CallState
	op := fmt.Sprintf("record %d calls of task instance #%d try %d", len(b.Calls), b.Caller.ID, b.Caller.TryNumber)
	err := s.write(ctx, op, func(w *txn) error {
		c := &callTx{w: w, b: b}
		var err error
		out, err = c.run()
		return err
	})
	return out, err
}

// CallMany records the calls of several running tries in one write
// transaction (store.Caller), one after the other.
func (s *Store) CallMany(ctx context.Context, batches []store.CallBatch) ([]store.CallAnswer, error) {
	out := make([]store.CallAnswer, len(batches))
	var todo []int
	for i, b := range batches {
		switch err := checkCalls(b); {
		case err != nil:
			out[i].Err = err
		case len(b.Calls) == 0:
			out[i].States = []store.CallState{}
		default:
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return out, nil
	}
	err := s.write(ctx, fmt.Sprintf("record the calls of %d tries", len(todo)), func(w *txn) error {
		for _, i := range todo {
			c := &callTx{w: w, b: batches[i]}
			states, err := c.run()
			if errors.Is(err, store.ErrStale) {
				// Found before anything of this batch was written.
				out[i] = store.CallAnswer{Err: err}
				continue
			}
			if err != nil {
				return err
			}
			out[i] = store.CallAnswer{States: states}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// checkCalls validates a batch before anything is written.
func checkCalls(b store.CallBatch) error {
	for i, c := range b.Calls {
		switch {
		case c.TaskID == "":
			return fmt.Errorf("record calls: call %d has no callable task id", i)
		case c.Key == "":
			return fmt.Errorf("record calls: call %d of %s has an empty key", i, c.TaskID)
		case !json.Valid(c.Arguments):
			return fmt.Errorf("record calls: call %d of %s: the arguments are not valid JSON", i, c.TaskID)
		}
	}
	return nil
}

// callTx is one Call transaction.
type callTx struct {
	w *txn
	b store.CallBatch

	runID    int64
	dagID    string
	priority int
	isCall   bool
	st       *structure
	nCalls   int
	created  int
	next     map[string]int // next map index per callable
	byKey    map[[2]string]store.CallState
	edges    []int64 // callees to link, in call order
	closed   bool    // a call from outside into a finished run: no new instance
}

func (c *callTx) run() ([]store.CallState, error) {
	if err := c.readCaller(); err != nil {
		return nil, err
	}
	c.byKey, c.next = map[[2]string]store.CallState{}, map[string]int{}
	out := make([]store.CallState, len(c.b.Calls))
	for i, call := range c.b.Calls {
		k := [2]string{call.TaskID, call.Key}
		cs, ok := c.byKey[k]
		if !ok {
			var err error
			if cs, err = c.one(call); err != nil {
				return nil, err
			}
			c.byKey[k] = cs
		}
		out[i] = cs
	}
	if err := c.link(); err != nil {
		return nil, err
	}
	if c.created > 0 {
		if _, err := c.w.exec(`UPDATE dag_runs SET n_calls = n_calls + ? WHERE id = ?`, c.created, c.runID); err != nil {
			return nil, err
		}
		c.w.wake(store.TopicTasksReady)
	}
	return out, nil
}

// readCaller checks the caller runs that try and loads its run.
func (c *callTx) readCaller() error {
	if c.b.Caller.ID == 0 {
		var st string
		var versionID int64
		err := c.w.queryRow(`SELECT id, version_id, n_calls, dag_id, state FROM dag_runs WHERE id = ?`, c.b.RunID).
			Scan(&c.runID, &versionID, &c.nCalls, &c.dagID, &st)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no run #%d", store.ErrNotFound, c.b.RunID)
		}
		if err != nil {
			return err
		}
		c.closed = state.RunState(st).Terminal()
		c.st, err = c.w.s.structs.load(c.w.ctx, c.w, versionID)
		return err
	}
	var st string
	var try, mapIndex int
	var versionID int64
	err := c.w.queryRow(`SELECT t.run_id, r.version_id, r.n_calls, t.dag_id, t.priority, t.map_index, t.state, t.try_number
		FROM task_instances t JOIN dag_runs r ON r.id = t.run_id WHERE t.id = ?`, c.b.Caller.ID).
		Scan(&c.runID, &versionID, &c.nCalls, &c.dagID, &c.priority, &mapIndex, &st, &try)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && (state.TaskState(st) != state.Running || try != c.b.Caller.TryNumber)) {
		return fmt.Errorf("%w: task instance #%d is not running try %d", store.ErrStale, c.b.Caller.ID, c.b.Caller.TryNumber)
	}
	if err != nil {
		return err
	}
	c.isCall = mapIndex >= 0
	c.st, err = c.w.s.structs.load(c.w.ctx, c.w, versionID)
	return err
}

// one finds or creates the call instance of one distinct call.
func (c *callTx) one(call store.NewCall) (store.CallState, error) {
	var (
		cs     store.CallState
		st     string
		output sql.NullString
	)
	err := c.w.queryRow(`SELECT id, map_index, state, output, error FROM task_instances
		WHERE run_id = ? AND task_id = ? AND call_key = ?`, c.runID, call.TaskID, call.Key).
		Scan(&cs.ID, &cs.MapIndex, &st, &output, &cs.Error)
	switch {
	case err == nil:
		cs.State = state.TaskState(st)
		if cs.State == state.Success {
			cs.Output = rawJSON(output)
		}
		if !cs.State.Terminal() {
			if cyc, err := c.cycle(cs.ID); err != nil || cyc != "" {
				return store.CallState{Refused: cyc, Cycle: cyc != ""}, err
			}
			if _, err := c.w.exec(`UPDATE task_instances SET priority = ? WHERE id = ? AND priority < ?`,
				c.priority, cs.ID, c.priority); err != nil {
				return cs, err
			}
		}
		c.edges = append(c.edges, cs.ID)
		return cs, nil
	case !errors.Is(err, sql.ErrNoRows):
		return cs, err
	}
	if c.closed {
		return store.CallState{Refused: "the run has finished: a call into it can only find a call it made"}, nil
	}
	def := c.st.callables[call.TaskID]
	if def == nil {
		return store.CallState{Refused: fmt.Sprintf("no callable %q in the DAG %q of the run", call.TaskID, c.dagID)}, nil
	}
	if c.nCalls+c.created >= c.b.MaxCalls {
		return store.CallState{Refused: fmt.Sprintf("the run has reached its cap of %d calls (dag.MaxCalls)", c.b.MaxCalls)}, nil
	}
	n, ok := c.next[call.TaskID]
	if !ok {
		if err := c.w.queryRow(`SELECT coalesce(max(map_index), -1) + 1 FROM task_instances
			WHERE run_id = ? AND task_id = ? AND map_index >= 0`, c.runID, call.TaskID).Scan(&n); err != nil {
			return cs, err
		}
	}
	var ckey any
	if def.keyTemplate != "" {
		var runName string
		if err := c.w.queryRow(`SELECT run_id FROM dag_runs WHERE id = ?`, c.runID).Scan(&runName); err != nil {
			return cs, err
		}
		name, err := store.RenderCallKey(def.keyTemplate, c.dagID, call.TaskID, runName, call.Arguments)
		if err != nil {
			return store.CallState{Refused: err.Error()}, nil
		}
		// The instance is inserted queued: it counts as queued under its key.
		if _, err := c.w.exec(`INSERT INTO concurrency_keys (key, lim, queued) VALUES (?, ?, 1)
			ON CONFLICT (key) DO UPDATE SET lim = excluded.lim, queued = queued + 1`, name, def.keyLimit); err != nil {
			return cs, err
		}
		ckey = name
	}
	c.next[call.TaskID] = n + 1
	prio := max(def.priority, c.priority)
	var parent any
	if c.b.Caller.ID != 0 {
		parent = c.b.Caller.ID
	}
	if err := c.w.queryRow(`INSERT INTO task_instances (run_id, dag_id, task_id, call_key, parent_ti_id, arguments,
			state, queued_at, map_index, max_tries, retries, priority, trigger_rule, retry_delay_ns, max_backoff_ns,
			timeout_ns, n_upstream, concurrency_key, limited)
		VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) RETURNING id`,
		c.runID, c.dagID, call.TaskID, call.Key, parent, string(call.Arguments), us(c.b.Now), n,
		def.retries+1, def.retries, prio, string(def.rule), int64(def.retryDelay), int64(def.maxBackoff),
		int64(def.timeout), ckey, ckey != nil).Scan(&cs.ID); err != nil {
		return cs, err
	}
	c.created++
	cs.MapIndex, cs.State = n, state.Queued
	c.edges = append(c.edges, cs.ID)
	return cs, nil
}

// cycle names the cycle a wait on the unfinished instance callee would
// close ("" when none): callee is the caller itself, or reaches it
// through unfinished calls. Only a call instance can be in a cycle.
func (c *callTx) cycle(callee int64) (string, error) {
	caller := c.b.Caller.ID
	if !c.isCall {
		return "", nil
	}
	path := []int64{callee}
	if callee != caller {
		prev := map[int64]int64{callee: callee}
		queue := []int64{callee}
		found := false
		for len(queue) > 0 && !found {
			x := queue[0]
			queue = queue[1:]
			rows, err := c.w.query(`SELECT k.callee_id FROM task_calls k JOIN task_instances t ON t.id = k.callee_id
				WHERE k.caller_id = ? AND t.state IN (`+nonTerminalSQL+`) ORDER BY k.seq`, x)
			if err != nil {
				return "", err
			}
			var next []int64
			for rows.Next() {
				var y int64
				if err := rows.Scan(&y); err != nil {
					rows.Close()
					return "", err
				}
				next = append(next, y)
			}
			if err := errors.Join(rows.Err(), rows.Close()); err != nil {
				return "", err
			}
			for _, y := range next {
				if _, seen := prev[y]; seen {
					continue
				}
				prev[y] = x
				if y == caller {
					found = true
					break
				}
				queue = append(queue, y)
			}
		}
		if !found {
			return "", nil
		}
		path = nil
		for y := caller; y != callee; y = prev[y] {
			path = append([]int64{y}, path...)
		}
		path = append([]int64{callee}, path...)
	}
	path = append(path, callee)
	names := make([]string, len(path))
	for i, id := range path {
		var task string
		var args sql.NullString
		if err := c.w.queryRow(`SELECT task_id, arguments FROM task_instances WHERE id = ?`, id).Scan(&task, &args); err != nil {
			return "", err
		}
		names[i] = task
		if args.Valid {
			names[i] = dag.CallLabel(task, json.RawMessage(args.String))
		}
	}
	return strings.Join(names, " -> "), nil
}

// link records the caller → callee edges (an edge of an earlier try is
// kept as it is).
func (c *callTx) link() error {
	if len(c.edges) == 0 || c.b.Caller.ID == 0 {
		return nil
	}
	var base int
	if err := c.w.queryRow(`SELECT count(*) FROM task_calls WHERE caller_id = ?`, c.b.Caller.ID).Scan(&base); err != nil {
		return err
	}
	for i, id := range c.edges {
		if _, err := c.w.exec(`INSERT INTO task_calls (caller_id, callee_id, run_id, seq) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, c.b.Caller.ID, id, c.runID, base+i+1); err != nil {
			return err
		}
	}
	return nil
}

// CallResults returns the states of call instances, in the order of ids.
func (s *Store) CallResults(ctx context.Context, ids []int64) ([]store.CallState, error) {
	out := make([]store.CallState, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, map_index, state, output, error FROM task_instances
		WHERE id IN (SELECT value FROM json_each(?))`, idList(ids))
	if err != nil {
		return nil, fmt.Errorf("read call results: %w", err)
	}
	defer rows.Close()
	got := map[int64]store.CallState{}
	for rows.Next() {
		var cs store.CallState
		var st string
		var output sql.NullString
		if err := rows.Scan(&cs.ID, &cs.MapIndex, &st, &output, &cs.Error); err != nil {
			return nil, fmt.Errorf("read call results: %w", err)
		}
		cs.State = state.TaskState(st)
		if cs.State == state.Success {
			cs.Output = rawJSON(output)
		}
		got[cs.ID] = cs
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read call results: %w", err)
	}
	for i, id := range ids {
		cs, ok := got[id]
		if !ok {
			return nil, fmt.Errorf("read call results: %w: no task instance #%d", store.ErrNotFound, id)
		}
		out[i] = cs
	}
	return out, nil
}

// Callees returns the calls instance id made, in the order made.
func (s *Store) Callees(ctx context.Context, id int64) ([]store.TaskInstance, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+tiCols+tiFrom+` JOIN task_calls k ON k.callee_id = ti.id
		WHERE k.caller_id = ? ORDER BY k.seq, ti.id`, id)
	if err != nil {
		return nil, fmt.Errorf("read the calls of task instance #%d: %w", id, err)
	}
	defer rows.Close()
	out := []store.TaskInstance{}
	for rows.Next() {
		ti, err := scanTI(rows)
		if err != nil {
			return nil, fmt.Errorf("read the calls of task instance #%d: %w", id, err)
		}
		out = append(out, ti)
	}
	return out, rows.Err()
}

// wakeWaiters counts call instance id, which just became final, off the
// deferred callers waiting on it, and queues again those left waiting on
// none (their try number lowered by one: the resuming claim gives it
// back).
func (e *engine) wakeWaiters(id int64) error {
	res, err := e.w.exec(`UPDATE task_instances SET
			state = CASE WHEN waiting_on <= 1 THEN 'queued' ELSE 'deferred' END,
			try_number = CASE WHEN waiting_on <= 1 THEN try_number - 1 ELSE try_number END,
			queued_at = CASE WHEN waiting_on <= 1 THEN ? ELSE queued_at END,
			waiting_on = max(waiting_on - 1, 0)
		WHERE state = 'deferred' AND id IN (SELECT caller_id FROM task_calls WHERE callee_id = ?)`, us(e.now), id)
	if err != nil {
		return fmt.Errorf("wake the callers of task instance #%d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		e.w.wake(store.TopicTasksReady)
	}
	return nil
}

// waitingOn counts the calls instance id made that are not final.
func (e *engine) waitingOn(id int64) (int, error) {
	var n int
	err := e.w.queryRow(`SELECT count(*) FROM task_calls k JOIN task_instances t ON t.id = k.callee_id
		WHERE k.caller_id = ? AND t.state IN (`+nonTerminalSQL+`)`, id).Scan(&n)
	return n, err
}

// rerunFailedCalls queues again the call instances that failed among
// those the cleared instances ids called, and among those these called in
// turn while failed: clearing a caller re-runs the calls it would find
// failed, and reuses those that succeeded. Each gets its retries back, as
// a cleared task does. It wakes the workers when it queued any.
func rerunFailedCalls(w *txn, ids []int64, now time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	res, err := w.exec(`
		WITH RECURSIVE f(id) AS (
			SELECT k.callee_id FROM task_calls k JOIN task_instances t ON t.id = k.callee_id
			WHERE k.caller_id IN (SELECT value FROM json_each(?)) AND t.state IN ('failed', 'upstream_failed')
			UNION
			SELECT k.callee_id FROM f JOIN task_calls k ON k.caller_id = f.id
			JOIN task_instances t ON t.id = k.callee_id AND t.state IN ('failed', 'upstream_failed')
		)
		UPDATE task_instances SET state = 'queued', queued_at = ?, max_tries = try_number + retries + 1,
			started_at = NULL, ended_at = NULL, next_retry_at = NULL, heartbeat_at = NULL, worker_id = '', hostname = '',
			pid = 0, output = NULL, error = '', resumed = false, deferred_state = NULL, event_payload = NULL,
			wait_event = NULL, next_check_at = NULL, trigger_timeout = NULL, waiting_on = 0
		WHERE id IN (SELECT id FROM f) AND state IN ('failed', 'upstream_failed')`, idList(ids), us(now))
	if err != nil {
		return fmt.Errorf("re-run failed calls: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n > 0 {
		w.wake(store.TopicTasksReady)
	}
	return nil
}
