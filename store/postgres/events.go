package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

const eventCols = `id, key, payload, coalesce(dedupe_key, ''), received_at, expires_at`

func scanEvent(row pgx.Row) (store.Event, error) {
	var e store.Event
	var payload []byte
	if err := row.Scan(&e.ID, &e.Key, &payload, &e.DedupeKey, &e.ReceivedAt, &e.ExpiresAt); err != nil {
		return store.Event{}, err
	}
	if payload != nil {
		e.Payload = payload
	}
	e.ReceivedAt, e.ExpiresAt = utc(e.ReceivedAt), utc(e.ExpiresAt)
	return e, nil
}

// RecordEvent records e and creates the runs of the DAGs scheduled on its
// key, in one transaction (see store.Store).
func (s *Store) RecordEvent(ctx context.Context, e store.NewEvent) (store.EventResult, error) {
	op := fmt.Sprintf("record event %q", e.Key)
	payload, err := store.CheckNewEvent(e)
	if err != nil {
		return store.EventResult{}, fmt.Errorf("%s: %w", op, err)
	}
	at, expires := store.EventTimes(e, s.clock.Now())
	var res store.EventResult
	err = s.inTx(ctx, op, func(tx pgx.Tx) error {
		res = store.EventResult{}
		r := eventTx{s: s, ctx: ctx, tx: tx, res: &res}
		if err := r.expire(at); err != nil {
			return err
		}
		if err := r.insert(e, payload, at, expires); err != nil || res.Duplicate {
			return err
		}
		if err := lockEventKeys(ctx, tx, []string{e.Key}); err != nil {
			return err
		}
		if err := r.continueWaiters(); err != nil {
			return err
		}
		if err := r.createRuns(); err != nil {
			return err
		}
		if len(res.Runs) > 0 {
			return notify(ctx, tx, store.TopicRunsChanged)
		}
		return nil
	})
	if err != nil {
		return store.EventResult{}, err
	}
	return res, nil
}

// eventTx holds the phases of one RecordEvent transaction.
type eventTx struct {
	s   *Store
	ctx context.Context
	tx  pgx.Tx
	res *store.EventResult
}

