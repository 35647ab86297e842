package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/internal/sqlorder"
)

const runCols = `id, dag_id, run_id, run_type, logical_date, interval_start, interval_end, state, conf,
	fingerprint, note, queued_at, started_at, ended_at, version_id`

// runRec is a stored run with the version it runs.
type runRec struct {
	store.Run
	versionID int64
}

func scanRun(sc scanner) (runRec, error) {
	var (
		r                 runRec
		runType, st, conf string
		logical, ivs, ive int64
		queued            int64
		started, ended    sql.NullInt64
	)
	if err := sc.Scan(&r.ID, &r.DAGID, &r.RunID, &runType, &logical, &ivs, &ive, &st, &conf,
		&r.Fingerprint, &r.Note, &queued, &started, &ended, &r.versionID); err != nil {
		return runRec{}, err
	}
	r.RunType, r.State = store.RunType(runType), state.RunState(st)
	r.LogicalDate, r.IntervalStart, r.IntervalEnd = fromUS(logical), fromUS(ivs), fromUS(ive)
	r.Conf = json.RawMessage(conf)
	r.QueuedAt = fromUS(queued)
	r.StartedAt, r.EndedAt = ptrUS(started), ptrUS(ended)
	return r, nil
}

// getRun reads a run by its DAG and run id.
func getRun(ctx context.Context, q querier, dagID, runID string) (runRec, error) {
	r, err := scanRun(q.QueryRowContext(ctx, `SELECT `+runCols+` FROM dag_runs WHERE dag_id = ? AND run_id = ?`, dagID, runID))
	if errors.Is(err, sql.ErrNoRows) {
		return runRec{}, fmt.Errorf("run %q of dag %q: %w", runID, dagID, store.ErrNotFound)
	}
	return r, err
}

