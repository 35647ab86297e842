package storetest

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func callable(id string, opts ...taskOpt) store.TaskSpec {
	ts := tk(id, opts...)
	ts.Kind = dag.KindCallable
	return ts
}

// testCallableSpec: a callable of a structure has no instance in a run
// (calls create them), is not a leaf and does not hold its run open.
func testCallableSpec(t *testing.T, e *env) {
	sp := newSpec("cs", tk("a"), callable("k"))
	e.started(sp, "run")
	tis, n, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"cs"}})
	must(t, "ListTaskInstances", err)
	if n != 1 || len(tis) != 1 || tis[0].TaskID != "a" {
		t.Fatalf("instances %v, want only a", tis)
	}
	e.finish(result(e.claimOne("a"), state.Success))
	e.wantRunState("cs", "run", state.RunSuccess)
}

// callsSpec: a static task "a" and callables f, g (retries 0) and r (one
// retry).
func callsSpec(dagID string) store.DAGSpec {
	return newSpec(dagID, tk("a"), callable("f"), callable("g"), callable("r", retries(1, 0, 0)))
}

func nc(task string, args string) store.NewCall {
	return store.NewCall{TaskID: task, Key: args, Arguments: []byte(args)}
}

func (e *env) call(caller store.Claimed, max int, calls ...store.NewCall) []store.CallState {
	e.t.Helper()
	out, err := e.s.Call(e.ctx, store.CallBatch{Caller: att(caller), Calls: calls, MaxCalls: max, Now: t0.Add(3 * time.Minute)})
	if err != nil {
		e.t.Fatalf("Call: %v", err)
	}
	if len(out) != len(calls) {
		e.t.Fatalf("Call answered %d states for %d calls", len(out), len(calls))
	}
	return out
}

// claimID claims one instance and checks it is id.
func (e *env) claimID(id int64) store.Claimed {
	e.t.Helper()
	cs := e.claim(1)
	if len(cs) != 1 || cs[0].ID != id {
		e.t.Fatalf("claimed %+v, want instance %d", cs, id)
	}
	return cs[0]
}

func (e *env) calls(dagID, task string) []store.TaskInstance {
	e.t.Helper()
	tis, _, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{dagID}, TaskIDs: []string{task}, OrderBy: "id"})
	must(e.t, "ListTaskInstances", err)
	return tis
}

