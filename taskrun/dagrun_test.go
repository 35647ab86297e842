package taskrun_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

func noop(*dag.Context) error { return nil }

func fail(*dag.Context) error { return errors.New("boom") }

func skip(*dag.Context) error { return dag.Skip("nothing to do") }

// runDAG runs d with a guard against hangs.
func runDAG(t *testing.T, d *dag.DAG, opts taskrun.DAGOptions) *taskrun.DAGResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := taskrun.RunDAG(ctx, d, opts)
	if err != nil {
		t.Fatalf("RunDAG: %v", err)
	}
	return res
}

func states(res *taskrun.DAGResult) map[string]state.TaskState {
	out := map[string]state.TaskState{}
	for id, r := range res.Tasks {
		out[id] = r.State
	}
	return out
}

func checkStates(t *testing.T, res *taskrun.DAGResult, want map[string]state.TaskState) {
	t.Helper()
	got := states(res)
	if !maps.Equal(got, want) {
		for id := range want {
			if got[id] != want[id] {
				t.Errorf("task %s ended %s, want %s (%s)", id, got[id], want[id], res.Tasks[id].Err)
			}
		}
		if len(got) != len(want) {
			t.Errorf("tasks %v, want %v", got, want)
		}
	}
}

// checkOrder asserts every edge of d is respected by res.Order for tasks
// that ran.
func checkOrder(t *testing.T, d *dag.DAG, res *taskrun.DAGResult) {
	t.Helper()
	pos := map[string]int{}
	for i, id := range res.Order {
		pos[id] = i
	}
	if len(pos) != len(d.Tasks()) || len(res.Order) != len(d.Tasks()) {
		t.Fatalf("order %v does not list every task once", res.Order)
	}
	for _, task := range d.Tasks() {
		for _, up := range task.UpstreamIDs() {
			if task.TriggerRule() != dag.Always && pos[up] > pos[task.ID()] {
				t.Errorf("%s finished before its upstream %s: %v", task.ID(), up, res.Order)
			}
		}
	}
}

func TestRunDAGDependencyOrder(t *testing.T) {
	var mu sync.Mutex
	var started []string
	rec := func(c *dag.Context) error {
		mu.Lock()
		started = append(started, c.TaskID())
		mu.Unlock()
		return nil
	}
	d := dag.New("order")
	a, b, c, e := d.Func("a", rec), d.Func("b", rec), d.Func("c", rec), d.Func("e", rec)
	f := d.Func("f", rec)
	// Added out of order on purpose: f -> e, a -> b -> e, a -> c -> e.
	f.SetDownstream(e)
	a.SetDownstream(b, c)
	e.SetUpstream(b, c)
	var done []string
	res := runDAG(t, d, taskrun.DAGOptions{OnTaskDone: func(r taskrun.TaskReport) { done = append(done, r.TaskID) }})
	if res.State != state.RunSuccess {
		t.Fatalf("run %s", res.State)
	}
	checkOrder(t, d, res)
	if !slices.Equal(done, res.Order) {
		t.Errorf("OnTaskDone saw %v, Order %v", done, res.Order)
	}
	// Parallelism 1 runs one task at a time: start order = finish order,
	// and ties go by insertion order.
	if want := []string{"a", "b", "c", "f", "e"}; !slices.Equal(started, want) {
		t.Errorf("started %v, want %v", started, want)
	}
	for id, r := range res.Tasks {
		if r.TryNumber != 1 || r.TaskID != id || r.Err != "" {
			t.Errorf("report %+v", r)
		}
	}
}

