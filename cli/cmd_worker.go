package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

func init() { addCommand("", newWorkerCmd) }

// workerFlags are the flags of `trellis worker`.
type workerFlags struct {
	processes int
	slots     int
	grace     time.Duration
	spoolDir  string
	memory    memSize
	killGrace time.Duration
	heartbeat time.Duration
	maxLeaks  int
	hostname  string
	child     bool
	metrics   metricsFlags
}

// envWorkerSlots is the environment variable of --slots.
const envWorkerSlots = "TRELLIS_WORKER_SLOTS"

func newWorkerCmd(a *app) *cobra.Command {
	var f workerFlags
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a pool of worker processes that execute queued tasks",
		Long: `Worker starts --processes worker processes — this binary re-executed in a
worker role, so the Go functions of the compiled-in DAGs are there — and
supervises them. Each process runs up to --slots tasks at once, claimed from
the database as they become ready. A process that dies is restarted with
backoff and the tasks it was running are failed at once (retried while
tries remain).

Run it on other hosts against the same PostgreSQL database to spread the
work; every host needs the same build of the binary. With SQLite, workers
must run on the host that holds the database file (a database file on a
network file system is refused).

On SIGTERM or SIGINT the pool stops claiming, lets running tasks finish
within --grace, then stops them and puts them back in the queue without
using up a try. A second signal stops them at once.`,
		Example: `  trellis worker --database-url postgres://trellis@db:5432/trellis --processes 4 --slots 8
  TRELLIS_DATABASE_URL=postgres://trellis@db:5432/trellis TRELLIS_WORKERS=2 trellis worker`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.child {
				return a.runWorkerChild(cmd.Context())
			}
			if err := f.resolve(cmd, a); err != nil {
				return err
			}
			return a.runWorkerPool(cmd.Context(), f)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&f.processes, "processes", 0, "worker processes (default the --workers value: TRELLIS_WORKERS or the CPU count)")
	fs.IntVar(&f.slots, "slots", executor.DefaultSlots, "tasks each worker process runs at once (env "+envWorkerSlots+")")
	fs.DurationVar(&f.grace, "grace", executor.DefaultGrace, "on shutdown, how long running tasks may finish before they are stopped and requeued")
	fs.DurationVar(&f.killGrace, "kill-grace", executor.DefaultKillGrace, "wait between SIGTERM and SIGKILL when stopping a shell task, and before abandoning a Func task that ignores its context")
	fs.DurationVar(&f.heartbeat, "heartbeat-interval", executor.DefaultHeartbeatInterval, "how often workers heartbeat their tasks (keep well below the scheduler's zombie threshold)")
	fs.IntVar(&f.maxLeaks, "max-leaks", executor.DefaultMaxLeaks, "Func tasks abandoned after ignoring their timeout before a worker process is replaced (negative: never)")
	fs.Var(&f.memory, "worker-memory", "cap each worker process's memory (data segment, RLIMIT_DATA; Linux) at this size, e.g. 2GiB; a task going over kills its worker, and a try doing so twice in a row is failed (default no limit)")
	fs.StringVar(&f.spoolDir, "spool-dir", "", "folder where a worker stopping while the database is unavailable keeps the results it could not record, delivered at the next start (default $XDG_STATE_HOME/trellis/spool or ~/.local/state/trellis/spool; - for none)")
	fs.StringVar(&f.hostname, "hostname", "", "host name recorded with this pool's workers and tasks (default the system host name)")
	f.metrics.add(fs)
	fs.BoolVar(&f.child, "child", false, "run as one worker process of a pool (internal)")
	_ = fs.MarkHidden("child")
	return cmd
}

