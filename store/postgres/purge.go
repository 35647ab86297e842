package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/store"
)

// purgeRuns returns the condition on dag_runs r selecting the runs of q,
// and its arguments.
func purgeRuns(q store.PurgeQuery) (where, error) {
	var w where
	if q.Before.IsZero() {
		return w, errors.New("purge: no time to purge before")
	}
	w.conds = append(w.conds, "r.state IN ('success', 'failed')")
	w.add("r.ended_at < ?", q.Before)
	if !q.After.IsZero() {
		w.add("r.ended_at >= ?", q.After)
	}
	if q.DAGID != "" {
		w.add("r.dag_id = ?", q.DAGID)
	}
	if len(q.ExceptDAGIDs) > 0 {
		w.add("r.dag_id <> ALL(?)", q.ExceptDAGIDs)
	}
	if q.Limit < 0 {
		return w, fmt.Errorf("purge: negative limit %d", q.Limit)
	}
	return w, nil
}

// PurgeRuns implements store.Store.
func (s *Store) PurgeRuns(ctx context.Context, q store.PurgeQuery) (store.Purged, error) {
	var p store.Purged
	w, err := purgeRuns(q)
	if err != nil {
		return p, err
	}
	if q.DryRun {
		err := s.pool.QueryRow(ctx, `WITH r AS (SELECT r.id FROM dag_runs r`+w.sql()+w.page(q.Limit, 0)+`)
			SELECT (SELECT count(*) FROM r),
				(SELECT count(*) FROM task_instances t WHERE t.run_id IN (SELECT id FROM r)),
				(SELECT count(*) FROM task_logs l JOIN task_instances t ON t.id = l.ti_id WHERE t.run_id IN (SELECT id FROM r))`,
			w.args...).Scan(&p.Runs, &p.TaskInstances, &p.Logs)
		return p, mapErr("purge runs (dry run)", err)
	}
	// Oldest first; runs another transaction holds (a clear, a mark) are
	// left for the next call.
	pick := `SELECT r.id FROM dag_runs r` + w.sql() + ` ORDER BY r.ended_at, r.id` + w.page(q.Limit, 0) + ` FOR UPDATE SKIP LOCKED`
	err = s.inTx(ctx, "purge runs", func(tx pgx.Tx) error {
		p = store.Purged{}
		rows, err := tx.Query(ctx, pick, w.args...)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(ids) == 0 {
			return err
		}
		if q.MaxTaskInstances > 0 && len(ids) > 1 {
			rows, err := tx.Query(ctx, `SELECT run_id, count(*) FROM task_instances WHERE run_id = ANY($1) GROUP BY run_id`, ids)
			if err != nil {
				return err
			}
			counts := map[int64]int{}
			var id int64
			var n int
			if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { counts[id] = n; return nil }); err != nil {
				return err
			}
			ids = store.CapRuns(ids, counts, q.MaxTaskInstances)
		}
		// Logs go with their instances (ON DELETE CASCADE); counted first.
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM task_logs l JOIN task_instances t ON t.id = l.ti_id
			WHERE t.run_id = ANY($1)`, ids).Scan(&p.Logs); err != nil {
			return err
		}
		keys, err := runKeys(ctx, tx, ids)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM task_calls WHERE run_id = ANY($1)", ids); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "DELETE FROM task_instances WHERE run_id = ANY($1)", ids)
		if err != nil {
			return err
		}
		p.TaskInstances = int(tag.RowsAffected())
		if tag, err = tx.Exec(ctx, "DELETE FROM dag_runs WHERE id = ANY($1)", ids); err != nil {
			return err
		}
		p.Runs = int(tag.RowsAffected())
		if err := dropUnusedKeys(ctx, tx, keys); err != nil {
			return err
		}
		return notify(ctx, tx, store.TopicRunsChanged)
	})
	if err != nil {
		return store.Purged{}, err
	}
	return p, nil
}

// PurgeLogs implements store.Store.
func (s *Store) PurgeLogs(ctx context.Context, q store.PurgeQuery) (int, error) {
	w, err := purgeRuns(q)
	if err != nil {
		return 0, err
	}
	logs := `SELECT l.ti_id, l.try_number FROM dag_runs r JOIN task_instances t ON t.run_id = r.id
		JOIN task_logs l ON l.ti_id = t.id` + w.sql()
	var n int64
	if q.DryRun {
		err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (`+logs+w.page(q.Limit, 0)+`) x`, w.args...).Scan(&n)
		return int(n), mapErr("purge logs (dry run)", err)
	}
	del := `WITH x AS (` + logs + w.page(q.Limit, 0) + ` FOR UPDATE OF l SKIP LOCKED)
		DELETE FROM task_logs d USING x WHERE d.ti_id = x.ti_id AND d.try_number = x.try_number`
	err = s.inTx(ctx, "purge logs", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, del, w.args...)
		n = tag.RowsAffected()
		return err
	})
	return int(n), err
}

// runKeys returns the concurrency keys the instances of runs name (as
// counter names), before the runs are deleted.
func runKeys(ctx context.Context, tx pgx.Tx, runIDs []int64) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT concurrency_key FROM task_instances
		WHERE run_id = ANY($1) AND concurrency_key IS NOT NULL ORDER BY 1`, runIDs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// dropUnusedKeys deletes the counters of keys (concurrency keys whose
// instances the transaction deleted) that nothing uses any more: no
// instance names them and nothing runs or waits under them. A key used
// again later gets a new counter from the transaction creating its
// instances, so the counters stay as many as the keys in use.
//
// Run creation makes sure a key's counter exists without locking it
// (INSERT … ON CONFLICT DO NOTHING), so a row lock would not keep this
// from deleting a counter whose new instances are not committed yet. The
// table lock does: it waits for every transaction that wrote a counter
// (their instances are then visible to the DELETE below, a new statement)
// and holds back the next ones until the commit, when they find the
// counter missing and create it. It is taken only when the deleted
// instances had keys, at the end of the transaction.
func dropUnusedKeys(ctx context.Context, tx pgx.Tx, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE concurrency_keys IN SHARE ROW EXCLUSIVE MODE"); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM concurrency_keys k WHERE k.key = ANY($1) AND k.running = 0 AND k.queued = 0
		AND NOT EXISTS (SELECT 1 FROM task_instances t WHERE t.concurrency_key = k.key)`, keys)
	return err
}
