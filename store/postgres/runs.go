package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/internal/sqlorder"
)

const runCols = `r.id, r.dag_id, r.run_id, r.run_type, r.logical_date, r.interval_start, r.interval_end,
	r.state, r.conf, r.fingerprint, r.note, r.queued_at, r.started_at, r.ended_at`

func scanRun(row pgx.Row) (store.Run, error) {
	var r store.Run
	var conf []byte
	err := row.Scan(&r.ID, &r.DAGID, &r.RunID, &r.RunType, &r.LogicalDate, &r.IntervalStart, &r.IntervalEnd,
		&r.State, &conf, &r.Fingerprint, &r.Note, &r.QueuedAt, &r.StartedAt, &r.EndedAt)
	if err != nil {
		return r, err
	}
	r.Conf = json.RawMessage(conf)
	r.LogicalDate, r.IntervalStart, r.IntervalEnd, r.QueuedAt = utc(r.LogicalDate), utc(r.IntervalStart), utc(r.IntervalEnd), utc(r.QueuedAt)
	r.StartedAt, r.EndedAt = utcp(r.StartedAt), utcp(r.EndedAt)
	return r, nil
}

func collectRuns(rows pgx.Rows) ([]store.Run, error) {
	defer rows.Close()
	out := []store.Run{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// validConf checks conf is nil or a JSON object.
func validConf(conf json.RawMessage) error {
	if conf == nil {
		return nil
	}
	if !json.Valid(conf) {
		return errors.New("conf is not valid JSON")
	}
	if t := bytes.TrimSpace(conf); len(t) == 0 || t[0] != '{' {
		return errors.New("conf must be a JSON object")
	}
	return nil
}

// CreateRun creates a queued run and all its task instances (state none)
// in one transaction. The instances are copied server-side from the
// structure stored for the fingerprint (INSERT … SELECT: nothing travels
// over the network however large the DAG). An existing run with the same
// logical date, or with the same run id and logical date, is returned with
// created=false; a run id taken with another logical date is ErrConflict.
func (s *Store) CreateRun(ctx context.Context, nr store.NewRun) (store.Run, bool, error) {
	op := fmt.Sprintf("create run %q of dag %q", nr.RunID, nr.DAGID)
	switch {
	case nr.DAGID == "" || nr.RunID == "":
		return store.Run{}, false, fmt.Errorf("%s: empty DAG id or run id", op)
	case nr.RunType != store.RunScheduled && nr.RunType != store.RunManual && nr.RunType != store.RunBackfill:
		return store.Run{}, false, fmt.Errorf("%s: unknown run type %q (want scheduled, manual or backfill)", op, nr.RunType)
	case nr.Fingerprint == "":
		return store.Run{}, false, fmt.Errorf("%s: empty fingerprint", op)
	}
	if err := validConf(nr.Conf); err != nil {
		return store.Run{}, false, fmt.Errorf("%s: %w", op, err)
	}
	conf := []byte(nr.Conf)
	if conf == nil {
		conf = []byte("{}")
	}
	queued := nr.QueuedAt
	if queued.IsZero() {
		queued = s.clock.Now()
	}
	var run store.Run
	var created bool
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		var err error
		run, created, err = s.createRunTx(ctx, tx, nr, conf, queued)
		if err != nil || !created {
			return err
		}
		return notify(ctx, tx, store.TopicRunsChanged)
	})
	if err != nil {
		return store.Run{}, false, err
	}
	return run, created, nil
}