// testCallsDedup: calls with the same callable and key are one call
// instance, numbered by map index in creation order, with its arguments
// and caller; calling again (another batch, another try) answers the same
// instance; a deduplicated call of a finished instance has its result.
func testCallsDedup(t *testing.T, e *env) {
	e.started(callsSpec("cd"), "run")
	a := e.claimOne("a")
	got := e.call(a, 100, nc("f", "5"), nc("f", "5"), nc("f", "4"), nc("g", "5"))
	if got[0].ID == 0 || got[0].ID != got[1].ID || got[2].ID == got[0].ID || got[3].ID == got[0].ID {
		t.Fatalf("states %+v: want one instance for f(5), others for f(4) and g(5)", got)
	}
	if got[0].MapIndex != 0 || got[2].MapIndex != 1 || got[3].MapIndex != 0 || got[0].State != state.Queued {
		t.Errorf("map indexes / states %+v, want f 0, 1 and g 0, queued", got)
	}
	fs := e.calls("cd", "f")
	if len(fs) != 2 || string(fs[0].Arguments) != "5" || fs[0].CallerID != a.ID || fs[0].MapIndex != 0 {
		t.Fatalf("call instances of f: %+v", fs)
	}
	again := e.call(a, 100, nc("f", "4"))
	if again[0].ID != got[2].ID {
		t.Errorf("calling f(4) again made instance %d, want %d", again[0].ID, got[2].ID)
	}
	f5 := e.claimID(got[0].ID)
	if string(f5.Arguments) != "5" || f5.MapIndex != 0 {
		t.Errorf("claimed call %+v: want its arguments and map index", f5)
	}
	r := result(f5, state.Success)
	r.Output = []byte("5")
	r.Log = []byte("fib 5\n")
	e.finish(r)
	got5, err := e.s.GetCallInstance(e.ctx, "cd", "run", "f", 0)
	must(t, "GetCallInstance", err)
	if got5.ID != f5.ID || string(got5.Output) != "5" || got5.State != state.Success {
		t.Errorf("GetCallInstance(f, 0) = %+v", got5)
	}
	if _, err := e.s.GetCallInstance(e.ctx, "cd", "run", "f", 7); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetCallInstance of a missing map index: %v", err)
	}
	byID, err := e.s.TaskInstancesByID(e.ctx, []int64{f5.ID, a.ID, 1 << 40})
	must(t, "TaskInstancesByID", err)
	if len(byID) != 2 {
		t.Errorf("TaskInstancesByID: %d instances, want 2", len(byID))
	}
	lg, err := e.s.ReadCallLog(e.ctx, "cd", "run", "f", 0, 1)
	must(t, "ReadCallLog", err)
	if string(lg) != "fib 5\n" {
		t.Errorf("log of f[0] try 1: %q", lg)
	}
	if _, err := e.s.ReadCallLog(e.ctx, "cd", "run", "f", 0, 2); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("log of f[0] try 2: %v, want ErrNotFound", err)
	}
	done := e.call(a, 100, nc("f", "5"))
	if done[0].ID != f5.ID || done[0].State != state.Success || string(done[0].Output) != "5" {
		t.Errorf("call of a finished instance: %+v, want its result", done[0])
	}
	callees, err := e.s.Callees(e.ctx, a.ID)
	must(t, "Callees", err)
	if len(callees) != 3 || callees[0].ID != f5.ID {
		t.Errorf("callees of a: %d, want 3 with f(5) first", len(callees))
	}
	if _, err := e.s.Call(e.ctx, store.CallBatch{Caller: store.Try{ID: a.ID, TryNumber: 9}, Calls: []store.NewCall{nc("f", "1")}, MaxCalls: 100}); !errors.Is(err, store.ErrStale) {
		t.Errorf("Call from a stale try: %v, want ErrStale", err)
	}
	if _, err := e.s.Call(e.ctx, store.CallBatch{Caller: att(a), Calls: []store.NewCall{{TaskID: "f", Key: "x", Arguments: []byte("{")}}, MaxCalls: 100}); err == nil {
		t.Errorf("Call with arguments that are not JSON: no error")
	}
	if n := len(e.calls("cd", "f")); n != 2 {
		t.Errorf("%d instances of f after refused calls, want 2", n)
	}
}

// testCallsRefused: unknown callables and calls beyond the cap are
// refused, with why; nothing is created for them.
func testCallsRefused(t *testing.T, e *env) {
	e.started(callsSpec("cr"), "run")
	a := e.claimOne("a")
	got := e.call(a, 2, nc("f", "1"), nc("nope", "1"), nc("f", "2"), nc("f", "3"), nc("f", "1"))
	if got[0].ID == 0 || got[2].ID == 0 || got[4].ID != got[0].ID {
		t.Fatalf("states %+v", got)
	}
	if !strings.Contains(got[1].Refused, `no callable "nope"`) || got[1].ID != 0 {
		t.Errorf("unknown callable: %+v", got[1])
	}
	if !strings.Contains(got[3].Refused, "cap of 2 calls") || got[3].Cycle {
		t.Errorf("call beyond the cap: %+v", got[3])
	}
	if n := len(e.calls("cr", "f")); n != 2 {
		t.Errorf("%d instances of f, want 2", n)
	}
}

// testCallsCycle: a call that would wait on one of its callers, or on
// itself, is refused as a cycle naming the path.
func testCallsCycle(t *testing.T, e *env) {
	e.started(callsSpec("cc"), "run")
	a := e.claimOne("a")
	f3 := e.claimID(e.call(a, 100, nc("f", "3"))[0].ID)
	g3 := e.claimID(e.call(f3, 100, nc("g", "3"))[0].ID)
	got := e.call(g3, 100, nc("f", "3"), nc("f", "4"))
	if !got[0].Cycle || got[0].Refused != "f(3) -> g(3) -> f(3)" {
		t.Errorf("g(3) calling f(3): %+v, want the cycle f(3) -> g(3) -> f(3)", got[0])
	}
	if got[1].Cycle || got[1].ID == 0 {
		t.Errorf("g(3) calling f(4): %+v, want a call", got[1])
	}
	self := e.call(f3, 100, nc("f", "3"))
	if !self[0].Cycle || self[0].Refused != "f(3) -> f(3)" {
		t.Errorf("f(3) calling itself: %+v", self[0])
	}
	// A static caller is never in a cycle: a calling f(3) again waits on it.
	if again := e.call(a, 100, nc("f", "3")); again[0].Cycle {
		t.Errorf("a calling f(3) again: %+v", again[0])
	}
}

