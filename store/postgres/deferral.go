package postgres

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// deferSQL records deferred tries, each a compare-and-set on (running, try
// number): $1 instance, $2 try, $3 waits on its calls, $4 start (NULL:
// keep the claim time), $5 now, $6 how many of its calls are not final,
// $7..$10 its event key, next check, deadline and saved state (NULL:
// none).
// The try keeps its number and its worker (which may keep it parked); a
// deferral on calls with none left unfinished is queued at once, its try
// number lowered by one so that the claim resuming it gives it back.
const deferSQL = `
		UPDATE task_instances t SET
			state = CASE WHEN u.calls AND u.waits = 0 THEN 'queued' ELSE 'deferred' END,
			try_number = CASE WHEN u.calls AND u.waits = 0 THEN t.try_number - 1 ELSE t.try_number END,
			queued_at = CASE WHEN u.calls AND u.waits = 0 THEN $5 ELSE t.queued_at END,
			waiting_on = CASE WHEN u.calls THEN u.waits ELSE t.waiting_on END,
			started_at = coalesce(u.started_at, t.started_at),
			heartbeat_at = $5,
			wait_event = u.event, next_check_at = u.next_check, trigger_timeout = u.deadline,
			deferred_state = u.saved::jsonb, event_payload = NULL
		FROM unnest($1::bigint[], $2::int[], $3::bool[], $4::timestamptz[], $6::int[], $7::text[], $8::timestamptz[],
			$9::timestamptz[], $10::text[]) AS u(id, try, calls, started_at, waits, event, next_check, deadline, saved)
		WHERE t.id = u.id AND t.id = ANY($1) AND t.try_number = u.try AND t.state = 'running'
		RETURNING t.id, t.state`

// eventBeforeWaitSQL queues at once the instances $1, deferred in this
// transaction, that wait on an event that is kept ($2 now) and newer than
// the last they consumed: the event arrived before the wait was recorded.
// (No state test: the ids are deferred, and one would let the planner
// walk the partial index of every deferred instance.)
const eventBeforeWaitSQL = `
		WITH m AS (
			SELECT t.id, e.id AS event_id, e.payload FROM unnest($1::bigint[]) AS u(id)
			JOIN task_instances t ON t.id = u.id
			CROSS JOIN LATERAL (SELECT id, payload FROM events e
				WHERE e.key = t.wait_event AND e.id > t.last_event_id AND e.expires_at > $2
				ORDER BY e.id LIMIT 1) e
		)
		UPDATE task_instances t SET state = 'queued', try_number = t.try_number - 1, queued_at = $2,
			resumed = true, event_payload = m.payload, last_event_id = m.event_id, next_check_at = NULL, wait_event = NULL
		FROM m WHERE t.id = m.id
		RETURNING t.id`

// requeueDeferredSQL queues deferred instances again ($1 ids, $2 now),
// their try number lowered by one (the claim gives it back).
const requeueDeferredSQL = `
		UPDATE task_instances SET state = 'queued', try_number = try_number - 1, queued_at = $2,
			resumed = true, next_check_at = NULL, wait_event = NULL
		WHERE id = ANY($1) AND state = 'deferred'`

// requeueDeferred queues again the deferred instances among ids, inside
// tx, and wakes the workers when it queued any.
func requeueDeferred(ctx context.Context, tx dbtx, ids []int64, now time.Time) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	tag, err := tx.Exec(ctx, requeueDeferredSQL, ids, now)
	if err != nil {
		return 0, err
	}
	n := int(tag.RowsAffected())
	if n > 0 {
		return n, notify(ctx, tx, store.TopicTasksReady)
	}
	return n, nil
}

// eventKeyLock is the first key of the advisory locks of event keys.
const eventKeyLock = 7007