func TestRunDAGParallelism(t *testing.T) {
	var running, peak atomic.Int32
	bothIn := make(chan struct{})
	var once sync.Once
	task := func(c *dag.Context) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if n == 2 {
			once.Do(func() { close(bothIn) })
		}
		// Hold the slot until two tasks have run at once.
		select {
		case <-bothIn:
			return nil
		case <-c.Done():
			return c.Err()
		}
	}
	d := dag.New("par")
	for i := range 6 {
		d.Func(fmt.Sprintf("t%d", i), task, dag.Timeout(30*time.Second))
	}
	res := runDAG(t, d, taskrun.DAGOptions{Parallelism: 2})
	if res.State != state.RunSuccess {
		t.Fatalf("run %s: %+v", res.State, res.Tasks)
	}
	if peak.Load() != 2 {
		t.Errorf("peak concurrency %d, want exactly 2", peak.Load())
	}
}

func TestRunDAGPriority(t *testing.T) {
	d := dag.New("prio")
	d.Func("low", noop, dag.Priority(1))
	d.Func("high", noop, dag.Priority(10))
	d.Func("mid", noop, dag.Priority(5))
	d.Func("zero", noop)
	res := runDAG(t, d, taskrun.DAGOptions{})
	if want := []string{"high", "mid", "low", "zero"}; !slices.Equal(res.Order, want) {
		t.Errorf("order %v, want %v", res.Order, want)
	}
}

func TestRunDAGTriggerRules(t *testing.T) {
	d := dag.New("rules")
	ok, bad, sk := d.Func("ok", noop), d.Func("bad", fail), d.Func("sk", skip)
	down := func(id string, rule dag.TriggerRule, ups ...*dag.Task) *dag.Task {
		return d.Func(id, noop, dag.Trigger(rule)).SetUpstream(ups...)
	}
	allSuccessFail := down("all_success_fail", dag.AllSuccess, ok, bad)
	down("all_success_skip", dag.AllSuccess, ok, sk)
	down("all_success_both", dag.AllSuccess, bad, sk)
	down("all_done", dag.AllDone, ok, bad, sk)
	down("all_failed", dag.AllFailed, bad)
	down("all_failed_no", dag.AllFailed, bad, ok)
	down("all_skipped", dag.AllSkipped, sk)
	down("one_success", dag.OneSuccess, bad, ok)
	down("one_success_none", dag.OneSuccess, bad, sk)
	down("one_failed", dag.OneFailed, ok, bad)
	down("one_failed_none", dag.OneFailed, ok, sk)
	down("one_done", dag.OneDone, sk, bad)
	down("none_failed", dag.NoneFailed, ok, sk)
	down("none_failed_all_skipped", dag.NoneFailed, sk)
	down("none_failed_fail", dag.NoneFailed, ok, bad)
	down("nfmos_all_skipped", dag.NoneFailedMinOneSuccess, sk)
	down("nfmos", dag.NoneFailedMinOneSuccess, sk, ok)
	down("none_skipped", dag.NoneSkipped, ok, bad)
	down("none_skipped_no", dag.NoneSkipped, sk)
	down("always", dag.Always, bad)
	// Propagation through a second level.
	down("after_upstream_failed", dag.AllSuccess, allSuccessFail)
	down("cleanup", dag.AllDone, allSuccessFail)

	res := runDAG(t, d, taskrun.DAGOptions{})
	checkStates(t, res, map[string]state.TaskState{
		"ok": state.Success, "bad": state.Failed, "sk": state.Skipped,
		"all_success_fail":        state.UpstreamFailed,
		"all_success_skip":        state.Skipped,
		"all_success_both":        state.UpstreamFailed,
		"all_done":                state.Success,
		"all_failed":              state.Success,
		"all_failed_no":           state.Skipped,
		"all_skipped":             state.Success,
		"one_success":             state.Success,
		"one_success_none":        state.UpstreamFailed,
		"one_failed":              state.Success,
		"one_failed_none":         state.Skipped,
		"one_done":                state.Success,
		"none_failed":             state.Success,
		"none_failed_all_skipped": state.Success,
		"none_failed_fail":        state.UpstreamFailed,
		"nfmos_all_skipped":       state.Skipped,
		"nfmos":                   state.Success,
		"none_skipped":            state.Success,
		"none_skipped_no":         state.Skipped,
		"always":                  state.Success,
		"after_upstream_failed":   state.UpstreamFailed,
		"cleanup":                 state.Success,
	})
	if res.State != state.RunFailed {
		t.Errorf("run %s, want failed (leaves failed/upstream_failed)", res.State)
	}
	if r := res.Tasks["all_success_fail"]; r.TryNumber != 0 || !strings.Contains(r.Err, "all_success") {
		t.Errorf("report %+v: want try 0 and the rule named", r)
	}
	if r := res.Tasks["bad"]; r.Err != "boom" || r.TryNumber != 1 {
		t.Errorf("report %+v: want the error boom after one try", r)
	}
}

