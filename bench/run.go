package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
	"github.com/trellis-dag/trellis/store/postgres"
)

// Timings of the harness.
const (
	// rssInterval is how often resident memory is sampled.
	rssInterval = 200 * time.Millisecond
	// workersReadyTimeout bounds the wait for the worker children to
	// register.
	workersReadyTimeout = time.Minute
	// runPoll is the safety poll while waiting for a run to finish;
	// wake-ups from the store normally come first.
	runPoll = 250 * time.Millisecond
	// cronWarmup separates the start of the cron measurement from the
	// moment the workers are ready (the scheduler's first firings after
	// start are catch-up, not timing).
	cronWarmup = time.Second
	// cronGrace is how long after the last counted interval end the
	// scheduler keeps running, so the last runs can be created.
	cronGrace = 2 * time.Second
	// teardownTimeout bounds stopping and dropping a scenario's database.
	teardownTimeout = 2 * time.Minute
)

// Run runs cfg.Scenarios on every database of cfg.DBs and returns the
// rows measured. A scenario that fails is reported in the returned error
// (all failures joined) and the others still run; the rows of the
// scenarios that worked are returned either way.
func Run(ctx context.Context, cfg Config) ([]Row, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	for _, dir := range []string{cfg.CPUProfileDir, cfg.TraceDir, cfg.HeapProfileDir} {
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("profile directory: %w", err)
			}
		}
	}
	var rows []Row
	var failures []error
	for _, db := range cfg.DBs {
		for _, sc := range cfg.Scenarios {
			if ctx.Err() != nil {
				return rows, errors.Join(append(failures, fmt.Errorf("benchmark interrupted: %w", context.Cause(ctx)))...)
			}
			fmt.Fprintf(cfg.Progress, "bench: %s on %s: starting\n", sc, db.Backend)
			start := time.Now()
			r, err := runScenario(ctx, cfg, db, sc)
			rows = append(rows, r...)
			if err != nil {
				fmt.Fprintf(cfg.Progress, "bench: %s on %s: FAILED: %v\n", sc, db.Backend, err)
				failures = append(failures, fmt.Errorf("scenario %s on %s: %w", sc, db, err))
				continue
			}
			fmt.Fprintf(cfg.Progress, "bench: %s on %s: done in %.1f s\n", sc, db.Backend, time.Since(start).Seconds())
		}
	}
	return rows, errors.Join(failures...)
}

