package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
)

// stmtTracer is a pgx tracer for tests: stmt (when set) sees every
// statement sent, alone or in a batch; trip (when set) counts each round
// trip to the server, a statement sent alone or a batch (a pipeline).
type stmtTracer struct {
	stmt func(sql string)
	trip func()
}

func (r *stmtTracer) onStmt(sql string) {
	if r.stmt != nil {
		r.stmt(sql)
	}
}

func (r *stmtTracer) onTrip() {
	if r.trip != nil {
		r.trip()
	}
}

func (r *stmtTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.onTrip()
	r.onStmt(d.SQL)
	return ctx
}
func (r *stmtTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *stmtTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.onTrip()
	return ctx
}
func (r *stmtTracer) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	r.onStmt(d.SQL)
}
func (r *stmtTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// tracedStore opens a migrated store of its own schema traced by tr,
// closed when the test ends.
func tracedStore(tb testing.TB, tr *stmtTracer) *Store {
	tb.Helper()
	ctx := context.Background()
	s, err := Open(ctx, testdb.Postgres(tb), Options{tracer: tr})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	return s
}

// tracedRun opens a migrated store of its own schema traced by tr, creates
// pools, records sp, and creates and starts its run "r" at t0 (its roots
// queued).
func tracedRun(tb testing.TB, tr *stmtTracer, sp store.DAGSpec, t0 time.Time, pools ...store.PoolSpec) *Store {
	tb.Helper()
	ctx := context.Background()
	s := tracedStore(tb, tr)
	for _, p := range pools {
		if _, err := s.CreatePool(ctx, p); err != nil {
			tb.Fatal(err)
		}
	}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		tb.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: sp.DAGID, RunID: "r", RunType: store.RunManual, LogicalDate: t0,
		IntervalStart: t0, IntervalEnd: t0, Fingerprint: sp.Fingerprint, QueuedAt: t0}); err != nil {
		tb.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, sp.DAGID, t0); err != nil {
		tb.Fatal(err)
	}
	return s
}
