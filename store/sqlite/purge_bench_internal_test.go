package sqlite

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/storetest"
)

// BenchmarkPurgeRuns measures store.PurgeAll deleting 10,000 finished
// one-task runs (with their instances and a log each) in its default
// batches, incremental vacuum included: time per 10,000 runs, and runs/s.
//
//	go test -run XXX -bench PurgeRuns -benchtime 3x ./store/sqlite/
func BenchmarkPurgeRuns(b *testing.B) {
	const n = 10_000
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "purge.db"), Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	sp := store.DAGSpec{DAGID: "solo", Fingerprint: "f", MaxActiveRuns: 16,
		Tasks: []store.TaskSpec{{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess}}}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		b.Fatal(err)
	}
	next := 0
	for b.Loop() {
		b.StopTimer()
		storetest.FillRuns(b, s, "solo", next, n)
		next += n
		// Finished an hour ago, each with a log of its one try.
		ended := us(time.Now().Add(-time.Hour))
		if _, err := s.wdb.ExecContext(ctx, `UPDATE dag_runs SET state = 'success', ended_at = ?`, ended); err != nil {
			b.Fatal(err)
		}
		if _, err := s.wdb.ExecContext(ctx, `INSERT INTO task_logs (ti_id, try_number, size) SELECT id, 1, 3 FROM task_instances`); err != nil {
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
