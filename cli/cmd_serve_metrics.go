package cli

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// The metrics of `trellis serve` that no component reports by itself
// (see docs/metrics.md, "How trellis serve feeds them"):
//
//   - task tries finished, their duration and queued time: the finishes
//     the workers report through the executor's Events hook
//     (taskMetrics), which worker processes forward to their pool;
//   - executor workers and slots: the pool, and the tries its worker
//     processes report running;
//   - run durations: a runWatcher reads the runs that finished since the
//     last look, woken by the store's run notifications;
//   - task instances by state: a stateSampler counts the unfinished
//     states every --metrics-interval.

// Defaults of the metric feeders.
const (
	// defaultMetricsInterval is how often the task-instance gauge is
	// counted and the run watcher looks without a wake-up.
	defaultMetricsInterval = 15 * time.Second
	// runWatchMinGap is the least time between two reads of finished
	// runs; wake-ups meanwhile are handled together.
	runWatchMinGap = time.Second
	// runWatchOverlap is how far back each read of finished runs reaches
	// before the newest end already seen, so that a run whose end was
	// committed late (its end time is set before its transaction commits)
	// is still counted; the runs seen in that window are remembered and
	// counted once.
	runWatchOverlap = 10 * time.Second
	// runWatchPage is how many runs one read takes.
	runWatchPage = 500
	// poolGaugeInterval is how often the worker and slot gauges are
	// refreshed.
	poolGaugeInterval = time.Second
)

// sampledStates are the task-instance states the gauge counts: the
// unfinished ones Trellis uses. Finished instances are counted by
// trellis_task_instances_finished_total instead; counting them would read
// the whole history.
var sampledStates = []state.TaskState{state.None, state.Queued, state.Running, state.UpForRetry, state.Restarting, state.Deferred}

// runKey identifies one completion of a run: a run that is cleared and
// finishes again is a new completion.
type runKey struct {
	id    int64
	ended time.Time
}

// runEndWindow decides which finished runs are new. It remembers the
// completions seen within runWatchOverlap of the newest one, and ignores
// runs that ended before floor (the start of the process).
type runEndWindow struct {
	floor, newest time.Time
	overlap       time.Duration
	seen          map[runKey]struct{}
}

func newRunEndWindow(floor time.Time, overlap time.Duration) *runEndWindow {
	return &runEndWindow{floor: floor, newest: floor, overlap: overlap, seen: map[runKey]struct{}{}}
}

// since is where the next read of finished runs starts.
func (w *runEndWindow) since() time.Time {
	s := w.newest.Add(-w.overlap)
	if s.Before(w.floor) {
		return w.floor
	}
	return s
}

// observe returns the runs of rs whose completion was not seen yet and
// remembers them.
func (w *runEndWindow) observe(rs []store.Run) []store.Run {
	var out []store.Run
	for _, r := range rs {
		if !r.State.Terminal() || r.EndedAt == nil {
			continue
		}
		end := r.EndedAt.UTC()
		if end.Before(w.floor) || end.Before(w.since()) {
			continue
		}
		k := runKey{id: r.ID, ended: end}
		if _, ok := w.seen[k]; ok {
			continue
		}
		w.seen[k] = struct{}{}
		if end.After(w.newest) {
			w.newest = end
		}
		out = append(out, r)
	}
	cut := w.since()
	for k := range w.seen {
		if k.ended.Before(cut) {
			delete(w.seen, k)
		}
	}
	return out
}

// runWatcher records the duration of every run that finishes while it
// runs (trellis_dag_run_duration_seconds). Runs are settled by worker
// processes, API calls and other processes, so it reads them back: on
// each run notification of the store (at most once per runWatchMinGap)
// and every interval, it lists the runs that ended since the newest end
// it has seen (minus the overlap). The read is bounded by time and by
// page, never the whole history of runs.
type runWatcher struct {
	st       store.Store
	metrics  *api.Metrics
	clk      clock.Clock
	log      *slog.Logger
	interval time.Duration
	win      *runEndWindow

	cancel context.CancelFunc
	done   chan struct{}
	// polled, when set (tests), is called after each read.
	polled func()
}

func newRunWatcher(st store.Store, m *api.Metrics, clk clock.Clock, log *slog.Logger, interval time.Duration) *runWatcher {
	return &runWatcher{st: st, metrics: m, clk: clk, log: log, interval: interval,
		win: newRunEndWindow(clk.Now().UTC(), runWatchOverlap)}
}

// Start subscribes to run notifications and starts watching.
func (w *runWatcher) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	sub, err := w.st.Listen(ctx, store.TopicRunsChanged)
	if err != nil {
		cancel()
		return err
	}
	w.cancel, w.done = cancel, make(chan struct{})
	go w.loop(ctx, sub)
	return nil
}

// Stop ends the watcher and waits for it.
func (w *runWatcher) Stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
}

func (w *runWatcher) loop(ctx context.Context, sub store.Subscription) {
	defer close(w.done)
	defer func() { _ = sub.Close() }()
	timer := w.clk.NewTimer(w.interval)
	defer timer.Stop()
	var last time.Time
	wakeups := sub.C()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-wakeups:
			if !ok {
				wakeups = nil // the backstop timer keeps going
				continue
			}
			wait := max(0, last.Add(runWatchMinGap).Sub(w.clk.Now()))
			timer.Stop()
			timer.Reset(wait)
		case <-timer.C():
			w.poll(ctx)
			last = w.clk.Now()
			timer.Reset(w.interval)
		}
	}
}