// testCallsWake: a caller deferred on its calls holds no slot; the
// finishing transaction of its last unfinished callee queues it again,
// and the claim gives back its try; results are read in one call. With
// one slot, a chain of calls completes.
func testCallsWake(t *testing.T, e *env) {
	e.started(callsSpec("cw"), "run")
	e.w.Slots = 1
	a := e.claimOne("a")
	st := e.call(a, 100, nc("f", "1"), nc("f", "2"))
	o := e.finish(deferred(a, store.Deferral{Calls: true}))
	if o[0].State != state.Deferred {
		t.Fatalf("deferral with 2 calls unfinished: %+v", o[0])
	}
	if ti := e.ti("cw", "run", "a"); ti.State != state.Deferred {
		t.Fatalf("a is %s", ti.State)
	}
	f1 := e.claimID(st[0].ID)
	r := result(f1, state.Success)
	r.Output = []byte("1")
	e.finish(r)
	if ti := e.ti("cw", "run", "a"); ti.State != state.Deferred {
		t.Errorf("a is %s with one call left", ti.State)
	}
	f2 := e.claimID(st[1].ID)
	// f(2) calls f(1) (finished) and waits on nothing: queued at once.
	sub := e.call(f2, 100, nc("f", "1"))
	if sub[0].State != state.Success || string(sub[0].Output) != "1" {
		t.Errorf("f(2) calling finished f(1): %+v", sub[0])
	}
	r = result(f2, state.Success)
	r.Output = []byte("1")
	out, cs, err := e.s.FinishAndClaim(e.ctx, []store.Result{r}, e.w, 1, t0.Add(4*time.Minute))
	must(t, "FinishAndClaim", err)
	if !out[0].Applied || len(cs) != 1 || cs[0].ID != a.ID || cs[0].TryNumber != a.TryNumber {
		t.Fatalf("finishing the last callee claimed %+v, want the caller a with try %d", cs, a.TryNumber)
	}
	res, err := e.s.CallResults(e.ctx, []int64{st[0].ID, st[1].ID})
	must(t, "CallResults", err)
	if res[0].State != state.Success || string(res[1].Output) != "1" {
		t.Errorf("results %+v", res)
	}
	if _, err := e.s.CallResults(e.ctx, []int64{1 << 40}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CallResults of an unknown id: %v", err)
	}
	e.wantRunState("cw", "run", state.RunRunning)
	e.finish(result(cs[0], state.Success))
	e.wantRunState("cw", "run", state.RunSuccess)
}

// testCallsFailure: a callee that failed after its retries is answered
// failed with its error, and its waiting caller is queued again; the run
// fails only through its static tasks.
func testCallsFailure(t *testing.T, e *env) {
	e.started(callsSpec("cf"), "run")
	a := e.claimOne("a")
	st := e.call(a, 100, nc("r", "1"))
	e.finish(deferred(a, store.Deferral{Calls: true}))
	r1 := e.claimID(st[0].ID)
	f := result(r1, state.Failed)
	f.Error = "boom"
	if o := e.finish(f); o[0].State != state.UpForRetry {
		t.Fatalf("first failure of r(1): %+v, want up_for_retry", o[0])
	}
	if ti := e.ti("cf", "run", "a"); ti.State != state.Deferred {
		t.Errorf("a is %s while its callee is up for retry", ti.State)
	}
	_, err := e.s.RequeueRetries(e.ctx, t0.Add(time.Hour))
	must(t, "RequeueRetries", err)
	r2 := e.claimID(st[0].ID)
	f = result(r2, state.Failed)
	f.Error = "boom again"
	e.finish(f)
	a2 := e.claimID(a.ID)
	res, err := e.s.CallResults(e.ctx, []int64{st[0].ID})
	must(t, "CallResults", err)
	if res[0].State != state.Failed || res[0].Error != "boom again" || res[0].Output != nil {
		t.Errorf("failed call: %+v", res[0])
	}
	e.finish(result(a2, state.Success))
	e.wantRunState("cf", "run", state.RunSuccess)
}

