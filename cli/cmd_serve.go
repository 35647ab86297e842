package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/store"
)

func init() { addCommand("", newServeCmd) }

// serveFlags are the flags of `trellis serve`.
type serveFlags struct {
	apiFlags
	slots               int
	grace               time.Duration
	killGrace           time.Duration
	spoolDir            string
	memory              memSize
	memoryLimit         memLimit
	zombieThreshold     time.Duration
	zombieCheckInterval time.Duration
	workerDeadAfter     time.Duration
	metricsInterval     time.Duration
	retention           retentionFlags
	pools               poolFlags
}

func newServeCmd(a *app) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the whole server: scheduler, worker pool, REST API and metrics",
		Long: `Serve runs everything Trellis needs in one process tree, against the database
of --database-url (default sqlite:trellis.db in the working directory,
created and migrated on start; an unreachable PostgreSQL server is retried
for --connect-timeout):

  - the scheduler, which records the DAGs of this binary and creates their
    runs on schedule (see "trellis scheduler");
  - a pool of --workers worker processes running up to --slots tasks each
    (see "trellis worker");
  - the Airflow-compatible REST API under /api/v1 and the Prometheus
    metrics at /metrics, on --addr (see "trellis api" and docs/api.md);
  - the web UI at / on the same address (with a token it asks for it once
    and keeps it in an HttpOnly cookie).

It prints the URL it serves on. With a token (--api-token,
TRELLIS_API_TOKEN) every request but GET /api/v1/health needs
"Authorization: Bearer <token>"; without one it only listens on a loopback
address, unless --insecure-no-auth is given.

On SIGTERM or SIGINT it stops accepting API requests, stops the scheduler,
lets running tasks finish within --grace (the rest are stopped and queued
again without using up a try), and exits 0. A second signal stops running
tasks at once.`,
		Example: `  trellis serve
  trellis serve --addr 127.0.0.1:9090 --workers 4
  TRELLIS_DATABASE_URL=postgres://trellis@db:5432/trellis TRELLIS_API_TOKEN=$(openssl rand -hex 32) trellis serve --addr 0.0.0.0:8080`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.resolve(cmd, a); err != nil {
				return err
			}
			return a.runServe(cmd.Context(), f)
		},
	}
	fs := cmd.Flags()
	f.add(fs)
	fs.IntVar(&f.slots, "slots", executor.DefaultSlots, "tasks each worker process runs at once (env "+envWorkerSlots+")")
	fs.DurationVar(&f.grace, "grace", executor.DefaultGrace, "on shutdown, how long running tasks may finish before they are stopped and queued again")
	fs.DurationVar(&f.killGrace, "kill-grace", executor.DefaultKillGrace, "wait between SIGTERM and SIGKILL when stopping a shell task")
	fs.Var(&f.memory, "worker-memory", "cap each worker process's memory (data segment, RLIMIT_DATA; Linux) at this size, e.g. 2GiB; a task going over kills its worker, and a try doing so twice in a row is failed (default no limit)")
	f.memoryLimit = memLimit{auto: true}
	fs.Var(&f.memoryLimit, "memory-limit", "soft limit on the memory of serve and its worker processes together, e.g. 512MiB: each process's Go runtime gets an equal share and collects garbage more often near it (nothing is killed; --worker-memory, when given, sets the workers' own); auto = 3/4 of the memory available (cgroup limit or RAM), 0 = none; a GOMEMLIMIT in the environment wins (env "+envMemoryLimit+")")
	fs.StringVar(&f.spoolDir, "spool-dir", "", "folder where a worker stopping while the database is unavailable keeps the results it could not record, delivered at the next start (default $XDG_STATE_HOME/trellis/spool or ~/.local/state/trellis/spool; - for none)")
	fs.DurationVar(&f.zombieThreshold, "zombie-threshold", scheduler.DefaultZombieThreshold,
		"fail a running task whose last heartbeat is older than this")
	fs.DurationVar(&f.workerDeadAfter, "worker-dead-after", scheduler.DefaultWorkerDeadAfter,
		"put back the tasks of a worker process whose own heartbeat is older than this (faster than the zombie threshold after a crash)")
	fs.DurationVar(&f.zombieCheckInterval, "zombie-check-interval", scheduler.DefaultZombieCheckInterval,
		"how often to look for zombie tasks")
	fs.DurationVar(&f.metricsInterval, "metrics-interval", defaultMetricsInterval,
		"how often the trellis_task_instances gauge is counted in the database")
	f.retention.add(fs)
	f.pools.add(fs)
	return cmd
}

