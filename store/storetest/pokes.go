package storetest

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// pokeDeferral is a Sensor's "not yet" of claimed instance c: next poke
// at next, deadline at deadline.
func pokeDeferral(c store.Claimed, next, deadline time.Time) store.Result {
	return deferred(c, store.Deferral{Poke: true, NextCheckAt: next, TriggerTimeout: deadline})
}

func (e *env) claimPokes(max int, now time.Time) ([]store.Poke, time.Time) {
	e.t.Helper()
	ps, next, err := e.s.ClaimPokes(e.ctx, e.w, max, now, now.Add(time.Minute))
	if err != nil {
		e.t.Fatalf("ClaimPokes: %v", err)
	}
	return ps, next
}

func (e *env) finishPokes(now time.Time, rs ...store.PokeResult) []store.FinishOutcome {
	e.t.Helper()
	out, err := e.s.FinishPokes(e.ctx, e.w, rs, now)
	if err != nil {
		e.t.Fatalf("FinishPokes: %v", err)
	}
	if len(out) != len(rs) {
		e.t.Fatalf("FinishPokes returned %d outcomes for %d results", len(out), len(rs))
	}
	return out
}

// notYet is poke p's "not yet", next poke at next.
func notYet(p store.Poke, next time.Time) store.PokeResult {
	return store.PokeResult{Try: p.Try, Lease: p.Lease, Result: store.Result{Try: p.Try, State: state.Deferred,
		Deferral: store.Deferral{Poke: true, NextCheckAt: next}}}
}

// pokeDone is poke p's final outcome st.
func pokeDone(p store.Poke, st state.TaskState) store.PokeResult {
	return store.PokeResult{Try: p.Try, Lease: p.Lease, Result: store.Result{Try: p.Try, State: st, EndedAt: t0.Add(time.Hour),
		Log: []byte("poked: " + string(st) + "\n")}}
}

