package storetest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func testClaimOrder(t *testing.T, e *env) {
	o1 := newSpec("o1", tk("lo", prio(1)), tk("hi", prio(10)), tk("mid", prio(5), timeout(90*time.Second)))
	o2 := newSpec("o2", tk("hi2", prio(10)), tk("lo2", prio(1)))
	e.sync(o1, o2)
	conf := json.RawMessage(`{"who": "o1"}`)
	_, _, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: "o1", RunID: "r", RunType: store.RunScheduled,
		LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0.Add(time.Hour), Conf: conf, Fingerprint: o1.Fingerprint, QueuedAt: t0})
	must(t, "CreateRun", err)
	e.newRun(o2, "r", t0)
	_, err = e.s.StartRuns(e.ctx, "o1", t0.Add(time.Minute))
	must(t, "StartRuns o1", err)
	_, err = e.s.StartRuns(e.ctx, "o2", t0.Add(30*time.Second)) // queued earlier
	must(t, "StartRuns o2", err)

	if cs := e.claimAt(0, t0); len(cs) != 0 {
		t.Errorf("claim 0 returned %d", len(cs))
	}
	now := t0.Add(2 * time.Minute)
	first := e.claimAt(2, now)
	if got := taskIDs(first); !slices.Equal(got, []string{"hi2", "hi"}) {
		t.Errorf("first claim %v, want [hi2 hi] (priority, then queue time)", got)
	}
	rest := e.claimAt(10, now)
	if got := taskIDs(rest); !slices.Equal(got, []string{"mid", "lo2", "lo"}) {
		t.Errorf("second claim %v, want [mid lo2 lo]", got)
	}
	if cs := e.claimAt(10, now); len(cs) != 0 {
		t.Errorf("claimed %v with nothing queued", taskIDs(cs))
	}
	var mid store.Claimed
	for _, c := range rest {
		if c.TaskID == "mid" {
			mid = c
		}
	}
	if mid.State != state.Running || mid.TryNumber != 1 || mid.WorkerID != "w1" || mid.Hostname != "host-1" ||
		mid.PID != 101 || mid.StartedAt == nil || !mid.StartedAt.Equal(now) || mid.HeartbeatAt == nil ||
		!mid.HeartbeatAt.Equal(now) || mid.DAGID != "o1" || mid.DAGRunID != "r" || mid.Timeout != 90*time.Second ||
		!mid.LogicalDate.Equal(t0) || !mid.IntervalStart.Equal(t0) || !mid.IntervalEnd.Equal(t0.Add(time.Hour)) ||
		mid.Priority != 5 || mid.MaxTries != 1 {
		t.Errorf("claimed instance %+v", mid)
	}
	jsonEqual(t, "claimed conf", mid.Conf, conf)
	if ti := e.ti("o1", "r", "mid"); ti.State != state.Running || ti.TryNumber != 1 {
		t.Errorf("stored after claim: %+v", ti)
	}
}

func testClaimConcurrent(t *testing.T, e *env) {
	const n = 1000
	var tasks []store.TaskSpec
	for _, id := range names(n, "t") {
		tasks = append(tasks, tk(id))
	}
	e.started(newSpec("cg", tasks...), "r")
	got := claimConcurrently(t, e.s, 8, 7, e.w)
	checkClaims(t, got, n)
}

