package postgres

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// claimCounts traces the round trips and the fused finishes' claim
// statements sent.
type claimCounts struct{ trips, light, full, early atomic.Int64 }

func (c *claimCounts) tracer() *stmtTracer {
	return &stmtTracer{trip: func() { c.trips.Add(1) }, stmt: func(sql string) {
		switch sql {
		case lightClaimSQL:
			c.light.Add(1)
		case fusedClaimSQL:
			c.full.Add(1)
		case earlyClaimCountedSQL:
			c.early.Add(1)
		}
	}}
}

func lightTask(id string, up ...string) store.TaskSpec {
	return store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second, Upstream: up}
}

// lightFinish finishes c's try with FinishAndClaim for up to max
// instances and returns the task ids it claimed (sorted), the claimed
// instances and the round trips it took.
func lightFinish(t *testing.T, s *Store, n *claimCounts, c store.Claimed, max int, t0 time.Time) ([]string, []store.Claimed, int64) {
	t.Helper()
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	before := n.trips.Load()
	r := store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0}
	out, next, err := s.FinishAndClaim(context.Background(), []store.Result{r}, w, max, t0)
	if err != nil {
		t.Fatalf("FinishAndClaim(%s): %v", c.TaskID, err)
	}
	if len(out) != 1 || !out[0].Applied || out[0].State != state.Success {
		t.Fatalf("finishing %s: outcomes %+v, want applied success", c.TaskID, out)
	}
	var ids []string
	for _, x := range next {
		ids = append(ids, x.TaskID)
	}
	slices.Sort(ids)
	return ids, next, n.trips.Load() - before
}

// lightFull checks that the finish of task sent one light claim, then
// one full claim (the light one aborted), since the counts light and
// full.
func lightFull(t *testing.T, task string, n *claimCounts, light, full int64) {
	t.Helper()
	if l, f := n.light.Load()-light, n.full.Load()-full; l != 1 || f != 1 {
		t.Errorf("finishing %s sent %d light and %d full claims, want 1 and 1 (the light claim aborted by its look)", task, l, f)
	}
}

// poolRunning reads pool p's counter of running slots.
func poolRunning(t *testing.T, s *Store, p string) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), `SELECT running FROM pools WHERE name = $1`, p).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLightClaimInChain finishes a chain a → b → c → d: the first
// finish after ClaimTasks (which may have taken limited instances) uses
// the full claim, whose look finds no limits in play; the next ones
// claim their child with the light claim, in one round trip each, and
// send no early claim (the claims before came back short). It fails if
// the light claim is never chosen or the early claim comes back.
func TestLightClaimInChain(t *testing.T) {
	var n claimCounts
	sp := store.DAGSpec{DAGID: "line", Fingerprint: "line-1", MaxActiveRuns: 1,
		Tasks: []store.TaskSpec{lightTask("a"), lightTask("b", "a"), lightTask("c", "b"), lightTask("d", "c")}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, n.tracer(), sp, t0)
	cs, err := s.ClaimTasks(context.Background(), store.Worker{ID: "w", Hostname: "h", PID: 1}, 2, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("ClaimTasks = %v, %v; want a", cs, err)
	}
	cur := cs[0]
	for i, want := range []string{"b", "c", "d"} {
		light, full := n.light.Load(), n.full.Load()
		ids, next, trips := lightFinish(t, s, &n, cur, 2, t0)
		if !slices.Equal(ids, []string{want}) {
			t.Fatalf("finishing %s claimed %v, want %s", cur.TaskID, ids, want)
		}
		if trips != 1 {
			t.Errorf("finishing %s took %d round trips, want 1", cur.TaskID, trips)
		}
		wantLight := int64(1)
		if i == 0 {
			wantLight = 0
		}
		if got := n.light.Load() - light; got != wantLight {
			t.Errorf("finishing %s sent %d light claims, want %d", cur.TaskID, got, wantLight)
		}
		if got := n.full.Load() - full; got != 1-wantLight {
			t.Errorf("finishing %s sent %d full claims, want %d", cur.TaskID, got, 1-wantLight)
		}
		cur = next[0]
	}
	if n.early.Load() != 0 {
		t.Errorf("the chain's finishes sent %d early claims, want 0 (the queue was drained each time)", n.early.Load())
	}
}

