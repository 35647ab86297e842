package storetest

import (
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// testDeferUntilDue: a deferral with a next check records what it waits
// for (shown on the instance), is queued by RequeueRetries once due and
// not before, NextRetryAt reports its check, and the resuming claim gets
// the same try, marked resumed, with the saved state; clearing the
// instance forgets all of it.
func testDeferUntilDue(t *testing.T, e *env) {
	e.started(newSpec("due", tk("s"), tk("b", up("s"))), "run")
	c := e.claimOne("s")
	check, deadline := t0.Add(10*time.Minute), t0.Add(time.Hour)
	o := e.finish(deferred(c, store.Deferral{NextCheckAt: check, TriggerTimeout: deadline, State: json.RawMessage(`{"n":1}`)}))
	if !o[0].Applied || o[0].State != state.Deferred {
		t.Fatalf("deferral = %+v", o[0])
	}
	ti := e.ti("due", "run", "s")
	if ti.State != state.Deferred || ti.NextCheckAt == nil || !ti.NextCheckAt.Equal(check) ||
		ti.TriggerTimeout == nil || !ti.TriggerTimeout.Equal(deadline) || ti.WaitEvent != "" {
		t.Errorf("deferred instance %+v", ti)
	}
	if at, ok, err := e.s.NextRetryAt(e.ctx); err != nil || !ok || !at.Equal(check) {
		t.Errorf("NextRetryAt = %v, %v, %v; want the next check %v", at, ok, err, check)
	}
	if n, err := e.s.RequeueRetries(e.ctx, check.Add(-time.Second)); err != nil || n != 0 {
		t.Errorf("RequeueRetries before the check = %d, %v", n, err)
	}
	if n, err := e.s.RequeueRetries(e.ctx, check); err != nil || n != 1 {
		t.Fatalf("RequeueRetries at the check = %d, %v; want 1", n, err)
	}
	if n, err := e.s.RequeueRetries(e.ctx, check.Add(time.Minute)); err != nil || n != 0 {
		t.Errorf("RequeueRetries again = %d, %v; want 0", n, err)
	}
	if _, ok, _ := e.s.NextRetryAt(e.ctx); ok {
		t.Errorf("NextRetryAt after the sweep reports a check")
	}
	r := e.claimOne("s")
	var saved struct{ N int }
	if r.TryNumber != 1 || !r.Resumed || json.Unmarshal(r.DeferredState, &saved) != nil || saved.N != 1 || r.EventPayload != nil ||
		r.TriggerTimeout == nil || !r.TriggerTimeout.Equal(deadline) {
		t.Errorf("resuming claim %+v, want try 1, resumed, state {\"n\":1}, the deadline", r)
	}
	e.finish(result(r, state.Success))
	e.wantStates("due", "run", map[string]state.TaskState{"s": state.Success, "b": state.Queued})
	if _, err := e.s.ClearTasks(e.ctx, "due", "run", []string{"s"}, false, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	e.finish(result(e.claimOne("b"), state.Success))
	cleared := e.claimOne("s")
	if cleared.Resumed || cleared.DeferredState != nil || cleared.TriggerTimeout != nil {
		t.Errorf("claim after a clear %+v, want a fresh start", cleared)
	}
}

// testDeferOnEvent: an event continues every instance deferred on its
// key (once: a second event finds none), passing its payload; an event
// recorded before the wait continues it as the deferral is recorded, and
// is consumed by it.
func testDeferOnEvent(t *testing.T, e *env) {
	e.started(newSpec("ev", tk("a"), tk("b")), "run")
	cs := e.claim(2)
	if len(cs) != 2 {
		t.Fatalf("claimed %d", len(cs))
	}
	e.finish(deferred(cs[0], store.Deferral{Event: "done:1"}), deferred(cs[1], store.Deferral{Event: "done:1"}))
	if ti := e.ti("ev", "run", "a"); ti.State != state.Deferred || ti.WaitEvent != "done:1" || ti.NextCheckAt != nil {
		t.Errorf("deferred instance %+v", ti)
	}
	res := e.event(store.NewEvent{Key: "done:1", Payload: json.RawMessage(`{"rows":3}`), At: t0.Add(5 * time.Minute)})
	if res.Continued != 2 {
		t.Fatalf("event continued %d, want 2", res.Continued)
	}
	if again := e.event(store.NewEvent{Key: "done:1", At: t0.Add(6 * time.Minute)}); again.Continued != 0 {
		t.Errorf("second event continued %d, want 0", again.Continued)
	}
	rs := e.claim(2)
	if len(rs) != 2 {
		t.Fatalf("resumed %d", len(rs))
	}
	for _, r := range rs {
		var p map[string]int
		if !r.Resumed || r.TryNumber != 1 || json.Unmarshal(r.EventPayload, &p) != nil || p["rows"] != 3 {
			t.Errorf("claim after the event %+v (payload %s)", r, r.EventPayload)
		}
	}
	// Deferred again on a key whose event is already kept: queued at once.
	e.event(store.NewEvent{Key: "done:2", Payload: json.RawMessage(`"early"`), At: t0.Add(7 * time.Minute), Keep: time.Hour})
	o := e.finish(deferred(rs[0], store.Deferral{Event: "done:2"}), deferred(rs[1], store.Deferral{Event: "done:3"}))
	if o[0].State != state.Queued || o[1].State != state.Deferred {
		t.Fatalf("deferrals after the event = %+v, want the first queued, the second deferred", o)
	}
	early := e.claimOne(rs[0].TaskID)
	var ep string
	if json.Unmarshal(early.EventPayload, &ep) != nil || ep != "early" || early.TryNumber != 1 {
		t.Errorf("claim of the early event %+v", early)
	}
	// The event is consumed: waiting on it again waits.
	if o := e.finish(deferred(early, store.Deferral{Event: "done:2"})); o[0].State != state.Deferred {
		t.Errorf("a second deferral on a consumed event = %+v, want deferred", o[0])
	}
	// An expired event does not count.
	e.event(store.NewEvent{Key: "done:3", At: t0.Add(-2 * time.Hour), Keep: time.Minute})
	if ti := e.ti("ev", "run", rs[1].TaskID); ti.State != state.Queued {
		// The event at t0-2h is recorded now and continues the waiter:
		// recording ignores the age; only a deferral looks at expiry.
		t.Errorf("waiter on done:3 is %s after its event", ti.State)
	}
}

// testContinueDeferred: the continue call queues a deferred instance with
// its payload; a missing one is ErrNotFound, one that is not deferred
// ErrConflict.
func testContinueDeferred(t *testing.T, e *env) {
	e.started(newSpec("ok", tk("sign_off"), tk("b", up("sign_off"))), "run")
	c := e.claimOne("sign_off")
	if _, err := e.s.ContinueDeferred(e.ctx, "ok", "run", "sign_off", nil, t0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("continue a running instance: %v, want ErrConflict", err)
	}
	if _, err := e.s.ContinueDeferred(e.ctx, "ok", "run", "nope", nil, t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("continue an unknown task: %v, want ErrNotFound", err)
	}
	e.finish(deferred(c, store.Deferral{TriggerTimeout: t0.Add(48 * time.Hour)}))
	ti, err := e.s.ContinueDeferred(e.ctx, "ok", "run", "sign_off", json.RawMessage(`{"approved_by":"ops"}`), t0.Add(time.Hour))
	if err != nil || ti.State != state.Queued {
		t.Fatalf("continue = %+v, %v", ti, err)
	}
	if _, err := e.s.ContinueDeferred(e.ctx, "ok", "run", "sign_off", nil, t0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("continue twice: %v, want ErrConflict", err)
	}
	r := e.claimOne("sign_off")
	var p struct {
		ApprovedBy string `json:"approved_by"`
	}
	if !r.Resumed || json.Unmarshal(r.EventPayload, &p) != nil || p.ApprovedBy != "ops" || r.TryNumber != 1 {
		t.Errorf("claim after continue %+v", r)
	}
}

// testDeferredSweepConcurrent: many deferrals due at once are queued
// exactly once however many sweepers run (two schedulers), in batches.
func testDeferredSweepConcurrent(t *testing.T, e *env) {
	const n = 300
	tasks := make([]store.TaskSpec, n)
	for i := range tasks {
		tasks[i] = tk(idOf(i))
	}
	e.started(newSpec("many", tasks...), "run")
	var rs []store.Result
	for len(rs) < n {
		cs := e.claimAt(100, t0.Add(2*time.Minute))
		if len(cs) == 0 {
			t.Fatalf("claimed %d of %d", len(rs), n)
		}
		for _, c := range cs {
			rs = append(rs, deferred(c, store.Deferral{NextCheckAt: t0.Add(time.Duration(len(rs)%7) * time.Second)}))
		}
	}
	e.finish(rs...)
	var wg sync.WaitGroup
	counts := make([]int, 4)
	for i := range counts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := e.s.RequeueRetries(e.ctx, t0.Add(time.Minute))
			if err != nil {
				t.Errorf("RequeueRetries: %v", err)
			}
			counts[i] = m
		}()
	}
	wg.Wait()
	if total := counts[0] + counts[1] + counts[2] + counts[3]; total != n {
		t.Errorf("sweepers queued %v = %d, want %d in all", counts, total, n)
	}
	got := 0
	for {
		cs := e.claimAt(100, t0.Add(2*time.Minute))
		if len(cs) == 0 {
			break
		}
		for _, c := range cs {
			if c.TryNumber != 1 || !c.Resumed {
				t.Errorf("claim %+v, want try 1 resumed", c)
			}
		}
		got += len(cs)
	}
	if got != n {
		t.Errorf("claimed %d resumed instances, want %d", got, n)
	}
}

