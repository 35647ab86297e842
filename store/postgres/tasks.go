package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/internal/sqlorder"
)

// GetTaskInstance returns the instance of taskID in run runID of dagID.
func (s *Store) GetTaskInstance(ctx context.Context, dagID, runID, taskID string) (store.TaskInstance, error) {
	ti, err := scanTI(s.pool.QueryRow(ctx, "SELECT "+tiCols+` FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
		WHERE r.dag_id = $1 AND r.run_id = $2 AND t.task_id = $3 AND t.call_key = ''`, dagID, runID, taskID))
	if err != nil {
		return ti, mapErr(fmt.Sprintf("get task %q of run %q of dag %q", taskID, runID, dagID), err)
	}
	return ti, nil
}

// tiOrder maps TaskQuery.OrderBy names (Airflow's and ours) to columns.
var tiOrder = sqlorder.Order{Default: "id", Tie: "t.id", Nulls: true, Columns: map[string]string{
	"id": "t.id", "dag_id": "t.dag_id", "run_id": "r.run_id", "dag_run_id": "r.run_id", "task_id": "t.task_id",
	"state": "t.state", "try_number": "t.try_number", "map_index": "t.map_index", "priority": "t.priority", "priority_weight": "t.priority",
	"queued_at": "t.queued_at", "queued_when": "t.queued_at", "start_date": "t.started_at", "started_at": "t.started_at",
	"end_date": "t.ended_at", "ended_at": "t.ended_at", "duration": "(t.ended_at - t.started_at)",
	"logical_date": "r.logical_date", "execution_date": "r.logical_date",
}}

// stateSets returns a query of the ids of the instances in states when
// they are all queued or running ones: task_queue and task_running hold
// exactly those instances (migration 00008) and are small, where
// task_instances has no index on its state (so that its updates stay HOT).
// It returns "" for other states.
func stateSets(states []state.TaskState) string {
	var queue, running bool
	for _, st := range states {
		switch st {
		case state.Queued:
			queue = true
		case state.Running, state.Restarting:
			running = true
		default:
			return ""
		}
	}
	switch {
	case queue && running:
		return "SELECT ti_id FROM task_queue UNION ALL SELECT ti_id FROM task_running"
	case queue:
		return "SELECT ti_id FROM task_queue"
	}
	return "SELECT ti_id FROM task_running"
}

// ListTaskInstances returns the instances matching q (default order: id,
// which within a run is the order of the DAG's tasks) and how many match.
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
	order, err := tiOrder.Clause(q.OrderBy)
	if err != nil {
		return nil, 0, fmt.Errorf("list task instances: %w", err)
	}
	var w where
	if len(q.DAGIDs) > 0 {
		w.add("t.dag_id = ANY(?)", q.DAGIDs)
	}
	if len(q.DAGRunIDs) > 0 {
		w.add("r.run_id = ANY(?)", q.DAGRunIDs)
	}
	if len(q.TaskIDs) > 0 {
		w.add("t.task_id = ANY(?)", q.TaskIDs)
	}
	if len(q.States) > 0 {
		ss := make([]string, len(q.States))
		for i, st := range q.States {
			ss[i] = string(st)
		}
		w.add("t.state = ANY(?)", ss)
		if sets := stateSets(q.States); sets != "" {
			w.conds = append(w.conds, "t.id = ANY (ARRAY("+sets+"))")
		}
	}
	timeRange(&w, "t.started_at", q.StartDateGTE, q.StartDateLTE)
	timeRange(&w, "t.ended_at", q.EndDateGTE, q.EndDateLTE)
	timeRange(&w, "r.logical_date", q.LogicalDateGTE, q.LogicalDateLTE)
	from := " FROM task_instances t JOIN dag_runs r ON r.id = t.run_id"
	cond := w.sql()
	// Every instance has its run: the count needs the runs only to
	// filter by their fields.
	countFrom := from
	if len(q.DAGRunIDs) == 0 && q.LogicalDateGTE == nil && q.LogicalDateLTE == nil {
		countFrom = " FROM task_instances t"
	}
	count := func() (int, error) {
		var total int
		err := s.pool.QueryRow(ctx, "SELECT count(*)"+countFrom+cond, w.args...).Scan(&total)
		return total, err
	}
	// Within runs, one query gives the page and the number of matches;
	// across runs the matches may be many: count them apart rather than
	// have the page query gather them all.
	inRuns := len(q.DAGRunIDs) > 0
	total := 0
	cols := tiCols + ", r.logical_date"
	if inRuns {
		cols += ", count(*) OVER ()"
	} else if total, err = count(); err != nil {
		return nil, 0, mapErr("list task instances", err)
	}
	nargs := len(w.args)
	rows, err := s.pool.Query(ctx, "SELECT "+cols+from+cond+order+w.page(q.Limit, q.Offset), w.args...)
	if err != nil {
		return nil, 0, mapErr("list task instances", err)
	}
	tis := []store.RunTaskInstance{}
	for rows.Next() {
		var ti store.RunTaskInstance
		var out []byte
		dest := append(tiDest(&ti.TaskInstance, &out), &ti.LogicalDate)
		if inRuns {
			dest = append(dest, &total)
		}
		if err := rows.Scan(dest...); err != nil {
			rows.Close()
			return nil, 0, mapErr("list task instances", err)
		}
		fixTI(&ti.TaskInstance, out)
		ti.LogicalDate = ti.LogicalDate.UTC()
		tis = append(tis, ti)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, mapErr("list task instances", err)
	}
	if inRuns && len(tis) == 0 && q.Offset > 0 {
		// A page past the end: how many there are still counts.
		w.args = w.args[:nargs]
		if total, err = count(); err != nil {
			return nil, 0, mapErr("list task instances", err)
		}
	}
	return tis, total, nil
}

