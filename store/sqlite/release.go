package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// engine applies state changes to task instances inside one writing
// transaction: it records outcomes, bumps the upstream counters of the
// downstream instances, decides them by their trigger rules (cascading
// skips and upstream failures until nothing changes) and finally settles
// the runs it touched.
type engine struct {
	w       *txn
	now     time.Time
	runs    map[int64]*runInfo
	touched []int64 // runs to settle, in first-touch order
	seen    map[int64]bool
	// rows holds the instances of a finish batch, read in one statement
	// before its results are recorded (prefetch); each is used once. A
	// nil entry: the instance does not exist.
	rows map[int64]*recordRow
}

// recordRow is an instance as recording a result reads it.
type recordRow struct {
	a        tryRow
	rd, mb   int64
	cur      string
	limited  bool
	mapIndex int
}

const recordCols = `run_id, task_id, state, try_number, max_tries, retry_delay_ns, max_backoff_ns, limited, map_index`

func scanRecordRow(sc interface{ Scan(...any) error }, dest ...any) (*recordRow, error) {
	r := &recordRow{}
	err := sc.Scan(append(dest, &r.a.runID, &r.a.taskID, &r.cur, &r.a.tryNumber, &r.a.maxTries, &r.rd, &r.mb, &r.limited, &r.mapIndex)...)
	return r, err
}

// prefetch reads the instances of results in one statement, for record.
// Recording a result changes only its own instance, except waking the
// callers of a call instance (wakeWaiters), which drops what is left.
func (e *engine) prefetch(results []store.Result) error {
	if len(results) < 2 {
		return nil
	}
	ids := make([]int64, len(results))
	e.rows = make(map[int64]*recordRow, len(results))
	for i, r := range results {
		ids[i] = r.ID
		e.rows[r.ID] = nil
	}
	rows, err := e.w.query(`SELECT id, `+recordCols+` FROM task_instances WHERE id IN (SELECT value FROM json_each(?))`, idList(ids))
	if err != nil {
		return fmt.Errorf("read the task instances of %d results: %w", len(results), err)
	}
	for rows.Next() {
		var id int64
		rec, err := scanRecordRow(rows, &id)
		if err != nil {
			rows.Close()
			return fmt.Errorf("read the task instances of %d results: %w", len(results), err)
		}
		e.rows[id] = rec
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("read the task instances of %d results: %w", len(results), err)
	}
	return nil
}