func idOf(i int) string {
	return "t" + string(rune('a'+i/26/26%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i%26))
}

// testEventRacesDeferral: an event recorded while the deferral on its key
// is being recorded is never lost: whichever commits second sees the
// other, so the instance always ends queued.
func testEventRacesDeferral(t *testing.T, e *env) {
	const n = 40
	tasks := make([]store.TaskSpec, n)
	for i := range tasks {
		tasks[i] = tk(idOf(i))
	}
	e.started(newSpec("race", tasks...), "run")
	var cs []store.Claimed
	for len(cs) < n {
		got := e.claimAt(n, t0.Add(2*time.Minute))
		if len(got) == 0 {
			t.Fatalf("claimed %d of %d", len(cs), n)
		}
		cs = append(cs, got...)
	}
	for i, c := range cs {
		key := "race:" + idOf(i)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := e.s.FinishTasks(e.ctx, []store.Result{deferred(c, store.Deferral{Event: key})}); err != nil {
				t.Errorf("defer: %v", err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := e.s.RecordEvent(e.ctx, store.NewEvent{Key: key, At: t0.Add(2 * time.Minute), Keep: time.Hour}); err != nil {
				t.Errorf("event: %v", err)
			}
		}()
		wg.Wait()
		if ti := e.ti("race", "run", c.TaskID); ti.State != state.Queued {
			t.Fatalf("round %d: the instance is %s after its deferral and its event raced, want queued", i, ti.State)
		}
	}
}
