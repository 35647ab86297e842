// Package sqlite is the embedded store backend of Trellis: a single SQLite
// file through the pure-Go driver modernc.org/sqlite, in WAL mode
// (synchronous=NORMAL, foreign keys on, busy_timeout), usable by several
// local processes at once.
//
// Every writing method runs in one transaction started with BEGIN
// IMMEDIATE on a dedicated writer connection, so a transaction holds the
// database's write lock before it reads anything and two processes never
// deadlock upgrading a read lock. The writers of all processes take turns
// through an OS file lock on <db>.lock held around each transaction (see
// writeLock): SQLite's own busy handler sleeps up to 100ms between tries
// and lets one busy process starve the others. A transaction that still
// meets SQLITE_BUSY (another program holds the lock) is run again from the
// start a few times. Reads go through a pool of read-only connections and
// see the last committed state; WAL readers never block the writer.
//
// Wake-ups (Listen) are delivered at once to subscribers of the same Store,
// and to other processes by polling PRAGMA data_version on a dedicated
// connection every Options.PollInterval while anyone listens: it changes
// whenever another connection commits, and the wakeups table, bumped in
// the writing transaction, tells which topics changed.
//
// Files next to the database: <db>-wal and <db>-shm (SQLite's), <db>.lock
// and <db>.lock-wait (the write lock).
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	// The pure-Go SQLite driver, registered as "sqlite".
	_ "modernc.org/sqlite"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/store"
)

// Defaults of Options.
const (
	DefaultLogCap       = store.DefaultLogCap
	DefaultPollInterval = 10 * time.Millisecond
	DefaultBusyTimeout  = 5 * time.Second
	// readConns is the size of the read-only connection pool (plus one
	// connection kept by the wake-up poller).
	readConns = 4
)

// Options configures Open. Zero fields take their defaults.
type Options struct {
	// Logger receives warnings (retried busy transactions, poll errors).
	// Default: slog.Default().
	Logger *slog.Logger
	// LogCap is the most bytes kept per try log; AppendLog drops the rest
	// and marks the log truncated. Default 1 MiB.
	LogCap int
	// PollInterval is how often the wake-up poller checks whether another
	// process committed (PRAGMA data_version). Default 10ms. It only runs
	// while there are subscribers.
	PollInterval time.Duration
	// BusyTimeout is how long a statement waits for another process's
	// lock before SQLITE_BUSY (then the transaction is retried). Default 5s.
	BusyTimeout time.Duration
	// Clock stamps the rows whose methods take no time argument
	// (DAGs' updated_at). Default clock.Real.
	Clock clock.Clock
}

