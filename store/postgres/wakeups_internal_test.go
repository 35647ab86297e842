package postgres

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// notifyCounter returns a tracer counting into n the statements sent
// that call pg_notify.
func notifyCounter(n *atomic.Int64) *stmtTracer {
	return &stmtTracer{stmt: func(sql string) {
		if strings.Contains(sql, "pg_notify") {
			n.Add(1)
		}
	}}
}

// finishStep finishes c's try as a success for w, claiming up to max, and
// returns what it claimed and how many wake-up statements (counted in n)
// it sent.
func finishStep(t *testing.T, s *Store, n *atomic.Int64, w store.Worker, c store.Claimed, max int, at time.Time) ([]store.Claimed, int64) {
	t.Helper()
	before := n.Load()
	r := store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: at}
	_, next, err := s.FinishAndClaim(context.Background(), []store.Result{r}, w, max, at)
	if err != nil {
		t.Fatalf("FinishAndClaim(%s): %v", c.TaskID, err)
	}
	return next, n.Load() - before
}

// TestChainEdgeSendsNoWakeUp walks a line t0 → t1 → t2 → {x, y} the way a
// worker does (FinishAndClaim) and counts the wake-up statements sent. A
// finish that claims every instance it released must send none: a
// statement after COMMIT is a transaction of its own (2.2 transactions
// per task in `trellis bench --scenario chain` against 1.2 without), and
// a wake-up sent costs one in every listening backend too. A finish that
// leaves a released instance unclaimed must send one.
func TestChainEdgeSendsNoWakeUp(t *testing.T) {
	ctx := context.Background()
	var notifies atomic.Int64
	sp := store.DAGSpec{DAGID: "line", Fingerprint: "line-1", MaxActiveRuns: 1}
	for i, id := range []string{"t0", "t1", "t2", "x", "y"} {
		ts := store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second}
		if i > 0 {
			ts.Upstream = []string{fmt.Sprintf("t%d", min(i-1, 2))}
		}
		sp.Tasks = append(sp.Tasks, ts)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, notifyCounter(&notifies), sp, t0)
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	cs, err := s.ClaimTasks(ctx, w, 4, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("ClaimTasks = %d instances, %v; want t0", len(cs), err)
	}
	step := func(c store.Claimed, max int) ([]store.Claimed, int64) {
		t.Helper()
		return finishStep(t, s, &notifies, w, c, max, t0)
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
	var notifies atomic.Int64
	sp := store.DAGSpec{DAGID: "pooled", Fingerprint: "pooled-1", MaxActiveRuns: 1}
	for _, id := range []string{"a", "b", "c"} {
		sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess,
			RetryDelay: time.Second, Pool: "p", PoolSlots: 1})
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, notifyCounter(&notifies), sp, t0, store.PoolSpec{Name: "p", Slots: 1})
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	cs, err := s.ClaimTasks(ctx, w, 4, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("ClaimTasks = %d instances, %v; want 1 (a pool of one slot)", len(cs), err)
	}
	step := func(c store.Claimed, max int) ([]store.Claimed, int64) {
		t.Helper()
		return finishStep(t, s, &notifies, w, c, max, t0)
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
