package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestFireAtIntervalEnd drives one DAG per schedule kind with the fake
// clock: the loop arms its timer for the end of the first interval, and
// each fire creates the run of the interval that just ended with Airflow's
// logical date and data interval.
func TestFireAtIntervalEnd(t *testing.T) {
	type step struct{ due, logical string }
	cases := []struct {
		name  string
		expr  string
		start string // StartDate
		clock string // the fake time at Start
		steps []step // successive fires
	}{
		{"five fields", "0 * * * *", "2026-01-01T00:00:00Z", "2026-01-01T00:30:00Z",
			[]step{{"2026-01-01T01:00:00Z", "2026-01-01T00:00:00Z"}, {"2026-01-01T02:00:00Z", "2026-01-01T01:00:00Z"},
				{"2026-01-01T03:00:00Z", "2026-01-01T02:00:00Z"}}},
		{"six fields", "*/2 * * * * *", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z",
			[]step{{"2026-01-01T00:00:02Z", "2026-01-01T00:00:00Z"}, {"2026-01-01T00:00:04Z", "2026-01-01T00:00:02Z"},
				{"2026-01-01T00:00:06Z", "2026-01-01T00:00:04Z"}}},
		{"every", "@every 90s", "2026-01-01T00:00:30Z", "2026-01-01T00:00:00Z",
			[]step{{"2026-01-01T00:02:00Z", "2026-01-01T00:00:30Z"}, {"2026-01-01T00:03:30Z", "2026-01-01T00:02:00Z"},
				{"2026-01-01T00:05:00Z", "2026-01-01T00:03:30Z"}}},
		{"CRON_TZ across spring forward", "CRON_TZ=Europe/Berlin 0 12 * * *", "2026-03-28T00:00:00Z", "2026-03-28T11:30:00Z",
			[]step{{"2026-03-29T10:00:00Z", "2026-03-28T11:00:00Z"}, {"2026-03-30T10:00:00Z", "2026-03-29T10:00:00Z"}}},
	}
	forEachBackend(t, func(t *testing.T, b backend) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				h := newHarness(t, b, ts(c.clock), Config{}, shellDAG("d", c.expr, ts(c.start)))
				h.start()
				var want []string
				for i, st := range c.steps {
					h.waitArmed(ts(st.due))
					// Just before the due instant nothing happens: the timer is not due.
					h.clk.Set(ts(st.due).Add(-time.Millisecond))
					if n := len(h.runs("d")); n != i {
						t.Fatalf("before %s: %d runs, want %d", st.due, n, i)
					}
					h.clk.Set(ts(st.due))
					res := h.waitFired("d")
					want = append(want, RunID(store.RunScheduled, ts(st.logical)))
					runs := h.wantRuns("d", want...)
					r := runs[len(runs)-1]
					if !r.LogicalDate.Equal(ts(st.logical)) || !r.IntervalStart.Equal(ts(st.logical)) || !r.IntervalEnd.Equal(ts(st.due)) {
						t.Errorf("run %s: logical %s interval [%s, %s), want logical = start = %s, end %s",
							r.RunID, r.LogicalDate, r.IntervalStart, r.IntervalEnd, st.logical, st.due)
					}
					if r.RunType != store.RunScheduled || r.State != state.RunRunning {
						t.Errorf("run %s: type %s state %s, want scheduled running", r.RunID, r.RunType, r.State)
					}
					if !r.QueuedAt.Equal(ts(st.due)) {
						t.Errorf("run %s queued at %s, want the due instant %s", r.RunID, r.QueuedAt, st.due)
					}
					d, err := h.st.GetDAG(context.Background(), "d")
					if err != nil || d.LastIntervalEnd == nil || !d.LastIntervalEnd.Equal(ts(st.due)) {
						t.Fatalf("DAG row after fire: %+v, %v; want LastIntervalEnd %s", d, err, st.due)
					}
					if i+1 < len(c.steps) {
						if !res.next.Equal(ts(c.steps[i+1].due)) {
							t.Fatalf("next due %s, want %s", res.next, c.steps[i+1].due)
						}
						if d.NextDueAt == nil || !d.NextDueAt.Equal(res.next) {
							t.Errorf("NextDueAt %v, want %s", d.NextDueAt, res.next)
						}
					}
				}
			})
		}
	})
}