// testCallsCrash: the worker running a call mid-chain dies; its try is
// failed and retried, the parked caller is queued again once it finishes,
// and a caller run again from the start (on another worker) gets the
// finished calls answered: no call runs twice, none is lost.
func testCallsCrash(t *testing.T, e *env) {
	e.started(callsSpec("cx"), "run")
	a := e.claimOne("a")
	top := e.call(a, 100, nc("r", "2"))[0]
	e.finish(deferred(a, store.Deferral{Calls: true}))
	r2 := e.claimID(top.ID)
	kids := e.call(r2, 100, nc("r", "1"), nc("r", "0"))
	e.finish(deferred(r2, store.Deferral{Calls: true}))
	r1 := e.claimID(kids[0].ID)
	ok := result(r1, state.Success)
	ok.Output = []byte("1")
	e.finish(ok)
	w2 := store.Worker{ID: "w2", Hostname: "host-2", PID: 202, Slots: 1}
	cs, err := e.s.ClaimTasks(e.ctx, w2, 1, t0.Add(3*time.Minute))
	if err != nil || len(cs) != 1 || cs[0].ID != kids[1].ID {
		t.Fatalf("w2 claimed %+v, %v; want r(0)", cs, err)
	}
	taken, err := e.s.FailWorkerTasks(e.ctx, "w2", t0.Add(4*time.Minute))
	must(t, "FailWorkerTasks", err)
	if len(taken) != 1 {
		t.Fatalf("FailWorkerTasks took %v", taken)
	}
	_, err = e.s.RequeueRetries(e.ctx, t0.Add(time.Hour))
	must(t, "RequeueRetries", err)
	r0 := e.claimID(kids[1].ID)
	if r0.TryNumber != 2 {
		t.Errorf("r(0) after its worker died: try %d, want 2", r0.TryNumber)
	}
	ok = result(r0, state.Success)
	ok.Output = []byte("0")
	e.finish(ok)
	// r(2) is queued again; another worker claims it and runs it from the
	// start: its calls are answered from the store.
	cs, err = e.s.ClaimTasks(e.ctx, w2, 1, t0.Add(5*time.Minute))
	if err != nil || len(cs) != 1 || cs[0].ID != top.ID || cs[0].TryNumber != r2.TryNumber {
		t.Fatalf("w2 claimed %+v, %v; want r(2) with its try", cs, err)
	}
	again, err := e.s.Call(e.ctx, store.CallBatch{Caller: att(cs[0]), Calls: []store.NewCall{nc("r", "1"), nc("r", "0")}, MaxCalls: 100})
	must(t, "Call", err)
	if again[0].ID != kids[0].ID || again[1].ID != kids[1].ID || again[0].State != state.Success || string(again[1].Output) != "0" {
		t.Errorf("calls made again: %+v", again)
	}
	// The parked worker's heartbeat learns r(2) was taken away.
	lost, err := e.s.HeartbeatTasks(e.ctx, e.w.ID, []store.Try{att(r2)}, t0.Add(5*time.Minute))
	must(t, "HeartbeatTasks", err)
	if len(lost) != 1 {
		t.Errorf("heartbeat of r(2) claimed by another worker: lost %v", lost)
	}
	done := result(cs[0], state.Success)
	done.Output = []byte("1")
	if _, err := e.s.FinishTasks(e.ctx, []store.Result{done}); err != nil {
		t.Fatal(err)
	}
	e.finish(result(e.claimID(a.ID), state.Success))
	e.wantRunState("cx", "run", state.RunSuccess)
	for _, ti := range e.calls("cx", "r") {
		if ti.State != state.Success {
			t.Errorf("call %s is %s", ti.Arguments, ti.State)
		}
	}
	if n := len(e.calls("cx", "r")); n != 3 {
		t.Errorf("%d call instances, want 3", n)
	}
}

