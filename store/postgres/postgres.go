// Package postgres is the PostgreSQL backend of store.Store, built on
// pgx/v5 and pgxpool. It is the production store and the coordination
// engine when many schedulers and workers share one database: every state
// change is a compare-and-set inside a transaction, workers claim tasks
// with FOR UPDATE SKIP LOCKED, and wake-ups travel by LISTEN/NOTIFY.
//
// The schema lives in migrations/postgres and is applied by Migrate with
// pressly/goose under a PostgreSQL advisory lock. All tables are created in
// the connection's current schema (set search_path in the URL to keep
// several installations, or tests, in one database).
//
// Lock order, to keep deadlocks away: task instances before runs, task
// instances in id order within a statement, runs in id order. Transactions
// that still deadlock or hit a serialization failure are retried.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	neturl "net/url"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/migrations"
	"github.com/trellis-dag/trellis/store"
)

// Defaults of Options.
const (
	DefaultLogCap         = store.DefaultLogCap
	DefaultConnectTimeout = 30 * time.Second
)

// versionTable is goose's table of applied migrations, in the schema.
const versionTable = "trellis_schema_version"

// AcceptedURLForms describes the connection strings Open accepts.
const AcceptedURLForms = "postgres://user:password@host:port/database?sslmode=disable " +
	"(or postgresql://…; add search_path=SCHEMA to use a schema other than public), " +
	"or key=value pairs such as \"host=localhost user=postgres dbname=trellis\""

// Options configure a Store.
type Options struct {
	// Logger receives connection retries and migration progress (default:
	// slog.Default()).
	Logger *slog.Logger
	// LogCap is the most bytes kept per try's log (default 1 MiB); the
	// rest is dropped and ReadLog ends with a truncation marker.
	LogCap int
	// MaxConns caps the pool (default: pgxpool's, max(4, CPUs)).
	MaxConns int32
	// ConnectTimeout is how long Open keeps retrying an unreachable
	// database before giving up (default 30 s).
	ConnectTimeout time.Duration
	// Clock tells the time where a method has no time argument (default
	// the wall clock).
	Clock clock.Clock
	// QueueVacuumEvery is how many instances this Store claims between
	// two VACUUMs of the queue tables (default DefaultQueueVacuumEvery;
	// negative: never). See vacuumQueue.
	QueueVacuumEvery int

	// tracer, set by this package's tests, sees every statement sent.
	tracer pgx.QueryTracer
}

// Store is a store.Store on PostgreSQL. It is safe for concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	cfg    *pgxpool.Config
	log    *slog.Logger
	logCap int
	clock  clock.Clock
	hook   atomic.Pointer[func(point string) error]

	vacuumEvery int64        // QueueVacuumEvery
	claimed     atomic.Int64 // instances claimed since the last vacuum of the queue tables
	poked       atomic.Int64 // pokes claimed since the last vacuum of sensor_pokes
	fusedSkip   atomic.Int64 // fusable finishes to send the usual way (fusedPause)
	fusedMisses atomic.Int64 // fused finishes aborted by their guards in a row
	// limitedQueued: a limited instance was queued at the last claim
	// (ClaimTasks then sends fastClaimSQL, else lightClaimSQL).
	limitedQueued atomic.Bool
	// Hints for the next fused finish, from the claims before it: no
	// limited instance queued or running at the last look, so it claims
	// with lightClaimSQL; the last claim came back short, so it sends no
	// early claim. Wrong hints cost time, never correctness.
	lightClaim   atomic.Bool
	queueDrained atomic.Bool
}

var _ store.Store = (*Store)(nil)

