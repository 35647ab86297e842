package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/trellis-dag/trellis/store"
)

// dbtx runs statements inside a transaction: a pgx.Tx or a pipeTx.
type dbtx interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// queuedStmt is a statement whose result is not needed in Go, waiting to
// be sent with the next one.
type queuedStmt struct {
	sql  string
	args []any
}

// pipeTx is a transaction on one connection that saves round trips: BEGIN
// and statements queued with queue travel in one pipeline with the next
// statement that needs an answer, and COMMIT travels with what is still
// queued; wake-ups (notify) are sent right after COMMIT in the same round
// trip, so they do not hold PostgreSQL's notification lock through the
// commit's WAL flush (which serialises concurrent committers).
type pipeTx struct {
	conn     *pgxpool.Conn
	queued   []queuedStmt
	preamble int           // statements inPipe queues before fn (BEGIN, planner settings)
	finals   []finalQuery  // sent with COMMIT, before it
	begun    bool          // BEGIN was sent
	after    []store.Topic // wake-ups to send once committed
	// readyIfLeft sends the TopicTasksReady wake-up only when instances
	// are still queued once committed (the transaction claimed what it
	// queued itself, maybe all of it).
	readyIfLeft bool
	// readyClaimed, when set (a finish that claims), reports once the
	// statements sent with COMMIT are read that the transaction claimed
	// every instance its release queued; released is set instead of
	// adding TopicTasksReady to after for that release. The wake-up is
	// then sent (with readyIfLeft's guard, in a round trip of its own)
	// only when readyClaimed is false: a statement after COMMIT is a
	// transaction of its own, in this backend and in every listening one.
	readyClaimed func() bool
	released     bool
	// afterIf are wake-ups decided by what the statements sent with
	// COMMIT returned: sent in a round trip of their own after it.
	afterIf []conditionalTopic
}

// conditionalTopic is a wake-up to send after the commit when send says
// so.
type conditionalTopic struct {
	topic store.Topic
	send  func() bool
}

// finalQuery is a statement of the transaction sent in the same round
// trip as COMMIT, whose rows read consumes.
type finalQuery struct {
	sql  string
	args []any
	read func(pgx.Rows) error
}

// beforeCommit adds a statement to send with COMMIT, its rows read by
// read (which must not close them).
func (p *pipeTx) beforeCommit(sql string, args []any, read func(pgx.Rows) error) {
	p.finals = append(p.finals, finalQuery{sql: sql, args: args, read: read})
}

// queue adds a statement to send with the next one.
func (p *pipeTx) queue(sql string, args ...any) {
	p.queued = append(p.queued, queuedStmt{sql: sql, args: args})
}

// send sends the queued statements and sql in one pipeline and checks
// the queued ones; the caller reads sql's result from br and closes it.
func (p *pipeTx) send(ctx context.Context, sql string, args []any) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	for _, q := range p.queued {
		b.Queue(q.sql, q.args...)
	}
	b.Queue(sql, args...)
	n := len(p.queued)
	p.queued, p.begun = nil, true
	br := p.conn.SendBatch(ctx, b)
	for range n {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return nil, err
		}
	}
	return br, nil
}