// runScenario sets up a fresh installation for one scenario on one
// database, runs the scenario and tears the installation down.
func runScenario(ctx context.Context, cfg Config, db DB, scenario string) (rows []Row, err error) {
	if scenario == ScenarioScale {
		return runScale(ctx, cfg, db)
	}
	sets, err := cfg.Sizes.sets(scenario)
	if err != nil {
		return nil, err
	}
	dags, err := BuildAll(sets)
	if err != nil {
		return nil, err
	}
	h := &harness{cfg: cfg, db: db, scenario: scenario, sets: sets}
	defer func() {
		began := time.Now()
		if cerr := h.teardown(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		h.progress("stopped the workers and the scheduler and removed the database in %.1f s", time.Since(began).Seconds())
		rows = h.rows // with the rows teardown added
	}()
	if err := h.setup(ctx, dags); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeoutCause(ctx, cfg.Timeout,
		fmt.Errorf("scenario %s on %s took longer than the timeout %v", scenario, db.Backend, cfg.Timeout))
	defer cancel()
	switch scenario {
	case ScenarioWide:
		err = h.wide(sctx)
	case ScenarioPool:
		err = h.pool(sctx)
	case ScenarioChain:
		err = h.chain(sctx)
	case ScenarioShell:
		err = h.shell(sctx)
	case ScenarioCron:
		err = h.cron(sctx)
	case ScenarioBig:
		err = h.big(sctx)
	case ScenarioAPI:
		err = h.api(sctx)
	case ScenarioDeferred:
		err = h.deferred(sctx)
	case ScenarioFib:
		err = h.calls(sctx, scenario, FibDAGID, FibCalls(cfg.Sizes.Fib, true))
	case ScenarioCallsWide:
		err = h.calls(sctx, scenario, CallsWideDAGID, cfg.Sizes.CallsWide)
	case ScenarioFibNoDedup:
		err = h.calls(sctx, scenario, FibNoDedupDAGID, FibCalls(cfg.Sizes.FibNoDedup, false))
	}
	return nil, err
}

// runScale runs the scale scenario: its installation is a `trellis serve`
// process, started by the scenario itself. Config.Timeout bounds each of
// its runs (and the reference), not the whole.
func runScale(ctx context.Context, cfg Config, db DB) (rows []Row, err error) {
	h := &harness{cfg: cfg, db: db, scenario: ScenarioScale}
	defer func() {
		if cerr := h.teardown(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		rows = h.rows
	}()
	return nil, h.scale(ctx) // the timeout bounds each run
}

// harness is one scenario's installation: a fresh database, a scheduler
// and a worker pool in this process, and a memory sampler.
type harness struct {
	cfg      Config
	db       DB
	scenario string
	sets     []DAGSet

	st       store.Store
	sched    *scheduler.Scheduler
	rss      *Sampler
	prof     profiler
	syncTook time.Duration // scheduler.Start: validating and recording the DAGs
	readyAt  time.Time     // when every worker child had registered
	dbName   string        // the PostgreSQL database
	rows     []Row
	// runPeak is the peak memory when the last run ended.
	runPeak         Memory
	runPeakMeasured bool
	// work counts what the scenario did, for the per-unit database
	// activity rows: tasks (or, for cron, runs).
	work     int
	workUnit string

	cleanups []func() error // run in reverse order by teardown
}

func (h *harness) progress(format string, args ...any) {
	fmt.Fprintf(h.cfg.Progress, "bench: %s on %s: %s\n", h.scenario, h.db.Backend, fmt.Sprintf(format, args...))
}

// rowsFor returns a rowMaker for scenario (the harness's own or a part of
// it) on this store.
func (h *harness) rowsFor(scenario string) *rowMaker {
	return &rowMaker{scenario: scenario, store: h.db.Backend, cpus: runtime.NumCPU()}
}

func (h *harness) keep(m *rowMaker) { h.rows = append(h.rows, m.rows...) }

// setup makes the fresh database, records the DAGs with a started
// scheduler and starts the worker pool, waiting until every child has
// registered.
func (h *harness) setup(ctx context.Context, dags []*dag.DAG) error {
	setupBegan := time.Now()
	// Give back what earlier scenarios left in this process's heap, so it
	// does not count in this one's peak memory.
	debug.FreeOSMemory()
	h.rss = NewSampler(os.Getpid(), rssInterval)
	h.rss.Start()
	h.cleanups = append(h.cleanups, func() error { h.rss.Stop(); return nil })

	url, err := h.freshDatabase(ctx)
	if err != nil {
		return err
	}
	if h.db.Backend == BackendPostgres {
		// Runs after the store is closed and before the database is dropped.
		h.cleanups = append(h.cleanups, h.activityRows)
	}
	st, err := dial.Open(ctx, url, dial.Options{Logger: h.cfg.Logger, Migrate: true})
	if err != nil {
		return err
	}
	h.st = st
	h.cleanups = append(h.cleanups, st.Close)

	reg := dag.NewRegistry()
	for _, d := range dags {
		reg.Register(d)
	}
	for _, set := range h.sets {
		if set.Shape == ShapePool {
			reg.RegisterPool(PoolName, PoolSize, "trellis bench: the pool of bench_pool's tasks")
		}
	}
	h.sched = scheduler.New(scheduler.Config{Store: st, Registry: reg, Logger: h.cfg.Logger})
	began := time.Now()
	if err := h.sched.Start(ctx); err != nil {
		return fmt.Errorf("start scheduler: %w", err)
	}
	h.syncTook = time.Since(began)
	h.cleanups = append(h.cleanups, func() error { h.sched.Stop(); return nil })

	env := append([]string{EnvDAGs + "=" + FormatDAGSets(h.sets)}, h.cfg.ChildEnv...)
	if h.cfg.CPUProfileDir != "" {
		env = append(env, EnvCPUProfile+"="+h.profilePath(h.cfg.CPUProfileDir, "worker"))
	}
	if h.cfg.TraceDir != "" {
		env = append(env, EnvTrace+"="+h.profilePath(h.cfg.TraceDir, "worker"))
	}
	pool, err := executor.NewPool(executor.PoolConfig{
		Store:       st,
		DatabaseURL: url,
		Logger:      h.cfg.Logger,
		Processes:   h.cfg.Workers,
		Slots:       h.cfg.Slots,
		Executable:  h.cfg.Executable,
		Args:        h.cfg.ChildArgs,
		Env:         env,
		Stdout:      h.cfg.ChildOutput,
		Stderr:      h.cfg.ChildOutput,
	})
	if err != nil {
		return err
	}
	if err := pool.Start(ctx); err != nil {
		return err
	}
	h.cleanups = append(h.cleanups, func() error { pool.Stop(); return nil })
	if err := h.waitWorkers(ctx); err != nil {
		return err
	}
	h.readyAt = time.Now()
	h.rss.Sample()
	h.progress("set up in %.1f s: fresh database, DAGs recorded in %.3f s, %d worker processes × %d slots ready",
		time.Since(setupBegan).Seconds(), h.syncTook.Seconds(), h.cfg.Workers, h.cfg.Slots)

	var cpuPath, tracePath string
	if h.cfg.CPUProfileDir != "" {
		cpuPath = h.profilePath(h.cfg.CPUProfileDir, "bench") + ".pprof"
	}
	if h.cfg.TraceDir != "" {
		tracePath = h.profilePath(h.cfg.TraceDir, "bench") + ".trace"
	}
	return h.prof.start(cpuPath, tracePath)
}

// profilePath returns the path (without extension) of a CPU profile or
// trace of this scenario on this store: "<dir>/<store>-<scenario>-<who>".
func (h *harness) profilePath(dir, who string) string {
	return filepath.Join(dir, fmt.Sprintf("%s-%s-%s", h.db.Backend, h.scenario, who))
}

// stopProfile ends this process's CPU profile and trace, if they run.
func (h *harness) stopProfile() error { return h.prof.stop() }

// freshDatabase creates the scenario's database and registers its
// removal; it returns the URL the installation uses.
func (h *harness) freshDatabase(ctx context.Context) (string, error) {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails on Linux
	suffix := hex.EncodeToString(b[:])
	switch h.db.Backend {
	case BackendPostgres:
		name := fmt.Sprintf("trellis_bench_%s_%s", h.scenario, suffix)
		h.dbName = name
		url, err := postgres.CreateDatabase(ctx, h.db.Location, name)
		if err != nil {
			return "", fmt.Errorf("fresh PostgreSQL database at %s: %w", h.db, err)
		}
		h.cleanups = append(h.cleanups, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
			defer cancel()
			return postgres.DropDatabase(ctx, h.db.Location, name)
		})
		h.progress("database %s", name)
		return url, nil
	case BackendSQLite:
		parent := h.db.Location
		if parent != "" {
			if err := os.MkdirAll(parent, 0o755); err != nil {
				return "", fmt.Errorf("fresh SQLite database: %w", err)
			}
		}
		dir, err := os.MkdirTemp(parent, "trellis-bench-"+h.scenario+"-")
		if err != nil {
			return "", fmt.Errorf("fresh SQLite database: %w", err)
		}
		h.cleanups = append(h.cleanups, func() error { return os.RemoveAll(dir) })
		h.progress("database file %s", filepath.Join(dir, "trellis.db"))
		return "sqlite:" + filepath.Join(dir, "trellis.db"), nil
	}
	return "", fmt.Errorf("unknown backend %q", h.db.Backend)
}

// activityRows adds the database activity of the scenario per unit of
// work, once every connection to the database is closed (PostgreSQL
// counts a backend's transactions for sure only when it exits).
func (h *harness) activityRows() error {
	if h.work == 0 {
		return nil // the scenario failed before doing its work
	}
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		a, err := postgres.DatabaseActivity(ctx, h.db.Location, h.dbName)
		if err != nil {
			return err
		}
		if a.Backends == 0 {
			m := h.rowsFor(h.scenario)
			per := float64(h.work)
			m.add("transactions_per_"+h.workUnit, float64(a.Commits+a.Rollbacks)/per, "transactions/"+h.workUnit)
			m.add("rollbacks_per_"+h.workUnit, float64(a.Rollbacks)/per, "transactions/"+h.workUnit)
			m.add("row_writes_per_"+h.workUnit, float64(a.RowsWritten)/per, "rows/"+h.workUnit)
			h.keep(m)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("database activity: %d connections still open to %s", a.Backends, h.dbName)
		case <-tick.C:
		}
	}
}

