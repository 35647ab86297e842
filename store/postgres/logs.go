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
const TruncationMarker = store.TruncationNote

// AppendLog appends chunk to the log of one try. Once the log holds
// LogCap bytes the rest is dropped and counted. Each append is one row of
// its own, so appending never rewrites what is already stored.
func (s *Store) AppendLog(ctx context.Context, a store.Try, chunk []byte) error {
	op := fmt.Sprintf("append log of instance %d try %d", a.ID, a.TryNumber)
	if a.TryNumber < 1 {
		return fmt.Errorf("%s: try number must be at least 1", op)
	}
	if len(chunk) == 0 {
		return nil
	}
	// The batch runs as one implicit transaction: one round trip.
	b := &pgx.Batch{}
	b.Queue(hotPlanGeneric)
	queueAppendLogs(b, []store.Try{a}, [][]byte{chunk}, s.logCap)
	return s.retry(ctx, op, func() error { return s.pool.SendBatch(ctx, b).Close() })
}

// appendLogsSQL appends chunk $3[i] to the log of try ($1[i], $2[i]) —
// distinct tries — in one statement: it locks the tries' log rows that
// exist (in (instance, try) order, so concurrent appends serialise on
// each try), keeps what fits under the cap $4 and counts the rest as
// dropped, writes the log rows (inserting those that did not exist) and
// inserts the kept bytes as each try's next chunk. Appends to one try come
// one at a time from the worker running it; two first appends racing
// would both take chunk 0, and the second fails on the chunk's key
// without changing anything.
const appendLogsSQL = `
	WITH u AS (
		SELECT id, try, data, octet_length(data)::bigint AS len
		FROM unnest($1::bigint[], $2::int[], $3::bytea[]) AS u(id, try, data)
	)` + appendLogsTail

// appendRecordedLogsSQL is appendLogsSQL for the tries among $1–$3 whose
// instance this transaction has just written at that try number (the
// outcome statement applied their result: told apart from late or
// duplicate reports by the transaction id of the row version, as
// incrementRecordedSQL does), so that it can travel in the round trip of
// the outcome statement instead of after it.
const appendRecordedLogsSQL = `
	WITH me AS MATERIALIZED (
		SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text::xid AS xid
	), u AS (
		SELECT u.id, u.try, u.data, octet_length(u.data)::bigint AS len
		FROM unnest($1::bigint[], $2::int[], $3::bytea[]) AS u(id, try, data)
		CROSS JOIN me
		CROSS JOIN LATERAL (SELECT t.try_number, t.xmin FROM task_instances t WHERE t.id = u.id LIMIT 1) t
		WHERE t.try_number = u.try AND t.xmin = me.xid
	)` + appendLogsTail

// appendLogsTail is what follows the u CTE (the tries and their chunks)
// in the append statements.
const appendLogsTail = `, cur AS MATERIALIZED (
		SELECT l.ti_id, l.try_number, l.size, l.dropped, l.chunks
		FROM u JOIN task_logs l ON l.ti_id = u.id AND l.try_number = u.try
		ORDER BY l.ti_id, l.try_number
		FOR NO KEY UPDATE OF l
	), a AS MATERIALIZED (
		SELECT u.id, u.try, u.data, u.len, coalesce(cur.size, 0) AS size0, coalesce(cur.dropped, 0) AS dropped0,
			coalesce(cur.chunks, 0) AS chunks0, least(u.len, greatest($4::bigint - coalesce(cur.size, 0), 0)) AS take
		FROM u LEFT JOIN cur ON cur.ti_id = u.id AND cur.try_number = u.try
	), up AS (
		INSERT INTO task_logs AS l (ti_id, try_number, size, dropped, chunks)
		SELECT id, try, size0 + take, dropped0 + len - take, chunks0 + CASE WHEN take > 0 THEN 1 ELSE 0 END
		FROM a ORDER BY id, try
		ON CONFLICT (ti_id, try_number) DO UPDATE SET size = excluded.size, dropped = excluded.dropped,
			chunks = excluded.chunks
	)
	INSERT INTO task_log_chunks (ti_id, try_number, seq, data)
	SELECT id, try, chunks0, substring(data FROM 1 FOR take::int) FROM a WHERE take > 0`

// queueAppendLogs queues on b the statement that appends chunks[i] to the
// log of try as[i] (distinct tries), keeping at most logCap bytes per try
// and counting the rest as dropped (appendLogsSQL).
func queueAppendLogs(b *pgx.Batch, as []store.Try, chunks [][]byte, logCap int) {
	ids, tries := tryArrays(as)
	b.Queue(appendLogsSQL, ids, tries, chunks, int64(logCap))
}

// appendLogsIn appends the chunks inside tx (on a pipeTx, with its next
// statement).
func appendLogsIn(ctx context.Context, tx dbtx, as []store.Try, chunks [][]byte, logCap int) error {
	if len(as) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	queueAppendLogs(b, as, chunks, logCap)
	return runBatch(ctx, tx, b)
}

// ReadLog returns the log of try try of a task instance, ending with
// TruncationMarker when bytes were dropped. A try that ran but logged
// nothing has an empty log; a try that never started is ErrNotFound.
func (s *Store) ReadLog(ctx context.Context, dagID, runID, taskID string, try int) ([]byte, error) {
	return s.ReadCallLog(ctx, dagID, runID, taskID, -1, try)
}

// ReadCallLog returns the log of one try of the call instance mapIndex of
// a callable (-1: the instance of a static task, as ReadLog).
func (s *Store) ReadCallLog(ctx context.Context, dagID, runID, taskID string, mapIndex, try int) ([]byte, error) {
	op := fmt.Sprintf("read log of task %q try %d in run %q of dag %q", taskID, try, runID, dagID)
	if mapIndex >= 0 {
		op = fmt.Sprintf("read log of call %s[%d] try %d in run %q of dag %q", taskID, mapIndex, try, runID, dagID)
	}
	var id int64
	var tries int
	q := `SELECT t.id, t.try_number FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
		WHERE r.dag_id = $1 AND r.run_id = $2 AND t.task_id = $3 AND t.call_key = '' AND $4::int = -1`
	if mapIndex >= 0 {
		q = `SELECT t.id, t.try_number FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
		WHERE r.dag_id = $1 AND r.run_id = $2 AND t.task_id = $3 AND t.map_index = $4`
	}
	err := s.pool.QueryRow(ctx, q, dagID, runID, taskID, mapIndex).Scan(&id, &tries)
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
