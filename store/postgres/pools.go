package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// poolSelect reads pools with their occupancy: the slots of their
// running and queued instances (read through the running set and the
// queue of migration 00008).
const poolSelect = `SELECT p.name, p.slots, p.description,
		coalesce((SELECT sum(t.pool_slots) FROM task_running r JOIN task_instances t ON t.id = r.ti_id
			WHERE t.pool = p.name), 0),
		coalesce((SELECT sum(q.pool_slots) FROM task_queue q WHERE coalesce(q.pool, 'default_pool') = p.name), 0)
	FROM pools p`

func scanPools(rows pgx.Rows) ([]store.Pool, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Pool, error) {
		var p store.Pool
		err := row.Scan(&p.Name, &p.Slots, &p.Description, &p.RunningSlots, &p.QueuedSlots)
		return p, err
	})
}

// EnsurePools creates the pools that do not exist yet.
func (s *Store) EnsurePools(ctx context.Context, pools []store.PoolSpec) error {
	if len(pools) == 0 {
		return nil
	}
	names, slots, descs := make([]string, len(pools)), make([]int32, len(pools)), make([]string, len(pools))
	for i, p := range pools {
		if err := p.Check(); err != nil {
			return fmt.Errorf("ensure pools: %w", err)
		}
		names[i], slots[i], descs[i] = p.Name, int32(p.Slots), p.Description
	}
	return s.inTx(ctx, "ensure pools", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO pools (name, slots, description)
			SELECT * FROM unnest($1::text[], $2::int[], $3::text[]) ORDER BY 1
			ON CONFLICT (name) DO NOTHING`, names, slots, descs)
		if err != nil {
			return err
		}
		if tag.RowsAffected() > 0 {
			return notify(ctx, tx, store.TopicTasksReady)
		}
		return nil
	})
}

// CreatePool creates a pool; instances waiting for it become claimable.
func (s *Store) CreatePool(ctx context.Context, p store.PoolSpec) (store.Pool, error) {
	op := fmt.Sprintf("create pool %q", p.Name)
	if err := p.Check(); err != nil {
		return store.Pool{}, &storeError{fmt.Errorf("%s: %w: %v", op, store.ErrInvalid, err)}
	}
	var out store.Pool
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO pools (name, slots, description) VALUES ($1, $2, $3)
			ON CONFLICT (name) DO NOTHING`, p.Name, p.Slots, p.Description)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errorf("%w: pool %q exists already", store.ErrConflict, p.Name)
		}
		if out, err = getPool(ctx, tx, p.Name); err != nil {
			return err
		}
		return notify(ctx, tx, store.TopicTasksReady)
	})
	return out, err
}

func getPool(ctx context.Context, tx dbtx, name string) (store.Pool, error) {
	rows, err := tx.Query(ctx, poolSelect+` WHERE p.name = $1`, name)
	if err != nil {
		return store.Pool{}, err
	}
	ps, err := scanPools(rows)
	if err != nil {
		return store.Pool{}, err
	}
	if len(ps) == 0 {
		return store.Pool{}, errorf("%w: no pool %q", store.ErrNotFound, name)
	}
	return ps[0], nil
}

// GetPool returns one pool with its occupancy.
func (s *Store) GetPool(ctx context.Context, name string) (store.Pool, error) {
	p, err := getPool(ctx, s.pool, name)
	if err != nil {
		return p, mapErr(fmt.Sprintf("get pool %q", name), err)
	}
	return p, nil
}

// ListPools returns pools ordered by name and their count.
func (s *Store) ListPools(ctx context.Context, limit, offset int) ([]store.Pool, int, error) {
	var total int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM pools").Scan(&total); err != nil {
		return nil, 0, mapErr("count pools", err)
	}
	q := poolSelect + ` WHERE p.name IN (SELECT name FROM pools ORDER BY name LIMIT $1 OFFSET $2) ORDER BY p.name`
	lim := any(nil)
	if limit > 0 {
		lim = limit
	}
	rows, err := s.pool.Query(ctx, q, lim, offset)
	if err != nil {
		return nil, 0, mapErr("list pools", err)
	}
	ps, err := scanPools(rows)
	if err != nil {
		return nil, 0, mapErr("list pools", err)
	}
	return ps, total, nil
}