// Query runs sql after the queued statements, in the same round trip.
func (p *pipeTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if len(p.queued) == 0 {
		return p.conn.Query(ctx, sql, args...)
	}
	br, err := p.send(ctx, sql, args)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

// queryAll runs the queued statements and qs in one round trip, giving
// each statement's rows to its read (which must not close them).
func (p *pipeTx) queryAll(ctx context.Context, qs ...finalQuery) error {
	b := &pgx.Batch{}
	for _, q := range p.queued {
		b.Queue(q.sql, q.args...)
	}
	for _, q := range qs {
		b.Queue(q.sql, q.args...)
	}
	n := len(p.queued)
	p.queued, p.begun = nil, true
	br := p.conn.SendBatch(ctx, b)
	if err := readBatch(br, n, qs); err != nil {
		_ = br.Close()
		return err
	}
	return br.Close()
}

// readBatch reads the results of a batch in order: n statements whose
// results are not needed, then one result per query of qs, given to its
// read. It does not close br.
func readBatch(br pgx.BatchResults, n int, qs []finalQuery) error {
	for range n {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	for _, q := range qs {
		rows, err := br.Query()
		if err == nil {
			err = q.read(rows)
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Exec runs sql after the queued statements, in the same round trip.
func (p *pipeTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(p.queued) == 0 {
		return p.conn.Exec(ctx, sql, args...)
	}
	br, err := p.send(ctx, sql, args)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// commit sends what is queued, COMMIT and the wake-ups in one round trip.
// A wake-up that fails after the commit is logged, not returned: the
// transaction is durable, and receivers also poll.
func (p *pipeTx) commit(ctx context.Context, log *slog.Logger) error {
	if !p.begun && len(p.queued) == p.preamble && len(p.after) == 0 && len(p.finals) == 0 {
		return nil // only the preamble queued: nothing was done
	}
	b := &pgx.Batch{}
	for _, q := range p.queued {
		b.Queue(q.sql, q.args...)
	}
	for _, f := range p.finals {
		b.Queue(f.sql, f.args...)
	}
	b.Queue("COMMIT")
	for _, t := range p.after {
		if t == store.TopicTasksReady && p.readyIfLeft {
			b.Queue(readyIfLeftSQL, string(t))
			continue
		}
		b.Queue("SELECT pg_notify($1, '')", string(t))
	}
	n := len(p.queued)
	finals := p.finals
	p.queued, p.finals = nil, nil
	br := p.conn.SendBatch(ctx, b)
	if err := readBatch(br, n, finals); err != nil {
		_ = br.Close()
		return err
	}
	tag, err := br.Exec()
	if err != nil {
		_ = br.Close()
		return err
	}
	if tag.String() != "COMMIT" {
		_ = br.Close()
		return fmt.Errorf("commit: the transaction was rolled back (%s)", tag.String())
	}
	after := p.after
	for _, t := range after {
		if _, err := br.Exec(); err != nil {
			log.Warn("wake-up not sent after commit; receivers will poll", "topic", string(t), "err", errText(err))
			break
		}
	}
	_ = br.Close()
	if t := store.TopicTasksReady; p.released && !slices.Contains(after, t) && !p.readyClaimed() {
		after = append(after, t)
		if _, err := p.conn.Exec(ctx, readyIfLeftSQL, string(t)); err != nil {
			log.Warn("wake-up not sent after commit; receivers will poll", "topic", string(t), "err", errText(err))
		}
	}
	for _, c := range p.afterIf {
		if !c.send() || slices.Contains(after, c.topic) {
			continue
		}
		if _, err := p.conn.Exec(ctx, "SELECT pg_notify($1, '')", string(c.topic)); err != nil {
			log.Warn("wake-up not sent after commit; receivers will poll", "topic", string(c.topic), "err", errText(err))
		}
	}
	return nil
}

// readyIfLeftSQL sends the TopicTasksReady wake-up ($1) only when
// claimableLeft.
const readyIfLeftSQL = "SELECT pg_notify($1, '') WHERE " + claimableLeft

// claimableLeft is true when queued instances may be claimable: an
// unlimited one, or a limited one in a pool with room (keys are not
// looked at: a wake-up too many costs a claim that finds nothing).
const claimableLeft = `(EXISTS (SELECT 1 FROM task_queue WHERE NOT limited)
	OR EXISTS (SELECT 1 FROM pools p CROSS JOIN LATERAL (SELECT 1 FROM task_queue t
			WHERE t.limited AND t.pool = p.name AND t.task_key IS NULL AND t.concurrency_key IS NULL LIMIT 1) x
		WHERE p.slots < 0 OR p.running < p.slots)
	OR EXISTS (SELECT 1 FROM concurrency_keys WHERE queued > 0 AND running < lim))`

// rollback ends a failed transaction. When it cannot, the pool drops the
// connection on release (it is not idle).
func (p *pipeTx) rollback() {
	if !p.begun {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = p.conn.Exec(ctx, "ROLLBACK")
}

// batchRows are the rows of the last statement of a pipeline; closing
// them (or reading past the end) ends the pipeline, freeing the
// connection.
type batchRows struct {
	pgx.Rows
	br     pgx.BatchResults
	closed bool
	err    error
}

// Next advances to the next row, ending the pipeline after the last.
func (r *batchRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.end()
	return false
}

// Close closes the rows and ends the pipeline.
func (r *batchRows) Close() { r.end() }

// Err is the error of the rows or else of ending the pipeline.
func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.err
}

func (r *batchRows) end() {
	if r.closed {
		return
	}
	r.closed = true
	r.Rows.Close()
	r.err = r.br.Close()
}

// inPipe runs fn in a pipeTx with the planner settings plan (hotPlan)
// and commits it, retrying the whole transaction on deadlocks and
// serialization failures, like inTx.
func (s *Store) inPipe(ctx context.Context, op, plan string, fn func(p *pipeTx) error) error {
	return s.retry(ctx, op, func() error { return s.pipeOnce(ctx, plan, fn) })
}

func (s *Store) pipeOnce(ctx context.Context, plan string, fn func(p *pipeTx) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	p := &pipeTx{conn: conn}
	p.queue("BEGIN")
	p.queue(plan)
	p.preamble = len(p.queued)
	if err := fn(p); err != nil {
		p.rollback()
		return err
	}
	if err := p.commit(ctx, s.log); err != nil {
		p.rollback()
		return err
	}
	return nil
}

// runBatch runs b inside tx: queued on a pipeTx (sent with the next
// statement), sent at once on a pgx.Tx.
func runBatch(ctx context.Context, tx dbtx, b *pgx.Batch) error {
	switch t := tx.(type) {
	case *pipeTx:
		for _, q := range b.QueuedQueries {
			t.queue(q.SQL, q.Arguments...)
		}
		return nil
	case pgx.Tx:
		return t.SendBatch(ctx, b).Close()
	default:
		return errors.New("run batch: unsupported transaction type")
	}
}
