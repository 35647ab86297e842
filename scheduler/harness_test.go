package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
	"github.com/trellis-dag/trellis/store/sqlite"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// waitTimeout bounds every wait of these tests; reaching it is a failure.
const waitTimeout = 20 * time.Second

// backend opens a fresh, migrated store of one kind for a test.
type backend struct {
	name string
	open func(t testing.TB, clk clock.Clock) store.Store
}

var backends = []backend{
	{"sqlite", openSQLite},
	{"postgres", openPostgres},
}

// forEachBackend runs fn as a subtest per backend.
func forEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// testLogger returns a logger that fails the test on any error-level
// record (the scheduler logs what it cannot do), and prints everything when
// TRELLIS_TEST_LOG is set.
func testLogger(t testing.TB) *slog.Logger {
	var h slog.Handler = slog.DiscardHandler
	if os.Getenv("TRELLIS_TEST_LOG") != "" {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	return slog.New(errorTrap{Handler: h, t: t}).With("test", t.Name())
}

// errorTrap fails its test on error-level records.
type errorTrap struct {
	slog.Handler
	t testing.TB
}

func (e errorTrap) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || e.Handler.Enabled(ctx, l)
}

func (e errorTrap) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		var b strings.Builder
		r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
		e.t.Errorf("unexpected error log: %s%s", r.Message, b.String())
	}
	if e.Handler.Enabled(ctx, r.Level) {
		return e.Handler.Handle(ctx, r)
	}
	return nil
}

func (e errorTrap) WithAttrs(as []slog.Attr) slog.Handler {
	return errorTrap{Handler: e.Handler.WithAttrs(as), t: e.t}
}

func (e errorTrap) WithGroup(name string) slog.Handler {
	return errorTrap{Handler: e.Handler.WithGroup(name), t: e.t}
}

func openSQLite(t testing.TB, clk clock.Clock) store.Store {
	t.Helper()
	u := testdb.SQLite(t)
	return openSQLiteURL(t, u, clk)
}

func openSQLiteURL(t testing.TB, u string, clk clock.Clock) store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, strings.TrimPrefix(u, "sqlite:"), sqlite.Options{Clock: clk, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate sqlite: %v", err)
	}
	return st
}

func openPostgres(t testing.TB, clk clock.Clock) store.Store {
	t.Helper()
	return openPostgresURL(t, testdb.Postgres(t), clk, 0)
}

func openPostgresURL(t testing.TB, u string, clk clock.Clock, maxConns int32) store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := postgres.Open(ctx, u, postgres.Options{Clock: clk, Logger: testLogger(t), MaxConns: maxConns})
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate postgres: %v", err)
	}
	return st
}

// shellDAG returns a DAG with one shell task.
func shellDAG(id, schedule string, start time.Time, opts ...dag.Option) *dag.DAG {
	all := []dag.Option{dag.StartDate(start)}
	if schedule != "" {
		all = append(all, dag.Schedule(schedule))
	}
	d := dag.New(id, append(all, opts...)...)
	d.Shell("t", "true")
	return d
}

func registry(dags ...*dag.DAG) *dag.Registry {
	r := dag.NewRegistry()
	for _, d := range dags {
		r.Register(d)
	}
	return r
}

// harness drives a Scheduler with a fake clock and records what its
// goroutines signal through the test hooks.
type harness struct {
	t   *testing.T
	clk *clock.Fake
	st  store.Store
	reg *dag.Registry
	s   *Scheduler
	sub store.Subscription // the test's own wake-ups, to re-check the store

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every hook call
	armed   time.Time     // the loop's timer
	kept    time.Time     // the keeper's timer
	keeps   int           // keeper rounds
	fired   map[string][]fireResult
	used    map[string]int // fired results consumed by waitFired
}

// newHarness opens a store of kind b at the fake time now and builds a
// Scheduler on it (not started). cfg may set intervals; Store, Registry,
// Clock and Logger are filled in.
func newHarness(t *testing.T, b backend, now time.Time, cfg Config, dags ...*dag.DAG) *harness {
	t.Helper()
	clk := clock.NewFake(now)
	st := b.open(t, clk)
	return newHarnessOn(t, clk, st, cfg, dags...)
}

func newHarnessOn(t *testing.T, clk *clock.Fake, st store.Store, cfg Config, dags ...*dag.DAG) *harness {
	t.Helper()
	h := &harness{t: t, clk: clk, st: st, reg: registry(dags...), changed: make(chan struct{}),
		fired: map[string][]fireResult{}, used: map[string]int{}}
	cfg.Store, cfg.Registry, cfg.Clock, cfg.Logger = st, h.reg, clk, testLogger(t)
	// Keep the periodic chores out of the way unless a test asks for them.
	setDefault(&cfg.ZombieCheckInterval, 100*time.Hour)
	setDefault(&cfg.ResyncInterval, 100*time.Hour)
	// React to every wake-up at once: the fake clock does not move by itself.
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = -1
	}
	if cfg.WakeupInterval == 0 {
		cfg.WakeupInterval = -1
	}
	h.s = New(cfg)
	h.s.hookArmed = func(at time.Time) { h.signal(func() { h.armed = at }) }
	h.s.hookFired = func(id string, res fireResult) { h.signal(func() { h.fired[id] = append(h.fired[id], res) }) }
	h.s.hookKept = func(at time.Time) { h.signal(func() { h.kept = at; h.keeps++ }) }
	sub, err := st.Listen(context.Background(), store.TopicRunsChanged, store.TopicTasksReady)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	h.sub = sub
	t.Cleanup(func() { _ = sub.Close() })
	return h
}