// testPokes: a Sensor's "not yet" keeps the instance deferred with its
// next poke shown and out of the scheduler's sweep; ClaimPokes hands it
// out when due, with its run, once per lease; "not yet" moves the next
// poke without touching the instance; the final poke ends the try as a
// finish (success releases downstream, a failure with tries left is
// retried, the log is the final poke's); a stale lease changes nothing;
// a requeue queues an ordinary resumed try.
func testPokes(t *testing.T, e *env) {
	e.started(newSpec("pk", tk("s1"), tk("s2", retries(1, time.Second, 0)), tk("s3"), tk("after", up("s1"))), "run")
	cs := e.claim(3)
	if len(cs) != 3 {
		t.Fatalf("claimed %d", len(cs))
	}
	first, deadline := t0.Add(10*time.Minute), t0.Add(2*time.Hour)
	rs := make([]store.Result, len(cs))
	for i, c := range cs {
		rs[i] = pokeDeferral(c, first, deadline)
	}
	for _, o := range e.finish(rs...) {
		if !o.Applied || o.State != state.Deferred {
			t.Fatalf("poke deferral %+v", o)
		}
	}
	ti := e.ti("pk", "run", "s1")
	if ti.State != state.Deferred || ti.NextCheckAt == nil || !ti.NextCheckAt.Equal(first) ||
		ti.TriggerTimeout == nil || !ti.TriggerTimeout.Equal(deadline) {
		t.Errorf("sensor between pokes %+v, want deferred, next check %v, deadline %v", ti, first, deadline)
	}
	if _, ok, _ := e.s.NextRetryAt(e.ctx); ok {
		t.Errorf("NextRetryAt counts a poke: the scheduler would wake for it")
	}
	if n, err := e.s.RequeueRetries(e.ctx, first.Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("RequeueRetries queued %d pokes, %v; want 0", n, err)
	}
	if ps, next := e.claimPokes(10, first.Add(-time.Second)); len(ps) != 0 || !next.Equal(first) {
		t.Errorf("ClaimPokes before due = %d pokes, next %v; want none, next %v", len(ps), next, first)
	}
	ps, _ := e.claimPokes(10, first)
	if len(ps) != 3 {
		t.Fatalf("ClaimPokes when due = %d, want 3", len(ps))
	}
	confs := 0
	for _, p := range ps {
		if p.DAGID != "pk" || p.DAGRunID != "run" || p.TryNumber != 1 || !p.TriggerTimeout.Equal(deadline) || !p.LogicalDate.Equal(t0) {
			t.Errorf("poke %+v", p)
		}
		if p.Conf != nil {
			confs++
		}
	}
	if confs != 1 {
		t.Errorf("%d pokes carry the run's conf, want the first only", confs)
	}
	if again, _ := e.claimPokes(10, first); len(again) != 0 {
		t.Errorf("a second claim got %d leased pokes", len(again))
	}
	byTask := map[string]store.Poke{}
	for _, p := range ps {
		byTask[p.TaskID] = p
	}
	next := first.Add(time.Minute + 123456*time.Microsecond) // kept to the microsecond
	out := e.finishPokes(first, notYet(byTask["s1"], next), notYet(byTask["s2"], next), notYet(byTask["s3"], next))
	for _, o := range out {
		if !o.Applied || o.State != state.Deferred {
			t.Errorf("not yet %+v", o)
		}
	}
	if ti := e.ti("pk", "run", "s1"); ti.State != state.Deferred || ti.TryNumber != 1 || ti.NextCheckAt == nil || !ti.NextCheckAt.Equal(next) {
		t.Errorf("after a not yet: %+v, want deferred on try 1, next check %v", ti, next)
	}
	// A result under the old lease once the instance was claimed again
	// changes nothing.
	ps, _ = e.claimPokes(10, next)
	if len(ps) != 3 {
		t.Fatalf("second round claimed %d", len(ps))
	}
	for _, p := range ps {
		byTask[p.TaskID] = p
	}
	stale := notYet(byTask["s3"], next)
	stale.Lease--
	if o := e.finishPokes(next, stale, notYet(byTask["s2"], next)); o[0].Applied || !o[1].Applied || o[1].State != state.Deferred {
		t.Errorf("a stale lease and a current one: %+v, want the stale one not applied, the current one deferred", o)
	}
	out = e.finishPokes(next, pokeDone(byTask["s1"], state.Success), pokeDone(byTask["s2"], state.Failed),
		store.PokeResult{Try: byTask["s3"].Try, Lease: byTask["s3"].Lease, Requeue: true})
	if !out[0].Applied || out[0].State != state.Success || !out[1].Applied || out[1].State != state.UpForRetry ||
		!out[2].Applied || out[2].State != state.Queued {
		t.Fatalf("final pokes %+v, want success, up_for_retry, queued", out)
	}
	e.wantStates("pk", "run", map[string]state.TaskState{"s1": state.Success, "s2": state.UpForRetry, "s3": state.Queued, "after": state.Queued})
	if ti := e.ti("pk", "run", "s1"); ti.TryNumber != 1 || ti.NextCheckAt != nil || ti.WorkerID != e.w.ID {
		t.Errorf("finished sensor %+v, want try 1, no next check, ended by the poking worker", ti)
	}
	if log, err := e.s.ReadLog(e.ctx, "pk", "run", "s1", 1); err != nil || string(log) != "poked: success\n" {
		t.Errorf("log of the final poke = %q, %v", log, err)
	}
	if o := e.finishPokes(next, pokeDone(byTask["s1"], state.Failed)); o[0].Applied {
		t.Errorf("a second final result was applied: %+v", o[0])
	}
	if ps, nextDue := e.claimPokes(10, next.Add(time.Hour)); len(ps) != 0 || !nextDue.IsZero() {
		t.Errorf("pokes left after the end = %d, next %v", len(ps), nextDue)
	}
	r := e.claimAt(10, next)
	var s3 *store.Claimed
	for i := range r {
		if r[i].TaskID == "s3" {
			s3 = &r[i]
		}
	}
	if s3 == nil || s3.TryNumber != 1 || !s3.Resumed {
		t.Errorf("requeued sensor claimed as %+v, want try 1 resumed", s3)
	}
	if _, err := e.s.FinishPokes(e.ctx, e.w, []store.PokeResult{notYet(byTask["s1"], time.Time{})}, next); err == nil {
		t.Errorf("FinishPokes took a not yet without its next check")
	}
}

