package postgres_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
)

// TestFinishLocksInIDOrder: a finish batch that defers (or fails, with a
// retry policy to read) the higher of two running instances and ends the
// lower must lock both in id order, as a heartbeat of the same tries does. Another connection takes
// the heartbeat's order by hand: it locks the lower row, lets the finish
// run until it waits for a lock, then locks the higher row. A finish that
// locked its deferral first holds the higher row by then: deadlock (40P01)
// on one side (the store retries a finish that lost, and says so in its
// log).
func TestFinishLocksInIDOrder(t *testing.T) {
	t.Run("deferral", func(t *testing.T) {
		finishLocksInIDOrder(t, state.Deferred, store.Deferral{NextCheckAt: bt0.Add(time.Hour)})
	})
	t.Run("failure", func(t *testing.T) { finishLocksInIDOrder(t, state.Failed, store.Deferral{}) })
}

func finishLocksInIDOrder(t *testing.T, hiState state.TaskState, d store.Deferral) {
	ctx := context.Background()
	u, name := appName(t)
	h := &signalHandler{want: "transaction retried", seen: make(chan struct{})}
	s := openURL(t, u, postgres.Options{Logger: slog.New(h)})
	sp := store.DAGSpec{DAGID: "dl", Fingerprint: "dl-v1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
		{TaskID: "b", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
	}}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "dl", RunID: "r", RunType: store.RunManual,
		LogicalDate: bt0, IntervalStart: bt0, IntervalEnd: bt0, Fingerprint: sp.Fingerprint, QueuedAt: bt0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "dl", bt0); err != nil {
		t.Fatal(err)
	}
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	cs, err := s.ClaimTasks(ctx, w, 2, bt0)
	if err != nil || len(cs) != 2 {
		t.Fatalf("claimed %d, %v", len(cs), err)
	}
	lo, hi := cs[0], cs[1]
	if lo.ID > hi.ID {
		lo, hi = hi, lo
	}

	other, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	lock := `SELECT id FROM task_instances WHERE id = $1 FOR NO KEY UPDATE`
	if _, err := tx.Exec(ctx, lock, lo.ID); err != nil {
		t.Fatal(err)
	}

	type done struct {
		out []store.FinishOutcome
		err error
	}
	finished := make(chan done, 1)
	go func() {
		out, err := s.FinishTasks(ctx, []store.Result{
			{Try: store.Try{ID: lo.ID, TryNumber: lo.TryNumber}, State: state.Success, EndedAt: bt0},
			{Try: store.Try{ID: hi.ID, TryNumber: hi.TryNumber}, State: hiState, EndedAt: bt0, Deferral: d},
		})
		finished <- done{out, err}
	}()
	// Wait until the finish waits for the lower row.
	for deadline := time.Now().Add(30 * time.Second); ; {
		var waiting bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = $1
			AND pid <> pg_backend_pid() AND wait_event_type = 'Lock')`, name).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case got := <-finished:
			t.Fatalf("the finish ended while the lower row was locked elsewhere: %+v, %v", got.out, got.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the finish never waited for the lower row")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '20s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, lock, hi.ID); err != nil {
		t.Fatalf("locking the higher row after the lower one, as a heartbeat does: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := <-finished
	if got.err != nil {
		t.Fatalf("FinishTasks: %v", got.err)
	}
	if !got.out[0].Applied || got.out[0].State != state.Success || !got.out[1].Applied || got.out[1].State != hiState {
		t.Errorf("outcomes %+v, want success and %s applied", got.out, hiState)
	}
	select {
	case <-h.seen:
		t.Errorf("the finish was retried (a deadlock): %s", h)
	default:
	}
}
