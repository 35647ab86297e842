package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// tiCols are the columns of store.TaskInstance, from task_instances t
// joined with dag_runs r. A Sensor's next poke is in sensor_pokes.
const tiCols = `t.id, t.run_id, t.dag_id, r.run_id, t.task_id, t.state, t.try_number, t.max_tries, t.priority,
	t.trigger_rule, t.queued_at, t.started_at, t.ended_at, t.next_retry_at, t.worker_id, t.hostname, t.pid,
	t.heartbeat_at, t.output, t.error, coalesce(t.next_check_at, CASE WHEN t.state = 'deferred' THEN (SELECT p.due_at
		FROM sensor_pokes p WHERE p.ti_id = t.id AND p.try_number = t.try_number) END), coalesce(t.wait_event, ''), t.trigger_timeout,
	t.pool, t.pool_slots, coalesce(t.concurrency_key, ''), t.map_index, t.arguments, coalesce(t.parent_ti_id, 0), t.waiting_on`

func tiDest(ti *store.TaskInstance, output *[]byte) []any {
	return []any{&ti.ID, &ti.RunID, &ti.DAGID, &ti.DAGRunID, &ti.TaskID, &ti.State, &ti.TryNumber, &ti.MaxTries,
		&ti.Priority, &ti.TriggerRule, &ti.QueuedAt, &ti.StartedAt, &ti.EndedAt, &ti.NextRetryAt, &ti.WorkerID,
		&ti.Hostname, &ti.PID, &ti.HeartbeatAt, output, &ti.Error, &ti.NextCheckAt, &ti.WaitEvent, &ti.TriggerTimeout,
		&ti.Pool, &ti.PoolSlots, &ti.ConcurrencyKey, &ti.MapIndex, &ti.Arguments, &ti.CallerID, &ti.WaitingOn}
}

func fixTI(ti *store.TaskInstance, output []byte) {
	ti.ConcurrencyKey = strings.TrimPrefix(ti.ConcurrencyKey, store.KeyPrefixKey)
	if output != nil {
		ti.Output = json.RawMessage(output)
	}
	if len(ti.Arguments) == 0 {
		ti.Arguments = nil
	}
	// The times were just scanned, each into a new time of its own:
	// converted where they are.
	for _, t := range [...]*time.Time{ti.QueuedAt, ti.StartedAt, ti.EndedAt, ti.NextRetryAt, ti.HeartbeatAt, ti.NextCheckAt, ti.TriggerTimeout} {
		if t != nil {
			*t = t.UTC()
		}
	}
}

func scanTI(row pgx.Row) (store.TaskInstance, error) {
	var ti store.TaskInstance
	var out []byte
	if err := row.Scan(tiDest(&ti, &out)...); err != nil {
		return ti, err
	}
	fixTI(&ti, out)
	return ti, nil
}

func collectTIs(rows pgx.Rows) ([]store.TaskInstance, error) {
	defer rows.Close()
	out := []store.TaskInstance{}
	for rows.Next() {
		ti, err := scanTI(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ti)
	}
	return out, rows.Err()
}

// claimSet is what a claim writes on each claimed instance: $2 now, $3
// worker id, $4 host, $5 pid.
const claimSet = `UPDATE task_instances t SET state = 'running', try_number = t.try_number + 1,
	started_at = $2, ended_at = NULL, heartbeat_at = $2, next_retry_at = NULL,
	worker_id = $3, hostname = $4, pid = $5, output = NULL, error = ''`

// claimSelect wraps a claiming UPDATE … RETURNING t.* (as CTE u, after
// the CTEs ctes) and reads the claimed instances with their runs. A run's
// conf, which may be large, is sent once, with the first instance of that
// run.
//
// The statement also adds the limited instances it claims to their
// counters, one write per counter (the counter trigger leaves claims
// alone); their rows are locked already (lp and lk, or claimCapped). And
// it moves them from task_queue to task_running itself (migration 00019:
// the set trigger may then be off, setsOff).
func claimSelect(ctes, update string) string {
	return claimSelectFreeing(ctes, update, false)
}

// claimSelectFreeing is claimSelect; with freeing, the CTEs include fp
// and fk (freedCTEs), and the counters also give back the slots freed,
// in the same write, setting trellis.wake (as the counter trigger would)
// where a slot freed was one an instance could not start for want of:
// a pool that had no room for another like it, a key at its limit —
// and only when the counter still has room after the claim's own takes
// (a finish that takes its freed slot back leaves nothing to wake for).
func claimSelectFreeing(ctes, update string, freeing bool) string {
	poolFreed, keyFreed, poolWake, keyWake := "", "", "true", "true"
	if freeing {
		poolFreed = ` UNION ALL SELECT pool, -n FROM fp`
		keyFreed = ` UNION ALL SELECT key, -n, 0 FROM fk`
		poolWake = `CASE WHEN EXISTS (SELECT 1 FROM fp WHERE fp.pool = p.name AND p.slots >= 0 AND p.running + fp.big > p.slots
					AND p.running + x.n < p.slots)
				THEN set_config('trellis.wake', 'on', true) IS NOT NULL ELSE true END`
		keyWake = `CASE WHEN EXISTS (SELECT 1 FROM fk WHERE fk.key = k.key AND k.running >= k.lim AND k.running + x.n < k.lim)
				THEN set_config('trellis.wake', 'on', true) IS NOT NULL ELSE true END`
	}
	counters := `,
		pu AS (UPDATE pools p SET running = p.running + x.n
			FROM (SELECT pool, sum(n) AS n FROM (
				SELECT pool, sum(pool_slots) AS n FROM u WHERE limited GROUP BY pool` + poolFreed + `) y GROUP BY pool) x
			WHERE p.name = x.pool AND ` + poolWake + `),
		ku AS (UPDATE concurrency_keys k SET running = k.running + x.n, queued = k.queued - x.q
			FROM (SELECT key, sum(n) AS n, sum(q) AS q FROM (
				SELECT task_key AS key, 1 AS n, CASE WHEN concurrency_key IS NULL THEN 1 ELSE 0 END AS q FROM u
				WHERE limited AND task_key IS NOT NULL
				UNION ALL
				SELECT concurrency_key, 1, 1 FROM u WHERE limited AND concurrency_key IS NOT NULL` + keyFreed + `) y GROUP BY key) x
			WHERE k.key = x.key AND ` + keyWake + `)`
	return claimSelectCounting(ctes, update, counters)
}

// claimSelectCounting is claimSelect with counters, the CTEs (each
// after a comma) that keep the limits' counters; lightClaimSQL, which
// claims no limited instance, has none.
func claimSelectCounting(ctes, update, counters string) string {
	return `WITH ` + ctes + ` u AS (` + update + ` RETURNING t.*),
		qd AS (DELETE FROM task_queue WHERE ti_id = ANY (ARRAY(SELECT id FROM u))),
		ri AS (INSERT INTO task_running (ti_id, dag_id) SELECT id, dag_id FROM u ON CONFLICT (ti_id) DO NOTHING)` + counters + `
		SELECT ` + tiCols + `, r.logical_date, r.interval_start, r.interval_end,
			CASE WHEN row_number() OVER (PARTITION BY t.run_id ORDER BY t.id) = 1 THEN r.conf END, t.timeout_ns,
			t.resumed, t.deferred_state, t.event_payload
		FROM u AS t JOIN dag_runs r ON r.id = t.run_id`
}

// setsOff and setsOn bracket statements that keep task_queue and
// task_running themselves (claimSelect, outcomeSQL, incrementTail) where
// they are sent together in one round trip of one transaction: between
// them the set trigger does not fire (migration 00019), and every other
// writer keeps it. Their rows are not read.
//
// hotOff also turns the counter trigger off (migration 00020), for
// outcomeHotSQL alone: limitsOn follows it.
var (
	setsOff  = finalQuery{sql: `SELECT ` + setsOffCall, read: ignoreRows}
	setsOn   = finalQuery{sql: `SELECT set_config('trellis.sets', '', true)`, read: ignoreRows}
	hotOff   = finalQuery{sql: `SELECT set_config('trellis.sets', 'off', true), set_config('trellis.limits', 'off', true)`, read: ignoreRows}
	limitsOn = finalQuery{sql: `SELECT set_config('trellis.limits', '', true)`, read: ignoreRows}
)

const setsOffCall = `set_config('trellis.sets', 'off', true)`

func ignoreRows(pgx.Rows) error { return nil }

// ClaimTasks moves up to max queued instances to running for worker w,
// highest priority first then oldest. The candidates are picked through
// the claim index with FOR NO KEY UPDATE SKIP LOCKED, so concurrent
// claimers never wait for each other nor get the same instance; when no
// DAG has a MaxActiveTasks cap this is one statement.
//
// With capped DAGs the claim is a transaction: the candidates are
// locked, then the capped DAGs among them (in id order, serialising the
// claimers of one capped DAG), their running instances counted, and only
// as many of their candidates claimed as the cap leaves room for. DAGs at
// their cap are left out of the candidates.
func (s *Store) ClaimTasks(ctx context.Context, w store.Worker, max int, now time.Time) ([]store.Claimed, error) {
	if max <= 0 {
		return []store.Claimed{}, nil
	}
	op := fmt.Sprintf("claim tasks for worker %q", w.ID)
	// One round trip: the caps, the claim for when no DAG is capped
	// (guarded in SQL, so it claims nothing when one is), and whether a
	// limited instance is queued. While none was at the last claim, the
	// claim is claimAboveLimitedSQL, which takes only what ranks above every
	// queued limited instance; when it comes back short and one is queued
	// now, fastClaimSQL claims the rest in a second round trip.
	var cl claimRead
	light := !s.limitedQueued.Load()
	err := s.claimFast(ctx, op, &cl, light, w, max, now)
	if err == nil && light && cl.limited && cl.capped == 0 && len(cl.out) < max {
		more := claimRead{}
		if err = s.claimFast(ctx, op, &more, false, w, max-len(cl.out), now); err == nil {
			cl.out = append(cl.out, more.out...)
		}
	}
	if err != nil {
		return nil, err
	}
	return s.completeClaim(ctx, op, &cl, w, max, now)
}