// Store is the SQLite implementation of store.Store. Create it with Open.
type Store struct {
	path        string
	wdb         *sql.DB // one connection, BEGIN IMMEDIATE transactions
	rdb         *sql.DB // read-only connections
	wlock       *writeLock
	busyTimeout time.Duration
	log         *slog.Logger
	logCap      int
	clk         clock.Clock

	stmts   stmtCache
	reads   *readStmts // prepared statements of the read pool
	structs structCache
	hub     *hub

	hook atomic.Pointer[func(point string) error]

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens (creating it if missing) the SQLite database at path. It does
// not apply migrations; call Migrate. The in-memory database (":memory:")
// is refused: Trellis runs several processes on one database.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.LogCap < 0 {
		return nil, fmt.Errorf("open sqlite %q: negative LogCap %d", path, opts.LogCap)
	}
	if opts.LogCap == 0 {
		opts.LogCap = DefaultLogCap
	}
	if opts.PollInterval < 0 {
		return nil, fmt.Errorf("open sqlite %q: negative PollInterval %v", path, opts.PollInterval)
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = DefaultBusyTimeout
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	path = filepath.Clean(path)
	if dir := filepath.Dir(path); dir != "" {
		if fi, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("open sqlite %q: folder of the database: %w", path, err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("open sqlite %q: %q is not a folder", path, dir)
		}
	}

	wlock, err := openWriteLock(path)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	wdb, err := sql.Open("sqlite", dsn(path, opts.BusyTimeout, true))
	if err != nil {
		wlock.close()
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	// The writer connection switches the file to WAL before readers open.
	if err := retryBusy(ctx, func() error { return wdb.PingContext(ctx) }); err != nil {
		wdb.Close()
		wlock.close()
		return nil, fmt.Errorf("open sqlite %q: %w", path, mapErr(err))
	}
	rdb, err := sql.Open("sqlite", dsn(path, opts.BusyTimeout, false))
	if err != nil {
		wdb.Close()
		wlock.close()
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	rdb.SetMaxOpenConns(readConns + 1)
	rdb.SetMaxIdleConns(readConns + 1)
	if err := retryBusy(ctx, func() error { return rdb.PingContext(ctx) }); err != nil {
		wdb.Close()
		rdb.Close()
		wlock.close()
		return nil, fmt.Errorf("open sqlite %q: %w", path, mapErr(err))
	}
	s := &Store{
		path:        path,
		wdb:         wdb,
		rdb:         rdb,
		wlock:       wlock,
		busyTimeout: opts.BusyTimeout,
		log:         opts.Logger.With("store", "sqlite", "path", path),
		logCap:      opts.LogCap,
		clk:         opts.Clock,
	}
	s.stmts.init()
	s.reads = newReadStmts(rdb)
	s.structs.init()
	s.hub = newHub(s, opts.PollInterval)
	return s, nil
}

// checkPath refuses empty paths and in-memory databases.
func checkPath(path string) error {
	if strings.TrimSpace(path) == "" {
		return errors.New("open sqlite: empty database path")
	}
	lower := strings.ToLower(path)
	if lower == ":memory:" || strings.HasPrefix(lower, "file:") && (strings.Contains(lower, ":memory:") || strings.Contains(lower, "mode=memory")) {
		return fmt.Errorf("open sqlite %q: in-memory databases are not supported: the scheduler, workers and API run in several processes that must share one database file", path)
	}
	if strings.HasPrefix(lower, "file:") {
		return fmt.Errorf("open sqlite %q: give a file path, not a file: URI", path)
	}
	return nil
}

// dsn returns the modernc DSN for path: a file: URI (so any character in
// the path is safe) with the connection pragmas.
func dsn(path string, busy time.Duration, writer bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	if writer {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Set("_txlock", "immediate")
	} else {
		q.Add("_pragma", "query_only(1)")
	}
	return "file:" + escapePath(path) + "?" + q.Encode()
}

// escapePath escapes the characters that end or escape the path of a
// file: URI.
func escapePath(p string) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return r.Replace(filepath.ToSlash(p))
}

// Backend returns "sqlite".
func (s *Store) Backend() string { return "sqlite" }

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.rdb.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("ping sqlite %q: %w", s.path, mapErr(err))
	}
	return nil
}

// Close stops the wake-up poller, closes every subscription and releases
// the connections. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.hub.close()
		s.stmts.close()
		s.reads.close()
		err1 := s.rdb.Close()
		err2 := s.wdb.Close()
		err3 := s.wlock.close()
		if err := errors.Join(err1, err2, err3); err != nil {
			s.closeErr = fmt.Errorf("close sqlite %q: %w", s.path, err)
		}
	})
	return s.closeErr
}

// Failure-injection points passed to the fault hook (the same names as
// the PostgreSQL backend's and store/storetest's).
const (
	// FaultFinishRecorded: FinishTasks wrote the outcomes, before
	// releasing downstream tasks.
	FaultFinishRecorded = "finish:recorded"
	// FaultFinishReleased: downstream tasks released, before settling runs.
	FaultFinishReleased = "finish:released"
	// FaultFinishSettled: runs settled, before commit.
	FaultFinishSettled = "finish:settled"
	// FaultCreateRunInserted: CreateRun inserted the run and its task
	// instances, before commit.
	FaultCreateRunInserted = "create-run:inserted"
)

// SetFaultHook installs a failure-injection hook for tests: write
// transactions call it at the Fault* points and roll back with its error
// when it returns one. nil removes it.
func (s *Store) SetFaultHook(hook func(point string) error) {
	if hook == nil {
		s.hook.Store(nil)
		return
	}
	s.hook.Store(&hook)
}

func (s *Store) fault(point string) error {
	if h := s.hook.Load(); h != nil {
		if err := (*h)(point); err != nil {
			return fmt.Errorf("injected fault at %s: %w", point, err)
		}
	}
	return nil
}