// recordRow returns the instance of id as record reads it (nil when it
// does not exist): prefetched, or read now.
func (e *engine) recordRow(id int64) (*recordRow, error) {
	if rec, ok := e.rows[id]; ok {
		delete(e.rows, id) // a second result for id reads what the first wrote
		return rec, nil
	}
	rec, err := scanRecordRow(e.w.queryRow(`SELECT `+recordCols+` FROM task_instances WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return rec, err
}

// runInfo is what the engine knows of one run.
type runInfo struct {
	id    int64
	dagID string
	state state.RunState
	st    *structure
}

func newEngine(w *txn, now time.Time) *engine {
	return &engine{w: w, now: now, runs: map[int64]*runInfo{}, seen: map[int64]bool{}}
}

// run loads (once per transaction) the state and structure of a run.
func (e *engine) run(id int64) (*runInfo, error) {
	if ri, ok := e.runs[id]; ok {
		return ri, nil
	}
	var (
		ri        = &runInfo{id: id}
		st        string
		versionID int64
	)
	err := e.w.queryRow(`SELECT dag_id, state, version_id FROM dag_runs WHERE id = ?`, id).Scan(&ri.dagID, &st, &versionID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("run #%d: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load run #%d: %w", id, err)
	}
	ri.state = state.RunState(st)
	if ri.st, err = e.w.s.structs.load(e.w.ctx, e.w, versionID); err != nil {
		return nil, err
	}
	e.runs[id] = ri
	return ri, nil
}

// touch marks a run for settling.
func (e *engine) touch(runID int64) {
	if !e.seen[runID] {
		e.seen[runID] = true
		e.touched = append(e.touched, runID)
	}
}

// finished is one instance that reached a final state, to be propagated.
type finished struct {
	taskID string
	state  state.TaskState
	// was is the final state the instance had before (its counter is
	// taken back from the downstream instances), "" when it had none.
	was state.TaskState
	// skip lists direct downstream tasks to skip (an unfollowed branch).
	skip map[string]bool
	// n is how many instances this stands for (0 means 1): consecutive
	// results of a batch that moved the same counter of one and the same
	// downstream task are released together (releaseGroup).
	n int
}

// count returns how many instances f stands for.
func (f finished) count() int { return max(f.n, 1) }

// release propagates the final states in done through run ri: for each
// direct downstream instance it moves the counters, and an instance still
// waiting (state none) is decided by its trigger rule; the skips and
// upstream failures that decides are propagated in turn.
func (e *engine) release(ri *runInfo, done ...finished) error {
	queue := done
	for len(queue) > 0 {
		f := queue[0]
		queue = queue[1:]
		if !ri.st.has(f.taskID) {
			continue
		}
		inc, dec := counterColumn(f.state), counterColumn(f.was)
		if inc == dec {
			continue
		}
		set := ""
		switch {
		case inc != "" && dec != "":
			set = inc + ` = ` + inc + ` + ?3, ` + dec + ` = ` + dec + ` - ?3`
		case inc != "":
			set = inc + ` = ` + inc + ` + ?3`
		default:
			set = dec + ` = ` + dec + ` - ?3`
		}
		downstream := ri.st.downstream(f.taskID)
		if len(downstream) == 0 {
			continue
		}
		// One statement moves the counters of every direct downstream
		// instance and returns what deciding them needs.
		const returning = ` RETURNING id, task_id, state, trigger_rule, n_upstream, up_success, up_failed,
			up_skipped, up_upstream_failed, up_removed`
		var (
			rows *sql.Rows
			err  error
		)
		n := f.count()
		if len(downstream) == 1 {
			rows, err = e.w.query(`UPDATE task_instances SET `+set+`
				WHERE run_id = ?1 AND call_key = '' AND task_id = ?2`+returning, ri.id, downstream[0], n)
		} else {
			query := e.w.query
			if len(downstream) > bulkRows {
				query = e.w.bulkQuery
			}
			rows, err = query(`UPDATE task_instances SET `+set+`
				WHERE run_id = ?1 AND call_key = '' AND task_id IN (SELECT value FROM json_each(?2))`+returning,
				ri.id, idList(downstream), n)
		}
		if err != nil {
			return fmt.Errorf("count upstream of the tasks after %q: %w", f.taskID, err)
		}
		decided := map[state.TaskState][]int64{}
		for rows.Next() {
			var (
				id   int64
				task string
				cur  string
				rule string
				u    state.Upstream
			)
			if err := rows.Scan(&id, &task, &cur, &rule, &u.Total, &u.Success, &u.Failed, &u.Skipped,
				&u.UpstreamFailed, &u.Removed); err != nil {
				rows.Close()
				return fmt.Errorf("count upstream of the tasks after %q: %w", f.taskID, err)
			}
			if state.TaskState(cur) != state.None || inc == "" {
				continue
			}
			next := e.decide(ri, dag.TriggerRule(rule), u)
			if f.skip[task] {
				next = state.Skipped
			}
			if next == state.None {
				continue
			}
			decided[next] = append(decided[next], id)
			if next.Terminal() {
				queue = append(queue, finished{taskID: task, state: next})
			}
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return fmt.Errorf("count upstream of the tasks after %q: %w", f.taskID, err)
		}
		for _, next := range []state.TaskState{state.Queued, state.Skipped, state.UpstreamFailed} {
			if err := e.apply(ri, decided[next], next); err != nil {
				return fmt.Errorf("release the tasks after %q: %w", f.taskID, err)
			}
		}
	}
	return nil
}

// decide returns the state a waiting instance moves to: queued when its
// rule is met (and the run is running; otherwise it keeps waiting),
// skipped, upstream_failed, or none to keep waiting.
func (e *engine) decide(ri *runInfo, rule dag.TriggerRule, u state.Upstream) state.TaskState {
	switch state.Decide(rule, u) {
	case state.Run:
		if ri.state == state.RunRunning {
			return state.Queued
		}
	case state.Skip:
		return state.Skipped
	case state.FailUpstream:
		return state.UpstreamFailed
	}
	return state.None
}

// apply writes a decision for instances in state none.
func (e *engine) apply(ri *runInfo, ids []int64, next state.TaskState) error {
	if len(ids) == 0 {
		return nil
	}
	var err error
	exec := e.w.exec
	if len(ids) > bulkRows {
		exec = e.w.bulkExec
	}
	switch {
	case next == state.Queued && len(ids) == 1:
		_, err = exec(`UPDATE task_instances SET state = 'queued', queued_at = ? WHERE id = ?`, us(e.now), ids[0])
	case next == state.Queued:
		_, err = exec(`UPDATE task_instances SET state = 'queued', queued_at = ?
			WHERE id IN (SELECT value FROM json_each(?))`, us(e.now), idList(ids))
	case len(ids) == 1:
		_, err = exec(`UPDATE task_instances SET state = ?, ended_at = ? WHERE id = ?`, string(next), us(e.now), ids[0])
	default:
		_, err = exec(`UPDATE task_instances SET state = ?, ended_at = ?
			WHERE id IN (SELECT value FROM json_each(?))`, string(next), us(e.now), idList(ids))
	}
	if err != nil {
		return err
	}
	if next == state.Queued {
		e.w.wake(store.TopicTasksReady)
	} else {
		e.touch(ri.id)
	}
	return nil
}

// evaluate decides a waiting instance of run ri from its current
// counters (after a clear) and propagates the result.
func (e *engine) evaluate(ri *runInfo, taskID string) error {
	var (
		id   int64
		cur  string
		rule string
		u    state.Upstream
	)
	err := e.w.queryRow(`SELECT id, state, trigger_rule, n_upstream, up_success, up_failed, up_skipped,
			up_upstream_failed, up_removed FROM task_instances WHERE run_id = ? AND task_id = ? AND call_key = ''`, ri.id, taskID).
		Scan(&id, &cur, &rule, &u.Total, &u.Success, &u.Failed, &u.Skipped, &u.UpstreamFailed, &u.Removed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("evaluate %q: %w", taskID, err)
	}
	if state.TaskState(cur) != state.None {
		return nil
	}
	next := e.decide(ri, dag.TriggerRule(rule), u)
	if next == state.None {
		return nil
	}
	if err := e.apply(ri, []int64{id}, next); err != nil {
		return fmt.Errorf("evaluate %q: %w", taskID, err)
	}
	if next.Terminal() {
		return e.release(ri, finished{taskID: taskID, state: next})
	}
	return nil
}

// settle brings the state of every touched run in line with its
// instances: a run with no unfinished instance ends with the outcome of
// its leaves (state.RunOutcome); a finished run with unfinished instances
// (after a clear or a change by hand) runs again. Queued runs are left to
// StartRuns. Only an index probe per run when it is not done.
func (e *engine) settle() error {
	for _, id := range e.touched {
		ri, err := e.run(id)
		if err != nil {
			return err
		}
		var cur string
		var ended sql.NullInt64
		if err := e.w.queryRow(`SELECT state, ended_at FROM dag_runs WHERE id = ?`, id).Scan(&cur, &ended); err != nil {
			return fmt.Errorf("settle run #%d: %w", id, err)
		}
		if state.RunState(cur) == state.RunQueued {
			continue
		}
		var unfinished bool
		if err := e.w.queryRow(unfinishedSQL, id, ri.dagID).Scan(&unfinished); err != nil {
			return fmt.Errorf("settle run #%d: %w", id, err)
		}
		if unfinished {
			if state.RunState(cur).Terminal() {
				if _, err := e.w.exec(`UPDATE dag_runs SET state = 'running', ended_at = NULL WHERE id = ?`, id); err != nil {
					return fmt.Errorf("settle run #%d: %w", id, err)
				}
				ri.state = state.RunRunning
				e.w.wake(store.TopicRunsChanged)
			}
			continue
		}
		leaves, err := e.leafStates(ri)
		if err != nil {
			return err
		}
		outcome := state.RunOutcome(leaves)
		if state.RunState(cur) != outcome || !ended.Valid {
			if _, err := e.w.exec(`UPDATE dag_runs SET state = ?, ended_at = ? WHERE id = ?`, string(outcome), us(e.now), id); err != nil {
				return fmt.Errorf("settle run #%d: %w", id, err)
			}
			ri.state = outcome
			e.w.wake(store.TopicRunsChanged)
		}
	}
	e.touched, e.seen = nil, map[int64]bool{}
	return nil
}

// unfinishedSQL asks whether run ?1 (of DAG ?2) has an unfinished
// instance through the three indexes that together hold every one
// (waitingStates, queued by DAG, running by worker), each a probe or a
// scan of the few running instances; no index covers all of them, which
// every step of a task's life would rewrite (migration 00035).
var unfinishedSQL = `SELECT EXISTS (SELECT 1 FROM task_instances INDEXED BY task_instances_waiting
		WHERE run_id = ?1 AND state IN (` + sqlList(waitingStates) + `))
	OR EXISTS (SELECT 1 FROM task_instances INDEXED BY task_instances_dag_queued
		WHERE dag_id = ?2 AND run_id = ?1 AND state = 'queued')
	OR EXISTS (SELECT 1 FROM task_instances INDEXED BY task_instances_running
		WHERE run_id = ?1 AND state IN (` + sqlList(runningStates) + `))`

func (e *engine) leafStates(ri *runInfo) ([]state.TaskState, error) {
	rows, err := e.w.query(`SELECT state FROM task_instances WHERE run_id = ? AND call_key = ''
		AND task_id IN (SELECT value FROM json_each(?))`, ri.id, idList(ri.st.leafIDs()))
	if err != nil {
		return nil, fmt.Errorf("leaves of run #%d: %w", ri.id, err)
	}
	defer rows.Close()
	var out []state.TaskState
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("leaves of run #%d: %w", ri.id, err)
		}
		out = append(out, state.TaskState(s))
	}
	return out, rows.Err()
}

// tryRow is a running try as finish reads it.
type tryRow struct {
	runID      int64
	taskID     string
	state      state.TaskState
	tryNumber  int
	maxTries   int
	retryDelay time.Duration
	maxBackoff time.Duration
}

// pendingRelease is what recording a result leaves to release.
type pendingRelease struct {
	ri *runInfo
	// restarted: the try of an instance cleared while running ended; the
	// instance waits again and is evaluated, nothing is released.
	restarted bool
	f         finished
	index     int // of the outcome to update with the final state
}

// record applies one result as a compare-and-set on (running or
// restarting, try number) and returns what is left to release (nil when
// nothing changed). A failure with tries left and not Permanent becomes
// up_for_retry after its retry delay. The try of an instance cleared
// while running (restarting) is not recorded: the instance waits again.
func (e *engine) record(r store.Result) (store.FinishOutcome, *pendingRelease, error) {
	out := store.FinishOutcome{Try: r.Try}
	rec, err := e.recordRow(r.ID)
	if err != nil {
		return out, nil, fmt.Errorf("finish task instance #%d: %w", r.ID, err)
	}
	if rec == nil {
		return out, nil, nil
	}
	a, limited, mapIndex := rec.a, rec.limited, rec.mapIndex
	a.state, a.retryDelay, a.maxBackoff = state.TaskState(rec.cur), time.Duration(rec.rd), time.Duration(rec.mb)
	out.State = a.state
	if a.tryNumber != r.TryNumber || (a.state != state.Running && a.state != state.Restarting) {
		return out, nil, nil
	}
	if limited {
		// The try's slots free up (the trigger of migration 00006 counts):
		// wake a claimer.
		e.w.wake(store.TopicTasksReady)
	}
	ri, err := e.run(a.runID)
	if err != nil {
		return out, nil, err
	}
	ended := r.EndedAt
	if ended.IsZero() {
		ended = e.now
	}
	if len(r.Log) > 0 {
		if err := e.w.s.appendLogIn(e.w, r.Try, r.Log); err != nil {
			return out, nil, fmt.Errorf("append final log chunk of task instance #%d try %d: %w", r.ID, r.TryNumber, err)
		}
	}
	if r.State == state.Deferred && a.state == state.Running {
		return e.deferTry(r, out)
	}
	if a.state == state.Restarting {
		if _, err := e.w.exec(`UPDATE task_instances SET state = 'none', queued_at = NULL, started_at = NULL,
				ended_at = NULL, heartbeat_at = NULL, next_retry_at = NULL, worker_id = '', hostname = '', pid = 0,
				output = NULL, error = '', resumed = false, deferred_state = NULL, event_payload = NULL, wait_event = NULL, next_check_at = NULL, trigger_timeout = NULL WHERE id = ?`, r.ID); err != nil {
			return out, nil, fmt.Errorf("finish restarting task instance #%d: %w", r.ID, err)
		}
		out.Applied, out.State = true, state.None
		return out, &pendingRelease{ri: ri, restarted: true, f: finished{taskID: a.taskID}}, nil
	}

	next, errText := r.State, r.Error
	if next == state.Deferred {
		next, errText = state.Failed, "deferred after the try was taken away"
	}
	var skip map[string]bool
	if ri.st.has(a.taskID) && next == state.Success && r.Follow != nil {
		var bad string
		skip, bad = branchSkips(ri.st, a.taskID, r.Follow)
		if bad != "" {
			next, skip = state.Failed, nil
			errText = fmt.Sprintf("branch %q chose %q, which is not one of its direct downstream tasks %q",
				a.taskID, bad, ri.st.downstream(a.taskID))
		}
	}
	var nextRetry any
	if next == state.Failed && !r.Permanent && a.tryNumber < a.maxTries {
		next = state.UpForRetry
		nextRetry = us(ended.Add(state.RetryDelay(a.retryDelay, a.maxBackoff, a.tryNumber, rand.Float64())))
	}
	var started any
	if !r.StartedAt.IsZero() {
		started = us(r.StartedAt)
	}
	if _, err := e.w.exec(`UPDATE task_instances SET state = ?, ended_at = ?, output = ?, error = ?,
			next_retry_at = ?, started_at = coalesce(?, started_at) WHERE id = ?`,
		string(next), us(ended), jsonText(r.Output), errText, nextRetry, started, r.ID); err != nil {
		return out, nil, fmt.Errorf("finish task instance #%d: %w", r.ID, err)
	}
	out.Applied, out.State = true, next
	if mapIndex >= 0 && next.Terminal() {
		e.rows = nil // the callers woken may have results in the batch
		if err := e.wakeWaiters(r.ID); err != nil {
			return out, nil, err
		}
	}
	if next == state.UpForRetry {
		e.w.wake(store.TopicRunsChanged)
		return out, nil, nil
	}
	return out, &pendingRelease{ri: ri, f: finished{taskID: a.taskID, state: next, skip: skip}}, nil
}

// finishBatch records results, then releases downstream instances, then
// settles the runs, calling the fault hook between the phases. The
// engine's time (queue and skip times, run end) is the latest EndedAt of
// the batch.
func (e *engine) finishBatch(results []store.Result) ([]store.FinishOutcome, error) {
	for _, r := range results {
		if r.EndedAt.After(e.now) {
			e.now = r.EndedAt
		}
	}
	if e.now.IsZero() {
		e.now = e.w.s.clk.Now()
	}
	out := make([]store.FinishOutcome, len(results))
	var pending []pendingRelease
	if err := e.prefetch(results); err != nil {
		return nil, err
	}
	defer func() { e.rows = nil }()
	for i, r := range results {
		o, p, err := e.record(r)
		if err != nil {
			return nil, err
		}
		out[i] = o
		if p != nil {
			p.index = i
			pending = append(pending, *p)
		}
	}
	if err := e.w.s.fault(FaultFinishRecorded); err != nil {
		return nil, err
	}
	for i := 0; i < len(pending); {
		p := pending[i]
		e.touch(p.ri.id)
		if !p.restarted {
			f := p.f
			f.n = releaseGroup(pending[i:])
			if err := e.release(p.ri, f); err != nil {
				return nil, err
			}
			i += f.n
			continue
		}
		i++
		if err := e.evaluate(p.ri, p.f.taskID); err != nil {
			return nil, err
		}
		var cur string
		if err := e.w.queryRow(`SELECT state FROM task_instances WHERE id = ?`, out[p.index].ID).Scan(&cur); err != nil {
			return nil, err
		}
		out[p.index].State = state.TaskState(cur)
	}
	if err := e.w.s.fault(FaultFinishReleased); err != nil {
		return nil, err
	}
	if err := e.settle(); err != nil {
		return nil, err
	}
	if err := e.w.s.fault(FaultFinishSettled); err != nil {
		return nil, err
	}
	return out, nil
}

// releaseGroup returns how many of the pending releases ps, from the
// first, can be released together: the same run, no branch skips, the
// same final state reached for the first time, and one and the same sole
// downstream task, e.g. the tasks of a fan-out finishing into their join.
// Released together, they move its counter once by their number: every
// trigger rule decides k upstream instances reaching one state counted at
// once as counted one by one (TestReleaseGroupDecidesAsOneByOne), and with
// one downstream task nothing released in between can reach it (no
// cycles).
func releaseGroup(ps []pendingRelease) int {
	p := ps[0]
	if len(p.f.skip) > 0 || p.f.was != "" {
		return 1
	}
	down, ok := p.ri.st.soleDownstream(p.f.taskID)
	if !ok {
		return 1
	}
	n := 1
	for _, q := range ps[1:] {
		if q.restarted || q.ri != p.ri || len(q.f.skip) > 0 || q.f.state != p.f.state || q.f.was != p.f.was {
			break
		}
		if d, ok := p.ri.st.soleDownstream(q.f.taskID); !ok || d != down {
			break
		}
		n++
	}
	return n
}

// branchSkips returns the direct downstream tasks of a Branch task to skip
// when it follows follow: every direct downstream task that is neither
// followed nor downstream of a followed one (Airflow's
// skip_all_except). bad names a followed id that is not a direct
// downstream task.
func branchSkips(st *structure, taskID string, follow []string) (skip map[string]bool, bad string) {
	downstream := st.downstream(taskID)
	for _, f := range follow {
		if !slices.Contains(downstream, f) {
			return nil, f
		}
	}
	keep := map[string]bool{}
	for _, id := range st.downstreamClosure(follow) {
		keep[id] = true
	}
	skip = map[string]bool{}
	for _, d := range downstream {
		if !keep[d] {
			skip[d] = true
		}
	}
	return skip, ""
}

// deferTry records a deferred try of a running instance: it keeps its try
// number and its worker (which may keep it parked). A deferral on calls
// with none left unfinished is queued at once, its try number lowered by
// one so that the claim resuming it gives it back.
func (e *engine) deferTry(r store.Result, out store.FinishOutcome) (store.FinishOutcome, *pendingRelease, error) {
	var started, event, saved, check, deadline any
	if !r.StartedAt.IsZero() {
		started = us(r.StartedAt)
	}
	d := r.Deferral
	if d.Event != "" {
		event = d.Event
	}
	if d.State != nil {
		saved = string(d.State)
	}
	if !d.NextCheckAt.IsZero() && !d.Poke {
		check = us(d.NextCheckAt) // a poke's is in sensor_pokes
	}
	if !d.TriggerTimeout.IsZero() {
		deadline = us(d.TriggerTimeout)
	}
	waits := 0
	if d.Calls {
		var err error
		if waits, err = e.waitingOn(r.ID); err != nil {
			return out, nil, fmt.Errorf("defer task instance #%d: %w", r.ID, err)
		}
	}
	var next string
	err := e.w.queryRow(`UPDATE task_instances SET
			state = CASE WHEN ?1 AND ?5 = 0 THEN 'queued' ELSE 'deferred' END,
			try_number = CASE WHEN ?1 AND ?5 = 0 THEN try_number - 1 ELSE try_number END,
			queued_at = CASE WHEN ?1 AND ?5 = 0 THEN ?2 ELSE queued_at END,
			waiting_on = CASE WHEN ?1 THEN ?5 ELSE waiting_on END,
			started_at = coalesce(?3, started_at), heartbeat_at = ?2,
			wait_event = ?6, next_check_at = ?7, trigger_timeout = ?8, deferred_state = ?9, event_payload = NULL
		WHERE id = ?4 RETURNING state`, d.Calls, us(e.now), started, r.ID, waits, event, check, deadline, saved).Scan(&next)
	if err != nil {
		return out, nil, fmt.Errorf("defer task instance #%d: %w", r.ID, err)
	}
	if next == string(state.Deferred) && d.Event != "" {
		// An event that arrived before the wait was recorded.
		err := e.w.queryRow(`UPDATE task_instances AS t SET state = 'queued', try_number = try_number - 1,
				queued_at = ?2, resumed = 1, next_check_at = NULL, wait_event = NULL, (event_payload, last_event_id) = (
					SELECT payload, id FROM events e WHERE e.key = t.wait_event AND e.id > t.last_event_id
						AND e.expires_at > ?2 ORDER BY e.id LIMIT 1)
			WHERE id = ?1 AND EXISTS (SELECT 1 FROM events e WHERE e.key = t.wait_event AND e.id > t.last_event_id
				AND e.expires_at > ?2)
			RETURNING state`, r.ID, us(e.now)).Scan(&next)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return out, nil, fmt.Errorf("continue task instance #%d with a kept event: %w", r.ID, err)
		}
	}
	switch {
	case d.Poke && !d.NextCheckAt.IsZero() && next == string(state.Deferred):
		if _, err := e.w.exec(`INSERT INTO sensor_pokes AS p (ti_id, try_number, due_at) VALUES (?1, ?2, ?3)
			ON CONFLICT (ti_id) DO UPDATE SET try_number = excluded.try_number, due_at = excluded.due_at,
				lease = p.lease + 1`, r.ID, r.TryNumber, us(d.NextCheckAt)); err != nil {
			return out, nil, fmt.Errorf("schedule the next poke of task instance #%d: %w", r.ID, err)
		}
	case !d.NextCheckAt.IsZero() && next == string(state.Deferred):
		e.w.wake(store.TopicRunsChanged) // the scheduler arms its timer on the earliest next check
	}
	out.Applied, out.State = true, state.TaskState(next)
	if out.State == state.Queued {
		e.w.wake(store.TopicTasksReady)
	}
	return out, nil, nil
}