// runRef is the internal identity of a run.
type runRef struct {
	id      int64
	version int64
	st      state.RunState
}

func lookupRun(ctx context.Context, tx pgx.Tx, dagID, runID string) (runRef, error) {
	var r runRef
	err := tx.QueryRow(ctx, "SELECT id, version_id, state FROM dag_runs WHERE dag_id = $1 AND run_id = $2",
		dagID, runID).Scan(&r.id, &r.version, &r.st)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, errorf("%w: no run %q of DAG %q", store.ErrNotFound, runID, dagID)
	}
	return r, err
}

// ClearTasks resets the named instances (and, with downstream, every
// instance downstream of them) to run again: finished and waiting ones to
// none, running ones to restarting (their try goes on until it ends, then
// they wait again). Each cleared instance gets its retries back, the
// upstream counters of the cleared instances and of their direct
// downstream instances are recomputed from the actual upstream states,
// the run goes back to running, and the cleared instances are decided by
// their trigger rules at once.
func (s *Store) ClearTasks(ctx context.Context, dagID, runID string, taskIDs []string, downstream bool, now time.Time) ([]store.TaskInstance, error) {
	op := fmt.Sprintf("clear tasks of run %q of dag %q", runID, dagID)
	if len(taskIDs) == 0 {
		return nil, fmt.Errorf("%s: no task ids", op)
	}
	var cleared []store.TaskInstance
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		run, err := lookupRun(ctx, tx, dagID, runID)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT task_id FROM task_instances WHERE run_id = $1 AND call_key = '' AND task_id = ANY($2)`,
			run.id, taskIDs)
		if err != nil {
			return err
		}
		found, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		var missing []string
		for _, id := range taskIDs {
			if !slices.Contains(found, id) {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return errorf("%w: run has no task %q", store.ErrNotFound, missing)
		}
		set := found
		if downstream {
			rows, err := tx.Query(ctx, `
				WITH RECURSIVE c(task_id) AS (
					SELECT unnest($2::text[]) COLLATE "C"
					UNION
					SELECT d.task_id FROM c
					JOIN dag_version_tasks v ON v.version_id = $1 AND v.task_id = c.task_id
					CROSS JOIN LATERAL unnest(v.downstream) AS d(task_id)
				) SELECT task_id FROM c`, run.version, found)
			if err != nil {
				return err
			}
			if set, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				return err
			}
		}
		// Lock the cleared instances and their direct downstream ones (the
		// counters recomputed below) before the run: instances before runs.
		rows, err = tx.Query(ctx, `
			SELECT t.id FROM task_instances t
			WHERE t.run_id = $1 AND t.call_key = '' AND (t.task_id = ANY($3) OR t.task_id IN (
				SELECT d.task_id FROM dag_version_tasks v, unnest(v.downstream) AS d(task_id)
				WHERE v.version_id = $2 AND v.task_id = ANY($3)))
			ORDER BY t.id FOR NO KEY UPDATE`, run.id, run.version, set)
		if err != nil {
			return err
		}
		targets, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `
			UPDATE task_instances t SET
				state = CASE WHEN o.running THEN 'restarting' ELSE 'none' END,
				max_tries = t.try_number + t.retries + 1,
				queued_at = CASE WHEN o.running THEN t.queued_at END,
				started_at = CASE WHEN o.running THEN t.started_at END,
				ended_at = NULL, next_retry_at = NULL,
				heartbeat_at = CASE WHEN o.running THEN t.heartbeat_at END,
				worker_id = CASE WHEN o.running THEN t.worker_id ELSE '' END,
				hostname = CASE WHEN o.running THEN t.hostname ELSE '' END,
				pid = CASE WHEN o.running THEN t.pid ELSE 0 END,
				output = NULL, error = '', resumed = false, deferred_state = NULL, event_payload = NULL, wait_event = NULL, next_check_at = NULL, trigger_timeout = NULL
			FROM (SELECT id, state, state IN ('running', 'restarting') AS running FROM task_instances
				WHERE run_id = $1 AND call_key = '' AND task_id = ANY($2)) AS o
			WHERE t.id = o.id
			RETURNING t.id, t.state, o.state`, run.id, set)
		if err != nil {
			return err
		}
		rl := newReleaser(tx, now)
		rl.touch(run.id, 0)
		var waitingIDs, clearedIDs []int64
		for rows.Next() {
			var id int64
			var st, old state.TaskState
			if err := rows.Scan(&id, &st, &old); err != nil {
				rows.Close()
				return err
			}
			clearedIDs = append(clearedIDs, id)
			if st == state.None {
				waitingIDs = append(waitingIDs, id)
			}
			if old.Terminal() {
				rl.touch(run.id, -1)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rerun, err := rerunFailedCalls(ctx, tx, clearedIDs, now)
		if err != nil {
			return err
		}
		rl.touch(run.id, -rerun)
		if _, err := tx.Exec(ctx, `
			UPDATE task_instances t SET up_success = c.s, up_failed = c.f, up_skipped = c.k,
				up_upstream_failed = c.u, up_removed = c.m
			FROM (
				SELECT x.id,
					count(*) FILTER (WHERE u.state = 'success') AS s,
					count(*) FILTER (WHERE u.state = 'failed') AS f,
					count(*) FILTER (WHERE u.state = 'skipped') AS k,
					count(*) FILTER (WHERE u.state = 'upstream_failed') AS u,
					count(*) FILTER (WHERE u.state = 'removed') AS m
				FROM task_instances x
				JOIN dag_version_tasks v ON v.version_id = $2 AND v.task_id = x.task_id
				LEFT JOIN LATERAL unnest(v.upstream) AS up(task_id) ON true
				LEFT JOIN task_instances u ON u.run_id = x.run_id AND u.task_id = up.task_id AND u.call_key = ''
				WHERE x.id = ANY($1)
				GROUP BY x.id
			) c
			WHERE t.id = c.id`, targets, run.version); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE dag_runs SET state = 'running', ended_at = NULL,
			started_at = coalesce(started_at, $2) WHERE id = $1`, run.id, now); err != nil {
			return err
		}
		if err := rl.reconsider(ctx, waitingIDs); err != nil {
			return err
		}
		if err := rl.finish(ctx); err != nil {
			return err
		}
		if err := notify(ctx, tx, store.TopicRunsChanged); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, "SELECT "+tiCols+` FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
			WHERE t.run_id = $1 AND t.call_key = '' AND t.task_id = ANY($2) ORDER BY t.id`, run.id, set)
		if err != nil {
			return err
		}
		cleared, err = collectTIs(rows)
		return err
	})
	if err != nil {
		return nil, err
	}
	return cleared, nil
}

