package bench

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/store"
)

// Scenario names, in the order Run runs them.
const (
	ScenarioWide  = "wide"
	ScenarioChain = "chain"
	ScenarioShell = "shell"
	ScenarioCron  = "cron"
	ScenarioBig   = "big"
	ScenarioAPI   = "api"
	// ScenarioDeferred: sensors deferred between pokes, tasks resumed by
	// events.
	ScenarioDeferred = "deferred"
	// Tasks that call tasks (issue 12).
	ScenarioFib        = "fib"
	ScenarioCallsWide  = "calls_wide"
	ScenarioFibNoDedup = "fib_nodedup"
	ScenarioScale      = "scale"
	ScenarioPool       = "pool"
)

// Scenarios lists every scenario in the order Run runs them.
var Scenarios = []string{ScenarioWide, ScenarioPool, ScenarioChain, ScenarioShell, ScenarioCron, ScenarioBig, ScenarioAPI, ScenarioScale,
	ScenarioDeferred, ScenarioFib, ScenarioCallsWide, ScenarioFibNoDedup}

// ScenarioShellChain is the scenario name of the rows of the shell
// scenario's second part, the Shell chain.
const ScenarioShellChain = "shell_chain"

// Sizes are the sizes of the scenarios' DAGs.
type Sizes struct {
	Wide       int // tasks between root and join
	Chain      int // tasks in the Func chain
	Shell      int // independent Shell tasks
	ShellChain int // tasks in the Shell chain
	Cron       int // DAGs on @every 1s
	Big        int // tasks of the big DAG, root and join included
	Watch      int // tasks of the run the api scenario reads
	Deferred   int // sensors of the deferred scenario
	Resume     int // tasks the deferred scenario resumes by events
	Fib        int // n of fib(n) with dedup
	CallsWide  int // calls one task maps
	FibNoDedup int // n of fib(n) without dedup
}

// DefaultSizes are the sizes of issue 7.
func DefaultSizes() Sizes {
	return Sizes{Wide: 10_000, Chain: 1_000, Shell: 2_000, ShellChain: 100, Cron: 1_000, Big: 100_000, Watch: 100,
		Deferred: 10_000, Resume: 10_000, Fib: 200, CallsWide: 10_000, FibNoDedup: 20}
}

// QuickSizes are small sizes that run every scenario in seconds, to check
// that the benchmark works (`trellis bench --quick`).
func QuickSizes() Sizes {
	return Sizes{Wide: 200, Chain: 30, Shell: 40, ShellChain: 10, Cron: 20, Big: 2_000, Watch: 20,
		Deferred: 200, Resume: 20, Fib: 20, CallsWide: 200, FibNoDedup: 8}
}

// DefaultCronDuration is how long the cron scenario measures.
const DefaultCronDuration = 30 * time.Second

// QuickCronDuration is the cron duration of --quick.
const QuickCronDuration = 3 * time.Second

// DefaultAPIDuration is how long the api scenario sends requests for
// each of its two runs; DefaultAPIClients how many clients send them.
const (
	DefaultAPIDuration = 10 * time.Second
	QuickAPIDuration   = time.Second
	DefaultAPIClients  = 16
)

// DefaultTimeout bounds one scenario on one store.
const DefaultTimeout = 5 * time.Minute

// sets returns the DAG sets scenario needs.
func (s Sizes) sets(scenario string) ([]DAGSet, error) {
	switch scenario {
	case ScenarioWide:
		return []DAGSet{{ShapeWide, s.Wide}}, nil
	case ScenarioPool:
		return []DAGSet{{ShapePool, s.Wide}}, nil
	case ScenarioChain:
		return []DAGSet{{ShapeChain, s.Chain}}, nil
	case ScenarioShell:
		return []DAGSet{{ShapeShell, s.Shell}, {ShapeShellChain, s.ShellChain}}, nil
	case ScenarioCron:
		return []DAGSet{{ShapeCron, s.Cron}}, nil
	case ScenarioBig:
		return []DAGSet{{ShapeBig, s.Big}}, nil
	case ScenarioAPI:
		return []DAGSet{{ShapeWide, s.Wide}, {ShapeWatch, s.Watch}}, nil
	case ScenarioDeferred:
		return []DAGSet{{ShapeSensors, s.Deferred}, {ShapeResume, s.Resume}}, nil
	case ScenarioFib:
		return []DAGSet{{ShapeFib, s.Fib}}, nil
	case ScenarioCallsWide:
		return []DAGSet{{ShapeCallsWide, s.CallsWide}}, nil
	case ScenarioFibNoDedup:
		return []DAGSet{{ShapeFibNoDedup, s.FibNoDedup}}, nil
	case ScenarioScale:
		return nil, nil // Config.ScaleRuns, on a server of its own
	}
	return nil, fmt.Errorf("unknown scenario %q (want one of %s)", scenario, strings.Join(Scenarios, ", "))
}

