package postgres

import (
	"context"
	"log/slog"
	"slices"

	"github.com/trellis-dag/trellis/store"
)

// limitCols and limitVals copy a task's limits into its new instances
// (t: its dag_version_tasks row; dagID: the SQL of its DAG id). An
// instance is limited when it names a pool other than default_pool, takes
// several slots, has a cap or a key, or default_pool is not unlimited.
const limitCols = `, pool, pool_slots, task_key, limited`

func limitVals(dagID string) string {
	return `, t.pool, t.pool_slots,
		CASE WHEN t.max_active > 0 THEN 'task:' || ` + dagID + ` || '.' || t.task_id END,
		t.pool <> 'default_pool' OR t.pool_slots > 1 OR t.max_active > 0 OR t.key_template <> ''
			OR coalesce((SELECT p.slots >= 0 FROM pools p WHERE p.name = 'default_pool'), false)`
}

// limitInstances gives the new instances of runs their concurrency keys
// (rendered from the DAG's params overlaid by the run's conf) and makes
// sure the counters of their keys and task caps exist with the declared
// limits. strict: a key that does not render is an error wrapping
// store.ErrInvalid; otherwise (scheduled runs) the template's text is the
// key, so the limit still holds, and the problem is logged.
func limitInstances(ctx context.Context, tx dbtx, runIDs []int64, strict bool, log *slog.Logger) error {
	rows, err := tx.Query(ctx, `
		SELECT t.id, t.dag_id, t.task_id, r.run_id, r.conf, d.params, v.key_template, v.key_limit, v.max_active
		FROM dag_runs r
		JOIN dags d ON d.dag_id = r.dag_id
		JOIN dag_version_tasks v ON v.version_id = r.version_id AND (v.max_active > 0 OR v.key_template <> '')
		JOIN task_instances t ON t.run_id = r.id AND t.task_id = v.task_id AND t.call_key = ''
		WHERE r.id = ANY($1)`, runIDs)
	if err != nil {
		return err
	}
	type keyed struct {
		id              int64
		dagID, taskID   string
		runID, template string
		conf, params    []byte
		limit, cap      int
	}
	var ks []keyed
	for rows.Next() {
		var k keyed
		if err := rows.Scan(&k.id, &k.dagID, &k.taskID, &k.runID, &k.conf, &k.params, &k.template, &k.limit, &k.cap); err != nil {
			rows.Close()
			return err
		}
		ks = append(ks, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(ks) == 0 {
		return err
	}
	limits := map[string]int{}
	var ids []int64
	var keys []string
	for _, k := range ks {
		if k.cap > 0 {
			limits[store.TaskKey(k.dagID, k.taskID)] = k.cap
		}
		if k.template == "" {
			continue
		}
		params, err := store.KeyParams(k.params, k.conf)
		var key string
		if err == nil {
			key, err = store.RenderKey(k.template, params, k.dagID, k.taskID, k.runID)
		}
		if err != nil {
			if strict {
				return &storeError{err}
			}
			log.Warn("concurrency key does not render; the template's text is the key", "dag", k.dagID,
				"task", k.taskID, "run", k.runID, "err", err)
			key = store.KeyPrefixKey + k.template
		}
		limits[key] = k.limit
		ids, keys = append(ids, k.id), append(keys, key)
	}
	names := make([]string, 0, len(limits))
	for n := range limits {
		names = append(names, n)
	}
	slices.Sort(names)
	lims := make([]int32, len(names))
	for i, n := range names {
		lims[i] = int32(limits[n])
	}
	// New counters first (in key order), then limits that changed; an
	// unchanged counter is not locked.
	if _, err := tx.Exec(ctx, `INSERT INTO concurrency_keys (key, lim)
		SELECT * FROM unnest($1::text[], $2::int[]) ORDER BY 1 ON CONFLICT (key) DO NOTHING`, names, lims); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE concurrency_keys k SET lim = u.lim
		FROM unnest($1::text[], $2::int[]) AS u(key, lim) WHERE k.key = u.key AND k.lim <> u.lim`, names, lims); err != nil {
		return err
	}
	if len(ids) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE task_instances t SET concurrency_key = u.key
			FROM unnest($1::bigint[], $2::text[]) AS u(id, key) WHERE t.id = u.id`, ids, keys); err != nil {
			return err
		}
	}
	return nil
}
