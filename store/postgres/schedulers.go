package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// HeartbeatScheduler records that the scheduler schedulerID is alive at
// now, and removes the rows of schedulers silent for longer than
// store.SchedulerRetention, in one statement.
func (s *Store) HeartbeatScheduler(ctx context.Context, schedulerID string, now time.Time) error {
	if schedulerID == "" {
		return errors.New("heartbeat scheduler: empty scheduler id")
	}
	_, err := s.pool.Exec(ctx, `WITH gone AS (
			DELETE FROM schedulers WHERE heartbeat_at < $3 AND id <> $1
		)
		INSERT INTO schedulers (id, heartbeat_at) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at`,
		schedulerID, now, now.Add(-store.SchedulerRetention))
	return mapErr(fmt.Sprintf("heartbeat scheduler %q", schedulerID), err)
}

// LatestSchedulerHeartbeat returns the newest heartbeat of any scheduler;
// ok is false when none is recorded.
func (s *Store) LatestSchedulerHeartbeat(ctx context.Context) (time.Time, bool, error) {
	var at *time.Time
	if err := s.pool.QueryRow(ctx, "SELECT max(heartbeat_at) FROM schedulers").Scan(&at); err != nil {
		return time.Time{}, false, mapErr("latest scheduler heartbeat", err)
	}
	if at == nil {
		return time.Time{}, false, nil
	}
	return utc(*at), true, nil
}