func TestRunDAGAlwaysRunsAtOnce(t *testing.T) {
	d := dag.New("always")
	release := make(chan struct{})
	slow := d.Func("slow", func(c *dag.Context) error {
		select {
		case <-release:
			return nil
		case <-c.Done():
			return c.Err()
		}
	}, dag.Timeout(30*time.Second))
	d.Func("watch", func(*dag.Context) error { close(release); return nil }, dag.Trigger(dag.Always)).SetUpstream(slow)
	res := runDAG(t, d, taskrun.DAGOptions{Parallelism: 2})
	// watch can only release slow if it ran while slow was still running.
	checkStates(t, res, map[string]state.TaskState{"slow": state.Success, "watch": state.Success})
}

func TestRunDAGLeafRule(t *testing.T) {
	// A failure absorbed by an all_done leaf does not fail the run when no
	// leaf failed: only leaves count (Airflow's rule).
	d := dag.New("leaves")
	bad := d.Func("bad", fail)
	d.Func("cleanup", noop, dag.Trigger(dag.AllDone)).SetUpstream(bad)
	d.Func("sk", skip)
	res := runDAG(t, d, taskrun.DAGOptions{})
	if res.State != state.RunSuccess {
		t.Errorf("run %s, want success: leaves are success and skipped", res.State)
	}
}

func TestRunDAGBranch(t *testing.T) {
	build := func(choice []string) *dag.DAG {
		d := dag.New("branch")
		br := d.Branch("br", func(*dag.Context) ([]string, error) { return choice, nil })
		a, b := d.Func("a", noop), d.Func("b", noop)
		after := d.Func("after_b", noop)
		join := d.Func("join", noop, dag.Trigger(dag.NoneFailedMinOneSuccess))
		br.SetDownstream(a, b, join) // join is also a direct downstream: an empty path
		b.SetDownstream(after)
		join.SetUpstream(a, after)
		return d
	}
	res := runDAG(t, build([]string{"a"}), taskrun.DAGOptions{})
	checkStates(t, res, map[string]state.TaskState{"br": state.Success, "a": state.Success,
		"b": state.Skipped, "after_b": state.Skipped, "join": state.Success})
	if !strings.Contains(res.Tasks["b"].Err, `not followed by branch "br"`) || res.Tasks["b"].TryNumber != 0 {
		t.Errorf("b report %+v", res.Tasks["b"])
	}
	if res.State != state.RunSuccess {
		t.Errorf("run %s", res.State)
	}

	res = runDAG(t, build([]string{"join"}), taskrun.DAGOptions{})
	// Following the join alone: a and b are skipped, the join still runs
	// (none_failed_min_one_success: the branch itself succeeded).
	checkStates(t, res, map[string]state.TaskState{"br": state.Success, "a": state.Skipped,
		"b": state.Skipped, "after_b": state.Skipped, "join": state.Success})

	res = runDAG(t, build([]string{"ghost"}), taskrun.DAGOptions{})
	checkStates(t, res, map[string]state.TaskState{"br": state.Failed, "a": state.UpstreamFailed,
		"b": state.UpstreamFailed, "after_b": state.UpstreamFailed, "join": state.UpstreamFailed})
	if !strings.Contains(res.Tasks["br"].Err, `"ghost"`) || res.State != state.RunFailed {
		t.Errorf("bad branch: report %+v, run %s", res.Tasks["br"], res.State)
	}
}