// waitWorkers waits until every worker child has registered in the store.
func (h *harness) waitWorkers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, workersReadyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ws, err := h.st.ListWorkers(ctx)
		if err == nil && len(ws) >= h.cfg.Workers {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("worker processes not ready after %v (%d of %d registered; their output is above): %w",
				workersReadyTimeout, len(ws), h.cfg.Workers, errors.Join(err, ctx.Err()))
		case <-tick.C:
		}
	}
}

// teardown stops the pool and the scheduler, closes the store and drops
// the database, in that order, returning every error.
func (h *harness) teardown() error {
	errs := []error{h.stopProfile()}
	for i := len(h.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, h.cleanups[i]())
	}
	h.cleanups = nil
	return errors.Join(errs...)
}

// runOnce triggers one run of dagID, waits for it to end and returns its
// recorded timing, checking that all want task instances succeeded. With
// instances it also returns them; without, it only counts them, so that
// the benchmark process does not hold a big run's instances.
func (h *harness) runOnce(ctx context.Context, dagID string, want int, instances bool) (RunTiming, []store.TaskInstance, error) {
	sub, err := h.st.Listen(ctx, store.TopicRunsChanged)
	if err != nil {
		return RunTiming{}, nil, fmt.Errorf("listen: %w", err)
	}
	defer sub.Close()
	run, err := h.sched.TriggerRun(ctx, dagID, scheduler.TriggerOptions{RunID: "bench"})
	if err != nil {
		return RunTiming{}, nil, err
	}
	run, werr := h.waitRun(ctx, sub, dagID, run.RunID)
	h.rss.Sample()
	h.runPeak, h.runPeakMeasured = h.rss.Peak() // before this process reads the results

	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	q := store.TaskQuery{DAGIDs: []string{dagID}, DAGRunIDs: []string{run.RunID}}
	if werr == nil && !instances {
		count := func(states ...state.TaskState) (int, error) {
			c := q
			c.States, c.Limit = states, 1
			_, n, err := h.st.ListTaskInstances(lctx, c)
			return n, err
		}
		all, err1 := count()
		ok, err2 := count(state.Success)
		if err := errors.Join(err1, err2); err != nil {
			return RunTiming{}, nil, fmt.Errorf("count task instances: %w", err)
		}
		if all == want && ok == want {
			t, err := TimingOf(run)
			return t, nil, err
		}
	}
	// Read the instances, also when the run did not finish, to say why.
	tis, _, err := h.st.ListTaskInstances(lctx, q)
	if err != nil {
		return RunTiming{}, nil, errors.Join(werr, fmt.Errorf("list task instances: %w", err))
	}
	if werr != nil {
		return RunTiming{}, nil, fmt.Errorf("%w; %v", werr, CheckSucceeded(tis, want))
	}
	if err := CheckSucceeded(tis, want); err != nil {
		return RunTiming{}, nil, fmt.Errorf("run %q of %s: %w", run.RunID, dagID, err)
	}
	t, err := TimingOf(run)
	return t, tis, err
}

