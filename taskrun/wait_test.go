package taskrun_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

// fakeTime is a clock that a run's sleeps advance, recording them.
type fakeTime struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func newFakeTime() *fakeTime {
	return &fakeTime{now: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
}

func (f *fakeTime) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeTime) Sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	f.sleeps = append(f.sleeps, d)
	return ctx.Err()
}

func runWaiting(t *testing.T, d *dag.DAG, opts taskrun.DAGOptions) (*taskrun.DAGResult, *fakeTime) {
	t.Helper()
	ft := newFakeTime()
	opts.Now, opts.Sleep = ft.Now, ft.Sleep
	res, err := taskrun.RunDAG(context.Background(), d, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res, ft
}

func TestSensorPokesUntilTrue(t *testing.T) {
	d := dag.New("sensor")
	pokes := 0
	d.Sensor("wait", func(c *dag.Context) (bool, error) {
		pokes++
		return pokes == 3, nil
	}, dag.PokeInterval(5*time.Second), dag.Retries(2))
	res, ft := runWaiting(t, d, taskrun.DAGOptions{})
	rep := res.Tasks["wait"]
	if rep.State != state.Success || rep.TryNumber != 1 || pokes != 3 {
		t.Fatalf("report %+v after %d pokes, want success on try 1 after 3", rep, pokes)
	}
	if len(ft.sleeps) != 2 || ft.sleeps[0] != 5*time.Second || ft.sleeps[1] != 5*time.Second {
		t.Errorf("sleeps = %v, want two of 5s", ft.sleeps)
	}
}

func TestSensorTimeout(t *testing.T) {
	for _, soft := range []bool{false, true} {
		d := dag.New("sensor")
		opts := []dag.TaskOption{dag.PokeInterval(time.Minute), dag.SensorTimeout(150 * time.Second), dag.Retries(3)}
		if soft {
			opts = append(opts, dag.SoftFail())
		}
		pokes := 0
		d.Sensor("wait", func(*dag.Context) (bool, error) { pokes++; return false, nil }, opts...)
		res, ft := runWaiting(t, d, taskrun.DAGOptions{})
		rep := res.Tasks["wait"]
		want := state.Failed
		if soft {
			want = state.Skipped
		}
		// Pokes at 0, 60 s and 120 s; the check at 150 s is the deadline.
		if rep.State != want || rep.TryNumber != 1 || pokes != 3 || !strings.Contains(rep.Err, "wait timed out") {
			t.Errorf("soft=%v: report %+v after %d pokes, want %s on try 1 after 3 pokes", soft, rep, pokes, want)
		}
		if got := ft.sleeps; len(got) != 3 || got[2] != 30*time.Second {
			t.Errorf("soft=%v: sleeps = %v, want 60s, 60s, 30s", soft, got)
		}
	}
}

func TestResumableContinuesWithStateAndPayload(t *testing.T) {
	d := dag.New("transfer")
	var got struct {
		State   string
		Payload map[string]int
		Try     int
	}
	d.Resumable("copy", dag.Steps{
		Start: func(c *dag.Context) error {
			return c.Defer(dag.Wait{State: "job-7", Event: "copy-done:job-7", Timeout: time.Hour})
		},
		Continue: func(c *dag.Context) error {
			got.Try = c.TryNumber()
			if err := c.DeferredState(&got.State); err != nil {
				return err
			}
			if err := c.EventPayload(&got.Payload); err != nil {
				return err
			}
			return c.SetOutput(got.Payload)
		},
	})
	res, _ := runWaiting(t, d, taskrun.DAGOptions{Events: map[string]json.RawMessage{"copy-done:job-7": json.RawMessage(`{"rows": 12}`)}})
	if rep := res.Tasks["copy"]; rep.State != state.Success || rep.TryNumber != 1 {
		t.Fatalf("report %+v", rep)
	}
	if got.State != "job-7" || got.Payload["rows"] != 12 || got.Try != 1 {
		t.Errorf("Continue saw %+v", got)
	}

	// Without the event it times out after its hour; without a timeout
	// either, nothing in `dags test` can continue it.
	res, ft := runWaiting(t, d, taskrun.DAGOptions{})
	if rep := res.Tasks["copy"]; rep.State != state.Failed || !strings.Contains(rep.Err, "wait timed out") ||
		len(ft.sleeps) != 1 || ft.sleeps[0] != time.Hour {
		t.Errorf("report without the event %+v after sleeps %v", rep, ft.sleeps)
	}
	d = dag.New("forever")
	d.Resumable("copy", dag.Steps{Start: func(c *dag.Context) error { return c.Defer(dag.Wait{Event: "copy-done"}) }, Continue: func(*dag.Context) error { return nil }})
	res, _ = runWaiting(t, d, taskrun.DAGOptions{})
	if rep := res.Tasks["copy"]; rep.State != state.Failed || !strings.Contains(rep.Err, `--event copy-done=JSON`) {
		t.Errorf("report without the event %+v", rep)
	}
}

func TestApproval(t *testing.T) {
	d := dag.New("release")
	d.Approval("sign_off", dag.Approvers("alice", "bob"))
	res, _ := runWaiting(t, d, taskrun.DAGOptions{Approver: "alice"})
	if rep := res.Tasks["sign_off"]; rep.State != state.Success {
		t.Fatalf("approved by alice: %+v", rep)
	}
	res, _ = runWaiting(t, d, taskrun.DAGOptions{Approver: "mallory"})
	if rep := res.Tasks["sign_off"]; rep.State != state.Failed || !strings.Contains(rep.Err, `"mallory" is not one of the approvers`) {
		t.Errorf("approved by mallory: %+v", rep)
	}
	res, _ = runWaiting(t, d, taskrun.DAGOptions{})
	if rep := res.Tasks["sign_off"]; rep.State != state.Failed || !strings.Contains(rep.Err, "continued through the API") {
		t.Errorf("not approved: %+v", rep)
	}
}

func TestApprovalOutputAndRejection(t *testing.T) {
	task := dag.New("x").Approval("a")
	ft := newFakeTime()
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: dag.RunInfo{TaskID: "a", TryNumber: 1}, Now: ft.Now})
	if out.State != state.Deferred || out.Deferral == nil || !out.Deferral.NextCheckAt.IsZero() {
		t.Fatalf("first try = %+v", out)
	}
	info := dag.RunInfo{TaskID: "a", TryNumber: 1, Resumed: true,
		EventPayload: []byte(`{"approved_by":"carol","approved_at":"2026-12-04T12:00:00Z","comment":"ok"}`)}
	out = taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info, Now: ft.Now})
	var a taskrun.Approval
	if out.State != state.Success || json.Unmarshal(out.Output, &a) != nil || a.By != "carol" || a.Approved == nil || !*a.Approved {
		t.Fatalf("approved try = %+v (%s)", out, out.Output)
	}
	info.EventPayload = []byte(`{"approved":false,"approved_by":"carol","comment":"not today"}`)
	out = taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info, Now: ft.Now})
	if out.State != state.Failed || !out.Permanent || !strings.Contains(out.Err.Error(), "rejected by carol: not today") {
		t.Errorf("rejected try = %+v", out)
	}
}