// testCallsFromOutside: calls with no caller name their run; they
// deduplicate with the run's calls and keep a queued run from finishing;
// a finished or unknown run is refused.
func testCallsFromOutside(t *testing.T, e *env) {
	sp := callsSpec("co")
	e.sync(sp)
	run := e.newRun(sp, "run", t0)
	ext := func(calls ...store.NewCall) ([]store.CallState, error) {
		return e.s.Call(e.ctx, store.CallBatch{RunID: run.ID, Calls: calls, MaxCalls: 100, Now: t0})
	}
	got, err := ext(nc("f", "3"))
	must(t, "Call from outside", err)
	if got[0].ID == 0 || got[0].State != state.Queued || got[0].MapIndex != 0 {
		t.Fatalf("external call: %+v", got[0])
	}
	if fs := e.calls("co", "f"); len(fs) != 1 || fs[0].CallerID != 0 {
		t.Errorf("external call instance %+v, want no caller", fs)
	}
	e.start("co")
	cs := e.claim(2)
	if len(cs) != 2 || cs[0].ID != got[0].ID || cs[1].TaskID != "a" {
		t.Fatalf("claimed %v, want the external call (oldest), then a", taskIDs(cs))
	}
	a := cs[1]
	if st := e.call(a, 100, nc("f", "3")); st[0].ID != got[0].ID {
		t.Errorf("a's call of f(3) made %d, want the external call %d", st[0].ID, got[0].ID)
	}
	e.finish(result(a, state.Success))
	e.wantRunState("co", "run", state.RunRunning)
	e.finish(result(cs[0], state.Success))
	e.wantRunState("co", "run", state.RunSuccess)
	if st, err := ext(nc("f", "4"), nc("f", "3")); err != nil || !strings.Contains(st[0].Refused, "finished") ||
		st[1].ID != got[0].ID || st[1].State != state.Success {
		t.Errorf("calls into a finished run: %+v, %v; want f(4) refused and f(3) found", st, err)
	}
	if _, err := e.s.Call(e.ctx, store.CallBatch{RunID: 1 << 40, Calls: []store.NewCall{nc("f", "1")}, MaxCalls: 100}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("call into an unknown run: %v, want ErrNotFound", err)
	}
}

// testCallsConcurrent: workers on goroutines compute fib(9) without
// dedup through the store (each call made again from the start when its
// caller is resumed): the run settles success with the right count of
// instances, whatever the interleaving of calls, deferrals and finishes.
func testCallsConcurrent(t *testing.T, e *env) {
	e.started(newSpec("cn", tk("a"), callable("f")), "run")
	const n = 9
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk := store.Worker{ID: fmt.Sprintf("cw%d", w), Hostname: "h", PID: w + 1, Slots: 4}
			if err := fibWorker(e, wk, n); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tis, _, _ := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"cn"}})
		counts := map[state.TaskState]int{}
		for _, ti := range tis {
			counts[ti.State]++
		}
		t.Fatalf("%v; instances by state %v; run %+v", err, counts, e.run("cn", "run"))
	}
	r := e.wantRunState("cn", "run", state.RunSuccess)
	_ = r
	if got := len(e.calls("cn", "f")); got != 109 {
		t.Errorf("%d call instances of fib(%d) without dedup, want 109", got, n)
	}
	a := e.ti("cn", "run", "a")
	if string(a.Output) != "34" {
		t.Errorf("fib(%d) = %s, want 34", n, a.Output)
	}
}

// fibWorker plays one worker until the run "cn" has ended.
func fibWorker(e *env, wk store.Worker, n int) error {
	var results []store.Result
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		_, cs, err := e.s.FinishAndClaim(e.ctx, results, wk, 4, t0.Add(time.Minute))
		if err != nil {
			return fmt.Errorf("FinishAndClaim: %w", err)
		}
		results = nil
		if len(cs) == 0 {
			r, err := e.s.GetRun(e.ctx, "cn", "run")
			if err != nil {
				return err
			}
			if r.State.Terminal() {
				return nil
			}
			time.Sleep(time.Millisecond)
			continue
		}
		for _, c := range cs {
			var calls []store.NewCall
			if c.TaskID == "a" {
				calls = []store.NewCall{{TaskID: "f", Key: "~top", Arguments: []byte(fmt.Sprint(n))}}
			} else {
				var k int
				if _, err := fmt.Sscan(string(c.Arguments), &k); err != nil {
					return err
				}
				if k <= 1 {
					r := result(c, state.Success)
					r.Output = []byte(fmt.Sprint(k))
					results = append(results, r)
					continue
				}
				for i, a := range []int{k - 1, k - 2} {
					calls = append(calls, store.NewCall{TaskID: "f", Key: fmt.Sprintf("~%d.%d", c.ID, i),
						Arguments: []byte(fmt.Sprint(a))})
				}
			}
			st, err := e.s.Call(e.ctx, store.CallBatch{Caller: att(c), Calls: calls, MaxCalls: 1000, Now: t0})
			if err != nil {
				return fmt.Errorf("store call: %w", err)
			}
			sum, done := 0, true
			for _, s := range st {
				if s.State != state.Success {
					done = false
					break
				}
				var v int
				if _, err := fmt.Sscan(string(s.Output), &v); err != nil {
					return err
				}
				sum += v
			}
			if !done {
				results = append(results, deferred(c, store.Deferral{Calls: true}))
				continue
			}
			r := result(c, state.Success)
			r.Output = []byte(fmt.Sprint(sum))
			results = append(results, r)
		}
	}
	return fmt.Errorf("worker %s: no end", wk.ID)
}

