package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// HeartbeatScheduler records that the scheduler schedulerID is alive at
// now, and removes the rows of schedulers silent for longer than
// store.SchedulerRetention, in one transaction.
func (s *Store) HeartbeatScheduler(ctx context.Context, schedulerID string, now time.Time) error {
	if schedulerID == "" {
		return errors.New("heartbeat scheduler: empty scheduler id")
	}
	return s.write(ctx, fmt.Sprintf("heartbeat scheduler %q", schedulerID), func(w *txn) error {
		if _, err := w.exec(`DELETE FROM schedulers WHERE heartbeat_at < ? AND id <> ?`,
			us(now.Add(-store.SchedulerRetention)), schedulerID); err != nil {
			return err
		}
		_, err := w.exec(`INSERT INTO schedulers (id, heartbeat_at) VALUES (?, ?)
			ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at`, schedulerID, us(now))
		return err
	})
}

// LatestSchedulerHeartbeat returns the newest heartbeat of any scheduler;
// ok is false when none is recorded.
func (s *Store) LatestSchedulerHeartbeat(ctx context.Context) (time.Time, bool, error) {
	var at sql.NullInt64
	err := s.read(ctx, "latest scheduler heartbeat", func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT max(heartbeat_at) FROM schedulers`).Scan(&at)
	})
	if err != nil {
		return time.Time{}, false, err
	}
	if !at.Valid {
		return time.Time{}, false, nil
	}
	return fromUS(at.Int64), true, nil
}
