// Package dial opens the store named by a database URL
// (TRELLIS_DATABASE_URL): PostgreSQL for postgres:// and postgresql://
// URLs, the embedded SQLite file for sqlite:PATH and sqlite://PATH.
package dial

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
	"github.com/trellis-dag/trellis/store/sqlite"
)

// Backends returned by ParseURL.
const (
	Postgres = "postgres"
	SQLite   = "sqlite"
)

// DefaultURL is the store used when none is configured: the embedded
// SQLite file trellis.db in the working directory.
const DefaultURL = "sqlite:trellis.db"

// AcceptedForms describes the URLs Open accepts, for error messages.
const AcceptedForms = "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?PARAMS], " +
	"postgresql://… (the same), sqlite:PATH or sqlite://PATH (a database file; " +
	"sqlite::memory: is not accepted: the scheduler, workers and API run as several processes sharing one file)"

// Options configures Open. Zero fields take their defaults.
type Options struct {
	// Logger receives connection retries and migration progress
	// (default slog.Default()).
	Logger *slog.Logger
	// ConnectTimeout is how long an unreachable PostgreSQL server is
	// retried, with backoff and a log line per attempt, before Open gives
	// up (default 30 s).
	ConnectTimeout time.Duration
	// LogCap is the most bytes kept per task try's log (default 1 MiB).
	LogCap int
	// Migrate applies pending migrations after opening.
	Migrate bool
}

// ParseURL checks a database URL and splits it into the backend
// (Postgres or SQLite) and its target: the URL itself for PostgreSQL, the
// file path for SQLite. A malformed or unknown URL is an error naming the
// accepted forms.
func ParseURL(raw string) (backend, target string, err error) {
	u := strings.TrimSpace(raw)
	lower := strings.ToLower(u)
	switch {
	case u == "":
		return "", "", fmt.Errorf("empty database URL; accepted forms: %s", AcceptedForms)
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		p, err := url.Parse(u)
		if err != nil {
			return "", "", fmt.Errorf("malformed database URL %q: %v; accepted forms: %s", store.RedactURL(u), unwrapURLError(err), AcceptedForms)
		}
		if p.Opaque != "" {
			return "", "", fmt.Errorf("malformed database URL %q: want %s://HOST…; accepted forms: %s", store.RedactURL(u), p.Scheme, AcceptedForms)
		}
		return Postgres, u, nil
	case strings.HasPrefix(lower, "sqlite:"):
		path := strings.TrimPrefix(u[len("sqlite:"):], "//")
		switch {
		case path == "":
			return "", "", fmt.Errorf("database URL %q has no file path; accepted forms: %s", u, AcceptedForms)
		case isMemory(path):
			return "", "", fmt.Errorf("database URL %q: in-memory SQLite is not accepted: the scheduler, workers and API run as several processes that must share one database file; use sqlite:PATH", u)
		case strings.HasPrefix(strings.ToLower(path), "file:"):
			return "", "", fmt.Errorf("database URL %q: give the SQLite file as a plain path, not a file: URI; accepted forms: %s", u, AcceptedForms)
		case strings.ContainsAny(path, "?#"):
			return "", "", fmt.Errorf("database URL %q: SQLite URLs take a plain file path, without query parameters; accepted forms: %s", u, AcceptedForms)
		}
		return SQLite, path, nil
	}
	return "", "", fmt.Errorf("unknown database URL %q; accepted forms: %s", store.RedactURL(u), AcceptedForms)
}

func isMemory(path string) bool {
	p := strings.ToLower(path)
	return p == ":memory:" || strings.HasPrefix(p, "file::memory:") || strings.Contains(p, "mode=memory")
}

// unwrapURLError drops the *url.Error wrapper, whose message repeats the
// URL (with its password).
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Open opens the store named by url and, with opts.Migrate, applies its
// pending migrations (safe when several processes start together).
func Open(ctx context.Context, url string, opts Options) (store.Store, error) {
	backend, target, err := ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var s store.Store
	switch backend {
	case Postgres:
		s, err = postgres.Open(ctx, target, postgres.Options{Logger: opts.Logger, LogCap: opts.LogCap,
			ConnectTimeout: opts.ConnectTimeout})
	case SQLite:
		s, err = sqlite.Open(ctx, target, sqlite.Options{Logger: opts.Logger, LogCap: opts.LogCap})
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if opts.Migrate {
		if err := s.Migrate(ctx); err != nil {
			return nil, errors.Join(fmt.Errorf("open store: %w", err), s.Close())
		}
	}
	return s, nil
}