// ParseScenarios checks scenario names (each value may hold several,
// separated by commas) and returns them in Run's order without
// duplicates; none means every scenario.
func ParseScenarios(values []string) ([]string, error) {
	want := map[string]bool{}
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			if !slices.Contains(Scenarios, name) {
				return nil, fmt.Errorf("unknown scenario %q (want one of %s)", name, strings.Join(Scenarios, ", "))
			}
			want[name] = true
		}
	}
	if len(want) == 0 {
		return slices.Clone(Scenarios), nil
	}
	var out []string
	for _, s := range Scenarios {
		if want[s] {
			out = append(out, s)
		}
	}
	return out, nil
}

// Backends of DB.
const (
	BackendPostgres = "postgres"
	BackendSQLite   = "sqlite"
)

// DefaultPostgresURL is the PostgreSQL server `--db postgres` means.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres"

// DB is a database server or place the scenarios run on. Every scenario
// gets a fresh database there, removed when it ends.
type DB struct {
	// Backend is BackendPostgres or BackendSQLite.
	Backend string
	// Location is, for PostgreSQL, the URL of the server (Trellis
	// connects to the database it names to create and drop the scenario
	// databases, so the user needs the CREATEDB privilege); for SQLite,
	// the directory the scenario files are made in ("" = a temporary
	// directory).
	Location string
}

// String names the database for messages, without a password.
func (d DB) String() string {
	if d.Backend == BackendSQLite {
		if d.Location == "" {
			return "sqlite (temporary directory)"
		}
		return "sqlite:" + d.Location
	}
	return store.RedactURL(d.Location)
}

// ParseDB reads a --db value: "sqlite" (files in a temporary directory),
// "sqlite:DIR" (files in directory DIR), "postgres" (DefaultPostgresURL)
// or a postgres:// or postgresql:// server URL.
func ParseDB(v string) (DB, error) {
	s := strings.TrimSpace(v)
	lower := strings.ToLower(s)
	switch {
	case lower == "sqlite":
		return DB{Backend: BackendSQLite}, nil
	case strings.HasPrefix(lower, "sqlite:"):
		dir := strings.TrimPrefix(s[len("sqlite:"):], "//")
		if dir == "" {
			return DB{}, fmt.Errorf("--db %q: want sqlite:DIR, a directory for the benchmark's database files", v)
		}
		if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
			return DB{}, fmt.Errorf("--db %q: %s is a file; give a directory, where every scenario gets a fresh database file", v, dir)
		}
		return DB{Backend: BackendSQLite, Location: filepath.Clean(dir)}, nil
	case lower == "postgres" || lower == "postgresql":
		return DB{Backend: BackendPostgres, Location: DefaultPostgresURL}, nil
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		return DB{Backend: BackendPostgres, Location: s}, nil
	}
	return DB{}, fmt.Errorf("--db %q: want sqlite, sqlite:DIR, postgres or postgres://USER@HOST:PORT/DATABASE", store.RedactURL(v))
}

// DefaultDBs are the databases used when none is given: SQLite in a
// temporary directory and PostgreSQL at DefaultPostgresURL.
func DefaultDBs() []DB {
	return []DB{{Backend: BackendSQLite}, {Backend: BackendPostgres, Location: DefaultPostgresURL}}
}

