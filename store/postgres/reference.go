package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// referenceTable is the table MeasureReference writes; referenceRows is
// how many rows it holds (pgbench's accounts at scale 1).
const (
	referenceTable   = "trellis_reference"
	referenceRows    = 100_000
	referenceChannel = "trellis_reference"
)

// Reference is what the server does without Trellis, measured by
// MeasureReference: the yardstick `trellis bench` divides its figures by.
type Reference struct {
	// UpdateTPS is the single-row UPDATE transactions committed per
	// second by the clients together (pgbench's simple update, each
	// statement its own transaction).
	UpdateTPS float64
	// Updates is how many were committed in all.
	Updates int
	// RoundTrips are the times from sending a transaction that updates a
	// row and notifies, to another connection receiving the notification:
	// a commit's WAL flush plus a NOTIFY delivery.
	RoundTrips []time.Duration
}

// MeasureReference measures the PostgreSQL server of dbURL on its own, on
// a table it creates in that database and drops afterwards: clients
// connections each committing single-row UPDATEs of random rows for d,
// then roundTrips commit + NOTIFY round trips one after another. The
// database should be a throwaway one (`trellis bench` makes a fresh one).
func MeasureReference(ctx context.Context, dbURL string, clients int, d time.Duration, roundTrips int) (Reference, error) {
	if clients < 1 || d <= 0 || roundTrips < 1 {
		return Reference{}, fmt.Errorf("reference: want at least one client, a positive duration and one round trip, got %d, %v, %d",
			clients, d, roundTrips)
	}
	admin, err := adminConn(ctx, dbURL)
	if err != nil {
		return Reference{}, fmt.Errorf("reference: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	tbl := pgx.Identifier{referenceTable}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE TABLE "+tbl+" (id integer PRIMARY KEY, n bigint NOT NULL)"); err != nil {
		return Reference{}, fmt.Errorf("reference: create table: %s", errText(err))
	}
	defer func() { _, _ = admin.Exec(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS "+tbl) }()
	if _, err := admin.Exec(ctx, "INSERT INTO "+tbl+" SELECT g, 0 FROM generate_series(1, $1) g", referenceRows); err != nil {
		return Reference{}, fmt.Errorf("reference: fill table: %s", errText(err))
	}
	if _, err := admin.Exec(ctx, "VACUUM ANALYZE "+tbl); err != nil {
		return Reference{}, fmt.Errorf("reference: vacuum: %s", errText(err))
	}
	var ref Reference
	ref.Updates, ref.UpdateTPS, err = updateLoad(ctx, dbURL, clients, d)
	if err != nil {
		return Reference{}, err
	}
	ref.RoundTrips, err = notifyRoundTrips(ctx, dbURL, admin, roundTrips)
	return ref, err
}

// updateLoad runs clients connections committing single-row UPDATEs for
// d and returns how many committed and their rate.
func updateLoad(ctx context.Context, dbURL string, clients int, d time.Duration) (int, float64, error) {
	conns := make([]*pgx.Conn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for i := range conns {
		c, err := adminConn(ctx, dbURL)
		if err != nil {
			return 0, 0, fmt.Errorf("reference: %w", err)
		}
		conns[i] = c
	}
	update := "UPDATE " + pgx.Identifier{referenceTable}.Sanitize() + " SET n = n + $1 WHERE id = $2"
	counts := make([]int, clients)
	errs := make([]error, clients)
	lctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	began := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			for lctx.Err() == nil {
				if _, err := c.Exec(lctx, update, rand.IntN(10_000)-5_000, 1+rand.IntN(referenceRows)); err != nil {
					if lctx.Err() == nil {
						errs[i] = fmt.Errorf("reference: update: %s", errText(err))
					}
					return
				}
				counts[i]++
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return 0, 0, err
	}
	n := 0
	for _, c := range counts {
		n += c
	}
	return n, float64(n) / elapsed.Seconds(), nil
}

// notifyRoundTrips sends n transactions that update a row and notify,
// one after another on sender, each timed until a listening connection
// receives its notification.
func notifyRoundTrips(ctx context.Context, dbURL string, sender *pgx.Conn, n int) ([]time.Duration, error) {
	listener, err := adminConn(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	defer listener.Close(context.WithoutCancel(ctx))
	if _, err := listener.Exec(ctx, "LISTEN "+pgx.Identifier{referenceChannel}.Sanitize()); err != nil {
		return nil, fmt.Errorf("reference: listen: %s", errText(err))
	}
	// One simple-protocol message: the two statements are one transaction.
	tx := "UPDATE " + pgx.Identifier{referenceTable}.Sanitize() + " SET n = n + 1 WHERE id = 1; NOTIFY " +
		pgx.Identifier{referenceChannel}.Sanitize()
	out := make([]time.Duration, 0, n)
	for range n {
		began := time.Now()
		if _, err := sender.Exec(ctx, tx, pgx.QueryExecModeSimpleProtocol); err != nil {
			return nil, fmt.Errorf("reference: notify: %s", errText(err))
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reference: wait for the notification: %s", errText(err))
		}
		out = append(out, time.Since(began))
	}
	return out, nil
}

// TableWrites is what PostgreSQL's statistics count for one table.
type TableWrites struct {
	// Updates counts the rows updated; HOTUpdates those of them updated
	// without a new index entry (heap-only tuples).
	Updates, HOTUpdates int64
	// DeadRows is the estimate of dead row versions not yet vacuumed.
	DeadRows int64
}

// TableActivity reads the statistics of table in the database of dbURL
// (pg_stat_user_tables; the table of the search path, not one of that name
// in another schema). Backends report their counts when idle, at most
// once a second: read after the writers have been idle for a second.
func TableActivity(ctx context.Context, dbURL, table string) (TableWrites, error) {
	conn, err := adminConn(ctx, dbURL)
	if err != nil {
		return TableWrites{}, fmt.Errorf("activity of table %s: %w", table, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var w TableWrites
	err = conn.QueryRow(ctx, `SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup FROM pg_stat_user_tables WHERE relid = to_regclass($1)`,
		table).Scan(&w.Updates, &w.HOTUpdates, &w.DeadRows)
	if errors.Is(err, pgx.ErrNoRows) {
		return TableWrites{}, fmt.Errorf("activity of table %s: no such table", table)
	}
	if err != nil {
		return TableWrites{}, fmt.Errorf("activity of table %s: %s", table, errText(err))
	}
	return w, nil
}
