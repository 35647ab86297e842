package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// basicsDAG exercises outputs, params, logs, shell, branch and skip.
func basicsDAG() *dag.DAG {
	d := dag.New("basics", dag.Params(map[string]any{"greeting": "hi", "n": 1.0}))
	produce := d.Func("produce", func(c *dag.Context) error {
		c.Logger().Info("producing", "n", c.Params()["n"])
		return c.SetOutput(map[string]any{"value": 41, "greeting": c.Params()["greeting"]})
	})
	consume := d.Func("consume", func(c *dag.Context) error {
		var in struct {
			Value    int    `json:"value"`
			Greeting string `json:"greeting"`
		}
		if err := c.Output("produce", &in); err != nil {
			return err
		}
		if c.TryNumber() != 1 || c.RunID() != "r1" || c.LogicalDate().IsZero() {
			return fmt.Errorf("bad context: try %d run %q date %v", c.TryNumber(), c.RunID(), c.LogicalDate())
		}
		var missing any
		if err := c.Output("shell", &missing); !errors.Is(err, dag.ErrNoOutput) {
			return fmt.Errorf("output of a task without output: got %v, want ErrNoOutput", err)
		}
		return c.SetOutput(fmt.Sprintf("%s:%d", in.Greeting, in.Value+1))
	})
	produce.SetDownstream(consume)
	d.Shell("shell", `echo "hello from $TRELLIS_TASK_ID try $TRELLIS_TRY_NUMBER"; echo oops >&2`)
	br := d.Branch("choose", func(c *dag.Context) ([]string, error) { return []string{"left"}, nil })
	left := d.Func("left", func(c *dag.Context) error { return nil })
	right := d.Func("right", func(c *dag.Context) error { return nil })
	br.SetDownstream(left, right)
	d.Func("skipper", func(c *dag.Context) error { return dag.Skip("nothing to do") })
	return d
}

func TestWorkerRunsTasks(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			d := basicsDAG()
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			newTestWorker(t, st, reg, nil)
			startRun(t, st, d, "r1", json.RawMessage(`{"greeting":"hello"}`))
			run := waitRun(t, st, d.ID(), "r1", 30*time.Second)
			if run.State != state.RunSuccess {
				t.Errorf("run state = %s, want success", run.State)
			}
			tis := tasksOf(t, st, d.ID(), "r1")
			want := map[string]state.TaskState{
				"produce": state.Success, "consume": state.Success, "shell": state.Success,
				"choose": state.Success, "left": state.Success, "right": state.Skipped, "skipper": state.Skipped,
			}
			for id, ws := range want {
				if ti := tis[id]; ti.State != ws || (ws == state.Success && ti.TryNumber != 1) {
					t.Errorf("task %s: state %s try %d (error %q), want %s try 1", id, ti.State, ti.TryNumber, ti.Error, ws)
				}
			}
			if got := string(tis["consume"].Output); got != `"hello:42"` {
				t.Errorf("consume output = %s, want \"hello:42\" (conf overlays params, outputs flow downstream)", got)
			}
			if got := tis["produce"].WorkerID; got == "" || tis["produce"].Hostname == "" || tis["produce"].PID == 0 {
				t.Errorf("produce ran by worker %q host %q pid %d; want all recorded", got, tis["produce"].Hostname, tis["produce"].PID)
			}
			waitLog(t, st, d.ID(), "r1", "produce", 1, "producing", "n=1")             // Context.Logger lines
			waitLog(t, st, d.ID(), "r1", "shell", 1, "hello from shell try 1", "oops") // stdout and stderr
		})
	}
}

