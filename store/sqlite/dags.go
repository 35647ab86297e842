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
	"github.com/trellis-dag/trellis/store"
)

// querier is what loaders need: a read transaction, the writer's
// transaction or a pool.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

const dagCols = `dag_id, fingerprint, schedule, description, tags, max_active_runs, max_active_tasks,
	is_paused, is_active, last_interval_end, next_due_at, updated_at, schedule_event`

func scanDAG(sc scanner) (store.DAG, error) {
	var (
		d              store.DAG
		tags           string
		paused, active int64
		last, next     sql.NullInt64
		updated        int64
	)
	if err := sc.Scan(&d.DAGID, &d.Fingerprint, &d.Schedule, &d.Description, &tags, &d.MaxActiveRuns,
		&d.MaxActiveTasks, &paused, &active, &last, &next, &updated, &d.EventKey); err != nil {
		return store.DAG{}, err
	}
	if err := json.Unmarshal([]byte(tags), &d.Tags); err != nil {
		return store.DAG{}, fmt.Errorf("dag %q: decode tags %q: %w", d.DAGID, tags, err)
	}
	d.Paused, d.Active = paused != 0, active != 0
	d.LastIntervalEnd, d.NextDueAt = ptrUS(last), ptrUS(next)
	d.UpdatedAt = fromUS(updated)
	return d, nil
}

// validateSpecs reports every problem of specs that would make the stored
// structure unusable: missing ids, duplicates, edges to unknown tasks,
// cycles, unknown trigger rules, negative retries.
func validateSpecs(specs []store.DAGSpec) error {
	var errs []error
	seen := map[string]bool{}
	for i, sp := range specs {
		where := fmt.Sprintf("dag spec %d (%q)", i, sp.DAGID)
		if sp.DAGID == "" {
			errs = append(errs, fmt.Errorf("%s: empty DAG id", where))
		} else if seen[sp.DAGID] {
			errs = append(errs, fmt.Errorf("%s: DAG id given twice", where))
		}
		seen[sp.DAGID] = true
		if sp.Fingerprint == "" {
			errs = append(errs, fmt.Errorf("%s: empty fingerprint", where))
		}
		tasks := map[string]bool{}
		for _, t := range sp.Tasks {
			switch {
			case t.TaskID == "":
				errs = append(errs, fmt.Errorf("%s: a task has an empty id", where))
			case tasks[t.TaskID]:
				errs = append(errs, fmt.Errorf("%s: task %q given twice", where, t.TaskID))
			}
			tasks[t.TaskID] = true
			if !t.TriggerRule.Valid() {
				errs = append(errs, fmt.Errorf("%s: task %q: unknown trigger rule %q", where, t.TaskID, t.TriggerRule))
			}
			if t.Retries < 0 {
				errs = append(errs, fmt.Errorf("%s: task %q: negative retries %d", where, t.TaskID, t.Retries))
			}
			if err := t.CheckLimits(); err != nil {
				errs = append(errs, fmt.Errorf("%s: task %q: %w", where, t.TaskID, err))
			}
		}
		for _, t := range sp.Tasks {
			for _, u := range t.Upstream {
				if !tasks[u] {
					errs = append(errs, fmt.Errorf("%s: task %q: upstream task %q does not exist", where, t.TaskID, u))
				}
			}
		}
		if len(errs) == 0 {
			if cyc := findCycle(sp.Tasks); cyc != nil {
				errs = append(errs, fmt.Errorf("%s: cycle %s", where, strings.Join(cyc, " -> ")))
			}
		}
	}
	return errors.Join(errs...)
}