// poll reads the runs that ended since the window's start and records the
// new ones.
func (w *runWatcher) poll(ctx context.Context) {
	defer func() {
		if w.polled != nil {
			w.polled()
		}
	}()
	since := w.win.since()
	for offset := 0; ; offset += runWatchPage {
		runs, _, err := w.st.ListRuns(ctx, store.RunQuery{
			States:     []state.RunState{state.RunSuccess, state.RunFailed},
			EndDateGTE: &since,
			OrderBy:    "end_date",
			Limit:      runWatchPage,
			Offset:     offset,
		})
		if err != nil {
			if ctx.Err() == nil {
				w.log.Warn("metrics: read finished runs", "err", err)
			}
			return
		}
		for _, r := range w.win.observe(runs) {
			if r.StartedAt != nil {
				w.metrics.RunFinished(r.DAGID, string(r.State), max(0, r.EndedAt.Sub(*r.StartedAt)))
			}
		}
		if len(runs) < runWatchPage {
			return
		}
	}
}

// stateSampler sets trellis_task_instances{state} for the unfinished
// states every interval, counting them in the store.
type stateSampler struct {
	st       store.Store
	metrics  *api.Metrics
	clk      clock.Clock
	log      *slog.Logger
	interval time.Duration

	cancel context.CancelFunc
	done   chan struct{}
	// sampled, when set (tests), is called after each count.
	sampled func()
}

// Start counts once at once, then every interval.
func (s *stateSampler) Start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	go s.loop(ctx)
	return nil
}

// Stop ends the sampler and waits for it.
func (s *stateSampler) Stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
}

func (s *stateSampler) loop(ctx context.Context) {
	defer close(s.done)
	timer := s.clk.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C():
			s.sample(ctx)
			if s.sampled != nil {
				s.sampled()
			}
			timer.Reset(s.interval)
		}
	}
}

// sample counts each sampled state; a state whose count fails keeps its
// last value.
func (s *stateSampler) sample(ctx context.Context) {
	for _, st := range sampledStates {
		_, n, err := s.st.ListTaskInstances(ctx, store.TaskQuery{States: []state.TaskState{st}, Limit: 1})
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("metrics: count task instances", "state", st, "err", err)
			}
			return
		}
		s.metrics.SetTaskInstances(string(st), n)
	}
	pools, _, err := s.st.ListPools(ctx, 0, 0)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("metrics: read pools", "err", err)
		}
		return
	}
	s.metrics.SetPools(pools)
	keys, err := s.st.WaitingOnKeys(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("metrics: read concurrency keys", "err", err)
		}
		return
	}
	n := 0
	for _, k := range keys {
		n += k.Queued
	}
	s.metrics.SetKeyWaiting(n)
}

// perTaskSeries returns which DAGs of reg asked for per-task metric
// series (dag.TaskMetrics), for api.Metrics.SetTaskSeries.
func perTaskSeries(reg *dag.Registry) func(dagID string) bool {
	ids := map[string]bool{}
	for _, d := range reg.DAGs() {
		if d.TaskMetrics() {
			ids[d.ID()] = true
		}
	}
	return func(dagID string) bool { return ids[dagID] }
}

// taskMetrics feeds the task metrics from the executor's Events hook.
type taskMetrics struct{ m *api.Metrics }

// TaskFinished counts a finished try, its duration and its queued time.
func (t taskMetrics) TaskFinished(f executor.Finish) {
	t.m.TaskFinished(f.DAGID, f.TaskID, string(f.State), f.Duration)
	if f.Queued >= 0 {
		t.m.TaskQueued(f.DAGID, f.Queued)
	}
}

// EventsDropped counts finishes a worker process could not report.
func (t taskMetrics) EventsDropped(n int) { t.m.TaskEventsDropped(n) }

// workerPool is what the gauges read of the executor pool.
type workerPool interface {
	Workers() int
	Slots() int
	RunningTries() int
}

// poolGauges keeps trellis_executor_workers and
// trellis_executor_slots{state} current, every poolGaugeInterval.
type poolGauges struct {
	pool    workerPool
	metrics *api.Metrics
	clk     clock.Clock

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// update sets the gauges now.
func (g *poolGauges) update() {
	running := g.pool.RunningTries()
	g.metrics.SetWorkers(g.pool.Workers())
	g.metrics.SetSlots(max(0, g.pool.Slots()-running), running)
}

// Start refreshes the gauges every poolGaugeInterval until Stop.
func (g *poolGauges) Start(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	ctx, g.cancel = context.WithCancel(ctx)
	g.done = make(chan struct{})
	go func() {
		defer close(g.done)
		t := g.clk.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
				g.update()
				t.Reset(poolGaugeInterval)
			}
		}
	}()
	return nil
}

// Stop ends the refreshing, waits for it and sets the gauges a last time
// (the pool is stopped by then: no workers).
func (g *poolGauges) Stop() {
	g.mu.Lock()
	cancel, done := g.cancel, g.done
	g.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	g.update()
}
