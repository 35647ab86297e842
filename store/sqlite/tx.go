package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/trellis-dag/trellis/store"
)

// maxBusyRetries bounds how often a transaction that ran out of
// busy_timeout waiting for another process's lock is tried again.
const maxBusyRetries = 5

// isBusy reports whether err is SQLite's "database is locked" (another
// connection holds a conflicting lock).
func isBusy(err error) bool {
	if errors.Is(err, errLockTimeout) {
		return true
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
	}
	return false
}

// mapErr turns driver errors into the store's errors: unique violations
// into store.ErrConflict, foreign-key violations into store.ErrNotFound,
// sql.ErrNoRows into store.ErrNotFound, a full disk or an I/O error into
// store.ErrUnavailable. Other driver errors keep their
// message but not their type; context errors stay testable.
//
// The message of err (with the context its callers wrapped around the
// driver error) is kept in full.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrStale) {
		return err
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w (%s)", store.ErrNotFound, err.Error())
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w: %s", store.ErrConflict, err.Error())
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return fmt.Errorf("%w: %s", store.ErrNotFound, err.Error())
		}
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN:
			return fmt.Errorf("sqlite: %s: %w", err.Error(), store.ErrUnavailable)
		}
		if se.Code()&0xff == sqlite3.SQLITE_INTERRUPT {
			return fmt.Errorf("sqlite: %s: %w", err.Error(), context.Canceled)
		}
		return fmt.Errorf("sqlite: %s", err.Error())
	}
	return err
}

// retryBusy runs fn again, with a short growing pause, while it fails with
// SQLITE_BUSY, up to maxBusyRetries times or until ctx ends.
func retryBusy(ctx context.Context, fn func() error) error {
	pause := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || !isBusy(err) || attempt >= maxBusyRetries {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause *= 2
	}
}

// txn is one writing transaction.
//
// Its statements run under a context that is never done (quiet): the
// driver watches a cancellable statement context with a goroutine, a
// progress handler and a channel per statement, which cost about a tenth
// of a worker's CPU when every finished task runs several short
// statements. The transaction itself stays bound to ctx: database/sql
// rolls it back when ctx ends, and each statement first checks ctx, so a
// cancelled transaction stops at its next statement (a statement already
// running completes; writing statements are short, and the few over
// many rows are run by bulkExec and bulkQuery under ctx itself).
type txn struct {
	s      *Store
	ctx    context.Context
	quiet  context.Context // context.WithoutCancel(ctx)
	tx     *sql.Tx
	topics map[store.Topic]bool
	stmts  map[string]*sql.Stmt // statements bound to this transaction
}

// stmtCtx returns the context a statement of the transaction runs under:
// ctx's error when it is done, else a context without cancellation.
func (w *txn) stmtCtx(ctx context.Context) (context.Context, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ctx == w.ctx {
		return w.quiet, nil
	}
	return context.WithoutCancel(ctx), nil
}

// wake records that listeners of topic must be woken once the transaction
// commits.
func (w *txn) wake(topics ...store.Topic) {
	for _, t := range topics {
		w.topics[t] = true
	}
}

// stmt returns query prepared for this transaction: from the Store's
// cache when it is there, else prepared in the transaction (and asked for
// in the cache), so a query run many times in one transaction is parsed
// once.
func (w *txn) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := w.stmts[query]; ok {
		return st, nil
	}
	var st *sql.Stmt
	if cached := w.s.stmts.get(query); cached != nil {
		st = w.tx.StmtContext(ctx, cached)
	} else {
		var err error
		if st, err = w.tx.PrepareContext(ctx, query); err != nil {
			return nil, err
		}
	}
	w.stmts[query] = st
	return st, nil
}

// bulkRows is how many rows a statement must touch for the transaction's
// context to interrupt it (bulkExec, bulkQuery): below, a statement ends
// in well under a millisecond and is not worth the driver's watcher.
const bulkRows = 256

