package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// tiCols are the columns of store.TaskInstance, from task_instances t
// joined with dag_runs r.
const tiCols = `t.id, t.run_id, t.dag_id, r.run_id, t.task_id, t.state, t.try_number, t.max_tries, t.priority,
	t.trigger_rule, t.queued_at, t.started_at, t.ended_at, t.next_retry_at, t.worker_id, t.hostname, t.pid,
	t.heartbeat_at, t.output, t.error, t.next_check_at, coalesce(t.wait_event, ''), t.trigger_timeout,
	t.map_index, t.arguments, coalesce(t.parent_ti_id, 0), t.waiting_on`

func tiDest(ti *store.TaskInstance, output *[]byte) []any {
	return []any{&ti.ID, &ti.RunID, &ti.DAGID, &ti.DAGRunID, &ti.TaskID, &ti.State, &ti.TryNumber, &ti.MaxTries,
		&ti.Priority, &ti.TriggerRule, &ti.QueuedAt, &ti.StartedAt, &ti.EndedAt, &ti.NextRetryAt, &ti.WorkerID,
		&ti.Hostname, &ti.PID, &ti.HeartbeatAt, output, &ti.Error, &ti.NextCheckAt, &ti.WaitEvent, &ti.TriggerTimeout,
		&ti.MapIndex, &ti.Arguments, &ti.CallerID, &ti.WaitingOn}
}

func fixTI(ti *store.TaskInstance, output []byte) {
	if output != nil {
		ti.Output = json.RawMessage(output)
	}
	if len(ti.Arguments) == 0 {
		ti.Arguments = nil
	}
	ti.QueuedAt, ti.StartedAt, ti.EndedAt = utcp(ti.QueuedAt), utcp(ti.StartedAt), utcp(ti.EndedAt)
	ti.NextRetryAt, ti.HeartbeatAt = utcp(ti.NextRetryAt), utcp(ti.HeartbeatAt)
	ti.NextCheckAt, ti.TriggerTimeout = utcp(ti.NextCheckAt), utcp(ti.TriggerTimeout)
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
func claimSelect(ctes, update string) string {
	return `WITH ` + ctes + ` u AS (` + update + ` RETURNING t.*)
		SELECT ` + tiCols + `, r.logical_date, r.interval_start, r.interval_end,
			CASE WHEN row_number() OVER (PARTITION BY t.run_id ORDER BY t.id) = 1 THEN r.conf END, t.timeout_ns,
			t.resumed, t.deferred_state, t.event_payload
		FROM u AS t JOIN dag_runs r ON r.id = t.run_id`
}

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
	// One round trip: the caps, and the claim for when no DAG is capped
	// (guarded in SQL, so it claims nothing when one is).
	var cl claimRead
	b := &pgx.Batch{}
	b.Queue(hotPlan(max))
	b.Queue(capsSQL)
	b.Queue(fastClaimSQL, max, now, w.ID, w.Hostname, w.PID)
	err := func() error {
		br := s.pool.SendBatch(ctx, b)
		defer br.Close()
		if err := readBatch(br, 1, []finalQuery{{read: cl.readCaps}, {read: cl.readClaimed}}); err != nil {
			return err
		}
		return br.Close()
	}()
	if err != nil {
		return nil, mapErr(op, err)
	}
	return s.completeClaim(ctx, op, &cl, w, max, now)
}

// capsSQL reads the DAGs with a MaxActiveTasks cap and their running
// instances.
const capsSQL = `SELECT d.dag_id, d.max_active_tasks, (SELECT count(*) FROM task_instances t
		WHERE t.state IN ('running', 'restarting') AND t.dag_id = d.dag_id)
	FROM dags d WHERE d.max_active_tasks > 0`

// fastClaimSQL claims ($1 at most) when no DAG is capped, and nothing
// otherwise. The candidates are a materialized CTE: locked once, never
// re-scanned (a re-scan would lock other rows).
var fastClaimSQL = claimSelect(`c AS MATERIALIZED (
		SELECT id FROM task_instances WHERE state = 'queued'
			AND NOT EXISTS (SELECT 1 FROM dags WHERE max_active_tasks > 0)
		ORDER BY priority DESC, queued_at, id
		LIMIT $1
		FOR NO KEY UPDATE SKIP LOCKED),`, claimSet+` FROM c WHERE t.id = c.id`)

// claimRead collects the answers to capsSQL and fastClaimSQL.
type claimRead struct {
	capped    int      // DAGs with a cap
	saturated []string // capped DAGs at their cap
	out       []store.Claimed
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
	cs, err := collectClaimed(rows)
	c.out = append(c.out, cs...)
	return err
}