// waitRun re-reads the run on every wake-up (and on a safety poll) until
// it has ended.
func (h *harness) waitRun(ctx context.Context, sub store.Subscription, dagID, runID string) (store.Run, error) {
	tick := time.NewTicker(runPoll)
	defer tick.Stop()
	wake := sub.C()
	for {
		run, err := h.st.GetRun(ctx, dagID, runID)
		if err != nil {
			return run, fmt.Errorf("read run %q of %s: %w", runID, dagID, err)
		}
		if run.State.Terminal() {
			return run, nil
		}
		select {
		case <-ctx.Done():
			return run, fmt.Errorf("run %q of %s still %s: %w", runID, dagID, run.State, context.Cause(ctx))
		case _, ok := <-wake:
			if !ok {
				wake = nil
			}
		case <-tick.C:
		}
	}
}

// peak adds the peak memory rows (where memory can be measured) as they
// were when the last run ended.
func (h *harness) peak(m *rowMaker) { addPeak(m, h.runPeak, h.runPeakMeasured) }

// addPeak adds peak_rss_bytes and, where the kernel reports it,
// peak_pss_bytes.
func addPeak(m *rowMaker, mem Memory, measured bool) {
	if !measured {
		return
	}
	m.add(MetricPeakRSSBytes, float64(mem.RSS), UnitBytes)
	if mem.PSS > 0 {
		m.add(MetricPeakPSSBytes, float64(mem.PSS), UnitBytes)
	}
}

