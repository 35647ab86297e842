package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/store"
)

// TruncationMarker is appended by ReadLog to a log that reached the cap;
// its arguments are the bytes kept and the bytes dropped.
const TruncationMarker = "\n[trellis: log truncated: %d bytes kept, %d bytes dropped]\n"

// AppendLog appends chunk to the log of one try. Once the log holds
// LogCap bytes the rest is dropped and counted. Each append is one row of
// its own, so appending never rewrites what is already stored.
func (s *Store) AppendLog(ctx context.Context, a store.Attempt, chunk []byte) error {
	op := fmt.Sprintf("append log of instance %d try %d", a.ID, a.TryNumber)
	if a.TryNumber < 1 {
		return fmt.Errorf("%s: try number must be at least 1", op)
	}
	if len(chunk) == 0 {
		return nil
	}
	return s.inTx(ctx, op, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO task_logs (ti_id, try_number) VALUES ($1, $2)
			ON CONFLICT DO NOTHING`, a.ID, a.TryNumber); err != nil {
			return err
		}
		var size, chunks int64
		if err := tx.QueryRow(ctx, `SELECT size, chunks FROM task_logs WHERE ti_id = $1 AND try_number = $2 FOR NO KEY UPDATE`,
			a.ID, a.TryNumber).Scan(&size, &chunks); err != nil {
			return err
		}
		take := min(int64(len(chunk)), max(int64(s.logCap)-size, 0))
		dropped := int64(len(chunk)) - take
		if take > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO task_log_chunks (ti_id, try_number, seq, data) VALUES ($1, $2, $3, $4)`,
				a.ID, a.TryNumber, chunks, chunk[:take]); err != nil {
				return err
			}
			chunks++
		}
		_, err := tx.Exec(ctx, `UPDATE task_logs SET size = size + $3, dropped = dropped + $4, chunks = $5
			WHERE ti_id = $1 AND try_number = $2`, a.ID, a.TryNumber, take, dropped, chunks)
		return err
	})
}

// ReadLog returns the log of try try of a task instance, ending with
// TruncationMarker when bytes were dropped. A try that ran but logged
// nothing has an empty log; a try that never started is ErrNotFound.
func (s *Store) ReadLog(ctx context.Context, dagID, runID, taskID string, try int) ([]byte, error) {
	op := fmt.Sprintf("read log of task %q try %d in run %q of dag %q", taskID, try, runID, dagID)
	var id int64
	var tries int
	err := s.pool.QueryRow(ctx, `SELECT t.id, t.try_number FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
		WHERE r.dag_id = $1 AND r.run_id = $2 AND t.task_id = $3 AND t.call_key = ''`, dagID, runID, taskID).Scan(&id, &tries)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w: no such task instance", op, store.ErrNotFound)
	}
	if err != nil {
		return nil, mapErr(op, err)
	}
	var size, dropped int64
	err = s.pool.QueryRow(ctx, `SELECT size, dropped FROM task_logs WHERE ti_id = $1 AND try_number = $2`, id, try).Scan(&size, &dropped)
	if errors.Is(err, pgx.ErrNoRows) {
		if try >= 1 && try <= tries {
			return []byte{}, nil
		}
		return nil, fmt.Errorf("%s: %w: the task has had %d tries", op, store.ErrNotFound, tries)
	}
	if err != nil {
		return nil, mapErr(op, err)
	}
	rows, err := s.pool.Query(ctx, `SELECT data FROM task_log_chunks WHERE ti_id = $1 AND try_number = $2 ORDER BY seq`, id, try)
	if err != nil {
		return nil, mapErr(op, err)
	}
	var buf bytes.Buffer
	buf.Grow(int(size) + len(TruncationMarker) + 40)
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			rows.Close()
			return nil, mapErr(op, err)
		}
		buf.Write(b)
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr(op, err)
	}
	if dropped > 0 {
		fmt.Fprintf(&buf, TruncationMarker, size, dropped)
	}
	return buf.Bytes(), nil
}