// resolve fills defaults from the configuration and environment and checks
// the values.
func (f *workerFlags) resolve(cmd *cobra.Command, a *app) error {
	if !cmd.Flags().Changed("processes") {
		f.processes = a.config.Workers
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
	switch {
	case f.processes < 1:
		return usagef("--processes must be at least 1, got %d", f.processes)
	case f.slots < 1:
		return usagef("--slots must be at least 1, got %d", f.slots)
	case f.grace < 0 || f.killGrace < 0:
		return usagef("--grace and --kill-grace must not be negative")
	case f.heartbeat <= 0:
		return usagef("--heartbeat-interval must be positive, got %v", f.heartbeat)
	}
	return f.metrics.resolve(cmd, a)
}

// runWorkerPool runs a Pool until the first SIGTERM/SIGINT (graceful
// stop) or the second (halt).
func (a *app) runWorkerPool(ctx context.Context, f workerFlags) error {
	// Catch signals ourselves too: the context only reports the first.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	url := a.config.DatabaseURL
	if err := checkWorkerDatabase(url); err != nil {
		return err
	}
	st, err := a.openStore(ctx, true)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer st.Close()

	metrics := api.NewMetrics(a.clock)
	metrics.SetTaskSeries(perTaskSeries(a.registry))
	pool, err := executor.NewPool(executor.PoolConfig{
		Store:             st,
		DatabaseURL:       url,
		Events:            taskMetrics{metrics},
		Logger:            a.logger,
		Processes:         f.processes,
		Slots:             f.slots,
		Hostname:          f.hostname,
		Args:              executor.ChildArgs,
		Env:               []string{"TRELLIS_LOG_LEVEL=" + a.config.LogLevel.String(), "TRELLIS_LOG_FORMAT=" + a.config.LogFormat},
		Stdout:            a.stderr,
		Stderr:            a.stderr,
		Grace:             f.grace,
		KillGrace:         f.killGrace,
		HeartbeatInterval: f.heartbeat,
		MaxLeaks:          f.maxLeaks,
		SpoolDir:          f.spoolDir,
		MemoryLimit:       int64(f.memory),
	})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	ms, err := a.startMetrics(context.WithoutCancel(ctx), f.metrics, metrics)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if ms != nil {
		defer ms.Stop()
		gauges := &poolGauges{pool: pool, metrics: metrics, clk: a.clock}
		_ = gauges.Start(context.WithoutCancel(ctx))
		defer gauges.Stop()
	}
	if err := pool.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	done := ctx.Done()
	signals := 0
	for {
		select {
		case <-pool.Done():
			return nil
		case <-done:
			done = nil
			go pool.Stop()
		case s := <-sigs:
			signals++
			if signals == 1 {
				a.logger.Info("stopping: running tasks get the grace period; send the signal again to stop them now", "signal", s.String(), "grace", f.grace)
				go pool.Stop()
				continue
			}
			a.logger.Info("stopping now: running tasks are stopped and requeued", "signal", s.String())
			pool.Halt()
		}
	}
}

// checkWorkerDatabase refuses a SQLite database on a network file
// system: SQLite's locking is not reliable there, so workers on several
// hosts sharing one file would corrupt it. Workers on other hosts need
// PostgreSQL.
func checkWorkerDatabase(url string) error {
	backend, path, err := dial.ParseURL(url)
	if err != nil || backend != dial.SQLite {
		return nil // dial.Open reports bad URLs
	}
	if fs := networkFilesystem(path); fs != "" {
		return usagef("the SQLite database %s is on a network file system, %s: SQLite workers must run on the host "+
			"that holds the database file; to run workers on other hosts use PostgreSQL (--database-url postgres://…)", path, fs)
	}
	return nil
}

// runWorkerChild is the hidden worker-child role a Pool starts: one
// executor.Worker configured by the environment the pool set.
func (a *app) runWorkerChild(ctx context.Context) error {
	cfg, ch, err := executor.LoadChild(a.lookupEnv, a.logger)
	if err != nil {
		return usagef("worker --child is started by `trellis worker` and `trellis serve`: %v", err)
	}
	executor.ApplyChildProcs(cfg, a.lookupEnv)
	// RunChild and the Worker label their own lines with worker=<id>; the
	// lines logged here get it from this logger.
	logger := a.logger.With("worker", cfg.WorkerID)
	// A stop signal while the database is being opened ends the child at
	// once: nothing has started, nothing is to drain.
	var st store.Store
	err = ch.WithConnEnv(func() (err error) {
		st, err = dial.Open(ctx, cfg.DatabaseURL, dial.Options{Logger: logger})
		return err
	})
	if err != nil {
		ch.Close()
		if ctx.Err() != nil {
			logger.Info("worker process stopped before it started", "cause", context.Cause(ctx))
			return nil
		}
		return &exitError{code: executor.ExitError, err: fmt.Errorf("worker process %s: %w", cfg.WorkerID, err)}
	}
	defer st.Close()
	releaseStartupGarbage() // building the DAGs' registry
	defer executor.KeepGCHeadroom(executor.ChildGCHeadroom, a.lookupEnv)()
	// The command's context ends on the first signal, even one that
	// arrives before RunChild installs its own handler: RunChild takes
	// that as the graceful stop and runs the worker on a context of its
	// own, so a second signal halts.
	code := executor.RunChild(ctx, executor.ChildOptions{
		Config:   cfg,
		Store:    st,
		Registry: a.registry,
		Logger:   a.logger,
		Channel:  ch,
	})
	if code != executor.ExitOK {
		return &exitError{code: code}
	}
	return nil
}