// UpdatePool resizes or describes a pool. Giving default_pool a size
// (from unlimited) makes the instances in it limited, counting those
// running, in the same transaction; a larger pool wakes claimers.
func (s *Store) UpdatePool(ctx context.Context, name string, patch store.PoolPatch) (store.Pool, error) {
	op := fmt.Sprintf("update pool %q", name)
	if err := store.CheckPatch(name, patch); err != nil {
		return store.Pool{}, &storeError{fmt.Errorf("%s: %w: %v", op, store.ErrInvalid, err)}
	}
	var out store.Pool
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		var slots int
		err := tx.QueryRow(ctx, "SELECT slots FROM pools WHERE name = $1 FOR NO KEY UPDATE", name).Scan(&slots)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: no pool %q", store.ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		if patch.Description != nil {
			if _, err := tx.Exec(ctx, "UPDATE pools SET description = $2 WHERE name = $1", name, *patch.Description); err != nil {
				return err
			}
		}
		if patch.Slots != nil && *patch.Slots != slots {
			if name == dag.DefaultPool && slots < 0 {
				if err := limitDefaultPool(ctx, tx); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, "UPDATE pools SET slots = $2 WHERE name = $1", name, *patch.Slots); err != nil {
				return err
			}
			if *patch.Slots < 0 || *patch.Slots > slots {
				if err := notify(ctx, tx, store.TopicTasksReady); err != nil {
					return err
				}
			}
		}
		out, err = getPool(ctx, tx, name)
		return err
	})
	return out, err
}

// limitDefaultPool makes the unfinished instances of default_pool
// limited and adds the slots of the running ones to its counter (the
// pool row is locked by the caller).
func limitDefaultPool(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `WITH m AS (
			UPDATE task_instances SET limited = true
			WHERE pool = 'default_pool' AND NOT limited AND state IN `+unfinishedList+`
			RETURNING state, pool_slots)
		UPDATE pools SET running = running + coalesce((SELECT sum(pool_slots) FROM m
			WHERE state IN ('running', 'restarting')), 0)
		WHERE name = 'default_pool'`)
	return err
}

// DeletePool removes a pool that no instance runs or waits in.
func (s *Store) DeletePool(ctx context.Context, name string) error {
	op := fmt.Sprintf("delete pool %q", name)
	if name == dag.DefaultPool {
		return &storeError{fmt.Errorf("%s: %w: default_pool cannot be deleted", op, store.ErrInUse)}
	}
	return s.inTx(ctx, op, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT true FROM pools WHERE name = $1 FOR UPDATE", name).Scan(&exists); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return errorf("%w: no pool %q", store.ErrNotFound, name)
			}
			return err
		}
		p, err := getPool(ctx, tx, name)
		if err != nil {
			return err
		}
		if p.RunningSlots > 0 || p.QueuedSlots > 0 {
			return errorf("%w: pool %q has %d running and %d queued slots in use", store.ErrInUse, name,
				p.RunningSlots, p.QueuedSlots)
		}
		_, err = tx.Exec(ctx, "DELETE FROM pools WHERE name = $1", name)
		return err
	})
}

// WaitingOnKeys returns the keys at their limit with queued instances.
func (s *Store) WaitingOnKeys(ctx context.Context) ([]store.KeyWait, error) {
	rows, err := s.pool.Query(ctx, `SELECT k.key, k.lim, k.running, count(*)
		FROM task_queue t JOIN concurrency_keys k ON k.key IN (t.task_key, t.concurrency_key)
		WHERE t.limited AND k.running >= k.lim
		GROUP BY k.key, k.lim, k.running ORDER BY k.key`)
	if err != nil {
		return nil, mapErr("keys waited on", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.KeyWait, error) {
		var k store.KeyWait
		err := row.Scan(&k.Key, &k.Limit, &k.Running, &k.Queued)
		return k, err
	})
	if err != nil {
		return nil, mapErr("keys waited on", err)
	}
	return out, nil
}

// KeyCounters returns every counter of concurrency keys and task caps
// (store.KeyPrefixKey, store.KeyPrefixTask) with its limit, running and
// queued counts, ordered by name: for tests and inspection.
func (s *Store) KeyCounters(ctx context.Context) ([]store.KeyWait, error) {
	rows, err := s.pool.Query(ctx, `SELECT key, lim, running, queued FROM concurrency_keys ORDER BY key`)
	if err != nil {
		return nil, mapErr("key counters", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.KeyWait, error) {
		var k store.KeyWait
		err := row.Scan(&k.Key, &k.Limit, &k.Running, &k.Queued)
		return k, err
	})
	return out, mapErr("key counters", err)
}
