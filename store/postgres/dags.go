package postgres

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

const dagCols = `dag_id, fingerprint, schedule, description, tags, max_active_runs, max_active_tasks,
	is_paused, is_active, last_interval_end, next_due_at, updated_at, schedule_event`

func scanDAG(row pgx.Row) (store.DAG, error) {
	var d store.DAG
	err := row.Scan(&d.DAGID, &d.Fingerprint, &d.Schedule, &d.Description, &d.Tags, &d.MaxActiveRuns,
		&d.MaxActiveTasks, &d.Paused, &d.Active, &d.LastIntervalEnd, &d.NextDueAt, &d.UpdatedAt, &d.EventKey)
	if err != nil {
		return d, err
	}
	if d.Tags == nil {
		d.Tags = []string{}
	}
	d.LastIntervalEnd, d.NextDueAt, d.UpdatedAt = utcp(d.LastIntervalEnd), utcp(d.NextDueAt), utc(d.UpdatedAt)
	return d, nil
}

// validateSpecs reports the first problem of specs that would make stored
// structures inconsistent.
func validateSpecs(specs []store.DAGSpec) error {
	seen := make(map[string]bool, len(specs))
	for i, sp := range specs {
		if sp.DAGID == "" {
			return fmt.Errorf("spec %d: empty DAG id", i)
		}
		if seen[sp.DAGID] {
			return fmt.Errorf("DAG %q: listed twice", sp.DAGID)
		}
		seen[sp.DAGID] = true
		if sp.Fingerprint == "" {
			return fmt.Errorf("DAG %q: empty fingerprint", sp.DAGID)
		}
		ids := make(map[string]bool, len(sp.Tasks))
		for _, t := range sp.Tasks {
			if t.TaskID == "" {
				return fmt.Errorf("DAG %q: task with an empty id", sp.DAGID)
			}
			if ids[t.TaskID] {
				return fmt.Errorf("DAG %q: task %q listed twice", sp.DAGID, t.TaskID)
			}
			ids[t.TaskID] = true
		}
		for _, t := range sp.Tasks {
			if t.TriggerRule != "" && !t.TriggerRule.Valid() {
				return fmt.Errorf("DAG %q task %q: unknown trigger rule %q", sp.DAGID, t.TaskID, t.TriggerRule)
			}
			if t.Retries < 0 || t.RetryDelay < 0 || t.MaxBackoff < 0 || t.Timeout < 0 {
				return fmt.Errorf("DAG %q task %q: negative retries, retry delay, backoff or timeout", sp.DAGID, t.TaskID)
			}
			if err := t.CheckLimits(); err != nil {
				return fmt.Errorf("DAG %q task %q: %w", sp.DAGID, t.TaskID, err)
			}
			for _, u := range t.Upstream {
				if !ids[u] {
					return fmt.Errorf("DAG %q task %q: upstream task %q is not in the DAG", sp.DAGID, t.TaskID, u)
				}
				if u == t.TaskID {
					return fmt.Errorf("DAG %q task %q: depends on itself", sp.DAGID, t.TaskID)
				}
			}
		}
	}
	return nil
}

