package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func testChain(t *testing.T, e *env) {
	sp := newSpec("chain", tk("a"), tk("b", up("a")), tk("c", up("b")))
	e.started(sp, "r")
	e.wantStates("chain", "r", map[string]state.TaskState{"a": state.Queued, "b": state.None, "c": state.None})
	a := e.claimOne("a")
	if len(e.claim(5)) != 0 {
		t.Fatalf("claimed b or c before a finished")
	}
	out := e.finish(result(a, state.Success))
	if !out[0].Applied || out[0].State != state.Success {
		t.Errorf("finish a = %+v", out[0])
	}
	e.wantStates("chain", "r", map[string]state.TaskState{"a": state.Success, "b": state.Queued, "c": state.None})
	e.wantRunState("chain", "r", state.RunRunning)
	b := e.claimOne("b")
	e.finish(result(b, state.Success))
	c := e.claimOne("c")
	e.finish(result(c, state.Success))
	r := e.wantRunState("chain", "r", state.RunSuccess)
	if r.EndedAt == nil || !r.EndedAt.Equal(t0.Add(3*time.Minute)) {
		t.Errorf("run ended at %v, want the last finish time %v", r.EndedAt, t0.Add(3*time.Minute))
	}
	ti := e.ti("chain", "r", "c")
	if ti.TryNumber != 1 || ti.StartedAt == nil || ti.EndedAt == nil || ti.Duration() != time.Minute ||
		ti.WorkerID != "w1" || ti.Hostname != "host-1" || ti.PID != 101 {
		t.Errorf("finished instance %+v", ti)
	}
}

// ruleCase: tasks a and b feed c (rule); a and b end as given, one after
// the other; c ends in want (success when it ran).
type ruleCase struct {
	rule dag.TriggerRule
	a, b state.TaskState
	want state.TaskState
}

var (
	ok   = state.Success
	fail = state.Failed
	skip = state.Skipped
	upf  = state.UpstreamFailed
)

var ruleCases = []ruleCase{
	{dag.AllSuccess, ok, ok, ok}, {dag.AllSuccess, ok, fail, upf}, {dag.AllSuccess, skip, ok, skip},
	{dag.AllFailed, fail, fail, ok}, {dag.AllFailed, ok, fail, skip},
	{dag.AllDone, ok, fail, ok}, {dag.AllDone, skip, fail, ok},
	{dag.AllSkipped, skip, skip, ok}, {dag.AllSkipped, skip, ok, skip},
	{dag.OneSuccess, fail, ok, ok}, {dag.OneSuccess, fail, fail, upf}, {dag.OneSuccess, skip, skip, skip},
	{dag.OneFailed, ok, fail, ok}, {dag.OneFailed, ok, ok, skip},
	{dag.OneDone, skip, fail, ok}, {dag.OneDone, skip, skip, skip},
	{dag.NoneFailed, ok, skip, ok}, {dag.NoneFailed, ok, fail, upf},
	{dag.NoneFailedMinOneSuccess, skip, skip, skip}, {dag.NoneFailedMinOneSuccess, ok, skip, ok},
	{dag.NoneFailedMinOneSuccess, fail, ok, upf},
	{dag.NoneSkipped, ok, fail, ok}, {dag.NoneSkipped, ok, skip, skip},
	{dag.Always, fail, fail, ok},
}

func testTriggerRules(t *testing.T, e *env) {
	// Every case is its own DAG; all run together, finishing one instance
	// per transaction (a before b), so decisions are made on partial counts.
	outcome := map[string]state.TaskState{}
	for i, rc := range ruleCases {
		id := fmt.Sprintf("rule%02d", i)
		sp := newSpec(id, tk("a"), tk("b"), tk("c", up("a", "b"), rule(rc.rule)))
		e.sync(sp)
		e.newRun(sp, "r", t0)
		e.start(id)
		outcome[id+"/a"], outcome[id+"/b"] = rc.a, rc.b
	}
	finished := map[string]bool{}
	e.drive(1, func(c store.Claimed) store.Result {
		if c.TaskID == "b" && !finished[c.DAGID+"/a"] {
			// Hold b back until a has finished: requeue it untouched.
			must(t, "RequeueTries", e.s.RequeueTries(e.ctx, []store.Try{att(c)}))
			c2 := e.claimNamed(c.DAGID, "a")
			finished[c.DAGID+"/a"] = true
			return result(c2, outcome[c.DAGID+"/a"])
		}
		finished[c.DAGID+"/"+c.TaskID] = true
		if st, ok := outcome[c.DAGID+"/"+c.TaskID]; ok {
			return result(c, st)
		}
		return result(c, state.Success)
	})
	for i, rc := range ruleCases {
		id := fmt.Sprintf("rule%02d", i)
		got := e.states(id, "r")
		if got["c"] != rc.want {
			t.Errorf("%s with a=%s, b=%s: c ended %s, want %s", rc.rule, rc.a, rc.b, got["c"], rc.want)
		}
		wantRun := state.RunSuccess
		if rc.want == upf {
			wantRun = state.RunFailed
		}
		e.wantRunState(id, "r", wantRun)
	}
}

