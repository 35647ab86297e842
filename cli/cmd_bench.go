package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/bench"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/executor"
)

func init() { addCommand("", newBenchCmd) }

// benchChildArgs select the worker-child role of a benchmark: `trellis
// bench --child` registers the benchmark DAGs and starts the profiles the
// bench asked for, then runs as a worker child. No other role reads the
// TRELLIS_BENCH_* variables, so the benchmark DAGs and hooks exist only in
// the processes bench starts.
var benchChildArgs = []string{"bench", "--child"}

// benchServeArgs select the server role of the scale scenario: `trellis
// bench --serve` is `trellis serve` with the benchmark DAGs the bench
// named, whose worker processes take the bench's child role.
var benchServeArgs = []string{"bench", "--serve"}

// runBenchServe runs the server of the scale scenario: `trellis serve`
// with its defaults and the configuration of the environment, with only
// the benchmark DAGs (a heap profile on each SIGUSR1 when asked).
func (a *app) runBenchServe(ctx context.Context) error {
	reg := dag.NewRegistry()
	sets, err := bench.RegisterServeFromEnv(reg, a.lookupEnv)
	if err != nil {
		return fmt.Errorf("benchmark DAGs: %w", err)
	}
	a.registry = reg
	a.workerArgs = benchChildArgs
	a.workerEnv = []string{bench.EnvDAGs + "=" + sets}
	if v, ok := a.lookupEnv(bench.EnvHeapProfile); ok && v != "" {
		a.workerEnv = append(a.workerEnv, bench.EnvHeapProfile+"="+v+"-worker")
	}
	if stop := bench.HeapProfileOnSignal(a.lookupEnv, func(format string, args ...any) {
		a.logger.Warn(fmt.Sprintf(format, args...))
	}); stop != nil {
		defer stop()
	}
	serve := newServeCmd(a)
	serve.SetArgs([]string{})
	serve.SetOut(a.stdout)
	serve.SetErr(a.stderr)
	serve.SilenceUsage = true
	return serve.ExecuteContext(ctx)
}

// runBenchChild runs a worker child of `trellis bench`: with only the
// benchmark DAGs the bench named, and with the CPU profile and trace asked
// for by --cpuprofile and --trace, stopped when the child ends.
func (a *app) runBenchChild(ctx context.Context) error {
	reg := dag.NewRegistry()
	if _, err := bench.RegisterFromEnv(reg, a.lookupEnv); err != nil {
		return fmt.Errorf("benchmark DAGs: %w", err)
	}
	a.registry = reg
	stop, err := bench.StartChildProfile(a.lookupEnv)
	if err != nil {
		return err
	}
	if stopHeap := bench.HeapProfileOnSignal(a.lookupEnv, func(format string, args ...any) {
		a.logger.Warn(fmt.Sprintf(format, args...))
	}); stopHeap != nil {
		defer stopHeap()
	}
	runErr := a.runWorkerChild(ctx)
	if stop != nil {
		if err := stop(); err != nil {
			return errors.Join(runErr, fmt.Errorf("worker profile: %w", err))
		}
	}
	return runErr
}

// benchFlags are the flags of `trellis bench`.
type benchFlags struct {
	dbs          []string
	scenarios    []string
	jsonFile     string
	quick        bool
	cronDuration time.Duration
	apiDuration  time.Duration
	apiClients   int
	slots        int
	timeout      time.Duration
	cpuProfile   string
	trace        string
	heapProfile  string
	scaleRuns    []int
	referenceFor time.Duration
	child        bool
	serve        bool
}