// resolve fills defaults from the environment and checks the values.
func (f *serveFlags) resolve(cmd *cobra.Command, a *app) error {
	if err := f.check(a.config); err != nil {
		return err
	}
	if !cmd.Flags().Changed("slots") && a.lookupEnv != nil {
		if v, ok := a.lookupEnv(envWorkerSlots); ok && v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return usagef("environment variable %s=%q is not a number", envWorkerSlots, v)
			}
			f.slots = n
		}
	}
	if !cmd.Flags().Changed("memory-limit") && a.lookupEnv != nil {
		if v, ok := a.lookupEnv(envMemoryLimit); ok && v != "" {
			if err := f.memoryLimit.Set(v); err != nil {
				return usagef("environment variable %s: %v", envMemoryLimit, err)
			}
		}
	}
	switch {
	case f.slots < 1:
		return usagef("--slots must be at least 1, got %d", f.slots)
	case f.grace < 0 || f.killGrace < 0:
		return usagef("--grace and --kill-grace must not be negative")
	case f.zombieThreshold <= 0 || f.zombieCheckInterval <= 0 || f.workerDeadAfter <= 0:
		return usagef("--zombie-threshold, --zombie-check-interval and --worker-dead-after must be positive")
	case f.metricsInterval <= 0:
		return usagef("--metrics-interval must be positive, got %v", f.metricsInterval)
	}
	if err := f.pools.resolve(cmd); err != nil {
		return err
	}
	if err := f.retention.resolve(cmd, a); err != nil {
		return err
	}
	return checkWorkerDatabase(a.config.DatabaseURL)
}

// component is a part of the server with a start and a stop.
type component interface {
	Start(ctx context.Context) error
	Stop()
}

// server is what runServe starts, in the order it stops them.
type server struct {
	api      *api.Server
	sched    *scheduler.Scheduler
	pool     *executor.Pool
	feeders  []component // metric feeders and the purger: stopped after the pool
	shutdown chan struct{}
}

// runServe runs the server until the first SIGTERM/SIGINT (or the end of
// ctx), then shuts it down in order; a second signal halts the running
// tasks instead of waiting for them.
func (a *app) runServe(ctx context.Context, f serveFlags) error {
	// Catch the signals here too: ctx only reports the first one.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	st, err := a.openServingStore(ctx, f.apiFlags)
	if err != nil {
		return err
	}
	defer st.Close()

	// The components run on a context of their own: they are stopped in
	// order below, not all at once by the signal.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	srv, err := a.startServer(runCtx, st, f)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "trellis: serving on %s (store %s, %s)\n", srv.api.URL(), store.RedactURL(a.config.DatabaseURL),
		plural(a.config.Workers, "worker"))
	a.printEndpoints(srv.api.URL())

	// The first signal (ctx ends with it) stops gracefully; one more
	// halts the running tasks. The first signal may arrive on both ctx
	// and sigs, so only sigs are counted.
	stopping := false
	begin := func() {
		if stopping {
			return
		}
		stopping = true
		a.logger.Info("serve: shutting down: running tasks get the grace period; send the signal again to stop them now", "grace", f.grace)
		go srv.stop(a)
	}
	done, signals := ctx.Done(), 0
	for {
		select {
		case <-done:
			done = nil
			begin()
		case s := <-sigs:
			signals++
			if signals == 1 {
				begin()
				continue
			}
			a.logger.Info("serve: stopping now: running tasks are stopped and queued again", "signal", s.String())
			srv.pool.Halt()
		case <-srv.shutdown:
			a.logger.Info("serve: stopped")
			return nil
		}
	}
}

