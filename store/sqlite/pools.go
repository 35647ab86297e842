package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// poolSelect reads pools with their occupancy: the slots of their
// running and queued instances.
const poolSelect = `SELECT p.name, p.slots, p.description,
		coalesce(sum(t.pool_slots) FILTER (WHERE t.state IN ('running', 'restarting')), 0),
		coalesce(sum(t.pool_slots) FILTER (WHERE t.state = 'queued'), 0)
	FROM pools p
	LEFT JOIN task_instances t ON t.pool = p.name AND t.state IN ('running', 'restarting', 'queued')`

func scanPools(rows *sql.Rows) ([]store.Pool, error) {
	var out []store.Pool
	for rows.Next() {
		var p store.Pool
		if err := rows.Scan(&p.Name, &p.Slots, &p.Description, &p.RunningSlots, &p.QueuedSlots); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, p)
	}
	return out, errors.Join(rows.Err(), rows.Close())
}

func getPool(ctx context.Context, q querier, name string) (store.Pool, error) {
	rows, err := q.QueryContext(ctx, poolSelect+` WHERE p.name = ? GROUP BY p.name`, name)
	if err != nil {
		return store.Pool{}, err
	}
	ps, err := scanPools(rows)
	if err != nil {
		return store.Pool{}, err
	}
	if len(ps) == 0 {
		return store.Pool{}, fmt.Errorf("%w: no pool %q", store.ErrNotFound, name)
	}
	return ps[0], nil
}

// EnsurePools creates the pools that do not exist yet.
func (s *Store) EnsurePools(ctx context.Context, pools []store.PoolSpec) error {
	for _, p := range pools {
		if err := p.Check(); err != nil {
			return fmt.Errorf("ensure pools: %w", err)
		}
	}
	if len(pools) == 0 {
		return nil
	}
	return s.write(ctx, "ensure pools", func(w *txn) error {
		for _, p := range pools {
			res, err := w.exec(`INSERT INTO pools (name, slots, description) VALUES (?, ?, ?)
				ON CONFLICT (name) DO NOTHING`, p.Name, p.Slots, p.Description)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n > 0 {
				w.wake(store.TopicTasksReady)
			}
		}
		return nil
	})
}

// CreatePool creates a pool; instances waiting for it become claimable.
func (s *Store) CreatePool(ctx context.Context, p store.PoolSpec) (store.Pool, error) {
	op := fmt.Sprintf("create pool %q", p.Name)
	if err := p.Check(); err != nil {
		return store.Pool{}, fmt.Errorf("%s: %w: %v", op, store.ErrInvalid, err)
	}
	var out store.Pool
	err := s.write(ctx, op, func(w *txn) error {
		res, err := w.exec(`INSERT INTO pools (name, slots, description) VALUES (?, ?, ?)
			ON CONFLICT (name) DO NOTHING`, p.Name, p.Slots, p.Description)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: pool %q exists already", store.ErrConflict, p.Name)
		}
		w.wake(store.TopicTasksReady)
		out, err = getPool(w.ctx, w, p.Name)
		return err
	})
	return out, err
}

// GetPool returns one pool with its occupancy.
func (s *Store) GetPool(ctx context.Context, name string) (store.Pool, error) {
	var out store.Pool
	err := s.read(ctx, fmt.Sprintf("get pool %q", name), func(tx *sql.Tx) error {
		var err error
		out, err = getPool(ctx, s.reads.inTx(tx), name)
		return err
	})
	return out, err
}