func TestWorkerFailsUnknownTask(t *testing.T) {
	st := openStore(t, backends[0].url(t))
	recorded := dag.New("drift")
	recorded.Func("a", func(*dag.Context) error { return nil })
	recorded.Func("ghost", func(*dag.Context) error { return nil })
	syncDAGs(t, st, recorded)

	binary := dag.New("drift") // this build no longer has "ghost"
	binary.Func("a", func(*dag.Context) error { return nil })
	reg := dag.NewRegistry()
	reg.Register(binary)
	newTestWorker(t, st, reg, nil)
	startRun(t, st, recorded, "r1", nil)
	waitRun(t, st, "drift", "r1", 30*time.Second)
	tis := tasksOf(t, st, "drift", "r1")
	if tis["a"].State != state.Success {
		t.Errorf("a = %s, want success", tis["a"].State)
	}
	g := tis["ghost"]
	if g.State != state.Failed || !strings.Contains(g.Error, `task "ghost" of DAG "drift" is not defined in this binary`) {
		t.Errorf("ghost = %s %q, want failed with a clear error", g.State, g.Error)
	}
	waitLog(t, st, "drift", "r1", "ghost", 1, "not defined in this binary")
}

func TestWorkerStopsTryTakenAway(t *testing.T) {
	st := openStore(t, backends[0].url(t))
	started, cancelled := make(chan struct{}), make(chan struct{})
	d := dag.New("taken")
	d.Func("block", func(c *dag.Context) error {
		close(started)
		<-c.Done()
		close(cancelled)
		return c.Err()
	})
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, st, d)
	w := newTestWorker(t, st, reg, func(c *WorkerConfig) { c.HeartbeatInterval = 20 * time.Millisecond })
	startRun(t, st, d, "r1", nil)
	waitFor(t, started, 30*time.Second, "the task to start")

	before := tasksOf(t, st, "taken", "r1")["block"]
	if before.State != state.Running || before.HeartbeatAt == nil {
		t.Fatalf("block = %s heartbeat %v, want running with a heartbeat", before.State, before.HeartbeatAt)
	}
	// The worker heartbeats the running try.
	waitCond(t, 10*time.Second, "the try's heartbeat to advance", func() bool {
		ti := tasksOf(t, st, "taken", "r1")["block"]
		return ti.HeartbeatAt != nil && ti.HeartbeatAt.After(*before.HeartbeatAt)
	})
	// Cancelling the run takes the try away; the next heartbeat tells the
	// worker, which cancels the task.
	if _, err := st.SetRunState(context.Background(), "taken", "r1", state.RunFailed, time.Now()); err != nil {
		t.Fatalf("cancel run: %v", err)
	}
	waitFor(t, cancelled, 10*time.Second, "the worker to cancel the try taken away")
	waitCond(t, 10*time.Second, "the slot to be freed", func() bool { return w.Running() == 0 })
	if ti := tasksOf(t, st, "taken", "r1")["block"]; ti.State != state.Failed {
		t.Errorf("block = %s, want failed (as the cancellation set it)", ti.State)
	}
}

func TestWorkerGracefulStopRequeues(t *testing.T) {
	st := openStore(t, backends[0].url(t))
	var startedQuick, startedStubborn sync.WaitGroup
	startedQuick.Add(1)
	startedStubborn.Add(1)
	release := make(chan struct{})
	d := dag.New("graceful_inproc")
	d.Func("quick", func(c *dag.Context) error {
		startedQuick.Done()
		<-release
		return nil
	})
	d.Func("stubborn", func(c *dag.Context) error {
		if c.TryNumber() == 1 {
			startedStubborn.Done()
		}
		<-c.Done()
		return c.Err()
	})
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, st, d)
	w := newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Grace = 300 * time.Millisecond })
	startRun(t, st, d, "r1", nil)
	startedQuick.Wait()
	startedStubborn.Wait()

	stopped := make(chan struct{})
	go func() { w.Stop(); close(stopped) }()
	// Wait until the worker no longer claims (Stop has begun), then let
	// quick finish within the grace period.
	<-w.stopping
	close(release)
	waitFor(t, stopped, 30*time.Second, "Stop")

	tis := tasksOf(t, st, "graceful_inproc", "r1")
	if q := tis["quick"]; q.State != state.Success {
		t.Errorf("quick = %s, want success (finished within the grace period)", q.State)
	}
	if s := tis["stubborn"]; s.State != state.Queued || s.TryNumber != 0 {
		t.Errorf("stubborn = %s try %d, want queued try 0 (requeued without using a try)", s.State, s.TryNumber)
	}
	workers, err := st.ListWorkers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, wk := range workers {
		if wk.ID == w.ID() {
			t.Errorf("worker %s still registered after Stop", w.ID())
		}
	}
}

