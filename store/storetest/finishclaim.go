package storetest

import (
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// finishClaim calls FinishAndClaim for e's worker at t0+3m and fails the
// test on an error.
func (e *env) finishClaim(max int, rs ...store.Result) ([]store.FinishOutcome, []store.Claimed) {
	e.t.Helper()
	out, cs, err := e.s.FinishAndClaim(e.ctx, rs, e.w, max, t0.Add(3*time.Minute))
	if err != nil {
		e.t.Fatalf("FinishAndClaim: %v", err)
	}
	if len(out) != len(rs) {
		e.t.Fatalf("FinishAndClaim returned %d outcomes for %d results", len(out), len(rs))
	}
	return out, cs
}

// testFinishAndClaim: one call records results, releases their
// downstream tasks and claims them (with what else is queued, in claim
// order, up to max) for the worker.
func testFinishAndClaim(t *testing.T, e *env) {
	sp := newSpec("fc", tk("a"), tk("b", up("a"), prio(1)), tk("c", up("a"), prio(7)), tk("d", up("b", "c")),
		tk("solo", prio(3)))
	e.started(sp, "r")
	// Claim a alone: solo stays queued.
	cs := e.claim(5)
	if got := taskIDs(cs); !slices.Equal(got, []string{"solo", "a"}) {
		t.Fatalf("claimed %v, want [solo a]", got)
	}
	a := cs[1]
	// Put solo back, so the finish finds it queued beside what a releases.
	must(t, "RequeueTries", e.s.RequeueTries(e.ctx, []store.Try{att(cs[0])}))

	res := result(a, state.Success)
	res.Output = json.RawMessage(`{"n": 1}`)
	began := t0.Add(150 * time.Second) // after the claim at t0+2m
	res.StartedAt = began
	out, next := e.finishClaim(2, res)
	if !out[0].Applied || out[0].State != state.Success {
		t.Fatalf("outcome of a: %+v", out[0])
	}
	if ti := e.ti("fc", "r", "a"); ti.StartedAt == nil || !ti.StartedAt.Equal(began) || ti.Duration() != 30*time.Second {
		t.Errorf("a started %v, lasted %v; want the start the result reported (%v) and 30s", ti.StartedAt, ti.Duration(), began)
	}
	// c (priority 7) and solo (3) beat b (1).
	if got := taskIDs(next); !slices.Equal(got, []string{"c", "solo"}) {
		t.Fatalf("claimed with the finish %v, want [c solo]", got)
	}
	now := t0.Add(3 * time.Minute)
	for _, c := range next {
		if c.State != state.Running || c.TryNumber != 1 || c.WorkerID != e.w.ID || c.Hostname != e.w.Hostname ||
			c.PID != e.w.PID || c.StartedAt == nil || !c.StartedAt.Equal(now) || c.DAGRunID != "r" ||
			!c.LogicalDate.Equal(t0) || c.QueuedAt == nil {
			t.Errorf("claimed with the finish: %+v", c.TaskInstance)
		}
	}
	e.wantStates("fc", "r", map[string]state.TaskState{
		"a": state.Success, "b": state.Queued, "c": state.Running, "d": state.None, "solo": state.Running})
	if ti := e.ti("fc", "r", "c"); ti.State != state.Running || ti.WorkerID != e.w.ID || ti.TryNumber != 1 {
		t.Errorf("c stored as %+v", ti)
	}

	// A refused (stale) result changes nothing, and the claim still
	// happens.
	stale := result(a, state.Failed)
	out, next = e.finishClaim(5, stale)
	if out[0].Applied || out[0].State != state.Success {
		t.Errorf("stale result: %+v, want refused with state success", out[0])
	}
	if got := taskIDs(next); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("claimed after a stale result %v, want [b]", got)
	}

	// max 0 only finishes.
	var c, b, solo store.Claimed
	for _, ti := range e.claimedNow("fc", "r") {
		switch ti.TaskID {
		case "b":
			b = ti
		case "c":
			c = ti
		case "solo":
			solo = ti
		}
	}
	out, next = e.finishClaim(0, result(b, state.Success), result(solo, state.Success))
	if len(next) != 0 || !out[0].Applied || !out[1].Applied {
		t.Fatalf("finish with max 0: %+v, claimed %v", out, taskIDs(next))
	}
	// Without a reported start, the claim time stays the start.
	if ti := e.ti("fc", "r", "b"); ti.StartedAt == nil || !ti.StartedAt.Equal(t0.Add(3*time.Minute)) {
		t.Errorf("b started %v, want its claim time %v", ti.StartedAt, t0.Add(3*time.Minute))
	}
	e.wantStates("fc", "r", map[string]state.TaskState{"b": state.Success, "solo": state.Success, "d": state.None})

	// The last finish releases d and claims it; d's finish ends the run.
	_, next = e.finishClaim(3, result(c, state.Success))
	if got := taskIDs(next); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("claimed %v, want [d]", got)
	}
	out, next = e.finishClaim(3, result(next[0], state.Success))
	if !out[0].Applied || len(next) != 0 {
		t.Fatalf("finish of d: %+v, claimed %v", out, taskIDs(next))
	}
	e.wantRunState("fc", "r", state.RunSuccess)

	// Claiming alone (no results) works too.
	_, next = e.finishClaim(3)
	if len(next) != 0 {
		t.Errorf("claimed %v from an empty queue", taskIDs(next))
	}
}