// claimNamed claims until it gets task of dagID, requeueing the others.
func (e *env) claimNamed(dagID, task string) store.Claimed {
	e.t.Helper()
	cs := e.claim(1000)
	var found *store.Claimed
	var back []store.Try
	for i, c := range cs {
		if c.DAGID == dagID && c.TaskID == task && found == nil {
			found = &cs[i]
			continue
		}
		back = append(back, att(c))
	}
	if len(back) > 0 {
		must(e.t, "RequeueTries", e.s.RequeueTries(e.ctx, back))
	}
	if found == nil {
		e.t.Fatalf("task %s/%s is not queued", dagID, task)
	}
	return *found
}

func testEarlyDecisions(t *testing.T, e *env) {
	// one_success runs as soon as one upstream succeeds; all_success fails
	// as soon as one upstream fails, without waiting for the others.
	sp := newSpec("early", tk("a"), tk("b"), tk("one", up("a", "b"), rule(dag.OneSuccess)),
		tk("all", up("a", "b")), tk("after", up("all"), rule(dag.AllDone)))
	e.started(sp, "r")
	a := e.claimNamed("early", "a")
	e.finish(result(a, state.Success))
	e.wantStates("early", "r", map[string]state.TaskState{"one": state.Queued, "all": state.None, "b": state.Queued})

	sp2 := newSpec("early2", tk("a"), tk("b"), tk("all", up("a", "b")), tk("leaf", up("all")))
	e.started(sp2, "r")
	a2 := e.claimNamed("early2", "a")
	e.finish(store.Result{Try: att(a2), State: state.Failed, EndedAt: t0.Add(3 * time.Minute)})
	e.wantStates("early2", "r", map[string]state.TaskState{"a": state.Failed, "b": state.Queued,
		"all": state.UpstreamFailed, "leaf": state.UpstreamFailed})
	e.wantRunState("early2", "r", state.RunRunning) // b has not finished
	b2 := e.claimNamed("early2", "b")
	e.finish(result(b2, state.Success))
	e.wantRunState("early2", "r", state.RunFailed)
}

func testBranch(t *testing.T, e *env) {
	// br chooses x; y and its downstream z are skipped; join (none_failed_min_one_success) runs.
	sp := newSpec("br", tk("br", branch()), tk("x", up("br")), tk("y", up("br")), tk("z", up("y")),
		tk("join", up("x", "z"), rule(dag.NoneFailedMinOneSuccess)))
	e.started(sp, "r")
	b := e.claimOne("br")
	res := result(b, state.Success)
	res.Follow = []string{"x"}
	e.finish(res)
	e.wantStates("br", "r", map[string]state.TaskState{"br": state.Success, "x": state.Queued,
		"y": state.Skipped, "z": state.Skipped, "join": state.None})
	x := e.claimOne("x")
	e.finish(result(x, state.Success))
	j := e.claimOne("join")
	e.finish(result(j, state.Success))
	e.wantRunState("br", "r", state.RunSuccess)

	// Following nothing skips every direct downstream task.
	sp2 := newSpec("br2", tk("br", branch()), tk("x", up("br")), tk("y", up("br")))
	e.started(sp2, "r")
	b2 := e.claimOne("br")
	res2 := result(b2, state.Success)
	res2.Follow = []string{}
	e.finish(res2)
	e.wantStates("br2", "r", map[string]state.TaskState{"x": state.Skipped, "y": state.Skipped})
	e.wantRunState("br2", "r", state.RunSuccess)
}

func testBranchReachable(t *testing.T, e *env) {
	// branch → join and branch → t1 → join: following t1 keeps join.
	sp := newSpec("reach", tk("br", branch()), tk("t1", up("br")), tk("t2", up("br")),
		tk("join", up("br", "t1"), rule(dag.NoneFailedMinOneSuccess)))
	e.started(sp, "r")
	b := e.claimOne("br")
	res := result(b, state.Success)
	res.Follow = []string{"t1"}
	e.finish(res)
	e.wantStates("reach", "r", map[string]state.TaskState{"t1": state.Queued, "t2": state.Skipped, "join": state.None})
	t1 := e.claimOne("t1")
	e.finish(result(t1, state.Success))
	e.wantStates("reach", "r", map[string]state.TaskState{"join": state.Queued})
}