func newBenchCmd(a *app) *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the whole server end to end: throughput, latency, schedule lag, memory",
		Long: `Bench runs benchmark scenarios through the real scheduler, store and worker
processes — the pool re-executes this binary, as "trellis serve" does — and
measures them from the times the store records. Scenarios (default: all):

  wide    one run of root → 10,000 no-op Func tasks → join: tasks/s from the
          trigger to the run's success
  pool    wide's run with its 10,000 tasks in a pool of 50 slots (bench_pool):
          tasks/s, to compare with wide's measured in the same invocation
  chain   1,000 no-op Func tasks in a line: latency from an upstream task's
          end to its downstream task's start (p50, p99), and the total
  shell   2,000 independent Shell "true" tasks (tasks/s), then a 100-step
          Shell chain (rows of scenario shell_chain: total seconds)
  cron    1,000 DAGs on "@every 1s" for --cron-duration: fire lag (run
          created − end of its interval) p50 and p99, and runs missed
  big     one DAG of 100,000 tasks: run creation time, completion rate,
          and the peak resident memory of all Trellis processes together
  api     GET …/taskInstances of a 100-task run (finished, then running)
          by --api-clients clients for --api-duration each, over HTTP to
          the API handler of "trellis api", while 10,000-task runs of the
          wide DAG execute one after another: requests/s, latency p50 and
          p99 (rows of scenarios api_finished and api_running), and the
          tasks/s the load kept meanwhile
  deferred 10,000 sensors poking every second, deferred between pokes:
          the CPU of this process and of its workers (and how much of it
          the checks' own work is), the slots in use, the pokes a second
          and how late the latest is, over 10 s once all are deferred;
          then 10,000 tasks deferred on events (the CPU with nothing due,
          10 s), 500 of them
          each resumed by its event: event-to-resume latency p50 and p99
  fib     a task calls the recursive callable fibonacci(200), deduplicated
          (201 calls): seconds from the trigger to the run's success
  calls_wide   a task maps 10,000 calls and sums them: calls/s
  fib_nodedup  fibonacci(20) without dedup (21,891 calls): seconds
  scale   "trellis serve" on a fresh database, and through its API one run
          after another of root → N no-op Func tasks → join for each N of
          --scale-runs (1,000, 10,000, then 100,000 three times): per run
          tasks/s, creation time, peak resident memory of serve and of its
          whole process tree, /metrics size and scrape time, and on
          PostgreSQL the share of HOT updates of task_instances; before it,
          the reference: single-row UPDATE commits/s by 4 clients and the
          commit + NOTIFY round trip of PostgreSQL alone (rows of scenario
          pgbench), which each run's rate is divided by

Every scenario runs on every --db (default: SQLite in a temporary directory,
then PostgreSQL at ` + bench.DefaultPostgresURL + `), each time on
a fresh database — a new PostgreSQL database (the user needs CREATEDB) or a
new SQLite file — with a scheduler and --workers worker processes of its
own; the database is dropped afterwards. The results are printed as a table,
with the targets of the project where they apply, and with --json written
as rows of {"scenario", "store", "metric", "value", "unit", "cpus"}. On
PostgreSQL the rows also count the transactions and row writes per task
(from pg_stat_database). --cpuprofile and --trace record where the time
goes (docs/benchmarks.md shows how to read them).

The benchmark DAGs (ids starting with "bench_") exist only in the worker
processes bench starts. It exits 1 when a scenario fails; a missed target
is reported, not an error.`,
		Example: `  trellis bench
  trellis bench --db postgres --scenario wide --scenario chain --json results.json
  trellis bench --db sqlite:/var/tmp/bench --quick
  trellis bench --db postgres://bench@db:5432/postgres --cpuprofile profiles/`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.child {
				return a.runBenchChild(cmd.Context())
			}
			if f.serve {
				return a.runBenchServe(cmd.Context())
			}
			cfg, err := f.config(cmd, a)
			if err != nil {
				return err
			}
			return a.runBench(cmd.Context(), f, cfg)
		},
	}
	fs := cmd.Flags()
	fs.StringArrayVar(&f.dbs, "db", nil,
		"database to run on, repeatable: sqlite (a temporary directory), sqlite:DIR, postgres ("+bench.DefaultPostgresURL+
			") or a postgres:// server URL (default: sqlite and postgres)")
	fs.StringArrayVar(&f.scenarios, "scenario", nil,
		"scenario to run, repeatable or comma-separated: "+strings.Join(bench.Scenarios, ", ")+" (default: all)")
	fs.StringVar(&f.jsonFile, "json", "", "also write the result rows to this file as a JSON array")
	fs.BoolVar(&f.quick, "quick", false, "small sizes and a 3 s cron window: checks that everything works in seconds (numbers not comparable)")
	fs.DurationVar(&f.cronDuration, "cron-duration", bench.DefaultCronDuration,
		"how many seconds of schedule firings the cron scenario counts (whole seconds)")
	fs.DurationVar(&f.apiDuration, "api-duration", bench.DefaultAPIDuration,
		"how long the api scenario sends requests for each of its two runs")
	fs.IntVar(&f.apiClients, "api-clients", bench.DefaultAPIClients, "how many clients the api scenario runs at once")
	fs.IntVar(&f.slots, "slots", executor.DefaultSlots, "tasks each worker process runs at once")
	fs.DurationVar(&f.timeout, "timeout", bench.DefaultTimeout, "give up on a scenario on one database after this long (scale: on one of its runs)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write CPU profiles of this process and of every worker process, per scenario and store, into this directory")
	fs.StringVar(&f.trace, "trace", "", "write execution traces (runtime/trace) of this process and of every worker process, per scenario and store, into this directory")
	fs.StringVar(&f.heapProfile, "heapprofile", "", "write a heap profile of the scale scenario's server after each of its runs into this directory")
	fs.IntSliceVar(&f.scaleRuns, "scale-runs", bench.DefaultScaleRuns,
		"sizes (parallel tasks) of the scale scenario's runs, one after another on one server")
	fs.DurationVar(&f.referenceFor, "reference-duration", bench.DefaultReferenceFor,
		"how long the scale scenario's reference (PostgreSQL alone) commits single-row UPDATEs")
	fs.BoolVar(&f.child, "child", false, "run as one worker process of a benchmark (internal)")
	fs.BoolVar(&f.serve, "serve", false, "run as the server of the scale scenario (internal)")
	_ = fs.MarkHidden("child")
	_ = fs.MarkHidden("serve")
	return cmd
}