func TestRunDAGRetries(t *testing.T) {
	var tries []int
	d := dag.New("retry")
	d.Func("flaky", func(c *dag.Context) error {
		tries = append(tries, c.TryNumber())
		if c.TryNumber() < 3 {
			return fmt.Errorf("try %d failed", c.TryNumber())
		}
		return nil
	}, dag.Retries(5), dag.RetryDelay(time.Second), dag.ExponentialBackoff(time.Minute))
	d.Func("always_fails", fail, dag.Retries(2))
	d.Func("permanent", func(*dag.Context) error { return dag.Permanent(errors.New("bad config")) }, dag.Retries(4))

	var mu sync.Mutex
	var all []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		all = append(all, d)
		return nil
	}
	var log bytes.Buffer
	res := runDAG(t, d, taskrun.DAGOptions{Sleep: sleep, Jitter: func() float64 { return 0.5 }, Log: &log})
	checkStates(t, res, map[string]state.TaskState{"flaky": state.Success,
		"always_fails": state.Failed, "permanent": state.Failed})
	if !slices.Equal(tries, []int{1, 2, 3}) {
		t.Errorf("flaky saw tries %v, want [1 2 3]", tries)
	}
	want := map[string]int{"flaky": 3, "always_fails": 3, "permanent": 1}
	for id, n := range want {
		if res.Tasks[id].TryNumber != n {
			t.Errorf("%s: %d tries, want %d", id, res.Tasks[id].TryNumber, n)
		}
	}
	slices.Sort(all)
	// flaky: 1s·2^0·1.5 and 1s·2^1·1.5; always_fails: the default 10s twice
	// (no backoff, no jitter); permanent: none.
	if wantD := []time.Duration{1500 * time.Millisecond, 3 * time.Second, 10 * time.Second, 10 * time.Second}; !slices.Equal(all, wantD) {
		t.Errorf("retry delays %v, want %v", all, wantD)
	}
	if !strings.Contains(log.String(), "[flaky try=1] try 1 of 6 failed; retrying in 1.5s") {
		t.Errorf("log lacks the retry line:\n%s", log.String())
	}
	if res.Tasks["always_fails"].Err != "boom" || res.Tasks["permanent"].Err != "permanent: bad config" {
		t.Errorf("errors %q / %q", res.Tasks["always_fails"].Err, res.Tasks["permanent"].Err)
	}
}