// claimFast sends the caps, the claim (claimAboveLimitedSQL when light,
// fastClaimSQL otherwise) and limitedQueuedSQL in one round trip, reads
// them into cl and keeps whether a limited instance is queued for the
// next claim.
func (s *Store) claimFast(ctx context.Context, op string, cl *claimRead, light bool, w store.Worker, max int, now time.Time) error {
	claim := fastClaimSQL
	if light {
		claim = claimAboveLimitedSQL
	}
	// Retried like a transaction: claims lock counters, and a deadlock
	// with a finish that frees several of them is possible. The batch is
	// one implicit transaction: the set trigger stays off (setsOff, set
	// with the planner settings) to its end.
	err := s.retry(ctx, op, func() error {
		*cl = claimRead{}
		b := &pgx.Batch{}
		b.Queue(hotPlanSetsOff(max))
		b.Queue(capsSQL)
		b.Queue(claim, max, now, w.ID, w.Hostname, w.PID)
		b.Queue(limitedQueuedSQL)
		br := s.pool.SendBatch(ctx, b)
		defer br.Close()
		if err := readBatch(br, 1, []finalQuery{{read: cl.readCaps}, {read: cl.readClaimed}, {read: cl.readLimited}}); err != nil {
			return err
		}
		return br.Close()
	})
	if err == nil {
		s.limitedQueued.Store(cl.limited)
	}
	return err
}

// limitedQueuedSQL reads whether a limited instance is queued.
const limitedQueuedSQL = `SELECT EXISTS (SELECT 1 FROM task_queue WHERE limited)`

// claimAboveLimitedSQL is the claim of ClaimTasks while no limited instance is
// queued: fastClaimSQL without its limited part and without the counter
// updates, whose plan nodes cost PostgreSQL executor start-up on every
// claim even when never run (docs/benchmarks.md, "Session 8: sets"). It
// takes the best unlimited instances ($1 at most) that rank above every
// queued limited one (priority above theirs, if any), when no DAG is
// capped: always a prefix of what fastClaimSQL would take, so it never
// claims out of order; ClaimTasks claims the rest with fastClaimSQL when
// a limited instance is queued. An instance made limited since its queue
// row was read is left queued (c; its queue row is limited by then), so
// no counter needs writing. $2–$5 as in fastClaimSQL.
var claimAboveLimitedSQL = unlimitedClaimSQL(`
				AND (priority > (SELECT max(priority) FROM task_queue WHERE limited)) IS NOT FALSE`)

// unlimitedClaimSQL is the claim of the unlimited queued instances alone,
// best first ($1 at most) and also meeting cond (SQL after an AND, or ""),
// none while a DAG has a MaxActiveTasks cap: claimAboveLimitedSQL's and
// lightClaimSQL's. It writes no counter: an instance made limited since
// its queue row was read is left queued (c). $2–$5 as in fastClaimSQL.
func unlimitedClaimSQL(cond string) string {
	return claimSelectCounting(`q AS MATERIALIZED (
		SELECT ti_id FROM task_queue
			WHERE NOT limited AND NOT EXISTS (SELECT 1 FROM dags WHERE max_active_tasks > 0)`+cond+`
		ORDER BY priority DESC, queued_at, ti_id
		LIMIT $1
		FOR UPDATE SKIP LOCKED),
	c AS MATERIALIZED (
		SELECT id FROM task_instances WHERE id = ANY (ARRAY(SELECT ti_id FROM q)) AND state = 'queued' AND NOT limited
		FOR NO KEY UPDATE SKIP LOCKED),`, claimSet+` FROM c WHERE t.id = c.id`, "")
}

// capsSQL reads the DAGs with a MaxActiveTasks cap and their running
// instances.
const capsSQL = `SELECT d.dag_id, d.max_active_tasks, (SELECT count(*) FROM task_running t WHERE t.dag_id = d.dag_id)
	FROM dags d WHERE d.max_active_tasks > 0`

// fastClaimSQL claims ($1 at most) when no DAG is capped, and nothing
// otherwise, in one statement. The candidates come from the queue
// (task_queue, which a trigger keeps to the queued instances; migrations
// 00008 and 00010): their queue rows are locked, then their instances,
// both skipping rows locked elsewhere. The CTEs are materialized: locked
// once, never re-scanned (a re-scan would lock other rows).
//
// Unlimited instances (q) come from the queue's claim index as before.
// Limited ones (lc) are looked for, each through its own index, per pool
// with room (instances without key or cap), per concurrency key with room
// and queued instances (at most its room), and per task cap likewise
// (instances without key): a full pool, cap or key is never scanned, so
// it holds back nothing behind it (no head-of-line blocking). Their
// counters are then locked in a fixed order (pools by name, then keys by
// name: lp, lk), which reads their latest values, and a candidate is kept
// only when, counting every candidate before it on the same counter, each
// of its counters stays within its limit: never above a limit, and the
// best candidate that fits is always taken. claimSelect adds the claimed
// instances to the counters.
var fastClaimSQL = fastClaim(false)

// fastClaimFreeingSQL is fastClaimSQL in the transaction of a finish
// whose outcome statement left the counters alone (outcomeHotSQL): $6
// are the limited instances whose tries it ended. Their slots count as
// free for the claim, and the claim gives them back to the counters in
// the write that adds what it takes (one write per counter; with $1 = 0
// it only gives them back). So a pool's counter is locked from this
// statement, sent with COMMIT, to the commit, not from the outcome.
var fastClaimFreeingSQL = fastClaim(true)

// fastClaim returns fastClaimSQL, or fastClaimFreeingSQL with freeing.
func fastClaim(freeing bool) string {
	ctes, lc := "", limitedCandidates(`AND NOT EXISTS (SELECT 1 FROM dags WHERE max_active_tasks > 0)
			AND EXISTS (SELECT 1 FROM task_queue WHERE limited)`)
	poolsOf, keysOf := `SELECT pool FROM lc`, `SELECT task_key FROM lc UNION SELECT concurrency_key FROM lc`
	poolRunning, taskRunning, keyRunning := "lp.running", "tk.running", "ck.running"
	if freeing {
		ctes = freedCTEs
		lc = freedRunning.Replace(lc)
		poolsOf += ` UNION SELECT pool FROM fp`
		keysOf += ` UNION SELECT key FROM fk`
		poolRunning = "(lp.running - coalesce((SELECT n FROM fp WHERE fp.pool = lp.name), 0))"
		taskRunning = "(tk.running - coalesce((SELECT n FROM fk WHERE fk.key = tk.key), 0))"
		keyRunning = "(ck.running - coalesce((SELECT n FROM fk WHERE fk.key = ck.key), 0))"
	}
	return claimSelectFreeing(ctes+`q AS MATERIALIZED (
		SELECT ti_id, priority, queued_at FROM task_queue
			WHERE NOT limited AND NOT EXISTS (SELECT 1 FROM dags WHERE max_active_tasks > 0)
		ORDER BY priority DESC, queued_at, ti_id
		LIMIT $1
		FOR UPDATE SKIP LOCKED),
	lc AS MATERIALIZED (`+lc+`),
	lp AS MATERIALIZED (
		SELECT name, slots, running FROM pools WHERE name IN (`+poolsOf+`)
		ORDER BY name FOR NO KEY UPDATE),
	lk AS MATERIALIZED (
		SELECT key, lim, running FROM concurrency_keys
		WHERE key IN (`+keysOf+`)
		ORDER BY key FOR NO KEY UPDATE),
	ok AS (
		SELECT w.id, w.priority, w.queued_at FROM (
			SELECT lc.*,
				sum(lc.pool_slots) OVER (PARTITION BY lc.pool ORDER BY lc.priority DESC, lc.queued_at, lc.id) AS pool_used,
				count(*) OVER (PARTITION BY lc.task_key ORDER BY lc.priority DESC, lc.queued_at, lc.id) AS task_used,
				count(*) OVER (PARTITION BY lc.concurrency_key ORDER BY lc.priority DESC, lc.queued_at, lc.id) AS key_used
			FROM lc) w
		JOIN lp ON lp.name = w.pool
		LEFT JOIN lk tk ON tk.key = w.task_key
		LEFT JOIN lk ck ON ck.key = w.concurrency_key
		WHERE (lp.slots < 0 OR `+poolRunning+` + w.pool_used <= lp.slots)
			AND (w.task_key IS NULL OR `+taskRunning+` + w.task_used <= tk.lim)
			AND (w.concurrency_key IS NULL OR `+keyRunning+` + w.key_used <= ck.lim)),
	pick AS (
		SELECT id FROM (SELECT ti_id AS id, priority, queued_at FROM q UNION ALL SELECT id, priority, queued_at FROM ok) a
		ORDER BY priority DESC, queued_at, id
		LIMIT $1),
	c AS MATERIALIZED (
		SELECT id FROM task_instances WHERE id = ANY (ARRAY(SELECT id FROM pick)) AND state = 'queued'
		FOR NO KEY UPDATE SKIP LOCKED),`, claimSet+` FROM c WHERE t.id = c.id`, freeing)
}

// freedCTEs read the limited instances $6 whose tries the transaction
// ended (fr), and what they free per pool (fp: slots, and the largest
// instance's) and per key (fk).
const freedCTEs = `fr AS MATERIALIZED (
		SELECT pool, pool_slots, task_key, concurrency_key FROM task_instances WHERE id = ANY ($6::bigint[]) AND limited),
	fp AS MATERIALIZED (SELECT pool, sum(pool_slots)::int AS n, max(pool_slots) AS big FROM fr GROUP BY pool),
	fk AS MATERIALIZED (
		SELECT key, count(*)::int AS n FROM (
			SELECT task_key AS key FROM fr WHERE task_key IS NOT NULL
			UNION ALL
			SELECT concurrency_key FROM fr WHERE concurrency_key IS NOT NULL) y
		GROUP BY key),
	`

