package postgres_test

import (
	"context"
	"encoding/json"
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
// lower must lock both in id order, as a heartbeat of the same tries does.
// Another connection takes the heartbeat's order by hand: it locks the
// lower row, lets the finish run until it waits for a lock, then locks the
// higher row. A finish that locked its deferral first holds the higher row
// by then: deadlock (40P01) on one side (the store retries a finish that
// lost, and says so in its log).
func TestFinishLocksInIDOrder(t *testing.T) {
	t.Run("deferral", func(t *testing.T) {
		finishLocksInIDOrder(t, state.Deferred, store.Deferral{NextCheckAt: bt0.Add(time.Hour)})
	})
	t.Run("failure", func(t *testing.T) { finishLocksInIDOrder(t, state.Failed, store.Deferral{}) })
}

func finishLocksInIDOrder(t *testing.T, hiState state.TaskState, d store.Deferral) {
	r := newLockRace(t, "dl", []store.TaskSpec{
		{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
		{TaskID: "b", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
	})
	cs := r.claim(2)
	lo, hi := cs[0], cs[1]
	if lo.ID > hi.ID {
		lo, hi = hi, lo
	}
	out := r.finishBetween(lo.ID, hi.ID, []store.Result{
		{Try: store.Try{ID: lo.ID, TryNumber: lo.TryNumber}, State: state.Success, EndedAt: bt0},
		{Try: store.Try{ID: hi.ID, TryNumber: hi.TryNumber}, State: hiState, EndedAt: bt0, Deferral: d},
	})
	if !out[0].Applied || out[0].State != state.Success || !out[1].Applied || out[1].State != hiState {
		t.Errorf("outcomes %+v, want success and %s applied", out, hiState)
	}
}

// TestFinishLocksCalleesInIDOrder: a finish that defers a caller on its
// calls locks the callees it counts and its own rows in one pass in id
// order. f(2) calls f(1), created before it (a deduplicated call: a lower
// id). Another connection, standing for a second worker finishing f(1)
// and deferring a caller of f(2) (so: in id order), locks f(1), lets the
// finish of f(2)'s deferral wait, then locks f(2). A finish that locked
// f(2) before counting f(1) holds it by then: deadlock (40P01), which
// PostgreSQL notices only after deadlock_timeout (~1 s a fib run).
func TestFinishLocksCalleesInIDOrder(t *testing.T) {
	r := newLockRace(t, "dlc", []store.TaskSpec{
		{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
		{TaskID: "f", Kind: dag.KindCallable, TriggerRule: dag.AllSuccess},
	})
	call := func(caller store.Try, args ...string) []store.CallState {
		t.Helper()
		var calls []store.NewCall
		for _, a := range args {
			calls = append(calls, store.NewCall{TaskID: "f", Key: a, Arguments: json.RawMessage(a)})
		}
		st, err := r.s.Call(r.ctx, store.CallBatch{Caller: caller, Calls: calls, MaxCalls: 100, Now: bt0})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	a := r.claim(1)[0]
	made := call(store.Try{ID: a.ID, TryNumber: a.TryNumber}, "1", "2")
	f1, f2 := made[0].ID, made[1].ID
	if f1 >= f2 {
		t.Fatalf("f(1) %d, f(2) %d: want f(1) created first", f1, f2)
	}
	tries := map[int64]store.Try{}
	for _, c := range r.claim(2) {
		tries[c.ID] = store.Try{ID: c.ID, TryNumber: c.TryNumber}
	}
	if st := call(tries[f2], "1"); st[0].ID != f1 {
		t.Fatalf("f(2) calling f(1) made %+v, want the call instance %d", st[0], f1)
	}
	out := r.finishBetween(f1, f2, []store.Result{{Try: tries[f2], State: state.Deferred, EndedAt: bt0,
		Deferral: store.Deferral{Calls: true}}})
	if !out[0].Applied || out[0].State != state.Deferred {
		t.Errorf("outcome %+v, want the deferral applied", out[0])
	}
}

// lockRace is a store with one running run of a DAG, whose finishes race
// another connection taking row locks by hand.
type lockRace struct {
	t       *testing.T
	ctx     context.Context
	s       *postgres.Store
	url     string
	name    string         // the store's application name
	retried *signalHandler // sees the store's "transaction retried"
}

func newLockRace(t *testing.T, dagID string, tasks []store.TaskSpec) *lockRace {
	ctx := context.Background()
	u, name := appName(t)
	h := &signalHandler{want: "transaction retried", seen: make(chan struct{})}
	s := openURL(t, u, postgres.Options{Logger: slog.New(h)})
	sp := store.DAGSpec{DAGID: dagID, Fingerprint: dagID + "-v1", MaxActiveRuns: 1, Tasks: tasks}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: dagID, RunID: "r", RunType: store.RunManual,
		LogicalDate: bt0, IntervalStart: bt0, IntervalEnd: bt0, Fingerprint: sp.Fingerprint, QueuedAt: bt0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, dagID, bt0); err != nil {
		t.Fatal(err)
	}
	return &lockRace{t: t, ctx: ctx, s: s, url: u, name: name, retried: h}
}

// claim claims n tries (exactly) for one worker.
func (r *lockRace) claim(n int) []store.Claimed {
	r.t.Helper()
	cs, err := r.s.ClaimTasks(r.ctx, store.Worker{ID: "w", Hostname: "h", PID: 1}, 10, bt0)
	if err != nil || len(cs) != n {
		r.t.Fatalf("claimed %d, %v; want %d", len(cs), err, n)
	}
	return cs
}

// finishBetween finishes results while another connection, in id order,
// holds row first, waits until the finish waits for a lock, then locks row
// second and commits. It fails the test if taking second fails, if the
// finish fails or if the store retried it (a deadlock), and returns its
// outcomes.
func (r *lockRace) finishBetween(first, second int64, results []store.Result) []store.FinishOutcome {
	t, ctx := r.t, r.ctx
	t.Helper()
	other, err := pgx.Connect(ctx, r.url)
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
	if _, err := tx.Exec(ctx, lock, first); err != nil {
		t.Fatal(err)
	}
	type done struct {
		out []store.FinishOutcome
		err error
	}
	finished := make(chan done, 1)
	go func() {
		out, err := r.s.FinishTasks(ctx, results)
		finished <- done{out, err}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; {
		var waiting bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = $1
			AND pid <> pg_backend_pid() AND wait_event_type = 'Lock')`, r.name).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case got := <-finished:
			t.Fatalf("the finish ended while row %d was locked elsewhere: %+v, %v", first, got.out, got.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the finish never waited for row %d", first)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '20s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, lock, second); err != nil {
		t.Fatalf("locking row %d after row %d, in id order: %v", second, first, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := <-finished
	if got.err != nil {
		t.Fatalf("FinishTasks: %v", got.err)
	}
	select {
	case <-r.retried.seen:
		t.Errorf("the finish was retried (a deadlock): %s", r.retried)
	default:
	}
	return got.out
}
