package dag

import (
	"fmt"
	"runtime"
	"testing"
	"time"
	"unsafe"
)

// A Task holds only what every task has; options live behind a pointer.
// A wider Task costs every process 100,000 × the growth at the scale
// benchmark's size.
func TestTaskStaysSmall(t *testing.T) {
	if s := unsafe.Sizeof(Task{}); s > 96 {
		t.Errorf("a Task is %d bytes, want at most 96 (a size class of the allocator)", s)
	}
}

// Building a 10,000-task fan-out allocates a few hundred bytes per task,
// not the ~640 of a Task holding every option inline and a map by id.
func TestFanOutBuildsCompactly(t *testing.T) {
	const n = 10_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%05d", i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	d := New("fan")
	root, join := d.Func("root", noop), d.Func("join", noop)
	for _, id := range ids {
		m := d.Func(id, noop)
		root.SetDownstream(m)
		join.SetUpstream(m)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 300 {
		t.Errorf("building the fan-out allocated %d bytes per task, want at most 300", per)
	}
	if got := d.Task(ids[n-1]); got == nil || got.ID() != ids[n-1] || len(got.Upstream()) != 1 || len(got.Downstream()) != 1 {
		t.Fatalf("the last task is %v", got)
	}
	runtime.KeepAlive(d)
}

// A task without options shares the defaults; an option given to one
// task never shows on another.
func TestOptionsStayWithTheirTask(t *testing.T) {
	d := New("opts")
	plain := d.Func("plain", noop)
	if plain.opts != nil {
		t.Errorf("a task without options allocated them: %+v", *plain.opts)
	}
	given := d.Func("given", noop, Retries(3), RetryDelay(time.Second), ExponentialBackoff(time.Minute), Timeout(time.Hour),
		Trigger(AllDone), Priority(7), Pool("p"), PoolSlots(2), MaxActive(4), ConcurrencyKey("k", 1), Env(map[string]string{"A": "1"}),
		InheritEnv("HOME"), PokeInterval(time.Second), SensorTimeout(time.Minute), SoftFail(), Approvers("ann"), ApprovalTimeout(time.Hour))
	shell := d.Shell("shell", "true")
	after := d.Func("after", noop)
	for _, tk := range []*Task{plain, shell, after} {
		checkDefaults(t, tk)
	}
	if given.Retries() != 3 || given.RetryDelay() != time.Second || given.MaxBackoff() != time.Minute || given.Timeout() != time.Hour ||
		given.TriggerRule() != AllDone || given.Priority() != 7 || given.Pool() != "p" || given.PoolSlots() != 2 || given.MaxActive() != 4 ||
		given.Env()["A"] != "1" || len(given.InheritEnv()) != 1 || given.PokeInterval() != time.Second ||
		given.SensorTimeout() != time.Minute || !given.SoftFail() || len(given.Approvers()) != 1 || given.ApprovalTimeout() != time.Hour {
		t.Errorf("the options given were not all kept")
	}
	if tpl, limit := given.ConcurrencyKey(); tpl != "k" || limit != 1 {
		t.Errorf("ConcurrencyKey = %q, %d", tpl, limit)
	}
	if shell.Command() != "true" || shell.Kind() != KindShell {
		t.Errorf("shell task: command %q, kind %q", shell.Command(), shell.Kind())
	}
}

// checkDefaults fails unless every option of tk has its documented
// default.
func checkDefaults(t *testing.T, tk *Task) {
	t.Helper()
	tpl, limit := tk.ConcurrencyKey()
	if tk.Retries() != 0 || tk.RetryDelay() != DefaultRetryDelay || tk.MaxBackoff() != 0 || tk.Timeout() != 0 ||
		tk.TriggerRule() != AllSuccess || tk.Priority() != 0 || tk.Pool() != "" || tk.PoolSlots() != 1 || tk.MaxActive() != 0 ||
		tpl != "" || limit != 0 || tk.Env() != nil || tk.InheritEnv() != nil || tk.PokeInterval() != DefaultPokeInterval ||
		tk.SensorTimeout() != DefaultSensorTimeout || tk.SoftFail() || tk.Approvers() != nil || tk.ApprovalTimeout() != 0 ||
		!tk.Dedup() || tk.BranchFn() != nil || tk.CallFn() != nil || tk.HTTPRequest().URL != "" {
		t.Errorf("task %q does not have the default options", tk.ID())
	}
}

// Every constructor's kind reads back.
func TestKindsReadBack(t *testing.T) {
	d := New("kinds")
	for _, c := range []struct {
		task *Task
		want Kind
	}{
		{d.Func("f", noop), KindFunc},
		{d.Shell("s", "true"), KindShell},
		{d.HTTP("h", HTTPRequest{URL: "http://127.0.0.1:9/"}), KindHTTP},
		{d.Branch("b", func(*Context) ([]string, error) { return nil, nil }), KindBranch},
		{NewCallable(d, "c", func(*Context, int) (int, error) { return 0, nil }).Task(), KindCallable},
		{d.Resumable("r", Steps{Start: noop, Continue: noop}), KindResumable},
		{d.Sensor("n", func(*Context) (bool, error) { return true, nil }), KindSensor},
		{d.Approval("a"), KindApproval},
	} {
		if got := c.task.Kind(); got != c.want {
			t.Errorf("task %q: kind %q, want %q", c.task.ID(), got, c.want)
		}
	}
}

// The index by id finds the first task added with each id, nothing for
// other ids, and stays within 3 slots (12 bytes) per task as it grows.
func TestTaskIndex(t *testing.T) {
	for _, n := range []int{1, 7, 100, 5_000} {
		d := New("index")
		for i := range n {
			d.Func(fmt.Sprintf("t%d", i), noop)
		}
		dup := d.Func("t0", noop) // a duplicate keeps the first task's id
		for i := range n {
			id := fmt.Sprintf("t%d", i)
			if got := d.Task(id); got == nil || got.ID() != id || got == dup {
				t.Fatalf("n=%d: Task(%q) = %v", n, id, got)
			}
		}
		for _, id := range []string{"", "t", fmt.Sprintf("t%d", n), "T0"} {
			if got := d.Task(id); got != nil {
				t.Errorf("n=%d: Task(%q) = %q, want nil", n, id, got.ID())
			}
		}
		if slots := len(d.byID.slots); slots > max(minIndexSlots, 3*n) {
			t.Errorf("n=%d: the index has %d slots, want at most %d", n, slots, max(minIndexSlots, 3*n))
		}
	}
	if got := New("empty").Task("x"); got != nil {
		t.Errorf("Task of an empty DAG = %v", got)
	}
}
