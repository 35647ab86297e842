package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/store"
)

// RegisterWorker records (or re-records) a worker.
func (s *Store) RegisterWorker(ctx context.Context, w store.Worker) error {
	if w.ID == "" {
		return errors.New("register worker: empty worker id")
	}
	started, hb := w.StartedAt, w.HeartbeatAt
	if started.IsZero() {
		started = s.clock.Now()
	}
	if hb.IsZero() {
		hb = started
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO workers (id, hostname, pid, slots, started_at, heartbeat_at)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, slots = EXCLUDED.slots,
			started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at`,
		w.ID, w.Hostname, w.PID, w.Slots, started, hb)
	return mapErr(fmt.Sprintf("register worker %q", w.ID), err)
}

// HeartbeatWorker records that a worker is alive.
func (s *Store) HeartbeatWorker(ctx context.Context, workerID string, now time.Time) error {
	op := fmt.Sprintf("heartbeat worker %q", workerID)
	tag, err := s.pool.Exec(ctx, "UPDATE workers SET heartbeat_at = $2 WHERE id = $1", workerID, now)
	if err != nil {
		return mapErr(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: %w: not registered", op, store.ErrNotFound)
	}
	return nil
}

// DeregisterWorker forgets a worker; forgetting an unknown one is not an
// error.
func (s *Store) DeregisterWorker(ctx context.Context, workerID string) error {
	_, err := s.pool.Exec(ctx, "DELETE FROM workers WHERE id = $1", workerID)
	return mapErr(fmt.Sprintf("deregister worker %q", workerID), err)
}

// ListWorkers returns the registered workers ordered by id.
func (s *Store) ListWorkers(ctx context.Context) ([]store.Worker, error) {
	rows, err := s.pool.Query(ctx, "SELECT id, hostname, pid, slots, started_at, heartbeat_at FROM workers ORDER BY id")
	if err != nil {
		return nil, mapErr("list workers", err)
	}
	ws, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Worker, error) {
		var w store.Worker
		err := row.Scan(&w.ID, &w.Hostname, &w.PID, &w.Slots, &w.StartedAt, &w.HeartbeatAt)
		w.StartedAt, w.HeartbeatAt = utc(w.StartedAt), utc(w.HeartbeatAt)
		return w, err
	})
	if err != nil {
		return nil, mapErr("list workers", err)
	}
	return ws, nil
}
