package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// claimSet is what a claim writes on each claimed instance.
const claimSet = `UPDATE task_instances SET state = 'running', try_number = try_number + 1, started_at = ?1,
	ended_at = NULL, heartbeat_at = ?1, worker_id = ?2, hostname = ?3, pid = ?4, next_retry_at = NULL,
	output = NULL, error = ''`

const claimReturning = ` RETURNING id, run_id, dag_id, task_id, try_number, max_tries, priority, trigger_rule,
	queued_at, timeout_ns, resumed, deferred_state, event_payload, trigger_timeout, pool, pool_slots,
	coalesce(concurrency_key, ''), limited, map_index, arguments,
	coalesce(parent_ti_id, 0)`

// claimFast picks the best queued instances; used when no DAG with a
// MaxActiveTasks cap has queued work.
//
// Its LIMIT is ?5 + 0, not ?5, as in every statement of this package:
// SQLite reads a bare bound LIMIT while planning and then marks the
// statement to be compiled again whenever the parameter is bound again,
// that is on every run of a cached statement (~0.3 ms for this one, a
// tenth of a worker's CPU in the wide benchmark). An expression is not
// read, so the statement stays compiled (TestLimitsAreExpressions).
const claimFast = claimSet + ` WHERE id IN (SELECT id FROM task_instances WHERE state = 'queued'
	ORDER BY priority DESC, queued_at, id LIMIT ?5 + 0)` + claimReturning

// claimChosen claims the instances whose ids ?5 lists (JSON), chosen by
// claimLimited.
const claimChosen = claimSet + ` WHERE id IN (SELECT value FROM json_each(?5))` + claimReturning

