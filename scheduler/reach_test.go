package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func TestZombieCutoff(t *testing.T) {
	now := ts("2026-01-01T12:00:00Z")
	const th = time.Minute
	for _, c := range []struct {
		name     string
		cut      bool
		regained time.Time
		wantOK   bool
	}{
		{"never cut off", false, time.Time{}, true},
		{"cut off now", true, time.Time{}, false},
		{"cut off again after a regain", true, now.Add(-time.Hour), false},
		{"regained a moment ago", false, now.Add(-time.Second), false},
		{"regained just under the threshold ago", false, now.Add(-th + time.Nanosecond), false},
		{"regained a threshold ago", false, now.Add(-th), true},
		{"regained long ago", false, now.Add(-time.Hour), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			stale, ok := zombieCutoff(now, th, c.cut, c.regained)
			if ok != c.wantOK {
				t.Fatalf("ok = %v, want %v", ok, c.wantOK)
			}
			if ok && !stale.Equal(now.Add(-th)) {
				t.Errorf("staleBefore = %v, want %v", stale, now.Add(-th))
			}
		})
	}
}

func TestReachObserve(t *testing.T) {
	t0 := ts("2026-01-01T00:00:00Z")
	var r reach
	r.observe(errors.New("syntax error"), t0)
	if cut, at := r.state(); cut || !at.IsZero() {
		t.Fatalf("after an unrelated error: cut %v regained %v, want neither", cut, at)
	}
	r.observe(nil, t0)
	if _, at := r.state(); !at.IsZero() {
		t.Fatalf("success without a cut set regainedAt %v", at)
	}
	r.observe(fmt.Errorf("x: %w", store.ErrUnavailable), t0.Add(time.Second))
	if cut, _ := r.state(); !cut {
		t.Fatal("unavailable did not cut")
	}
	r.observe(context.DeadlineExceeded, t0.Add(2*time.Second))
	r.observe(nil, t0.Add(3*time.Second))
	if cut, at := r.state(); cut || !at.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("after the regain: cut %v regained %v, want regained at +3s", cut, at)
	}
}

// outageStore makes the scheduler's heartbeat and zombie sweep fail as
// unavailable while down is set (failure injection).
type outageStore struct {
	store.Store
	down               atomic.Bool
	beatsDown, beatsUp atomic.Int64
}

func (o *outageStore) HeartbeatScheduler(ctx context.Context, id string, now time.Time) error {
	if o.down.Load() {
		o.beatsDown.Add(1)
		return fmt.Errorf("heartbeat: %w", store.ErrUnavailable)
	}
	err := o.Store.HeartbeatScheduler(ctx, id, now)
	if err == nil {
		o.beatsUp.Add(1)
	}
	return err
}

func (o *outageStore) FailZombies(ctx context.Context, staleBefore, now time.Time) ([]store.Try, error) {
	if o.down.Load() {
		return nil, fmt.Errorf("fail zombies: %w", store.ErrUnavailable)
	}
	return o.Store.FailZombies(ctx, staleBefore, now)
}

// TestZombieSweepGraceAfterOutage: after the scheduler was cut off from
// the database for longer than the zombie threshold, a running try whose
// worker beats again within a threshold of the database's return is not
// failed; the grace is measured from the return, not by the wall clock.
func TestZombieSweepGraceAfterOutage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		d := dag.New("z")
		d.Shell("t", "sleep 100")
		start := ts("2026-01-01T00:00:00Z")
		h0 := newHarness(t, b, start, Config{}, d)
		st := &outageStore{Store: h0.st}
		h := newHarnessOn(t, h0.clk, st, Config{ZombieThreshold: time.Minute, ZombieCheckInterval: 10 * time.Second,
			HeartbeatInterval: 5 * time.Millisecond}, d)
		h.start()
		run, err := h.s.TriggerRun(ctx, "z", TriggerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w := store.Worker{ID: "w1", Hostname: "h", PID: 1, Slots: 1, StartedAt: start, HeartbeatAt: start}
		if err := st.RegisterWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
		claimed, err := st.ClaimTasks(ctx, w, 1, start)
		if err != nil || len(claimed) != 1 {
			t.Fatalf("claim: %v %v", claimed, err)
		}
		waitFor := func(what string, cond func() bool) {
			t.Helper()
			deadline := time.Now().Add(waitTimeout)
			for !cond() {
				if time.Now().After(deadline) {
					t.Fatalf("timed out waiting for %s", what)
				}
				time.Sleep(time.Millisecond)
			}
		}
		// The database goes away for two minutes of the scheduler's clock.
		st.down.Store(true)
		waitFor("a failed scheduler heartbeat", func() bool { return st.beatsDown.Load() > 0 })
		at := start
		for at.Before(start.Add(2 * time.Minute)) {
			at = at.Add(10 * time.Second)
			h.waitKept(at)
			h.clk.Set(at)
		}
		// It is back: the scheduler notices on its next heartbeat.
		up := st.beatsUp.Load()
		st.down.Store(false)
		waitFor("a scheduler heartbeat after the outage", func() bool { return st.beatsUp.Load() > up })
		// The worker process beats again at once; its try's heartbeat
		// comes later.
		if err := st.HeartbeatWorker(ctx, "w1", at); err != nil {
			t.Fatal(err)
		}
		// Sweeps within a threshold of the return leave the try alone
		// although its heartbeat (00:00) is long stale; the worker beats
		// again at 02:30.
		beatWorker := func() {
			t.Helper()
			if err := st.HeartbeatWorker(ctx, "w1", at); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 3; i++ {
			at = at.Add(10 * time.Second)
			h.waitKept(at)
			h.clk.Set(at)
			beatWorker()
		}
		if _, err := st.HeartbeatTasks(ctx, "w1", []store.Try{{ID: claimed[0].ID, TryNumber: claimed[0].TryNumber}}, at); err != nil {
			t.Fatal(err)
		}
		// Later sweeps judge the fresh heartbeat: still running.
		for i := 0; i < 5; i++ {
			at = at.Add(10 * time.Second)
			h.waitKept(at)
			h.clk.Set(at)
			beatWorker()
		}
		h.waitKept(at.Add(10 * time.Second))
		x, err := st.GetTaskInstance(ctx, "z", run.RunID, "t")
		if err != nil || x.State != state.Running || x.TryNumber != 1 {
			t.Fatalf("task instance %s try %d %q %v, want still running its first try", x.State, x.TryNumber, x.Error, err)
		}
	})
}
