package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// DAG ids and parameters of the deferred scenario.
const (
	SensorsDAGID = IDPrefix + "sensors"
	ResumeDAGID  = IDPrefix + "resume"
	// SensorReleaseParam is the conf key of the file whose existence
	// makes the bench_sensors sensors answer true.
	SensorReleaseParam = "release_file"
	// SensorPoke is the poke interval of the bench_sensors sensors.
	SensorPoke = time.Second
)

// Metrics of the deferred scenario.
const (
	MetricDeferAllSeconds = "defer_all_seconds"
	MetricCPUCores        = "cpu_cores_while_deferred"
	MetricRunningMax      = "running_slots_max_while_deferred"
	MetricDeferredMin     = "deferred_min_while_deferred"
	MetricEventResumeP50  = "event_resume_p50_ms"
	MetricEventResumeP99  = "event_resume_p99_ms"
	MetricEventResumeMax  = "event_resume_max_ms"
	// deferredWindow is long enough for /proc's 10 ms CPU ticks to
	// matter little (±0.002 cores per process).
	deferredWindow      = 10 * time.Second
	deferredQuickWindow = 2 * time.Second
	deferredPoll        = 50 * time.Millisecond
	// deferredSample is the pause between two samples of the slots in
	// use in a CPU window: the sampling's queries run in this process and
	// count in its CPU (and on SQLite the database's work too), so they
	// are sparse — a poke never takes a slot, so a denser sample would
	// see nothing more.
	deferredSample          = time.Second
	eventSpacing            = 10 * time.Millisecond
	MetricSensorsDoneSecond = "sensors_done_seconds"
	// MetricCPUCoresWorkers is the worker processes' part of
	// MetricCPUCores (the rest: this process, with the scheduler, the
	// pool and the sampling).
	MetricCPUCoresWorkers = "cpu_cores_workers_while_deferred"
	// MetricPokeOverdue is, read once after the window, how far past its
	// next check the most overdue sensor is: small when the pokes keep
	// up with the interval, growing when they fall behind.
	MetricPokeOverdue = "poke_overdue_max_ms"
	// MetricPokesPerSecond is about how many pokes were made per second
	// over the window: the sum of how far the sensors' next checks moved,
	// in intervals (read before and after it, leased ones left out).
	MetricPokesPerSecond = "pokes_per_second"
	MetricCPUCoresIdle   = "cpu_cores_nothing_due"
	// MetricCheckCPU is the CPU one call of the sensors' check costs by
	// itself (its param read and stat), measured in the bench process
	// (sensorCheckCPU).
	MetricCheckCPU = "cpu_us_per_check"
	// MetricCPUCoresChecks is the part of MetricCPUCores the checks' own
	// work accounts for: MetricCheckCPU times MetricPokesPerSecond. It is
	// the user's code, what any scheduler calling it would spend.
	MetricCPUCoresChecks = "cpu_cores_checks_while_deferred"
	// MetricCPUCoresTrellis is MetricCPUCores less MetricCPUCoresChecks:
	// what Trellis spends to keep the sensors waiting between their pokes
	// and to claim, call and record each poke (issue 14's target).
	MetricCPUCoresTrellis = "cpu_cores_trellis_while_deferred"
	// MetricCPUPerPoke is the CPU one poke costs the Trellis processes
	// (PostgreSQL's not counted): MetricCPUCores less MetricCPUCoresIdle
	// (what the installation spends with 10,000 tasks deferred and
	// nothing due), per MetricPokesPerSecond. The sensors' CPU between
	// their pokes is the idle part; this is the part the pokes add.
	MetricCPUPerPoke = "cpu_us_per_poke"
	MetricSlotsIdle  = "slots_used_max_nothing_due"
	// ResumeTimed is how many events (10 ms apart) the latency is
	// measured on; the other deferred tasks are released at once after.
	ResumeTimed = 500
)

