package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

func TestServeCommandUsage(t *testing.T) {
	env, u := sqliteEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "extra"}, "takes 0 argument(s)"},
		{[]string{"serve", "--slots", "0"}, "--slots must be at least 1"},
		{[]string{"serve", "--grace", "-1s"}, "must not be negative"},
		{[]string{"serve", "--zombie-threshold", "0s"}, "--zombie-threshold"},
		{[]string{"serve", "--metrics-interval", "0s"}, "--metrics-interval must be positive"},
		{[]string{"serve", "--connect-timeout", "0s"}, "--connect-timeout must be positive"},
		{[]string{"serve", "--addr", "0.0.0.0:8080"}, "refusing to serve the API without a token on the non-loopback address 0.0.0.0:8080"},
		{[]string{"serve", "--addr", "8080"}, "--addr"},
		{[]string{"serve", "--workers", "0"}, "--workers must be at least 1"},
	} {
		r := runCLI(t, runsRegistry(), env, tc.args...)
		wantCode(t, r, 2)
		wantContains(t, strings.Join(tc.args, " "), r.stderr, tc.want)
	}
	env["TRELLIS_WORKER_SLOTS"] = "lots"
	r := runCLI(t, runsRegistry(), env, "serve")
	wantCode(t, r, 2)
	wantContains(t, "stderr", r.stderr, `TRELLIS_WORKER_SLOTS="lots" is not a number`)
	if _, err := os.Stat(strings.TrimPrefix(u, "sqlite:")); !os.IsNotExist(err) {
		t.Errorf("a refused serve command opened the database (stat: %v)", err)
	}
}

// TestServeInvalidDAGs: invalid DAGs stop the server at start-up with
// the full report, before any worker process starts, leaving nothing
// behind.
func TestServeInvalidDAGs(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the task-event socket is made
	reg := dag.NewRegistry()
	d := dag.New("cyclic")
	noop := func(*dag.Context) error { return nil }
	a, b := d.Func("a", noop), d.Func("b", noop)
	a.SetDownstream(b)
	b.SetDownstream(a)
	reg.Register(d)
	env, _ := sqliteEnv(t)
	r := runCLI(t, reg, env, "serve", "--addr", "127.0.0.1:0", "--workers", "1")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "the server cannot start: 1 DAG problem", "cyclic")
	if strings.Contains(r.stdout, "serving on") {
		t.Errorf("the server said it serves: %s", r.stdout)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the failed start left %v in the temporary directory", left)
	}
}

// metricValue returns the value of the series of name whose labels
// include want (name, value pairs): a counter's or gauge's value, a
// histogram's sample count; ok is false when there is none.
func metricValue(t *testing.T, m *api.Metrics, name string, want ...string) (v float64, ok bool) {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(want); i += 2 {
				if labels[want[i]] != want[i+1] {
					continue next
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				v += s.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				v += s.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				v += float64(s.GetHistogram().GetSampleCount())
			}
			ok = true
		}
	}
	return v, ok
}

func histogramSum(t *testing.T, m *api.Metrics, name string, want ...string) float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(want); i += 2 {
				if labels[want[i]] != want[i+1] {
					continue next
				}
			}
			sum += s.GetHistogram().GetSampleSum()
		}
	}
	return sum
}

// pairRegistry holds "pair" (a -> b, manual) and "single" (one task).
func pairRegistry() *dag.Registry {
	reg := dag.NewRegistry()
	p := dag.New("pair")
	chain(p, "a", "b")
	reg.Register(p)
	s := dag.New("single")
	chain(s, "only")
	reg.Register(s)
	return reg
}