// TestManyDAGsOneTimer fires ten DAGs with different periods through one
// timer for a minute of fake time: every DAG gets exactly its intervals.
func TestManyDAGsOneTimer(t *testing.T) {
	start := ts("2026-01-01T00:00:00Z")
	var dags []*dag.DAG
	for n := 1; n <= 10; n++ {
		dags = append(dags, shellDAG(fmt.Sprintf("every%02d", n), fmt.Sprintf("@every %ds", n), start, dag.Catchup(true)))
	}
	h := newHarness(t, backends[0], start, Config{}, dags...)
	h.start()
	end := start.Add(time.Minute)
	h.waitArmed(start.Add(time.Second))
	// Step the clock from one armed instant to the next, then to the end;
	// DAGs still being fired when the clock moves on fire again at once
	// (catchup), so no interval ending by the end is lost.
	for {
		var at time.Time
		h.waitHook("the timer to be set", func() bool { at = h.armed; return !at.IsZero() })
		if at.After(end) {
			h.clk.Set(end)
			break
		}
		h.clk.Set(at)
		h.waitHook("the timer to move past "+fmtTime(at), func() bool { return h.armed.IsZero() || h.armed.After(at) })
	}
	for n := 1; n <= 10; n++ {
		id := fmt.Sprintf("every%02d", n)
		var want []string
		for k := 0; (k+1)*n <= 60; k++ {
			want = append(want, RunID(store.RunScheduled, start.Add(time.Duration(k*n)*time.Second)))
		}
		h.waitStore("the runs of "+id, func() bool { return len(h.runs(id)) == len(want) })
		h.wantRuns(id, want...)
	}
}

// TestCatchupAfterDowntime stops a scheduler, moves the clock on by five
// intervals and starts a new one: with catchup it creates exactly the
// missed runs, oldest first; without, only the latest.
func TestCatchupAfterDowntime(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		for _, catchup := range []bool{true, false} {
			t.Run(fmt.Sprintf("catchup=%v", catchup), func(t *testing.T) {
				d := shellDAG("d", "@every 10m", ts("2026-01-01T00:00:00Z"), dag.Catchup(catchup), dag.MaxActiveRuns(100))
				h := newHarness(t, b, ts("2026-01-01T00:05:00Z"), Config{}, d)
				h.start()
				h.waitArmed(ts("2026-01-01T00:10:00Z"))
				h.clk.Set(ts("2026-01-01T00:10:00Z"))
				h.waitFired("d")
				h.waitArmed(ts("2026-01-01T00:20:00Z"))
				h.s.Stop()

				// Down from 00:10 to 01:03; intervals ending 00:20 … 01:00 were missed.
				h.clk.Set(ts("2026-01-01T01:03:00Z"))
				h2 := newHarnessOn(t, h.clk, h.st, Config{}, d)
				h2.start()
				h2.waitFired("d")
				want := scheduledIDs("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", "2026-01-01T00:20:00Z",
					"2026-01-01T00:30:00Z", "2026-01-01T00:40:00Z", "2026-01-01T00:50:00Z")
				if !catchup {
					want = scheduledIDs("2026-01-01T00:00:00Z", "2026-01-01T00:50:00Z")
				}
				h2.waitArmed(ts("2026-01-01T01:10:00Z"))
				runs := h2.wantRuns("d", want...)
				for _, r := range runs {
					if r.State != state.RunRunning || !r.IntervalEnd.Equal(r.IntervalStart.Add(10*time.Minute)) {
						t.Errorf("run %s: state %s interval [%s, %s)", r.RunID, r.State, r.IntervalStart, r.IntervalEnd)
					}
				}
				h2.s.Stop()

				// A third start without downtime creates nothing.
				h3 := newHarnessOn(t, h.clk, h.st, Config{}, d)
				h3.start()
				h3.waitArmed(ts("2026-01-01T01:10:00Z"))
				h3.wantRuns("d", want...)
			})
		}
	})
}