// testCallsMany: CallMany records the calls of several tries in one
// transaction as Call would one after the other: a call both make is one
// instance (created by the first, with its caller) linked to both, map
// indexes continue across the batches, two callers calling each other
// in the same transaction close a cycle (the second is refused), a stale
// try or a bad batch is answered on its own while the others are
// recorded.
func testCallsMany(t *testing.T, e *env) {
	e.started(callsSpec("cm"), "run")
	a := e.claimOne("a")
	st := e.call(a, 100, nc("f", "1"), nc("g", "1"))
	f1, g1 := e.claimID(st[0].ID), e.claimID(st[1].ID)
	now := t0.Add(3 * time.Minute)
	out, err := e.s.CallMany(e.ctx, []store.CallBatch{
		{Caller: att(f1), Calls: []store.NewCall{nc("f", "2"), nc("g", "1")}, MaxCalls: 100, Now: now},
		{Caller: att(g1), Calls: []store.NewCall{nc("f", "2"), nc("f", "1"), nc("f", "3")}, MaxCalls: 100, Now: now},
		{Caller: store.Try{ID: a.ID, TryNumber: 9}, Calls: []store.NewCall{nc("f", "9")}, MaxCalls: 100, Now: now},
		{Caller: att(a), Calls: []store.NewCall{{TaskID: "f", Key: "x", Arguments: []byte("{")}}, MaxCalls: 100, Now: now},
	})
	must(t, "CallMany", err)
	if len(out) != 4 {
		t.Fatalf("CallMany answered %d batches, want 4", len(out))
	}
	for i, n := range []int{2, 3} {
		if out[i].Err != nil || len(out[i].States) != n {
			t.Fatalf("batch %d: %+v", i, out[i])
		}
	}
	f2, g1f1, g1f2, f3 := out[0].States[0], out[0].States[1], out[1].States[0], out[1].States[2]
	if f2.ID == 0 || g1f2.ID != f2.ID || f2.MapIndex != 1 || f3.MapIndex != 2 || f2.State != state.Queued {
		t.Errorf("f(2) %+v from f(1) and %+v from g(1), f(3) %+v: want one instance f[1], then f[2]", f2, g1f2, f3)
	}
	if g1f1.Cycle || g1f1.ID != g1.ID {
		t.Errorf("f(1) calling g(1): %+v, want a call of instance %d", g1f1, g1.ID)
	}
	if c := out[1].States[1]; !c.Cycle || c.Refused != "f(1) -> g(1) -> f(1)" {
		t.Errorf("g(1) calling f(1) in the same transaction: %+v, want the cycle f(1) -> g(1) -> f(1)", c)
	}
	if !errors.Is(out[2].Err, store.ErrStale) || out[3].Err == nil {
		t.Errorf("stale batch: %v, bad batch: %v; want ErrStale and an error", out[2].Err, out[3].Err)
	}
	fs := e.calls("cm", "f")
	if len(fs) != 3 || fs[1].CallerID != f1.ID {
		t.Fatalf("instances of f: %+v, want f(1), f(2) called first by f(1), f(3)", fs)
	}
	for _, x := range []struct {
		caller store.Claimed
		want   int
	}{{f1, 2}, {g1, 2}} {
		callees, err := e.s.Callees(e.ctx, x.caller.ID)
		must(t, "Callees", err)
		if len(callees) != x.want {
			t.Errorf("callees of %s: %d, want %d", x.caller.TaskID, len(callees), x.want)
		}
	}
}