// openTestStore opens and migrates a new SQLite store; closeIt says
// whether the test's cleanup closes it.
func openTestStore(t *testing.T, closeIt bool) store.Store {
	t.Helper()
	_, u := sqliteEnv(t)
	st, err := dial.Open(context.Background(), u, dial.Options{Migrate: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if closeIt {
		t.Cleanup(func() { _ = st.Close() })
	}
	return st
}

// testWorker registers and returns a worker row for claims.
func testWorker(t *testing.T, st store.Store) store.Worker {
	t.Helper()
	now := time.Now()
	w := store.Worker{ID: "test-worker", Hostname: "localhost", PID: os.Getpid(), Slots: 8, StartedAt: now, HeartbeatAt: now}
	if err := st.RegisterWorker(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	return w
}

// trigger creates and starts a manual run.
func trigger(t *testing.T, st store.Store, reg *dag.Registry, dagID, runID string) {
	t.Helper()
	s := scheduler.New(scheduler.Config{Store: st, Registry: reg})
	if _, err := s.TriggerRun(context.Background(), dagID, scheduler.TriggerOptions{RunID: runID}); err != nil {
		t.Fatal(err)
	}
}

// claimOne claims exactly one try through st.
func claimOne(t *testing.T, st store.Store, w store.Worker) store.Claimed {
	t.Helper()
	c, err := st.ClaimTasks(context.Background(), w, 1, time.Now())
	if err != nil || len(c) != 1 {
		t.Fatalf("claim: %v, %v; want one try", c, err)
	}
	return c[0]
}

// workAll runs every claimable try through st to success until none is
// left.
func workAll(t *testing.T, st store.Store, w store.Worker) {
	t.Helper()
	for {
		claimed, err := st.ClaimTasks(context.Background(), w, 100, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(claimed) == 0 {
			return
		}
		var rs []store.Result
		for _, c := range claimed {
			rs = append(rs, store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: time.Now()})
		}
		if _, err := st.FinishTasks(context.Background(), rs); err != nil {
			t.Fatal(err)
		}
	}
}

// signalled returns a func that signals ch without blocking.
func signalled(ch chan struct{}) func() {
	return func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// waitUntil waits on ch for cond to hold (checked after each signal),
// failing after 10s.
func waitUntil(t *testing.T, ch <-chan struct{}, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%s: not after 10s", what)
		}
	}
}

func TestRunEndWindow(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := t0.Add(d); return &v }
	run := func(id int64, st state.RunState, end *time.Time) store.Run {
		return store.Run{ID: id, State: st, EndedAt: end}
	}
	w := newRunEndWindow(t0, 10*time.Second)
	steps := []struct {
		runs      []store.Run
		want      []int64
		wantSince time.Time
	}{
		// Ended before the process started: never counted.
		{[]store.Run{run(1, state.RunSuccess, at(-time.Second))}, nil, t0},
		{[]store.Run{run(2, state.RunSuccess, at(5*time.Second)), run(3, state.RunFailed, at(20*time.Second))}, []int64{2, 3}, t0.Add(10 * time.Second)},
		// Read again, and a run whose end was committed late (within the
		// overlap): only the late one is new.
		{[]store.Run{run(3, state.RunFailed, at(20*time.Second)), run(4, state.RunSuccess, at(12*time.Second))}, []int64{4}, t0.Add(10 * time.Second)},
		// Older than the window: already counted (or missed for good).
		{[]store.Run{run(2, state.RunSuccess, at(5*time.Second))}, nil, t0.Add(10 * time.Second)},
		// Cleared and finished again: a new completion.
		{[]store.Run{run(3, state.RunSuccess, at(30*time.Second))}, []int64{3}, t0.Add(20 * time.Second)},
		// Not finished, or without an end: ignored.
		{[]store.Run{run(5, state.RunRunning, at(31*time.Second)), run(6, state.RunSuccess, nil)}, nil, t0.Add(20 * time.Second)},
	}
	for i, s := range steps {
		var got []int64
		for _, r := range w.observe(s.runs) {
			got = append(got, r.ID)
		}
		if fmt.Sprint(got) != fmt.Sprint(s.want) {
			t.Errorf("step %d: new runs %v, want %v", i, got, s.want)
		}
		if !w.since().Equal(s.wantSince) {
			t.Errorf("step %d: since %v, want %v", i, w.since(), s.wantSince)
		}
	}
	// Remembered: run 3's two completions (20s, at the window's start, and
	// 30s); the others are older than the window.
	if len(w.seen) != 2 {
		t.Errorf("the window remembers %d completions, want 2: %v", len(w.seen), w.seen)
	}
}

// TestRunWatcher: runs that finish while the watcher runs are observed
// once, on the store's notifications; runs finished before are not.
func TestRunWatcher(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t, true)
	reg := pairRegistry()
	w := testWorker(t, st)
	trigger(t, st, reg, "single", "before")
	workAll(t, st, w)

	m := api.NewMetrics(clock.Real{})
	rw := newRunWatcher(st, m, clock.Real{}, slog.New(slog.DiscardHandler), time.Hour)
	polled := make(chan struct{}, 1)
	rw.polled = signalled(polled)
	if err := rw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer rw.Stop()
	count := func() float64 {
		v, _ := metricValue(t, m, "trellis_dag_run_duration_seconds", "dag_id", "single", "state", "success")
		return v
	}
	trigger(t, st, reg, "single", "during")
	workAll(t, st, w)
	waitUntil(t, polled, "the run that finished is observed", func() bool { return count() == 1 })

	// Another change wakes the watcher again; nothing is counted twice,
	// and the run finished before the start is not counted at all.
	trigger(t, st, reg, "pair", "unfinished")
	select {
	case <-polled:
	case <-time.After(10 * time.Second):
		t.Fatal("no read after a run was created")
	}
	if n := count(); n != 1 {
		t.Errorf("%v completions of single observed, want 1", n)
	}
	if sum := histogramSum(t, m, "trellis_dag_run_duration_seconds", "dag_id", "single"); sum < 0 || sum > 10 {
		t.Errorf("run duration %vs, want the few milliseconds the run took", sum)
	}
	rw.Stop()
	rw.Stop() // idempotent
}

