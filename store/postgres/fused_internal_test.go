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

func TestFusable(t *testing.T) {
	ok := func(id int64) store.Result {
		return store.Result{Try: store.Try{ID: id, TryNumber: 1}, State: state.Success}
	}
	failed, skipped, branch := ok(2), ok(2), ok(2)
	failed.State, skipped.State, branch.Follow = state.Failed, state.Skipped, []string{"x"}
	for _, tc := range []struct {
		name    string
		results []store.Result
		want    bool
	}{
		{"successes", []store.Result{ok(1), ok(2)}, true},
		{"a failure", []store.Result{ok(1), failed}, false},
		{"a skip", []store.Result{ok(1), skipped}, false},
		{"a branch", []store.Result{ok(1), branch}, false},
		{"an instance twice", []store.Result{ok(1), ok(1)}, false},
	} {
		if got := fusable(tc.results); got != tc.want {
			t.Errorf("fusable(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFusedPause(t *testing.T) {
	for _, tc := range []struct{ misses, want int64 }{{0, 0}, {1, 2}, {2, 4}, {8, 256}, {20, 256}} {
		if got := fusedPause(tc.misses); got != tc.want {
			t.Errorf("fusedPause(%d) = %d, want %d", tc.misses, got, tc.want)
		}
	}
}

func TestWaitWhileSucceeding(t *testing.T) {
	for _, r := range []dag.TriggerRule{dag.AllSuccess, dag.AllDone, dag.NoneFailed} {
		if !slices.Contains(waitWhileSucceeding, string(r)) {
			t.Errorf("waitWhileSucceeding = %v, want %s in it", waitWhileSucceeding, r)
		}
	}
	for _, r := range []dag.TriggerRule{dag.OneSuccess, dag.OneDone, dag.AllFailed, dag.AllSkipped, dag.Always} {
		if slices.Contains(waitWhileSucceeding, string(r)) {
			t.Errorf("waitWhileSucceeding = %v, want no %s in it (state.Decide moves it on a success)", waitWhileSucceeding, r)
		}
	}
}

// fusedCounts traces the round trips and the fused and usual increment
// statements sent.
type fusedCounts struct{ trips, fused, usual atomic.Int64 }

func (c *fusedCounts) tracer() *stmtTracer {
	return &stmtTracer{trip: func() { c.trips.Add(1) }, stmt: func(sql string) {
		switch sql {
		case incrementFusedSQL:
			c.fused.Add(1)
		case incrementRecordedSQL, incrementSQL:
			c.usual.Add(1)
		}
	}}
}

// TestFusedFinishInOneRoundTrip finishes tries of a DAG a → j ← b
// (all_success) and a → c: a finish whose release queues c, or adds a
// success to j without deciding it, is one round trip, COMMIT included,
// and claims what it released (it fails if the finish goes back to two
// round trips, or the fused statements lose a claim or a count).
// The finish that ends the run also sends the run's wake-up.
// claimRoots claims the run's two roots, a and b, for w, by task id.
func claimRoots(t *testing.T, s *Store, w store.Worker, now time.Time) map[string]store.Claimed {
	t.Helper()
	cs, err := s.ClaimTasks(context.Background(), w, 2, now)
	if err != nil || len(cs) != 2 {
		t.Fatalf("ClaimTasks = %v, %v; want a and b", cs, err)
	}
	byTask := map[string]store.Claimed{}
	for _, c := range cs {
		byTask[c.TaskID] = c
	}
	return byTask
}

func TestFusedFinishInOneRoundTrip(t *testing.T) {
	ctx := context.Background()
	var n fusedCounts
	task := func(id string, up ...string) store.TaskSpec {
		return store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second, Upstream: up}
	}
	sp := store.DAGSpec{DAGID: "fan", Fingerprint: "fan-1", MaxActiveRuns: 1,
		Tasks: []store.TaskSpec{task("a"), task("b"), task("c", "a"), task("j", "a", "b")}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, n.tracer(), sp, t0)
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	byTask := claimRoots(t, s, w, t0)
	step := func(c store.Claimed, trips int64, want ...string) []store.Claimed {
		t.Helper()
		before := n.trips.Load()
		r := store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0, Log: []byte("done\n")}
		out, next, err := s.FinishAndClaim(ctx, []store.Result{r}, w, 2, t0)
		if err != nil {
			t.Fatalf("FinishAndClaim(%s): %v", c.TaskID, err)
		}
		if len(out) != 1 || !out[0].Applied || out[0].State != state.Success {
			t.Errorf("finishing %s: outcomes %+v, want applied success", c.TaskID, out)
		}
		if got := n.trips.Load() - before; got != trips {
			t.Errorf("finishing %s took %d round trips, want %d", c.TaskID, got, trips)
		}
		var got []string
		for _, x := range next {
			got = append(got, x.TaskID)
		}
		if !slices.Equal(got, want) {
			t.Errorf("finishing %s claimed %v, want %v", c.TaskID, got, want)
		}
		return next
	}
	step(byTask["a"], 1, "c")
	next := step(byTask["b"], 1, "j")
	if n.fused.Load() != 2 || n.usual.Load() != 0 {
		t.Errorf("fused increments %d, usual %d; want 2 and 0", n.fused.Load(), n.usual.Load())
	}
	c, _ := s.GetTaskInstance(ctx, "fan", "r", "c")
	step(store.Claimed{TaskInstance: c}, 1)
	// The run ends: its wake-up follows the commit in a round trip of
	// its own.
	step(next[0], 2)
	run, err := s.GetRun(ctx, "fan", "r")
	if err != nil || run.State != state.RunSuccess {
		t.Errorf("run after every task succeeded: %+v, %v; want success (settled by the fused finishes)", run, err)
	}
}

// TestFusedFinishFallsBackWhenDecided finishes a success whose release
// leaves downstream instances for state.Decide to move: c (one_success)
// and e (all_done, after b failed). The fused finish must abort on its
// guard and the finish run the usual way: c and e queued (claimed), the
// run settled. Without the guard both would stay waiting and the run
// not succeed. A report of a try already recorded (refused) must also go
// the usual way and say so.
func TestFusedFinishFallsBackWhenDecided(t *testing.T) {
	ctx := context.Background()
	var n fusedCounts
	task := func(id string, rule dag.TriggerRule, up ...string) store.TaskSpec {
		return store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: rule, RetryDelay: time.Second, Upstream: up}
	}
	sp := store.DAGSpec{DAGID: "rules", Fingerprint: "rules-1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		task("a", dag.AllSuccess), task("b", dag.AllSuccess),
		task("c", dag.OneSuccess, "a", "b"), task("e", dag.AllDone, "a", "b")}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, n.tracer(), sp, t0)
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	byTask := claimRoots(t, s, w, t0)
	b := byTask["b"]
	if _, err := s.FinishTasks(ctx, []store.Result{{Try: store.Try{ID: b.ID, TryNumber: b.TryNumber}, State: state.Failed,
		Permanent: true, EndedAt: t0}}); err != nil {
		t.Fatal(err)
	}
	a := byTask["a"]
	ra := store.Result{Try: store.Try{ID: a.ID, TryNumber: a.TryNumber}, State: state.Success, EndedAt: t0}
	fused := n.fused.Load()
	out, next, err := s.FinishAndClaim(ctx, []store.Result{ra}, w, 4, t0)
	if err != nil {
		t.Fatal(err)
	}
	if n.fused.Load() == fused {
		t.Errorf("finishing a sent no fused increment; the guard was not tried")
	}
	if len(out) != 1 || !out[0].Applied || out[0].State != state.Success {
		t.Errorf("finishing a: outcomes %+v, want applied success", out)
	}
	var got []string
	for _, x := range next {
		got = append(got, x.TaskID)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"c", "e"}) {
		t.Fatalf("finishing a claimed %v, want c and e (decided by state.Decide)", got)
	}
	// Refused: a's try again.
	s.fusedSkip.Store(0)
	out, _, err = s.FinishAndClaim(ctx, []store.Result{ra}, w, 4, t0)
	if err != nil || len(out) != 1 || out[0].Applied || out[0].State != state.Success {
		t.Errorf("reporting a's try again: %+v, %v; want not applied, state success", out, err)
	}
	for _, c := range next {
		if _, err := s.FinishTasks(ctx, []store.Result{{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber},
			State: state.Success, EndedAt: t0}}); err != nil {
			t.Fatal(err)
		}
	}
	run, err := s.GetRun(ctx, "rules", "r")
	if err != nil || run.State != state.RunSuccess {
		t.Errorf("run after c and e: %+v, %v; want success (its leaves c and e succeeded)", run, err)
	}
}