func TestWorkerHaltSkipsGrace(t *testing.T) {
	st := openStore(t, backends[0].url(t))
	started := make(chan struct{})
	d := dag.New("halt_inproc")
	d.Func("stubborn", func(c *dag.Context) error {
		close(started)
		<-c.Done()
		return c.Err()
	})
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, st, d)
	w := newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Grace = time.Hour })
	startRun(t, st, d, "r1", nil)
	waitFor(t, started, 30*time.Second, "the task to start")
	stopped := make(chan struct{})
	go func() { w.Stop(); close(stopped) }()
	w.Halt()
	waitFor(t, stopped, 30*time.Second, "Stop after Halt (the hour of grace must be skipped)")
	if s := tasksOf(t, st, "halt_inproc", "r1")["stubborn"]; s.State != state.Queued || s.TryNumber != 0 {
		t.Errorf("stubborn = %s try %d, want queued try 0", s.State, s.TryNumber)
	}
}

func TestWorkerDrainsAfterLeaks(t *testing.T) {
	st := openStore(t, backends[0].url(t))
	unblock := make(chan struct{})
	t.Cleanup(func() { close(unblock) }) // lets the abandoned goroutine end with the test
	d := dag.New("leaky")
	leak := d.Func("leak", func(c *dag.Context) error {
		<-unblock // ignores its context
		return nil
	}, dag.Timeout(50*time.Millisecond))
	next := d.Func("next", func(c *dag.Context) error { return nil }, dag.Trigger(dag.AllDone))
	leak.SetDownstream(next)
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, st, d)
	w := newTestWorker(t, st, reg, func(c *WorkerConfig) { c.MaxLeaks, c.KillGrace = 1, 50*time.Millisecond })
	startRun(t, st, d, "r1", nil)
	waitFor(t, structChan(w.LeakLimit()), 30*time.Second, "the leak limit")
	if w.Leaks() != 1 {
		t.Errorf("Leaks() = %d, want 1", w.Leaks())
	}
	waitCond(t, 10*time.Second, "leak to be failed", func() bool {
		return tasksOf(t, st, "leaky", "r1")["leak"].State == state.Failed
	})
	ti := tasksOf(t, st, "leaky", "r1")
	if !strings.Contains(ti["leak"].Error, "abandoned") {
		t.Errorf("leak error = %q, want it to say the function was abandoned", ti["leak"].Error)
	}
	// next became queued but a draining worker claims nothing more.
	waitCond(t, 10*time.Second, "next to be queued", func() bool {
		return tasksOf(t, st, "leaky", "r1")["next"].State == state.Queued
	})
	if w.freeSlots() != 0 {
		t.Errorf("a draining worker offers %d free slots, want 0", w.freeSlots())
	}
}

func structChan(c <-chan struct{}) <-chan struct{} { return c }

func TestWorkerWakesWithoutPolling(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			d := dag.New("wake")
			var prev *dag.Task
			for i := range 5 {
				tk := d.Func(fmt.Sprintf("t%d", i), func(*dag.Context) error { return nil })
				if prev != nil {
					tk.SetUpstream(prev)
				}
				prev = tk
			}
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			// With the safety poll an hour away, only notifications and
			// the worker's own finishes can move the chain.
			w := newTestWorker(t, st, reg, func(c *WorkerConfig) { c.PollInterval = time.Hour })
			// Let the worker go idle first: its start-up claim finds nothing.
			waitCond(t, 10*time.Second, "the worker to register", func() bool {
				ws, err := st.ListWorkers(context.Background())
				return err == nil && len(ws) == 1 && ws[0].ID == w.ID()
			})
			startRun(t, st, d, "r1", nil)
			if run := waitRun(t, st, "wake", "r1", 20*time.Second); run.State != state.RunSuccess {
				t.Fatalf("run = %s, want success", run.State)
			}
		})
	}
}

// countingStore counts the finishing calls of the worker
// (FinishAndClaim) and fails the first failFirst.
type countingStore struct {
	store.Store
	failFirst int32
	calls     atomic.Int32
	okCalls   atomic.Int32
	results   atomic.Int32
}