// Open connects to the PostgreSQL database at url, retrying with backoff
// while it does not answer, for up to opts.ConnectTimeout. It does not
// migrate; call Migrate.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	cfg, err := parseURL(url)
	if err != nil {
		return nil, err
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if opts.tracer != nil {
		cfg.ConnConfig.Tracer = opts.tracer
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.LogCap <= 0 {
		opts.LogCap = DefaultLogCap
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.QueueVacuumEvery == 0 {
		opts.QueueVacuumEvery = DefaultQueueVacuumEvery
	}
	s := &Store{cfg: cfg, log: opts.Logger, logCap: opts.LogCap, clock: opts.Clock, vacuumEvery: int64(opts.QueueVacuumEvery)}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := s.waitReachable(ctx, pool, opts.ConnectTimeout); err != nil {
		pool.Close()
		return nil, err
	}
	var num int
	var version string
	if err := pool.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, current_setting('server_version')").Scan(&num, &version); err != nil {
		pool.Close()
		return nil, mapErr("open postgres: read the server version", err)
	}
	if err := checkServerVersion(num, version); err != nil {
		pool.Close()
		return nil, err
	}
	s.pool = pool
	return s, nil
}

// MinServerVersion is the oldest PostgreSQL release the store works with
// (as server_version_num): the schema and statements use features of 13
// (pg_current_xact_id, MATERIALIZED common table expressions).
const MinServerVersion = 130000

// checkServerVersion refuses a server older than MinServerVersion.
func checkServerVersion(num int, version string) error {
	if num < MinServerVersion {
		return fmt.Errorf("open postgres: the server is PostgreSQL %s; Trellis needs PostgreSQL 13 or newer", version)
	}
	return nil
}

// parseURL checks the form of url and parses it.
func parseURL(url string) (*pgxpool.Config, error) {
	trimmed := strings.TrimSpace(url)
	isURL := strings.HasPrefix(trimmed, "postgres://") || strings.HasPrefix(trimmed, "postgresql://")
	isDSN := !strings.Contains(trimmed, "://") && strings.Contains(trimmed, "=")
	if !isURL && !isDSN {
		return nil, fmt.Errorf("open postgres: malformed database URL %q; accepted forms: %s", store.RedactURL(url), AcceptedURLForms)
	}
	cfg, err := pgxpool.ParseConfig(trimmed)
	if err != nil {
		return nil, fmt.Errorf("open postgres: malformed database URL: %v; accepted forms: %s", err, AcceptedURLForms)
	}
	// On loopback, TLS protects nothing and costs every round trip (a
	// third of one; docs/benchmarks.md): unless the URL or PGSSLMODE chooses,
	// connect in plain first and use TLS only when the server demands it
	// (libpq's sslmode=allow) rather than the other way round (prefer, the
	// default).
	if !sslModeChosen(trimmed, isURL) && loopbackOnly(cfg) {
		withAllow := trimmed + " sslmode=allow"
		if isURL {
			sep := "?"
			if strings.Contains(trimmed, "?") {
				sep = "&"
			}
			withAllow = trimmed + sep + "sslmode=allow"
		}
		if c, err := pgxpool.ParseConfig(withAllow); err == nil {
			cfg = c
		}
	}
	// Trellis's statements are short index lookups and batched updates.
	// PostgreSQL's cost estimates on freshly filled tables can cross the
	// JIT threshold and JIT-compile a query that returns nothing, costing
	// tens of milliseconds per claim (measured by trellis bench). A URL
	// that sets jit itself keeps its choice.
	if _, set := cfg.ConnConfig.RuntimeParams["jit"]; !set {
		cfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	return cfg, nil
}

// sslModeChosen reports whether the connection string or the environment
// (PGSSLMODE) sets sslmode.
func sslModeChosen(conn string, isURL bool) bool {
	if os.Getenv("PGSSLMODE") != "" {
		return true
	}
	if isURL {
		u, err := neturl.Parse(conn)
		return err != nil || u.Query().Has("sslmode")
	}
	for _, f := range strings.Fields(conn) {
		if k, _, ok := strings.Cut(f, "="); ok && strings.TrimSpace(k) == "sslmode" {
			return true
		}
	}
	return false
}

// loopbackOnly reports whether every host cfg may connect to is on this
// machine: a loopback address, localhost or a Unix socket.
func loopbackOnly(cfg *pgxpool.Config) bool {
	local := func(host string) bool {
		if strings.HasPrefix(host, "/") || host == "localhost" {
			return true
		}
		ip := net.ParseIP(host)
		return ip != nil && ip.IsLoopback()
	}
	if !local(cfg.ConnConfig.Host) {
		return false
	}
	for _, f := range cfg.ConnConfig.Fallbacks {
		if !local(f.Host) {
			return false
		}
	}
	return true
}

// waitReachable pings until the database answers, backing off from 100 ms
// to 2 s, and gives up after timeout.
func (s *Store) waitReachable(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	where := fmt.Sprintf("%s:%d/%s", s.cfg.ConnConfig.Host, s.cfg.ConnConfig.Port, s.cfg.ConnConfig.Database)
	deadline := time.Now().Add(timeout)
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, min(5*time.Second, timeout))
		err := pool.Ping(pctx)
		cancel()
		if err == nil {
			if attempt > 1 {
				s.log.Info("database reachable", "database", where, "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("open postgres at %s: %w", where, ctx.Err())
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("open postgres at %s: database unreachable, gave up after %s (%d attempts): %s",
				where, timeout, attempt, errText(err))
		}
		wait := min(delay, left)
		s.log.Warn("database unreachable, retrying", "database", where, "attempt", attempt,
			"retry_in", wait.Round(time.Millisecond), "err", errText(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("open postgres at %s: %w", where, ctx.Err())
		case <-time.After(wait):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// Backend returns "postgres".
func (s *Store) Backend() string { return "postgres" }

// Ping checks the database answers. A pooled connection the server has
// closed (a backend terminated, a restart) fails once and is discarded, so
// an unavailable answer is tried again on a fresh connection, up to
// pingTries times, before the database is declared unavailable.
func (s *Store) Ping(ctx context.Context) error {
	var err error
	for range pingTries {
		err = s.pool.Ping(ctx)
		if err == nil || ctx.Err() != nil || !unavailable(err) {
			break
		}
	}
	return mapErr("ping", err)
}

// pingTries bounds the attempts of one Ping.
const pingTries = 3

// Close releases the pool's connections.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Migrate applies the pending migrations of migrations.Postgres to the
// current schema with goose. A session-level advisory lock whose id is
// derived from the schema name serialises processes migrating the same
// schema; the applied versions are in the table trellis_schema_version.
func (s *Store) Migrate(ctx context.Context) error {
	var schema *string
	if err := s.pool.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return mapErr("migrate", err)
	}
	if schema == nil {
		return errors.New("migrate: no current schema: the search_path names no existing schema (create it first)")
	}
	fsys, err := fs.Sub(migrations.Postgres, "postgres")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	lockID := int64(crc64.Checksum([]byte("trellis migrate "+*schema), crc64.MakeTable(crc64.ISO)) & (1<<63 - 1))
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(lockID), lock.WithLockTimeout(1, 600))
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithSessionLocker(locker), goose.WithTableName(versionTable))
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate schema %s: %s", *schema, errText(err))
	}
	for _, r := range res {
		s.log.Info("migration applied", "schema", *schema, "version", r.Source.Version,
			"file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

// SetFaultHook installs a failure-injection hook for tests: write
// transactions call it at named points (see the Fault* constants) and
// roll back with its error when it returns one. nil removes it.
func (s *Store) SetFaultHook(hook func(point string) error) {
	if hook == nil {
		s.hook.Store(nil)
		return
	}
	s.hook.Store(&hook)
}

// Failure-injection points passed to the fault hook.
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

func (s *Store) fault(point string) error {
	if h := s.hook.Load(); h != nil {
		if err := (*h)(point); err != nil {
			return fmt.Errorf("injected fault at %s: %w", point, err)
		}
	}
	return nil
}

// Planner settings of the workers' hot path (claims, finishes with their
// releases, log appends), for the rest of a transaction.
//
// A small batch (up to smallBatch rows) runs with generic plans: a
// prepared statement is then not planned again on every execution
// (PostgreSQL keeps custom plans for statements over arrays, whose
// generic cost estimate looks high: a chain's finish spent more time
// planning than executing). A generic plan is made once, maybe while the
// tables are empty, so the hot statements are written for it — every
// lookup of a table that grows is an index probe driven by the batch (a
// LATERAL subquery or an index condition on the batch's ids) — and it may
// use neither sequential scans nor hash or merge joins. TestHotPlans
// checks every hot statement's generic plan on an empty schema.
//
// A large batch is planned for its size (custom plans: planning costs
// little beside the work of a thousand rows), still without sequential
// scans.
const (
	hotPlanGeneric = `SELECT set_config('plan_cache_mode', 'force_generic_plan', true),
	set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true),
	set_config('enable_mergejoin', 'off', true)`
	hotPlanCustom = `SELECT set_config('plan_cache_mode', 'force_custom_plan', true),
	set_config('enable_seqscan', 'off', true)`
	smallBatch = 64
)

// hotPlanSetsOff returns hotPlan(n) that also turns the set trigger off
// (setsOff) for the rest of the transaction.
func hotPlanSetsOff(n int) string {
	return hotPlan(n) + `, ` + setsOffCall
}

// hotPlan returns the planner settings for a batch of n rows.
func hotPlan(n int) string {
	if n <= smallBatch {
		return hotPlanGeneric
	}
	return hotPlanCustom
}

// inTx runs fn in a transaction and commits it, retrying the whole
// transaction on deadlocks and serialization failures. fn must not keep
// state across calls.
func (s *Store) inTx(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	return s.retry(ctx, op, func() error { return pgx.BeginFunc(ctx, s.pool, fn) })
}

// maxTries bounds how often retry runs one transaction.
const maxTries = 10

// retry runs once, a whole transaction, until it succeeds, fails with an
// error other than a deadlock or serialization failure, or has been tried
// maxTries times; between tries it sleeps a random while that grows with
// each try (cancelled with ctx). The error is mapped for op.
func (s *Store) retry(ctx context.Context, op string, once func() error) error {
	for n := 1; ; n++ {
		err := once()
		if err == nil {
			return nil
		}
		if n >= maxTries || !retryable(err) {
			return mapErr(op, err)
		}
		s.log.Debug("transaction retried", "op", op, "round", n, "err", errText(err))
		timer := time.NewTimer(time.Duration(rand.Int64N(int64(n) * int64(5*time.Millisecond))))
		select {
		case <-ctx.Done():
			timer.Stop()
			return mapErr(op, ctx.Err())
		case <-timer.C:
		}
	}
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40P01" || pe.Code == "40001"
	}
	return false
}

// storeError marks errors this package made, which mapErr passes on.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// errorf makes an error callers see as is (with %w for store sentinels).
func errorf(format string, args ...any) error {
	return &storeError{fmt.Errorf(format, args...)}
}

// mapErr turns a driver error into one callers can handle without pgx:
// no rows → store.ErrNotFound, unique violation → store.ErrConflict,
// foreign-key violation → store.ErrNotFound, context errors kept; any
// other error keeps its message but not its type.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var se *storeError
	if errors.As(err, &se) {
		return fmt.Errorf("%s: %w", op, se.err)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", op, store.ErrNotFound)
	}
	for _, ce := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, ce) {
			return fmt.Errorf("%s: %w", op, ce)
		}
	}
	if unavailable(err) {
		return fmt.Errorf("%s: %w: %s", op, store.ErrUnavailable, errText(err))
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505":
			return fmt.Errorf("%s: %w: %s", op, store.ErrConflict, pe.Detail)
		case "23503":
			return fmt.Errorf("%s: %w: %s", op, store.ErrNotFound, pe.Detail)
		}
	}
	return fmt.Errorf("%s: %w", op, errors.New(errText(err)))
}

