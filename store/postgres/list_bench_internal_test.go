package postgres

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/storetest"
)

// BenchmarkListRunTaskInstances measures the store's side of task
// instance lists across runs (issue 11): a page of 1,000 and a page of 1
// filtered by a logical date no run has, with TRELLIS_BENCH_RUNS one-task
// runs (default 100,000), first as filled (no planner statistics: this
// machine runs PostgreSQL with autovacuum off) and then after ANALYZE (as
// autovacuum would leave it).
//
//	go test -run XXX -bench ListRunTaskInstances -benchtime 20x ./store/postgres/
func BenchmarkListRunTaskInstances(b *testing.B) {
	runs := 100_000
	if v := os.Getenv("TRELLIS_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("TRELLIS_BENCH_RUNS=%q: want a positive integer", v)
		}
		runs = n
	}
	ctx := context.Background()
	s, err := Open(ctx, testdb.Postgres(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	fillRuns(b, s, 0, runs)
	future := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		q    store.TaskQuery
		n    int
	}{
		{"limit1000", store.TaskQuery{Limit: 1000}, 1000},
		{"limit1_logical_date_gte", store.TaskQuery{Limit: 1, LogicalDateGTE: &future}, 0},
	}
	for _, stats := range []string{"no_stats", "analyzed"} {
		if stats == "analyzed" {
			if _, err := s.pool.Exec(ctx, "ANALYZE"); err != nil {
				b.Fatal(err)
			}
		}
		for _, c := range cases {
			b.Run(stats+"/"+c.name, func(b *testing.B) {
				for b.Loop() {
					tis, _, err := s.ListRunTaskInstances(ctx, c.q)
					if err != nil || len(tis) != c.n {
						b.Fatalf("%d instances, %v; want %d", len(tis), err, c.n)
					}
				}
			})
		}
	}
}

// fillRuns records the one-task DAG "solo" and creates its runs n0 …
// n0+n-1 (storetest.FillRuns).
func fillRuns(b *testing.B, s *Store, n0, n int) {
	b.Helper()
	sp := store.DAGSpec{DAGID: "solo", Fingerprint: "f", MaxActiveRuns: 16,
		Tasks: []store.TaskSpec{{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess}}}
	if err := s.SyncDAGs(context.Background(), []store.DAGSpec{sp}); err != nil {
		b.Fatal(err)
	}
	storetest.FillRuns(b, s, "solo", n0, n)
}

// BenchmarkPurgeRuns measures store.PurgeAll deleting 10,000 finished
// one-task runs (with their instances and a log each) in its default
// batches: time per 10,000 runs, and runs/s.
//
//	go test -run XXX -bench PurgeRuns -benchtime 3x ./store/postgres/
func BenchmarkPurgeRuns(b *testing.B) {
	const n = 10_000
	ctx := context.Background()
	s, err := Open(ctx, testdb.Postgres(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	next := 0
	for b.Loop() {
		b.StopTimer()
		fillRuns(b, s, next, n)
		next += n
		// Finished an hour ago, each with a log of its one try.
		if _, err := s.pool.Exec(ctx, `UPDATE dag_runs SET state = 'success', ended_at = now() - interval '1 hour'`); err != nil {
			b.Fatal(err)
		}
		if _, err := s.pool.Exec(ctx, `INSERT INTO task_logs (ti_id, try_number, size) SELECT id, 1, 3 FROM task_instances`); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		p, err := store.PurgeAll(ctx, s, store.PurgeQuery{Before: time.Now()}, nil)
		if err != nil || p.Runs != n || p.Logs != n {
			b.Fatalf("purged %+v, %v; want %d runs and logs", p, err, n)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "runs/s")
}