// SyncDAGs records the DAGs of the binary. A structure (fingerprint) seen
// for the first time is stored once, its tasks copied in with COPY; DAG
// rows are upserted and only rewritten when something changed; DAGs not
// in specs become inactive.
func (s *Store) SyncDAGs(ctx context.Context, specs []store.DAGSpec) error {
	if err := validateSpecs(specs); err != nil {
		return fmt.Errorf("sync dags: %w", err)
	}
	now := s.clock.Now()
	n := len(specs)
	ids, fps, scheds, descs, tags := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	mar, mat, ntasks := make([]int32, n), make([]int32, n), make([]int32, n)
	evs := make([]string, n)
	params := make([]string, n)
	for i, sp := range specs {
		evs[i] = sp.EventKey
		tg := sp.Tags
		if tg == nil {
			tg = []string{}
		}
		b, err := json.Marshal(tg)
		if err != nil {
			return fmt.Errorf("sync dags: DAG %q tags: %w", sp.DAGID, err)
		}
		ids[i], fps[i], scheds[i], descs[i], tags[i] = sp.DAGID, sp.Fingerprint, sp.Schedule, sp.Description, string(b)
		mar[i], mat[i], ntasks[i] = int32(sp.MaxActiveRuns), int32(sp.MaxActiveTasks), int32(sp.StaticTasks())
		params[i] = "{}"
		if len(sp.Params) > 0 {
			params[i] = string(sp.Params)
		}
	}
	newVersions := false
	err := s.inTx(ctx, "sync dags", func(tx pgx.Tx) error {
		newVersions = false
		_, err := tx.Exec(ctx, `
			INSERT INTO dags AS d (dag_id, fingerprint, schedule, description, tags, max_active_runs,
				max_active_tasks, is_active, updated_at, schedule_event)
			SELECT u.id, u.fp, u.sched, u.descr, ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)),
				u.mar, u.mat, true, $8, u.ev
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[], $9::text[])
				AS u(id, fp, sched, descr, tags, mar, mat, ev)
			ON CONFLICT (dag_id) DO UPDATE SET
				fingerprint = EXCLUDED.fingerprint, schedule = EXCLUDED.schedule,
				description = EXCLUDED.description, tags = EXCLUDED.tags,
				max_active_runs = EXCLUDED.max_active_runs, max_active_tasks = EXCLUDED.max_active_tasks,
				is_active = true, updated_at = EXCLUDED.updated_at, schedule_event = EXCLUDED.schedule_event
			WHERE (d.fingerprint, d.schedule, d.description, d.tags, d.max_active_runs, d.max_active_tasks, d.is_active,
				d.schedule_event)
				IS DISTINCT FROM (EXCLUDED.fingerprint, EXCLUDED.schedule, EXCLUDED.description, EXCLUDED.tags,
				EXCLUDED.max_active_runs, EXCLUDED.max_active_tasks, true, EXCLUDED.schedule_event)`,
			ids, fps, scheds, descs, tags, mar, mat, now, evs)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			INSERT INTO dag_versions (dag_id, fingerprint, n_tasks)
			SELECT * FROM unnest($1::text[], $2::text[], $3::int[])
			ON CONFLICT (dag_id, fingerprint) DO NOTHING
			RETURNING id, dag_id`, ids, fps, ntasks)
		if err != nil {
			return err
		}
		created := map[string]int64{}
		for rows.Next() {
			var id int64
			var dagID string
			if err := rows.Scan(&id, &dagID); err != nil {
				rows.Close()
				return err
			}
			created[dagID] = id
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(created) > 0 {
			newVersions = true
			var taskRows [][]any
			for _, sp := range specs {
				if vid, ok := created[sp.DAGID]; ok {
					taskRows = append(taskRows, versionTaskRows(vid, sp)...)
				}
			}
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"dag_version_tasks"},
				[]string{"version_id", "task_id", "ord", "kind", "trigger_rule", "priority", "retries",
					"retry_delay_ns", "max_backoff_ns", "timeout_ns", "upstream", "downstream", "n_upstream", "is_leaf",
					"pool", "pool_slots", "max_active", "key_template", "key_limit"},
				pgx.CopyFromRows(taskRows))
			if err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE dags SET is_active = false, updated_at = $2
			WHERE is_active AND dag_id <> ALL($1::text[])`, ids, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE dags d SET params = u.p::jsonb
			FROM unnest($1::text[], $2::text[]) AS u(id, p)
			WHERE d.dag_id = u.id AND d.params IS DISTINCT FROM u.p::jsonb`, ids, params); err != nil {
			return err
		}
		return notify(ctx, tx, store.TopicRunsChanged)
	})
	if err != nil || !newVersions {
		return err
	}
	// Fresh statistics keep the planner on the (version, task) key when
	// releasing downstream tasks; without them a large new structure looks
	// tiny until autovacuum gets to it, and finishes scan it whole.
	if _, err := s.pool.Exec(ctx, "ANALYZE dag_version_tasks"); err != nil {
		s.log.Warn("analyze dag_version_tasks failed", "err", errText(err))
	}
	return nil
}

// versionTaskRows are the dag_version_tasks rows of one structure.
func versionTaskRows(versionID int64, sp store.DAGSpec) [][]any {
	down := make(map[string][]string, len(sp.Tasks))
	for _, t := range sp.Tasks {
		for _, u := range t.Upstream {
			down[u] = append(down[u], t.TaskID)
		}
	}
	rows := make([][]any, 0, len(sp.Tasks))
	for i, t := range sp.Tasks {
		rule := t.TriggerRule
		if rule == "" {
			rule = dag.AllSuccess
		}
		up := t.Upstream
		if up == nil {
			up = []string{}
		}
		dn := down[t.TaskID]
		if dn == nil {
			dn = []string{}
		}
		pool, slots := t.Pool, t.PoolSlots
		if pool == "" {
			pool = dag.DefaultPool
		}
		if slots < 1 {
			slots = 1
		}
		rows = append(rows, []any{versionID, t.TaskID, int32(i), string(t.Kind), string(rule), int32(t.Priority),
			int32(t.Retries), int64(t.RetryDelay), int64(t.MaxBackoff), int64(t.Timeout), up, dn,
			int32(len(up)), len(dn) == 0 && t.Kind != dag.KindCallable, pool, int32(slots), int32(t.MaxActive), t.KeyTemplate, int32(t.KeyLimit)})
	}
	return rows
}

// GetDAG returns the stored record of dagID.
func (s *Store) GetDAG(ctx context.Context, dagID string) (store.DAG, error) {
	d, err := scanDAG(s.pool.QueryRow(ctx, "SELECT "+dagCols+" FROM dags WHERE dag_id = $1", dagID))
	if err != nil {
		return d, mapErr(fmt.Sprintf("get dag %q", dagID), err)
	}
	return d, nil
}

// ListDAGs returns DAGs ordered by id (only active ones when onlyActive),
// limit 0 meaning all, and the total count.
func (s *Store) ListDAGs(ctx context.Context, onlyActive bool, limit, offset int) ([]store.DAG, int, error) {
	if limit < 0 || offset < 0 {
		return nil, 0, fmt.Errorf("list dags: negative limit %d or offset %d", limit, offset)
	}
	var lim any
	if limit > 0 {
		lim = limit
	}
	rows, err := s.pool.Query(ctx, "SELECT "+dagCols+" FROM dags WHERE is_active OR NOT $1 ORDER BY dag_id LIMIT $2 OFFSET $3",
		onlyActive, lim, offset)
	if err != nil {
		return nil, 0, mapErr("list dags", err)
	}
	out := []store.DAG{}
	for rows.Next() {
		d, err := scanDAG(rows)
		if err != nil {
			rows.Close()
			return nil, 0, mapErr("list dags", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, mapErr("list dags", err)
	}
	var total int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM dags WHERE is_active OR NOT $1", onlyActive).Scan(&total); err != nil {
		return nil, 0, mapErr("list dags", err)
	}
	return out, total, nil
}

// SetPaused pauses or unpauses a DAG.
func (s *Store) SetPaused(ctx context.Context, dagID string, paused bool) error {
	op := fmt.Sprintf("set dag %q paused=%v", dagID, paused)
	return s.inTx(ctx, op, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE dags SET is_paused = $2, updated_at = $3 WHERE dag_id = $1", dagID, paused, s.clock.Now())
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errorf("%w: no DAG %q", store.ErrNotFound, dagID)
		}
		return notify(ctx, tx, store.TopicRunsChanged)
	})
}
