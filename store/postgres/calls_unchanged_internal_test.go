package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
)

// TestCallsUnchanged checks the check a call transaction that read its
// numbers without the run's lock makes under it (callsUnchangedSQL): it
// fails as a serialization failure (so the store runs the transaction
// again, locked) when a call to create exists or the cap no longer holds.
func TestCallsUnchanged(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, testdb.Postgres(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sp := store.DAGSpec{DAGID: "calls", Fingerprint: "c1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
		{TaskID: "f", Kind: dag.KindCallable, TriggerRule: dag.AllSuccess}}}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	run, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "calls", RunID: "r", RunType: store.RunManual,
		LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0, Fingerprint: "c1", QueuedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "calls", t0); err != nil {
		t.Fatal(err)
	}
	cs, err := s.ClaimTasks(ctx, store.Worker{ID: "w", Hostname: "h", PID: 1}, 1, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("claim: %v, %d claimed", err, len(cs))
	}
	if _, err := s.Call(ctx, store.CallBatch{Caller: store.Try{ID: cs[0].ID, TryNumber: cs[0].TryNumber},
		Calls: []store.NewCall{{TaskID: "f", Key: "0", Arguments: json.RawMessage(`0`)}}, MaxCalls: 10, Now: t0}); err != nil {
		t.Fatal(err)
	}
	// The run has one call, f "0".
	for _, tc := range []struct {
		name     string
		capped   bool
		nCalls   int
		created  int
		maxCalls int
		key      string
		fails    bool
	}{
		{"new key within the cap", false, 0, 2, 3, "1", false},
		{"new key over the cap", false, 0, 2, 2, "1", true},
		{"existing key", false, 1, 1, 10, "0", true},
		{"capped, count unchanged", true, 1, 1, 2, "1", false},
		{"capped, count changed", true, 0, 1, 2, "1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.pool.Exec(ctx, callsUnchangedSQL, run.ID, tc.capped, tc.nCalls, tc.created, tc.maxCalls,
				[]string{"f"}, []string{tc.key})
			var pe *pgconn.PgError
			switch {
			case tc.fails && (!errors.As(err, &pe) || pe.Code != "40001"):
				t.Fatalf("err = %v, want a serialization failure", err)
			case !tc.fails && err != nil:
				t.Fatalf("err = %v", err)
			}
		})
	}
}