// completeClaim finishes a claim whose fast part was read into cl: with
// capped DAGs (the guarded fast claim claimed nothing) it claims within
// the caps in a transaction of its own; then it sorts the claimed
// instances in claim order.
func (s *Store) completeClaim(ctx context.Context, op string, cl *claimRead, w store.Worker, max int, now time.Time) ([]store.Claimed, error) {
	out := cl.out
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
	}
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
	return out, nil
}

// claimCapped is the claim when some DAGs have a MaxActiveTasks cap.
func claimCapped(ctx context.Context, tx pgx.Tx, w store.Worker, max int, now time.Time, saturated []string) ([]store.Claimed, error) {
	if saturated == nil {
		saturated = []string{}
	}
	rows, err := tx.Query(ctx, `SELECT id, dag_id FROM task_instances
		WHERE state = 'queued' AND NOT (dag_id = ANY($2))
		ORDER BY priority DESC, queued_at, id
		LIMIT $1
		FOR NO KEY UPDATE SKIP LOCKED`, max, saturated)
	if err != nil {
		return nil, err
	}
	type cand struct {
		id  int64
		dag string
	}
	cands, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (cand, error) {
		var c cand
		err := row.Scan(&c.id, &c.dag)
		return c, err
	})
	if err != nil || len(cands) == 0 {
		return []store.Claimed{}, err
	}
	var dagIDs []string
	for _, c := range cands {
		if !slices.Contains(dagIDs, c.dag) {
			dagIDs = append(dagIDs, c.dag)
		}
	}
	slices.Sort(dagIDs)
	// Lock the capped DAGs among the candidates, then count their running
	// instances with a fresh snapshot: claimers that held the lock before
	// have committed.
	rows, err = tx.Query(ctx, `SELECT dag_id, max_active_tasks FROM dags
		WHERE dag_id = ANY($1) AND max_active_tasks > 0 ORDER BY dag_id FOR NO KEY UPDATE`, dagIDs)
	if err != nil {
		return nil, err
	}
	room := map[string]int{}
	for rows.Next() {
		var d string
		var limit int
		if err := rows.Scan(&d, &limit); err != nil {
			rows.Close()
			return nil, err
		}
		room[d] = limit
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(room) > 0 {
		cappedIDs := make([]string, 0, len(room))
		for d := range room {
			cappedIDs = append(cappedIDs, d)
		}
		rows, err := tx.Query(ctx, `SELECT dag_id, count(*) FROM task_instances
			WHERE state IN ('running', 'restarting') AND dag_id = ANY($1) GROUP BY dag_id`, cappedIDs)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var d string
			var n int
			if err := rows.Scan(&d, &n); err != nil {
				rows.Close()
				return nil, err
			}
			room[d] -= n
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	var keep []int64
	for _, c := range cands {
		if left, ok := room[c.dag]; ok {
			if left <= 0 {
				continue
			}
			room[c.dag] = left - 1
		}
		keep = append(keep, c.id)
	}
	if len(keep) == 0 {
		return []store.Claimed{}, nil
	}
	rows, err = tx.Query(ctx, claimSelect("", claimSet+` WHERE t.id = ANY($1)`), keep, now, w.ID, w.Hostname, w.PID)
	if err != nil {
		return nil, err
	}
	return collectClaimed(rows)
}

func collectClaimed(rows pgx.Rows) ([]store.Claimed, error) {
	defer rows.Close()
	out := []store.Claimed{}
	confs := map[int64]json.RawMessage{}
	for rows.Next() {
		var c store.Claimed
		var output, conf, saved, payload []byte
		var timeout int64
		dest := append(tiDest(&c.TaskInstance, &output), &c.LogicalDate, &c.IntervalStart, &c.IntervalEnd, &conf, &timeout,
			&c.Resumed, &saved, &payload)
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		fixTI(&c.TaskInstance, output)
		c.LogicalDate, c.IntervalStart, c.IntervalEnd = utc(c.LogicalDate), utc(c.IntervalStart), utc(c.IntervalEnd)
		if conf != nil {
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
		return nil, err
	}
	for i := range out {
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
	err := s.inPipe(ctx, op, hotPlan(batch), func(tx *pipeTx) error {
		cl = claimRead{}
		var plan *claimPlan
		if max > 0 {
			plan = &claimPlan{w: w, max: max, now: now, cl: &cl}
			tx.readyIfLeft = true
		}
		var err error
		out, err = s.finishInClaim(ctx, tx, results, plan)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	if max <= 0 {
		return out, []store.Claimed{}, nil
	}
	claimed, err := s.completeClaim(ctx, op, &cl, w, max, now)
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
	var now time.Time
	for _, r := range results {
		if r.EndedAt.After(now) {
			now = r.EndedAt
		}
	}
	if now.IsZero() {
		now = s.clock.Now()
	}
	for _, r := range results {
		if r.State == state.Deferred {
			return s.finishWithDeferrals(ctx, tx, results, claim, now)
		}
	}
	out := make([]store.FinishOutcome, len(results))
	// The first result per instance counts; later ones in the batch are
	// duplicates (not applied). Rows are written in id order.
	order := make([]int, 0, len(results))
	first := make(map[int64]int, len(results))
	var failedIDs []int64
	for i, r := range results {
		out[i] = store.FinishOutcome{Try: r.Try}
		if _, dup := first[r.ID]; dup {
			continue
		}
		first[r.ID] = i
		order = append(order, i)
		if r.State == state.Failed && !r.Permanent {
			failedIDs = append(failedIDs, r.ID)
		}
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(results[a].ID, results[b].ID) })
	policies := map[int64]policy{}
	if len(failedIDs) > 0 {
		slices.Sort(failedIDs)
		rows, err := tx.Query(ctx, `SELECT id, try_number, max_tries, retry_delay_ns, max_backoff_ns
			FROM task_instances WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`, failedIDs)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id, rd, mb int64
			var p policy
			if err := rows.Scan(&id, &p.try, &p.maxTries, &rd, &mb); err != nil {
				rows.Close()
				return nil, err
			}
			p.retryDelay, p.maxBackoff = time.Duration(rd), time.Duration(mb)
			policies[id] = p
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	n := len(order)
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
	for k, i := range order {
		r := results[i]
		to := r.State
		e := r.EndedAt
		if e.IsZero() {
			e = now
		}
		if p, ok := policies[r.ID]; ok && to == state.Failed && p.try == r.TryNumber && r.TryNumber < p.maxTries {
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
	var (
		changes  []change
		restarts []int64
		branches []int // indexes of successful branch results
		runOf    = map[int64]int64{}
		taskOf   = map[int64]string{}
		applied  = map[int64]state.TaskState{}
		finished []int64 // run of each instance that reached a terminal state
		retried  bool    // some try went up_for_retry
		calls    []int64 // call instances that reached a terminal state
	)
	readOutcomes := func(rows pgx.Rows) error {
		for rows.Next() {
			var id, run int64
			var task string
			var st state.TaskState
			var mapIndex int
			if err := rows.Scan(&id, &run, &task, &st, &mapIndex); err != nil {
				return err
			}
			if mapIndex >= 0 && st.Terminal() {
				calls = append(calls, id)
			}
			applied[id], runOf[id], taskOf[id] = st, run, task
			switch {
			case st == state.None:
				restarts = append(restarts, id)
			case st == state.UpForRetry:
				// The scheduler keeps a timer on the earliest retry: tell it.
				retried = true
			case st.Terminal():
				changes = append(changes, change{run: run, task: task, st: st, delta: 1})
				finished = append(finished, run)
				if r := results[first[id]]; st == state.Success && r.Follow != nil {
					branches = append(branches, first[id])
				}
			}
		}
		return rows.Err()
	}
	outcomeArgs := []any{ids, tries, states, ended, outputs, errs, retry, started}
	rl := newReleaser(tx, now)
	// In a pipeline, and unless branch choices must be read first, the
	// first round of the release travels in the round trip of the
	// statement recording the outcomes (incrementRecordedSQL finds what
	// that statement recorded).
	var waitingAfter []waiting
	p, speculate := tx.(*pipeTx)
	for _, r := range results {
		if r.State == state.Success && r.Follow != nil {
			speculate = false
		}
	}
	if speculate {
		qs := []finalQuery{{sql: outcomeSQL, args: outcomeArgs, read: readOutcomes}}
		if claim != nil {
			qs = append(qs, finalQuery{sql: capsSQL, read: claim.cl.readCaps},
				finalQuery{sql: fastClaimSQL, args: claim.args(claim.max), read: claim.cl.readClaimed})
		}
		qs = append(qs, finalQuery{sql: incrementRecordedSQL, args: []any{ids, recordedFinalStates, true, queueWhenAllSucceeded, now},
			read: func(rows pgx.Rows) error {
				var err error
				waitingAfter, err = rl.readIncrement(rows)
				return err
			}})
		if err := p.queryAll(ctx, qs...); err != nil {
			return nil, err
		}
		if claim != nil && claim.cl.capped == 0 && len(claim.cl.out) < claim.max {
			// Sent with COMMIT, before the run's settling.
			p.beforeCommit(fastClaimSQL, claim.args(claim.max-len(claim.cl.out)), claim.cl.readClaimed)
		}
	} else {
		if claim != nil {
			// Sent with COMMIT, after every statement of the finish, and
			// before the run's settling (which follows): the run rows stay
			// locked only from the settling to the commit.
			p.beforeCommit(capsSQL, nil, claim.cl.readCaps)
			p.beforeCommit(fastClaimSQL, claim.args(claim.max), claim.cl.readClaimed)
		}
		rows, err := tx.Query(ctx, outcomeSQL, outcomeArgs...)
		if err != nil {
			return nil, err
		}
		err = readOutcomes(rows)
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	// The final log chunks of the tries recorded (cleared ones too: the
	// try ran), in instance order.
	var (
		logAs   []store.Try
		logData [][]byte
	)
	for _, i := range order {
		if r := results[i]; len(r.Log) > 0 {
			if _, ok := applied[r.ID]; ok {
				logAs = append(logAs, r.Try)
				logData = append(logData, r.Log)
			}
		}
	}
	if err := appendLogsIn(ctx, tx, logAs, logData, s.logCap); err != nil {
		return nil, err
	}
	var missed []int64
	for i, r := range results {
		if st, ok := applied[r.ID]; ok && first[r.ID] == i {
			out[i].Applied, out[i].State = true, st
		} else {
			missed = append(missed, r.ID)
		}
	}
	if len(missed) > 0 {
		// Report the current state of instances whose report was refused.
		rows, err := tx.Query(ctx, "SELECT id, state FROM task_instances WHERE id = ANY($1)", missed)
		if err != nil {
			return nil, err
		}
		cur := map[int64]state.TaskState{}
		for rows.Next() {
			var id int64
			var st state.TaskState
			if err := rows.Scan(&id, &st); err != nil {
				rows.Close()
				return nil, err
			}
			cur[id] = st
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		for i := range out {
			if !out[i].Applied {
				out[i].State = cur[out[i].ID]
			}
		}
	}
	// Deferred callers waiting on the calls that ended are counted off,
	// and queued again when they wait on none.
	slices.Sort(calls)
	if err := wakeWaiters(ctx, tx, calls, now); err != nil {
		return nil, err
	}
	if err := s.fault(FaultFinishRecorded); err != nil {
		return nil, err
	}
	rl.runsChanged = retried
	for _, run := range finished {
		rl.touch(run, 1)
	}
	for _, i := range branches {
		r := results[i]
		skip, err := branchSkips(ctx, tx, runOf[r.ID], taskOf[r.ID], r.Follow)
		if err != nil {
			return nil, err
		}
		for _, t := range skip {
			rl.forced[runTask{runOf[r.ID], t}] = true
		}
	}
	if speculate {
		// The first round of the release is done: decide what it left
		// waiting, and propagate.
		next, err := rl.decide(ctx, waitingAfter)
		if err != nil {
			return nil, err
		}
		if err := rl.release(ctx, next); err != nil {
			return nil, err
		}
	} else if err := rl.release(ctx, changes); err != nil {
		return nil, err
	}
	if err := rl.reconsider(ctx, restarts); err != nil {
		return nil, err
	}
	for i := range out {
		if st, ok := rl.final[out[i].ID]; ok && out[i].Applied {
			out[i].State = st
		}
	}
	if err := s.fault(FaultFinishReleased); err != nil {
		return nil, err
	}
	if err := rl.settle(ctx); err != nil {
		return nil, err
	}
	if err := s.fault(FaultFinishSettled); err != nil {
		return nil, err
	}
	return out, rl.notify(ctx)
}

// outcomeSQL records the outcomes of tries, each a compare-and-set on
// (running or restarting, try number): $1 instance, $2 try, $3 state
// (success, failed, skipped or up_for_retry), $4 end, $5 output, $6
// error, $7 next retry, $8 start (NULL: keep the claim time). A
// restarting instance (cleared while running) drops the outcome of its
// try and goes back to waiting (none), to be decided again.
const outcomeSQL = `
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
		WHERE t.id = u.id AND t.id = ANY($1) AND t.try_number = u.try AND t.state IN ('running', 'restarting')
		RETURNING t.id, t.run_id, t.task_id, t.state, t.map_index`

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
				SELECT id FROM task_instances WHERE state = 'up_for_retry' AND next_retry_at <= $1
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
				resumed = true, next_check_at = NULL
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
	return s.failWhere(ctx, "fail zombies", "heartbeat_at < $1", staleBefore, now, msg)
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
			WHERE state IN ('running', 'restarting') AND `+cond+`
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
		tag, err := tx.Exec(ctx, `
			UPDATE task_instances t SET state = 'queued', try_number = t.try_number - 1, started_at = NULL,
				heartbeat_at = NULL, worker_id = '', hostname = '', pid = 0
			FROM unnest($1::bigint[], $2::int[]) AS u(id, try)
			WHERE t.id = u.id AND t.try_number = u.try AND t.state = 'running'`, ids, nums)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT t.id FROM task_instances t
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
		if tag.RowsAffected() > 0 {
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
