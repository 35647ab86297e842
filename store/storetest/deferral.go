package storetest

import (
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// deferred is the deferral of claimed instance c, ended at t0+3m.
func deferred(c store.Claimed, d store.Deferral) store.Result {
	r := result(c, state.Deferred)
	r.Deferral = d
	return r
}

// testDeferral: a try that ends deferred releases its slot, uses up no
// try, keeps its number and is never claimed while deferred; resuming it
// queues it and the claim gives the same try number back; its log is
// appended; a deferred run is not finished.
func testDeferral(t *testing.T, e *env) {
	e.started(newSpec("df", tk("a", retries(0, time.Second, 0)), tk("b", up("a"))), "run")
	a := e.claimOne("a")
	d := deferred(a, store.Deferral{})
	d.Log = []byte("waiting\n")
	o := e.finish(d)
	if !o[0].Applied || o[0].State != state.Deferred {
		t.Fatalf("deferral outcome %+v, want applied deferred", o[0])
	}
	ti := e.ti("df", "run", "a")
	if ti.State != state.Deferred || ti.TryNumber != 1 || ti.WorkerID != e.w.ID || ti.EndedAt != nil {
		t.Errorf("deferred instance %+v: want deferred, try 1, worker kept, no end", ti)
	}
	if cs := e.claim(4); len(cs) != 0 {
		t.Errorf("claimed %v while the only ready instance is deferred", taskIDs(cs))
	}
	e.wantStates("df", "run", map[string]state.TaskState{"b": state.None})
	e.wantRunState("df", "run", state.RunRunning)
	// The parked try is held by its worker while deferred.
	lost, err := e.s.HeartbeatTasks(e.ctx, e.w.ID, []store.Try{att(a)}, t0.Add(4*time.Minute))
	must(t, "HeartbeatTasks", err)
	if len(lost) != 0 {
		t.Errorf("heartbeat of a deferred try: lost %v", lost)
	}
	// A second report of the same try is stale.
	if o := e.finish(result(a, state.Success)); o[0].Applied {
		t.Errorf("a success reported for a deferred try was applied")
	}
	n, err := e.s.ResumeDeferred(e.ctx, []int64{a.ID, 1 << 40}, t0.Add(5*time.Minute))
	must(t, "ResumeDeferred", err)
	if n != 1 {
		t.Errorf("ResumeDeferred = %d, want 1", n)
	}
	if ti := e.ti("df", "run", "a"); ti.State != state.Queued {
		t.Errorf("resumed instance is %s, want queued", ti.State)
	}
	// Queued again, not yet claimed: still held by the parking worker.
	lost, err = e.s.HeartbeatTasks(e.ctx, e.w.ID, []store.Try{att(a)}, t0.Add(5*time.Minute))
	must(t, "HeartbeatTasks", err)
	if len(lost) != 0 {
		t.Errorf("heartbeat of a resumed, unclaimed try: lost %v", lost)
	}
	if n, err := e.s.ResumeDeferred(e.ctx, []int64{a.ID}, t0.Add(5*time.Minute)); err != nil || n != 0 {
		t.Errorf("ResumeDeferred of a queued instance = %d, %v; want 0", n, err)
	}
	again := e.claimOne("a")
	if again.TryNumber != 1 {
		t.Errorf("resumed try claimed as try %d, want 1 (a deferral uses no try)", again.TryNumber)
	}
	log, err := e.s.ReadLog(e.ctx, "df", "run", "a", 1)
	must(t, "ReadLog", err)
	if string(log) != "waiting\n" {
		t.Errorf("log of the deferred try %q, want the chunk sent with the deferral", log)
	}
	// Deferred again, then marked failed with its run: a deferred try had started.
	e.finish(deferred(again, store.Deferral{}))
	e.finish(result(e.claimOneAfterResume(again.ID), state.Success))
	e.wantStates("df", "run", map[string]state.TaskState{"a": state.Success, "b": state.Queued})
	e.finish(result(e.claimOne("b"), state.Success))
	e.wantRunState("df", "run", state.RunSuccess)
}

// claimOneAfterResume resumes deferred instance id and claims it.
func (e *env) claimOneAfterResume(id int64) store.Claimed {
	e.t.Helper()
	if n, err := e.s.ResumeDeferred(e.ctx, []int64{id}, t0.Add(6*time.Minute)); err != nil || n != 1 {
		e.t.Fatalf("ResumeDeferred(%d) = %d, %v", id, n, err)
	}
	cs := e.claim(1)
	if len(cs) != 1 || cs[0].ID != id {
		e.t.Fatalf("claimed %v after resuming %d", taskIDs(cs), id)
	}
	return cs[0]
}

// testDeferralOnCalls: a deferral on calls with no call left unfinished is
// queued at once, in the same transaction, and the same try comes back.
// FinishAndClaim claims it at once for the worker that deferred it.
func testDeferralOnCalls(t *testing.T, e *env) {
	e.started(newSpec("dc", tk("a")), "run")
	a := e.claimOne("a")
	out, cs, err := e.s.FinishAndClaim(e.ctx, []store.Result{deferred(a, store.Deferral{Calls: true})}, e.w, 2, t0.Add(3*time.Minute))
	must(t, "FinishAndClaim", err)
	if !out[0].Applied || out[0].State != state.Queued {
		t.Errorf("deferral with nothing to wait for: %+v, want applied queued", out[0])
	}
	if len(cs) != 1 || cs[0].ID != a.ID || cs[0].TryNumber != a.TryNumber {
		t.Fatalf("FinishAndClaim claimed %+v, want a again with try %d", cs, a.TryNumber)
	}
	e.finish(result(cs[0], state.Success))
	e.wantRunState("dc", "run", state.RunSuccess)
}

// testDeferralCleared: a try cleared while running that then defers ends
// like any cleared try (waits again, no try used up by the deferral), and
// a run marked failed fails its deferred instances.
func testDeferralCleared(t *testing.T, e *env) {
	e.started(newSpec("dx", tk("a"), tk("b")), "run")
	cs := e.claim(2)
	if len(cs) != 2 {
		t.Fatalf("claimed %d", len(cs))
	}
	a, b := cs[0], cs[1]
	if a.TaskID != "a" {
		a, b = b, a
	}
	_, err := e.s.ClearTasks(e.ctx, "dx", "run", []string{"a"}, false, t0.Add(3*time.Minute))
	must(t, "ClearTasks", err)
	o := e.finish(deferred(a, store.Deferral{}))
	if !o[0].Applied || o[0].State == state.Deferred {
		t.Errorf("deferral of a cleared try: %+v, want the cleared try ended", o[0])
	}
	if ti := e.ti("dx", "run", "a"); ti.State != state.Queued && ti.State != state.None {
		t.Errorf("cleared then deferred instance is %s, want waiting again", ti.State)
	}
	e.finish(deferred(b, store.Deferral{}))
	_, err = e.s.SetRunState(e.ctx, "dx", "run", state.RunFailed, t0.Add(4*time.Minute))
	must(t, "SetRunState", err)
	if ti := e.ti("dx", "run", "b"); ti.State != state.Failed {
		t.Errorf("deferred instance of a run marked failed is %s, want failed", ti.State)
	}
}