// ClaimTasks moves up to max queued task instances to running for worker
// w, highest priority first then oldest, starting a new try, in one
// UPDATE … RETURNING. DAGs with MaxActiveTasks never get more instances
// running than their cap.
func (s *Store) ClaimTasks(ctx context.Context, wk store.Worker, max int, now time.Time) ([]store.Claimed, error) {
	if max <= 0 {
		return nil, nil
	}
	if wk.ID == "" {
		return nil, errors.New("claim tasks: empty worker id")
	}
	var out []store.Claimed
	err := s.write(ctx, fmt.Sprintf("claim tasks for worker %q", wk.ID), func(w *txn) error {
		var err error
		out, err = claimIn(w, wk, max, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	sortClaimed(out)
	return out, nil
}

// claimIn is ClaimTasks inside the write transaction w.
//
// Whether a limited instance, or one of a DAG with MaxActiveTasks, is
// queued is asked of the indexes of queued limited instances and of
// queued instances by DAG by name: without statistics the planner prefers
// the index of all queued instances and reads every one of them (10,000
// rows per claim while a wide run's tasks wait).
func claimIn(w *txn, wk store.Worker, max int, now time.Time) ([]store.Claimed, error) {
	var capped, limited bool
	if err := w.queryRow(`SELECT EXISTS (SELECT 1 FROM dags d WHERE d.max_active_tasks > 0
		AND EXISTS (SELECT 1 FROM task_instances t INDEXED BY task_instances_dag_queued
			WHERE t.dag_id = d.dag_id AND t.state = 'queued')),
		EXISTS (SELECT 1 FROM task_instances INDEXED BY task_instances_claim_limited
			WHERE state = 'queued' AND limited)`).Scan(&capped, &limited); err != nil {
		return nil, err
	}
	var rows *sql.Rows
	var err error
	if capped || limited {
		ids, err := chooseLimited(w, max)
		if err != nil || len(ids) == 0 {
			return nil, err
		}
		rows, err = w.query(claimChosen, us(now), wk.ID, wk.Hostname, wk.PID, idList(ids))
		if err != nil {
			return nil, err
		}
	} else {
		rows, err = w.query(claimFast, us(now), wk.ID, wk.Hostname, wk.PID, max)
		if err != nil {
			return nil, err
		}
	}
	var out []store.Claimed
	var limitedIDs []int64
	for rows.Next() {
		var (
			c       store.Claimed
			rule    string
			queued  sql.NullInt64
			timeout int64
			limited bool
			args    sql.NullString
		)
		var saved, payload sql.NullString
		var deadline sql.NullInt64
		if err := rows.Scan(&c.ID, &c.RunID, &c.DAGID, &c.TaskID, &c.TryNumber, &c.MaxTries, &c.Priority,
			&rule, &queued, &timeout, &c.Resumed, &saved, &payload, &deadline, &c.Pool, &c.PoolSlots, &c.ConcurrencyKey,
			&limited, &c.MapIndex, &args, &c.CallerID); err != nil {
			rows.Close()
			return nil, err
		}
		c.Arguments = rawJSON(args)
		c.State, c.TriggerRule = state.Running, dag.TriggerRule(rule)
		c.ConcurrencyKey = strings.TrimPrefix(c.ConcurrencyKey, store.KeyPrefixKey)
		c.QueuedAt = ptrUS(queued)
		t := fromUS(us(now))
		c.StartedAt, c.HeartbeatAt = &t, &t
		c.WorkerID, c.Hostname, c.PID = wk.ID, wk.Hostname, wk.PID
		c.Timeout = time.Duration(timeout)
		c.DeferredState, c.EventPayload, c.TriggerTimeout = rawJSON(saved), rawJSON(payload), ptrUS(deadline)
		out = append(out, c)
		if limited {
			limitedIDs = append(limitedIDs, c.ID)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	if len(limitedIDs) > 0 {
		if err := countClaimed(w, limitedIDs); err != nil {
			return nil, err
		}
	}
	runs := map[int64]runRec{}
	for i := range out {
		c := &out[i]
		r, ok := runs[c.RunID]
		if !ok {
			if r, err = getRunByID(w.ctx, w, c.RunID); err != nil {
				return nil, err
			}
			runs[c.RunID] = r
		}
		c.DAGRunID = r.RunID
		c.LogicalDate, c.IntervalStart, c.IntervalEnd = r.LogicalDate, r.IntervalStart, r.IntervalEnd
		c.Conf = r.Conf
	}
	return out, nil
}

// sortClaimed puts claimed instances in claim order: highest priority
// first, then oldest.
func sortClaimed(out []store.Claimed) {
	slices.SortFunc(out, func(a, b store.Claimed) int {
		if a.Priority != b.Priority {
			return b.Priority - a.Priority
		}
		if qa, qb := a.QueuedAt, b.QueuedAt; qa != nil && qb != nil && !qa.Equal(*qb) {
			return qa.Compare(*qb)
		}
		return int(a.ID - b.ID)
	})
}

// checkResults validates a batch of results before any of it is written.
func checkResults(results []store.Result) error {
	for i, r := range results {
		switch r.State {
		case state.Success, state.Failed, state.Skipped, state.Deferred:
		default:
			return fmt.Errorf("result %d (task instance #%d try %d): state %q is not success, failed, skipped or deferred",
				i, r.ID, r.TryNumber, r.State)
		}
		if r.Output != nil && !json.Valid(r.Output) {
			return fmt.Errorf("result %d (task instance #%d try %d): output is not valid JSON", i, r.ID, r.TryNumber)
		}
	}
	return nil
}

// FinishTasks records the outcomes of a batch of tries in one
// transaction: each is a compare-and-set on (running, try number); a
// failure with tries left and not Permanent becomes up_for_retry after
// its retry delay; final states release the downstream instances by their
// trigger rules (Branch: unfollowed direct downstream tasks are skipped)
// and the runs they belong to are settled.
func (s *Store) FinishTasks(ctx context.Context, results []store.Result) ([]store.FinishOutcome, error) {
	out, _, err := s.FinishAndClaim(ctx, results, store.Worker{}, 0, time.Time{})
	return out, err
}

// FinishAndClaim records results as FinishTasks does and then, in the
// same write transaction, claims up to max queued instances for worker wk
// as ClaimTasks does, those just released included. When the claim leaves
// nothing queued, no other worker is woken.
func (s *Store) FinishAndClaim(ctx context.Context, results []store.Result, wk store.Worker, max int, now time.Time) ([]store.FinishOutcome, []store.Claimed, error) {
	if len(results) == 0 && max <= 0 {
		return nil, nil, nil
	}
	if err := checkResults(results); err != nil {
		return nil, nil, fmt.Errorf("finish tasks: %w", err)
	}
	if max > 0 && wk.ID == "" {
		return nil, nil, errors.New("finish and claim tasks: empty worker id")
	}
	op := fmt.Sprintf("finish %d tasks", len(results))
	if max > 0 {
		op = fmt.Sprintf("finish %d tasks and claim up to %d for worker %q", len(results), max, wk.ID)
	}
	var (
		out     []store.FinishOutcome
		claimed []store.Claimed
	)
	err := s.write(ctx, op, func(w *txn) error {
		var err error
		claimed = nil
		if len(results) > 0 {
			if out, err = newEngine(w, time.Time{}).finishBatch(results); err != nil {
				return err
			}
		}
		if max <= 0 {
			return nil
		}
		if claimed, err = claimIn(w, wk, max, now); err != nil {
			return err
		}
		if w.topics[store.TopicTasksReady] && len(claimed) < max {
			// Wake other workers only for what this claim left queued.
			var left bool
			if err := w.queryRow(`SELECT ` + claimableLeft).Scan(&left); err != nil {
				return err
			}
			if !left {
				delete(w.topics, store.TopicTasksReady)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	sortClaimed(claimed)
	return out, claimed, nil
}

// claimableLeft is true when queued instances may be claimable: an
// unlimited one, or a limited one in a pool with room (keys are not
// looked at: a wake-up too many costs a claim that finds nothing).
const claimableLeft = `(EXISTS (SELECT 1 FROM task_instances WHERE state = 'queued' AND NOT limited)
	OR EXISTS (SELECT 1 FROM pools p WHERE (p.slots < 0 OR p.running < p.slots)
		AND EXISTS (SELECT 1 FROM task_instances t WHERE t.state = 'queued' AND t.limited AND t.pool = p.name)))`

// tryList encodes tries for json_each as [[id, try], …].
func tryList(tries []store.Try) string {
	pairs := make([][2]int64, len(tries))
	for i, a := range tries {
		pairs[i] = [2]int64{a.ID, int64(a.TryNumber)}
	}
	return idList(pairs)
}

const tryIn = `(id, try_number) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))`

// tryIn3 is tryIn with the list as parameter ?3.
const tryIn3 = `(id, try_number) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?3))`

// HeartbeatTasks refreshes the heartbeat of the worker's running tries
// and returns the tries it no longer holds (finished, failed as
// zombies, cleared, cancelled or claimed again): the worker must stop
// them.
func (s *Store) HeartbeatTasks(ctx context.Context, workerID string, tries []store.Try, now time.Time) ([]store.Try, error) {
	if len(tries) == 0 {
		return nil, nil
	}
	var lost []store.Try
	err := s.write(ctx, fmt.Sprintf("heartbeat tasks of worker %q", workerID), func(w *txn) error {
		lost = nil
		// A deferred try the worker keeps parked is held while deferred,
		// and once queued again (its try number lowered by one) until
		// claimed.
		rows, err := w.query(`UPDATE task_instances SET heartbeat_at = ?1
			WHERE worker_id = ?2 AND (state IN ('running', 'deferred') AND `+tryIn3+`
				OR state = 'queued' AND (id, try_number + 1) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?3)))
			RETURNING id, CASE WHEN state = 'queued' THEN try_number + 1 ELSE try_number END`,
			us(now), workerID, tryList(tries))
		if err != nil {
			return err
		}
		held := map[store.Try]bool{}
		for rows.Next() {
			var a store.Try
			if err := rows.Scan(&a.ID, &a.TryNumber); err != nil {
				rows.Close()
				return err
			}
			held[a] = true
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		for _, a := range tries {
			if !held[a] {
				lost = append(lost, a)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// ResumeDeferred queues again the deferred instances among ids.
func (s *Store) ResumeDeferred(ctx context.Context, ids []int64, now time.Time) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var n int
	err := s.write(ctx, "resume deferred tasks", func(w *txn) error {
		var err error
		n, err = requeueDeferred(w, ids, now)
		return err
	})
	return n, err
}

// requeueDeferred queues again the deferred instances among ids, their
// try number lowered by one (the claim resuming them gives it back), and
// wakes the workers when it queued any.
func requeueDeferred(w *txn, ids []int64, now time.Time) (int, error) {
	res, err := w.exec(`UPDATE task_instances SET state = 'queued', try_number = try_number - 1, queued_at = ?,
			resumed = 1, next_check_at = NULL, wait_event = NULL
		WHERE state = 'deferred' AND id IN (SELECT value FROM json_each(?))`, us(now), idList(ids))
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	if n > 0 {
		w.wake(store.TopicTasksReady)
	}
	return int(n), nil
}

// RequeueRetries queues the up_for_retry instances due at or before now.
func (s *Store) RequeueRetries(ctx context.Context, now time.Time) (int, error) {
	var n int64
	err := s.write(ctx, "requeue retries", func(w *txn) error {
		res, err := w.exec(`UPDATE task_instances SET state = 'queued', queued_at = ?, next_retry_at = NULL
			WHERE state = 'up_for_retry' AND next_retry_at <= ?`, us(now), us(now))
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		if n > 0 {
			w.wake(store.TopicTasksReady)
		}
		return nil
	})
	if err != nil {
		return int(n), err
	}
	for {
		var m int64
		err := s.write(ctx, "requeue due deferred tasks", func(w *txn) error {
			res, err := w.exec(`UPDATE task_instances SET state = 'queued', try_number = try_number - 1,
					queued_at = ?1, resumed = 1, next_check_at = NULL, wait_event = NULL
				WHERE id IN (SELECT id FROM task_instances WHERE state = 'deferred' AND next_check_at <= ?1
					ORDER BY next_check_at LIMIT ?2 + 0)`, us(now), store.DeferredBatch)
			if err != nil {
				return err
			}
			m, _ = res.RowsAffected()
			if m > 0 {
				w.wake(store.TopicTasksReady)
			}
			return nil
		})
		n += m
		if err != nil || m < store.DeferredBatch {
			return int(n), err
		}
	}
}

// NextRetryAt returns the earliest pending retry time or next check of a
// deferred instance.
func (s *Store) NextRetryAt(ctx context.Context) (time.Time, bool, error) {
	var t sql.NullInt64
	if err := s.rdb.QueryRowContext(ctx, `SELECT min(x) FROM (
			SELECT min(next_retry_at) AS x FROM task_instances WHERE state = 'up_for_retry'
			UNION ALL
			SELECT min(next_check_at) FROM task_instances WHERE state = 'deferred' AND next_check_at IS NOT NULL)`).Scan(&t); err != nil {
		return time.Time{}, false, fmt.Errorf("next retry: %w", mapErr(err))
	}
	if !t.Valid {
		return time.Time{}, false, nil
	}
	return fromUS(t.Int64), true, nil
}

// failTries fails the running (or restarting) tries selected by
// where/args as a finish with an error would: retried when tries remain.
func (s *Store) failTries(ctx context.Context, op, reason, where string, now time.Time, args ...any) ([]store.Try, error) {
	var out []store.Try
	err := s.write(ctx, op, func(w *txn) error {
		out = nil
		// The partial index holds only the running rows: scanning it is
		// cheap however large the table is.
		rows, err := w.query(`SELECT id, try_number FROM task_instances INDEXED BY task_instances_running
			WHERE state IN ('running', 'restarting') AND `+where+` ORDER BY id`, args...)
		if err != nil {
			return err
		}
		var found []store.Try
		for rows.Next() {
			var a store.Try
			if err := rows.Scan(&a.ID, &a.TryNumber); err != nil {
				rows.Close()
				return err
			}
			found = append(found, a)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		rs := make([]store.Result, len(found))
		for i, a := range found {
			rs[i] = store.Result{Try: a, State: state.Failed, Error: reason, EndedAt: now}
		}
		outcomes, err := newEngine(w, now).finishBatch(rs)
		if err != nil {
			return err
		}
		for _, o := range outcomes {
			if o.Applied {
				out = append(out, o.Try)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FailZombies fails (or puts up for retry) the running instances whose
// heartbeat is older than staleBefore, releasing downstream instances as
// a finish would, and returns the tries it took away.
func (s *Store) FailZombies(ctx context.Context, staleBefore, now time.Time) ([]store.Try, error) {
	reason := fmt.Sprintf("zombie: no heartbeat since before %s", staleBefore.UTC().Format(time.RFC3339Nano))
	return s.failTries(ctx, "fail zombies", reason,
		`coalesce(heartbeat_at, started_at, 0) < ?1 AND NOT EXISTS (SELECT 1 FROM workers w
			WHERE w.id = task_instances.worker_id AND w.heartbeat_at >= ?1)`, now, us(staleBefore))
}

// FailWorkerTasks treats the running tries of a dead worker like
// zombies, at once.
func (s *Store) FailWorkerTasks(ctx context.Context, workerID string, now time.Time) ([]store.Try, error) {
	return s.failTries(ctx, fmt.Sprintf("fail tasks of worker %q", workerID),
		fmt.Sprintf("worker %s died", workerID), `worker_id = ?`, now, workerID)
}

// RequeueTries puts running tries back to queued without using up a
// try (graceful shutdown); stale tries are ignored.
func (s *Store) RequeueTries(ctx context.Context, tries []store.Try) error {
	if len(tries) == 0 {
		return nil
	}
	return s.write(ctx, "requeue tries", func(w *txn) error {
		rows, err := w.query(`UPDATE task_instances SET state = 'queued', try_number = try_number - 1,
				started_at = NULL, heartbeat_at = NULL, worker_id = '', hostname = '', pid = 0,
				queued_at = coalesce(queued_at, ?)
			WHERE state IN ('running', 'restarting') AND `+tryIn+` RETURNING id, try_number + 1`, us(s.clk.Now()), tryList(tries))
		if err != nil {
			return err
		}
		back, err := scanTries(rows)
		if err != nil {
			return err
		}
		if len(back) > 0 {
			w.wake(store.TopicTasksReady)
		}
		return s.putBackNotes(w, back, store.RequeueReason)
	})
}

// RecoverWorkerTasks puts the running tries of dead worker workerID back
// to queued keeping their try number, and fails those put back so once
// already under the same number (poison); see store.Store.
func (s *Store) RecoverWorkerTasks(ctx context.Context, workerID, cause string, now time.Time) (store.Recovered, error) {
	var rec store.Recovered
	err := s.write(ctx, fmt.Sprintf("recover tasks of worker %q", workerID), func(w *txn) error {
		rec = store.Recovered{}
		rows, err := w.query(`SELECT id, try_number, state = 'restarting', crashed_try = try_number
			FROM task_instances INDEXED BY task_instances_running
			WHERE state IN ('running', 'restarting') AND worker_id = ? ORDER BY id`, workerID)
		if err != nil {
			return err
		}
		var dead store.DeadWorkerTries
		for rows.Next() {
			var a store.Try
			var restarting, crashed bool
			if err := rows.Scan(&a.ID, &a.TryNumber, &restarting, &crashed); err != nil {
				rows.Close()
				return err
			}
			dead.Add(a, restarting, crashed)
		}
		back := dead.Back
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		if len(back) > 0 {
			if _, err := w.exec(`UPDATE task_instances SET state = 'queued', crashed_try = try_number,
					try_number = try_number - 1, started_at = NULL, heartbeat_at = NULL, worker_id = '', hostname = '', pid = 0,
					queued_at = coalesce(queued_at, ?)
				WHERE state = 'running' AND `+tryIn, us(now), tryList(back)); err != nil {
				return err
			}
			rec.Requeued = back
			w.wake(store.TopicTasksReady)
			if err := s.putBackNotes(w, back, cause); err != nil {
				return err
			}
		}
		if len(dead.Poisoned)+len(dead.Cleared) == 0 {
			return nil
		}
		results, err := dead.Results(cause, now, func(a store.Try) ([]byte, error) { return lastLogChunks(w, a) })
		if err != nil {
			return err
		}
		out, err := newEngine(w, now).finishBatch(results)
		rec.Failed = store.AppliedOf(out, dead.Poisoned)
		return err
	})
	if err != nil {
		return store.Recovered{}, err
	}
	return rec, nil
}

// lastLogChunks returns the last two stored chunks of a try's log.
func lastLogChunks(w *txn, a store.Try) ([]byte, error) {
	rows, err := w.query(`SELECT data FROM task_log_chunks WHERE ti_id = ? AND try_number = ?
		ORDER BY seq DESC LIMIT 2`, a.ID, a.TryNumber)
	if err != nil {
		return nil, err
	}
	var chunks [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			rows.Close()
			return nil, err
		}
		chunks = append(chunks, b)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	var out []byte
	for i := len(chunks) - 1; i >= 0; i-- {
		out = append(out, chunks[i]...)
	}
	return out, nil
}

// scanTries reads (id, try number) rows and closes them.
func scanTries(rows *sql.Rows) ([]store.Try, error) {
	var out []store.Try
	for rows.Next() {
		var a store.Try
		if err := rows.Scan(&a.ID, &a.TryNumber); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, a)
	}
	return out, errors.Join(rows.Err(), rows.Close())
}

// putBackNotes marks, in the logs of the tries put back that have output
// already, where their next run begins (store.PutBackNote).
func (s *Store) putBackNotes(w *txn, tries []store.Try, why string) error {
	for _, a := range tries {
		var size int64
		err := w.queryRow(`SELECT size FROM task_logs WHERE ti_id = ? AND try_number = ?`, a.ID, a.TryNumber).Scan(&size)
		if errors.Is(err, sql.ErrNoRows) || err == nil && size == 0 {
			continue
		}
		if err != nil {
			return err
		}
		if err := s.appendLogIn(w, a, store.PutBackNote(why)); err != nil {
			return err
		}
	}
	return nil
}