// ListPools returns pools ordered by name and their count.
func (s *Store) ListPools(ctx context.Context, limit, offset int) ([]store.Pool, int, error) {
	var out []store.Pool
	var total int
	if limit <= 0 {
		limit = -1
	}
	err := s.read(ctx, "list pools", func(tx *sql.Tx) error {
		q := s.reads.inTx(tx)
		if err := q.QueryRowContext(ctx, `SELECT count(*) FROM pools`).Scan(&total); err != nil {
			return err
		}
		rows, err := q.QueryContext(ctx, poolSelect+` WHERE p.name IN (SELECT name FROM pools ORDER BY name LIMIT ? + 0 OFFSET ?)
			GROUP BY p.name ORDER BY p.name`, limit, offset)
		if err != nil {
			return err
		}
		out, err = scanPools(rows)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	if out == nil {
		out = []store.Pool{}
	}
	return out, total, nil
}

// UpdatePool resizes or describes a pool. Giving default_pool a size
// (from unlimited) makes the instances in it limited, counting those
// running; a larger pool wakes claimers.
func (s *Store) UpdatePool(ctx context.Context, name string, patch store.PoolPatch) (store.Pool, error) {
	op := fmt.Sprintf("update pool %q", name)
	if err := store.CheckPatch(name, patch); err != nil {
		return store.Pool{}, fmt.Errorf("%s: %w: %v", op, store.ErrInvalid, err)
	}
	var out store.Pool
	err := s.write(ctx, op, func(w *txn) error {
		var slots int
		err := w.queryRow(`SELECT slots FROM pools WHERE name = ?`, name).Scan(&slots)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no pool %q", store.ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		if patch.Description != nil {
			if _, err := w.exec(`UPDATE pools SET description = ? WHERE name = ?`, *patch.Description, name); err != nil {
				return err
			}
		}
		if patch.Slots != nil && *patch.Slots != slots {
			if name == dag.DefaultPool && slots < 0 {
				if _, err := w.exec(`UPDATE pools SET running = running + coalesce((SELECT sum(pool_slots)
						FROM task_instances WHERE pool = 'default_pool' AND NOT limited
							AND state IN ('running', 'restarting')), 0)
					WHERE name = 'default_pool'`); err != nil {
					return err
				}
				if _, err := w.exec(`UPDATE task_instances SET limited = 1
					WHERE pool = 'default_pool' AND NOT limited AND state IN (` + nonTerminalSQL + `)`); err != nil {
					return err
				}
			}
			if _, err := w.exec(`UPDATE pools SET slots = ? WHERE name = ?`, *patch.Slots, name); err != nil {
				return err
			}
			if *patch.Slots < 0 || *patch.Slots > slots {
				w.wake(store.TopicTasksReady)
			}
		}
		out, err = getPool(w.ctx, w, name)
		return err
	})
	return out, err
}

// DeletePool removes a pool that no instance runs or waits in.
func (s *Store) DeletePool(ctx context.Context, name string) error {
	op := fmt.Sprintf("delete pool %q", name)
	if name == dag.DefaultPool {
		return fmt.Errorf("%s: %w: default_pool cannot be deleted", op, store.ErrInUse)
	}
	return s.write(ctx, op, func(w *txn) error {
		p, err := getPool(w.ctx, w, name)
		if err != nil {
			return err
		}
		if p.RunningSlots > 0 || p.QueuedSlots > 0 {
			return fmt.Errorf("%w: pool %q has %d running and %d queued slots in use", store.ErrInUse, name,
				p.RunningSlots, p.QueuedSlots)
		}
		_, err = w.exec(`DELETE FROM pools WHERE name = ?`, name)
		return err
	})
}

// WaitingOnKeys returns the keys at their limit with queued instances.
func (s *Store) WaitingOnKeys(ctx context.Context) ([]store.KeyWait, error) {
	var out []store.KeyWait
	err := s.read(ctx, "keys waited on", func(tx *sql.Tx) error {
		rows, err := s.reads.inTx(tx).QueryContext(ctx, `SELECT k.key, k.lim, k.running, count(*)
			FROM task_instances t JOIN concurrency_keys k ON k.key IN (t.task_key, t.concurrency_key)
			WHERE t.state = 'queued' AND t.limited AND k.running >= k.lim
			GROUP BY k.key, k.lim, k.running ORDER BY k.key`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k store.KeyWait
			if err := rows.Scan(&k.Key, &k.Limit, &k.Running, &k.Queued); err != nil {
				rows.Close()
				return err
			}
			out = append(out, k)
		}
		return errors.Join(rows.Err(), rows.Close())
	})
	return out, err
}

// KeyCounters returns every counter of concurrency keys and task caps
// (store.KeyPrefixKey, store.KeyPrefixTask) with its limit, running and
// queued counts, ordered by name: for tests and inspection.
func (s *Store) KeyCounters(ctx context.Context) ([]store.KeyWait, error) {
	var out []store.KeyWait
	err := s.read(ctx, "key counters", func(tx *sql.Tx) error {
		rows, err := s.reads.inTx(tx).QueryContext(ctx, `SELECT key, lim, running, queued FROM concurrency_keys ORDER BY key`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k store.KeyWait
			if err := rows.Scan(&k.Key, &k.Limit, &k.Running, &k.Queued); err != nil {
				rows.Close()
				return err
			}
			out = append(out, k)
		}
		return errors.Join(rows.Err(), rows.Close())
	})
	return out, err
}
