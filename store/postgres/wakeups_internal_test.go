package postgres

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// notifyCounter is a pgx tracer counting the statements sent that call
// pg_notify.
type notifyCounter struct{ n atomic.Int64 }

func (c *notifyCounter) add(sql string) {
	if strings.Contains(sql, "pg_notify") {
		c.n.Add(1)
	}
}

func (c *notifyCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.add(d.SQL)
	return ctx
}
func (c *notifyCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (c *notifyCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (c *notifyCounter) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.add(d.SQL)
}
func (c *notifyCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// TestChainEdgeSendsNoWakeUp walks a line t0 → t1 → t2 → {x, y} the way a
// worker does (FinishAndClaim) and counts the wake-up statements sent. A
// finish that claims every instance it released must send none: a
// statement after COMMIT is a transaction of its own (2.2 transactions
// per task in `trellis bench --scenario chain` against 1.2 without), and
// a wake-up sent costs one in every listening backend too. A finish that
// leaves a released instance unclaimed must send one.
func TestChainEdgeSendsNoWakeUp(t *testing.T) {
	ctx := context.Background()
	nc := &notifyCounter{}
	s, err := Open(ctx, testdb.Postgres(t), Options{tracer: nc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	sp := store.DAGSpec{DAGID: "line", Fingerprint: "line-1", MaxActiveRuns: 1}
	for i, id := range []string{"t0", "t1", "t2", "x", "y"} {
		ts := store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second}
		if i > 0 {
			ts.Upstream = []string{fmt.Sprintf("t%d", min(i-1, 2))}
		}
		sp.Tasks = append(sp.Tasks, ts)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "line", RunID: "r", RunType: store.RunManual, LogicalDate: t0,
		IntervalStart: t0, IntervalEnd: t0, Fingerprint: sp.Fingerprint, QueuedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "line", t0); err != nil {
		t.Fatal(err)
	}
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	cs, err := s.ClaimTasks(ctx, w, 4, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("ClaimTasks = %d instances, %v; want t0", len(cs), err)
	}
	// step finishes c, claiming up to max, and returns what it claimed and
	// how many wake-up statements it sent.
	step := func(c store.Claimed, max int) ([]store.Claimed, int64) {
		t.Helper()
		before := nc.n.Load()
		r := store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0}
		_, next, err := s.FinishAndClaim(ctx, []store.Result{r}, w, max, t0)
		if err != nil {
			t.Fatalf("FinishAndClaim(%s): %v", c.TaskID, err)
		}
		return next, nc.n.Load() - before
	}
	c := cs[0]
	for _, want := range []string{"t1", "t2"} {
		next, n := step(c, 4)
		if len(next) != 1 || next[0].TaskID != want {
			t.Fatalf("finishing %s claimed %v, want %s", c.TaskID, next, want)
		}
		if n != 0 {
			t.Errorf("finishing %s, which claimed the %s it released, sent %d wake-up statements, want 0", c.TaskID, want, n)
		}
		c = next[0]
	}
	// t2 releases x and y; a claim of one leaves the other to wake for.
	next, n := step(c, 1)
	if len(next) != 1 {
		t.Fatalf("finishing t2 with one slot claimed %v, want x or y", next)
	}
	if n != 1 {
		t.Errorf("finishing t2, which left one of x and y queued, sent %d wake-up statements, want 1", n)
	}
	left, err := s.ClaimTasks(ctx, w, 4, t0)
	if err != nil || len(left) != 1 || left[0].TaskID == next[0].TaskID {
		t.Errorf("ClaimTasks after t2 = %v, %v; want the other of x and y", left, err)
	}
}

// TestFullPoolRefilledSendsNoWakeUp finishes a try of a full pool of one
// slot while another instance waits for it: a finish whose claim takes
// the slot back leaves the pool full, so it must send no wake-up (each
// one costs a transaction in every listening backend, and claims that
// find the pool full: `trellis bench --scenario pool` 0.44 → 0.14
// transactions/task with the executor keeping a try's slot for its
// finish); a finish that claims nothing leaves the slot free and must
// send one.
func TestFullPoolRefilledSendsNoWakeUp(t *testing.T) {
	ctx := context.Background()
	nc := &notifyCounter{}
	s, err := Open(ctx, testdb.Postgres(t), Options{tracer: nc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreatePool(ctx, store.PoolSpec{Name: "p", Slots: 1}); err != nil {
		t.Fatal(err)
	}
	sp := store.DAGSpec{DAGID: "pooled", Fingerprint: "pooled-1", MaxActiveRuns: 1}
	for _, id := range []string{"a", "b", "c"} {
		sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess,
			RetryDelay: time.Second, Pool: "p", PoolSlots: 1})
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "pooled", RunID: "r", RunType: store.RunManual, LogicalDate: t0,
		IntervalStart: t0, IntervalEnd: t0, Fingerprint: sp.Fingerprint, QueuedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "pooled", t0); err != nil {
		t.Fatal(err)
	}
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	cs, err := s.ClaimTasks(ctx, w, 4, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("ClaimTasks = %d instances, %v; want 1 (a pool of one slot)", len(cs), err)
	}
	step := func(c store.Claimed, max int) ([]store.Claimed, int64) {
		t.Helper()
		before := nc.n.Load()
		r := store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0}
		_, next, err := s.FinishAndClaim(ctx, []store.Result{r}, w, max, t0)
		if err != nil {
			t.Fatalf("FinishAndClaim(%s): %v", c.TaskID, err)
		}
		return next, nc.n.Load() - before
	}
	next, n := step(cs[0], 1)
	if len(next) != 1 {
		t.Fatalf("finishing %s with one slot claimed %v, want one of the others", cs[0].TaskID, next)
	}
	if n != 0 {
		t.Errorf("finishing %s, whose claim took the pool's slot back, sent %d wake-up statements, want 0", cs[0].TaskID, n)
	}
	if _, n := step(next[0], 0); n != 1 {
		t.Errorf("finishing %s without a claim, which freed the slot the third waits for, sent %d wake-up statements, want 1", next[0].TaskID, n)
	}
	if left, err := s.ClaimTasks(ctx, w, 4, t0); err != nil || len(left) != 1 {
		t.Errorf("ClaimTasks after = %v, %v; want the third", left, err)
	}
}