func TestRunDAGRetryWaitCancelled(t *testing.T) {
	d := dag.New("retry")
	d.Func("f", fail, dag.Retries(1))
	d.Func("later", noop).SetUpstream(d.Task("f"))
	ctx, cancel := context.WithCancel(context.Background())
	res, err := taskrun.RunDAG(ctx, d, taskrun.DAGOptions{Sleep: func(ctx context.Context, _ time.Duration) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want it to wrap context.Canceled", err)
	}
	checkStates(t, res, map[string]state.TaskState{"f": state.Failed, "later": state.UpstreamFailed})
	if res.State != state.RunFailed || !strings.Contains(res.Tasks["f"].Err, "retry wait") {
		t.Errorf("run %s, f %+v", res.State, res.Tasks["f"])
	}
}

func TestRunDAGOutputs(t *testing.T) {
	d := dag.New("etl")
	extract := d.Func("extract", func(c *dag.Context) error { return c.SetOutput([]int{1, 2, 3, 4}) })
	transform := d.Func("transform", func(c *dag.Context) error {
		var xs []int
		if err := c.Output("extract", &xs); err != nil {
			return err
		}
		sum := 0
		for _, x := range xs {
			sum += x
		}
		return c.SetOutput(map[string]int{"sum": sum})
	})
	var loaded int
	load := d.Func("load", func(c *dag.Context) error {
		var v struct{ Sum int }
		if err := c.Output("transform", &v); err != nil {
			return err
		}
		loaded = v.Sum
		var none any
		if err := c.Output("load", &none); !errors.Is(err, dag.ErrNoOutput) {
			return fmt.Errorf("own missing output: %v", err)
		}
		return nil
	})
	extract.SetDownstream(transform)
	transform.SetDownstream(load)
	res := runDAG(t, d, taskrun.DAGOptions{})
	if res.State != state.RunSuccess || loaded != 10 {
		t.Errorf("run %s, loaded %d, want success and 10: %+v", res.State, loaded, res.Tasks)
	}
}

func TestRunDAGTimeouts(t *testing.T) {
	d := dag.New("timeouts")
	d.Func("func", func(c *dag.Context) error { <-c.Done(); return c.Err() }, dag.Timeout(50*time.Millisecond))
	d.Shell("shell", "sleep 300", dag.Timeout(50*time.Millisecond))
	res := runDAG(t, d, taskrun.DAGOptions{Parallelism: 2, KillGrace: time.Second})
	checkStates(t, res, map[string]state.TaskState{"func": state.Failed, "shell": state.Failed})
	for _, id := range []string{"func", "shell"} {
		if !strings.Contains(res.Tasks[id].Err, "timed out after 50ms") {
			t.Errorf("%s: error %q, want a timeout", id, res.Tasks[id].Err)
		}
	}
}

func TestRunDAGParamsIntervalAndRunID(t *testing.T) {
	type seen struct {
		params     map[string]any
		start, end time.Time
		runID      string
		ld         time.Time
	}
	capture := func(into *seen) func(*dag.Context) error {
		return func(c *dag.Context) error {
			into.params = c.Params()
			into.start, into.end = c.DataInterval()
			into.runID, into.ld = c.RunID(), c.LogicalDate()
			return nil
		}
	}
	ld := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)

	var sched seen
	d := dag.New("sched", dag.Schedule("@daily"), dag.StartDate(ld.AddDate(0, 0, -10)),
		dag.Params(map[string]any{"a": 1.0, "b": 2.0}))
	d.Func("t", capture(&sched))
	var log bytes.Buffer
	d.Shell("env", `echo "run=$TRELLIS_RUN_ID ld=$TRELLIS_LOGICAL_DATE"`)
	res := runDAG(t, d, taskrun.DAGOptions{LogicalDate: ld, Conf: map[string]any{"b": 3.0, "c": "x"}, Log: &log})
	if res.State != state.RunSuccess {
		t.Fatalf("run %s: %+v", res.State, res.Tasks)
	}
	if want := map[string]any{"a": 1.0, "b": 3.0, "c": "x"}; !maps.Equal(sched.params, want) {
		t.Errorf("params %v, want %v", sched.params, want)
	}
	if !sched.start.Equal(ld) || !sched.end.Equal(ld.AddDate(0, 0, 1)) || !sched.ld.Equal(ld) {
		t.Errorf("interval [%v, %v) ld %v, want [%v, %v)", sched.start, sched.end, sched.ld, ld, ld.AddDate(0, 0, 1))
	}
	if sched.runID != "manual__2026-01-02T00:00:00Z" || res.RunID != sched.runID {
		t.Errorf("run id %q / %q", sched.runID, res.RunID)
	}
	if !strings.Contains(log.String(), "[env try=1] run=manual__2026-01-02T00:00:00Z ld=2026-01-02T00:00:00Z\n") {
		t.Errorf("shell log:\n%s", log.String())
	}
	if p := d.Params(); p["b"] != 2.0 {
		t.Errorf("the DAG's own params were changed: %v", p)
	}

	var manual seen
	m := dag.New("manual")
	m.Func("t", capture(&manual))
	res = runDAG(t, m, taskrun.DAGOptions{LogicalDate: ld, RunID: "my_run"})
	if !manual.start.Equal(ld) || !manual.end.Equal(ld) || manual.runID != "my_run" || res.RunID != "my_run" {
		t.Errorf("manual DAG: interval [%v, %v], run id %q", manual.start, manual.end, manual.runID)
	}
	if len(manual.params) != 0 {
		t.Errorf("manual params %v, want none", manual.params)
	}
}