// testPokesLeftBehind: a poke row outlives the deferral it scheduled
// (the sensor was continued, marked, or cleared and deferred again on a
// later try): ClaimPokes drops it instead of poking, and a claim's lease
// that runs out makes the poke due again for another worker.
func testPokesLeftBehind(t *testing.T, e *env) {
	e.started(newSpec("pl", tk("a"), tk("b"), tk("c")), "run")
	cs := e.claim(3)
	due := t0.Add(10 * time.Minute)
	var rs []store.Result
	for _, c := range cs {
		rs = append(rs, pokeDeferral(c, due, time.Time{}))
	}
	e.finish(rs...)
	if _, err := e.s.ContinueDeferred(e.ctx, "pl", "run", "a", nil, due); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.SetTaskState(e.ctx, "pl", "run", "b", state.Failed, due); err != nil {
		t.Fatal(err)
	}
	ps, _, err := e.s.ClaimPokes(e.ctx, e.w, 10, due, due.Add(30*time.Second))
	if err != nil || len(ps) != 1 || ps[0].TaskID != "c" {
		t.Fatalf("ClaimPokes = %+v, %v; want c only", ps, err)
	}
	other := store.Worker{ID: "w2", Hostname: "h2", PID: 2, Slots: 1, StartedAt: t0, HeartbeatAt: t0}
	if again, _, err := e.s.ClaimPokes(e.ctx, other, 10, due.Add(29*time.Second), due.Add(time.Hour)); err != nil || len(again) != 0 {
		t.Errorf("another worker within the lease got %d, %v", len(again), err)
	}
	again, _, err := e.s.ClaimPokes(e.ctx, other, 10, due.Add(30*time.Second), due.Add(time.Hour))
	if err != nil || len(again) != 1 || again[0].ID != ps[0].ID || again[0].Lease == ps[0].Lease {
		t.Fatalf("after the lease: %+v, %v; want c under a new lease", again, err)
	}
	if o := e.finishPokes(due, pokeDone(ps[0], state.Success)); o[0].Applied {
		t.Errorf("the first worker's late result was applied: %+v", o[0])
	}
}

