package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/trellis-dag/trellis/store"
)

// purgeRuns returns the condition on dag_runs r selecting the runs of q.
func purgeRuns(q store.PurgeQuery) (where, error) {
	var w where
	if q.Before.IsZero() {
		return w, errors.New("purge: no time to purge before")
	}
	if q.Limit < 0 {
		return w, fmt.Errorf("purge: negative limit %d", q.Limit)
	}
	w.add(`r.state IN ('success', 'failed') AND r.ended_at < ?`, us(q.Before))
	if !q.After.IsZero() {
		w.add(`r.ended_at >= ?`, us(q.After))
	}
	if q.DAGID != "" {
		w.add(`r.dag_id = ?`, q.DAGID)
	}
	if len(q.ExceptDAGIDs) > 0 {
		w.add(`r.dag_id NOT IN (SELECT value FROM json_each(?))`, idList(q.ExceptDAGIDs))
	}
	return w, nil
}

// PurgeRuns implements store.Store. The pages the deleted rows used are
// given back to the file system (incremental vacuum) in the same write.
func (s *Store) PurgeRuns(ctx context.Context, q store.PurgeQuery) (store.Purged, error) {
	var p store.Purged
	w, err := purgeRuns(q)
	if err != nil {
		return p, err
	}
	pick := `SELECT r.id FROM dag_runs r` + w.sql() + ` ORDER BY r.ended_at, r.id LIMIT ? + 0`
	args := append(w.args[:len(w.args):len(w.args)], sqlLimit(q.Limit))
	counts := `SELECT (SELECT count(*) FROM picked),
		(SELECT count(*) FROM task_instances t WHERE t.run_id IN (SELECT id FROM picked)),
		(SELECT count(*) FROM task_logs l JOIN task_instances t ON t.id = l.ti_id WHERE t.run_id IN (SELECT id FROM picked))`
	if q.DryRun {
		err := s.read(ctx, "purge runs (dry run)", func(tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, `WITH picked AS (`+pick+`) `+counts, args...).
				Scan(&p.Runs, &p.TaskInstances, &p.Logs)
		})
		return p, err
	}
	err = s.write(ctx, "purge runs", func(tx *txn) error {
		p = store.Purged{}
		rows, err := tx.query(pick, args...)
		if err != nil {
			return err
		}
		var ids []int64
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil || len(ids) == 0 {
			return err
		}
		if q.MaxTaskInstances > 0 && len(ids) > 1 {
			counts, err := runSizes(tx, ids)
			if err != nil {
				return err
			}
			ids = store.CapRuns(ids, counts, q.MaxTaskInstances)
		}
		picked := idList(ids)
		if err := tx.queryRow(`WITH picked AS (SELECT value AS id FROM json_each(?)) `+counts, picked).
			Scan(&p.Runs, &p.TaskInstances, &p.Logs); err != nil {
			return err
		}
		keys, err := runKeys(tx, picked)
		if err != nil {
			return err
		}
		// Task instances and their logs go with the runs (ON DELETE CASCADE).
		if _, err := tx.exec(`DELETE FROM dag_runs WHERE id IN (SELECT value FROM json_each(?))`, picked); err != nil {
			return err
		}
		if err := dropUnusedKeys(tx, keys); err != nil {
			return err
		}
		tx.wake(store.TopicRunsChanged)
		return vacuumFreed(tx)
	})
	if err != nil {
		return store.Purged{}, err
	}
	return p, nil
}

// runSizes returns the number of task instances of each run of ids.
func runSizes(tx *txn, ids []int64) (map[int64]int, error) {
	rows, err := tx.query(`SELECT run_id, count(*) FROM task_instances
		WHERE run_id IN (SELECT value FROM json_each(?)) GROUP BY run_id`, idList(ids))
	if err != nil {
		return nil, err
	}
	counts := map[int64]int{}
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			rows.Close()
			return nil, err
		}
		counts[id] = n
	}
	return counts, errors.Join(rows.Err(), rows.Close())
}

// PurgeLogs implements store.Store.
func (s *Store) PurgeLogs(ctx context.Context, q store.PurgeQuery) (int, error) {
	w, err := purgeRuns(q)
	if err != nil {
		return 0, err
	}
	logs := `SELECT l.ti_id, l.try_number FROM dag_runs r JOIN task_instances t ON t.run_id = r.id
		JOIN task_logs l ON l.ti_id = t.id` + w.sql() + ` LIMIT ? + 0`
	args := append(w.args[:len(w.args):len(w.args)], sqlLimit(q.Limit))
	var n int64
	if q.DryRun {
		err := s.read(ctx, "purge logs (dry run)", func(tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, `SELECT count(*) FROM (`+logs+`)`, args...).Scan(&n)
		})
		return int(n), err
	}
	err = s.write(ctx, "purge logs", func(tx *txn) error {
		res, err := tx.exec(`DELETE FROM task_logs WHERE (ti_id, try_number) IN (`+logs+`)`, args...)
		if err != nil {
			return err
		}
		if n, _ = res.RowsAffected(); n == 0 {
			return nil
		}
		return vacuumFreed(tx)
	})
	return int(n), err
}

// vacuumFreed gives the pages on the free list back to the file system
// (the file is in auto_vacuum=INCREMENTAL mode, migration 00004). A
// purge's batch is small, so this is too.
func vacuumFreed(tx *txn) error {
	rows, err := tx.query(`PRAGMA incremental_vacuum`)
	if err != nil {
		return fmt.Errorf("incremental vacuum: %w", err)
	}
	for rows.Next() {
	}
	return errors.Join(rows.Err(), rows.Close())
}

// runKeys returns the concurrency keys the instances of runs (an
// idList) name, as counter names, before the runs are deleted.
func runKeys(tx *txn, runIDs string) ([]string, error) {
	rows, err := tx.query(`SELECT DISTINCT concurrency_key FROM task_instances
		WHERE run_id IN (SELECT value FROM json_each(?)) AND concurrency_key IS NOT NULL`, runIDs)
	if err != nil {
		return nil, err
	}
	var keys []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			rows.Close()
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, errors.Join(rows.Err(), rows.Close())
}

// dropUnusedKeys deletes the counters of keys (concurrency keys whose
// instances the transaction deleted) that nothing uses any more: no
// instance names them and nothing runs or waits under them. A key used
// again later gets a new counter from the transaction creating its
// instances (the one writer at a time orders them), so the counters stay
// as many as the keys in use.
func dropUnusedKeys(tx *txn, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := tx.exec(`DELETE FROM concurrency_keys WHERE key IN (SELECT value FROM json_each(?))
		AND running = 0 AND queued = 0
		AND NOT EXISTS (SELECT 1 FROM task_instances t WHERE t.concurrency_key = concurrency_keys.key)`, idList(keys))
	return err
}