// TestCatchupInBatches checks that a long catch-up is created in batches of
// MaxRunsPerFire without losing or repeating an interval.
func TestCatchupInBatches(t *testing.T) {
	d := shellDAG("d", "@every 1m", ts("2026-01-01T00:00:00Z"), dag.Catchup(true), dag.MaxActiveRuns(1))
	h := newHarness(t, backends[0], ts("2026-01-01T00:25:30Z"), Config{MaxRunsPerFire: 10}, d)
	h.start()
	for range 3 { // 25 intervals: batches of 10, 10 and 5
		h.waitFired("d")
	}
	h.waitArmed(ts("2026-01-01T00:26:00Z"))
	runs := h.runs("d")
	if len(runs) != 25 {
		t.Fatalf("%d runs, want 25", len(runs))
	}
	for i, r := range runs {
		if want := RunID(store.RunScheduled, ts("2026-01-01T00:00:00Z").Add(time.Duration(i)*time.Minute)); r.RunID != want {
			t.Fatalf("run %d is %s, want %s", i, r.RunID, want)
		}
	}
	if c := states(runs); c[state.RunRunning] != 1 || c[state.RunQueued] != 24 {
		t.Errorf("states %v, want 1 running (MaxActiveRuns) and 24 queued", c)
	}
}

// TestEndDate: the interval starting at EndDate is the last; then the
// timer stops.
func TestEndDate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		d := shellDAG("d", "@every 1h", ts("2026-01-01T00:00:00Z"), dag.EndDate(ts("2026-01-01T02:00:00Z")))
		h := newHarness(t, b, ts("2026-01-01T00:00:00Z"), Config{}, d)
		h.start()
		for _, due := range []string{"2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z"} {
			h.waitArmed(ts(due))
			h.clk.Set(ts(due))
			h.waitFired("d")
		}
		h.waitArmed(time.Time{})
		h.clk.Set(ts("2026-01-02T00:00:00Z"))
		h.wantRuns("d", scheduledIDs("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z")...)
		// The jump fired the keeper's timer: count once it is armed again.
		h.waitHook("the keeper armed after the jump", func() bool { return h.kept.After(ts("2026-01-02T00:00:00Z")) })
		if n := h.clk.Timers(); n != 1 { // the keeper's; the loop has none
			t.Errorf("%d timers active, want only the keeper's", n)
		}
	})
}

// TestMaxActiveRunsQueueing: extra runs wait in queued and start, oldest
// first, as running ones finish.
func TestMaxActiveRunsQueueing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		d := shellDAG("d", "@every 1h", ts("2026-01-01T00:00:00Z"), dag.Catchup(true), dag.MaxActiveRuns(1))
		h := newHarness(t, b, ts("2026-01-01T03:30:00Z"), Config{}, d)
		h.start()
		h.waitFired("d")
		runs := h.wantRuns("d", scheduledIDs("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z")...)
		if runs[0].State != state.RunRunning || runs[1].State != state.RunQueued || runs[2].State != state.RunQueued {
			t.Fatalf("states %s %s %s, want running queued queued", runs[0].State, runs[1].State, runs[2].State)
		}
		for i := 1; i < 3; i++ {
			now := h.clk.Now()
			if n := finishQueued(t, h.st, now, state.Success); n != 1 {
				t.Fatalf("finished %d tasks, want 1", n)
			}
			h.clk.Advance(time.Second) // past the wake-up interval
			h.waitStore(fmt.Sprintf("run %d to start", i), func() bool {
				return h.runs("d")[i].State == state.RunRunning
			})
			runs = h.runs("d")
			if c := states(runs); c[state.RunSuccess] != i || c[state.RunRunning] != 1 {
				t.Fatalf("after %d finished: states %v", i, c)
			}
		}
	})
}

// TestPauseUnpause: a paused DAG creates no runs and starts no queued ones;
// unpausing applies the catchup rules to what was missed.
func TestPauseUnpause(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		for _, catchup := range []bool{true, false} {
			t.Run(fmt.Sprintf("catchup=%v", catchup), func(t *testing.T) {
				ctx := context.Background()
				d := shellDAG("d", "@every 10m", ts("2026-01-01T00:00:00Z"), dag.Catchup(catchup))
				h := newHarness(t, b, ts("2026-01-01T00:05:00Z"), Config{}, d)
				h.start()
				h.waitArmed(ts("2026-01-01T00:10:00Z"))
				if err := h.s.SetPaused(ctx, "d", true); err != nil {
					t.Fatal(err)
				}
				h.waitArmed(time.Time{})
				h.clk.Set(ts("2026-01-01T00:45:00Z"))
				h.wantRuns("d")
				// A manual run of a paused DAG waits in queued.
				manual, err := h.s.TriggerRun(ctx, "d", TriggerOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if manual.State != state.RunQueued {
					t.Fatalf("manual run of a paused DAG is %s, want queued", manual.State)
				}

				if err := h.s.SetPaused(ctx, "d", false); err != nil {
					t.Fatal(err)
				}
				h.waitFired("d")
				h.waitArmed(ts("2026-01-01T00:50:00Z"))
				want := scheduledIDs("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", "2026-01-01T00:20:00Z", "2026-01-01T00:30:00Z")
				if !catchup {
					want = scheduledIDs("2026-01-01T00:30:00Z")
				}
				runs := h.runs("d")
				var sched []store.Run
				for _, r := range runs {
					if r.RunType == store.RunScheduled {
						sched = append(sched, r)
					} else if r.State != state.RunRunning {
						t.Errorf("manual run %s is %s after unpause, want running", r.RunID, r.State)
					}
				}
				if got := runIDs(sched); strings.Join(got, " ") != strings.Join(want, " ") {
					t.Fatalf("scheduled runs after unpause:\n got %v\nwant %v", got, want)
				}
			})
		}
	})
}