func testMaxActiveTasks(t *testing.T, e *env) {
	capped := newSpec("capped", tk("a"), tk("b"), tk("c"), tk("d"), tk("e"), tk("f"), tk("g"))
	capped.MaxActiveTasks = 2
	capped = fingerprint(capped)
	free := newSpec("free", tk("x"), tk("y"), tk("z"))
	e.sync(capped, free)
	e.newRun(capped, "r", t0)
	e.newRun(free, "r", t0)
	e.start("capped")
	e.start("free")
	perDAG := func(cs []store.Claimed) map[string]int {
		m := map[string]int{}
		for _, c := range cs {
			m[c.DAGID]++
		}
		return m
	}
	cs := e.claim(10)
	if got := perDAG(cs); got["capped"] != 2 || got["free"] != 3 {
		t.Fatalf("claimed %v per DAG, want 2 of the capped DAG and all 3 of the other", got)
	}
	if more := e.claim(10); len(more) != 0 {
		t.Fatalf("claimed %v beyond the cap", taskIDs(more))
	}
	var running []store.Claimed
	for _, c := range cs {
		if c.DAGID == "capped" {
			running = append(running, c)
		}
	}
	e.finish(result(running[0], state.Success))
	next := e.claim(10)
	if len(next) != 1 || next[0].DAGID != "capped" {
		t.Fatalf("after one finished claimed %v, want one more of the capped DAG", taskIDs(next))
	}
	// Two slots free up; 8 goroutines claim at once: only two get one.
	e.finish(result(running[1], state.Success), result(next[0], state.Success))
	ids := claimConcurrently(t, e.s, 8, 3, e.w)
	if len(ids) != 2 {
		t.Errorf("concurrent claims took %d instances of the capped DAG, want 2 (its cap)", len(ids))
	}
	_, total, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"capped"}, States: []state.TaskState{state.Running}})
	must(t, "ListTaskInstances", err)
	if total != 2 {
		t.Errorf("%d instances of the capped DAG running, want 2", total)
	}
}

