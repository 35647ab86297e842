// Package testdb gives tests real databases: a fresh PostgreSQL schema or
// a fresh SQLite file per test, so packages and tests run in parallel
// without seeing each other's rows.
//
// A package whose tests use PostgreSQL calls Main from its TestMain:
//
//	func TestMain(m *testing.M) { testdb.Main(m) }
//
// Main finds a server, in this order:
//  1. TRELLIS_TEST_DATABASE_URL, when set (it must answer);
//  2. postgres://postgres@127.0.0.1:5432/postgres, when it answers;
//  3. a throwaway cluster started with the PostgreSQL server binaries
//     (initdb, pg_ctl and postgres on PATH or in /usr/lib/postgresql/*/bin)
//     in a temporary directory on a free port, as the user nobody when the
//     tests run as root, and stopped when the tests end.
//
// Otherwise the tests fail with a message saying how to install
// PostgreSQL; they are never skipped. TRELLIS_TEST_FORCE_CLUSTER=1 skips
// step 2, to exercise step 3 on a machine with a server running.
//
// StartCluster starts a throwaway cluster of a test's own, e.g. one
// listening on a test network's address and trusting that network.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/trellis-dag/trellis/store"
)

// Environment variables read by this package.
const (
	// EnvURL names the PostgreSQL server to use for tests.
	EnvURL = "TRELLIS_TEST_DATABASE_URL"
	// EnvForceCluster, set to 1, makes Main start a throwaway cluster even
	// when the default server answers.
	EnvForceCluster = "TRELLIS_TEST_FORCE_CLUSTER"
	// EnvChildURL is set by tests that re-run the test binary as a second
	// process working on their database: in such a child, Postgres and
	// SQLite return this URL instead of creating a new database, and Main
	// starts no server.
	EnvChildURL = "TRELLIS_TESTDB_CHILD_URL"
)

// DefaultURL is the server tried when EnvURL is not set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

var (
	mu      sync.Mutex
	baseURL string        // server chosen by Main (or lazily, see base)
	admin   *pgxpool.Pool // creates and drops test schemas
	urls    = map[testing.TB]string{}
)

// Main finds or starts PostgreSQL, runs the tests and stops what it
// started. It exits the process with the tests' status.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv(EnvChildURL) != "" {
		return m.Run()
	}
	ctx := context.Background()
	srv, err := findServer(ctx, searchConfig{
		envURL:       os.Getenv(EnvURL),
		forceCluster: os.Getenv(EnvForceCluster) == "1",
		path:         os.Getenv("PATH"),
		libGlob:      debianLibGlob,
		envWait:      15 * time.Second,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "testdb: %v\n", err)
		return 1
	}
	mu.Lock()
	baseURL = srv.url
	mu.Unlock()
	code := m.Run()
	mu.Lock()
	if admin != nil {
		admin.Close()
		admin = nil
	}
	mu.Unlock()
	if err := srv.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "testdb: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// base returns the server URL chosen by Main. Without Main (a package that
// forgot its TestMain) it accepts EnvURL or the default server, but never
// starts a cluster it could not stop.
func base(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if baseURL != "" {
		return baseURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := os.Getenv(EnvURL)
	if u == "" {
		u = DefaultURL
	}
	if err := ping(ctx, u); err != nil {
		t.Fatalf("testdb: PostgreSQL at %s does not answer (%v); call testdb.Main(m) from TestMain so a server can be found or started", store.RedactURL(u), err)
	}
	baseURL = u
	return u
}

// Postgres returns a postgres:// URL for a new, empty schema that only
// this test uses (its search_path points at it). The schema is dropped
// when the test ends. Stores opened on the URL must be closed by then
// (register their Close with t.Cleanup after calling Postgres).
func Postgres(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(EnvChildURL); u != "" {
		return u
	}
	b := base(t)
	pool, err := adminPool(b)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	schema := schemaName(t.Name())
	ident := pgx.Identifier{schema}.Sanitize()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		t.Fatalf("testdb: create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A drop that waits on a lock means the test left a transaction
		// open: report it instead of hanging.
		tx, err := pool.Begin(ctx)
		if err == nil {
			_, err = tx.Exec(ctx, "SET LOCAL lock_timeout = '20s'")
			if err == nil {
				_, err = tx.Exec(ctx, "DROP SCHEMA "+ident+" CASCADE")
			}
			if err == nil {
				err = tx.Commit(ctx)
			} else {
				_ = tx.Rollback(ctx)
			}
		}
		if err != nil {
			t.Errorf("testdb: drop schema %s: %v", schema, err)
		}
		forget(t)
	})
	u, err := WithSearchPath(b, schema)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	remember(t, u)
	return u
}

// SQLite returns sqlite:<dir>/trellis.db for a file in a directory of its
// own, removed when the test ends.
func SQLite(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(EnvChildURL); u != "" {
		return u
	}
	u := "sqlite:" + t.TempDir() + "/trellis.db"
	remember(t, u)
	t.Cleanup(func() { forget(t) })
	return u
}

// URL returns the URL that Postgres or SQLite last returned for t, so a
// test can hand the same database to a second process (see EnvChildURL).
func URL(t testing.TB) (string, bool) {
	mu.Lock()
	defer mu.Unlock()
	u, ok := urls[t]
	return u, ok
}

func remember(t testing.TB, u string) {
	mu.Lock()
	urls[t] = u
	mu.Unlock()
}

func forget(t testing.TB) {
	mu.Lock()
	delete(urls, t)
	mu.Unlock()
}

func adminPool(u string) (*pgxpool.Pool, error) {
	mu.Lock()
	defer mu.Unlock()
	if admin != nil {
		return admin, nil
	}
	cfg, err := pgxpool.ParseConfig(u)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", store.RedactURL(u), err)
	}
	cfg.MaxConns = 4
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", store.RedactURL(u), err)
	}
	admin = p
	return p, nil
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// schemaName makes a schema name from a test name: lower case, at most 63
// bytes, unique through a random suffix.
func schemaName(test string) string {
	s := nonIdent.ReplaceAllString(strings.ToLower(test), "_")
	if len(s) > 40 {
		s = s[:40]
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t_" + strings.Trim(s, "_") + "_" + hex.EncodeToString(b[:])
}

// WithSearchPath returns u with its search_path set to schema. u is a
// postgres:// or postgresql:// URL, or a key=value connection string.
func WithSearchPath(u, schema string) (string, error) {
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		p, err := url.Parse(u)
		if err != nil {
			return "", fmt.Errorf("parse database URL: %w", err)
		}
		q := p.Query()
		q.Set("search_path", schema)
		p.RawQuery = q.Encode()
		return p.String(), nil
	}
	if strings.Contains(u, "=") {
		return u + " search_path=" + schema, nil
	}
	return "", fmt.Errorf("database URL %q: want postgres://user@host:port/db or key=value pairs", store.RedactURL(u))
}

func ping(ctx context.Context, u string) error {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return err
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 5*time.Second {
		cfg.ConnectTimeout = 5 * time.Second
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return c.Ping(ctx)
}

var errNoServer = errors.New("no PostgreSQL server")