// TestPauseFromAnotherProcess: a pause written to the store by someone else
// (the CLI) reaches the running scheduler through the store's wake-ups, and
// a paused DAG's running run still finishes.
func TestPauseFromAnotherProcess(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		d := shellDAG("d", "@every 10m", ts("2026-01-01T00:00:00Z"))
		h := newHarness(t, b, ts("2026-01-01T00:05:00Z"), Config{}, d)
		h.start()
		h.waitArmed(ts("2026-01-01T00:10:00Z"))
		h.clk.Set(ts("2026-01-01T00:10:00Z"))
		h.waitFired("d")
		h.waitArmed(ts("2026-01-01T00:20:00Z"))

		other := New(Config{Store: h.st, Registry: h.reg, Clock: h.clk}) // never started, like the CLI
		if err := other.SetPaused(ctx, "d", true); err != nil {
			t.Fatal(err)
		}
		h.clk.Advance(time.Second) // past the refresh interval
		h.waitArmed(time.Time{})
		h.clk.Set(ts("2026-01-01T01:00:00Z"))
		if n := finishQueued(t, h.st, h.clk.Now(), state.Success); n != 1 {
			t.Fatalf("finished %d tasks, want 1", n)
		}
		runs := h.wantRuns("d", scheduledIDs("2026-01-01T00:00:00Z")...)
		if runs[0].State != state.RunSuccess {
			t.Errorf("running run of a paused DAG ended %s, want success", runs[0].State)
		}

		if err := other.SetPaused(ctx, "d", false); err != nil {
			t.Fatal(err)
		}
		h.clk.Advance(time.Second)
		h.waitFired("d")
		h.waitArmed(ts("2026-01-01T01:10:00Z"))
		h.wantRuns("d", scheduledIDs("2026-01-01T00:00:00Z", "2026-01-01T00:50:00Z")...)
	})
}

// TestRetryRequeue: a failed try with tries left is queued again exactly
// when its retry delay has passed, by the scheduler's retry timer.
func TestRetryRequeue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		d := dag.New("r", dag.Description("retries"))
		d.Shell("t", "false", dag.Retries(2), dag.RetryDelay(30*time.Second))
		h := newHarness(t, b, ts("2026-01-01T00:00:00Z"), Config{}, d)
		h.start()
		run, err := h.s.TriggerRun(ctx, "r", TriggerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ti := func() store.TaskInstance {
			t.Helper()
			x, err := h.st.GetTaskInstance(ctx, "r", run.RunID, "t")
			if err != nil {
				t.Fatal(err)
			}
			return x
		}
		for try := 1; try <= 2; try++ {
			failedAt := h.clk.Now()
			if n := finishQueued(t, h.st, failedAt, state.Failed); n != 1 {
				t.Fatalf("try %d: finished %d tasks, want 1", try, n)
			}
			x := ti()
			retryAt := failedAt.Add(30 * time.Second)
			if x.State != state.UpForRetry || x.TryNumber != try || x.NextRetryAt == nil || !x.NextRetryAt.Equal(retryAt) {
				t.Fatalf("after try %d: state %s try %d next retry %v, want up_for_retry %d %s", try, x.State, x.TryNumber, x.NextRetryAt, try, retryAt)
			}
			h.waitKept(retryAt)
			h.clk.Set(retryAt.Add(-time.Millisecond))
			if x := ti(); x.State != state.UpForRetry {
				t.Fatalf("requeued before its retry time: %s", x.State)
			}
			h.clk.Set(retryAt)
			h.waitStore("the retry to be queued", func() bool { return ti().State == state.Queued })
		}
		// The third try fails for good.
		if n := finishQueued(t, h.st, h.clk.Now(), state.Failed); n != 1 {
			t.Fatalf("finished %d tasks, want 1", n)
		}
		if x := ti(); x.State != state.Failed || x.TryNumber != 3 {
			t.Fatalf("after the last try: %s try %d, want failed 3", x.State, x.TryNumber)
		}
		if r, err := h.st.GetRun(ctx, "r", run.RunID); err != nil || r.State != state.RunFailed {
			t.Fatalf("run: %+v %v, want failed", r.State, err)
		}
	})
}