func (s *countingStore) FinishAndClaim(ctx context.Context, rs []store.Result, w store.Worker, max int, now time.Time) ([]store.FinishOutcome, []store.Claimed, error) {
	if n := s.calls.Add(1); n <= s.failFirst {
		return nil, nil, errors.New("injected finish failure")
	}
	out, claimed, err := s.Store.FinishAndClaim(ctx, rs, w, max, now)
	if err == nil {
		s.okCalls.Add(1)
		s.results.Add(int32(len(rs)))
	}
	return out, claimed, err
}

func TestWorkerBatchesAndRetriesFinishes(t *testing.T) {
	real := openStore(t, backends[0].url(t))
	st := &countingStore{Store: real, failFirst: 2}
	const n = 24
	var started sync.WaitGroup
	started.Add(n)
	release := make(chan struct{})
	d := dag.New("batch")
	for i := range n {
		d.Func(fmt.Sprintf("t%02d", i), func(*dag.Context) error {
			started.Done()
			<-release
			return nil
		})
	}
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, real, d)
	newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Slots = n })
	startRun(t, real, d, "r1", nil)
	started.Wait()
	close(release)
	if run := waitRun(t, real, "batch", "r1", 30*time.Second); run.State != state.RunSuccess {
		t.Fatalf("run = %s, want success despite two failed finish calls", run.State)
	}
	// The run is visible as success as soon as the last finish commits,
	// a moment before that FinishAndClaim call returns and is counted.
	waitCond(t, 10*time.Second, "the last finish call to return", func() bool { return st.results.Load() >= n })
	if got := st.results.Load(); got != n {
		t.Errorf("recorded %d results, want %d (calls %d, ok %d)", got, n, st.calls.Load(), st.okCalls.Load())
	}
	if ok := st.okCalls.Load(); ok >= n/2 {
		t.Errorf("%d results took %d commits; want them batched into fewer than %d", n, ok, n/2)
	}
	if c := st.calls.Load(); c < 3 {
		t.Errorf("FinishAndClaim called %d times, want the 2 failures retried", c)
	}
}

// waitCond waits until cond holds, checking every 10 ms.
func waitCond(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

func TestWorkerHeartbeatsOnItsClock(t *testing.T) {
	st := openStore(t, backends[0].url(t))
	started, release := make(chan struct{}), make(chan struct{})
	d := dag.New("clocked")
	d.Func("block", func(c *dag.Context) error {
		close(started)
		<-release
		return nil
	})
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, st, d)
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	fc := clock.NewFake(t0)
	w := newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Clock, c.HeartbeatInterval = fc, time.Hour })
	startRun(t, st, d, "r1", nil)
	waitFor(t, started, 30*time.Second, "the task to start")
	ti := tasksOf(t, st, "clocked", "r1")["block"]
	if ti.StartedAt == nil || !ti.StartedAt.Equal(t0) {
		t.Fatalf("block started at %v, want the fake clock's %v", ti.StartedAt, t0)
	}
	// Nothing happens until the fake hour passes; then the worker
	// heartbeats the try with the fake time. (Its three timers — safety
	// poll, heartbeat, log flush — must be armed first.)
	waitCond(t, 10*time.Second, "the worker's timers", func() bool { return fc.Timers() >= 3 })
	fc.Advance(time.Hour)
	waitCond(t, 10*time.Second, "the heartbeat at the fake time", func() bool {
		hb := tasksOf(t, st, "clocked", "r1")["block"].HeartbeatAt
		return hb != nil && hb.Equal(t0.Add(time.Hour))
	})
	close(release)
	waitRun(t, st, "clocked", "r1", 30*time.Second)
	if ti := tasksOf(t, st, "clocked", "r1")["block"]; ti.State != state.Success || !ti.EndedAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("block = %s ended %v, want success at the fake %v", ti.State, ti.EndedAt, t0.Add(time.Hour))
	}
	w.Stop()
}

// pausingStore holds FinishAndClaim calls that claimed something until
// release is closed, after signalling claimed once.
type pausingStore struct {
	store.Store
	once    sync.Once
	claimed chan struct{}
	release chan struct{}
}