// Config configures Run. DBs and Scenarios are required; zero fields of
// the others take their defaults.
type Config struct {
	DBs       []DB
	Scenarios []string
	// Sizes default to DefaultSizes.
	Sizes Sizes
	// CronDuration is how many seconds of schedule firings the cron
	// scenario counts (whole seconds, at least 1 s; default
	// DefaultCronDuration).
	CronDuration time.Duration
	// APIDuration is how long the api scenario sends requests for each of
	// its two runs (default DefaultAPIDuration), with APIClients clients
	// at once (default DefaultAPIClients).
	APIDuration time.Duration
	APIClients  int
	// ScaleRuns are the sizes (parallel tasks) of the scale scenario's
	// runs, one after another on one server (default DefaultScaleRuns).
	// A run larger than the reference run (the largest size below the
	// largest) also reports its rate as a ratio to the reference run's.
	ScaleRuns []int
	// ReferenceFor is how long the scale scenario's reference (PostgreSQL
	// alone) commits UPDATEs (default DefaultReferenceFor).
	ReferenceFor time.Duration
	// ServeArgs start the server of the scale scenario (Executable with
	// these arguments, `trellis bench --serve` for the trellis binary):
	// `trellis serve` with the DAGs RegisterServeFromEnv registers, whose
	// worker processes register them too. Required by the scale scenario.
	ServeArgs []string
	// HeapProfileDir, when set, receives a heap profile of the scale
	// scenario's server after each run.
	HeapProfileDir string
	// Workers is the number of worker processes (default the CPU count)
	// and Slots the tasks each runs at once (default
	// executor.DefaultSlots).
	Workers, Slots int
	// Executable and ChildArgs start a worker child (defaults: this
	// binary, executor.ChildArgs; `trellis bench` passes its own child
	// role, "bench --child"): it must register the benchmark DAGs with
	// RegisterFromEnv.
	Executable string
	ChildArgs  []string
	// ChildEnv is added to the worker children's environment (log level
	// and format).
	ChildEnv []string
	// CPUProfileDir, when set, receives a CPU profile of this process and
	// of every worker child for each scenario and store.
	CPUProfileDir string
	// TraceDir, when set, receives execution traces (runtime/trace) in
	// the same way: `go tool trace -pprof=net FILE` then shows where the
	// processes wait on the database.
	TraceDir string
	// Timeout bounds one scenario on one store (default DefaultTimeout).
	Timeout time.Duration
	// Logger receives the log of the scheduler and the pool (default:
	// discard).
	Logger *slog.Logger
	// Progress receives a line per step (default: discard).
	Progress io.Writer
	// ChildOutput receives the worker children's output (default
	// os.Stderr).
	ChildOutput io.Writer
}

func (c Config) withDefaults() (Config, error) {
	var problems []error
	if len(c.DBs) == 0 {
		problems = append(problems, errors.New("no databases"))
	}
	if len(c.Scenarios) == 0 {
		problems = append(problems, errors.New("no scenarios"))
	}
	if c.CronDuration < 0 || c.CronDuration%time.Second != 0 {
		problems = append(problems, fmt.Errorf("cron duration %v: want whole seconds", c.CronDuration))
	}
	if c.Workers < 0 || c.Slots < 0 || c.Timeout < 0 || c.APIDuration < 0 || c.APIClients < 0 {
		problems = append(problems, errors.New("workers, slots, timeout, API duration and API clients must not be negative"))
	}
	if len(problems) > 0 {
		return c, fmt.Errorf("benchmark config: %w", errors.Join(problems...))
	}
	for _, n := range c.ScaleRuns {
		if n < 1 || n > MaxSize {
			problems = append(problems, fmt.Errorf("scale run of %d tasks: want 1 to %d", n, MaxSize))
		}
	}
	if c.ReferenceFor < 0 {
		problems = append(problems, errors.New("reference duration must not be negative"))
	}
	if len(problems) > 0 {
		return c, fmt.Errorf("benchmark config: %w", errors.Join(problems...))
	}
	if len(c.ScaleRuns) == 0 {
		c.ScaleRuns = DefaultScaleRuns
	}
	if c.ReferenceFor == 0 {
		c.ReferenceFor = DefaultReferenceFor
	}
	if c.Sizes == (Sizes{}) {
		c.Sizes = DefaultSizes()
	}
	for _, s := range c.Scenarios {
		sets, err := c.Sizes.sets(s)
		if err != nil {
			return c, fmt.Errorf("benchmark config: %w", err)
		}
		for _, set := range sets {
			if err := set.check(); err != nil {
				return c, fmt.Errorf("benchmark config: scenario %s: %w", s, err)
			}
		}
	}
	if c.CronDuration == 0 {
		c.CronDuration = DefaultCronDuration
	}
	if c.APIDuration == 0 {
		c.APIDuration = DefaultAPIDuration
	}
	if c.APIClients == 0 {
		c.APIClients = DefaultAPIClients
	}
	if c.Workers == 0 {
		c.Workers = runtime.NumCPU()
	}
	if c.Slots == 0 {
		c.Slots = executor.DefaultSlots
	}
	if c.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("benchmark config: find own executable: %w", err)
		}
		c.Executable = exe
	}
	if c.ChildArgs == nil {
		c.ChildArgs = executor.ChildArgs
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.ChildOutput == nil {
		c.ChildOutput = os.Stderr
	}
	return c, nil
}
