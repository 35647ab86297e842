package postgres

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// unfinishedList is the SQL list of the states of an instance that has not
// finished (the complement of state.TaskState.Terminal).
const unfinishedList = `('none', 'scheduled', 'queued', 'running', 'up_for_retry', 'deferred', 'restarting')`

// runTask names a task instance by run and task id.
type runTask struct {
	run  int64
	task string
}

// change is a task instance entering (delta +1) or leaving (delta −1) a
// terminal state, as its downstream instances count it.
type change struct {
	run   int64
	task  string
	st    state.TaskState
	delta int
}

// waiting is a locked task instance with its upstream counters.
type waiting struct {
	id       int64
	run      int64
	task     string
	st       state.TaskState
	rule     dag.TriggerRule
	runState state.RunState
	up       state.Upstream
}

// releaser applies the consequences of task instances finishing inside
// one transaction: it adds the outcomes to the counters of the downstream
// instances, decides those still waiting by their trigger rules (queued,
// skipped, upstream_failed), follows new skips and upstream failures
// further, and finally settles the runs that have nothing left to do.
//
// Each round writes the increments in one statement (queueing at once
// the instances whose upstream tasks all succeeded), decides the others
// in Go with state.Decide from the counters it returns, and writes those
// decisions in a second statement.
type releaser struct {
	tx     dbtx
	now    time.Time
	runs   map[int64]int             // runs touched → instances that finished (negative: unfinished again)
	forced map[runTask]bool          // branch choices: skip if still waiting
	final  map[int64]state.TaskState // states written by decisions
	queued int                       // instances queued
	freed  bool                      // limited instances stopped running: their slots are free
	ended  map[int64]state.RunState  // runs settled
	// runsChanged: notify TopicRunsChanged even if no run settled (a try
	// went up_for_retry, so the scheduler's retry timer must be re-armed).
	runsChanged bool
}

func newReleaser(tx dbtx, now time.Time) *releaser {
	return &releaser{tx: tx, now: now, runs: map[int64]int{}, forced: map[runTask]bool{},
		final: map[int64]state.TaskState{}, ended: map[int64]state.RunState{}}
}

// touch records that n instances of run entered a terminal state (n < 0:
// left one), so settle updates the run's count of unfinished instances.
func (rl *releaser) touch(run int64, n int) { rl.runs[run] += n }

// release propagates changes until nothing more changes.
func (rl *releaser) release(ctx context.Context, changes []change) error {
	for len(changes) > 0 {
		ws, err := rl.increment(ctx, changes)
		if err != nil {
			return err
		}
		changes, err = rl.decide(ctx, ws)
		if err != nil {
			return err
		}
	}
	return nil
}

// reconsider decides the waiting instances ids (e.g. just cleared) from
// their counters as they are, and propagates what follows.
func (rl *releaser) reconsider(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	ids = slices.Clone(ids)
	slices.Sort(ids)
	rows, err := rl.tx.Query(ctx, `
		SELECT t.id, t.run_id, t.task_id, t.state, t.trigger_rule, r.state, t.n_upstream,
			t.up_success, t.up_failed, t.up_skipped, t.up_upstream_failed, t.up_removed
		FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
		WHERE t.id = ANY($1) ORDER BY t.id FOR NO KEY UPDATE OF t`, ids)
	if err != nil {
		return err
	}
	ws, err := collectWaiting(rows)
	if err != nil {
		return err
	}
	changes, err := rl.decide(ctx, ws)
	if err != nil {
		return err
	}
	return rl.release(ctx, changes)
}