// testPokesConcurrent: workers claiming at once never get one poke twice
// under a lease, and between them get every due one.
func testPokesConcurrent(t *testing.T, e *env) {
	const n = 300
	tasks := make([]store.TaskSpec, n)
	for i := range tasks {
		tasks[i] = tk(idOf(i))
	}
	e.started(newSpec("pc", tasks...), "run")
	due := t0.Add(time.Minute)
	var rs []store.Result
	for len(rs) < n {
		cs := e.claimAt(100, t0.Add(2*time.Minute))
		if len(cs) == 0 {
			t.Fatalf("claimed %d of %d", len(rs), n)
		}
		for _, c := range cs {
			rs = append(rs, pokeDeferral(c, due, time.Time{}))
		}
	}
	e.finish(rs...)
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := store.Worker{ID: "w" + idOf(i), Hostname: "h", PID: i + 10, Slots: 1, StartedAt: t0, HeartbeatAt: t0}
			for {
				ps, _, err := e.s.ClaimPokes(e.ctx, w, 37, due, due.Add(time.Hour))
				if err != nil {
					t.Errorf("ClaimPokes: %v", err)
					return
				}
				if len(ps) == 0 {
					return
				}
				mu.Lock()
				for _, p := range ps {
					seen[p.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("claimed %d distinct pokes, want %d", len(seen), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("poke %d claimed %d times", id, k)
		}
	}
}

// testWaitFieldsCleared: a deferred instance marked failed or success,
// or failed with its run, keeps nothing of its wait: no next check, event
// key, deadline or saved state (clearing forgets them as well).
func testWaitFieldsCleared(t *testing.T, e *env) {
	e.started(newSpec("wf", tk("f"), tk("s"), tk("r"), tk("c")), "run")
	cs := e.claim(4)
	if len(cs) != 4 {
		t.Fatalf("claimed %d", len(cs))
	}
	var rs []store.Result
	for _, c := range cs {
		rs = append(rs, deferred(c, store.Deferral{Event: "k:" + c.TaskID, NextCheckAt: t0.Add(time.Hour),
			TriggerTimeout: t0.Add(2 * time.Hour), State: json.RawMessage(`{"at":1}`)}))
	}
	e.finish(rs...)
	now := t0.Add(10 * time.Minute)
	if _, err := e.s.SetTaskState(e.ctx, "wf", "run", "f", state.Failed, now); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.SetTaskState(e.ctx, "wf", "run", "s", state.Success, now); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.ClearTasks(e.ctx, "wf", "run", []string{"c"}, false, now); err != nil {
		t.Fatal(err)
	}
	clean := func(task string, want state.TaskState) {
		t.Helper()
		ti := e.ti("wf", "run", task)
		if (ti.State != want && (want != state.None || ti.State != state.Queued)) || ti.NextCheckAt != nil || ti.WaitEvent != "" || ti.TriggerTimeout != nil {
			t.Errorf("%s after the mark: %+v, want %s without next check, event or deadline", task, ti, want)
		}
	}
	clean("f", state.Failed)
	clean("s", state.Success)
	clean("c", state.None) // queued at once: it has no upstream
	if _, err := e.s.SetRunState(e.ctx, "wf", "run", state.RunFailed, now); err != nil {
		t.Fatal(err)
	}
	clean("r", state.Failed)
	if res := e.event(store.NewEvent{Key: "k:r", At: now}); res.Continued != 0 {
		t.Errorf("an event continued %d marked instances", res.Continued)
	}
	if n, err := e.s.RequeueRetries(e.ctx, t0.Add(3*time.Hour)); err != nil || n != 0 {
		t.Errorf("the sweep queued %d marked instances, %v", n, err)
	}
	// The saved state is gone too: the next try of f starts afresh.
	if _, err := e.s.ClearTasks(e.ctx, "wf", "run", []string{"f"}, false, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range e.claimAt(10, now) {
		if c.TaskID == "f" && (c.Resumed || c.DeferredState != nil) {
			t.Errorf("claim of f after mark and clear %+v, want a fresh start", c)
		}
	}
}

// testPokesRuns: one claim of the pokes of several runs gives each poke
// its own run's id, dates and DAG, and each run's conf once.
func testPokesRuns(t *testing.T, e *env) {
	sp := newSpec("pr", tk("a"), tk("b"))
	e.sync(sp)
	ld := map[string]time.Time{"r1": t0, "r2": t0.Add(24 * time.Hour), "r3": t0.Add(48 * time.Hour)}
	for _, id := range []string{"r1", "r2", "r3"} {
		if _, _, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: "pr", RunID: id, RunType: store.RunManual,
			LogicalDate: ld[id], IntervalStart: ld[id], IntervalEnd: ld[id].Add(time.Hour), Fingerprint: sp.Fingerprint,
			QueuedAt: t0, Conf: []byte(`{"run":"` + id + `"}`)}); err != nil {
			t.Fatalf("CreateRun %s: %v", id, err)
		}
	}
	e.start("pr")
	due := t0.Add(10 * time.Minute)
	var rs []store.Result
	for _, c := range e.claim(10) {
		rs = append(rs, pokeDeferral(c, due, time.Time{}))
	}
	if len(rs) != 6 {
		t.Fatalf("claimed %d, want 6", len(rs))
	}
	e.finish(rs...)
	ps, _ := e.claimPokes(10, due)
	if len(ps) != 6 {
		t.Fatalf("ClaimPokes = %d, want 6", len(ps))
	}
	confs := map[string]int{}
	for _, p := range ps {
		want, ok := ld[p.DAGRunID]
		if !ok || p.DAGID != "pr" || !p.LogicalDate.Equal(want) || !p.IntervalStart.Equal(want) ||
			!p.IntervalEnd.Equal(want.Add(time.Hour)) || !p.TriggerTimeout.IsZero() {
			t.Errorf("poke %+v: want the dates of its run", p)
		}
		if p.Conf != nil {
			confs[p.DAGRunID]++
			if string(p.Conf) != `{"run": "`+p.DAGRunID+`"}` && string(p.Conf) != `{"run":"`+p.DAGRunID+`"}` {
				t.Errorf("poke of run %s carries conf %s", p.DAGRunID, p.Conf)
			}
		}
	}
	for id := range ld {
		if confs[id] != 1 {
			t.Errorf("run %s: %d pokes carry its conf, want 1", id, confs[id])
		}
	}
}

// testPokesAfter: ClaimPokesAfter records a batch's "not yet" before it
// claims — a poke it moves to now is claimed again by the same call,
// under a new lease — with the outcomes in order (a stale lease not
// applied), and the next due time counts the moved pokes; a result
// that is not a "not yet" is refused; without results it is ClaimPokes.
func testPokesAfter(t *testing.T, e *env) {
	e.started(newSpec("pa", tk("s1"), tk("s2"), tk("s3")), "run")
	first := t0.Add(10 * time.Minute)
	var rs []store.Result
	for _, c := range e.claim(3) {
		rs = append(rs, pokeDeferral(c, first, time.Time{}))
	}
	e.finish(rs...)
	ps, next, outs, err := e.s.ClaimPokesAfter(e.ctx, e.w, nil, 10, first, first.Add(time.Minute))
	if err != nil || len(ps) != 3 || len(outs) != 0 || !next.Equal(first.Add(time.Minute)) {
		t.Fatalf("ClaimPokesAfter without results = %d pokes, next %v, %d outcomes, %v; want 3, next %v, none",
			len(ps), next, len(outs), err, first.Add(time.Minute))
	}
	byTask := map[string]store.Poke{}
	for _, p := range ps {
		byTask[p.TaskID] = p
	}
	now := first.Add(time.Second)
	later := now.Add(30 * time.Second)
	stale := notYet(byTask["s3"], now)
	stale.Lease--
	if _, _, _, err := e.s.ClaimPokesAfter(e.ctx, e.w, []store.PokeResult{notYet(byTask["s1"], now), pokeDone(byTask["s2"], state.Success)},
		10, now, now.Add(time.Minute)); err == nil {
		t.Errorf("ClaimPokesAfter took a final result")
	}
	ps, next, outs, err = e.s.ClaimPokesAfter(e.ctx, e.w,
		[]store.PokeResult{notYet(byTask["s1"], now), notYet(byTask["s2"], later), stale}, 10, now, now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 3 || !outs[0].Applied || outs[0].State != state.Deferred || !outs[1].Applied || outs[1].State != state.Deferred ||
		outs[2].Applied || outs[0].ID != byTask["s1"].ID || outs[2].ID != byTask["s3"].ID {
		t.Errorf("outcomes %+v, want s1 and s2 deferred, s3 (stale lease) not applied", outs)
	}
	if len(ps) != 1 || ps[0].TaskID != "s1" || ps[0].Lease == byTask["s1"].Lease {
		t.Errorf("claimed %+v, want s1 again (its next check is now) under a new lease", ps)
	}
	if !next.Equal(later) {
		t.Errorf("next due %v, want s2's next check %v", next, later)
	}
	if ti := e.ti("pa", "run", "s2"); ti.State != state.Deferred || ti.NextCheckAt == nil || !ti.NextCheckAt.Equal(later) {
		t.Errorf("s2 after its not yet: %+v, want deferred, next check %v", ti, later)
	}
}