// SetTaskState marks one instance success, failed or skipped by hand and
// releases its downstream instances as a finish would (a previous
// terminal state is taken out of their counters first). A running try is
// taken away: its worker learns it at its next heartbeat.
func (s *Store) SetTaskState(ctx context.Context, dagID, runID, taskID string, to state.TaskState, now time.Time) (store.TaskInstance, error) {
	op := fmt.Sprintf("set task %q of run %q of dag %q to %s", taskID, runID, dagID, to)
	if to != state.Success && to != state.Failed && to != state.Skipped {
		return store.TaskInstance{}, fmt.Errorf("%s: can only mark success, failed or skipped", op)
	}
	var ti store.TaskInstance
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		var id, run int64
		var from state.TaskState
		err := tx.QueryRow(ctx, `SELECT t.id, t.run_id, t.state FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
			WHERE r.dag_id = $1 AND r.run_id = $2 AND t.task_id = $3 AND t.call_key = '' FOR NO KEY UPDATE OF t`,
			dagID, runID, taskID).Scan(&id, &run, &from)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: no task %q in run %q of DAG %q", store.ErrNotFound, taskID, runID, dagID)
		}
		if err != nil {
			return err
		}
		if from != to {
			if !state.CanTransition(from, to) {
				return errorf("%w: a %s task cannot be marked %s", store.ErrConflict, from, to)
			}
			if _, err := tx.Exec(ctx, `UPDATE task_instances SET state = $2, ended_at = $3, next_retry_at = NULL,
				next_check_at = NULL, wait_event = NULL, trigger_timeout = NULL, deferred_state = NULL
				WHERE id = $1`, id, string(to), now); err != nil {
				return err
			}
			var changes []change
			if from.Terminal() {
				changes = append(changes, change{run: run, task: taskID, st: from, delta: -1})
			}
			changes = append(changes, change{run: run, task: taskID, st: to, delta: 1})
			rl := newReleaser(tx, now)
			if !from.Terminal() {
				rl.touch(run, 1)
			}
			if err := rl.release(ctx, changes); err != nil {
				return err
			}
			if err := rl.finish(ctx); err != nil {
				return err
			}
			// A running instance marked by hand frees its slots.
			if err := notify(ctx, tx, store.TopicRunsChanged, store.TopicTasksReady); err != nil {
				return err
			}
		}
		ti, err = scanTI(tx.QueryRow(ctx, "SELECT "+tiCols+` FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
			WHERE t.id = $1`, id))
		return err
	})
	if err != nil {
		return store.TaskInstance{}, err
	}
	return ti, nil
}