// claimConcurrently claims with goroutines, batch at a time, until none
// is left, and returns the instance ids each claim returned.
func claimConcurrently(t *testing.T, s store.Store, goroutines, batch int, w store.Worker) []int64 {
	var mu sync.Mutex
	var ids []int64
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for {
				cs, err := s.ClaimTasks(t.Context(), w, batch, t0.Add(2*time.Minute))
				if err != nil {
					t.Errorf("ClaimTasks: %v", err)
					return
				}
				if len(cs) == 0 {
					return
				}
				mu.Lock()
				for _, c := range cs {
					if c.State != state.Running || c.TryNumber != 1 {
						t.Errorf("claimed %+v", c.TaskInstance)
					}
					ids = append(ids, c.ID)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return ids
}

func checkClaims(t *testing.T, ids []int64, want int) {
	t.Helper()
	seen := map[int64]int{}
	for _, id := range ids {
		seen[id]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("instance %d claimed %d times", id, n)
		}
	}
	if len(seen) != want {
		t.Errorf("%d distinct instances claimed, want %d", len(seen), want)
	}
}

func testRetries(t *testing.T, e *env) {
	sp := newSpec("rt", tk("r", retries(2, 10*time.Second, 0)), tk("d", up("r")))
	e.started(sp, "run")
	if _, ok, err := e.s.NextRetryAt(e.ctx); err != nil || ok {
		t.Errorf("NextRetryAt with no retries: ok=%v err=%v", ok, err)
	}
	for try := 1; try <= 3; try++ {
		c := e.claimOne("r")
		if c.TryNumber != try || c.MaxTries != 3 {
			t.Fatalf("try %d: claimed try %d of %d", try, c.TryNumber, c.MaxTries)
		}
		end := t0.Add(time.Duration(try) * time.Hour)
		out := e.finish(store.Result{Try: att(c), State: state.Failed, Error: "try failed", EndedAt: end})
		if try == 3 {
			if out[0].State != state.Failed {
				t.Fatalf("last try ended %s, want failed", out[0].State)
			}
			break
		}
		if out[0].State != state.UpForRetry {
			t.Fatalf("try %d ended %s, want up_for_retry", try, out[0].State)
		}
		due := end.Add(10 * time.Second)
		ti := e.ti("rt", "run", "r")
		if ti.State != state.UpForRetry || ti.NextRetryAt == nil || !ti.NextRetryAt.Equal(due) || ti.Error != "try failed" {
			t.Fatalf("after try %d: %+v, want up_for_retry due %v", try, ti, due)
		}
		e.wantStates("rt", "run", map[string]state.TaskState{"d": state.None})
		e.wantRunState("rt", "run", state.RunRunning)
		at, ok, err := e.s.NextRetryAt(e.ctx)
		if err != nil || !ok || !at.Equal(due) {
			t.Fatalf("NextRetryAt = %v %v %v, want %v", at, ok, err, due)
		}
		n, err := e.s.RequeueRetries(e.ctx, due.Add(-time.Second))
		if err != nil || n != 0 {
			t.Fatalf("RequeueRetries before due = %d, %v", n, err)
		}
		if cs := e.claim(5); len(cs) != 0 {
			t.Fatalf("claimed %v before the retry was due", taskIDs(cs))
		}
		n, err = e.s.RequeueRetries(e.ctx, due)
		if err != nil || n != 1 {
			t.Fatalf("RequeueRetries at due = %d, %v; want 1", n, err)
		}
		if _, ok, _ := e.s.NextRetryAt(e.ctx); ok {
			t.Errorf("NextRetryAt still reports a retry after requeue")
		}
	}
	e.wantStates("rt", "run", map[string]state.TaskState{"r": state.Failed, "d": state.UpstreamFailed})
	e.wantRunState("rt", "run", state.RunFailed)
}

func testBackoff(t *testing.T, e *env) {
	base, maxB := time.Second, 10*time.Second
	e.started(newSpec("bo", tk("r", retries(6, base, maxB))), "run")
	for try := 1; try <= 5; try++ {
		c := e.claimOne("r")
		end := t0.Add(time.Duration(try) * time.Hour)
		e.finish(store.Result{Try: att(c), State: state.Failed, EndedAt: end})
		ti := e.ti("bo", "run", "r")
		if ti.NextRetryAt == nil {
			t.Fatalf("try %d: no retry time", try)
		}
		d := base << (try - 1)
		lo, hi := min(d, maxB), min(2*d, maxB)
		if got := ti.NextRetryAt.Sub(end); got < lo || got > hi {
			t.Errorf("try %d: retry delay %v, want within [%v, %v]", try, got, lo, hi)
		}
		if _, err := e.s.RequeueRetries(e.ctx, *ti.NextRetryAt); err != nil {
			t.Fatal(err)
		}
	}
}

func testPermanent(t *testing.T, e *env) {
	e.started(newSpec("pm", tk("r", retries(3, time.Second, 0)), tk("d", up("r"))), "run")
	c := e.claimOne("r")
	out := e.finish(store.Result{Try: att(c), State: state.Failed, Permanent: true, EndedAt: t0.Add(time.Hour)})
	if out[0].State != state.Failed {
		t.Errorf("permanent failure ended %s, want failed", out[0].State)
	}
	e.wantStates("pm", "run", map[string]state.TaskState{"r": state.Failed, "d": state.UpstreamFailed})
	if ti := e.ti("pm", "run", "r"); ti.NextRetryAt != nil {
		t.Errorf("permanent failure has a retry time %v", ti.NextRetryAt)
	}
}

func testCAS(t *testing.T, e *env) {
	e.started(newSpec("cas", tk("a"), tk("b"), tk("c", up("a"))), "run")
	queued := e.ti("cas", "run", "b")
	// Finishing an instance nobody claimed changes nothing.
	out := e.finish(store.Result{Try: store.Try{ID: queued.ID, TryNumber: 0}, State: state.Success, EndedAt: t0},
		store.Result{Try: store.Try{ID: queued.ID, TryNumber: 1}, State: state.Success, EndedAt: t0},
		store.Result{Try: store.Try{ID: 1 << 40, TryNumber: 1}, State: state.Success, EndedAt: t0})
	for i, o := range out {
		if o.Applied {
			t.Errorf("finish #%d of an unclaimed or unknown instance applied: %+v", i, o)
		}
	}
	if ti := e.ti("cas", "run", "b"); ti.State != state.Queued {
		t.Errorf("b is %s after rejected finishes, want queued", ti.State)
	}
	a := e.claimNamed("cas", "a")
	// Wrong try: rejected, still running.
	wrong := result(a, state.Failed)
	wrong.TryNumber = 2
	if o := e.finish(wrong); o[0].Applied || o[0].State != state.Running {
		t.Errorf("finish with a wrong try = %+v, want not applied, state running", o[0])
	}
	// Invalid outcome: an error, nothing written.
	if _, err := e.s.FinishTasks(e.ctx, []store.Result{{Try: att(a), State: state.Running, EndedAt: t0}}); err == nil {
		t.Errorf("FinishTasks accepted state running as an outcome")
	}
	if ti := e.ti("cas", "run", "a"); ti.State != state.Running {
		t.Errorf("a is %s after an invalid result", ti.State)
	}
	// The right try, twice in one batch and once more later: applied once.
	good := result(a, state.Success)
	good.Output = json.RawMessage(`{"n": 1}`)
	dup := result(a, state.Failed)
	out = e.finish(good, dup)
	if !out[0].Applied || out[0].State != state.Success || out[1].Applied {
		t.Errorf("finish + duplicate in one batch = %+v", out)
	}
	out = e.finish(dup)
	if out[0].Applied || out[0].State != state.Success {
		t.Errorf("late duplicate = %+v, want not applied, state success", out[0])
	}
	ti := e.ti("cas", "run", "a")
	if ti.State != state.Success {
		t.Errorf("a is %s, want success", ti.State)
	}
	jsonEqual(t, "output after duplicate", ti.Output, good.Output)
	// c was released once.
	if cs := e.claim(10); len(cs) != 2 {
		t.Errorf("claimed %v, want b and c once each", taskIDs(cs))
	}

	// A report sent again whole (its first sending committed but the
	// answer was lost) changes no counter: j, which waits for x and y, is
	// not released by x twice.
	e.started(newSpec("cas2", tk("x"), tk("y"), tk("j", up("x", "y"))), "run")
	x := e.claimNamed("cas2", "x")
	rx := result(x, state.Success)
	for i := range 3 {
		out := e.finish(rx)
		if out[0].Applied != (i == 0) {
			t.Errorf("report %d of x: applied %v", i+1, out[0].Applied)
		}
	}
	if ti := e.ti("cas2", "run", "j"); ti.State != state.None {
		t.Errorf("j = %s after x's report came three times, want none (it waits for y)", ti.State)
	}
	y := e.claimNamed("cas2", "y")
	if _, next := e.finishClaim(4, result(y, state.Success)); len(next) != 1 || next[0].TaskID != "j" {
		t.Errorf("after y: claimed %v, want j", taskIDs(next))
	}
}

func testHeartbeats(t *testing.T, e *env) {
	e.started(newSpec("hb", tk("a"), tk("b")), "run")
	cs := e.claim(2)
	if len(cs) != 2 {
		t.Fatalf("claimed %d", len(cs))
	}
	a, b := cs[0], cs[1]
	bogus := []store.Try{{ID: b.ID, TryNumber: 9}, {ID: 1 << 40, TryNumber: 1}}
	now := t0.Add(5 * time.Minute)
	lost, err := e.s.HeartbeatTasks(e.ctx, "w1", append([]store.Try{att(a), att(b)}, bogus...), now)
	must(t, "HeartbeatTasks", err)
	if !sameTries(lost, bogus) {
		t.Errorf("lost %v, want %v", lost, bogus)
	}
	for _, c := range cs {
		ti := e.ti("hb", "run", c.TaskID)
		if ti.HeartbeatAt == nil || !ti.HeartbeatAt.Equal(now) {
			t.Errorf("%s heartbeat %v, want %v", c.TaskID, ti.HeartbeatAt, now)
		}
	}
	e.finish(result(a, state.Success))
	lost, err = e.s.HeartbeatTasks(e.ctx, "w1", []store.Try{att(a), att(b)}, now.Add(time.Minute))
	must(t, "HeartbeatTasks", err)
	if !sameTries(lost, []store.Try{att(a)}) {
		t.Errorf("lost %v after a finished, want [a]", lost)
	}
	// Another worker cannot keep b alive.
	lost, err = e.s.HeartbeatTasks(e.ctx, "w2", []store.Try{att(b)}, now.Add(time.Hour))
	must(t, "HeartbeatTasks w2", err)
	if !sameTries(lost, []store.Try{att(b)}) {
		t.Errorf("w2 heartbeat of w1's try: lost %v", lost)
	}
	if ti := e.ti("hb", "run", "b"); !ti.HeartbeatAt.Equal(now.Add(time.Minute)) {
		t.Errorf("another worker moved b's heartbeat to %v", ti.HeartbeatAt)
	}
	lost, err = e.s.HeartbeatTasks(e.ctx, "w1", nil, now)
	if err != nil || len(lost) != 0 {
		t.Errorf("empty heartbeat: %v %v", lost, err)
	}
}

func sameTries(a, b []store.Try) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	cmp := func(x, y store.Try) int {
		if x.ID != y.ID {
			if x.ID < y.ID {
				return -1
			}
			return 1
		}
		return x.TryNumber - y.TryNumber
	}
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}