// freedRunning makes limitedCandidates read each counter's running count
// less what fp and fk free.
var freedRunning = strings.NewReplacer(
	"tk.running", "(tk.running - coalesce((SELECT n FROM fk WHERE fk.key = tk.key), 0))",
	"p.running", "(p.running - coalesce((SELECT n FROM fp WHERE fp.pool = p.name), 0))",
	"k.running", "(k.running - coalesce((SELECT n FROM fk WHERE fk.key = k.key), 0))")

// earlyClaimSQL is the claim a finish sends before its release's
// increment (finishInClaim), when it may not lock a counter yet: the
// best unlimited instances ($1 at most) that rank before every queued
// limited one (priority above theirs); fastClaimFreeingSQL, with COMMIT,
// claims the rest in claim order. $2–$5 as in fastClaimSQL.
var earlyClaimSQL = claimSelect(`q AS MATERIALIZED (
		SELECT ti_id FROM task_queue
			WHERE NOT limited AND NOT EXISTS (SELECT 1 FROM dags WHERE max_active_tasks > 0)
				AND priority > coalesce((SELECT max(priority) FROM task_queue WHERE limited), -2147483648)
		ORDER BY priority DESC, queued_at, ti_id
		LIMIT $1
		FOR UPDATE SKIP LOCKED),
	c AS MATERIALIZED (
		SELECT id FROM task_instances WHERE id = ANY (ARRAY(SELECT ti_id FROM q)) AND state = 'queued'
		FOR NO KEY UPDATE SKIP LOCKED),`, claimSet+` FROM c WHERE t.id = c.id`)

// limitedCols are what the claim reads of a limited candidate t (a queue
// row).
const limitedCols = `t.ti_id AS id, t.priority, t.queued_at, t.pool, t.pool_slots, t.task_key, t.concurrency_key, t.dag_id`

// limitedCandidates selects and locks ($1 per pool, key or cap at most)
// the queue rows of the best limited instances whose counters have room,
// through the queue's indexes: per pool with room (instances without key
// or cap), per concurrency key with room and queued instances (at most
// its room), and per task cap likewise (instances without key). A full
// pool, cap or key is never scanned, so it holds back nothing behind it.
// guard is added to each part's condition.
func limitedCandidates(guard string) string {
	return `
		SELECT x.* FROM pools p CROSS JOIN LATERAL (
			SELECT ` + limitedCols + ` FROM task_queue t
			WHERE t.limited AND t.pool = p.name AND t.task_key IS NULL AND t.concurrency_key IS NULL
				AND (p.slots < 0 OR p.running + t.pool_slots <= p.slots)
			ORDER BY t.priority DESC, t.queued_at, t.ti_id
			LIMIT $1
			FOR UPDATE OF t SKIP LOCKED) x
		WHERE (p.slots < 0 OR p.running < p.slots) ` + guard + `
		UNION ALL
		SELECT x.* FROM concurrency_keys k CROSS JOIN LATERAL (
			SELECT ` + limitedCols + ` FROM task_queue t
			WHERE t.limited AND t.concurrency_key = k.key AND ` + poolHasRoom + `
				AND (t.task_key IS NULL OR EXISTS (SELECT 1 FROM concurrency_keys tk
					WHERE tk.key = t.task_key AND tk.running < tk.lim))
			ORDER BY t.priority DESC, t.queued_at, t.ti_id
			LIMIT least($1, k.lim - k.running)
			FOR UPDATE OF t SKIP LOCKED) x
		WHERE k.queued > 0 AND k.running < k.lim AND k.key LIKE 'key:%' ` + guard + `
		UNION ALL
		SELECT x.* FROM concurrency_keys k CROSS JOIN LATERAL (
			SELECT ` + limitedCols + ` FROM task_queue t
			WHERE t.limited AND t.task_key = k.key AND t.concurrency_key IS NULL AND ` + poolHasRoom + `
			ORDER BY t.priority DESC, t.queued_at, t.ti_id
			LIMIT least($1, k.lim - k.running)
			FOR UPDATE OF t SKIP LOCKED) x
		WHERE k.queued > 0 AND k.running < k.lim AND k.key LIKE 'task:%' ` + guard
}

// poolHasRoom: the pool of instance t exists and has room for it.
const poolHasRoom = `EXISTS (SELECT 1 FROM pools p WHERE p.name = t.pool AND (p.slots < 0 OR p.running + t.pool_slots <= p.slots))`

// claimRead collects the answers to capsSQL, fastClaimSQL and
// limitedQueuedSQL.
type claimRead struct {
	capped    int      // DAGs with a cap
	saturated []string // capped DAGs at their cap
	out       []store.Claimed
	limited   bool // a limited instance is queued
}

func (c *claimRead) readLimited(rows pgx.Rows) error {
	for rows.Next() {
		if err := rows.Scan(&c.limited); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (c *claimRead) readCaps(rows pgx.Rows) error {
	for rows.Next() {
		var dagID string
		var limit, running int
		if err := rows.Scan(&dagID, &limit, &running); err != nil {
			return err
		}
		c.capped++
		if running >= limit {
			c.saturated = append(c.saturated, dagID)
		}
	}
	return rows.Err()
}

// readClaimed adds the claimed instances of rows to out.
func (c *claimRead) readClaimed(rows pgx.Rows) error {
	n := len(c.out)
	var err error
	if c.out, err = appendClaimed(c.out, rows); err != nil {
		c.out = c.out[:n]
	}
	return err
}

// completeClaim finishes a claim whose fast part was read into cl: with
// capped DAGs (the guarded fast claim claimed nothing) it claims within
// the caps in a transaction of its own; then it sorts the claimed
// instances in claim order.
func (s *Store) completeClaim(ctx context.Context, op string, cl *claimRead, w store.Worker, max int, now time.Time) ([]store.Claimed, error) {
	return s.completeClaimLooked(ctx, op, cl, w, max, now, false)
}

// completeClaimLooked is completeClaim after a claim that looked whether
// limits are in play (a fused finish's, lookSQL) when looked. It keeps
// the store's hints for its next fused finish: a claim that came back
// short drained the queue (queueDrained), and one that may have taken
// limited instances without a look after it puts limits in play
// (lightClaim false) until the next look.
func (s *Store) completeClaimLooked(ctx context.Context, op string, cl *claimRead, w store.Worker, max int, now time.Time,
	looked bool) ([]store.Claimed, error) {
	out := cl.out
	if len(out) > 0 && !looked {
		s.lightClaim.Store(false)
	}
	// Caps seen but the guarded claim ran after they were all removed:
	// its claim stands.
	if cl.capped > 0 && len(out) == 0 {
		err := s.inTx(ctx, op, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, hotPlan(max)); err != nil {
				return err
			}
			var err error
			out, err = claimCapped(ctx, tx, w, max, now, cl.saturated)
			return err
		})
		if err != nil {
			return nil, err
		}
		if len(out) > 0 {
			s.lightClaim.Store(false)
		}
	}
	s.queueDrained.Store(len(out) < max)
	slices.SortFunc(out, func(a, b store.Claimed) int {
		if a.Priority != b.Priority {
			return cmp.Compare(b.Priority, a.Priority)
		}
		if a.QueuedAt != nil && b.QueuedAt != nil {
			if c := a.QueuedAt.Compare(*b.QueuedAt); c != 0 {
				return c
			}
		}
		return cmp.Compare(a.ID, b.ID)
	})
	s.vacuumQueue(ctx, len(out))
	return out, nil
}

// DefaultQueueVacuumEvery is Options.QueueVacuumEvery's default.
const DefaultQueueVacuumEvery = 10_000

// vacuumQueue counts n claimed instances and, every vacuumEvery of them,
// vacuums task_queue and task_running. Every claim deletes its queue rows;
// their index entries stay, in front of the live ones in claim order,
// until VACUUM removes them, so without it (autovacuum off, or lagging
// under this churn) each claim walked all the queue entries of the runs
// before: 600 index pages per claim after a 100,000-task run. The tables
// are narrow and hold only what is queued or running, so this takes
// milliseconds; SKIP_LOCKED leaves the tables to a vacuum already running
// (another worker's, or autovacuum's). A failure is logged, not returned:
// the claim stands.
func (s *Store) vacuumQueue(ctx context.Context, n int) {
	if s.vacuumEvery <= 0 || n == 0 || s.claimed.Add(int64(n)) < s.vacuumEvery {
		return
	}
	s.claimed.Store(0)
	if _, err := s.pool.Exec(ctx, "VACUUM (SKIP_LOCKED) task_queue, task_running"); err != nil {
		s.log.Warn("vacuum of the queue tables failed; claims slow down until it succeeds", "err", errText(err))
	}
}