func TestShellDefers(t *testing.T) {
	d := dag.New("shell")
	d.Shell("job", `if [ "$TRELLIS_RESUMED" = 1 ]; then
  printf '{"state":%s,"payload":%s}' "$TRELLIS_DEFERRED_STATE" "$TRELLIS_EVENT_PAYLOAD" > "$TRELLIS_OUTPUT"; exit 0
fi
echo '{"state": {"id": 9}, "event": "job-done:9", "timeout": "1h"}' > "$TRELLIS_DEFER"
exit 100`)
	d.Shell("poll", `[ "$TRELLIS_RESUMED" = 1 ] && exit 0; exit 100`, dag.PokeInterval(7*time.Second))
	ft := newFakeTime()
	task := d.Task("job")
	o := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: dag.RunInfo{TaskID: "job", TryNumber: 1}, Now: ft.Now})
	if o.State != state.Deferred || o.Deferral.Event != "job-done:9" || string(o.Deferral.State) != `{"id": 9}` ||
		!o.Deferral.TriggerTimeout.Equal(ft.Now().Add(time.Hour)) || !o.Deferral.NextCheckAt.Equal(o.Deferral.TriggerTimeout) {
		t.Fatalf("first try = %+v %+v", o, o.Deferral)
	}
	res, ft := runWaiting(t, d, taskrun.DAGOptions{Parallelism: 2, Events: map[string]json.RawMessage{"job-done:9": json.RawMessage(`{"ok":true}`)}})
	if rep := res.Tasks["job"]; rep.State != state.Success {
		t.Fatalf("job = %+v", rep)
	}
	if rep := res.Tasks["poll"]; rep.State != state.Success || len(ft.sleeps) != 1 || ft.sleeps[0] != 7*time.Second {
		t.Fatalf("poll = %+v after sleeps %v", rep, ft.sleeps)
	}

	// A malformed wait fails the task at once.
	d2 := dag.New("bad")
	d2.Shell("job", `echo '{"after": "soon"}' > "$TRELLIS_DEFER"; exit 100`, dag.Retries(2))
	res, _ = runWaiting(t, d2, taskrun.DAGOptions{})
	if rep := res.Tasks["job"]; rep.State != state.Failed || rep.TryNumber != 1 || !strings.Contains(rep.Err, `"after" of the wait written to $TRELLIS_DEFER is not a duration`) {
		t.Errorf("bad wait: %+v", rep)
	}
}