// TestZombieSweep: a running task whose heartbeat is older than the
// threshold is failed by the periodic sweep.
func TestZombieSweep(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		d := dag.New("z")
		d.Shell("t", "sleep 100")
		start := ts("2026-01-01T00:00:00Z")
		h := newHarness(t, b, start, Config{ZombieThreshold: time.Minute, ZombieCheckInterval: 10 * time.Second,
			WorkerDeadAfter: 100 * time.Hour}, d)
		h.start()
		run, err := h.s.TriggerRun(ctx, "z", TriggerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w := store.Worker{ID: "w1", Hostname: "h", PID: 1, Slots: 1, StartedAt: start, HeartbeatAt: start}
		if err := h.st.RegisterWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
		if c, err := h.st.ClaimTasks(ctx, w, 1, start); err != nil || len(c) != 1 {
			t.Fatalf("claim: %v %v", c, err)
		}
		// Sweeps at 00:10, 00:20 … find nothing stale until 01:10 (heartbeat 00:00 < 01:10 − 1m).
		for at := start.Add(10 * time.Second); !at.After(start.Add(70 * time.Second)); at = at.Add(10 * time.Second) {
			h.waitKept(at)
			h.clk.Set(at)
		}
		h.waitStore("the zombie to fail", func() bool {
			r, err := h.st.GetRun(ctx, "z", run.RunID)
			return err == nil && r.State == state.RunFailed
		})
		x, err := h.st.GetTaskInstance(ctx, "z", run.RunID, "t")
		if err != nil || x.State != state.Failed || !strings.Contains(x.Error, "zombie") {
			t.Fatalf("task instance %s %q %v, want failed as a zombie", x.State, x.Error, err)
		}
	})
}

// TestDeadWorkerSweep: the tries of a worker whose process heartbeat
// stopped are put back, without using a try, once it is older than
// WorkerDeadAfter — well before the zombie threshold — and the worker's
// row is removed; a live worker's tries stay.
func TestDeadWorkerSweep(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		d := dag.New("dw")
		d.Shell("t1", "sleep 100")
		d.Shell("t2", "sleep 100")
		start := ts("2026-01-01T00:00:00Z")
		h := newHarness(t, b, start, Config{ZombieThreshold: time.Minute, ZombieCheckInterval: 10 * time.Second,
			WorkerDeadAfter: 20 * time.Second}, d)
		h.start()
		run, err := h.s.TriggerRun(ctx, "dw", TriggerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dead := store.Worker{ID: "dead", Hostname: "h1", PID: 1, Slots: 1, StartedAt: start, HeartbeatAt: start}
		live := store.Worker{ID: "live", Hostname: "h2", PID: 2, Slots: 1, StartedAt: start, HeartbeatAt: start}
		for _, w := range []store.Worker{dead, live} {
			if err := h.st.RegisterWorker(ctx, w); err != nil {
				t.Fatal(err)
			}
			if c, err := h.st.ClaimTasks(ctx, w, 1, start); err != nil || len(c) != 1 {
				t.Fatalf("claim for %s: %v %v", w.ID, c, err)
			}
		}
		// The live worker beats every 10 s; the dead one never again.
		for at := start.Add(10 * time.Second); !at.After(start.Add(30 * time.Second)); at = at.Add(10 * time.Second) {
			if err := h.st.HeartbeatWorker(ctx, "live", at); err != nil {
				t.Fatal(err)
			}
			h.waitKept(at)
			h.clk.Set(at)
		}
		tis := func() []store.TaskInstance {
			out, _, err := h.st.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{"dw"}, DAGRunIDs: []string{run.RunID}, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		h.waitStore("the dead worker's try to be put back", func() bool {
			for _, ti := range tis() {
				if ti.State == state.Queued && ti.TryNumber == 0 {
					return true
				}
			}
			return false
		})
		states := map[string]state.TaskState{}
		for _, ti := range tis() {
			states[ti.WorkerID] = ti.State
		}
		if states["live"] != state.Running {
			t.Errorf("the live worker's try = %s, want running", states["live"])
		}
		h.waitStore("the dead worker's row to be removed", func() bool {
			ws, err := h.st.ListWorkers(ctx)
			return err == nil && len(ws) == 1 && ws[0].ID == "live"
		})
	})
}

