package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/trellis-dag/trellis/store"
)

// AppendLog appends chunk to the log of one try. The log keeps at most the
// store's LogCap bytes; what goes beyond is counted as dropped and
// ReadLog ends the log with a truncation line.
func (s *Store) AppendLog(ctx context.Context, a store.Try, chunk []byte) error {
	if a.TryNumber < 1 {
		return fmt.Errorf("append log of task instance #%d: try number %d (tries start at 1)", a.ID, a.TryNumber)
	}
	if len(chunk) == 0 {
		return nil
	}
	return s.write(ctx, fmt.Sprintf("append log of task instance #%d try %d", a.ID, a.TryNumber), func(w *txn) error {
		var tries int
		err := w.queryRow(`SELECT try_number FROM task_instances WHERE id = ?`, a.ID).Scan(&tries)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if a.TryNumber > tries {
			return fmt.Errorf("try %d has not started (the instance is at try %d): %w", a.TryNumber, tries, store.ErrNotFound)
		}
		return s.appendLogIn(w, a, chunk)
	})
}

// appendLogIn appends chunk to the log of try a inside transaction w,
// keeping at most the store's LogCap bytes and counting the rest.
//
// The first chunk of a try (most tries send their whole log with their
// result) takes two statements: the log row is inserted with its final
// counts, then the chunk. A later chunk reads and updates the counts.
func (s *Store) appendLogIn(w *txn, a store.Try, chunk []byte) error {
	first := min(int64(len(chunk)), int64(s.logCap))
	var firstChunks int
	if first > 0 {
		firstChunks = 1
	}
	res, err := w.exec(`INSERT INTO task_logs (ti_id, try_number, size, dropped, chunks) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (ti_id, try_number) DO NOTHING`, a.ID, a.TryNumber, first, int64(len(chunk))-first, firstChunks)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 1 {
		if first == 0 {
			return nil
		}
		_, err := w.exec(`INSERT INTO task_log_chunks (ti_id, try_number, seq, data) VALUES (?, ?, 0, ?)`,
			a.ID, a.TryNumber, chunk[:first])
		return err
	}
	var size, dropped int64
	var chunks int
	err = w.queryRow(`SELECT size, dropped, chunks FROM task_logs WHERE ti_id = ? AND try_number = ?`,
		a.ID, a.TryNumber).Scan(&size, &dropped, &chunks)
	if err != nil {
		return err
	}
	keep := min(int64(len(chunk)), max(int64(s.logCap)-size, 0))
	if keep > 0 {
		if _, err := w.exec(`INSERT INTO task_log_chunks (ti_id, try_number, seq, data) VALUES (?, ?, ?, ?)`,
			a.ID, a.TryNumber, chunks, chunk[:keep]); err != nil {
			return err
		}
		chunks++
	}
	_, err = w.exec(`UPDATE task_logs SET size = ?, dropped = ?, chunks = ? WHERE ti_id = ? AND try_number = ?`,
		size+keep, dropped+int64(len(chunk))-keep, chunks, a.ID, a.TryNumber)
	return err
}

// TruncationMarker is appended by ReadLog to a log that reached the cap,
// with the bytes kept and the bytes dropped (the same text as the
// PostgreSQL backend's).
const TruncationMarker = store.TruncationNote

// ReadLog returns the log of one try (empty when the try logged nothing).
// ErrNotFound when the task instance or the try does not exist.
func (s *Store) ReadLog(ctx context.Context, dagID, runID, taskID string, try int) ([]byte, error) {
	return s.ReadCallLog(ctx, dagID, runID, taskID, -1, try)
}

// ReadCallLog returns the log of one try of the call instance mapIndex of
// a callable (-1: the instance of a static task, as ReadLog).
func (s *Store) ReadCallLog(ctx context.Context, dagID, runID, taskID string, mapIndex, try int) ([]byte, error) {
	op := fmt.Sprintf("read log of task %q of run %q of dag %q try %d", taskID, runID, dagID, try)
	out := []byte{}
	err := s.read(ctx, op, func(tx *sql.Tx) error {
		ti, err := getTI(ctx, tx, dagID, runID, taskID)
		if mapIndex >= 0 {
			ti, err = getCallTI(ctx, tx, dagID, runID, taskID, mapIndex)
		}
		if err != nil {
			return err
		}
		if try < 1 || try > ti.TryNumber {
			return fmt.Errorf("the instance has %d tries: %w", ti.TryNumber, store.ErrNotFound)
		}
		var size, dropped int64
		err = tx.QueryRowContext(ctx, `SELECT size, dropped FROM task_logs WHERE ti_id = ? AND try_number = ?`, ti.ID, try).Scan(&size, &dropped)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT data FROM task_log_chunks WHERE ti_id = ? AND try_number = ? ORDER BY seq`, ti.ID, try)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var b []byte
			if err := rows.Scan(&b); err != nil {
				return err
			}
			out = append(out, b...)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if dropped > 0 {
			out = fmt.Appendf(out, TruncationMarker, size, dropped)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