// TestPoke: a poke of a Sensor writes nothing for "not yet" (with the
// next check from its interval, keeping the deadline), reads the task's
// environment when asked, logs the poke that ends the wait, and past the
// deadline gives the timeout's outcome without calling the check.
func TestPoke(t *testing.T) {
	d := dag.New("poke")
	answer := false
	calls := 0
	s := d.Sensor("s", func(c *dag.Context) (bool, error) {
		calls++
		c.Logger().Info("checked", "try", c.Getenv("TRELLIS_TRY_NUMBER"), "mine", c.Getenv("MINE"))
		return answer, nil
	}, dag.PokeInterval(time.Minute), dag.Env(map[string]string{"MINE": "yes"}))
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	deadline := now.Add(90 * time.Second)
	try := func(at time.Time, log *strings.Builder) taskrun.Try {
		return taskrun.Try{Task: s, Log: log, Now: func() time.Time { return at },
			Info: dag.RunInfo{DAGID: "poke", RunID: "r", TaskID: "s", TryNumber: 2, Resumed: true, TriggerTimeout: deadline}}
	}
	var log strings.Builder
	out := taskrun.Poke(context.Background(), try(now, &log))
	if out.State != state.Deferred || out.Deferral == nil || !out.Deferral.NextCheckAt.Equal(now.Add(time.Minute)) ||
		!out.Deferral.TriggerTimeout.Equal(deadline) {
		t.Fatalf("not yet = %+v (deferral %+v)", out, out.Deferral)
	}
	if strings.Contains(log.String(), "deferred") || !strings.Contains(log.String(), "try=2 mine=yes") {
		t.Errorf("log of a not yet:\n%s\nwant the check's line with its environment, no deferral line", log.String())
	}
	answer = true
	log.Reset()
	if out := taskrun.Poke(context.Background(), try(now.Add(time.Minute), &log)); out.State != state.Success ||
		!strings.Contains(log.String(), "task succeeded") {
		t.Errorf("final poke = %+v, log:\n%s", out, log.String())
	}
	calls = 0
	out = taskrun.Poke(context.Background(), try(deadline, &log))
	if out.State != state.Failed || !out.Permanent || calls != 0 || !strings.Contains(errString(out.Err), "wait timed out") {
		t.Errorf("poke at the deadline = %+v after %d checks, want failed permanently without a check", out, calls)
	}
	if out := taskrun.Poke(context.Background(), taskrun.Try{Task: d.Func("f", func(*dag.Context) error { return nil })}); out.State != state.Failed {
		t.Errorf("poke of a Func = %+v, want failed", out)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestPokeLimit: Try.Limit bounds a check as the task's Timeout does,
// whichever is shorter, and ends it as a timeout.
func TestPokeLimit(t *testing.T) {
	d := dag.New("limit")
	wait := func(c *dag.Context) (bool, error) { <-c.Done(); return false, c.Err() }
	long := d.Sensor("long", wait, dag.PokeInterval(time.Minute), dag.Timeout(time.Hour))
	short := d.Sensor("short", wait, dag.PokeInterval(time.Minute), dag.Timeout(30*time.Millisecond))
	for _, c := range []struct {
		task  *dag.Task
		limit time.Duration
		want  string
	}{
		{long, 20 * time.Millisecond, "after 20ms"},
		{short, time.Hour, "after 30ms"},
	} {
		out := taskrun.Poke(context.Background(), taskrun.Try{Task: c.task, Limit: c.limit, KillGrace: time.Second,
			Info: dag.RunInfo{DAGID: "limit", RunID: "r", TaskID: c.task.ID(), TryNumber: 1, Resumed: true}})
		if out.State != state.Failed || !out.TimedOut || !errors.Is(out.Err, taskrun.ErrTimeout) ||
			!strings.Contains(errString(out.Err), c.want) {
			t.Errorf("%s with limit %v: %+v, want timed out %s", c.task.ID(), c.limit, out, c.want)
		}
	}
}