// getRunByID reads a run by its internal id.
func getRunByID(ctx context.Context, q querier, id int64) (runRec, error) {
	r, err := scanRun(q.QueryRowContext(ctx, `SELECT `+runCols+` FROM dag_runs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return runRec{}, fmt.Errorf("run #%d: %w", id, store.ErrNotFound)
	}
	return r, err
}

func validRunType(t store.RunType) bool {
	switch t {
	case store.RunScheduled, store.RunManual, store.RunBackfill:
		return true
	}
	return false
}

// checkConf accepts nil (stored as {}) or a JSON object.
func checkConf(conf json.RawMessage) (string, error) {
	if conf == nil {
		return "{}", nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(conf, &obj); err != nil || obj == nil {
		return "", fmt.Errorf("conf must be a JSON object, got %.80q", string(conf))
	}
	return string(conf), nil
}

// CreateRun creates a queued run with one task instance per task of the
// structure recorded for r.Fingerprint (the DAG's current one when empty),
// in one transaction: a single INSERT … SELECT copies the structure's
// tasks, so the instance rows never travel through Go. The same (dag,
// logical date) or (dag, run id) again returns the existing run.
func (s *Store) CreateRun(ctx context.Context, r store.NewRun) (store.Run, bool, error) {
	op := fmt.Sprintf("create run %q of dag %q", r.RunID, r.DAGID)
	switch {
	case r.DAGID == "":
		return store.Run{}, false, fmt.Errorf("%s: empty DAG id", op)
	case r.RunID == "":
		return store.Run{}, false, fmt.Errorf("%s: empty run id", op)
	case !validRunType(r.RunType):
		return store.Run{}, false, fmt.Errorf("%s: unknown run type %q (want scheduled, manual or backfill)", op, r.RunType)
	}
	conf, err := checkConf(r.Conf)
	if err != nil {
		return store.Run{}, false, fmt.Errorf("%s: %w", op, err)
	}
	queuedAt := r.QueuedAt
	if queuedAt.IsZero() {
		queuedAt = s.clk.Now()
	}
	var (
		out     store.Run
		created bool
	)
	err = s.write(ctx, op, func(w *txn) error {
		var err error
		out, created, err = createRunTx(w, r, conf, queuedAt)
		return err
	})
	if err != nil {
		return store.Run{}, false, err
	}
	return out, created, nil
}

// createRunTx is CreateRun inside the write transaction w, with conf
// checked and queuedAt set.
func createRunTx(w *txn, r store.NewRun, conf string, queuedAt time.Time) (store.Run, bool, error) {
	rows, err := w.query(`SELECT `+runCols+` FROM dag_runs WHERE dag_id = ? AND (run_id = ? OR logical_date = ?)`,
		r.DAGID, r.RunID, us(r.LogicalDate))
	if err != nil {
		return store.Run{}, false, err
	}
	var byRunID, byDate *runRec
	for rows.Next() {
		rec, err := scanRun(rows)
		if err != nil {
			rows.Close()
			return store.Run{}, false, err
		}
		if rec.RunID == r.RunID {
			byRunID = &rec
		} else {
			byDate = &rec
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return store.Run{}, false, err
	}
	switch {
	case byRunID != nil && byRunID.LogicalDate.Equal(fromUS(us(r.LogicalDate))):
		return byRunID.Run, false, nil
	case byRunID != nil:
		return store.Run{}, false, fmt.Errorf("%w: run id %q is taken by the run of logical date %s",
			store.ErrConflict, r.RunID, byRunID.LogicalDate.Format(time.RFC3339Nano))
	case byDate != nil:
		return byDate.Run, false, nil
	}

	var versionID int64
	fp := r.Fingerprint
	err = w.queryRow(`SELECT v.id, v.fingerprint FROM dags d JOIN dag_versions v ON v.dag_id = d.dag_id
		AND v.fingerprint = CASE WHEN ? = '' THEN d.fingerprint ELSE ? END
		WHERE d.dag_id = ?`, fp, fp, r.DAGID).Scan(&versionID, &fp)
	if errors.Is(err, sql.ErrNoRows) {
		var one int
		if err := w.queryRow(`SELECT 1 FROM dags WHERE dag_id = ?`, r.DAGID).Scan(&one); errors.Is(err, sql.ErrNoRows) {
			return store.Run{}, false, fmt.Errorf("dag %q: %w", r.DAGID, store.ErrNotFound)
		}
		return store.Run{}, false, fmt.Errorf("structure %q of dag %q (not recorded by SyncDAGs): %w", r.Fingerprint, r.DAGID, store.ErrNotFound)
	}
	if err != nil {
		return store.Run{}, false, err
	}
	var id int64
	if err := w.queryRow(`INSERT INTO dag_runs (dag_id, run_id, run_type, logical_date, interval_start,
			interval_end, state, conf, version_id, fingerprint, note, queued_at)
		VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?) RETURNING id`,
		r.DAGID, r.RunID, string(r.RunType), us(r.LogicalDate), us(r.IntervalStart), us(r.IntervalEnd),
		conf, versionID, fp, r.Note, us(queuedAt)).Scan(&id); err != nil {
		return store.Run{}, false, fmt.Errorf("insert run: %w", err)
	}
	if _, err := w.bulkExec(`INSERT INTO task_instances (run_id, dag_id, task_id, state, max_tries, retries,
			priority, trigger_rule, retry_delay_ns, max_backoff_ns, timeout_ns, n_upstream,
			pool, pool_slots, task_key, limited)
		SELECT ?1, ?2, t.task_id, 'none', t.retries + 1, t.retries, t.priority, t.trigger_rule, t.retry_delay_ns,
			t.max_backoff_ns, t.timeout_ns, t.n_upstream, t.pool, t.pool_slots,
			CASE WHEN t.max_active > 0 THEN 'task:' || ?2 || '.' || t.task_id END,
			t.pool <> 'default_pool' OR t.pool_slots > 1 OR t.max_active > 0 OR t.key_template <> ''
				OR coalesce((SELECT p.slots >= 0 FROM pools p WHERE p.name = 'default_pool'), 0)
		FROM dag_version_tasks t WHERE t.version_id = ?3 AND t.kind <> 'callable' ORDER BY t.ord`, id, r.DAGID, versionID); err != nil {
		return store.Run{}, false, fmt.Errorf("insert task instances: %w", err)
	}
	if err := limitInstances(w, id, r.RunType != store.RunScheduled, w.s.log); err != nil {
		return store.Run{}, false, err
	}
	if err := w.s.fault(FaultCreateRunInserted); err != nil {
		return store.Run{}, false, err
	}
	rec, err := getRunByID(w.ctx, w, id)
	if err != nil {
		return store.Run{}, false, err
	}
	w.wake(store.TopicRunsChanged)
	return rec.Run, true, nil
}

// StartRuns moves the oldest queued runs (by logical date) of dagID to
// running while fewer than its MaxActiveRuns run (no limit when
// MaxActiveRuns ≤ 0), and queues their ready tasks. Like the PostgreSQL
// backend it does not look at the DAG's paused flag: the scheduler
// decides whether a paused DAG's runs start. The write lock makes the
// count and the update one atomic step across processes.
func (s *Store) StartRuns(ctx context.Context, dagID string, now time.Time) ([]store.Run, error) {
	var out []store.Run
	err := s.write(ctx, fmt.Sprintf("start runs of dag %q", dagID), func(w *txn) error {
		var err error
		out, err = startRunsTx(w, dagID, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// startRunsTx is StartRuns inside the write transaction w.
func startRunsTx(w *txn, dagID string, now time.Time) ([]store.Run, error) {
	var out []store.Run
	var maxActive int
	err := w.queryRow(`SELECT max_active_runs FROM dags WHERE dag_id = ?`, dagID).Scan(&maxActive)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("dag %q: %w", dagID, store.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	limit := -1
	if maxActive > 0 {
		var running int
		if err := w.queryRow(`SELECT count(*) FROM dag_runs WHERE dag_id = ? AND state = 'running'`, dagID).Scan(&running); err != nil {
			return nil, err
		}
		limit = maxActive - running
		if limit <= 0 {
			return out, nil
		}
	}
	rows, err := w.query(`SELECT id FROM dag_runs WHERE dag_id = ? AND state = 'queued' ORDER BY logical_date, id LIMIT ? + 0`, dagID, limit)
	if err != nil {
		return nil, err
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	if err := activate(w, ids, now); err != nil {
		return nil, err
	}
	for _, id := range ids {
		rec, err := getRunByID(w.ctx, w, id)
		if err != nil {
			return nil, err
		}
		out = append(out, rec.Run)
	}
	if len(ids) > 0 {
		w.wake(store.TopicRunsChanged)
	}
	return out, nil
}

// activate moves queued runs to running and decides their waiting
// instances that can be decided: roots and tasks with rule always run at
// once (one UPDATE), and instances with upstream tasks already finished
// (marked by hand while the run was queued, or a run put back to queued)
// are decided by their rules. A run with nothing left to do is settled.
func activate(w *txn, ids []int64, now time.Time) error {
	e := newEngine(w, now)
	for _, id := range ids {
		if _, err := w.exec(`UPDATE dag_runs SET state = 'running', started_at = ?, ended_at = NULL
			WHERE id = ? AND state = 'queued'`, us(now), id); err != nil {
			return fmt.Errorf("start run #%d: %w", id, err)
		}
		ri, err := e.run(id)
		if err != nil {
			return err
		}
		ri.state = state.RunRunning
		res, err := w.exec(`UPDATE task_instances SET state = 'queued', queued_at = ?
			WHERE run_id = ? AND state = 'none' AND (n_upstream = 0 OR trigger_rule = 'always')`, us(now), id)
		if err != nil {
			return fmt.Errorf("queue root tasks of run #%d: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			w.wake(store.TopicTasksReady)
		}
		rows, err := w.query(`SELECT task_id FROM task_instances WHERE run_id = ? AND state = 'none'
			AND up_success + up_failed + up_skipped + up_upstream_failed + up_removed > 0 ORDER BY id`, id)
		if err != nil {
			return fmt.Errorf("start run #%d: %w", id, err)
		}
		var partial []string
		for rows.Next() {
			var task string
			if err := rows.Scan(&task); err != nil {
				rows.Close()
				return err
			}
			partial = append(partial, task)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		for _, task := range partial {
			if err := e.evaluate(ri, task); err != nil {
				return err
			}
		}
		e.touch(id)
	}
	return e.settle()
}

// GetRun returns one run.
func (s *Store) GetRun(ctx context.Context, dagID, runID string) (store.Run, error) {
	r, err := getRun(ctx, s.reads, dagID, runID)
	if err != nil {
		return store.Run{}, fmt.Errorf("get run: %w", mapErr(err))
	}
	return r.Run, nil
}

// runOrder maps RunQuery.OrderBy names (Airflow's and the store's) to
// columns.
var runOrder = sqlorder.Order{Default: "-logical_date", Tie: "id", Columns: map[string]string{
	"id":                  "id",
	"dag_id":              "dag_id",
	"run_id":              "run_id",
	"dag_run_id":          "run_id",
	"run_type":            "run_type",
	"state":               "state",
	"logical_date":        "logical_date",
	"execution_date":      "logical_date",
	"start_date":          "started_at",
	"started_at":          "started_at",
	"end_date":            "ended_at",
	"ended_at":            "ended_at",
	"queued_at":           "queued_at",
	"data_interval_start": "interval_start",
	"data_interval_end":   "interval_end",
}}

// where collects SQL conditions and their parameters.
type where struct {
	conds []string
	args  []any
}

func (q *where) add(cond string, args ...any) {
	q.conds = append(q.conds, cond)
	q.args = append(q.args, args...)
}

func (q *where) inList(col string, vals []string) {
	if len(vals) > 0 {
		q.add(col+` IN (SELECT value FROM json_each(?))`, idList(vals))
	}
}

func (q *where) timeRange(col string, gte, lte *time.Time) {
	if gte != nil {
		q.add(col+` >= ?`, us(*gte))
	}
	if lte != nil {
		q.add(col+` <= ?`, us(*lte))
	}
}

func (q *where) sql() string {
	if len(q.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(q.conds, " AND ")
}

// ListRuns returns the runs matching q and their total count (ignoring
// Limit and Offset).
func (s *Store) ListRuns(ctx context.Context, q store.RunQuery) ([]store.Run, int, error) {
	if q.Limit < 0 || q.Offset < 0 {
		return nil, 0, fmt.Errorf("list runs: negative limit %d or offset %d", q.Limit, q.Offset)
	}
	order, err := runOrder.Clause(q.OrderBy)
	if err != nil {
		return nil, 0, fmt.Errorf("list runs: %w", err)
	}
	var w where
	w.inList("dag_id", q.DAGIDs)
	states := make([]string, len(q.States))
	for i, st := range q.States {
		if !st.Valid() {
			return nil, 0, fmt.Errorf("list runs: unknown run state %q", st)
		}
		states[i] = string(st)
	}
	w.inList("state", states)
	w.timeRange("logical_date", q.LogicalDateGTE, q.LogicalDateLTE)
	w.timeRange("started_at", q.StartDateGTE, q.StartDateLTE)
	w.timeRange("ended_at", q.EndDateGTE, q.EndDateLTE)
	var out []store.Run
	var total int
	err = s.read(ctx, "list runs", func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM dag_runs`+w.sql(), w.args...).Scan(&total); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+runCols+` FROM dag_runs`+w.sql()+order+` LIMIT ? + 0 OFFSET ?`,
			append(w.args, sqlLimit(q.Limit), q.Offset)...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanRun(rows)
			if err != nil {
				return err
			}
			out = append(out, r.Run)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// SetRunState marks a run by hand (state.CanTransitionRun; the same
// state again changes nothing):
//   - failed cancels it: running (and restarting) instances become failed,
//     so their workers lose them at the next heartbeat, and the other
//     unfinished instances become skipped;
//   - success marks every unfinished instance success;
//   - queued puts the run back in line for StartRuns;
//   - running starts a queued run at once.
func (s *Store) SetRunState(ctx context.Context, dagID, runID string, to state.RunState, now time.Time) (store.Run, error) {
	op := fmt.Sprintf("set run %q of dag %q to %s", runID, dagID, to)
	if !to.Valid() {
		return store.Run{}, fmt.Errorf("%s: unknown run state %q (want queued, running, success or failed)", op, to)
	}
	var out store.Run
	err := s.write(ctx, op, func(w *txn) error {
		run, err := getRun(w.ctx, w, dagID, runID)
		if err != nil {
			return err
		}
		out = run.Run
		if run.State == to {
			return nil
		}
		if !state.CanTransitionRun(run.State, to) {
			return fmt.Errorf("%w: a %s run cannot be set to %s", store.ErrConflict, run.State, to)
		}
		switch to {
		case state.RunFailed:
			_, err = w.exec(`UPDATE task_instances SET
					state = CASE WHEN state IN ('running', 'restarting', 'deferred') THEN 'failed' ELSE 'skipped' END,
					error = CASE WHEN state IN ('running', 'restarting', 'deferred') THEN 'run marked failed' ELSE error END,
					ended_at = ?, next_retry_at = NULL, next_check_at = NULL, wait_event = NULL, trigger_timeout = NULL, deferred_state = NULL
				WHERE run_id = ? AND state IN (`+nonTerminalSQL+`)`, us(now), run.ID)
		case state.RunSuccess:
			_, err = w.exec(`UPDATE task_instances SET state = 'success', ended_at = ?, next_retry_at = NULL,
				next_check_at = NULL, wait_event = NULL, trigger_timeout = NULL, deferred_state = NULL
				WHERE run_id = ? AND state IN (`+nonTerminalSQL+`)`, us(now), run.ID)
		}
		if err != nil {
			return err
		}
		switch to {
		case state.RunQueued:
			_, err = w.exec(`UPDATE dag_runs SET state = 'queued', started_at = NULL, ended_at = NULL WHERE id = ?`, run.ID)
		case state.RunRunning:
			err = activate(w, []int64{run.ID}, now)
		default:
			_, err = w.exec(`UPDATE dag_runs SET state = ?, ended_at = ?, started_at = coalesce(started_at, ?)
				WHERE id = ?`, string(to), us(now), us(now), run.ID)
		}
		if err != nil {
			return err
		}
		w.wake(store.TopicRunsChanged, store.TopicTasksReady)
		rec, err := getRunByID(w.ctx, w, run.ID)
		out = rec.Run
		return err
	})
	if err != nil {
		return store.Run{}, err
	}
	return out, nil
}

// DeleteRun removes a run that is not running, with its task instances
// and logs. A running run is ErrConflict: mark it failed first.
func (s *Store) DeleteRun(ctx context.Context, dagID, runID string) error {
	return s.write(ctx, fmt.Sprintf("delete run %q of dag %q", runID, dagID), func(w *txn) error {
		run, err := getRun(w.ctx, w, dagID, runID)
		if err != nil {
			return err
		}
		if run.State == state.RunRunning {
			return fmt.Errorf("%w: the run is running; mark it failed or success first", store.ErrConflict)
		}
		// A run put back to queued may still have instances queued or
		// running: deleting them would leave their slots counted in their
		// pools and keys for ever.
		var busy bool
		if err := w.queryRow(`SELECT EXISTS (SELECT 1 FROM task_instances
			WHERE run_id = ? AND state IN ('queued', 'running', 'restarting'))`, run.ID).Scan(&busy); err != nil {
			return err
		}
		if busy {
			return fmt.Errorf("%w: instances of the run are queued or running; mark it failed or success first", store.ErrConflict)
		}
		keys, err := runKeys(w, idList([]int64{run.ID}))
		if err != nil {
			return err
		}
		if _, err := w.exec(`DELETE FROM dag_runs WHERE id = ?`, run.ID); err != nil {
			return err
		}
		if err := dropUnusedKeys(w, keys); err != nil {
			return err
		}
		w.wake(store.TopicRunsChanged)
		return nil
	})
}