// findCycle returns the task ids of one cycle (first id repeated at the
// end), or nil when the tasks form a DAG.
func findCycle(tasks []store.TaskSpec) []string {
	down := map[string][]string{}
	for _, t := range tasks {
		for _, u := range t.Upstream {
			down[u] = append(down[u], t.TaskID)
		}
	}
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var cycle []string
	var visit func(id string) bool
	visit = func(id string) bool {
		color[id] = grey
		stack = append(stack, id)
		for _, d := range down[id] {
			switch color[d] {
			case grey:
				for i, s := range stack {
					if s == d {
						cycle = append(append([]string{}, stack[i:]...), d)
						return true
					}
				}
			case white:
				if visit(d) {
					return true
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[id] = black
		return false
	}
	for _, t := range tasks {
		if color[t.TaskID] == white && visit(t.TaskID) {
			return cycle
		}
	}
	return nil
}

// SyncDAGs records the DAGs of the binary in one transaction: new DAGs are
// added unpaused, changed ones get their new fingerprint and structure
// (a new version; older versions stay for the runs that use them), and
// DAGs missing from specs are marked inactive.
func (s *Store) SyncDAGs(ctx context.Context, specs []store.DAGSpec) error {
	if err := validateSpecs(specs); err != nil {
		return fmt.Errorf("sync dags: %w", err)
	}
	now := us(s.clk.Now())
	return s.write(ctx, "sync dags", func(w *txn) error {
		ids := make([]string, 0, len(specs))
		for _, sp := range specs {
			ids = append(ids, sp.DAGID)
			tags := sp.Tags
			if tags == nil {
				tags = []string{}
			}
			tagsJSON, err := json.Marshal(tags)
			if err != nil {
				return fmt.Errorf("dag %q: encode tags: %w", sp.DAGID, err)
			}
			if _, err := w.exec(`INSERT INTO dags (dag_id, fingerprint, schedule, description, tags,
					max_active_runs, max_active_tasks, is_paused, is_active, updated_at, schedule_event)
				VALUES (?, ?, ?, ?, ?, ?, ?, 0, 1, ?, ?)
				ON CONFLICT (dag_id) DO UPDATE SET fingerprint = excluded.fingerprint,
					schedule = excluded.schedule, description = excluded.description, tags = excluded.tags,
					max_active_runs = excluded.max_active_runs, max_active_tasks = excluded.max_active_tasks,
					is_active = 1, updated_at = excluded.updated_at, schedule_event = excluded.schedule_event
				WHERE dags.fingerprint IS NOT excluded.fingerprint OR dags.schedule IS NOT excluded.schedule
					OR dags.description IS NOT excluded.description OR dags.tags IS NOT excluded.tags
					OR dags.max_active_runs IS NOT excluded.max_active_runs
					OR dags.max_active_tasks IS NOT excluded.max_active_tasks OR NOT dags.is_active
					OR dags.schedule_event IS NOT excluded.schedule_event`,
				sp.DAGID, sp.Fingerprint, sp.Schedule, sp.Description, string(tagsJSON),
				sp.MaxActiveRuns, sp.MaxActiveTasks, now, sp.EventKey); err != nil {
				return fmt.Errorf("dag %q: %w", sp.DAGID, err)
			}
			params := "{}"
			if len(sp.Params) > 0 {
				params = string(sp.Params)
			}
			if _, err := w.exec(`UPDATE dags SET params = ? WHERE dag_id = ? AND params IS NOT ?`,
				params, sp.DAGID, params); err != nil {
				return fmt.Errorf("dag %q: params: %w", sp.DAGID, err)
			}
			if err := insertVersion(w, sp, now); err != nil {
				return fmt.Errorf("dag %q: %w", sp.DAGID, err)
			}
		}
		if _, err := w.exec(`UPDATE dags SET is_active = 0, updated_at = ?
			WHERE is_active AND dag_id NOT IN (SELECT value FROM json_each(?))`, now, idList(ids)); err != nil {
			return fmt.Errorf("mark missing dags inactive: %w", err)
		}
		w.wake(store.TopicRunsChanged)
		return nil
	})
}

// insertVersion records the structure of sp unless its version exists.
func insertVersion(w *txn, sp store.DAGSpec, now int64) error {
	var id int64
	err := w.queryRow(`SELECT id FROM dag_versions WHERE dag_id = ? AND fingerprint = ?`,
		sp.DAGID, sp.Fingerprint).Scan(&id)
	if err == nil {
		return nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("look up version %s: %w", sp.Fingerprint, err)
	}
	if err := w.queryRow(`INSERT INTO dag_versions (dag_id, fingerprint, n_tasks, created_at)
		VALUES (?, ?, ?, ?) RETURNING id`, sp.DAGID, sp.Fingerprint, sp.StaticTasks(), now).Scan(&id); err != nil {
		return fmt.Errorf("insert version %s: %w", sp.Fingerprint, err)
	}
	down := map[string][]string{}
	for _, t := range sp.Tasks {
		for _, u := range t.Upstream {
			down[u] = append(down[u], t.TaskID)
		}
	}
	const cols = 19
	const batch = 500 // 9,500 parameters per statement, well under SQLite's limit
	for start := 0; start < len(sp.Tasks); start += batch {
		end := min(start+batch, len(sp.Tasks))
		var b strings.Builder
		b.WriteString(`INSERT INTO dag_version_tasks (version_id, task_id, ord, kind, trigger_rule, priority,
			retries, retry_delay_ns, max_backoff_ns, timeout_ns, upstream, downstream, n_upstream, is_leaf,
			pool, pool_slots, max_active, key_template, key_limit) VALUES `)
		args := make([]any, 0, (end-start)*cols)
		for i := start; i < end; i++ {
			t := sp.Tasks[i]
			if i > start {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
			up, ds := t.Upstream, down[t.TaskID]
			if up == nil {
				up = []string{}
			}
			if ds == nil {
				ds = []string{}
			}
			rule := t.TriggerRule
			pool, slots := t.Pool, t.PoolSlots
			if pool == "" {
				pool = dag.DefaultPool
			}
			if slots < 1 {
				slots = 1
			}
			args = append(args, id, t.TaskID, i, string(t.Kind), string(rule), t.Priority, t.Retries,
				int64(t.RetryDelay), int64(t.MaxBackoff), int64(t.Timeout), idList(up), idList(ds),
				len(up), len(ds) == 0 && t.Kind != dag.KindCallable, pool, slots, t.MaxActive, t.KeyTemplate, t.KeyLimit)
		}
		// Run unprepared: the statement depends on the batch size and is
		// not worth a place in the statement cache.
		if _, err := w.tx.ExecContext(w.ctx, b.String(), args...); err != nil {
			return fmt.Errorf("insert tasks of version %s: %w", sp.Fingerprint, err)
		}
	}
	return nil
}

// GetDAG returns the stored record of a DAG.
func (s *Store) GetDAG(ctx context.Context, dagID string) (store.DAG, error) {
	d, err := scanDAG(s.rdb.QueryRowContext(ctx, `SELECT `+dagCols+` FROM dags WHERE dag_id = ?`, dagID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.DAG{}, fmt.Errorf("get dag %q: %w", dagID, store.ErrNotFound)
	}
	if err != nil {
		return store.DAG{}, fmt.Errorf("get dag %q: %w", dagID, mapErr(err))
	}
	return d, nil
}

// ListDAGs returns DAGs ordered by id (only active ones when onlyActive),
// a page of them when limit > 0, and the total count.
func (s *Store) ListDAGs(ctx context.Context, onlyActive bool, limit, offset int) ([]store.DAG, int, error) {
	if limit < 0 || offset < 0 {
		return nil, 0, fmt.Errorf("list dags: negative limit %d or offset %d", limit, offset)
	}
	var out []store.DAG
	var total int
	err := s.read(ctx, "list dags", func(tx *sql.Tx) error {
		where := ""
		if onlyActive {
			where = " WHERE is_active"
		}
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM dags`+where).Scan(&total); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+dagCols+` FROM dags`+where+` ORDER BY dag_id LIMIT ? + 0 OFFSET ?`,
			sqlLimit(limit), offset)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			d, err := scanDAG(rows)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// sqlLimit turns "0 = no limit" into SQLite's LIMIT -1.
func sqlLimit(limit int) int {
	if limit <= 0 {
		return -1
	}
	return limit
}

// SetPaused pauses or unpauses a DAG.
func (s *Store) SetPaused(ctx context.Context, dagID string, paused bool) error {
	now := us(s.clk.Now())
	return s.write(ctx, fmt.Sprintf("set dag %q paused=%v", dagID, paused), func(w *txn) error {
		res, err := w.exec(`UPDATE dags SET is_paused = ?, updated_at = ? WHERE dag_id = ?`, paused, now, dagID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		w.wake(store.TopicRunsChanged)
		return nil
	})
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "unset"
	}
	return t.UTC().Format(time.RFC3339Nano)
}