// bulkExec runs a statement over many rows (a run's creation, the
// release of a wide fan-out) under the transaction's own context, so
// that its end interrupts the statement instead of letting it hold the
// write lock to its end.
func (w *txn) bulkExec(query string, args ...any) (sql.Result, error) {
	st, err := w.stmt(w.ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(w.ctx, args...)
}

// bulkQuery is bulkExec for a statement returning rows.
func (w *txn) bulkQuery(query string, args ...any) (*sql.Rows, error) {
	st, err := w.stmt(w.ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(w.ctx, args...)
}

func (w *txn) exec(query string, args ...any) (sql.Result, error) {
	ctx, err := w.stmtCtx(w.ctx)
	if err != nil {
		return nil, err
	}
	st, err := w.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// QueryContext runs a query in the transaction (w is a querier).
func (w *txn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx, err := w.stmtCtx(ctx)
	if err != nil {
		return nil, err
	}
	st, err := w.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// QueryRowContext runs a one-row query in the transaction.
func (w *txn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	qctx, err := w.stmtCtx(ctx)
	if err != nil {
		// A *sql.Row carrying ctx's error.
		return w.tx.QueryRowContext(ctx, query, args...)
	}
	st, err := w.stmt(qctx, query)
	if err != nil {
		// A *sql.Row carrying err: the query fails again the same way.
		return w.tx.QueryRowContext(qctx, query, args...)
	}
	return st.QueryRowContext(qctx, args...)
}

func (w *txn) query(query string, args ...any) (*sql.Rows, error) {
	return w.QueryContext(w.ctx, query, args...)
}

func (w *txn) queryRow(query string, args ...any) *sql.Row {
	return w.QueryRowContext(w.ctx, query, args...)
}

// write runs fn in a BEGIN IMMEDIATE transaction on the writer connection
// and commits it, bumping the wake-up sequence of every topic fn asked
// for; after the commit the topics are published to this process's
// subscribers. A transaction that fails with SQLITE_BUSY is run again from
// the start, so fn must only change state through w.
func (s *Store) write(ctx context.Context, op string, fn func(w *txn) error) error {
	s.stmts.prepareWanted(ctx, s.wdb)
	var seqs map[store.Topic]int64
	err := retryBusy(ctx, func() error {
		if err := s.wlock.acquire(ctx, s.busyTimeout); err != nil {
			return err
		}
		defer s.wlock.release()
		tx, err := s.wdb.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		w := &txn{s: s, ctx: ctx, quiet: context.WithoutCancel(ctx), tx: tx, topics: map[store.Topic]bool{}, stmts: map[string]*sql.Stmt{}}
		if err := fn(w); err != nil {
			_ = tx.Rollback()
			return err
		}
		bumped := make(map[store.Topic]int64, len(w.topics))
		for t := range w.topics {
			var seq int64
			if err := w.queryRow(`UPDATE wakeups SET seq = seq + 1 WHERE topic = ? RETURNING seq`, string(t)).Scan(&seq); err != nil {
				_ = tx.Rollback()
				return fmt.Errorf("bump wake-up %s: %w", t, err)
			}
			bumped[t] = seq
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		seqs = bumped
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, mapErr(canceledTx(ctx, err)))
	}
	if len(seqs) > 0 {
		s.hub.publishLocal(seqs)
	}
	return nil
}

// canceledTx says why a transaction ended early: database/sql rolls a
// transaction back when its context is done, and what the transaction
// runs after that fails with sql.ErrTxDone or "Rows are closed", which
// hide the cancellation callers look for (a scheduler stopping must not
// log it as an error; a worker retries a timed-out finish).
func canceledTx(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return err
}

// read runs fn in a read transaction on the read-only pool, so several
// queries see one snapshot.
func (s *Store) read(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	err := retryBusy(ctx, func() error {
		tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		defer tx.Rollback() //nolint:errcheck // read-only: nothing to lose
		return fn(tx)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, mapErr(canceledTx(ctx, err)))
	}
	return nil
}

// stmtCache keeps prepared statements of the writer connection for the
// queries transactions run. A query seen for the first time runs
// unprepared and is prepared before the next transaction begins (the
// writer pool has one connection, which a transaction holds).
type stmtCache struct {
	mu     sync.Mutex
	stmts  map[string]*sql.Stmt
	wanted map[string]bool
}

// maxCachedStmts bounds the cache; queries beyond it run unprepared.
const maxCachedStmts = 256

func (c *stmtCache) init() {
	c.stmts = map[string]*sql.Stmt{}
	c.wanted = map[string]bool{}
}

func (c *stmtCache) get(query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.stmts[query]; ok {
		return st
	}
	if len(c.stmts)+len(c.wanted) < maxCachedStmts {
		c.wanted[query] = true
	}
	return nil
}

// prepareWanted prepares the queries seen since the last call. A query
// that fails to prepare (e.g. its table does not exist yet) is forgotten
// and prepared again when seen again.
//
// The lock is not held while preparing: preparing waits for the writer
// connection, which a running transaction may hold while it calls get.
func (c *stmtCache) prepareWanted(ctx context.Context, db *sql.DB) {
	c.mu.Lock()
	if len(c.wanted) == 0 {
		c.mu.Unlock()
		return
	}
	var qs []string
	for q := range c.wanted {
		qs = append(qs, q)
		delete(c.wanted, q)
	}
	c.mu.Unlock()
	for _, q := range qs {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			continue
		}
		c.mu.Lock()
		if _, dup := c.stmts[q]; dup || c.stmts == nil {
			_ = st.Close()
		} else {
			c.stmts[q] = st
		}
		c.mu.Unlock()
	}
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.stmts {
		_ = st.Close()
	}
	c.stmts = nil
	c.wanted = map[string]bool{}
}

// readStmts is a querier on the read pool that prepares each query once:
// database/sql then keeps it prepared on every connection that runs it,
// so the API's frequent reads (a run, the task instances of a run) are not
// parsed again on every call. At most maxCachedStmts queries are kept;
// others run unprepared.
type readStmts struct {
	db    *sql.DB
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

func newReadStmts(db *sql.DB) *readStmts {
	return &readStmts{db: db, stmts: map[string]*sql.Stmt{}}
}

// stmt returns the prepared statement of query, or nil when it cannot be
// kept (the cache is full, or preparing failed: running it unprepared
// reports the error).
func (r *readStmts) stmt(ctx context.Context, query string) *sql.Stmt {
	r.mu.Lock()
	st, ok := r.stmts[query]
	full := len(r.stmts) >= maxCachedStmts
	r.mu.Unlock()
	if ok || full {
		return st
	}
	st, err := r.db.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.stmts[query]; ok {
		_ = st.Close()
		return old
	}
	r.stmts[query] = st
	return st
}

// QueryContext runs query on the read pool.
func (r *readStmts) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := r.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return r.db.QueryContext(ctx, query, args...)
}

// QueryRowContext runs query on the read pool.
func (r *readStmts) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := r.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return r.db.QueryRowContext(ctx, query, args...)
}

// inTx returns a querier running the prepared statements in tx.
func (r *readStmts) inTx(tx *sql.Tx) querier { return readTx{r, tx} }

func (r *readStmts) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for q, st := range r.stmts {
		_ = st.Close()
		delete(r.stmts, q)
	}
}

// readTx runs readStmts' statements inside a read transaction.
type readTx struct {
	r  *readStmts
	tx *sql.Tx
}

func (t readTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := t.r.stmt(ctx, query); st != nil {
		return t.tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return t.tx.QueryContext(ctx, query, args...)
}

func (t readTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := t.r.stmt(ctx, query); st != nil {
		return t.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return t.tx.QueryRowContext(ctx, query, args...)
}
