package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

func init() { addCommand("", newSchedulerCmd) }

// schedulerFlags are the flags of `trellis scheduler`.
type schedulerFlags struct {
	zombieThreshold     time.Duration
	zombieCheckInterval time.Duration
	workerDeadAfter     time.Duration
	fireConcurrency     int
	metrics             metricsFlags
	retention           retentionFlags
	pools               poolFlags
}

func newSchedulerCmd(a *app) *cobra.Command {
	var f schedulerFlags
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Run the scheduler: create runs on schedule and start queued runs",
		Long: `Scheduler records the DAGs of this binary in the database (applying pending
migrations first), then creates the run of every data interval when it ends,
as Airflow does: the run for [start, end) is created at end and its logical
date is start. Catchup(true) DAGs get a run for every interval missed while
no scheduler ran; Catchup(false) DAGs only the latest. Runs beyond a DAG's
MaxActiveRuns wait in state queued and start as others finish. The
scheduler also queues retries when they fall due and fails tasks whose
worker stopped heartbeating (zombies). With --retention (and
--log-retention, or DAGs with dag.Retention) it deletes old finished runs
and logs continuously, in small batches.

Tasks are executed by workers ("trellis worker"), or use "trellis serve",
which runs the scheduler, a worker pool and the API in one process. Several
schedulers may run against one PostgreSQL database for high availability:
each run is created once and each task queued once.

It runs until SIGTERM or SIGINT. Invalid DAGs stop it at start-up with the
full validation report.`,
		Example: `  trellis scheduler --database-url postgres://trellis@db:5432/trellis
  TRELLIS_DATABASE_URL=sqlite:trellis.db trellis scheduler`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.zombieThreshold <= 0 || f.zombieCheckInterval <= 0 || f.workerDeadAfter <= 0 {
				return usagef("--zombie-threshold, --zombie-check-interval and --worker-dead-after must be positive")
			}
			if f.fireConcurrency < 1 {
				return usagef("--fire-concurrency must be at least 1, got %d", f.fireConcurrency)
			}
			if err := f.metrics.resolve(cmd, a); err != nil {
				return err
			}
			if err := f.retention.resolve(cmd, a); err != nil {
				return err
			}
			if err := f.pools.resolve(cmd); err != nil {
				return err
			}
			return a.runScheduler(cmd.Context(), f)
		},
	}
	fs := cmd.Flags()
	fs.DurationVar(&f.zombieThreshold, "zombie-threshold", scheduler.DefaultZombieThreshold,
		"fail a running task whose last heartbeat is older than this")
	fs.DurationVar(&f.workerDeadAfter, "worker-dead-after", scheduler.DefaultWorkerDeadAfter,
		"put back the tasks of a worker process whose own heartbeat is older than this (faster than the zombie threshold after a crash)")
	fs.DurationVar(&f.zombieCheckInterval, "zombie-check-interval", scheduler.DefaultZombieCheckInterval,
		"how often to look for zombie tasks")
	fs.IntVar(&f.fireConcurrency, "fire-concurrency", scheduler.DefaultFireConcurrency,
		"how many DAGs falling due together are fired at once")
	f.metrics.add(fs)
	f.retention.add(fs)
	f.pools.add(fs)
	return cmd
}

// runScheduler runs one scheduler until ctx ends (the signal).
func (a *app) runScheduler(ctx context.Context, f schedulerFlags) error {
	st, err := a.openStore(ctx, true)
	if err != nil {
		return err
	}
	defer st.Close()
	var metrics *api.Metrics
	if f.metrics.addr != "" {
		metrics = api.NewMetrics(a.clock)
	}
	ms, err := a.startMetrics(context.WithoutCancel(ctx), f.metrics, metrics)
	if err != nil {
		return err
	}
	if ms != nil {
		defer ms.Stop()
	}
	cfg := scheduler.Config{
		Store:               st,
		Registry:            a.registry,
		Clock:               a.clock,
		Logger:              a.logger,
		ZombieThreshold:     f.zombieThreshold,
		ZombieCheckInterval: f.zombieCheckInterval,
		WorkerDeadAfter:     f.workerDeadAfter,
		FireConcurrency:     f.fireConcurrency,
		DefaultPoolSlots:    f.pools.slots,
	}
	if metrics != nil {
		cfg.Metrics = metrics // a nil *api.Metrics in the interface would not be nil
	}
	s := scheduler.New(cfg)
	if err := s.Start(ctx); err != nil {
		var inv *scheduler.InvalidDAGsError
		if errors.As(err, &inv) {
			fmt.Fprintf(a.stderr, "the scheduler cannot start: %s:\n", plural(len(inv.Problems), "DAG problem"))
			writeProblems(a.stderr, inv.Problems, "  ")
			return errSilentFailure
		}
		return err
	}
	releaseStartupGarbage()
	var purgeMetrics scheduler.PurgeMetrics
	if metrics != nil {
		purgeMetrics = metrics
	}
	purger := a.newPurger(st, f.retention, purgeMetrics)
	if purger != nil {
		if err := purger.Start(ctx); err != nil {
			s.Stop()
			return err
		}
	}
	<-ctx.Done()
	a.logger.Info("scheduler: shutting down", "reason", context.Cause(ctx))
	if purger != nil {
		purger.Stop()
	}
	s.Stop()
	return nil
}

// openStore opens the configured database, applying pending migrations
// when migrate is set.
func (a *app) openStore(ctx context.Context, migrate bool) (store.Store, error) {
	st, err := dial.Open(ctx, a.config.DatabaseURL, dial.Options{Logger: a.logger, Migrate: migrate})
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", store.RedactURL(a.config.DatabaseURL), err)
	}
	return st, nil
}