// unavailable reports whether err means the database cannot be reached or
// cannot write: a connection that could not be made or was lost, the
// server shutting down or refusing connections (SQLSTATE class 08, 57P01
// to 57P03), or out of resources such as disk space (class 53).
func unavailable(err error) bool {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "53") ||
			pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	for _, e := range []error{io.EOF, io.ErrUnexpectedEOF, syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE} {
		if errors.Is(err, e) {
			return true
		}
	}
	// pgx reports a connection it closed after a failure this way.
	return strings.Contains(err.Error(), "conn closed")
}

// errText is an error's message, with a PostgreSQL error's code and
// detail spelled out.
func errText(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		msg := fmt.Sprintf("postgres error %s: %s", pe.Code, pe.Message)
		if pe.Detail != "" {
			msg += " (" + pe.Detail + ")"
		}
		return msg
	}
	return err.Error()
}

// notify queues a wake-up on topic, delivered when the transaction
// commits (PostgreSQL folds duplicates within one transaction). On a
// pipeTx it is sent right after the commit, in the same round trip.
func notify(ctx context.Context, tx dbtx, topics ...store.Topic) error {
	if p, ok := tx.(*pipeTx); ok {
		p.after = append(p.after, topics...)
		return nil
	}
	for _, t := range topics {
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", string(t)); err != nil {
			return err
		}
	}
	return nil
}

// utc converts a time read from the database to UTC.
func utc(t time.Time) time.Time { return t.UTC() }

// utcp converts an optional time to UTC.
func utcp(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