// startServer builds and starts every component. On an error it stops
// what it started.
func (a *app) startServer(ctx context.Context, st store.Store, f serveFlags) (*server, error) {
	metrics := api.NewMetrics(a.clock)
	metrics.SetTaskSeries(perTaskSeries(a.registry))
	sched := scheduler.New(scheduler.Config{
		Store:               st,
		Registry:            a.registry,
		Clock:               a.clock,
		Logger:              a.logger,
		ZombieThreshold:     f.zombieThreshold,
		ZombieCheckInterval: f.zombieCheckInterval,
		DefaultPoolSlots:    f.pools.slots,
		WorkerDeadAfter:     f.workerDeadAfter,
		Metrics:             metrics,
	})
	trigger := api.TriggerFunc(func(ctx context.Context, dagID string, r api.TriggerRequest) (store.Run, error) {
		opts := scheduler.TriggerOptions{RunID: r.RunID, LogicalDate: r.LogicalDate, Conf: r.Conf, Note: r.Note}
		if r.IntervalStart != nil && r.IntervalEnd != nil {
			opts.DataInterval = &scheduler.Interval{Start: *r.IntervalStart, End: *r.IntervalEnd}
		}
		return sched.TriggerRun(ctx, dagID, opts)
	})
	httpSrv, err := a.newAPIServer(st, metrics, trigger, sched, f.apiFlags)
	if err != nil {
		return nil, err
	}

	childArgs := executor.ChildArgs
	if a.workerArgs != nil {
		childArgs = a.workerArgs
	}
	workerEnv := append([]string{"TRELLIS_LOG_LEVEL=" + a.config.LogLevel.String(), "TRELLIS_LOG_FORMAT=" + a.config.LogFormat},
		a.workerEnv...)
	_, gomemlimit := os.LookupEnv(envGoMemLimit) // the runtime reads the real environment, and the workers inherit it
	if share := serveMemoryShare(f.memoryLimit, availableMemory, a.config.Workers, gomemlimit); share > 0 {
		debug.SetMemoryLimit(share)
		// Appended last: a child's environment keeps the last value of a
		// variable, and the pool adds its own after these for --worker-memory.
		workerEnv = append(workerEnv, envGoMemLimit+"="+strconv.FormatInt(share, 10))
		a.logger.Info("serve: soft memory limit per process", "bytes", share, "processes", a.config.Workers+1)
	}
	pool, err := executor.NewPool(executor.PoolConfig{
		Store:       st,
		DatabaseURL: a.config.DatabaseURL,
		Events:      taskMetrics{metrics},
		Clock:       a.clock,
		Logger:      a.logger,
		Processes:   a.config.Workers,
		Slots:       f.slots,
		Args:        childArgs,
		Env:         workerEnv,
		Stdout:      a.stderr,
		Stderr:      a.stderr,
		Grace:       f.grace,
		KillGrace:   f.killGrace,
		SpoolDir:    f.spoolDir,
		MemoryLimit: int64(f.memory),
	})
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	gauges := &poolGauges{pool: pool, metrics: metrics, clk: a.clock}

	srv := &server{api: httpSrv, sched: sched, pool: pool, shutdown: make(chan struct{})}
	srv.feeders = []component{
		gauges,
		newRunWatcher(st, metrics, a.clock, a.logger, f.metricsInterval),
		&stateSampler{st: st, metrics: metrics, clk: a.clock, log: a.logger, interval: f.metricsInterval},
	}
	if p := a.newPurger(st, f.retention, metrics); p != nil {
		srv.feeders = append(srv.feeders, p)
	}

	// The scheduler first: it validates the DAGs and records them, so
	// the API and the workers find them.
	if err := sched.Start(ctx); err != nil {
		var inv *scheduler.InvalidDAGsError
		if errors.As(err, &inv) {
			fmt.Fprintf(a.stderr, "the server cannot start: %s:\n", plural(len(inv.Problems), "DAG problem"))
			writeProblems(a.stderr, inv.Problems, "  ")
			return nil, errSilentFailure
		}
		return nil, fmt.Errorf("serve: %w", err)
	}
	releaseStartupGarbage()
	for _, c := range srv.feeders {
		if err := c.Start(ctx); err != nil {
			sched.Stop()
			srv.stopAfterPool() // Stop of a feeder not started does nothing
			return nil, fmt.Errorf("serve: start metrics: %w", err)
		}
	}
	// Listen before starting the workers: a taken port fails the start
	// before any process is spawned.
	if err := httpSrv.Start(ctx); err != nil {
		sched.Stop()
		srv.stopAfterPool()
		return nil, fmt.Errorf("serve: %w", err)
	}
	if err := pool.Start(ctx); err != nil {
		httpSrv.Stop()
		sched.Stop()
		srv.stopAfterPool()
		return nil, fmt.Errorf("serve: %w", err)
	}
	return srv, nil
}

// stop shuts the server down in order: no new API requests (those in
// flight finish), no new runs, the workers finish or requeue their tasks,
// then the metric feeders. It closes s.shutdown when done.
func (s *server) stop(a *app) {
	defer close(s.shutdown)
	s.api.Stop()
	a.logger.Info("serve: API stopped")
	s.sched.Stop()
	s.pool.Stop()
	s.stopAfterPool()
}

// stopAfterPool stops the metric feeders.
func (s *server) stopAfterPool() {
	for _, c := range s.feeders {
		c.Stop()
	}
}

// releaseStartupGarbage returns the memory freed since the process
// started to the operating system at once. Recording the DAGs allocates
// several times their size (specs, fingerprints, rows to write), all
// garbage once recorded; left to the runtime's background scavenger, a
// server with large DAGs kept it resident for minutes (docs/benchmarks.md,
// scale). One collection of a heap that holds little more than the DAGs.
func releaseStartupGarbage() { debug.FreeOSMemory() }