// lockEventKeys takes the transaction's advisory locks of event keys, in
// one order. RecordEvent takes its key's before it looks for waiters, and
// a deferral after it is written and before it looks for kept events, so
// whichever commits second sees the other: an event that races a
// deferral on its key is never lost.
func lockEventKeys(ctx context.Context, tx dbtx, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, h) FROM (
		SELECT DISTINCT hashtext(k) AS h FROM unnest($2::text[]) AS k ORDER BY 1) AS x`, eventKeyLock, keys)
	return err
}

// eventsBeforeWait queues the instances among ids just deferred on a kept
// event (eventBeforeWaitSQL), marking them queued in got.
func eventsBeforeWait(ctx context.Context, tx dbtx, ids []int64, now time.Time, got map[int64]state.TaskState) error {
	if len(ids) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, eventBeforeWaitSQL, ids, now)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return err
		}
		got[id] = state.Queued
	}
	return rows.Err()
}

// ResumeDeferred queues again the deferred instances among ids.
func (s *Store) ResumeDeferred(ctx context.Context, ids []int64, now time.Time) (int, error) {
	var n int
	if len(ids) == 0 {
		return 0, nil
	}
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	err := s.inTx(ctx, "resume deferred tasks", func(tx pgx.Tx) error {
		var err error
		n, err = requeueDeferred(ctx, tx, sorted, now)
		return err
	})
	return n, err
}

// finishWithDeferrals is finishInClaim for a batch with deferred results:
// they are recorded first (deferSQL), and the others, with those whose
// instance was not running that try, go through the finish as usual (a
// deferral of a cleared try ends the try as any outcome would).
func (s *Store) finishWithDeferrals(ctx context.Context, tx dbtx, results []store.Result, claim *claimPlan) ([]store.FinishOutcome, error) {
	var now time.Time
	for _, r := range results {
		if r.EndedAt.After(now) {
			now = r.EndedAt
		}
	}
	if now.IsZero() {
		now = s.clock.Now()
	}
	if err := lockBatch(ctx, tx, results); err != nil {
		return nil, err
	}
	var (
		defIdx []int
		rest   []store.Result
		restAt []int
	)
	seen := map[int64]bool{}
	for i, r := range results {
		switch {
		case r.State == state.Deferred && !seen[r.ID]:
			defIdx = append(defIdx, i)
		case r.State == state.Deferred:
			// A duplicate: not applied, as a duplicate outcome.
			r.State, r.Permanent, r.Deferral = state.Failed, true, store.Deferral{}
			rest, restAt = append(rest, r), append(restAt, i)
		default:
			rest, restAt = append(rest, r), append(restAt, i)
		}
		seen[r.ID] = true
	}
	slices.SortFunc(defIdx, func(a, b int) int { return cmp.Compare(results[a].ID, results[b].ID) })
	n := len(defIdx)
	ids, tries, calls, started := make([]int64, n), make([]int32, n), make([]bool, n), make([]*time.Time, n)
	events, saved := make([]*string, n), make([]*string, n)
	checks, deadlines, pokeAt := make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n)
	timed, onEvents := false, false
	for k, i := range defIdx {
		r := results[i]
		ids[k], tries[k], calls[k] = r.ID, int32(r.TryNumber), r.Deferral.Calls
		if !r.StartedAt.IsZero() {
			started[k] = &results[i].StartedAt
		}
		d := &results[i].Deferral
		if d.Event != "" {
			events[k], onEvents = &d.Event, true
		}
		if d.State != nil {
			v := string(d.State)
			saved[k] = &v
		}
		switch {
		case d.Poke && !d.NextCheckAt.IsZero():
			pokeAt[k] = &d.NextCheckAt // in sensor_pokes, not in the instance
		case !d.NextCheckAt.IsZero():
			checks[k], timed = &d.NextCheckAt, true
		}
		if !d.TriggerTimeout.IsZero() {
			deadlines[k] = &d.TriggerTimeout
		}
	}
	var onCalls []int64
	for k, id := range ids {
		if calls[k] {
			onCalls = append(onCalls, id)
		}
	}
	counts, err := waitingCounts(ctx, tx, onCalls)
	if err != nil {
		return nil, err
	}
	waits := make([]int32, n)
	for k, id := range ids {
		waits[k] = int32(counts[id])
	}
	rows, err := tx.Query(ctx, deferSQL, ids, tries, calls, started, now, waits, events, checks, deadlines, saved)
	if err != nil {
		return nil, err
	}
	got := map[int64]state.TaskState{}
	for rows.Next() {
		var id int64
		var st state.TaskState
		if err := rows.Scan(&id, &st); err != nil {
			rows.Close()
			return nil, err
		}
		got[id] = st
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if onEvents {
		var waiting []int64
		for k, id := range ids {
			if events[k] != nil && got[id] == state.Deferred {
				waiting = append(waiting, id)
			}
		}
		var keys []string
		for k, id := range ids {
			if events[k] != nil && got[id] == state.Deferred {
				keys = append(keys, *events[k])
			}
		}
		if err := lockEventKeys(ctx, tx, keys); err != nil {
			return nil, err
		}
		if err := eventsBeforeWait(ctx, tx, waiting, now, got); err != nil {
			return nil, err
		}
	}
	if err := schedulePokes(ctx, tx, ids, tries, pokeAt, got); err != nil {
		return nil, err
	}
	if timed {
		// The scheduler arms its timer on the earliest next check.
		if err := notify(ctx, tx, store.TopicRunsChanged); err != nil {
			return nil, err
		}
	}
	out := make([]store.FinishOutcome, len(results))
	var (
		logAs   []store.Try
		logData [][]byte
		queued  bool
	)
	for _, i := range defIdx {
		r := results[i]
		st, ok := got[r.ID]
		if !ok {
			// Not running that try: cleared while running (restarting),
			// or taken away; the finish decides which.
			f := r
			f.State, f.Permanent, f.Error, f.Deferral = state.Failed, true, "deferred after the try was taken away", store.Deferral{}
			rest, restAt = append(rest, f), append(restAt, i)
			continue
		}
		out[i] = store.FinishOutcome{Try: r.Try, Applied: true, State: st}
		queued = queued || st == state.Queued
		if len(r.Log) > 0 {
			logAs, logData = append(logAs, r.Try), append(logData, r.Log)
		}
	}
	if err := appendLogsIn(ctx, tx, logAs, logData, s.logCap); err != nil {
		return nil, err
	}
	if queued {
		if err := notify(ctx, tx, store.TopicTasksReady); err != nil {
			return nil, err
		}
	}
	more, err := s.finishInClaim(ctx, tx, rest, claim)
	if err != nil {
		return nil, err
	}
	for k, i := range restAt {
		out[i] = more[k]
	}
	return out, nil
}

// lockBatch locks the running rows of every instance of a finish batch,
// and the unfinished callees of its callers deferred on calls (which
// waitingCounts counts), in one pass in id order, as HeartbeatTasks does:
// locking them pass by pass (the batch, then the callees) could lock a
// higher id before a lower one and deadlock with a heartbeat of the same
// tries or with another worker's finish (deduplicated calls: each batch
// holding a callee of the other's caller; PostgreSQL saw it only after its
// deadlock_timeout, ~1 s per fib run, docs/benchmarks.md "Session 8: fib").
func lockBatch(ctx context.Context, tx dbtx, results []store.Result) error {
	ids := make([]int64, 0, len(results))
	var callers []int64
	for _, r := range results {
		ids = append(ids, r.ID)
		if r.State == state.Deferred && r.Deferral.Calls {
			callers = append(callers, r.ID)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	sql, args := lockBatchSQL, []any{ids}
	if len(callers) > 0 {
		sql, args = lockBatchCalleesSQL, []any{ids, callers}
	}
	if p, ok := tx.(*pipeTx); ok {
		// Sent with the next statement: no round trip of its own.
		p.queue(sql, args...)
		return nil
	}
	_, err := tx.Exec(ctx, sql, args...)
	return err
}

// lockBatchSQL locks the running rows among instances $1 in id order.
const lockBatchSQL = `SELECT id FROM task_instances WHERE id = ANY($1) AND state IN ('running', 'restarting')
		ORDER BY id FOR NO KEY UPDATE`

// lockBatchCalleesSQL locks, in one pass in id order, the running rows
// among instances $1 (to be written) and the unfinished callees of callers
// $2 (to be counted: shared, as waitingCounts locks them).
const lockBatchCalleesSQL = `
		WITH k AS MATERIALIZED (
			SELECT id, bool_or(own) AS own FROM (
				SELECT unnest($1::bigint[]) AS id, true AS own
				UNION ALL SELECT callee_id, false FROM task_calls WHERE caller_id = ANY($2::bigint[])
			) x GROUP BY id ORDER BY id)
		SELECT k.id FROM k
		LEFT JOIN LATERAL (SELECT y.id FROM task_instances y
			WHERE k.own AND y.id = k.id AND y.state IN ('running', 'restarting') FOR NO KEY UPDATE) b ON true
		LEFT JOIN LATERAL (SELECT y.id FROM task_instances y
			WHERE NOT k.own AND y.id = k.id AND y.state IN ` + unfinishedList + ` FOR SHARE) c ON true`

// schedulePokesSQL records the next pokes of Sensors just deferred ($1
// instances, $2 tries, $3 due times), each under a new lease.
const schedulePokesSQL = `
		INSERT INTO sensor_pokes AS p (ti_id, try_number, due_at)
		SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[])
		ON CONFLICT (ti_id) DO UPDATE SET try_number = excluded.try_number, due_at = excluded.due_at, lease = p.lease + 1`

// schedulePokes records in sensor_pokes the pokes among the deferrals of
// ids (pokeAt not nil) that were recorded (got deferred). No wake-up:
// the deferring worker's poke loop looks at once, the others within
// their poll interval.
func schedulePokes(ctx context.Context, tx dbtx, ids []int64, tries []int32, pokeAt []*time.Time, got map[int64]state.TaskState) error {
	var pids []int64
	var ptries []int32
	var due []time.Time
	for k, id := range ids {
		if pokeAt[k] != nil && got[id] == state.Deferred {
			pids, ptries, due = append(pids, id), append(ptries, tries[k]), append(due, *pokeAt[k])
		}
	}
	if len(pids) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, schedulePokesSQL, pids, ptries, due)
	return err
}