// sensorsDAG is bench_sensors: n sensors poking every second, true once
// the file named by the run's conf "release_file" exists (at once
// without one).
func sensorsDAG(n int) *dag.DAG {
	d := dag.New(SensorsDAGID, dag.Description("trellis bench: sensors deferred between their pokes"),
		dag.Params(map[string]any{SensorReleaseParam: ""}))
	for i := range n {
		d.Sensor(taskID("s", i, n), sensorCheck, dag.PokeInterval(SensorPoke), dag.SensorTimeout(time.Hour))
	}
	return d
}

// sensorCheck is the check of the bench_sensors sensors: true once the
// file named by the run's conf "release_file" exists (at once without
// one).
func sensorCheck(c *dag.Context) (bool, error) {
	v, _ := c.Param(SensorReleaseParam) // no copy of the params per poke
	path, _ := v.(string)
	if path == "" {
		return true, nil
	}
	_, err := os.Stat(path)
	return err == nil, nil
}

// Calibration of sensorCheck: checkRounds rounds of checkCalls calls.
const (
	checkCalls  = 20000
	checkRounds = 5
)

// sensorCheckCPU is the CPU one call of sensorCheck costs on this machine
// while the release file does not exist: the check's own work (its param
// read and its stat), which any scheduler running this check would spend,
// measured on this process's thread (the median round), without the
// Context a poke builds around it (that is Trellis's).
func sensorCheckCPU(release string) (time.Duration, error) {
	c := dag.NewContext(context.Background(), dag.RunInfo{DAGID: SensorsDAGID, TaskID: "s0",
		Params: map[string]any{SensorReleaseParam: release}}, nil, nil)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rounds := make([]time.Duration, checkRounds)
	for r := range rounds {
		t0, err := ThreadCPU()
		if err != nil {
			return 0, err
		}
		for range checkCalls {
			if ok, err := sensorCheck(c); ok || err != nil {
				return 0, fmt.Errorf("calibrating the sensors' check: it answered %v, %v before the release", ok, err)
			}
		}
		t1, err := ThreadCPU()
		if err != nil {
			return 0, err
		}
		rounds[r] = (t1 - t0) / checkCalls
	}
	slices.Sort(rounds)
	return rounds[len(rounds)/2], nil
}

// resumeDAG is bench_resume: n Resumable tasks, each deferred on its own
// event (ResumeEventKey).
func resumeDAG(n int) *dag.DAG {
	d := dag.New(ResumeDAGID, dag.Description("trellis bench: tasks deferred on events"))
	for i := range n {
		d.Resumable(taskID("r", i, n), dag.Steps{
			Start: func(c *dag.Context) error {
				return c.Defer(dag.Wait{Event: ResumeEventKey(c.RunID(), c.TaskID())})
			},
			Continue: noop,
		})
	}
	return d
}

// ResumeEventKey is the event that continues task taskID of run runID of
// bench_resume.
func ResumeEventKey(runID, taskID string) string { return "bench:" + runID + ":" + taskID }

// deferred: Sizes.Deferred sensors poking every second — the CPU of the
// whole installation and the slots in use while they cycle —, then
// Sizes.Resume tasks deferred on events: the CPU and slots while nothing
// is due, then ResumeTimed of them continued one event every 10 ms (the
// time from an event's recording to its task's resumed start), the rest
// at once.
func (h *harness) deferred(ctx context.Context) error {
	m := h.rowsFor(ScenarioDeferred)
	cycling, pokeRate, err := h.sensors(ctx, m)
	if err != nil {
		return err
	}
	idle, err := h.resume(ctx, m)
	if err != nil {
		return err
	}
	if pokeRate > 0 {
		m.add(MetricCPUPerPoke, max(cycling-idle, 0)/pokeRate*1e6, "µs/poke")
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	h.work, h.workUnit = h.cfg.Sizes.Deferred+h.cfg.Sizes.Resume, "task"
	h.peak(m)
	h.keep(m)
	return nil
}

// waitPokedOnce waits until every sensor of the run has been poked at
// least once: none is queued without having started a try.
func (h *harness) waitPokedOnce(ctx context.Context, runID string, n int) error {
	for {
		tis, _, err := h.st.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{SensorsDAGID}, DAGRunIDs: []string{runID},
			States: []state.TaskState{state.Queued}})
		if err != nil {
			return err
		}
		fresh := 0
		for _, ti := range tis {
			if ti.StartedAt == nil {
				fresh++
			}
		}
		if fresh == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %d of %d sensors not poked yet: %w", SensorsDAGID, fresh, n, context.Cause(ctx))
		case <-time.After(deferredPoll * 4):
		}
	}
}