// testCallsClearRerun: clearing a caller whose run failed on a failed
// call re-runs it: the call instances that failed (and the failed ones
// they called) are queued again with their retries back, the one that
// succeeded is not touched and answers the re-run caller's call with its
// result; the run then ends as the re-run calls do.
func testCallsClearRerun(t *testing.T, e *env) {
	e.started(callsSpec("cr"), "run")
	a := e.claimOne("a")
	st := e.call(a, 100, nc("f", "1"), nc("f", "2"))
	e.finish(deferred(a, store.Deferral{Calls: true}))
	f1 := e.claimID(st[0].ID)
	ok := result(f1, state.Success)
	ok.Output = []byte("10")
	e.finish(ok)
	f2 := e.claimID(st[1].ID)
	g2 := e.claimID(e.call(f2, 100, nc("g", "2"))[0].ID)
	e.finish(deferred(f2, store.Deferral{Calls: true}))
	bad := result(g2, state.Failed)
	bad.Error = "g failed"
	e.finish(bad)
	f2 = e.claimID(f2.ID)
	bad = result(f2, state.Failed)
	bad.Error = "call g(2) failed"
	e.finish(bad)
	a = e.claimID(a.ID)
	e.finish(result(a, state.Failed))
	e.wantRunState("cr", "run", state.RunFailed)

	_, err := e.s.ClearTasks(e.ctx, "cr", "run", []string{"a"}, false, t0.Add(time.Hour))
	must(t, "ClearTasks", err)
	e.wantRunState("cr", "run", state.RunRunning)
	byID := map[int64]store.TaskInstance{}
	tis, err := e.s.TaskInstancesByID(e.ctx, []int64{f1.ID, f2.ID, g2.ID})
	must(t, "TaskInstancesByID", err)
	for _, ti := range tis {
		byID[ti.ID] = ti
	}
	if x := byID[f1.ID]; x.State != state.Success || x.TryNumber != 1 || string(x.Output) != "10" {
		t.Errorf("f(1), which succeeded: %s try %d output %s; want it kept", x.State, x.TryNumber, x.Output)
	}
	for _, id := range []int64{f2.ID, g2.ID} {
		if x := byID[id]; x.State != state.Queued || x.Error != "" || x.MaxTries <= x.TryNumber {
			t.Errorf("failed call %s(%s): %s, error %q, try %d of %d; want queued with its retries back",
				x.TaskID, x.Arguments, x.State, x.Error, x.TryNumber, x.MaxTries)
		}
	}
	claimed := e.claim(10)
	want := map[int64]bool{a.ID: true, f2.ID: true, g2.ID: true}
	if len(claimed) != 3 {
		t.Fatalf("claimed %d after the clear, want a, f(2) and g(2)", len(claimed))
	}
	var a2, f22, g22 store.Claimed
	for _, c := range claimed {
		if !want[c.ID] {
			t.Fatalf("claimed %s %d after the clear", c.TaskID, c.ID)
		}
		switch c.ID {
		case a.ID:
			a2 = c
		case f2.ID:
			f22 = c
		default:
			g22 = c
		}
	}
	again := e.call(a2, 100, nc("f", "1"), nc("f", "2"))
	if again[0].ID != f1.ID || again[0].State != state.Success || string(again[0].Output) != "10" {
		t.Errorf("re-run a calling f(1): %+v, want the kept result 10", again[0])
	}
	if again[1].ID != f2.ID || again[1].State == state.Failed {
		t.Errorf("re-run a calling f(2): %+v, want the re-run instance %d", again[1], f2.ID)
	}
	e.finish(deferred(a2, store.Deferral{Calls: true}))
	e.call(f22, 100, nc("g", "2"))
	e.finish(deferred(f22, store.Deferral{Calls: true}))
	e.finish(result(g22, state.Success))
	e.finish(result(e.claimID(f2.ID), state.Success))
	e.finish(result(e.claimID(a.ID), state.Success))
	e.wantRunState("cr", "run", state.RunSuccess)
}