// claimCapped is the claim when some DAGs have a MaxActiveTasks cap.
// Limited candidates are those whose counters had room when the query
// began (no head-of-line blocking); their counters are locked after the
// capped DAGs, in the same fixed order as the fast claim, and store.Admit
// decides.
func claimCapped(ctx context.Context, tx pgx.Tx, w store.Worker, max int, now time.Time, saturated []string) ([]store.Claimed, error) {
	if saturated == nil {
		saturated = []string{}
	}
	rows, err := tx.Query(ctx, `WITH q AS MATERIALIZED (
			SELECT ti_id, dag_id FROM task_queue WHERE NOT limited AND NOT (dag_id = ANY($2))
			ORDER BY priority DESC, queued_at, ti_id
			LIMIT $1
			FOR UPDATE SKIP LOCKED),
		l AS MATERIALIZED (`+limitedCandidates(`AND true`)+`),
		a AS (
			SELECT ti_id AS id, false AS limited, '' AS task_key, '' AS concurrency_key FROM q
			UNION ALL
			SELECT id, true, coalesce(task_key, ''), coalesce(concurrency_key, '') FROM l WHERE NOT (dag_id = ANY($2)))
		SELECT t.id, t.dag_id, a.limited, t.pool, t.pool_slots, a.task_key, a.concurrency_key, t.priority, t.queued_at
		FROM task_instances t JOIN a ON a.id = t.id
		WHERE t.id = ANY (ARRAY(SELECT id FROM a)) AND t.state = 'queued'
		FOR NO KEY UPDATE OF t SKIP LOCKED`, max, saturated)
	if err != nil {
		return nil, err
	}
	type cand struct {
		id                 int64
		dag                string
		limited            bool
		pool               string
		slots              int
		taskKey, concurKey string
		priority           int
		queuedAt           *time.Time
	}
	cands, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (cand, error) {
		var c cand
		err := row.Scan(&c.id, &c.dag, &c.limited, &c.pool, &c.slots, &c.taskKey, &c.concurKey, &c.priority, &c.queuedAt)
		return c, err
	})
	if err != nil || len(cands) == 0 {
		return []store.Claimed{}, err
	}
	// Claim order: highest priority first, then oldest.
	slices.SortFunc(cands, func(a, b cand) int {
		if a.priority != b.priority {
			return cmp.Compare(b.priority, a.priority)
		}
		if a.queuedAt != nil && b.queuedAt != nil {
			if c := a.queuedAt.Compare(*b.queuedAt); c != 0 {
				return c
			}
		}
		return cmp.Compare(a.id, b.id)
	})
	var dagIDs, pools, keys []string
	for _, c := range cands {
		dagIDs = appendNew(dagIDs, c.dag)
		if c.limited {
			pools = appendNew(pools, c.pool)
			if c.taskKey != "" {
				keys = appendNew(keys, c.taskKey)
			}
			if c.concurKey != "" {
				keys = appendNew(keys, c.concurKey)
			}
		}
	}
	slices.Sort(dagIDs)
	slices.Sort(pools)
	slices.Sort(keys)
	room := map[string]int{}
	// Lock the capped DAGs among the candidates, then count their running
	// instances with a fresh snapshot: claimers that held the lock before
	// have committed.
	rows, err = tx.Query(ctx, `SELECT dag_id, max_active_tasks FROM dags
		WHERE dag_id = ANY($1) AND max_active_tasks > 0 ORDER BY dag_id FOR NO KEY UPDATE`, dagIDs)
	if err != nil {
		return nil, err
	}
	var cappedIDs []string
	for rows.Next() {
		var d string
		var limit int
		if err := rows.Scan(&d, &limit); err != nil {
			rows.Close()
			return nil, err
		}
		room[dagCounter(d)] = limit
		cappedIDs = append(cappedIDs, d)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(cappedIDs) > 0 {
		if err := readRoom(ctx, tx, room, `SELECT 'dag:' || dag_id, -count(*) FROM task_running
			WHERE dag_id = ANY($1) GROUP BY dag_id`, cappedIDs, true); err != nil {
			return nil, err
		}
	}
	if len(pools) > 0 {
		if err := readRoom(ctx, tx, room, `SELECT 'pool:' || name, CASE WHEN slots < 0 THEN -1 ELSE slots - running END
			FROM pools WHERE name = ANY($1) ORDER BY name FOR NO KEY UPDATE`, pools, false); err != nil {
			return nil, err
		}
	}
	if len(keys) > 0 {
		if err := readRoom(ctx, tx, room, `SELECT key, greatest(lim - running, 0)
			FROM concurrency_keys WHERE key = ANY($1) ORDER BY key FOR NO KEY UPDATE`, keys, false); err != nil {
			return nil, err
		}
	}
	admit := make([]store.Candidate, len(cands))
	for i, c := range cands {
		admit[i].ID = c.id
		if _, ok := room[dagCounter(c.dag)]; ok {
			admit[i].Counters = append(admit[i].Counters, store.Use{Counter: dagCounter(c.dag), Amount: 1})
		}
		if c.limited {
			admit[i].Counters = append(admit[i].Counters, store.Use{Counter: "pool:" + c.pool, Amount: c.slots})
			for _, k := range []string{c.taskKey, c.concurKey} {
				if k != "" {
					admit[i].Counters = append(admit[i].Counters, store.Use{Counter: k, Amount: 1})
				}
			}
		}
	}
	keep := store.Admit(admit, room, max)
	if len(keep) == 0 {
		return []store.Claimed{}, nil
	}
	rows, err = tx.Query(ctx, claimSelect("", claimSet+` WHERE t.id = ANY($1)`), keep, now, w.ID, w.Hostname, w.PID)
	if err != nil {
		return nil, err
	}
	return collectClaimed(rows)
}

// dagCounter names a DAG's MaxActiveTasks room for store.Admit.
func dagCounter(dagID string) string { return "dag:" + dagID }

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// readRoom reads (counter, amount) rows into room: set, or added to
// what is there when add.
func readRoom(ctx context.Context, tx pgx.Tx, room map[string]int, sql string, arg []string, add bool) error {
	rows, err := tx.Query(ctx, sql, arg)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var n int
		if err := rows.Scan(&name, &n); err != nil {
			return err
		}
		if add {
			room[name] += n
		} else {
			room[name] = n
		}
	}
	return rows.Err()
}

func collectClaimed(rows pgx.Rows) ([]store.Claimed, error) {
	return appendClaimed([]store.Claimed{}, rows)
}

