package bench

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/executor"
)

// IDPrefix starts the id of every benchmark DAG. The ids are reserved:
// user DAGs should not use it.
const IDPrefix = "bench_"

// EnvDAGs is the environment variable through which `trellis bench` tells
// the worker children which benchmark DAGs to register (see
// RegisterFromEnv), in the form FormatDAGSets writes: "wide=10000".
const EnvDAGs = "TRELLIS_BENCH_DAGS"

// Shape is a kind of benchmark DAG set.
type Shape string

// The shapes of benchmark DAG sets. Size means what the comment says.
const (
	// ShapeWide is bench_wide: root → Size no-op Func tasks → join.
	ShapeWide Shape = "wide"
	// ShapeChain is bench_chain: Size no-op Func tasks in a line.
	ShapeChain Shape = "chain"
	// ShapeShell is bench_shell: Size independent Shell `true` tasks.
	ShapeShell Shape = "shell"
	// ShapeShellChain is bench_shell_chain: Size Shell `true` tasks in a
	// line.
	ShapeShellChain Shape = "shell_chain"
	// ShapeCron is Size DAGs bench_cron_0000… on `@every 1s`, each with one
	// no-op Func task.
	ShapeCron Shape = "cron"
	// ShapeBig is bench_big: Size tasks in all, root → Size−2 no-op Func
	// tasks → join.
	ShapeBig Shape = "big"
	// ShapeWatch is bench_watch: Size tasks in all, root → Size−1 no-op
	// Func tasks. The root holds for the run's conf "hold_ms"
	// milliseconds (default 0), or until its try is cancelled, so a run
	// can be kept running while it is watched.
	ShapeWatch Shape = "watch"
	// ShapeSensors is bench_sensors: Size Sensor tasks poking every
	// second, true once the file named by the run's conf "release_file" exists.
	ShapeSensors Shape = "sensors"
	// ShapeResume is bench_resume: Size Resumable tasks, each deferred on
	// an event of its own (ResumeEventKey).
	ShapeResume Shape = "resume"
	// ShapeFib is bench_fib: a task calling the recursive callable
	// fibonacci(Size), deduplicated (Size+1 calls).
	ShapeFib Shape = "fib"
	// ShapeFibNoDedup is bench_fib_nodedup: the same without dedup.
	ShapeFibNoDedup Shape = "fib_nodedup"
	// ShapeCallsWide is bench_calls_wide: a task mapping Size calls.
	ShapeCallsWide Shape = "calls_wide"
	// ShapeScale is bench_scale_<Size>: root → Size no-op Func tasks →
	// join, one DAG per size, for the runs of the scale scenario.
	ShapeScale Shape = "scale"
	// ShapePool is bench_pool: root → Size no-op Func tasks in the pool
	// PoolName (PoolSize slots) → join.
	ShapePool Shape = "pool"
)

// PoolName and PoolSize are the pool of bench_pool's tasks.
const (
	PoolName = IDPrefix + "pool"
	PoolSize = 50
)

// shapes lists every shape with the least size it accepts.
var shapes = []struct {
	shape   Shape
	minSize int
}{
	{ShapeWide, 1}, {ShapeChain, 2}, {ShapeShell, 1}, {ShapeShellChain, 2}, {ShapeCron, 1}, {ShapeBig, 3}, {ShapeWatch, 1}, {ShapeScale, 1}, {ShapePool, 1},
	{ShapeSensors, 1}, {ShapeResume, 1}, {ShapeFib, 1}, {ShapeFibNoDedup, 1}, {ShapeCallsWide, 1},
}

// MaxSize bounds the size of a DAG set, against typing mistakes.
const MaxSize = 1_000_000

// CronEvery is the schedule interval of the cron DAGs.
const CronEvery = "1s"

// CronStartDate is the start date of the cron DAGs. It anchors their
// intervals on whole seconds; with Catchup(false) only the latest
// interval is due when the scheduler starts.
var CronStartDate = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// DAGSet is a benchmark DAG set: a shape and a size.
type DAGSet struct {
	Shape Shape
	Size  int
}

// String returns "shape=size".
func (s DAGSet) String() string { return string(s.Shape) + "=" + strconv.Itoa(s.Size) }

// check reports a shape that does not exist or a size out of range.
func (s DAGSet) check() error {
	for _, sh := range shapes {
		if sh.shape != s.Shape {
			continue
		}
		if s.Size < sh.minSize || s.Size > MaxSize {
			return fmt.Errorf("benchmark DAG set %s: size must be between %d and %d", s, sh.minSize, MaxSize)
		}
		return nil
	}
	names := make([]string, len(shapes))
	for i, sh := range shapes {
		names[i] = string(sh.shape)
	}
	return fmt.Errorf("benchmark DAG set %s: unknown shape %q (want one of %s)", s, s.Shape, strings.Join(names, ", "))
}

