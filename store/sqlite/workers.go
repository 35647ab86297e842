package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// RegisterWorker records a worker process (again: a re-registration
// replaces the record).
func (s *Store) RegisterWorker(ctx context.Context, wk store.Worker) error {
	if wk.ID == "" {
		return fmt.Errorf("register worker: empty worker id")
	}
	if wk.StartedAt.IsZero() {
		wk.StartedAt = s.clk.Now()
	}
	if wk.HeartbeatAt.IsZero() {
		wk.HeartbeatAt = wk.StartedAt
	}
	return s.write(ctx, fmt.Sprintf("register worker %q", wk.ID), func(w *txn) error {
		_, err := w.exec(`INSERT INTO workers (id, hostname, pid, slots, started_at, heartbeat_at)
			VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid,
				slots = excluded.slots, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at`,
			wk.ID, wk.Hostname, wk.PID, wk.Slots, us(wk.StartedAt), us(wk.HeartbeatAt))
		return err
	})
}

// HeartbeatWorker refreshes a worker's heartbeat; ErrNotFound when it is
// not registered.
func (s *Store) HeartbeatWorker(ctx context.Context, workerID string, now time.Time) error {
	return s.write(ctx, fmt.Sprintf("heartbeat worker %q", workerID), func(w *txn) error {
		res, err := w.exec(`UPDATE workers SET heartbeat_at = ? WHERE id = ?`, us(now), workerID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
}

// DeregisterWorker forgets a worker; forgetting an unknown one is not an
// error.
func (s *Store) DeregisterWorker(ctx context.Context, workerID string) error {
	return s.write(ctx, fmt.Sprintf("deregister worker %q", workerID), func(w *txn) error {
		_, err := w.exec(`DELETE FROM workers WHERE id = ?`, workerID)
		return err
	})
}

// ListWorkers returns the registered workers ordered by id.
func (s *Store) ListWorkers(ctx context.Context) ([]store.Worker, error) {
	var out []store.Worker
	err := s.read(ctx, "list workers", func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, hostname, pid, slots, started_at, heartbeat_at FROM workers ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var wk store.Worker
			var started, hb int64
			if err := rows.Scan(&wk.ID, &wk.Hostname, &wk.PID, &wk.Slots, &started, &hb); err != nil {
				return err
			}
			wk.StartedAt, wk.HeartbeatAt = fromUS(started), fromUS(hb)
			out = append(out, wk)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