// appendClaimed appends the claimed instances of rows (claimSelect's
// columns) to out. Every row is scanned into the same variables, which
// are copied into out: the scan allocates only what it reads (strings,
// times, JSON), not the variables and their pointers once per row.
func appendClaimed(out []store.Claimed, rows pgx.Rows) ([]store.Claimed, error) {
	defer rows.Close()
	first := len(out)
	var confs map[int64]json.RawMessage
	var (
		c                            store.Claimed
		output, conf, saved, payload []byte
		timeout                      int64
	)
	dest := append(tiDest(&c.TaskInstance, &output), &c.LogicalDate, &c.IntervalStart, &c.IntervalEnd, &conf, &timeout,
		&c.Resumed, &saved, &payload)
	for rows.Next() {
		// The scan sets every destination (nil for NULL), and the byte
		// slices it sets are new ones: nothing of the row before is kept.
		c = store.Claimed{}
		if err := rows.Scan(dest...); err != nil {
			return out, err
		}
		fixTI(&c.TaskInstance, output)
		c.LogicalDate, c.IntervalStart, c.IntervalEnd = utc(c.LogicalDate), utc(c.IntervalStart), utc(c.IntervalEnd)
		if conf != nil {
			if confs == nil {
				confs = map[int64]json.RawMessage{}
			}
			confs[c.RunID] = json.RawMessage(conf)
		}
		c.Timeout = time.Duration(timeout)
		if saved != nil {
			c.DeferredState = json.RawMessage(saved)
		}
		if payload != nil {
			c.EventPayload = json.RawMessage(payload)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return out, err
	}
	for i := first; i < len(out); i++ {
		out[i].Conf = confs[out[i].RunID]
	}
	return out, nil
}

// validateResults checks what workers report.
func validateResults(results []store.Result) error {
	for i, r := range results {
		switch r.State {
		case state.Success, state.Failed, state.Skipped, state.Deferred:
		default:
			return fmt.Errorf("result %d (instance %d try %d): state %q is not an outcome (want success, failed, skipped or deferred)",
				i, r.ID, r.TryNumber, r.State)
		}
		if r.Output != nil && !json.Valid(r.Output) {
			return fmt.Errorf("result %d (instance %d try %d): output is not valid JSON", i, r.ID, r.TryNumber)
		}
	}
	return nil
}

// FinishTasks records the outcomes of a batch of tries and, in the same
// transaction, releases their downstream instances and settles their runs.
// Each result is a compare-and-set on (running, try number): a late or
// duplicate report changes nothing and comes back with Applied=false.
func (s *Store) FinishTasks(ctx context.Context, results []store.Result) ([]store.FinishOutcome, error) {
	out, _, err := s.FinishAndClaim(ctx, results, store.Worker{}, 0, time.Time{})
	return out, err
}

// FinishAndClaim records results as FinishTasks does and then, in the
// same transaction, claims up to max queued instances for worker w as
// ClaimTasks does, those the results released included (finishInClaim
// says where the claim statements travel). A worker that finishes a task
// and takes the next so costs one transaction and one WAL flush, not two;
// when the claim leaves nothing queued, no other worker is woken.
func (s *Store) FinishAndClaim(ctx context.Context, results []store.Result, w store.Worker, max int, now time.Time) ([]store.FinishOutcome, []store.Claimed, error) {
	if len(results) == 0 {
		claimed, err := s.ClaimTasks(ctx, w, max, now)
		return []store.FinishOutcome{}, claimed, err
	}
	if err := validateResults(results); err != nil {
		return nil, nil, fmt.Errorf("finish tasks: %w", err)
	}
	op := "finish tasks"
	if max > 0 {
		op = fmt.Sprintf("finish tasks and claim for worker %q", w.ID)
	}
	var (
		out []store.FinishOutcome
		cl  claimRead
	)
	batch := len(results)
	if max > batch {
		batch = max
	}
	run := func(fused, light bool) func(tx *pipeTx) error {
		return func(tx *pipeTx) error {
			cl = claimRead{}
			var plan *claimPlan
			if max > 0 {
				plan = &claimPlan{w: w, max: max, now: now, cl: &cl}
				tx.readyIfLeft = true
			}
			if !fused {
				var err error
				out, err = s.finishInClaim(ctx, tx, results, plan)
				return err
			}
			f := newFinishTx(s, tx, results, plan)
			if plan != nil {
				tx.readyClaimed = f.claimedAllQueued
			}
			out = f.out
			return f.fused(light)
		}
	}
	// Fused (one round trip) only when the finish claims: it takes the
	// chain's next task without a round trip inside the transaction.
	// Finishes that claim nothing (most of `wide`'s) cost PostgreSQL more
	// CPU fused (docs/benchmarks.md, "Session 7: hotpath").
	// The light claim when the store's last look found no limits in
	// play; its look aborts it otherwise, and it runs again with the
	// full claim.
	var err error
	looked := false
	if max > 0 && fusable(results) && s.hook.Load() == nil && s.tryFused() {
		light := s.lightClaim.Load()
		err = s.finishFused(ctx, op, hotPlan(batch), run(true, light))
		if light && errors.Is(err, errNeedsLimits) {
			err = s.finishFused(ctx, op, hotPlan(batch), run(true, false))
		}
		s.fusedDone(errors.Is(err, errNeedsGo))
		looked = err == nil
		if errors.Is(err, errNeedsGo) {
			err = s.inPipe(ctx, op, hotPlan(batch), run(false, false))
		}
	} else {
		err = s.inPipe(ctx, op, hotPlan(batch), run(false, false))
	}
	if err != nil {
		return nil, nil, err
	}
	if max <= 0 {
		return out, []store.Claimed{}, nil
	}
	claimed, err := s.completeClaimLooked(ctx, op, &cl, w, max, now, looked)
	if err != nil {
		// The results are recorded: an error now would make the caller
		// report them again. The claim within caps failed; what it left
		// queued woke the workers (readyIfLeft), this one included.
		s.log.Warn("claim within MaxActiveTasks caps after a finish failed; the queued tasks wait for the next claim",
			"worker", w.ID, "err", errText(err))
		return out, []store.Claimed{}, nil
	}
	return out, claimed, nil
}

// policy is the retry policy of an instance whose try failed.
type policy struct {
	try        int
	maxTries   int
	retryDelay time.Duration
	maxBackoff time.Duration
}

// claimPlan is the claim FinishAndClaim makes in its finishing
// transaction, read into cl.
type claimPlan struct {
	w   store.Worker
	max int
	now time.Time
	cl  *claimRead
}

// args returns the parameters of fastClaimSQL for up to n instances.
func (c *claimPlan) args(n int) []any { return []any{n, c.now, c.w.ID, c.w.Hostname, c.w.PID} }

// finishIn is FinishTasks inside a transaction (also used for zombies).
func (s *Store) finishIn(ctx context.Context, tx dbtx, results []store.Result) ([]store.FinishOutcome, error) {
	return s.finishInClaim(ctx, tx, results, nil)
}

// finishInClaim is finishIn that also claims (claim, when not nil; tx is
// then a pipeTx).
//
// Where the claim goes matters when many finishes release into one hot
// row (a fan-in's join): the transactions serialise on it from their
// increment to their commit. So, on the path where the release travels
// with the outcomes, the claim of what is queued already goes in that
// round trip too, before the increment, and only the slots it left free
// are claimed again with COMMIT, among what the release queued — as a
// chain's next task. Otherwise both claim statements go with COMMIT.
//
// The outcomes are written by one compare-and-set UPDATE on (state
// running or restarting, try number); the retry policy is read (and the
// rows locked) first only for failed tries, so a batch of successes costs
// one statement before the release.
func (s *Store) finishInClaim(ctx context.Context, tx dbtx, results []store.Result, claim *claimPlan) ([]store.FinishOutcome, error) {
	for _, r := range results {
		if r.State == state.Deferred {
			return s.finishWithDeferrals(ctx, tx, results, claim)
		}
	}
	f := newFinishTx(s, tx, results, claim)
	if p, ok := tx.(*pipeTx); ok && claim != nil {
		p.readyClaimed = f.claimedAllQueued
	}
	for _, phase := range []func(context.Context) error{
		f.readPolicies, f.record, f.appendLogs, f.reportRefused, f.wakeWaiters, f.fault(FaultFinishRecorded),
		f.releaseDownstream, f.fault(FaultFinishReleased), f.settleRuns, f.fault(FaultFinishSettled),
	} {
		if err := phase(ctx); err != nil {
			return nil, err
		}
	}
	return f.out, f.rl.notify(ctx)
}

// finishTx is one finishing transaction (finishInClaim); its phases run
// in the order finishInClaim lists them.
type finishTx struct {
	s       *Store
	tx      dbtx
	results []store.Result
	claim   *claimPlan
	now     time.Time // the latest end reported, else the clock's time

	out       []store.FinishOutcome
	first     map[int64]int // the result that counts for each instance; later ones are duplicates
	order     []int         // those results in instance id order, the order rows are written in
	failedIDs []int64       // instances whose try failed and may be retried
	freedIDs  []int64       // limited instances whose try the outcome statement ended
	policies  map[int64]policy

	// What the outcome statement applied.
	applied  map[int64]state.TaskState
	runOf    map[int64]int64
	taskOf   map[int64]string
	changes  []change // terminal outcomes, to release downstream
	restarts []int64  // cleared while running: decided again
	branches []int    // indexes of successful branch results
	finished []int64  // run of each instance that reached a terminal state
	retried  bool     // some try went up_for_retry
	calls    []int64  // call instances that reached a terminal state

	rl           *releaser
	speculate    bool      // the release's first round went with the outcomes
	woke         bool      // a freed slot was waited for (wokeSQL)
	waitingAfter []waiting // what that first round left waiting
}

func newFinishTx(s *Store, tx dbtx, results []store.Result, claim *claimPlan) *finishTx {
	f := &finishTx{s: s, tx: tx, results: results, claim: claim,
		out: make([]store.FinishOutcome, len(results)), first: make(map[int64]int, len(results)),
		order: make([]int, 0, len(results)), policies: map[int64]policy{},
		applied: map[int64]state.TaskState{}, runOf: map[int64]int64{}, taskOf: map[int64]string{}}
	for _, r := range results {
		if r.EndedAt.After(f.now) {
			f.now = r.EndedAt
		}
	}
	if f.now.IsZero() {
		f.now = s.clock.Now()
	}
	for i, r := range results {
		f.out[i] = store.FinishOutcome{Try: r.Try}
		if _, dup := f.first[r.ID]; dup {
			continue
		}
		f.first[r.ID] = i
		f.order = append(f.order, i)
		if r.State == state.Failed && !r.Permanent {
			f.failedIDs = append(f.failedIDs, r.ID)
		}
	}
	slices.SortFunc(f.order, func(a, b int) int { return cmp.Compare(results[a].ID, results[b].ID) })
	return f
}

// wakeWaiters counts the call instances that ended off the deferred
// callers waiting on them, and queues those left waiting on none.
func (f *finishTx) wakeWaiters(ctx context.Context) error {
	slices.Sort(f.calls)
	return wakeWaiters(ctx, f.tx, f.calls, f.now)
}

// claimedAllQueued reports whether the transaction's own claim took every
// instance its release queued (a chain's next task): then nothing it
// queued waits for another worker, and no wake-up is sent (each one costs
// a transaction of its own, and one in every listening backend).
// Instances others queued are woken for by their own transactions.
func (f *finishTx) claimedAllQueued() bool {
	if f.rl == nil || f.rl.freed {
		return false
	}
	claimed := make(map[int64]bool, len(f.claim.cl.out))
	for _, c := range f.claim.cl.out {
		claimed[c.ID] = true
	}
	for id, st := range f.rl.final {
		if st == state.Queued && !claimed[id] {
			return false
		}
	}
	return true
}

// fault is the phase that injects the failure named (tests only).
func (f *finishTx) fault(name string) func(context.Context) error {
	return func(context.Context) error { return f.s.fault(name) }
}

// readPolicies reads the retry policy of the failed tries, locking every
// instance of the batch in id order (as a heartbeat does: locking the
// failed ones first, then the rest with the outcomes, could deadlock).
func (f *finishTx) readPolicies(ctx context.Context) error {
	if len(f.failedIDs) == 0 {
		return nil
	}
	ids := make([]int64, len(f.order))
	for k, i := range f.order {
		ids[k] = f.results[i].ID
	}
	rows, err := f.tx.Query(ctx, `SELECT id, try_number, max_tries, retry_delay_ns, max_backoff_ns
		FROM task_instances WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`, ids)
	if err != nil {
		return err
	}
	failed := make(map[int64]bool, len(f.failedIDs))
	for _, id := range f.failedIDs {
		failed[id] = true
	}
	for rows.Next() {
		var id, rd, mb int64
		var p policy
		if err := rows.Scan(&id, &p.try, &p.maxTries, &rd, &mb); err != nil {
			rows.Close()
			return err
		}
		p.retryDelay, p.maxBackoff = time.Duration(rd), time.Duration(mb)
		if failed[id] {
			f.policies[id] = p
		}
	}
	return rows.Err()
}

// outcomeArgs returns the parameters of outcomeSQL, a failed try with
// tries left going up for retry, and the instance ids among them.
func (f *finishTx) outcomeArgs() ([]any, []int64) {
	n := len(f.order)
	var (
		ids     = make([]int64, n)
		tries   = make([]int32, n)
		states  = make([]string, n)
		ended   = make([]time.Time, n)
		outputs = make([]*string, n)
		errs    = make([]string, n)
		retry   = make([]*time.Time, n)
		started = make([]*time.Time, n)
	)
	for k, i := range f.order {
		r := f.results[i]
		to := r.State
		e := r.EndedAt
		if e.IsZero() {
			e = f.now
		}
		if p, ok := f.policies[r.ID]; ok && to == state.Failed && p.try == r.TryNumber && r.TryNumber < p.maxTries {
			to = state.UpForRetry
			at := e.Add(state.RetryDelay(p.retryDelay, p.maxBackoff, r.TryNumber, rand.Float64()))
			retry[k] = &at
		}
		if r.Output != nil {
			o := string(r.Output)
			outputs[k] = &o
		}
		if !r.StartedAt.IsZero() {
			started[k] = &r.StartedAt
		}
		ids[k], tries[k], states[k], ended[k], errs[k] = r.ID, int32(r.TryNumber), string(to), e, r.Error
	}
	return []any{ids, tries, states, ended, outputs, errs, retry, started}, ids
}

// readOutcomes reads what outcomeSQL applied.
func (f *finishTx) readOutcomes(rows pgx.Rows) error {
	for rows.Next() {
		var id, run int64
		var task string
		var st state.TaskState
		var limited bool
		var mapIndex int
		if err := rows.Scan(&id, &run, &task, &st, &limited, &mapIndex); err != nil {
			return err
		}
		if mapIndex >= 0 && st.Terminal() {
			f.calls = append(f.calls, id)
		}
		if _, pipe := f.tx.(*pipeTx); !pipe {
			// A limited try that ended freed slots: wake a claimer (a
			// pipeline decides with wokeSQL instead).
			f.rl.freed = f.rl.freed || limited
		}
		if limited {
			f.freedIDs = append(f.freedIDs, id)
		}
		f.applied[id], f.runOf[id], f.taskOf[id] = st, run, task
		switch {
		case st == state.None:
			f.restarts = append(f.restarts, id)
		case st == state.UpForRetry:
			// The scheduler keeps a timer on the earliest retry: tell it.
			f.retried = true
		case st.Terminal():
			f.changes = append(f.changes, change{run: run, task: task, st: st, delta: 1})
			f.finished = append(f.finished, run)
			if r := f.results[f.first[id]]; st == state.Success && r.Follow != nil {
				f.branches = append(f.branches, f.first[id])
			}
		}
	}
	return rows.Err()
}

// record writes the outcomes and places the claim statements (see
// finishInClaim). In a pipeline, and unless branch choices must be read
// first, the first round of the release travels in the round trip of the
// outcome statement (incrementRecordedSQL finds what it recorded).
func (f *finishTx) record(ctx context.Context) error {
	args, ids := f.outcomeArgs()
	f.rl = newReleaser(f.tx, f.now)
	p, speculate := f.tx.(*pipeTx)
	for _, r := range f.results {
		if r.State == state.Success && r.Follow != nil {
			speculate = false
		}
	}
	f.speculate = speculate
	claim := f.claim
	if !speculate {
		if claim != nil {
			// Sent with COMMIT, after every statement of the finish, and
			// before the run's settling (which follows): the run rows stay
			// locked only from the settling to the commit.
			p.beforeCommit(capsSQL, nil, claim.cl.readCaps)
		}
		if p != nil {
			for _, q := range f.countNow() {
				p.beforeCommit(q.sql, q.args, q.read)
			}
		}
		if claim != nil {
			p.beforeCommit(fastClaimSQL, claim.args(claim.max), claim.cl.readClaimed)
		}
		rows, err := f.tx.Query(ctx, outcomeSQL, args...)
		if err != nil {
			return err
		}
		err = f.readOutcomes(rows)
		rows.Close()
		return err
	}
	// The counters of the tries ended are given back with COMMIT, by
	// fastClaimFreeingSQL, not by the outcome statement: a pool's counter
	// is locked from there to the commit, after the release's hot rows
	// (a join every finish of a fan-in increments), in that order, and
	// this round trip's claim (earlyClaimSQL) locks none.
	qs := []finalQuery{hotOff, {sql: outcomeHotSQL, args: args, read: f.readOutcomes}, limitsOn}
	if claim != nil {
		qs = append(qs, finalQuery{sql: capsSQL, read: claim.cl.readCaps},
			finalQuery{sql: earlyClaimSQL, args: claim.args(claim.max), read: claim.cl.readClaimed})
	}
	// The final log chunks go before the increment: the join a fan-in's
	// finishes all increment stays locked from its increment to the
	// commit, so what runs after it serialises them.
	if q, ok := f.recordedLogs(); ok {
		qs = append(qs, q)
	}
	qs = append(qs, finalQuery{sql: incrementRecordedSQL, args: []any{ids, recordedFinalStates, true, queueWhenAllSucceeded, f.now},
		read: func(rows pgx.Rows) error {
			var err error
			f.waitingAfter, err = f.rl.readIncrement(rows)
			return err
		}}, setsOn)
	if err := p.queryAll(ctx, qs...); err != nil {
		return err
	}
	// Sent with COMMIT, before the run's settling: the claim of the
	// slots left, which also gives back the counters of the tries ended.
	left, cargs, read := 0, []any{0, f.now, "", "", 0}, ignoreRows
	if claim != nil {
		if claim.cl.capped == 0 {
			left = claim.max - len(claim.cl.out)
		}
		cargs, read = claim.args(left), claim.cl.readClaimed
	}
	if left > 0 || len(f.freedIDs) > 0 {
		freed := append([]int64{}, f.freedIDs...)
		p.finals = append(p.finals, setsOff, finalQuery{sql: fastClaimFreeingSQL, args: append(cargs, freed), read: read}, setsOn)
	}
	if len(f.freedIDs) > 0 {
		p.finals = append(p.finals, f.countNow()...)
	}
	return nil
}

// countNow returns the statement that reads whether a slot the outcome
// statement freed was one somebody waited for, and arranges the wake-up
// of claimers after the commit then, unless the finisher's own claim came
// back short (nothing claimable left).
func (f *finishTx) countNow() []finalQuery { return f.countNowLooking(wokeSQL) }

// countNowLooking is countNow with sql: wokeSQL, or lookSQL or
// lookLightSQL, whose second column (limits in play) sets the store's
// lightClaim.
func (f *finishTx) countNowLooking(sql string) []finalQuery {
	f.tx.(*pipeTx).afterIf = append(f.tx.(*pipeTx).afterIf, conditionalTopic{store.TopicTasksReady, func() bool {
		if !f.woke {
			return false
		}
		c := f.claim
		return c == nil || len(c.cl.out) >= c.max
	}})
	return []finalQuery{
		{sql: sql, read: func(rows pgx.Rows) error {
			for rows.Next() {
				if sql == wokeSQL {
					if err := rows.Scan(&f.woke); err != nil {
						return err
					}
					continue
				}
				var limits bool
				if err := rows.Scan(&f.woke, &limits); err != nil {
					return err
				}
				f.s.lightClaim.Store(!limits)
			}
			return rows.Err()
		}},
	}
}

// recordedLogs returns the statement appending the final log chunks of
// the results (one per instance, in instance order) for the tries the
// outcome statement applies (appendRecordedLogsSQL), false when there
// are none.
func (f *finishTx) recordedLogs() (finalQuery, bool) {
	var (
		logAs   []store.Try
		logData [][]byte
	)
	for _, i := range f.order {
		if r := f.results[i]; len(r.Log) > 0 {
			logAs = append(logAs, r.Try)
			logData = append(logData, r.Log)
		}
	}
	if len(logAs) == 0 {
		return finalQuery{}, false
	}
	ids, tries := tryArrays(logAs)
	return finalQuery{sql: appendRecordedLogsSQL, args: []any{ids, tries, logData, int64(f.s.logCap)},
		read: func(pgx.Rows) error { return nil }}, true // no rows; readBatch closes them
}

// appendLogs appends the final log chunks of the tries recorded (cleared
// ones too: the try ran), in instance order; record sent them already
// when it speculated.
func (f *finishTx) appendLogs(ctx context.Context) error {
	if f.speculate {
		return nil
	}
	var (
		logAs   []store.Try
		logData [][]byte
	)
	for _, i := range f.order {
		if r := f.results[i]; len(r.Log) > 0 {
			if _, ok := f.applied[r.ID]; ok {
				logAs = append(logAs, r.Try)
				logData = append(logData, r.Log)
			}
		}
	}
	return appendLogsIn(ctx, f.tx, logAs, logData, f.s.logCap)
}

// reportRefused fills the outcomes: applied ones with their new state,
// refused ones (late, duplicate) with the instance's current state.
func (f *finishTx) reportRefused(ctx context.Context) error {
	var missed []int64
	for i, r := range f.results {
		if st, ok := f.applied[r.ID]; ok && f.first[r.ID] == i {
			f.out[i].Applied, f.out[i].State = true, st
		} else {
			missed = append(missed, r.ID)
		}
	}
	if len(missed) == 0 {
		return nil
	}
	rows, err := f.tx.Query(ctx, "SELECT id, state FROM task_instances WHERE id = ANY($1)", missed)
	if err != nil {
		return err
	}
	cur := map[int64]state.TaskState{}
	for rows.Next() {
		var id int64
		var st state.TaskState
		if err := rows.Scan(&id, &st); err != nil {
			rows.Close()
			return err
		}
		cur[id] = st
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for i := range f.out {
		if !f.out[i].Applied {
			f.out[i].State = cur[f.out[i].ID]
		}
	}
	return nil
}

// releaseDownstream skips what branch choices leave out, propagates the
// outcomes downstream (from the first round record sent, when it did),
// decides restarted instances again, and reports the instances' final
// states.
func (f *finishTx) releaseDownstream(ctx context.Context) error {
	rl := f.rl
	rl.runsChanged = f.retried
	for _, run := range f.finished {
		rl.touch(run, 1)
	}
	for _, i := range f.branches {
		r := f.results[i]
		skip, err := branchSkips(ctx, f.tx, f.runOf[r.ID], f.taskOf[r.ID], r.Follow)
		if err != nil {
			return err
		}
		for _, t := range skip {
			rl.forced[runTask{f.runOf[r.ID], t}] = true
		}
	}
	if f.speculate {
		next, err := rl.decide(ctx, f.waitingAfter)
		if err != nil {
			return err
		}
		if err := rl.release(ctx, next); err != nil {
			return err
		}
	} else if err := rl.release(ctx, f.changes); err != nil {
		return err
	}
	if err := rl.reconsider(ctx, f.restarts); err != nil {
		return err
	}
	for i := range f.out {
		if st, ok := rl.final[f.out[i].ID]; ok && f.out[i].Applied {
			f.out[i].State = st
		}
	}
	return nil
}

// settleRuns counts the finished instances of the runs touched and ends
// the runs with none left (rl.settle; a phase of its own because rl is
// made by record).
func (f *finishTx) settleRuns(ctx context.Context) error { return f.rl.settle(ctx) }

// outcomeSQL records the outcomes of tries, each a compare-and-set on
// (running or restarting, try number): $1 instance, $2 try, $3 state
// (success, failed, skipped or up_for_retry), $4 end, $5 output, $6
// error, $7 next retry, $8 start (NULL: keep the claim time). A
// restarting instance (cleared while running) drops the outcome of its
// try and goes back to waiting (none), to be decided again.
//
// The counters of the limited instances among them are locked first, in
// the claim's order (pools, then keys, by name): the counter trigger
// would otherwise lock them in row order, and two finishes could
// deadlock.
//
// The tries it ends leave task_running in the same statement (migration
// 00019: the set trigger may then be off, setsOff).
const outcomeSQL = `
		WITH lt AS MATERIALIZED (
			SELECT pool, task_key, concurrency_key FROM task_instances WHERE id = ANY($1) AND limited
		), lp AS MATERIALIZED (
			SELECT name FROM pools WHERE name IN (SELECT pool FROM lt) ORDER BY name FOR NO KEY UPDATE
		), lk AS MATERIALIZED (
			SELECT key FROM concurrency_keys WHERE key IN (SELECT task_key FROM lt UNION SELECT concurrency_key FROM lt)
			ORDER BY key FOR NO KEY UPDATE
		), o AS (` + outcomeUpdate + `
			AND (SELECT count(*) FROM lp) + (SELECT count(*) FROM lk) >= 0
		RETURNING t.id, t.run_id, t.task_id, t.state, t.limited, t.map_index
		), rd AS (DELETE FROM task_running WHERE ti_id = ANY (ARRAY(SELECT id FROM o)))
		SELECT * FROM o`

// outcomeHotSQL is outcomeSQL for a finish whose counters
// fastClaimFreeingSQL updates, with COMMIT: it locks none, and runs with
// the counter trigger off (limitsOff). Its parameters and rows are
// outcomeSQL's.
const outcomeHotSQL = `
		WITH o AS (` + outcomeUpdate + `
		RETURNING t.id, t.run_id, t.task_id, t.state, t.limited, t.map_index
		), rd AS (DELETE FROM task_running WHERE ti_id = ANY (ARRAY(SELECT id FROM o)))
		SELECT * FROM o`

// outcomeUpdate is the compare-and-set of outcomeSQL, without RETURNING.
const outcomeUpdate = `
		UPDATE task_instances t SET
			state = CASE WHEN t.state = 'restarting' THEN 'none' ELSE u.state END,
			ended_at = CASE WHEN t.state = 'restarting' THEN NULL ELSE u.ended_at END,
			output = CASE WHEN t.state = 'restarting' THEN NULL ELSE u.output::jsonb END,
			error = CASE WHEN t.state = 'restarting' THEN '' ELSE u.error END,
			next_retry_at = CASE WHEN t.state = 'restarting' THEN NULL ELSE u.next_retry_at END,
			queued_at = CASE WHEN t.state = 'restarting' THEN NULL ELSE t.queued_at END,
			started_at = CASE WHEN t.state = 'restarting' THEN NULL ELSE coalesce(u.started_at, t.started_at) END,
			heartbeat_at = CASE WHEN t.state = 'restarting' THEN NULL ELSE t.heartbeat_at END,
			worker_id = CASE WHEN t.state = 'restarting' THEN '' ELSE t.worker_id END,
			hostname = CASE WHEN t.state = 'restarting' THEN '' ELSE t.hostname END,
			pid = CASE WHEN t.state = 'restarting' THEN 0 ELSE t.pid END
		FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::timestamptz[],
				$8::timestamptz[])
			AS u(id, try, state, ended_at, output, error, next_retry_at, started_at)
		WHERE t.id = u.id AND t.id = ANY($1) AND t.try_number = u.try AND t.state IN ('running', 'restarting')`

// wokeSQL reads whether the counter trigger found a slot freed where an
// instance could not start (trellis.wake): the finish must wake claimers.
const wokeSQL = `SELECT coalesce(current_setting('trellis.wake', true), '') = 'on'`

// recordedFinalStates are the final states outcomeSQL writes.
var recordedFinalStates = []string{string(state.Success), string(state.Failed), string(state.Skipped)}

// resetRestarting puts instances whose cleared try ended back to waiting
// (state none); the try is spent, the instance is decided again.
func resetRestarting(ctx context.Context, tx pgx.Tx, ids []int64) error {
	_, err := tx.Exec(ctx, `UPDATE task_instances SET state = 'none', queued_at = NULL, started_at = NULL,
			ended_at = NULL, heartbeat_at = NULL, next_retry_at = NULL, worker_id = '', hostname = '', pid = 0,
			output = NULL, error = '', resumed = false, deferred_state = NULL, event_payload = NULL, wait_event = NULL, next_check_at = NULL, trigger_timeout = NULL
		WHERE id = ANY($1) AND state = 'restarting'`, ids)
	return err
}

// branchSkips returns the direct downstream tasks of a branch task that
// its choice follow does not keep: as in Airflow (and state.BranchSkips),
// a direct downstream task reachable from a followed one is kept.
func branchSkips(ctx context.Context, tx dbtx, run int64, task string, follow []string) ([]string, error) {
	if follow == nil {
		follow = []string{}
	}
	rows, err := tx.Query(ctx, `
		WITH RECURSIVE ver AS (
			SELECT version_id FROM dag_runs WHERE id = $1
		), direct AS (
			SELECT d.task_id FROM ver
			CROSS JOIN LATERAL (SELECT v.downstream FROM dag_version_tasks v
				WHERE v.version_id = ver.version_id AND v.task_id = $2 LIMIT 1) v
			CROSS JOIN LATERAL unnest(v.downstream) AS d(task_id)
		), keep(task_id) AS (
			SELECT task_id FROM direct WHERE task_id = ANY($3)
			UNION
			SELECT d.task_id FROM keep k CROSS JOIN ver
			CROSS JOIN LATERAL (SELECT v.downstream FROM dag_version_tasks v
				WHERE v.version_id = ver.version_id AND v.task_id = k.task_id LIMIT 1) v
			CROSS JOIN LATERAL unnest(v.downstream) AS d(task_id)
		)
		SELECT task_id FROM direct WHERE task_id NOT IN (SELECT task_id FROM keep)`, run, task, follow)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// HeartbeatTasks refreshes the heartbeat of the running tries of a
// worker and returns those that are no longer running under that try and
// worker (finished elsewhere, declared zombies, cleared, cancelled).
func (s *Store) HeartbeatTasks(ctx context.Context, workerID string, tries []store.Try, now time.Time) ([]store.Try, error) {
	lost := []store.Try{}
	if len(tries) == 0 {
		return lost, nil
	}
	as := slices.Clone(tries)
	slices.SortFunc(as, byTry)
	ids, nums := tryArrays(as)
	// Lock the rows in id order, as FinishTasks does, so a heartbeat and a
	// finish touching the same instances cannot deadlock.
	// A deferred try the worker keeps parked is held while deferred, and
	// once queued again (its try number lowered by one) until claimed:
	// those rows are only read, never locked (the transactions that wake
	// callers lock them after their callees, out of id order).
	rows, err := s.pool.Query(ctx, `
		WITH mine AS MATERIALIZED (
			SELECT t.id FROM task_instances t
			JOIN unnest($1::bigint[], $2::int[]) AS u(id, try) ON t.id = u.id AND t.try_number = u.try
			WHERE t.state = 'running' AND t.worker_id = $4
			ORDER BY t.id
			FOR NO KEY UPDATE OF t
		), beat AS (
			UPDATE task_instances t SET heartbeat_at = $3
			FROM mine WHERE t.id = mine.id
			RETURNING t.id, t.try_number
		)
		SELECT id, try_number FROM beat
		UNION ALL
		SELECT t.id, u.try FROM task_instances t
		JOIN unnest($1::bigint[], $2::int[]) AS u(id, try) ON t.id = u.id
		WHERE t.worker_id = $4 AND (t.state = 'deferred' AND t.try_number = u.try
			OR t.state = 'queued' AND t.try_number = u.try - 1)`, ids, nums, now, workerID)
	if err != nil {
		return nil, mapErr("heartbeat tasks", err)
	}
	alive := map[store.Try]bool{}
	for rows.Next() {
		var a store.Try
		if err := rows.Scan(&a.ID, &a.TryNumber); err != nil {
			rows.Close()
			return nil, mapErr("heartbeat tasks", err)
		}
		alive[a] = true
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr("heartbeat tasks", err)
	}
	for _, a := range tries {
		if !alive[a] {
			lost = append(lost, a)
		}
	}
	return lost, nil
}

func byTry(a, b store.Try) int {
	if c := cmp.Compare(a.ID, b.ID); c != 0 {
		return c
	}
	return cmp.Compare(a.TryNumber, b.TryNumber)
}

func tryArrays(as []store.Try) ([]int64, []int32) {
	ids, tries := make([]int64, len(as)), make([]int32, len(as))
	for i, a := range as {
		ids[i], tries[i] = a.ID, int32(a.TryNumber)
	}
	return ids, tries
}

// RequeueRetries queues the up_for_retry instances due at or before now
// and returns how many. Rows locked by another transaction are left for
// the next call.
func (s *Store) RequeueRetries(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.inTx(ctx, "requeue retries", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			WITH due AS MATERIALIZED (
				SELECT id FROM task_instances WHERE next_retry_at <= $1 AND state = 'up_for_retry'
				ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
			)
			UPDATE task_instances t SET state = 'queued', queued_at = $1, next_retry_at = NULL
			FROM due WHERE t.id = due.id`, now)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		if n > 0 {
			return notify(ctx, tx, store.TopicTasksReady)
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	for {
		m, err := s.requeueDueDeferred(ctx, now)
		n += m
		if err != nil || m < store.DeferredBatch {
			return n, err
		}
	}
}

// requeueDueDeferred queues up to store.DeferredBatch deferred instances
// whose next check is due, in one transaction. Rows another transaction
// holds are skipped, and the compare-and-set on the deferred state makes
// a second scheduler find nothing to do for those it queued.
func (s *Store) requeueDueDeferred(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.inTx(ctx, "requeue due deferred tasks", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			WITH due AS MATERIALIZED (
				SELECT id FROM task_instances WHERE state = 'deferred' AND next_check_at <= $1
				ORDER BY next_check_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED
			)
			UPDATE task_instances t SET state = 'queued', try_number = t.try_number - 1, queued_at = $1,
				resumed = true, next_check_at = NULL, wait_event = NULL
			FROM due WHERE t.id = due.id`, now, store.DeferredBatch)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		if n > 0 {
			return notify(ctx, tx, store.TopicTasksReady)
		}
		return nil
	})
	return n, err
}

// NextRetryAt returns the earliest pending retry time or next check of a
// deferred instance.
func (s *Store) NextRetryAt(ctx context.Context) (time.Time, bool, error) {
	var t *time.Time
	if err := s.pool.QueryRow(ctx, `SELECT least(
			(SELECT min(next_retry_at) FROM task_instances WHERE state = 'up_for_retry'),
			(SELECT min(next_check_at) FROM task_instances WHERE state = 'deferred' AND next_check_at IS NOT NULL))`).Scan(&t); err != nil {
		return time.Time{}, false, mapErr("next retry time", err)
	}
	if t == nil {
		return time.Time{}, false, nil
	}
	return t.UTC(), true, nil
}

// FailZombies fails (or puts up for retry) the running tries whose
// heartbeat is older than staleBefore, releasing downstream tasks as a
// finish would, and returns them. Cleared (restarting) tries that went
// silent are put back to wait instead.
func (s *Store) FailZombies(ctx context.Context, staleBefore, now time.Time) ([]store.Try, error) {
	msg := "zombie: no heartbeat since before " + staleBefore.UTC().Format(time.RFC3339)
	return s.failWhere(ctx, "fail zombies", `heartbeat_at < $1 AND NOT EXISTS (SELECT 1 FROM workers w
		WHERE w.id = task_instances.worker_id AND w.heartbeat_at >= $1)`, staleBefore, now, msg)
}

// FailWorkerTasks treats the running tries of a dead worker like
// zombies, at once, and returns them.
func (s *Store) FailWorkerTasks(ctx context.Context, workerID string, now time.Time) ([]store.Try, error) {
	return s.failWhere(ctx, fmt.Sprintf("fail tasks of worker %q", workerID), "worker_id = $1", workerID, now,
		fmt.Sprintf("worker %s died", workerID))
}

func (s *Store) failWhere(ctx context.Context, op, cond string, arg any, now time.Time, msg string) ([]store.Try, error) {
	var taken []store.Try
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		// How many tries are taken is not known: plan for many.
		if _, err := tx.Exec(ctx, hotPlanCustom); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id, try_number FROM task_instances
			WHERE id = ANY (ARRAY(SELECT ti_id FROM task_running)) AND state IN ('running', 'restarting') AND `+cond+`
			ORDER BY id FOR NO KEY UPDATE SKIP LOCKED`, arg)
		if err != nil {
			return err
		}
		taken, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Try, error) {
			var a store.Try
			err := row.Scan(&a.ID, &a.TryNumber)
			return a, err
		})
		if err != nil || len(taken) == 0 {
			return err
		}
		results := make([]store.Result, len(taken))
		for i, a := range taken {
			results[i] = store.Result{Try: a, State: state.Failed, Error: msg, EndedAt: now}
		}
		_, err = s.finishIn(ctx, tx, results)
		return err
	})
	if err != nil {
		return nil, err
	}
	if taken == nil {
		taken = []store.Try{}
	}
	return taken, nil
}

// RequeueTries puts running tries back to queued without using up
// a try (graceful shutdown); stale tries are ignored. A cleared
// (restarting) try goes back to waiting instead.
func (s *Store) RequeueTries(ctx context.Context, tries []store.Try) error {
	if len(tries) == 0 {
		return nil
	}
	as := slices.Clone(tries)
	slices.SortFunc(as, byTry)
	ids, nums := tryArrays(as)
	return s.inTx(ctx, "requeue tries", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			UPDATE task_instances t SET state = 'queued', try_number = t.try_number - 1, started_at = NULL,
				heartbeat_at = NULL, worker_id = '', hostname = '', pid = 0
			FROM unnest($1::bigint[], $2::int[]) AS u(id, try)
			WHERE t.id = u.id AND t.try_number = u.try AND t.state = 'running'
			RETURNING u.id, u.try`, ids, nums)
		if err != nil {
			return err
		}
		back, err := pgx.CollectRows(rows, pgx.RowToStructByPos[store.Try])
		if err != nil {
			return err
		}
		if err := putBackNotes(ctx, tx, back, store.RequeueReason, s.logCap); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT t.id FROM task_instances t
			JOIN unnest($1::bigint[], $2::int[]) AS u(id, try) ON t.id = u.id AND t.try_number = u.try
			WHERE t.state = 'restarting' ORDER BY t.id FOR NO KEY UPDATE OF t`, ids, nums)
		if err != nil {
			return err
		}
		restarts, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		if len(restarts) > 0 {
			if err := resetRestarting(ctx, tx, restarts); err != nil {
				return err
			}
			rl := newReleaser(tx, s.clock.Now())
			if err := rl.reconsider(ctx, restarts); err != nil {
				return err
			}
			if err := rl.finish(ctx); err != nil {
				return err
			}
		}
		if len(back) > 0 {
			return notify(ctx, tx, store.TopicTasksReady)
		}
		return nil
	})
}

// GetOutput returns the output of taskID in the run with internal id
// runID, or ErrNotFound when it has none.
func (s *Store) GetOutput(ctx context.Context, runID int64, taskID string) (json.RawMessage, error) {
	op := fmt.Sprintf("get output of task %q in run %d", taskID, runID)
	var out []byte
	err := s.pool.QueryRow(ctx, "SELECT output FROM task_instances WHERE run_id = $1 AND task_id = $2 AND call_key = ''",
		runID, taskID).Scan(&out)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w: no such task instance", op, store.ErrNotFound)
	}
	if err != nil {
		return nil, mapErr(op, err)
	}
	if out == nil {
		return nil, fmt.Errorf("%s: %w: the task has no output", op, store.ErrNotFound)
	}
	return json.RawMessage(out), nil
}

// RecoverWorkerTasks puts the running tries of dead worker workerID back
// to queued keeping their try number, and fails those put back so once
// already under the same number (poison); see store.Store.
func (s *Store) RecoverWorkerTasks(ctx context.Context, workerID, cause string, now time.Time) (store.Recovered, error) {
	var rec store.Recovered
	err := s.inTx(ctx, fmt.Sprintf("recover tasks of worker %q", workerID), func(tx pgx.Tx) error {
		rec = store.Recovered{}
		rows, err := tx.Query(ctx, `SELECT id, try_number, state = 'restarting', crashed_try = try_number
			FROM task_instances WHERE id = ANY (ARRAY(SELECT ti_id FROM task_running))
				AND state IN ('running', 'restarting') AND worker_id = $1
			ORDER BY id FOR NO KEY UPDATE SKIP LOCKED`, workerID)
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
		if err := rows.Err(); err != nil {
			return err
		}
		if len(back) > 0 {
			ids, _ := tryArrays(back)
			if _, err := tx.Exec(ctx, `UPDATE task_instances SET state = 'queued', crashed_try = try_number,
					try_number = try_number - 1, started_at = NULL, heartbeat_at = NULL, worker_id = '', hostname = '', pid = 0
				WHERE id = ANY($1) AND state = 'running'`, ids); err != nil {
				return err
			}
			rec.Requeued = back
			if err := putBackNotes(ctx, tx, back, cause, s.logCap); err != nil {
				return err
			}
			if err := notify(ctx, tx, store.TopicTasksReady); err != nil {
				return err
			}
		}
		if len(dead.Poisoned)+len(dead.Cleared) == 0 {
			return nil
		}
		results, err := dead.Results(cause, now, func(a store.Try) ([]byte, error) { return lastLogChunks(ctx, tx, a) })
		if err != nil {
			return err
		}
		out, err := s.finishIn(ctx, tx, results)
		rec.Failed = store.AppliedOf(out, dead.Poisoned)
		return err
	})
	if err != nil {
		return store.Recovered{}, err
	}
	return rec, nil
}

// lastLogChunks returns the last two stored chunks of a try's log.
func lastLogChunks(ctx context.Context, tx pgx.Tx, a store.Try) ([]byte, error) {
	rows, err := tx.Query(ctx, `SELECT data FROM task_log_chunks WHERE ti_id = $1 AND try_number = $2
		ORDER BY seq DESC LIMIT 2`, a.ID, a.TryNumber)
	if err != nil {
		return nil, err
	}
	chunks, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, err
	}
	var out []byte
	for i := len(chunks) - 1; i >= 0; i-- {
		out = append(out, chunks[i]...)
	}
	return out, nil
}

// putBackNotes marks, in the logs of the tries put back that have output
// already, where their next run begins (store.PutBackNote).
func putBackNotes(ctx context.Context, tx pgx.Tx, tries []store.Try, why string, logCap int) error {
	if len(tries) == 0 {
		return nil
	}
	ids, nums := tryArrays(tries)
	rows, err := tx.Query(ctx, `SELECT l.ti_id, l.try_number FROM task_logs l
		JOIN unnest($1::bigint[], $2::int[]) AS u(id, try) ON l.ti_id = u.id AND l.try_number = u.try
		WHERE l.size > 0 ORDER BY 1, 2`, ids, nums)
	if err != nil {
		return err
	}
	logged, err := pgx.CollectRows(rows, pgx.RowToStructByPos[store.Try])
	if err != nil {
		return err
	}
	return appendLogsIn(ctx, tx, logged, store.PutBackNotes(why, len(logged)), logCap)
}