// countIn counts the instances of run runID of dagID in states.
func (h *harness) countIn(ctx context.Context, dagID, runID string, states ...state.TaskState) (int, error) {
	_, n, err := h.st.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{dagID}, DAGRunIDs: []string{runID},
		States: states, Limit: 1})
	return n, err
}

// waitCount polls until cond holds for the count of states.
func (h *harness) waitCount(ctx context.Context, dagID, runID string, cond func(int) bool, states ...state.TaskState) error {
	for {
		n, err := h.countIn(ctx, dagID, runID, states...)
		if err != nil {
			return err
		}
		if cond(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %d instances %v: %w", dagID, n, states, context.Cause(ctx))
		case <-time.After(deferredPoll):
		}
	}
}

// sensors runs the bench_sensors part and returns the cores the
// installation used while they cycled and the pokes a second.
func (h *harness) sensors(ctx context.Context, m *rowMaker) (cores, pokeRate float64, err error) {
	n := h.cfg.Sizes.Deferred
	window := deferredWindow
	if n < 1000 {
		window = deferredQuickWindow
	}
	dir, err := os.MkdirTemp("", "trellis-bench-sensors-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	release := filepath.Join(dir, "release")
	conf, err := json.Marshal(map[string]string{SensorReleaseParam: release})
	if err != nil {
		return 0, 0, err
	}
	began := time.Now()
	run, err := h.sched.TriggerRun(ctx, SensorsDAGID, scheduler.TriggerOptions{RunID: "bench", Conf: conf})
	if err != nil {
		return 0, 0, err
	}
	// Every sensor was queued and poked once: none is left that never
	// ran (a queued sensor that deferred before keeps its start).
	if err := h.waitCount(ctx, SensorsDAGID, run.RunID, func(k int) bool { return k == 0 }, state.None, state.Scheduled); err != nil {
		return 0, 0, err
	}
	if err := h.waitPokedOnce(ctx, run.RunID, n); err != nil {
		return 0, 0, err
	}
	// And every one is deferred: none still running its first try, or
	// held by a worker's finish not yet recorded.
	if err := h.waitCount(ctx, SensorsDAGID, run.RunID, func(k int) bool { return k == n }, state.Deferred); err != nil {
		return 0, 0, err
	}
	deferAll := time.Since(began)
	m.seconds(MetricDeferAllSeconds, deferAll)
	h.progress("%d sensors deferred in %.1f s", n, deferAll.Seconds())

	nexts0, _, err := h.nextPokes(ctx, run.RunID)
	if err != nil {
		return 0, 0, err
	}
	// The window counts Trellis's CPU, not the memory sampler's.
	h.rss.Pause()
	defer h.rss.Resume()
	cpu0, err := TreeCPU(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	self0, err := ProcCPU(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	maxRunning, minDeferred := 0, n
	for time.Since(start) < window {
		r, err := h.countIn(ctx, SensorsDAGID, run.RunID, state.Running)
		if err != nil {
			return 0, 0, err
		}
		d, err := h.countIn(ctx, SensorsDAGID, run.RunID, state.Deferred)
		if err != nil {
			return 0, 0, err
		}
		maxRunning, minDeferred = max(maxRunning, r), min(minDeferred, d)
		time.Sleep(deferredSample)
	}
	cpu1, err := TreeCPU(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	self1, err := ProcCPU(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	h.rss.Resume()
	elapsed := time.Since(start).Seconds()
	cores = (cpu1 - cpu0).Seconds() / elapsed
	workers := ((cpu1 - cpu0) - (self1 - self0)).Seconds() / elapsed
	nexts1, overdue, err := h.nextPokes(ctx, run.RunID)
	if err != nil {
		return 0, 0, err
	}
	// Each poke moves a sensor's next check one interval on; a leased
	// next check (a poke in flight, due a minute on) is left out, and the
	// rate counts the sensors seen at both ends for all n (the share in
	// flight grows with the time a poke loop holds its results).
	var moved time.Duration
	seen := 0
	for id, t1 := range nexts1 {
		if t0, ok := nexts0[id]; ok {
			seen++
			if t1.After(t0) {
				moved += t1.Sub(t0)
			}
		}
	}
	if seen > 0 {
		pokeRate = moved.Seconds() / SensorPoke.Seconds() / elapsed * float64(n) / float64(seen)
	}
	check, err := sensorCheckCPU(release)
	if err != nil {
		return 0, 0, err
	}
	checks := pokeRate * check.Seconds()
	m.add(MetricPokesPerSecond, pokeRate, "pokes/s")
	m.add(MetricCPUCores, cores, UnitCores)
	m.add(MetricCPUCoresWorkers, workers, UnitCores)
	m.add(MetricCheckCPU, float64(check)/float64(time.Microsecond), "µs/check")
	m.add(MetricCPUCoresChecks, checks, UnitCores)
	m.add(MetricCPUCoresTrellis, max(cores-checks, 0), UnitCores)
	m.add(MetricRunningMax, float64(maxRunning), "tasks")
	m.add(MetricDeferredMin, float64(minDeferred), "tasks")
	m.millis(MetricPokeOverdue, overdue)
	h.progress("over %.0f s with %d sensors poking every %v: %.3f cores = %.1f %% of one core, the whole cycle "+
		"(this process and its workers, the workers %.3f), of which the checks' own work %.3f (%.2f µs a check) and "+
		"Trellis %.3f = %.1f %% (target ≤ 5 %%); at most %d running, at least %d deferred; about %.0f pokes/s; "+
		"then the most overdue next check was %v late",
		window.Seconds(), n, SensorPoke, cores, cores*100, workers, checks, float64(check)/float64(time.Microsecond),
		cores-checks, (cores-checks)*100, maxRunning, minDeferred, pokeRate, overdue)

	// Released: every sensor succeeds on its next poke.
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		return 0, 0, err
	}
	sub, err := h.st.Listen(ctx, store.TopicRunsChanged)
	if err != nil {
		return 0, 0, err
	}
	defer sub.Close()
	done, err := h.waitRun(ctx, sub, SensorsDAGID, run.RunID)
	if err != nil {
		return 0, 0, err
	}
	if done.State != state.RunSuccess {
		return 0, 0, fmt.Errorf("run of %s ended %s", SensorsDAGID, done.State)
	}
	m.seconds(MetricSensorsDoneSecond, time.Since(began))
	return cores, pokeRate, nil
}

// resume runs the bench_resume part and returns the cores used with
// everything deferred and nothing due.
func (h *harness) resume(ctx context.Context, m *rowMaker) (idle float64, err error) {
	n := h.cfg.Sizes.Resume
	run, err := h.sched.TriggerRun(ctx, ResumeDAGID, scheduler.TriggerOptions{RunID: "bench"})
	if err != nil {
		return 0, err
	}
	if err := h.waitCount(ctx, ResumeDAGID, run.RunID, func(k int) bool { return k == n }, state.Deferred); err != nil {
		return 0, err
	}
	// Nothing is due: what waiting costs.
	window := deferredWindow
	if n < 1000 {
		window = deferredQuickWindow
	}
	h.rss.Pause()
	defer h.rss.Resume()
	cpu0, err := TreeCPU(os.Getpid())
	if err != nil {
		return 0, err
	}
	start := time.Now()
	maxRunning := 0
	for time.Since(start) < window {
		r, err := h.countIn(ctx, ResumeDAGID, run.RunID, state.Running, state.Queued)
		if err != nil {
			return 0, err
		}
		maxRunning = max(maxRunning, r)
		time.Sleep(deferredSample)
	}
	cpu1, err := TreeCPU(os.Getpid())
	if err != nil {
		return 0, err
	}
	idle = (cpu1 - cpu0).Seconds() / time.Since(start).Seconds()
	h.rss.Resume()
	m.add(MetricCPUCoresIdle, idle, UnitCores)
	m.add(MetricSlotsIdle, float64(maxRunning), "tasks")
	h.progress("over %.0f s with %d tasks deferred on events: %.4f cores (this process and its workers), at most %d queued or running",
		window.Seconds(), n, idle, maxRunning)

	timed := min(n, ResumeTimed)
	received := make(map[string]time.Time, n)
	for i := range n {
		task := taskID("r", i, n)
		res, err := h.st.RecordEvent(ctx, store.NewEvent{Key: ResumeEventKey(run.RunID, task)})
		if err != nil {
			return 0, err
		}
		if res.Continued != 1 {
			return 0, fmt.Errorf("event for %s continued %d instances, want 1", task, res.Continued)
		}
		received[task] = res.Event.ReceivedAt
		if i < timed {
			time.Sleep(eventSpacing)
		}
	}
	sub, err := h.st.Listen(ctx, store.TopicRunsChanged)
	if err != nil {
		return 0, err
	}
	defer sub.Close()
	if _, err := h.waitRun(ctx, sub, ResumeDAGID, run.RunID); err != nil {
		return 0, err
	}
	tis, _, err := h.st.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{ResumeDAGID}, DAGRunIDs: []string{run.RunID}})
	if err != nil {
		return 0, err
	}
	var lat []time.Duration
	timedIDs := map[string]bool{}
	for i := range timed {
		timedIDs[taskID("r", i, n)] = true
	}
	for _, ti := range tis {
		if ti.State != state.Success || ti.StartedAt == nil || ti.TryNumber != 1 {
			return 0, fmt.Errorf("%s: %s on try %d, want success on try 1", ti.TaskID, ti.State, ti.TryNumber)
		}
		if timedIDs[ti.TaskID] {
			lat = append(lat, ti.StartedAt.Sub(received[ti.TaskID]))
		}
	}
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	d := Summarize(lat)
	m.millis(MetricEventResumeP50, d.P50)
	m.millis(MetricEventResumeP99, d.P99)
	m.millis(MetricEventResumeMax, d.Max)
	h.progress("%d events %v apart, each resuming its task: p50 %.1f ms, p99 %.1f ms", timed, eventSpacing,
		float64(d.P50)/float64(time.Millisecond), float64(d.P99)/float64(time.Millisecond))
	return idle, nil
}

// nextPokes reads the sensors of the run: the next check of each
// deferred one whose poke is not in flight (leased: due more than two
// intervals on), and how far past its next check the most overdue one
// is (0 when none is).
func (h *harness) nextPokes(ctx context.Context, runID string) (map[int64]time.Time, time.Duration, error) {
	tis, _, err := h.st.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{SensorsDAGID}, DAGRunIDs: []string{runID},
		States: []state.TaskState{state.Deferred}})
	if err != nil {
		return nil, 0, err
	}
	now := time.Now()
	var worst time.Duration
	out := make(map[int64]time.Time, len(tis))
	for _, ti := range tis {
		if ti.NextCheckAt == nil {
			continue
		}
		worst = max(worst, now.Sub(*ti.NextCheckAt))
		if ti.NextCheckAt.Before(now.Add(2 * SensorPoke)) {
			out[ti.ID] = *ti.NextCheckAt
		}
	}
	return out, worst, nil
}