func testSkipsPropagate(t *testing.T, e *env) {
	sp := newSpec("sk", tk("a"), tk("b", up("a")), tk("c", up("b")), tk("d", up("c"), rule(dag.AllDone)),
		tk("e", up("c"), rule(dag.NoneSkipped)))
	e.started(sp, "r")
	a := e.claimOne("a")
	e.finish(result(a, state.Skipped))
	e.wantStates("sk", "r", map[string]state.TaskState{"a": state.Skipped, "b": state.Skipped, "c": state.Skipped,
		"d": state.Queued, "e": state.Skipped})
	d := e.claimOne("d")
	e.finish(result(d, state.Success))
	e.wantRunState("sk", "r", state.RunSuccess)
}

func testUpstreamFailed(t *testing.T, e *env) {
	// a fails → b, c upstream_failed → cleanup (all_done) still runs.
	sp := newSpec("uf", tk("a"), tk("b", up("a")), tk("c", up("b")), tk("cleanup", up("c"), rule(dag.AllDone)))
	e.started(sp, "r")
	a := e.claimOne("a")
	out := e.finish(store.Result{Try: att(a), State: state.Failed, Error: "boom", EndedAt: t0.Add(3 * time.Minute)})
	if out[0].State != state.Failed {
		t.Errorf("finish a state %s, want failed (no retries)", out[0].State)
	}
	e.wantStates("uf", "r", map[string]state.TaskState{"a": state.Failed, "b": state.UpstreamFailed,
		"c": state.UpstreamFailed, "cleanup": state.Queued})
	if ti := e.ti("uf", "r", "a"); ti.Error != "boom" {
		t.Errorf("error %q, want boom", ti.Error)
	}
	cl := e.claimOne("cleanup")
	e.finish(result(cl, state.Success))
	// The only leaf succeeded: the run succeeds (Airflow's rule).
	e.wantRunState("uf", "r", state.RunSuccess)

	// Without a cleanup leaf the run fails.
	sp2 := newSpec("uf2", tk("a"), tk("b", up("a")))
	e.started(sp2, "r")
	a2 := e.claimOne("a")
	e.finish(store.Result{Try: att(a2), State: state.Failed, EndedAt: t0.Add(3 * time.Minute)})
	e.wantStates("uf2", "r", map[string]state.TaskState{"b": state.UpstreamFailed})
	e.wantRunState("uf2", "r", state.RunFailed)
}

func testJoinConcurrent(t *testing.T, e *env) {
	// 64 upstream tasks of one join, finished by 8 goroutines in separate
	// transactions: the join is released exactly once and the run ends.
	ups := names(64, "u")
	tasks := []store.TaskSpec{}
	for _, u := range ups {
		tasks = append(tasks, tk(u))
	}
	tasks = append(tasks, tk("join", up(ups...)), tk("last", up("join")))
	sp := newSpec("jc", tasks...)
	e.started(sp, "r")
	cs := e.claim(100)
	if len(cs) != 64 {
		t.Fatalf("claimed %d, want 64", len(cs))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < len(cs); i += 8 {
				out, err := e.s.FinishTasks(e.ctx, []store.Result{result(cs[i], state.Success)})
				if err != nil || !out[0].Applied {
					t.Errorf("finish %s: %v %+v", cs[i].TaskID, err, out)
				}
			}
		})
	}
	wg.Wait()
	e.wantStates("jc", "r", map[string]state.TaskState{"join": state.Queued})
	j := e.claimOne("join")
	if more := e.claim(10); len(more) != 0 {
		t.Fatalf("claimed %v after the join", taskIDs(more))
	}

	// The last two instances of a run finished at the same time by two
	// transactions: the run is settled.
	sp2 := newSpec("jc2", tk("p"), tk("q"))
	e.started(sp2, "r")
	e.finish(result(j, state.Success))
	l := e.claimNamed("jc", "last")
	p := e.claimNamed("jc2", "p")
	q := e.claimNamed("jc2", "q")
	var wg2 sync.WaitGroup
	for _, c := range []store.Claimed{p, q, l} {
		wg2.Go(func() {
			if _, err := e.s.FinishTasks(e.ctx, []store.Result{result(c, state.Success)}); err != nil {
				t.Errorf("finish %s: %v", c.TaskID, err)
			}
		})
	}
	wg2.Wait()
	e.wantRunState("jc", "r", state.RunSuccess)
	e.wantRunState("jc2", "r", state.RunSuccess)
}