// TestLightClaimFallsBackForLimits forces the light claim where it is
// not equivalent to the full one; each finish must abort it and run
// again with the full claim: the pool's counter
// and limit kept, the limited instances claimed as the full claim
// would. Without the look's guard the pool's counter would leak a slot
// (p's finish) or the limited instances would be passed over.
func TestLightClaimFallsBackForLimits(t *testing.T) {
	var n claimCounts
	pooled := func(id string, prio int, up ...string) store.TaskSpec {
		ts := lightTask(id, up...)
		ts.Pool, ts.PoolSlots, ts.Priority = "p", 1, prio
		return ts
	}
	a := lightTask("a")
	a.Priority = 5
	// a → b, a → p (pool p); q1 and q2 (pool p) queued from the start.
	sp := store.DAGSpec{DAGID: "lim", Fingerprint: "lim-1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		a, lightTask("b", "a"), pooled("p", 0, "a"), pooled("q1", 1), pooled("q2", 1)}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, n.tracer(), sp, t0, store.PoolSpec{Name: "p", Slots: 1})
	cs, err := s.ClaimTasks(context.Background(), store.Worker{ID: "w", Hostname: "h", PID: 1}, 1, t0)
	if err != nil || len(cs) != 1 || cs[0].TaskID != "a" {
		t.Fatalf("ClaimTasks = %v, %v; want a (the highest priority)", cs, err)
	}

	// q1 and q2 are queued, limited: the light claim would take b alone.
	s.lightClaim.Store(true)
	light, full := n.light.Load(), n.full.Load()
	ids, next, _ := lightFinish(t, s, &n, cs[0], 4, t0)
	if !slices.Equal(ids, []string{"b", "q1"}) && !slices.Equal(ids, []string{"b", "q2"}) {
		t.Fatalf("finishing a claimed %v, want b and one of q1 and q2 (pool p has one slot)", ids)
	}
	lightFull(t, "a", &n, light, full)
	if got := poolRunning(t, s, "p"); got != 1 {
		t.Errorf("pool p counts %d running after a's finish, want 1", got)
	}
	if s.lightClaim.Load() {
		t.Errorf("lightClaim after a finish that found limited instances queued, want false")
	}
	var q store.Claimed
	for _, c := range next {
		if c.TaskID != "b" {
			q = c
		}
	}

	// q's finish frees pool p's slot, which only the full claim gives
	// back (and takes again for the other q or p).
	s.lightClaim.Store(true)
	light, full = n.light.Load(), n.full.Load()
	ids, _, _ = lightFinish(t, s, &n, q, 4, t0)
	if len(ids) != 1 || ids[0] == "b" {
		t.Fatalf("finishing %s claimed %v, want one pooled instance", q.TaskID, ids)
	}
	lightFull(t, q.TaskID, &n, light, full)
	if got := poolRunning(t, s, "p"); got != 1 {
		t.Errorf("pool p counts %d running after %s's finish took the slot back, want 1", got, q.TaskID)
	}
}

// TestLightClaimGivesBackSlots finishes the only limited try, with the
// light claim forced and nothing left to claim: the slot must be given
// back (the counter at 0), through the full claim after the look.
func TestLightClaimGivesBackSlots(t *testing.T) {
	var n claimCounts
	p := lightTask("p")
	p.Pool, p.PoolSlots = "p", 2
	sp := store.DAGSpec{DAGID: "give", Fingerprint: "give-1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{p}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, n.tracer(), sp, t0, store.PoolSpec{Name: "p", Slots: 3})
	cs, err := s.ClaimTasks(context.Background(), store.Worker{ID: "w", Hostname: "h", PID: 1}, 1, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("ClaimTasks = %v, %v; want p", cs, err)
	}
	if got := poolRunning(t, s, "p"); got != 2 {
		t.Fatalf("pool p counts %d running slots after p's claim, want 2", got)
	}
	s.lightClaim.Store(true)
	light, full := n.light.Load(), n.full.Load()
	ids, _, _ := lightFinish(t, s, &n, cs[0], 1, t0)
	if len(ids) != 0 {
		t.Errorf("finishing p claimed %v, want nothing", ids)
	}
	lightFull(t, "p", &n, light, full)
	if got := poolRunning(t, s, "p"); got != 0 {
		t.Errorf("pool p counts %d running slots after p's finish, want 0", got)
	}
	if !s.lightClaim.Load() {
		t.Errorf("lightClaim after the last limited try ended, want true (no limits in play)")
	}
}

// TestLightClaimHonoursMaxActiveTasks finishes a of a DAG capped at one
// running task (a → b, a → c) with the light claim: it claims nothing
// while a DAG is capped, and the claim within the caps takes one of b
// and c, not both.
func TestLightClaimHonoursMaxActiveTasks(t *testing.T) {
	var n claimCounts
	sp := store.DAGSpec{DAGID: "capped", Fingerprint: "capped-1", MaxActiveRuns: 1, MaxActiveTasks: 1,
		Tasks: []store.TaskSpec{lightTask("a"), lightTask("b", "a"), lightTask("c", "a")}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, n.tracer(), sp, t0)
	cs, err := s.ClaimTasks(context.Background(), store.Worker{ID: "w", Hostname: "h", PID: 1}, 1, t0)
	if err != nil || len(cs) != 1 {
		t.Fatalf("ClaimTasks = %v, %v; want a", cs, err)
	}
	s.lightClaim.Store(true)
	light := n.light.Load()
	ids, _, _ := lightFinish(t, s, &n, cs[0], 4, t0)
	if n.light.Load() == light {
		t.Fatalf("finishing a sent no light claim")
	}
	if len(ids) != 1 {
		t.Errorf("finishing a claimed %v, want one of b and c (MaxActiveTasks 1)", ids)
	}
}