// wide: one run of root → n → join; tasks/s from trigger to success.
func (h *harness) wide(ctx context.Context) error {
	n := h.cfg.Sizes.Wide + 2
	t, _, err := h.runOnce(ctx, WideDAGID, n, false)
	if err != nil {
		return err
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	h.work, h.workUnit = n, "task"
	m := h.rowsFor(ScenarioWide)
	m.rate(n, t.Total())
	m.seconds(MetricTotalSeconds, t.Total())
	m.seconds(MetricRunCreationSeconds, t.Creation())
	h.peak(m)
	h.keep(m)
	h.progress("%d tasks in %.3f s: %.0f tasks/s", n, t.Total().Seconds(), float64(n)/t.Total().Seconds())
	return nil
}

// pool: wide's run with its n tasks in a pool of PoolSize slots;
// tasks/s from trigger to success, to compare with wide's.
func (h *harness) pool(ctx context.Context) error {
	n := h.cfg.Sizes.Wide + 2
	t, _, err := h.runOnce(ctx, PoolDAGID, n, false)
	if err != nil {
		return err
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	h.work, h.workUnit = n, "task"
	m := h.rowsFor(ScenarioPool)
	m.rate(n, t.Total())
	m.seconds(MetricTotalSeconds, t.Total())
	h.peak(m)
	h.keep(m)
	h.progress("%d tasks (pool of %d) in %.3f s: %.0f tasks/s", n, PoolSize, t.Total().Seconds(), float64(n)/t.Total().Seconds())
	return nil
}

// chain: n tasks in a line; upstream end → downstream start per edge.
func (h *harness) chain(ctx context.Context) error {
	n := h.cfg.Sizes.Chain
	t, tis, err := h.runOnce(ctx, ChainDAGID, n, true)
	if err != nil {
		return err
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	h.work, h.workUnit = n, "task"
	m := h.rowsFor(ScenarioChain)
	if err := h.edges(m, tis, n); err != nil {
		return err
	}
	m.seconds(MetricTotalSeconds, t.Total())
	h.peak(m)
	h.keep(m)
	h.progress("%d tasks in a line in %.3f s", n, t.Total().Seconds())
	return nil
}

// edges adds the edge latency rows of a line of n tasks.
func (h *harness) edges(m *rowMaker, tis []store.TaskInstance, n int) error {
	lat, err := EdgeLatencies(tis, LineTaskIDs(n))
	if err != nil {
		return err
	}
	d := Summarize(lat)
	m.millis(MetricEdgeLatencyP50, d.P50)
	m.millis(MetricEdgeLatencyP99, d.P99)
	m.millis(MetricEdgeLatencyMax, d.Max)
	return nil
}

// shell: n independent Shell `true` tasks (tasks/s), then a line of Shell
// `true` tasks (total time and edge latency).
func (h *harness) shell(ctx context.Context) error {
	n := h.cfg.Sizes.Shell
	t, _, err := h.runOnce(ctx, ShellDAGID, n, false)
	if err != nil {
		return err
	}
	m := h.rowsFor(ScenarioShell)
	m.rate(n, t.Total())
	m.seconds(MetricTotalSeconds, t.Total())
	h.progress("%d Shell tasks in %.3f s: %.0f tasks/s", n, t.Total().Seconds(), float64(n)/t.Total().Seconds())

	c := h.cfg.Sizes.ShellChain
	ct, tis, err := h.runOnce(ctx, ShellChainDAGID, c, true)
	if err != nil {
		return err
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	h.work, h.workUnit = n+c, "task"
	cm := h.rowsFor(ScenarioShellChain)
	cm.seconds(MetricTotalSeconds, ct.Total())
	if err := h.edges(cm, tis, c); err != nil {
		return err
	}
	h.peak(m)
	h.keep(m)
	h.keep(cm)
	h.progress("%d Shell tasks in a line in %.3f s", c, ct.Total().Seconds())
	return nil
}

// cron: n DAGs on @every 1s; the runs whose intervals end in a window of
// CronDuration are counted and their fire lag measured.
func (h *harness) cron(ctx context.Context) error {
	every := time.Second
	n := h.cfg.Sizes.Cron
	w := NewFireWindow(h.readyAt.Add(cronWarmup), every, int(h.cfg.CronDuration/every))
	h.progress("%d DAGs on @every %s: counting the intervals ending from %s to %s", n, CronEvery,
		w.From.Format("15:04:05"), w.To.Format("15:04:05"))
	timer := time.NewTimer(time.Until(w.To.Add(cronGrace)))
	select {
	case <-ctx.Done():
		timer.Stop()
		return context.Cause(ctx)
	case <-timer.C:
	}
	h.sched.Stop()
	if err := h.stopProfile(); err != nil {
		return err
	}
	m := h.rowsFor(ScenarioCron)
	h.rss.Sample()
	peak, measured := h.rss.Peak() // before reading the runs into this process
	runs, _, err := h.st.ListRuns(ctx, store.RunQuery{})
	if err != nil {
		return fmt.Errorf("list runs: %w", err)
	}
	h.work, h.workUnit = len(runs), "run"
	lags := FireLags(runs, w)
	d := Summarize(lags)
	expected := w.Ends() * n
	m.millis(MetricFireLagP50, d.P50)
	m.millis(MetricFireLagP99, d.P99)
	m.millis(MetricFireLagMax, d.Max)
	m.add(MetricRunsMissed, float64(expected-len(lags)), UnitRuns)
	m.add(MetricRunsCreated, float64(len(lags)), UnitRuns)
	m.add(MetricRunsExpected, float64(expected), UnitRuns)
	addPeak(m, peak, measured)
	h.keep(m)
	h.progress("%d of %d runs created, fire lag p50 %.1f ms, p99 %.1f ms", len(lags), expected,
		float64(d.P50)/float64(time.Millisecond), float64(d.P99)/float64(time.Millisecond))
	return nil
}

// big: one run of n tasks; creation time, completion throughput after
// the run started, memory.
func (h *harness) big(ctx context.Context) error {
	n := h.cfg.Sizes.Big
	t, _, err := h.runOnce(ctx, BigDAGID, n, false)
	if err != nil {
		return err
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	h.work, h.workUnit = n, "task"
	m := h.rowsFor(ScenarioBig)
	m.seconds(MetricDAGSyncSeconds, h.syncTook)
	m.seconds(MetricRunCreationSeconds, t.Creation())
	m.rate(n, t.Execution())
	m.seconds(MetricTotalSeconds, t.Total())
	h.peak(m)
	h.keep(m)
	h.progress("%d tasks: created in %.3f s, executed in %.3f s (%.0f tasks/s)", n, t.Creation().Seconds(),
		t.Execution().Seconds(), float64(n)/t.Execution().Seconds())
	return nil
}