// expire deletes a few events that expired before at (those another
// transaction holds are left to it), so the table stays bounded by the
// rate of events times their retention without a purge process.
func (r eventTx) expire(at time.Time) error {
	_, err := r.tx.Exec(r.ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE expires_at <= $1
		ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)`, at, store.ExpireEventsPerEvent)
	return err
}

// insert records the event, or finds the kept event holding its dedupe
// key (an expired one is deleted first, freeing the key).
func (r eventTx) insert(e store.NewEvent, payload []byte, at, expires time.Time) error {
	var dedupe any
	if e.DedupeKey != "" {
		dedupe = e.DedupeKey
		if _, err := r.tx.Exec(r.ctx, `DELETE FROM events WHERE dedupe_key = $1 AND expires_at <= $2`, e.DedupeKey, at); err != nil {
			return err
		}
	}
	var p any
	if payload != nil {
		p = string(payload)
	}
	ev, err := scanEvent(r.tx.QueryRow(r.ctx, `
		INSERT INTO events (key, payload, dedupe_key, received_at, expires_at)
		VALUES ($1, $2::jsonb, $3, $4, $5)
		ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
		RETURNING `+eventCols, e.Key, p, dedupe, at, expires))
	if errors.Is(err, pgx.ErrNoRows) {
		ev, err = scanEvent(r.tx.QueryRow(r.ctx, `SELECT `+eventCols+` FROM events WHERE dedupe_key = $1`, e.DedupeKey))
		if err != nil {
			return err
		}
		r.res.Event, r.res.Duplicate = ev, true
		return nil
	}
	if err != nil {
		return err
	}
	// Keep the payload as the caller gave it (jsonb reorders keys).
	ev.Payload = payload
	r.res.Event = ev
	return nil
}

// continueWaiters queues the instances deferred on the event's key.
func (r eventTx) continueWaiters() error {
	ev := r.res.Event
	var p any
	if ev.Payload != nil {
		p = string(ev.Payload)
	}
	tag, err := r.tx.Exec(r.ctx, `UPDATE task_instances SET state = 'queued', try_number = try_number - 1,
			queued_at = $3, resumed = true, event_payload = $2::jsonb, last_event_id = $4, next_check_at = NULL, wait_event = NULL
		WHERE state = 'deferred' AND wait_event = $1 AND last_event_id < $4`, ev.Key, p, ev.ReceivedAt, ev.ID)
	if err != nil {
		return err
	}
	r.res.Continued = int(tag.RowsAffected())
	if r.res.Continued > 0 {
		return notify(r.ctx, r.tx, store.TopicTasksReady)
	}
	return nil
}

// createRuns creates a run of every active, unpaused DAG scheduled on the
// event's key.
func (r eventTx) createRuns() error {
	rows, err := r.tx.Query(r.ctx, `SELECT dag_id, fingerprint FROM dags
		WHERE schedule_event = $1 AND is_active AND NOT is_paused ORDER BY dag_id`, r.res.Event.Key)
	if err != nil {
		return err
	}
	type dagFP struct{ id, fp string }
	var dags []dagFP
	for rows.Next() {
		var d dagFP
		if err := rows.Scan(&d.id, &d.fp); err != nil {
			rows.Close()
			return err
		}
		dags = append(dags, d)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, d := range dags {
		for bump := 0; ; bump++ {
			if bump >= store.MaxEventRunBumps {
				return errorf("%w: DAG %q has runs at every microsecond of %s and the %d after it",
					store.ErrConflict, d.id, r.res.Event.ReceivedAt.Format(time.RFC3339Nano), store.MaxEventRunBumps)
			}
			nr := store.EventRun(d.id, d.fp, r.res.Event, bump)
			run, created, err := r.s.createRunTx(r.ctx, r.tx, nr, nr.Conf, nr.QueuedAt)
			if err != nil {
				return err
			}
			if created {
				r.res.Runs = append(r.res.Runs, run)
				break
			}
		}
	}
	return nil
}

// PurgeEvents deletes up to limit expired events (see store.Store).
func (s *Store) PurgeEvents(ctx context.Context, now time.Time, limit int) (int, error) {
	var n int64
	err := s.inTx(ctx, "purge events", func(tx pgx.Tx) error {
		q := `DELETE FROM events WHERE expires_at <= $1`
		args := []any{now}
		if limit > 0 {
			q = `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE expires_at <= $1
				ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)`
			args = append(args, limit)
		}
		tag, err := tx.Exec(ctx, q, args...)
		n = tag.RowsAffected()
		return err
	})
	return int(n), err
}

// ContinueDeferred queues one deferred instance with payload (see
// store.Store).
func (s *Store) ContinueDeferred(ctx context.Context, dagID, runID, taskID string, payload json.RawMessage, now time.Time) (store.TaskInstance, error) {
	op := fmt.Sprintf("continue task %q of run %q of dag %q", taskID, runID, dagID)
	var p any
	if payload != nil {
		if !json.Valid(payload) {
			return store.TaskInstance{}, fmt.Errorf("%s: the payload is not JSON", op)
		}
		p = string(payload)
	}
	var ti store.TaskInstance
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		var runPK, id int64
		var st state.TaskState
		err := tx.QueryRow(ctx, `SELECT id FROM dag_runs WHERE dag_id = $1 AND run_id = $2`, dagID, runID).Scan(&runPK)
		if err == nil {
			err = tx.QueryRow(ctx, `SELECT id, state FROM task_instances
				WHERE run_id = $1 AND task_id = $2 AND call_key = '' FOR NO KEY UPDATE`, runPK, taskID).Scan(&id, &st)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: task %q of run %q of dag %q", store.ErrNotFound, taskID, runID, dagID)
		}
		if err != nil {
			return err
		}
		if st != state.Deferred {
			return errorf("%w: task %q of run %q of dag %q is %s, not deferred", store.ErrConflict, taskID, runID, dagID, st)
		}
		if _, err := tx.Exec(ctx, `UPDATE task_instances SET state = 'queued', try_number = try_number - 1,
				queued_at = $2, resumed = true, event_payload = $3::jsonb, next_check_at = NULL, wait_event = NULL
			WHERE id = $1`, id, now, p); err != nil {
			return err
		}
		if err := notify(ctx, tx, store.TopicTasksReady); err != nil {
			return err
		}
		ti, err = scanTI(tx.QueryRow(ctx, "SELECT "+tiCols+` FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
			WHERE t.id = $1`, id))
		return err
	})
	if err != nil {
		return store.TaskInstance{}, err
	}
	return ti, nil
}