// DAG ids of the single-DAG shapes.
const (
	WideDAGID       = IDPrefix + "wide"
	ChainDAGID      = IDPrefix + "chain"
	ShellDAGID      = IDPrefix + "shell"
	ShellChainDAGID = IDPrefix + "shell_chain"
	BigDAGID        = IDPrefix + "big"
	WatchDAGID      = IDPrefix + "watch"
	PoolDAGID       = IDPrefix + "pool"
)

// WatchHoldParam is the conf key of the bench_watch root's hold, in
// milliseconds.
const WatchHoldParam = "hold_ms"

// CronDAGID returns the id of cron DAG i of a set of n.
func CronDAGID(i, n int) string {
	return fmt.Sprintf("%scron_%0*d", IDPrefix, digits(n-1), i)
}

// Build returns the DAGs of the set. The DAGs are valid (dag.Validate
// finds nothing) for every size check accepts.
func (s DAGSet) Build() ([]*dag.DAG, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	n := s.Size
	switch s.Shape {
	case ShapeWide:
		return []*dag.DAG{fanOut(WideDAGID, n)}, nil
	case ShapeFib:
		return []*dag.DAG{fibDAG(FibDAGID, n)}, nil
	case ShapeFibNoDedup:
		return []*dag.DAG{fibDAG(FibNoDedupDAGID, n, dag.NoDedup())}, nil
	case ShapeCallsWide:
		return []*dag.DAG{callsWideDAG(n)}, nil
	case ShapeBig:
		return []*dag.DAG{fanOut(BigDAGID, n-2)}, nil
	case ShapeScale:
		return []*dag.DAG{fanOut(ScaleDAGID(n), n)}, nil
	case ShapePool:
		return []*dag.DAG{fanOut(PoolDAGID, n, dag.Pool(PoolName))}, nil
	case ShapeWatch:
		d := dag.New(WatchDAGID, dag.Description("trellis bench: a run to watch through the API, held running by its root"),
			dag.Params(map[string]any{WatchHoldParam: 0}))
		root := d.Func("root", hold)
		for i := range n - 1 {
			root.SetDownstream(d.Func(taskID("w", i, n-1), noop))
		}
		return []*dag.DAG{d}, nil
	case ShapeChain:
		d := dag.New(ChainDAGID, dag.Description("trellis bench: no-op Func tasks in a line"))
		line(n, func(id string) *dag.Task { return d.Func(id, noop) })
		return []*dag.DAG{d}, nil
	case ShapeShellChain:
		d := dag.New(ShellChainDAGID, dag.Description("trellis bench: Shell `true` tasks in a line"))
		line(n, func(id string) *dag.Task { return d.Shell(id, "true") })
		return []*dag.DAG{d}, nil
	case ShapeShell:
		d := dag.New(ShellDAGID, dag.Description("trellis bench: independent Shell `true` tasks"))
		for i := range n {
			d.Shell(taskID("s", i, n), "true")
		}
		return []*dag.DAG{d}, nil
	case ShapeSensors:
		return []*dag.DAG{sensorsDAG(n)}, nil
	case ShapeResume:
		return []*dag.DAG{resumeDAG(n)}, nil
	case ShapeCron:
		out := make([]*dag.DAG, n)
		for i := range out {
			d := dag.New(CronDAGID(i, n), dag.Schedule("@every "+CronEvery), dag.StartDate(CronStartDate), dag.Catchup(false),
				dag.Description("trellis bench: a schedule firing every second"))
			d.Func("tick", noop)
			out[i] = d
		}
		return out, nil
	}
	return nil, fmt.Errorf("benchmark DAG set %s: no builder", s) // check lists every shape
}

// fanOut returns root → n no-op Func tasks (with opts) → join.
func fanOut(id string, n int, opts ...dag.TaskOption) *dag.DAG {
	d := dag.New(id, dag.Description("trellis bench: root, no-op Func tasks in parallel, join"))
	root := d.Func("root", noop)
	join := d.Func("join", noop)
	mid := make([]*dag.Task, n)
	for i := range mid {
		mid[i] = d.Func(taskID("t", i, n), noop, opts...)
	}
	root.SetDownstream(mid...)
	join.SetUpstream(mid...)
	return d
}