// claimedNow returns the running instances of a run as Claimed values
// carrying their tries.
func (e *env) claimedNow(dagID, runID string) []store.Claimed {
	e.t.Helper()
	tis, _, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{dagID}, DAGRunIDs: []string{runID},
		States: []state.TaskState{state.Running}})
	must(e.t, "ListTaskInstances", err)
	out := make([]store.Claimed, len(tis))
	for i, ti := range tis {
		out[i] = store.Claimed{TaskInstance: ti}
	}
	return out
}

// testFinishAndClaimCapped: the claim of FinishAndClaim keeps DAGs within
// MaxActiveTasks: finishing one task of a capped DAG frees one slot.
func testFinishAndClaimCapped(t *testing.T, e *env) {
	capped := newSpec("fcap", tk("a"), tk("b"), tk("c"), tk("d"))
	capped.MaxActiveTasks = 2
	capped = fingerprint(capped)
	e.started(capped, "r")
	cs := e.claim(10)
	if len(cs) != 2 {
		t.Fatalf("claimed %d of the capped DAG, want 2", len(cs))
	}
	_, next := e.finishClaim(10, result(cs[0], state.Success))
	if len(next) != 1 {
		t.Fatalf("finish freed one slot of the cap, claimed %v", taskIDs(next))
	}
	_, total, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"fcap"}, States: []state.TaskState{state.Running}})
	must(t, "ListTaskInstances", err)
	if total != 2 {
		t.Errorf("%d instances of the capped DAG running, want 2", total)
	}
}

// testFinishAndClaimConcurrent: 8 goroutines drive a DAG of 40 chains
// with FinishAndClaim only: every task runs exactly once and the run
// succeeds.
func testFinishAndClaimConcurrent(t *testing.T, e *env) {
	const chains, length = 40, 10
	var tasks []store.TaskSpec
	cs, ss := names(chains, "c"), names(length, "s")
	for c := range chains {
		prev := ""
		for k := range length {
			id := cs[c] + "_" + ss[k]
			ts := tk(id)
			if prev != "" {
				ts = tk(id, up(prev))
			}
			tasks = append(tasks, ts)
			prev = id
		}
	}
	e.started(newSpec("fcc", tasks...), "r")
	var (
		mu   sync.Mutex
		seen = map[int64]int{}
		wg   sync.WaitGroup
	)
	for _, id := range names(8, "w") {
		wg.Go(func() {
			w := e.w
			w.ID = id
			var held []store.Claimed
			for {
				rs := make([]store.Result, len(held))
				for i, c := range held {
					rs[i] = result(c, state.Success)
				}
				out, cs, err := e.s.FinishAndClaim(t.Context(), rs, w, 3, t0.Add(3*time.Minute))
				if err != nil {
					t.Errorf("FinishAndClaim: %v", err)
					break
				}
				for i, o := range out {
					if !o.Applied {
						t.Errorf("finish of %s not applied", held[i].TaskID)
					}
				}
				mu.Lock()
				for _, c := range cs {
					seen[c.ID]++
				}
				mu.Unlock()
				held = cs
				if len(cs) > 0 {
					continue
				}
				// Nothing claimed: stop once the run is over, else other
				// goroutines hold the tasks that release more.
				r, err := e.s.GetRun(t.Context(), "fcc", "r")
				if err != nil {
					t.Errorf("GetRun: %v", err)
					break
				}
				if r.State.Terminal() {
					break
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != chains*length {
		t.Errorf("%d distinct instances claimed, want %d", len(seen), chains*length)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("instance %d claimed %d times", id, n)
		}
	}
	e.wantRunState("fcc", "r", state.RunSuccess)
}
