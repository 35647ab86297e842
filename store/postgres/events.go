package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

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