// line adds n tasks made by add, each downstream of the previous.
func line(n int, add func(id string) *dag.Task) {
	var prev *dag.Task
	for i := range n {
		t := add(taskID("c", i, n))
		if prev != nil {
			prev.SetDownstream(t)
		}
		prev = t
	}
}

// LineTaskIDs returns the task ids of a chain or shell_chain DAG of size
// n, in order along the line.
func LineTaskIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = taskID("c", i, n)
	}
	return ids
}

// taskID returns prefix followed by i zero-padded to the width of n−1.
func taskID(prefix string, i, n int) string {
	return fmt.Sprintf("%s%0*d", prefix, digits(n-1), i)
}

// digits returns the number of decimal digits of n ≥ 0.
func digits(n int) int { return len(strconv.Itoa(max(n, 0))) }

func noop(*dag.Context) error { return nil }

// hold waits for the run's hold_ms, or until the try is cancelled.
func hold(c *dag.Context) error {
	ms, _ := c.Params()[WatchHoldParam].(float64) // JSON numbers; an int default is 0 too
	if ms <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(ms * float64(time.Millisecond)))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.Done():
		return c.Err()
	}
}

// FormatDAGSets returns the EnvDAGs value for sets: "wide=10000,cron=1000".
func FormatDAGSets(sets []DAGSet) string {
	parts := make([]string, len(sets))
	for i, s := range sets {
		parts[i] = s.String()
	}
	return strings.Join(parts, ",")
}

// ParseDAGSets parses what FormatDAGSets writes. Every problem is
// reported, each naming the part it is about.
func ParseDAGSets(v string) ([]DAGSet, error) {
	var sets []DAGSet
	var problems []error
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, size, ok := strings.Cut(part, "=")
		if !ok {
			problems = append(problems, fmt.Errorf("%q: want shape=size, e.g. wide=10000", part))
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(size))
		if err != nil {
			problems = append(problems, fmt.Errorf("%q: size %q is not an integer", part, size))
			continue
		}
		s := DAGSet{Shape: Shape(strings.TrimSpace(name)), Size: n}
		if err := s.check(); err != nil {
			problems = append(problems, err)
			continue
		}
		sets = append(sets, s)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("parse %s=%q: %w", EnvDAGs, v, errors.Join(problems...))
	}
	return sets, nil
}

// BuildAll returns the DAGs of every set.
func BuildAll(sets []DAGSet) ([]*dag.DAG, error) {
	var out []*dag.DAG
	for _, s := range sets {
		ds, err := s.Build()
		if err != nil {
			return nil, err
		}
		out = append(out, ds...)
	}
	return out, nil
}

// RegisterServeFromEnv registers in reg the benchmark DAGs named by
// EnvDAGs, but only in the server the scale scenario starts (EnvServe is
// set). It returns the EnvDAGs value, which that server passes on to its
// worker processes.
func RegisterServeFromEnv(reg *dag.Registry, lookupEnv func(string) (string, bool)) (string, error) {
	if v, ok := lookupEnv(EnvServe); !ok || v == "" {
		return "", fmt.Errorf("%s is not set: only the server `trellis bench --scenario scale` starts runs this role", EnvServe)
	}
	v, _ := lookupEnv(EnvDAGs)
	sets, err := ParseDAGSets(v)
	if err != nil {
		return "", err
	}
	if len(sets) == 0 {
		return "", fmt.Errorf("%s names no benchmark DAGs", EnvDAGs)
	}
	ds, err := BuildAll(sets)
	if err != nil {
		return "", err
	}
	for _, d := range ds {
		reg.Register(d)
	}
	return FormatDAGSets(sets), nil
}

// RegisterFromEnv registers in reg the benchmark DAGs named by EnvDAGs,
// but only in a worker child of a pool (executor.EnvChild is set): that
// is where `trellis bench` needs them, and nowhere else may they show up.
// It returns how many DAGs it registered.
func RegisterFromEnv(reg *dag.Registry, lookupEnv func(string) (string, bool)) (int, error) {
	v, ok := lookupEnv(EnvDAGs)
	if !ok || strings.TrimSpace(v) == "" {
		return 0, nil
	}
	if child, ok := lookupEnv(executor.EnvChild); !ok || child == "" {
		return 0, nil
	}
	sets, err := ParseDAGSets(v)
	if err != nil {
		return 0, err
	}
	ds, err := BuildAll(sets)
	if err != nil {
		return 0, err
	}
	for _, d := range ds {
		reg.Register(d)
	}
	return len(ds), nil
}