// createRunTx is CreateRun inside tx, with conf checked and queued set;
// it does not notify.
func (s *Store) createRunTx(ctx context.Context, tx pgx.Tx, nr store.NewRun, conf []byte, queued time.Time) (store.Run, bool, error) {
	var run store.Run
	existing := false
	err := func() error {
		var versionID int64
		var nTasks int
		err := tx.QueryRow(ctx, "SELECT id, n_tasks FROM dag_versions WHERE dag_id = $1 AND fingerprint = $2",
			nr.DAGID, nr.Fingerprint).Scan(&versionID, &nTasks)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: DAG %q has no structure with fingerprint %s (SyncDAGs records it)",
				store.ErrNotFound, nr.DAGID, nr.Fingerprint)
		}
		if err != nil {
			return err
		}
		run, err = scanRun(tx.QueryRow(ctx, `
			INSERT INTO dag_runs AS r (dag_id, run_id, run_type, logical_date, interval_start, interval_end,
				state, conf, version_id, fingerprint, note, queued_at, unfinished)
			VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $12)
			ON CONFLICT DO NOTHING
			RETURNING `+runCols,
			nr.DAGID, nr.RunID, string(nr.RunType), nr.LogicalDate, nr.IntervalStart, nr.IntervalEnd,
			conf, versionID, nr.Fingerprint, nr.Note, queued, nTasks))
		if errors.Is(err, pgx.ErrNoRows) {
			existing = true
			return s.existingRun(ctx, tx, nr, &run)
		}
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO task_instances (run_id, dag_id, task_id, max_tries, retries, priority, trigger_rule,
				retry_delay_ns, max_backoff_ns, timeout_ns, n_upstream`+limitCols+`)
			SELECT $1, $2, t.task_id, t.retries + 1, t.retries, t.priority, t.trigger_rule,
				t.retry_delay_ns, t.max_backoff_ns, t.timeout_ns, t.n_upstream`+limitVals("$2")+`
			FROM dag_version_tasks t WHERE t.version_id = $3 AND t.kind <> 'callable'
			ORDER BY t.ord`, run.ID, nr.DAGID, versionID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != int64(nTasks) {
			return fmt.Errorf("structure %s of DAG %q has %d tasks stored, %d expected", nr.Fingerprint, nr.DAGID,
				tag.RowsAffected(), nTasks)
		}
		if err := limitInstances(ctx, tx, []int64{run.ID}, nr.RunType != store.RunScheduled, s.log); err != nil {
			return err
		}
		return s.fault(FaultCreateRunInserted)
	}()
	if err != nil {
		return store.Run{}, false, err
	}
	return run, run.ID != 0 && !existing, nil
}

// existingRun resolves a CreateRun that hit a unique key.
func (s *Store) existingRun(ctx context.Context, tx pgx.Tx, nr store.NewRun, out *store.Run) error {
	r, err := scanRun(tx.QueryRow(ctx, "SELECT "+runCols+" FROM dag_runs r WHERE r.dag_id = $1 AND r.run_id = $2",
		nr.DAGID, nr.RunID))
	switch {
	case err == nil:
		if !r.LogicalDate.Equal(nr.LogicalDate.Truncate(time.Microsecond)) {
			return errorf("%w: run id %q of DAG %q is taken by the run for logical date %s",
				store.ErrConflict, nr.RunID, nr.DAGID, r.LogicalDate.Format(time.RFC3339Nano))
		}
		*out = r
		return nil
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	r, err = scanRun(tx.QueryRow(ctx, "SELECT "+runCols+" FROM dag_runs r WHERE r.dag_id = $1 AND r.logical_date = $2",
		nr.DAGID, nr.LogicalDate))
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			// The conflicting run was deleted meanwhile; let inTx try again.
			return errorf("%w: run %q of DAG %q conflicted with a run that is gone; try again",
				store.ErrConflict, nr.RunID, nr.DAGID)
		}
		return err
	}
	*out = r
	return nil
}

// StartRuns moves the oldest queued runs of dagID to running while fewer
// than its MaxActiveRuns (≤ 0: no limit) are running, and queues their
// ready tasks. The DAG row is locked so concurrent schedulers start each
// run once and never exceed the limit.
func (s *Store) StartRuns(ctx context.Context, dagID string, now time.Time) ([]store.Run, error) {
	op := fmt.Sprintf("start runs of dag %q", dagID)
	var started []store.Run
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		started = nil
		var maxActive int
		err := tx.QueryRow(ctx, "SELECT max_active_runs FROM dags WHERE dag_id = $1 FOR NO KEY UPDATE", dagID).Scan(&maxActive)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: no DAG %q", store.ErrNotFound, dagID)
		}
		if err != nil {
			return err
		}
		var limit any // NULL = no limit
		if maxActive > 0 {
			var running int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM dag_runs WHERE dag_id = $1 AND state = 'running'",
				dagID).Scan(&running); err != nil {
				return err
			}
			if running >= maxActive {
				return nil
			}
			limit = maxActive - running
		}
		rows, err := tx.Query(ctx, `
			UPDATE dag_runs r SET state = 'running', started_at = $2, ended_at = NULL
			WHERE r.id IN (SELECT id FROM dag_runs WHERE dag_id = $1 AND state = 'queued'
				ORDER BY logical_date, id LIMIT $3)
			RETURNING `+runCols, dagID, now, limit)
		if err != nil {
			return err
		}
		started, err = collectRuns(rows)
		if err != nil {
			return err
		}
		if len(started) == 0 {
			return nil
		}
		ids := make([]int64, len(started))
		for i, r := range started {
			ids[i] = r.ID
		}
		if err := s.activate(ctx, tx, ids, now); err != nil {
			return err
		}
		return notify(ctx, tx, store.TopicRunsChanged)
	})
	if err != nil {
		return nil, err
	}
	return started, nil
}

// activate decides the waiting instances of runs that just started
// running: roots and tasks with rule always run at once, and instances whose upstream tasks were
// already settled (marked by hand while the run was queued) are decided by
// their rules. Runs with nothing left to do are settled.
func (s *Store) activate(ctx context.Context, tx pgx.Tx, runIDs []int64, now time.Time) error {
	rows, err := tx.Query(ctx, `
		SELECT id FROM task_instances
		WHERE run_id = ANY($1) AND state = 'none'
			AND (n_upstream = 0 OR trigger_rule = 'always'
				OR up_success + up_failed + up_skipped + up_upstream_failed + up_removed > 0)
		ORDER BY id FOR NO KEY UPDATE`, runIDs)
	if err != nil {
		return err
	}
	ready, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	rl := newReleaser(tx, now)
	if err := rl.reconsider(ctx, ready); err != nil {
		return err
	}
	for _, id := range runIDs {
		rl.touch(id, 0)
	}
	return rl.finish(ctx)
}

// GetRun returns the run runID of dagID.
func (s *Store) GetRun(ctx context.Context, dagID, runID string) (store.Run, error) {
	r, err := scanRun(s.pool.QueryRow(ctx, "SELECT "+runCols+" FROM dag_runs r WHERE r.dag_id = $1 AND r.run_id = $2",
		dagID, runID))
	if err != nil {
		return r, mapErr(fmt.Sprintf("get run %q of dag %q", runID, dagID), err)
	}
	return r, nil
}

// runOrder maps RunQuery.OrderBy names (Airflow's and ours) to columns.
var runOrder = sqlorder.Order{Default: "-logical_date", Tie: "r.id", Nulls: true, Columns: map[string]string{
	"id": "r.id", "dag_id": "r.dag_id", "run_id": "r.run_id", "dag_run_id": "r.run_id",
	"run_type": "r.run_type", "logical_date": "r.logical_date", "execution_date": "r.logical_date",
	"data_interval_start": "r.interval_start", "data_interval_end": "r.interval_end",
	"state": "r.state", "queued_at": "r.queued_at", "start_date": "r.started_at", "started_at": "r.started_at",
	"end_date": "r.ended_at", "ended_at": "r.ended_at",
}}

// where builds a WHERE clause from conditions on numbered parameters.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, arg any) {
	w.args = append(w.args, arg)
	w.conds = append(w.conds, strings.ReplaceAll(cond, "?", fmt.Sprintf("$%d", len(w.args))))
}

func (w *where) sql() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// page appends LIMIT and OFFSET (limit 0: all).
func (w *where) page(limit, offset int) string {
	var b strings.Builder
	if limit > 0 {
		w.args = append(w.args, limit)
		fmt.Fprintf(&b, " LIMIT $%d", len(w.args))
	}
	if offset > 0 {
		w.args = append(w.args, offset)
		fmt.Fprintf(&b, " OFFSET $%d", len(w.args))
	}
	return b.String()
}

func timeRange(w *where, col string, gte, lte *time.Time) {
	if gte != nil {
		w.add(col+" >= ?", *gte)
	}
	if lte != nil {
		w.add(col+" <= ?", *lte)
	}
}

// ListRuns returns the runs matching q and how many match in all.
func (s *Store) ListRuns(ctx context.Context, q store.RunQuery) ([]store.Run, int, error) {
	if q.Limit < 0 || q.Offset < 0 {
		return nil, 0, fmt.Errorf("list runs: negative limit %d or offset %d", q.Limit, q.Offset)
	}
	order, err := runOrder.Clause(q.OrderBy)
	if err != nil {
		return nil, 0, fmt.Errorf("list runs: %w", err)
	}
	var w where
	if len(q.DAGIDs) > 0 {
		w.add("r.dag_id = ANY(?)", q.DAGIDs)
	}
	if len(q.States) > 0 {
		ss := make([]string, len(q.States))
		for i, st := range q.States {
			ss[i] = string(st)
		}
		w.add("r.state = ANY(?)", ss)
	}
	timeRange(&w, "r.logical_date", q.LogicalDateGTE, q.LogicalDateLTE)
	timeRange(&w, "r.started_at", q.StartDateGTE, q.StartDateLTE)
	timeRange(&w, "r.ended_at", q.EndDateGTE, q.EndDateLTE)
	cond := w.sql()
	var total int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM dag_runs r"+cond, w.args...).Scan(&total); err != nil {
		return nil, 0, mapErr("list runs", err)
	}
	pg := w.page(q.Limit, q.Offset)
	rows, err := s.pool.Query(ctx, "SELECT "+runCols+" FROM dag_runs r"+cond+order+pg, w.args...)
	if err != nil {
		return nil, 0, mapErr("list runs", err)
	}
	runs, err := collectRuns(rows)
	if err != nil {
		return nil, 0, mapErr("list runs", err)
	}
	return runs, total, nil
}

// SetRunState marks a run by hand. failed cancels it: running (and
// restarting) instances become failed — their workers learn it at their
// next heartbeat — and instances that had not finished become skipped.
// success marks every unfinished instance success. queued puts the run
// back in line for StartRuns; running starts a queued run at once.
// Setting the state a run already has changes nothing.
func (s *Store) SetRunState(ctx context.Context, dagID, runID string, to state.RunState, now time.Time) (store.Run, error) {
	op := fmt.Sprintf("set run %q of dag %q to %s", runID, dagID, to)
	if !to.Valid() {
		return store.Run{}, fmt.Errorf("%s: unknown run state %q (want queued, running, success or failed)", op, to)
	}
	var run store.Run
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		var id int64
		var from state.RunState
		err := tx.QueryRow(ctx, "SELECT id, state FROM dag_runs WHERE dag_id = $1 AND run_id = $2", dagID, runID).Scan(&id, &from)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: no run %q of DAG %q", store.ErrNotFound, runID, dagID)
		}
		if err != nil {
			return err
		}
		if from == to {
			run, err = scanRun(tx.QueryRow(ctx, "SELECT "+runCols+" FROM dag_runs r WHERE r.id = $1", id))
			return err
		}
		if !state.CanTransitionRun(from, to) {
			return errorf("%w: a %s run cannot be set to %s", store.ErrConflict, from, to)
		}
		// Lock the unfinished instances first (instances before runs).
		if _, err := tx.Exec(ctx, `SELECT id FROM task_instances
			WHERE run_id = $1 AND state IN `+unfinishedList+` ORDER BY id FOR NO KEY UPDATE`, id); err != nil {
			return err
		}
		switch to {
		case state.RunFailed:
			_, err = tx.Exec(ctx, `UPDATE task_instances SET
					state = CASE WHEN state IN ('running', 'restarting', 'deferred') THEN 'failed' ELSE 'skipped' END,
					error = CASE WHEN state IN ('running', 'restarting', 'deferred') THEN 'run marked failed' ELSE error END,
					ended_at = $2, next_retry_at = NULL, next_check_at = NULL, wait_event = NULL, trigger_timeout = NULL, deferred_state = NULL
				WHERE run_id = $1 AND state IN `+unfinishedList, id, now)
		case state.RunSuccess:
			_, err = tx.Exec(ctx, `UPDATE task_instances SET state = 'success', ended_at = $2, next_retry_at = NULL,
				next_check_at = NULL, wait_event = NULL, trigger_timeout = NULL, deferred_state = NULL
				WHERE run_id = $1 AND state IN `+unfinishedList, id, now)
		}
		if err != nil {
			return err
		}
		switch to {
		case state.RunQueued:
			_, err = tx.Exec(ctx, "UPDATE dag_runs SET state = 'queued', started_at = NULL, ended_at = NULL WHERE id = $1", id)
		case state.RunRunning:
			_, err = tx.Exec(ctx, "UPDATE dag_runs SET state = 'running', started_at = $2, ended_at = NULL WHERE id = $1", id, now)
			if err == nil {
				err = s.activate(ctx, tx, []int64{id}, now)
			}
		default:
			_, err = tx.Exec(ctx, `UPDATE dag_runs SET state = $2, ended_at = $3, started_at = coalesce(started_at, $3),
				unfinished = 0 WHERE id = $1`, id, string(to), now)
		}
		if err != nil {
			return err
		}
		if err := notify(ctx, tx, store.TopicRunsChanged, store.TopicTasksReady); err != nil {
			return err
		}
		run, err = scanRun(tx.QueryRow(ctx, "SELECT "+runCols+" FROM dag_runs r WHERE r.id = $1", id))
		return err
	})
	if err != nil {
		return store.Run{}, err
	}
	return run, nil
}

// DeleteRun removes a run that is not running, with its task instances
// and logs. A running run is ErrConflict: mark it failed first.
func (s *Store) DeleteRun(ctx context.Context, dagID, runID string) error {
	op := fmt.Sprintf("delete run %q of dag %q", runID, dagID)
	return s.inTx(ctx, op, func(tx pgx.Tx) error {
		var id int64
		var st state.RunState
		err := tx.QueryRow(ctx, "SELECT id, state FROM dag_runs WHERE dag_id = $1 AND run_id = $2 FOR UPDATE",
			dagID, runID).Scan(&id, &st)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: no run %q of DAG %q", store.ErrNotFound, runID, dagID)
		}
		if err != nil {
			return err
		}
		if st == state.RunRunning {
			return errorf("%w: the run is running; mark it failed or success first", store.ErrConflict)
		}
		// A run put back to queued may still have instances queued or
		// running: deleting them would leave their slots counted in their
		// pools and keys for ever.
		var busy bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM task_instances
			WHERE run_id = $1 AND state IN ('queued', 'running', 'restarting'))`, id).Scan(&busy); err != nil {
			return err
		}
		if busy {
			return errorf("%w: instances of the run are queued or running; mark it failed or success first", store.ErrConflict)
		}
		keys, err := runKeys(ctx, tx, []int64{id})
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM task_calls WHERE run_id = $1", id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM task_instances WHERE run_id = $1", id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM dag_runs WHERE id = $1", id); err != nil {
			return err
		}
		if err := dropUnusedKeys(ctx, tx, keys); err != nil {
			return err
		}
		return notify(ctx, tx, store.TopicRunsChanged)
	})
}