func TestRunDAGInvalid(t *testing.T) {
	if _, err := taskrun.RunDAG(context.Background(), nil, taskrun.DAGOptions{}); err == nil {
		t.Error("nil DAG: want an error")
	}
	d := dag.New("cyclic")
	a, b, c := d.Func("a", noop), d.Func("b", noop), d.Func("c", noop)
	a.SetDownstream(b)
	b.SetDownstream(c)
	c.SetDownstream(a)
	d.Func("bad id!", noop)
	res, err := taskrun.RunDAG(context.Background(), d, taskrun.DAGOptions{})
	if err == nil || res != nil {
		t.Fatalf("cyclic DAG: result %v, err %v; want only an error", res, err)
	}
	for _, want := range []string{"cycle", "a -> b -> c -> a", "bad id!"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestRunDAGCancelled(t *testing.T) {
	d := dag.New("cancel")
	started := make(chan struct{})
	first := d.Func("first", func(c *dag.Context) error {
		close(started)
		<-c.Done()
		return c.Err()
	})
	d.Func("second", noop).SetUpstream(first)
	d.Func("other", noop, dag.Priority(-1))
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	res, err := taskrun.RunDAG(ctx, d, taskrun.DAGOptions{})
	if !errors.Is(err, context.Canceled) || res == nil {
		t.Fatalf("err %v, result %v; want the result and context.Canceled", err, res)
	}
	checkStates(t, res, map[string]state.TaskState{"first": state.Failed,
		"second": state.UpstreamFailed, "other": state.Skipped})
	if res.State != state.RunFailed || !strings.Contains(res.Tasks["other"].Err, "cancelled") {
		t.Errorf("run %s, other %+v", res.State, res.Tasks["other"])
	}
}

func TestRunDAGLogLines(t *testing.T) {
	d := dag.New("logs")
	d.Shell("sh", "echo one; printf 'two\\nthree'")
	d.Func("fn", func(c *dag.Context) error { c.Logger().Info("hi"); return nil })
	var log bytes.Buffer
	runDAG(t, d, taskrun.DAGOptions{Log: &log, Parallelism: 2})
	for _, want := range []string{"[sh try=1] one\n", "[sh try=1] two\n", "[sh try=1] three\n", "[fn try=1] time="} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
	for _, line := range strings.Split(strings.TrimSuffix(log.String(), "\n"), "\n") {
		if !strings.HasPrefix(line, "[sh try=1] ") && !strings.HasPrefix(line, "[fn try=1] ") {
			t.Errorf("line without its task prefix: %q", line)
		}
	}
}

func TestDAGResultJSON(t *testing.T) {
	d := dag.New("json")
	a := d.Func("a", noop)
	d.Func("b", fail, dag.Retries(1), dag.RetryDelay(time.Millisecond)).SetUpstream(a)
	res := runDAG(t, d, taskrun.DAGOptions{RunID: "r1", Sleep: func(context.Context, time.Duration) error { return nil }})
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"dag_id":"json","run_id":"r1","state":"failed","tasks":{` +
		`"a":{"state":"success","try_number":1},"b":{"state":"failed","try_number":2,"error":"boom"}}}`
	if string(b) != want {
		t.Errorf("JSON\n got %s\nwant %s", b, want)
	}
	// CONTRACT §4's fields, with their types.
	var generic struct {
		DAGID string `json:"dag_id"`
		State string `json:"state"`
		Tasks map[string]struct {
			State     string `json:"state"`
			TryNumber int    `json:"try_number"`
		} `json:"tasks"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&generic); err != nil || generic.DAGID != "json" || generic.Tasks["b"].TryNumber != 2 {
		t.Errorf("decoded %+v, %v", generic, err)
	}
}
