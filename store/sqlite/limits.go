package sqlite

import (
	"database/sql"
	"errors"
	"log/slog"

	"github.com/trellis-dag/trellis/store"
)

// limitInstances gives the new instances of run runID their concurrency
// keys (rendered from the DAG's params overlaid by the run's conf) and
// makes sure the counters of their keys and task caps exist with the
// declared limits. strict: a key that does not render is an error
// wrapping store.ErrInvalid; otherwise (scheduled runs) the template's
// text is the key, so the limit still holds, and the problem is logged.
func limitInstances(w *txn, runID int64, strict bool, log *slog.Logger) error {
	rows, err := w.query(`SELECT t.id, t.dag_id, t.task_id, r.run_id, r.conf, d.params, v.key_template,
			v.key_limit, v.max_active
		FROM dag_runs r
		JOIN dags d ON d.dag_id = r.dag_id
		JOIN dag_version_tasks v ON v.version_id = r.version_id AND (v.max_active > 0 OR v.key_template <> '')
		JOIN task_instances t ON t.run_id = r.id AND t.task_id = v.task_id AND t.call_key = ''
		WHERE r.id = ?`, runID)
	if err != nil {
		return err
	}
	type keyed struct {
		id                     int64
		dagID, taskID, runID   string
		conf, params, template string
		limit, cap             int
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
	if err := errors.Join(rows.Err(), rows.Close()); err != nil || len(ks) == 0 {
		return err
	}
	limits := map[string]int{}
	for _, k := range ks {
		if k.cap > 0 {
			limits[store.TaskKey(k.dagID, k.taskID)] = k.cap
		}
		if k.template == "" {
			continue
		}
		params, err := store.KeyParams([]byte(k.params), []byte(k.conf))
		var key string
		if err == nil {
			key, err = store.RenderKey(k.template, params, k.dagID, k.taskID, k.runID)
		}
		if err != nil {
			if strict {
				return err
			}
			log.Warn("concurrency key does not render; the template's text is the key", "dag", k.dagID,
				"task", k.taskID, "run", k.runID, "err", err)
			key = store.KeyPrefixKey + k.template
		}
		limits[key] = k.limit
		if _, err := w.exec(`UPDATE task_instances SET concurrency_key = ? WHERE id = ?`, key, k.id); err != nil {
			return err
		}
	}
	for key, lim := range limits {
		if _, err := w.exec(`INSERT INTO concurrency_keys (key, lim) VALUES (?, ?)
			ON CONFLICT (key) DO UPDATE SET lim = excluded.lim WHERE lim <> excluded.lim`, key, lim); err != nil {
			return err
		}
	}
	return nil
}

// chooseLimited picks the instances a claim of limit takes when limits
// apply (limited instances or DAGs with MaxActiveTasks queued): it reads
// the queued instances best first, with the counters of their pool, cap
// and key, and store.Admitter takes each that fits until limit are taken,
// so a full pool, cap or key never holds back those behind it. Those
// whose DAG is at its cap or whose counters were full when the query began
// are left out of the read. The write lock makes reading the counters and
// claiming one atomic step.
func chooseLimited(w *txn, limit int) ([]int64, error) {
	a := store.NewAdmitter(nil)
	var saturated []string
	rows, err := w.query(`SELECT d.dag_id, d.max_active_tasks - (SELECT count(*) FROM task_instances t
			INDEXED BY task_instances_running WHERE t.state IN ('running', 'restarting') AND t.dag_id = d.dag_id)
		FROM dags d WHERE d.max_active_tasks > 0`)
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
		a.Set("dag:"+d, max(n, 0))
		if n <= 0 {
			saturated = append(saturated, d)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	if saturated == nil {
		saturated = []string{}
	}
	rows, err = w.query(`SELECT t.id, t.dag_id, t.limited, t.pool, t.pool_slots,
			p.slots, p.running, tk.key, tk.lim - tk.running, ck.key, ck.lim - ck.running
		FROM task_instances t
		LEFT JOIN pools p ON p.name = t.pool
		LEFT JOIN concurrency_keys tk ON tk.key = t.task_key
		LEFT JOIN concurrency_keys ck ON ck.key = t.concurrency_key
		WHERE t.state = 'queued' AND t.dag_id NOT IN (SELECT value FROM json_each(?1))
			AND (NOT t.limited OR (
				(p.slots < 0 OR p.running + t.pool_slots <= p.slots)
				AND (t.task_key IS NULL OR tk.running < tk.lim)
				AND (t.concurrency_key IS NULL OR ck.running < ck.lim)))
		ORDER BY t.priority DESC, t.queued_at, t.id`, idList(saturated))
	if err != nil {
		return nil, err
	}
	var out []int64
	for len(out) < limit && rows.Next() {
		var (
			id           int64
			dagID, pool  string
			limited      bool
			slots        int
			pSlots, pRun sql.NullInt64
			tKey, cKey   sql.NullString
			tRoom, cRoom sql.NullInt64
		)
		if err := rows.Scan(&id, &dagID, &limited, &pool, &slots, &pSlots, &pRun, &tKey, &tRoom, &cKey, &cRoom); err != nil {
			rows.Close()
			return nil, err
		}
		c := store.Candidate{ID: id}
		if a.Known("dag:" + dagID) {
			c.Counters = append(c.Counters, store.Use{Counter: "dag:" + dagID, Amount: 1})
		}
		if limited {
			pc := "pool:" + pool
			if !a.Known(pc) && pSlots.Valid {
				room := max(int(pSlots.Int64-pRun.Int64), 0)
				if pSlots.Int64 < 0 {
					room = -1
				}
				a.Set(pc, room)
			}
			c.Counters = append(c.Counters, store.Use{Counter: pc, Amount: slots})
			for _, k := range []struct {
				key  sql.NullString
				room sql.NullInt64
			}{{tKey, tRoom}, {cKey, cRoom}} {
				if !k.key.Valid {
					continue
				}
				if !a.Known(k.key.String) {
					a.Set(k.key.String, max(int(k.room.Int64), 0))
				}
				c.Counters = append(c.Counters, store.Use{Counter: k.key.String, Amount: 1})
			}
		}
		if a.Take(c) {
			out = append(out, id)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	return out, nil
}

// countClaimed adds the limited instances ids just claimed to their
// counters, one write per counter (the counter trigger leaves claims
// alone, as on PostgreSQL).
func countClaimed(w *txn, ids []int64) error {
	list := idList(ids)
	if _, err := w.exec(`UPDATE pools SET running = running + (SELECT sum(t.pool_slots) FROM task_instances t
			WHERE t.id IN (SELECT value FROM json_each(?1)) AND t.pool = pools.name)
		WHERE name IN (SELECT t.pool FROM task_instances t WHERE t.id IN (SELECT value FROM json_each(?1)))`, list); err != nil {
		return err
	}
	_, err := w.exec(`WITH y AS (
			SELECT task_key AS key, CASE WHEN concurrency_key IS NULL THEN 1 ELSE 0 END AS q FROM task_instances
			WHERE id IN (SELECT value FROM json_each(?1)) AND task_key IS NOT NULL
			UNION ALL
			SELECT concurrency_key, 1 FROM task_instances
			WHERE id IN (SELECT value FROM json_each(?1)) AND concurrency_key IS NOT NULL
		), x AS (SELECT key, count(*) AS n, sum(q) AS q FROM y GROUP BY key)
		UPDATE concurrency_keys SET running = running + (SELECT n FROM x WHERE x.key = concurrency_keys.key),
			queued = queued - (SELECT q FROM x WHERE x.key = concurrency_keys.key)
		WHERE key IN (SELECT key FROM x)`, list)
	return err
}