// collectWaiting reads rows of id, run, task, state, rule, run state,
// n_upstream and the five counters.
func collectWaiting(rows pgx.Rows) ([]waiting, error) {
	defer rows.Close()
	var out []waiting
	for rows.Next() {
		var w waiting
		if err := rows.Scan(&w.id, &w.run, &w.task, &w.st, &w.rule, &w.runState, &w.up.Total,
			&w.up.Success, &w.up.Failed, &w.up.Skipped, &w.up.UpstreamFailed, &w.up.Removed); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// queueWhenAllSucceeded lists the trigger rules that run a task once all
// its upstream tasks have succeeded, as state.Decide says; increment
// queues such tasks in the same write that completes their counters.
var queueWhenAllSucceeded = func() []string {
	var rules []string
	for _, r := range dag.TriggerRules {
		run := true
		for n := 1; n <= 8; n++ {
			if state.Decide(r, state.Upstream{Total: n, Success: n}) != state.Run {
				run = false
			}
		}
		if run {
			rules = append(rules, string(r))
		}
	}
	return rules
}()

// queueNow is the condition, on a task instance t before its increments
// tgt are added (run r), for increment to queue it in the same write.
const queueNow = `({fast}::bool AND t.state = 'none' AND r.state = 'running' AND tgt.s > 0
	AND t.up_success + tgt.s = t.n_upstream AND t.trigger_rule = ANY({rules}::text[]))`

// incrementTail is what follows the fin CTE (the changes: run_id,
// task_id, state, delta) in the increment statements; {fast}, {rules}
// and {now} stand for their parameters. The instances it queues enter
// task_queue in the same statement (migration 00019: the set trigger may
// then be off); one queued earlier in the transaction is there already.
const incrementTail = `, inc AS MATERIALIZED (
		SELECT f.run_id, d.task_id,
			coalesce(sum(f.delta) FILTER (WHERE f.state = 'success'), 0) AS s,
			coalesce(sum(f.delta) FILTER (WHERE f.state = 'failed'), 0) AS fl,
			coalesce(sum(f.delta) FILTER (WHERE f.state = 'skipped'), 0) AS sk,
			coalesce(sum(f.delta) FILTER (WHERE f.state = 'upstream_failed'), 0) AS uf,
			coalesce(sum(f.delta) FILTER (WHERE f.state = 'removed'), 0) AS rm
		FROM fin f
		CROSS JOIN LATERAL (SELECT r.version_id FROM dag_runs r WHERE r.id = f.run_id) r
		CROSS JOIN LATERAL (
			SELECT v.downstream FROM dag_version_tasks v
			WHERE v.version_id = r.version_id AND v.task_id = f.task_id COLLATE "C"
			LIMIT 1 -- unique; keeps the lookup a probe per finished task
		) v
		CROSS JOIN LATERAL unnest(v.downstream) AS d(task_id)
		GROUP BY f.run_id, d.task_id
	), tgt AS MATERIALIZED (
		SELECT t.id, inc.run_id, inc.s, inc.fl, inc.sk, inc.uf, inc.rm
		FROM inc CROSS JOIN LATERAL (
			SELECT t.id FROM task_instances t
			WHERE t.run_id = inc.run_id AND t.task_id = inc.task_id AND t.call_key = ''
			LIMIT 1 -- unique; keeps the lookup a probe per downstream task
		) t
		ORDER BY t.id
	), u AS (
	UPDATE task_instances t SET
		up_success = t.up_success + tgt.s, up_failed = t.up_failed + tgt.fl,
		up_skipped = t.up_skipped + tgt.sk, up_upstream_failed = t.up_upstream_failed + tgt.uf,
		up_removed = t.up_removed + tgt.rm,
		state = CASE WHEN ` + queueNow + ` THEN 'queued' ELSE t.state END,
		queued_at = CASE WHEN ` + queueNow + ` THEN {now} ELSE t.queued_at END
	FROM tgt JOIN dag_runs r ON r.id = tgt.run_id
	WHERE t.id = tgt.id
	RETURNING t.id, t.run_id, t.task_id, t.state, t.trigger_rule, r.state AS run_state, t.n_upstream,
		t.up_success, t.up_failed, t.up_skipped, t.up_upstream_failed, t.up_removed,
		{fast}::bool AND t.state = 'queued' AND t.queued_at = {now} AND tgt.s > 0
			AND t.up_success = t.n_upstream AND t.trigger_rule = ANY({rules}::text[]) AS queued,
		t.dag_id, t.priority, t.queued_at, t.limited, t.pool, t.pool_slots, t.task_key, t.concurrency_key
	), iq AS (
	INSERT INTO task_queue (ti_id, dag_id, priority, queued_at, limited, pool, pool_slots, task_key, concurrency_key)
	SELECT id, dag_id, priority, queued_at, limited, pool, pool_slots, task_key, concurrency_key FROM u WHERE queued
	ON CONFLICT (ti_id) DO NOTHING
	)
	SELECT id, run_id, task_id, state, trigger_rule, run_state, n_upstream,
		up_success, up_failed, up_skipped, up_upstream_failed, up_removed, queued FROM u`

// incrementSQL adds the changes $1–$4 (run, task, state, delta) to the
// counters of their direct downstream instances; $5 allows queueing in the
// same write, $6 lists the rules that queue once all upstream tasks
// succeeded, $7 is the time.
var incrementSQL = `
	WITH fin AS (
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[]) AS f(run_id, task_id, state, delta)
	)` + strings.NewReplacer("{fast}", "$5", "{rules}", "$6", "{now}", "$7").Replace(incrementTail)

// incrementRecordedSQL is incrementSQL for the instances of $1 that this
// transaction has just moved to a final state of $2 — told apart from
// those it did not change by the transaction id of their row version —
// so that it can travel in the round trip of the statement recording
// them; $3–$5 are $5–$7 of incrementSQL.
var incrementRecordedSQL = `
	WITH me AS MATERIALIZED (
		SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text::xid AS xid
	), fin AS (
		SELECT t.run_id, t.task_id, t.state, 1 AS delta
		FROM unnest($1::bigint[]) AS u(id)
		CROSS JOIN LATERAL (SELECT t.run_id, t.task_id, t.state, t.xmin FROM task_instances t WHERE t.id = u.id LIMIT 1) t
		CROSS JOIN me
		WHERE t.state = ANY($2::text[]) AND t.xmin = me.xid
	)` + strings.NewReplacer("{fast}", "$3", "{rules}", "$4", "{now}", "$5").Replace(incrementTail)

// increment adds changes to the counters of the direct downstream
// instances in one UPDATE: the increments are aggregated per instance and
// the rows written in id order (so concurrent releases lock them in the
// same order). An instance of a running run whose upstream tasks have now
// all succeeded, with a rule that runs it then (queueWhenAllSucceeded), is
// queued in the same write — the common case costs one row write. The
// rows come back with their new counters and state, for decide.
func (rl *releaser) increment(ctx context.Context, changes []change) ([]waiting, error) {
	n := len(changes)
	runs, tasks, states, deltas := make([]int64, n), make([]string, n), make([]string, n), make([]int32, n)
	for i, c := range changes {
		runs[i], tasks[i], states[i], deltas[i] = c.run, c.task, string(c.st), int32(c.delta)
		rl.touch(c.run, 0)
	}
	// Branch choices must be applied by decide, so no fast path then.
	fast := len(rl.forced) == 0
	rows, err := rl.tx.Query(ctx, incrementSQL, runs, tasks, states, deltas, fast, queueWhenAllSucceeded, rl.now)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return rl.readIncrement(rows)
}

// readIncrement reads the rows of an increment statement: the instances
// it queued, and the others for decide.
func (rl *releaser) readIncrement(rows pgx.Rows) ([]waiting, error) {
	var out []waiting
	for rows.Next() {
		var w waiting
		var queued bool
		if err := rows.Scan(&w.id, &w.run, &w.task, &w.st, &w.rule, &w.runState, &w.up.Total,
			&w.up.Success, &w.up.Failed, &w.up.Skipped, &w.up.UpstreamFailed, &w.up.Removed, &queued); err != nil {
			return nil, err
		}
		if queued {
			// Queued by this write (or, rarely, earlier in this
			// transaction: counted twice, which only repeats a wake-up).
			rl.final[w.id] = state.Queued
			rl.queued++
			continue
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// decide applies the trigger rules (and branch choices) to the locked
// instances that wait in running runs, writes the decisions (queued,
// skipped, upstream_failed) in one statement, and returns the instances
// that became terminal as changes to propagate.
func (rl *releaser) decide(ctx context.Context, ws []waiting) ([]change, error) {
	var (
		ids    []int64
		states []string
		next   []change
	)
	for _, w := range ws {
		if w.st != state.None || w.runState != state.RunRunning {
			continue
		}
		var to state.TaskState
		if rl.forced[runTask{w.run, w.task}] {
			to = state.Skipped
		} else {
			switch state.Decide(w.rule, w.up) {
			case state.Run:
				to = state.Queued
			case state.Skip:
				to = state.Skipped
			case state.FailUpstream:
				to = state.UpstreamFailed
			default:
				continue
			}
		}
		rl.final[w.id] = to
		if to == state.Queued {
			rl.queued++
		} else {
			rl.touch(w.run, 1)
			next = append(next, change{run: w.run, task: w.task, st: to, delta: 1})
		}
		ids = append(ids, w.id)
		states = append(states, string(to))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	_, err := rl.tx.Exec(ctx, `
		UPDATE task_instances t SET state = u.state,
			queued_at = CASE WHEN u.state = 'queued' THEN $3 ELSE t.queued_at END,
			ended_at = CASE WHEN u.state = 'queued' THEN t.ended_at ELSE $3 END
		FROM unnest($1::bigint[], $2::text[]) AS u(id, state)
		WHERE t.id = u.id AND t.id = ANY($1) AND t.state = 'none'`, ids, states, rl.now)
	if err != nil {
		return nil, err
	}
	return next, nil
}

// failingLeafStates lists the leaf states that make a finished run
// failed, as state.RunOutcome says (a run fails when any of its leaves is
// in one of them); settleSQL applies it.
var failingLeafStates = func() []string {
	var out []string
	for _, st := range state.TaskStates {
		if st.Terminal() && state.RunOutcome([]state.TaskState{st}) == state.RunFailed {
			out = append(out, string(st))
		}
	}
	return out
}()

// settleSQL subtracts $2[i] finished instances from the unfinished count
// of run $1[i] and ends each running run that has none left, at $3: failed
// when one of its leaf instances is in a state of $4 (failingLeafStates),
// else success. The runs are locked in id order; the rows returned are
// the runs it ended, with their state. Whether a run is written depends on
// the delta, never on the count the statement's snapshot saw: a run whose
// count another transaction (Store.Call) raised meanwhile is re-read
// when locked, and a test of the stale count would skip the write.
const settleSQL = `
	WITH l AS MATERIALIZED (
		SELECT r.id, r.unfinished - u.d AS left, r.state = 'running' AND r.unfinished - u.d = 0 AS ending,
			r.version_id, u.d
		FROM dag_runs r JOIN unnest($1::bigint[], $2::int[]) AS u(id, d) ON u.id = r.id
		ORDER BY r.id FOR NO KEY UPDATE OF r
	), o AS (
		SELECT l.id, l.left, l.ending, l.d, CASE WHEN NOT l.ending THEN NULL
			WHEN EXISTS (SELECT 1 FROM dag_version_tasks v
				CROSS JOIN LATERAL (SELECT t.state FROM task_instances t
					WHERE t.run_id = l.id AND t.task_id = v.task_id AND t.call_key = '' LIMIT 1) t
				WHERE v.version_id = l.version_id AND v.is_leaf AND t.state = ANY($4::text[])) THEN 'failed'
			ELSE 'success' END AS outcome
		FROM l
	)
	UPDATE dag_runs r SET unfinished = o.left, state = coalesce(o.outcome, r.state),
		ended_at = CASE WHEN o.ending THEN $3 ELSE r.ended_at END
	FROM o WHERE r.id = o.id AND (o.ending OR o.d <> 0)
	RETURNING r.id, o.outcome`

// settle updates the count of unfinished instances of every run touched
// and finishes the running runs that have none left, with the outcome of
// their leaf instances (settleSQL). The runs are locked in id order (FOR
// NO KEY UPDATE: their keys do not change) after every instance lock of
// the transaction, so concurrent transactions serialise on them without
// deadlocking, and the counts stay exact. In a pipeTx the statement
// travels with COMMIT: which runs it ended is known once committed.
func (rl *releaser) settle(ctx context.Context) error {
	if len(rl.runs) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(rl.runs))
	for id := range rl.runs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	deltas := make([]int32, len(ids))
	for i, id := range ids {
		deltas[i] = int32(rl.runs[id])
	}
	args := []any{ids, deltas, rl.now, failingLeafStates}
	if p, ok := rl.tx.(*pipeTx); ok {
		p.beforeCommit(settleSQL, args, rl.readSettled)
		return nil
	}
	rows, err := rl.tx.Query(ctx, settleSQL, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	return rl.readSettled(rows)
}

// readSettled reads the rows of settleSQL: the runs it ended.
func (rl *releaser) readSettled(rows pgx.Rows) error {
	for rows.Next() {
		var id int64
		var out *string
		if err := rows.Scan(&id, &out); err != nil {
			return err
		}
		if out != nil {
			rl.ended[id] = state.RunState(*out)
		}
	}
	return rows.Err()
}

// finish settles the touched runs and queues the wake-ups.
func (rl *releaser) finish(ctx context.Context) error {
	if err := rl.settle(ctx); err != nil {
		return err
	}
	return rl.notify(ctx)
}

func (rl *releaser) notify(ctx context.Context) error {
	var topics []store.Topic
	p, pipe := rl.tx.(*pipeTx)
	switch {
	case (rl.queued > 0 || rl.freed) && pipe && p.readyClaimed != nil:
		p.released = true // decided after the commit (pipeTx.readyClaimed)
	case rl.queued > 0 || rl.freed:
		topics = append(topics, store.TopicTasksReady)
	}
	if pipe && !rl.runsChanged {
		// The runs ended are known once committed (settle travels with
		// COMMIT): the wake-up for them follows then.
		p.afterIf = append(p.afterIf, conditionalTopic{store.TopicRunsChanged, func() bool { return len(rl.ended) > 0 }})
	} else if len(rl.ended) > 0 || rl.runsChanged {
		topics = append(topics, store.TopicRunsChanged)
	}
	return notify(ctx, rl.tx, topics...)
}