// config checks the flags and returns the benchmark's configuration.
func (f *benchFlags) config(cmd *cobra.Command, a *app) (bench.Config, error) {
	var dbs []bench.DB
	for _, v := range f.dbs {
		db, err := bench.ParseDB(v)
		if err != nil {
			return bench.Config{}, usagef("%v", err)
		}
		dbs = append(dbs, db)
	}
	if len(dbs) == 0 {
		dbs = bench.DefaultDBs()
	}
	scenarios, err := bench.ParseScenarios(f.scenarios)
	if err != nil {
		return bench.Config{}, usagef("--scenario: %v", err)
	}
	sizes, cron, apiFor := bench.DefaultSizes(), f.cronDuration, f.apiDuration
	scaleRuns, refFor := f.scaleRuns, f.referenceFor
	if f.quick {
		sizes = bench.QuickSizes()
		if !cmd.Flags().Changed("scale-runs") {
			scaleRuns = bench.QuickScaleRuns
		}
		if !cmd.Flags().Changed("reference-duration") {
			refFor = bench.QuickReferenceFor
		}
		if !cmd.Flags().Changed("cron-duration") {
			cron = bench.QuickCronDuration
		}
		if !cmd.Flags().Changed("api-duration") {
			apiFor = bench.QuickAPIDuration
		}
	}
	switch {
	case cron < time.Second || cron%time.Second != 0:
		return bench.Config{}, usagef("--cron-duration %v: want whole seconds, at least 1s", cron)
	case apiFor <= 0:
		return bench.Config{}, usagef("--api-duration must be positive, got %v", apiFor)
	case f.apiClients < 1:
		return bench.Config{}, usagef("--api-clients must be at least 1, got %d", f.apiClients)
	case f.slots < 1:
		return bench.Config{}, usagef("--slots must be at least 1, got %d", f.slots)
	case f.timeout <= 0:
		return bench.Config{}, usagef("--timeout must be positive, got %v", f.timeout)
	case refFor <= 0:
		return bench.Config{}, usagef("--reference-duration must be positive, got %v", refFor)
	}
	for _, n := range scaleRuns {
		if n < 1 || n > bench.MaxSize {
			return bench.Config{}, usagef("--scale-runs: %d tasks: want 1 to %d", n, bench.MaxSize)
		}
	}

	// The scheduler and the pools log at info on every start and stop;
	// unless a level was asked for, keep the benchmark's output to its
	// progress lines and to warnings.
	level := a.config.LogLevel
	if !levelChosen(cmd, a) {
		level = max(level, slog.LevelWarn)
	}
	logCfg := a.config
	logCfg.LogLevel = level
	return bench.Config{
		DBs:            dbs,
		Scenarios:      scenarios,
		Sizes:          sizes,
		CronDuration:   cron,
		APIDuration:    apiFor,
		APIClients:     f.apiClients,
		Workers:        a.config.Workers,
		Slots:          f.slots,
		ChildArgs:      benchChildArgs,
		ServeArgs:      benchServeArgs,
		ScaleRuns:      scaleRuns,
		ReferenceFor:   refFor,
		HeapProfileDir: f.heapProfile,
		ChildEnv:       []string{"TRELLIS_LOG_LEVEL=" + level.String(), "TRELLIS_LOG_FORMAT=" + a.config.LogFormat},
		CPUProfileDir:  f.cpuProfile,
		TraceDir:       f.trace,
		Timeout:        f.timeout,
		Logger:         logCfg.Logger(a.stderr),
		Progress:       a.stderr,
		ChildOutput:    a.stderr,
	}, nil
}