func (h *harness) signal(update func()) {
	h.mu.Lock()
	update()
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

// start starts the scheduler and stops it when the test ends.
func (h *harness) start() {
	h.t.Helper()
	if err := h.s.Start(context.Background()); err != nil {
		h.t.Fatalf("start: %v", err)
	}
	h.t.Cleanup(h.s.Stop)
}

// waitHook waits until cond, evaluated under the harness lock, holds.
func (h *harness) waitHook(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		h.mu.Lock()
		ok := cond()
		ch := h.changed
		h.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// waitArmed waits until the loop's timer is set for at (zero: stopped).
func (h *harness) waitArmed(at time.Time) {
	h.t.Helper()
	h.waitHook("the loop timer at "+fmtTime(at), func() bool { return h.armed.Equal(at) })
}

// waitKept waits until the keeper's timer is set for at.
func (h *harness) waitKept(at time.Time) {
	h.t.Helper()
	h.waitHook("the keeper timer at "+fmtTime(at), func() bool { return h.kept.Equal(at) })
}

// waitFired waits for the next fire of dagID and returns its result.
func (h *harness) waitFired(dagID string) fireResult {
	h.t.Helper()
	var res fireResult
	h.waitHook("a fire of "+dagID, func() bool {
		if len(h.fired[dagID]) > h.used[dagID] {
			res = h.fired[dagID][h.used[dagID]]
			h.used[dagID]++
			return true
		}
		return false
	})
	if res.err != nil {
		h.t.Fatalf("fire of %s failed: %v", dagID, res.err)
	}
	return res
}

// waitStore waits until cond (reading the store) holds, re-checking after
// every wake-up of the store and every hook call.
func (h *harness) waitStore(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		h.mu.Lock()
		ch := h.changed
		h.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-h.sub.C():
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// runs returns the runs of dagID ordered by logical date.
func (h *harness) runs(dagID string) []store.Run {
	h.t.Helper()
	return listRuns(h.t, h.st, dagID)
}

func listRuns(t testing.TB, st store.Store, dagID string) []store.Run {
	t.Helper()
	runs, _, err := st.ListRuns(context.Background(), store.RunQuery{DAGIDs: []string{dagID}, OrderBy: "logical_date"})
	if err != nil {
		t.Fatalf("list runs: %v", err)
	}
	return runs
}

// runIDs returns the run ids of runs.
func runIDs(runs []store.Run) []string {
	out := make([]string, len(runs))
	for i, r := range runs {
		out[i] = r.RunID
	}
	return out
}

// states counts the runs by state.
func states(runs []store.Run) map[state.RunState]int {
	out := map[state.RunState]int{}
	for _, r := range runs {
		out[r.State]++
	}
	return out
}

// wantRuns checks the run ids of dagID, in logical-date order.
func (h *harness) wantRuns(dagID string, want ...string) []store.Run {
	h.t.Helper()
	runs := h.runs(dagID)
	if got := runIDs(runs); !slices.Equal(got, want) {
		h.t.Fatalf("runs of %s:\n got %v\nwant %v", dagID, got, want)
	}
	return runs
}

// scheduledIDs returns the scheduled run ids for the given logical dates.
func scheduledIDs(dates ...string) []string {
	out := make([]string, len(dates))
	for i, d := range dates {
		out[i] = RunID(store.RunScheduled, ts(d))
	}
	return out
}

var workerSeq atomic.Int64

// finishQueued claims every queued task of the store and finishes it with
// state st, as a worker would.
func finishQueued(t testing.TB, st store.Store, now time.Time, s state.TaskState) int {
	t.Helper()
	ctx := context.Background()
	w := store.Worker{ID: fmt.Sprintf("test-worker-%d", workerSeq.Add(1)), Hostname: "test", PID: os.Getpid(),
		Slots: 100, StartedAt: now, HeartbeatAt: now}
	if err := st.RegisterWorker(ctx, w); err != nil {
		t.Fatalf("register worker: %v", err)
	}
	claimed, err := st.ClaimTasks(ctx, w, 100, now)
	if err != nil {
		t.Fatalf("claim tasks: %v", err)
	}
	if len(claimed) == 0 {
		return 0
	}
	results := make([]store.Result, len(claimed))
	for i, c := range claimed {
		results[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: s, EndedAt: now,
			Error: fmt.Sprintf("finished by test as %s", s)}
	}
	out, err := st.FinishTasks(ctx, results)
	if err != nil {
		t.Fatalf("finish tasks: %v", err)
	}
	for _, o := range out {
		if !o.Applied {
			t.Fatalf("finish of %+v not applied", o.Try)
		}
	}
	return len(claimed)
}
