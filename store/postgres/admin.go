package postgres

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/store"
)

// databaseName is what CreateDatabase and DropDatabase accept: a plain
// lower-case identifier, so the name needs no quoting anywhere.
var databaseName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// CreateDatabase creates the empty database name on the server of
// serverURL (a postgres:// URL whose user may create databases) and
// returns serverURL pointed at it (without search_path). Throwaway installations use it: `trellis
// bench` gives every scenario a database of its own, so that neither rows
// nor LISTEN/NOTIFY wake-ups (which are per database) of other users of the
// server reach it. Drop it with DropDatabase.
func CreateDatabase(ctx context.Context, serverURL, name string) (string, error) {
	if !databaseName.MatchString(name) {
		return "", fmt.Errorf("create database %q: want a name matching %s", name, databaseName)
	}
	dbURL, err := withDatabase(serverURL, name)
	if err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	conn, err := adminConn(ctx, serverURL)
	if err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %s", name, errText(err))
	}
	return dbURL, nil
}

// DropDatabase drops the database name from the server of serverURL,
// closing the connections still open to it. A database that does not
// exist is not an error.
func DropDatabase(ctx context.Context, serverURL, name string) error {
	if !databaseName.MatchString(name) {
		return fmt.Errorf("drop database %q: want a name matching %s", name, databaseName)
	}
	conn, err := adminConn(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %s", name, errText(err))
	}
	return nil
}

// adminConn connects to serverURL for a statement that cannot run in a
// transaction.
func adminConn(ctx context.Context, serverURL string) (*pgx.Conn, error) {
	cfg, err := parseURL(serverURL)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("connect: %s", errText(err))
	}
	return conn, nil
}

// withDatabase returns the postgres:// URL u with its database replaced
// by name and without a search_path parameter (the schema it names is not
// in the new database, whose tables go to its public schema).
func withDatabase(u, name string) (string, error) {
	t := strings.TrimSpace(u)
	if !strings.HasPrefix(t, "postgres://") && !strings.HasPrefix(t, "postgresql://") {
		return "", fmt.Errorf("database URL %q: want postgres://USER@HOST[:PORT]/DATABASE", store.RedactURL(u))
	}
	p, err := url.Parse(t)
	if err != nil {
		return "", fmt.Errorf("malformed database URL %q", store.RedactURL(u))
	}
	p.Path = "/" + name
	p.RawPath = ""
	q := p.Query()
	q.Del("search_path")
	p.RawQuery = q.Encode()
	return p.String(), nil
}

// Activity is what PostgreSQL's statistics count for one database.
type Activity struct {
	// Commits and Rollbacks count transactions, read-only ones included
	// (every statement outside a transaction is one).
	Commits, Rollbacks int64
	// RowsWritten counts rows inserted, updated and deleted.
	RowsWritten int64
	// Backends is the number of connections to the database now.
	Backends int
}

// DatabaseActivity reads the statistics of database name on the server
// of serverURL (pg_stat_database). A backend reports its counts when its
// transaction ends, at most once a second, and always when it exits: for
// exact counts, read them once every connection to the database is
// closed (Backends = 0).
func DatabaseActivity(ctx context.Context, serverURL, name string) (Activity, error) {
	conn, err := adminConn(ctx, serverURL)
	if err != nil {
		return Activity{}, fmt.Errorf("activity of database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var a Activity
	err = conn.QueryRow(ctx, `SELECT xact_commit, xact_rollback, tup_inserted + tup_updated + tup_deleted, numbackends
		FROM pg_stat_database WHERE datname = $1`, name).Scan(&a.Commits, &a.Rollbacks, &a.RowsWritten, &a.Backends)
	if err != nil {
		return Activity{}, fmt.Errorf("activity of database %s: %s", name, errText(err))
	}
	return a, nil
}