// levelChosen reports whether the log level was given by flag or
// environment.
func levelChosen(cmd *cobra.Command, a *app) bool {
	if cmd.Flags().Changed(flagLogLevel) || cmd.Root().PersistentFlags().Changed(flagLogLevel) {
		return true
	}
	if a.lookupEnv == nil {
		return false
	}
	v, ok := a.lookupEnv("TRELLIS_LOG_LEVEL")
	return ok && v != ""
}

// runBench runs the benchmark and reports it: the table on stdout, the
// rows in --json. The rows measured are reported even when a scenario
// failed; the command then exits 1.
func (a *app) runBench(ctx context.Context, f benchFlags, cfg bench.Config) error {
	dbs := make([]string, len(cfg.DBs))
	for i, db := range cfg.DBs {
		dbs[i] = db.String()
	}
	size := "full size"
	if f.quick {
		size = "quick sizes"
	}
	fmt.Fprintf(a.stderr, "bench: %s on %s; %d CPUs, %d worker processes × %d slots, %s\n",
		strings.Join(cfg.Scenarios, ", "), strings.Join(dbs, " and "), runtime.NumCPU(), cfg.Workers, cfg.Slots, size)
	began := time.Now()
	rows, runErr := bench.Run(ctx, cfg)

	fmt.Fprintf(a.stdout, "trellis bench %s, %s, %d CPUs, %d worker processes × %d slots, took %.0f s\n",
		time.Now().UTC().Format(time.RFC3339), size, runtime.NumCPU(), cfg.Workers, cfg.Slots, time.Since(began).Seconds())
	if err := bench.WriteTable(a.stdout, rows, !f.quick); err != nil {
		return err
	}
	if f.jsonFile != "" {
		if err := writeRowsFile(f.jsonFile, rows); err != nil {
			return errors.Join(runErr, err)
		}
	}
	if runErr != nil {
		return &exitError{code: 1, err: runErr}
	}
	return nil
}

// writeRowsFile writes rows as JSON to path.
func writeRowsFile(path string, rows []bench.Row) error {
	file, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	if err := bench.WriteJSON(file, rows); err != nil {
		_ = file.Close()
		return fmt.Errorf("--json %s: %w", path, err)
	}
	if err := file.Close(); err != nil {
		return fmt.Errorf("--json %s: %w", path, err)
	}
	return nil
}