func (s *pausingStore) FinishAndClaim(ctx context.Context, rs []store.Result, w store.Worker, max int, now time.Time) ([]store.FinishOutcome, []store.Claimed, error) {
	out, cs, err := s.Store.FinishAndClaim(ctx, rs, w, max, now)
	if len(cs) > 0 {
		s.once.Do(func() { close(s.claimed) })
		<-s.release
	}
	return out, cs, err
}

// TestWorkerFinishClaimDuringStop: a finish that claimed the next task
// while the worker began to stop does not start it; it is put back
// without using up a try.
func TestWorkerFinishClaimDuringStop(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			real := openStore(t, be.url(t))
			st := &pausingStore{Store: real, claimed: make(chan struct{}), release: make(chan struct{})}
			var ranB atomic.Bool
			d := dag.New("stop_claim")
			a := d.Func("a", func(*dag.Context) error { return nil })
			b := d.Func("b", func(*dag.Context) error { ranB.Store(true); return nil })
			a.SetDownstream(b)
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, real, d)
			w := newTestWorker(t, st, reg, nil)
			startRun(t, real, d, "r1", nil)
			waitFor(t, st.claimed, 30*time.Second, "a's finish to claim b")
			if c := tasksOf(t, real, "stop_claim", "r1")["b"]; c.State != state.Running || c.WorkerID != w.ID() {
				t.Fatalf("b = %s by %q, want running by this worker (claimed with a's finish)", c.State, c.WorkerID)
			}
			stopped := make(chan struct{})
			go func() { w.Stop(); close(stopped) }()
			waitCond(t, 10*time.Second, "Stop to begin", func() bool {
				w.mu.Lock()
				defer w.mu.Unlock()
				return w.closing
			})
			close(st.release)
			waitFor(t, stopped, 30*time.Second, "Stop")
			if ranB.Load() {
				t.Error("b ran although the worker was stopping when it was claimed")
			}
			tis := tasksOf(t, real, "stop_claim", "r1")
			if tis["a"].State != state.Success {
				t.Errorf("a = %s, want success", tis["a"].State)
			}
			if c := tis["b"]; c.State != state.Queued || c.TryNumber != 0 {
				t.Errorf("b = %s try %d, want queued try 0 (put back without using a try)", c.State, c.TryNumber)
			}
		})
	}
}

// TestWorkerBigLogNote: a 50 MB log is cut once, to the stores' cap, and
// its single note counts the bytes kept and dropped right (they add up to
// what was written: the task's output and taskrun's lines).
func TestWorkerBigLogNote(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			st := openStore(t, b.url(t))
			const total = 50_000_000
			d := dag.New("biglog")
			d.Shell("big", fmt.Sprintf("head -c %d /dev/zero | tr '\\000' x", total))
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			newTestWorker(t, st, reg, nil)
			startRun(t, st, d, "r1", nil)
			if run := waitRun(t, st, "biglog", "r1", 60*time.Second); run.State != state.RunSuccess {
				t.Fatalf("run = %s, want success", run.State)
			}
			log := waitLog(t, st, "biglog", "r1", "big", 1, "log truncated")
			if n := strings.Count(log, "log truncated"); n != 1 {
				t.Fatalf("log has %d truncation notes, want 1; its end: %q", n, log[max(0, len(log)-300):])
			}
			i := strings.Index(log, "\n[trellis: log truncated")
			var kept, dropped int64
			if _, err := fmt.Sscanf(log[i:], "\n[trellis: log truncated: %d bytes kept, %d bytes dropped]", &kept, &dropped); err != nil {
				t.Fatalf("note %q: %v", log[i:], err)
			}
			// The log holds the task's output and taskrun's own few lines.
			if kept+dropped < total || kept+dropped > total+512 || int64(i) != kept {
				t.Errorf("note says %d kept + %d dropped = %d; the task wrote %d and the log holds %d bytes before the note", kept, dropped, kept+dropped, total, i)
			}
			if len(log) > store.DefaultLogCap {
				t.Errorf("log is %d bytes, over the cap of %d", len(log), store.DefaultLogCap)
			}
		})
	}
}