// TestStartInvalidRegistry: Start refuses a registry with problems and
// lists every one of them.
func TestStartInvalidRegistry(t *testing.T) {
	cyc := dag.New("cyc", dag.Schedule("@daily"), dag.StartDate(ts("2026-01-01T00:00:00Z")))
	a, bt := cyc.Shell("a", "true"), cyc.Shell("b", "true")
	a.SetDownstream(bt)
	bt.SetDownstream(a)
	bad := dag.New("bad", dag.Schedule("61 * * * *"), dag.StartDate(ts("2026-01-01T00:00:00Z")))
	bad.Shell("t", "true")
	ok := shellDAG("ok", "@daily", ts("2026-01-01T00:00:00Z"))
	st := openSQLite(t, nil)
	s := New(Config{Store: st, Registry: registry(ok, cyc, bad)})
	err := s.Start(context.Background())
	var inv *InvalidDAGsError
	if !errors.As(err, &inv) {
		t.Fatalf("Start = %v, want *InvalidDAGsError", err)
	}
	for _, want := range []string{"cycle: a -> b -> a", `dag "bad"`, "61"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if _, err := st.GetDAG(context.Background(), "ok"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("an invalid registry was recorded: GetDAG(ok) = %v", err)
	}
	s.Stop() // a scheduler that did not start stops at once
}

// TestStartSyncs: Start records the DAGs of the binary and marks DAGs gone
// from it inactive, keeping their history; an inactive DAG is not fired.
func TestStartSyncs(t *testing.T) {
	ctx := context.Background()
	start := ts("2026-01-01T00:00:00Z")
	old := shellDAG("old", "@every 1h", start)
	keep := shellDAG("keep", "@every 1h", start)
	h := newHarness(t, backends[0], start.Add(90*time.Minute), Config{}, old, keep)
	h.start()
	h.waitFired("old")
	h.waitFired("keep")
	h.s.Stop()

	h2 := newHarnessOn(t, h.clk, h.st, Config{}, keep)
	h2.start()
	row, err := h2.st.GetDAG(ctx, "old")
	if err != nil || row.Active {
		t.Fatalf("DAG gone from the binary: %+v %v, want inactive", row, err)
	}
	h2.wantRuns("old", scheduledIDs("2026-01-01T00:00:00Z")...)
	h2.waitArmed(start.Add(2 * time.Hour))
	h2.clk.Set(start.Add(2 * time.Hour))
	h2.waitFired("keep")
	h2.waitArmed(start.Add(3 * time.Hour))
	h2.wantRuns("old", scheduledIDs("2026-01-01T00:00:00Z")...)
	if row, err := h2.st.GetDAG(ctx, "keep"); err != nil || !row.Active || row.Fingerprint != keep.Fingerprint() {
		t.Fatalf("kept DAG: %+v %v", row, err)
	}
}

// TestStartStop: Start twice is an error; Stop waits for the goroutines and
// may be called twice.
func TestStartStop(t *testing.T) {
	h := newHarness(t, backends[0], ts("2026-01-01T00:00:00Z"), Config{}, shellDAG("d", "@daily", ts("2026-01-01T00:00:00Z")))
	h.start()
	if err := h.s.Start(context.Background()); err == nil {
		t.Fatal("second Start succeeded")
	}
	h.waitArmed(ts("2026-01-02T00:00:00Z"))
	h.s.Stop()
	h.s.Stop()
	if n := h.clk.Timers(); n != 0 {
		t.Errorf("%d timers still active after Stop", n)
	}
	if err := New(Config{}).Start(context.Background()); err == nil {
		t.Error("Start without a store succeeded")
	}
}