// TestStateSampler counts the unfinished states of the store into the
// gauge.
func TestStateSampler(t *testing.T) {
	st := openTestStore(t, true)
	reg := pairRegistry()
	trigger(t, st, reg, "pair", "r1")
	trigger(t, st, reg, "pair", "r2")
	w := testWorker(t, st)
	claimOne(t, st, w) // r1's a (oldest first) runs; r2's a is queued; both b wait

	if _, err := st.CreatePool(context.Background(), store.PoolSpec{Name: "warehouse", Slots: 4}); err != nil {
		t.Fatal(err)
	}
	m := api.NewMetrics(clock.Real{})
	sampled := make(chan struct{}, 1)
	s := &stateSampler{st: st, metrics: m, clk: clock.Real{}, log: slog.New(slog.DiscardHandler), interval: time.Hour, sampled: signalled(sampled)}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	select {
	case <-sampled:
	case <-time.After(10 * time.Second):
		t.Fatal("no count at start")
	}
	for st, want := range map[string]float64{"none": 2, "queued": 1, "running": 1, "up_for_retry": 0, "restarting": 0} {
		if v, ok := metricValue(t, m, "trellis_task_instances", "state", st); !ok || v != want {
			t.Errorf("trellis_task_instances{state=%q} = %v (present %v), want %v", st, v, ok, want)
		}
	}
	if _, ok := metricValue(t, m, "trellis_task_instances", "state", "success"); ok {
		t.Errorf("finished states are counted; they would read the whole history")
	}
	// Pools: default_pool (unlimited: open -1) holds the pair's instances.
	for _, c := range []struct {
		pool, state string
		want        float64
	}{{"warehouse", "open", 4}, {"warehouse", "running", 0}, {"default_pool", "open", -1},
		{"default_pool", "running", 1}, {"default_pool", "queued", 1}} {
		if v, ok := metricValue(t, m, "trellis_pool_slots", "pool", c.pool, "state", c.state); !ok || v != c.want {
			t.Errorf("trellis_pool_slots{pool=%q,state=%q} = %v (present %v), want %v", c.pool, c.state, v, ok, c.want)
		}
	}
	if v, ok := metricValue(t, m, "trellis_concurrency_key_waiting_task_instances"); !ok || v != 0 {
		t.Errorf("trellis_concurrency_key_waiting_task_instances = %v (present %v), want 0", v, ok)
	}
}

// TestServePortTaken: a listen address in use fails the start with the
// reason, before any worker process is spawned, leaving nothing behind.
func TestServePortTaken(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	env, _ := sqliteEnv(t)
	r := runCLI(t, pairRegistry(), env, "serve", "--addr", ln.Addr().String(), "--workers", "1")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "listen on "+ln.Addr().String(), "address already in use", "scheduler stopped")
	if strings.Contains(r.stderr, "worker process started") {
		t.Errorf("worker processes were started for a server that cannot listen:\n%s", r.stderr)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the failed start left %v in the temporary directory", left)
	}
}
