package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

const eventCols = `id, key, payload, coalesce(dedupe_key, ''), received_at, expires_at`

func scanEvent(sc scanner) (store.Event, error) {
	var (
		e                 store.Event
		payload           sql.NullString
		received, expires int64
	)
	if err := sc.Scan(&e.ID, &e.Key, &payload, &e.DedupeKey, &received, &expires); err != nil {
		return store.Event{}, err
	}
	if payload.Valid {
		e.Payload = []byte(payload.String)
	}
	e.ReceivedAt, e.ExpiresAt = fromUS(received), fromUS(expires)
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
	at, expires := store.EventTimes(e, s.clk.Now())
	var res store.EventResult
	err = s.write(ctx, op, func(w *txn) error {
		res = store.EventResult{}
		r := eventTx{w: w, res: &res}
		if err := r.expire(at); err != nil {
			return err
		}
		if err := r.insert(e, payload, at, expires); err != nil || res.Duplicate {
			return err
		}
		if err := r.continueWaiters(); err != nil {
			return err
		}
		return r.createRuns()
	})
	if err != nil {
		return store.EventResult{}, err
	}
	return res, nil
}

// eventTx holds the phases of one RecordEvent transaction.
type eventTx struct {
	w   *txn
	res *store.EventResult
}

// expire deletes a few events that expired before at, so the table stays
// bounded by the rate of events times their retention without a purge
// process.
func (r eventTx) expire(at time.Time) error {
	_, err := r.w.exec(`DELETE FROM events WHERE id IN (SELECT id FROM events WHERE expires_at <= ?
		ORDER BY expires_at LIMIT ? + 0)`, us(at), store.ExpireEventsPerEvent)
	return err
}

// insert records the event, or finds the kept event holding its dedupe
// key (an expired one is deleted first, freeing the key).
func (r eventTx) insert(e store.NewEvent, payload []byte, at, expires time.Time) error {
	var dedupe, p any
	if e.DedupeKey != "" {
		dedupe = e.DedupeKey
		ev, err := scanEvent(r.w.queryRow(`SELECT `+eventCols+` FROM events WHERE dedupe_key = ?`, e.DedupeKey))
		switch {
		case err == nil && ev.ExpiresAt.After(at):
			r.res.Event, r.res.Duplicate = ev, true
			return nil
		case err == nil:
			if _, err := r.w.exec(`DELETE FROM events WHERE id = ?`, ev.ID); err != nil {
				return err
			}
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
	}
	if payload != nil {
		p = string(payload)
	}
	ev, err := scanEvent(r.w.queryRow(`INSERT INTO events (key, payload, dedupe_key, received_at, expires_at)
		VALUES (?, ?, ?, ?, ?) RETURNING `+eventCols, e.Key, p, dedupe, us(at), us(expires)))
	if err != nil {
		return err
	}
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
	res, err := r.w.exec(`UPDATE task_instances SET state = 'queued', try_number = try_number - 1,
			queued_at = ?3, resumed = 1, event_payload = ?2, last_event_id = ?4, next_check_at = NULL, wait_event = NULL
		WHERE state = 'deferred' AND wait_event = ?1 AND last_event_id < ?4`, ev.Key, p, us(ev.ReceivedAt), ev.ID)
	if err != nil {
		return err
	}
	n, _ := res.RowsAffected()
	r.res.Continued = int(n)
	if n > 0 {
		r.w.wake(store.TopicTasksReady)
	}
	return nil
}

// createRuns creates a run of every active, unpaused DAG scheduled on the
// event's key.
func (r eventTx) createRuns() error {
	rows, err := r.w.query(`SELECT dag_id, fingerprint FROM dags
		WHERE schedule_event = ? AND is_active AND NOT is_paused ORDER BY dag_id`, r.res.Event.Key)
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
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return err
	}
	for _, d := range dags {
		for bump := 0; ; bump++ {
			if bump >= store.MaxEventRunBumps {
				return fmt.Errorf("%w: DAG %q has runs at every microsecond of %s and the %d after it",
					store.ErrConflict, d.id, r.res.Event.ReceivedAt.Format(time.RFC3339Nano), store.MaxEventRunBumps)
			}
			nr := store.EventRun(d.id, d.fp, r.res.Event, bump)
			run, created, err := createRunTx(r.w, nr, string(nr.Conf), nr.QueuedAt)
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
	err := s.write(ctx, "purge events", func(w *txn) error {
		q := `DELETE FROM events WHERE expires_at <= ?`
		args := []any{us(now)}
		if limit > 0 {
			q = `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE expires_at <= ? ORDER BY expires_at LIMIT ? + 0)`
			args = append(args, limit)
		}
		res, err := w.exec(q, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
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
	err := s.write(ctx, op, func(w *txn) error {
		cur, err := getTI(w.ctx, w, dagID, runID, taskID)
		if err != nil {
			return err
		}
		if cur.State != state.Deferred {
			return fmt.Errorf("%w: task %q of run %q of dag %q is %s, not deferred", store.ErrConflict, taskID, runID, dagID, cur.State)
		}
		if _, err := w.exec(`UPDATE task_instances SET state = 'queued', try_number = try_number - 1,
				queued_at = ?2, resumed = 1, event_payload = ?3, next_check_at = NULL, wait_event = NULL
			WHERE id = ?1`, cur.ID, us(now), p); err != nil {
			return err
		}
		w.wake(store.TopicTasksReady)
		ti, err = getTIByID(w.ctx, w, cur.ID)
		return err
	})
	if err != nil {
		return store.TaskInstance{}, err
	}
	return ti, nil
}