func testZombies(t *testing.T, e *env) {
	e.started(newSpec("zz", tk("zr", retries(1, time.Second, 0)), tk("zn"), tk("zd", up("zn"))), "run")
	cs := e.claimAt(2, t0.Add(2*time.Minute))
	if len(cs) != 2 {
		t.Fatalf("claimed %d", len(cs))
	}
	var zr, zn store.Claimed
	for _, c := range cs {
		if c.TaskID == "zr" {
			zr = c
		} else {
			zn = c
		}
	}
	if _, err := e.s.HeartbeatTasks(e.ctx, "w1", []store.Try{att(zr)}, t0.Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	taken, err := e.s.FailZombies(e.ctx, t0.Add(5*time.Minute), t0.Add(11*time.Minute))
	must(t, "FailZombies", err)
	if !sameTries(taken, []store.Try{att(zn)}) {
		t.Fatalf("FailZombies took %v, want zn", taken)
	}
	ti := e.ti("zz", "run", "zn")
	if ti.State != state.Failed || ti.Error == "" || ti.EndedAt == nil || !ti.EndedAt.Equal(t0.Add(11*time.Minute)) {
		t.Errorf("zombie zn: %+v", ti)
	}
	e.wantStates("zz", "run", map[string]state.TaskState{"zr": state.Running, "zd": state.UpstreamFailed})
	// The zombie's worker reports late: nothing changes.
	if o := e.finish(result(zn, state.Success)); o[0].Applied {
		t.Errorf("late report of a zombie applied")
	}
	taken, err = e.s.FailZombies(e.ctx, t0.Add(20*time.Minute), t0.Add(21*time.Minute))
	must(t, "FailZombies", err)
	if !sameTries(taken, []store.Try{att(zr)}) {
		t.Fatalf("FailZombies took %v, want zr", taken)
	}
	if ti := e.ti("zz", "run", "zr"); ti.State != state.UpForRetry {
		t.Errorf("zombie with tries left is %s, want up_for_retry", ti.State)
	}
	taken, err = e.s.FailZombies(e.ctx, t0.Add(time.Hour), t0.Add(time.Hour))
	if err != nil || len(taken) != 0 {
		t.Errorf("FailZombies with no zombies: %v %v", taken, err)
	}
}

func testFailWorker(t *testing.T, e *env) {
	e.started(newSpec("fw", tk("a"), tk("b")), "run")
	a := e.claimOne("a")
	w2 := store.Worker{ID: "w2", Hostname: "host-2", PID: 202}
	cs, err := e.s.ClaimTasks(e.ctx, w2, 1, t0.Add(2*time.Minute))
	if err != nil || len(cs) != 1 || cs[0].TaskID != "b" {
		t.Fatalf("w2 claimed %v, %v", cs, err)
	}
	taken, err := e.s.FailWorkerTasks(e.ctx, "w2", t0.Add(3*time.Minute))
	must(t, "FailWorkerTasks", err)
	if !sameTries(taken, []store.Try{att(cs[0])}) {
		t.Errorf("FailWorkerTasks took %v, want b", taken)
	}
	e.wantStates("fw", "run", map[string]state.TaskState{"a": state.Running, "b": state.Failed})
	e.finish(result(a, state.Success))
	e.wantRunState("fw", "run", state.RunFailed)
}

func testRequeue(t *testing.T, e *env) {
	e.started(newSpec("rq", tk("a")), "run")
	a := e.claimOne("a")
	must(t, "AppendLog", e.s.AppendLog(e.ctx, att(a), []byte("first run\n")))
	must(t, "RequeueTries", e.s.RequeueTries(e.ctx, []store.Try{att(a), {ID: a.ID, TryNumber: 5}}))
	ti := e.ti("rq", "run", "a")
	if ti.State != state.Queued || ti.TryNumber != 0 || ti.WorkerID != "" {
		t.Errorf("after requeue: %+v, want queued with try 0", ti)
	}
	again := e.claimOne("a")
	if again.TryNumber != 1 {
		t.Errorf("claimed again with try %d, want 1 (requeue uses no try)", again.TryNumber)
	}
	// The log of the try marks where its second run begins.
	must(t, "AppendLog", e.s.AppendLog(e.ctx, att(again), []byte("second run\n")))
	log, err := e.s.ReadLog(e.ctx, "rq", "run", "a", 1)
	must(t, "ReadLog", err)
	if want := "first run\n" + string(store.PutBackNote(store.RequeueReason)) + "second run\n"; string(log) != want {
		t.Errorf("log after a requeue and a second run = %q, want %q", log, want)
	}
	// A stale try (the one requeued) is ignored.
	must(t, "RequeueTries stale", e.s.RequeueTries(e.ctx, []store.Try{{ID: a.ID, TryNumber: 7}}))
	if ti := e.ti("rq", "run", "a"); ti.State != state.Running {
		t.Errorf("stale requeue moved a to %s", ti.State)
	}
	must(t, "RequeueTries empty", e.s.RequeueTries(e.ctx, nil))
}

// testRecoverWorker: the tries of a dead worker go back to queued keeping
// their try number; a try whose worker dies again under the same number is
// failed, its error quoting the cause and the last lines of its log.
func testRecoverWorker(t *testing.T, e *env) {
	e.started(newSpec("rw", tk("a"), tk("b")), "run")
	a := e.claimOne("a")
	w2 := store.Worker{ID: "w2", Hostname: "host-2", PID: 202}
	cs, err := e.s.ClaimTasks(e.ctx, w2, 1, t0.Add(time.Minute))
	if err != nil || len(cs) != 1 || cs[0].TaskID != "b" {
		t.Fatalf("w2 claimed %v, %v", cs, err)
	}
	b := cs[0]
	must(t, "AppendLog", e.s.AppendLog(e.ctx, att(b), []byte("b's first run\n")))
	rec, err := e.s.RecoverWorkerTasks(e.ctx, "w2", "worker w2 died: exit status 3", t0.Add(2*time.Minute))
	must(t, "RecoverWorkerTasks", err)
	if !sameTries(rec.Requeued, []store.Try{att(b)}) || len(rec.Failed) != 0 {
		t.Fatalf("first death: %+v, want b requeued", rec)
	}
	if ti := e.ti("rw", "run", "b"); ti.State != state.Queued || ti.WorkerID != "" {
		t.Fatalf("b after the first death: %+v, want queued", ti)
	}
	again, err := e.s.ClaimTasks(e.ctx, w2, 1, t0.Add(3*time.Minute))
	if err != nil || len(again) != 1 || again[0].TaskID != "b" || again[0].TryNumber != b.TryNumber {
		t.Fatalf("claimed again %v %v, want b with try %d (a death uses no try)", again, err, b.TryNumber)
	}
	if log, err := e.s.ReadLog(e.ctx, "rw", "run", "b", again[0].TryNumber); err != nil ||
		!strings.Contains(string(log), "worker w2 died: exit status 3; the try was put back") {
		t.Errorf("log of b after its put-back = %q (%v), want the put-back note", log, err)
	}
	var log strings.Builder
	for i := range 30 {
		fmt.Fprintf(&log, "line %02d\n", i)
	}
	must(t, "AppendLog", e.s.AppendLog(e.ctx, att(again[0]), []byte(log.String())))
	rec, err = e.s.RecoverWorkerTasks(e.ctx, "w2", "worker w2 died: exit status 3", t0.Add(4*time.Minute))
	must(t, "RecoverWorkerTasks", err)
	if !sameTries(rec.Failed, []store.Try{att(again[0])}) || len(rec.Requeued) != 0 {
		t.Fatalf("second death: %+v, want b failed", rec)
	}
	ti := e.ti("rw", "run", "b")
	if ti.State != state.Failed {
		t.Fatalf("b after the second death: %s, want failed", ti.State)
	}
	for _, want := range []string{"exit status 3", "died twice", "line 29", "line 10"} {
		if !strings.Contains(ti.Error, want) {
			t.Errorf("error %q lacks %q", ti.Error, want)
		}
	}
	if strings.Contains(ti.Error, "line 09") {
		t.Errorf("error %q quotes more than the last %d lines", ti.Error, store.PoisonTailLines)
	}
	// Another worker's tries are untouched; nothing to do is no error.
	if x := e.ti("rw", "run", "a"); x.State != state.Running || x.TryNumber != a.TryNumber {
		t.Errorf("a = %s try %d, want running untouched", x.State, x.TryNumber)
	}
	rec, err = e.s.RecoverWorkerTasks(e.ctx, "w9", "gone", t0.Add(5*time.Minute))
	if err != nil || len(rec.Requeued)+len(rec.Failed) != 0 {
		t.Errorf("unknown worker: %+v %v", rec, err)
	}
}

// testZombiesLiveWorker: a try whose own heartbeat is stale is not a
// zombie while its worker's process heartbeat is fresh; it is once that
// is stale too.
func testZombiesLiveWorker(t *testing.T, e *env) {
	e.started(newSpec("zl", tk("a")), "run")
	w := store.Worker{ID: "wz", Hostname: "host-z", PID: 7, Slots: 1, StartedAt: t0, HeartbeatAt: t0}
	must(t, "RegisterWorker", e.s.RegisterWorker(e.ctx, w))
	cs, err := e.s.ClaimTasks(e.ctx, w, 1, t0.Add(time.Minute))
	if err != nil || len(cs) != 1 {
		t.Fatalf("claim: %v %v", cs, err)
	}
	must(t, "HeartbeatWorker", e.s.HeartbeatWorker(e.ctx, "wz", t0.Add(10*time.Minute)))
	taken, err := e.s.FailZombies(e.ctx, t0.Add(5*time.Minute), t0.Add(11*time.Minute))
	must(t, "FailZombies", err)
	if len(taken) != 0 {
		t.Fatalf("FailZombies took %v from a worker that beat at +10m (stale before +5m), want nothing", taken)
	}
	taken, err = e.s.FailZombies(e.ctx, t0.Add(15*time.Minute), t0.Add(16*time.Minute))
	must(t, "FailZombies", err)
	if !sameTries(taken, []store.Try{att(cs[0])}) {
		t.Fatalf("FailZombies took %v once the worker's heartbeat was stale too, want a", taken)
	}
}
