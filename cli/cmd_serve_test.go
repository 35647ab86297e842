package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

func TestTaskEventCheck(t *testing.T) {
	for _, tc := range []struct {
		ev   taskEvent
		want string // "" = valid
	}{
		{taskEvent{Kind: eventClaim, ID: 1, Try: 1, DAGID: "d", TaskID: "t"}, ""},
		{taskEvent{Kind: eventClaim, ID: 1, Try: 1, DAGID: "d"}, "no DAG or task id"},
		{taskEvent{Kind: eventFinish, ID: 1, Try: 2, State: "up_for_retry"}, ""},
		{taskEvent{Kind: eventFinish, ID: 1, Try: 1, State: "done"}, `unknown state "done"`},
		{taskEvent{Kind: eventDrop, ID: 3, Try: 1}, ""},
		{taskEvent{Kind: eventDrop, ID: 0, Try: 1}, "want positive numbers"},
		{taskEvent{Kind: eventDrop, ID: 1, Try: 0}, "want positive numbers"},
		{taskEvent{Kind: "start", ID: 1, Try: 1}, `unknown event kind "start"`},
	} {
		err := tc.ev.check()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("check(%+v) = %v, want %q", tc.ev, err, tc.want)
		}
	}
}

func TestEventsFromStoreCalls(t *testing.T) {
	q := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	s := q.Add(250 * time.Millisecond)
	e := s.Add(2 * time.Second)
	claims := claimEvents([]store.Claimed{
		{TaskInstance: store.TaskInstance{ID: 7, TryNumber: 2, DAGID: "d", TaskID: "t", QueuedAt: &q, StartedAt: &s}},
		{TaskInstance: store.TaskInstance{ID: 8, TryNumber: 1, DAGID: "d", TaskID: "u"}},
	})
	want := []taskEvent{
		{Kind: eventClaim, ID: 7, Try: 2, DAGID: "d", TaskID: "t", Queued: q.UnixNano(), Started: s.UnixNano()},
		{Kind: eventClaim, ID: 8, Try: 1, DAGID: "d", TaskID: "u"},
	}
	if fmt.Sprint(claims) != fmt.Sprint(want) {
		t.Errorf("claimEvents = %+v, want %+v", claims, want)
	}
	a7, a8 := store.Try{ID: 7, TryNumber: 2}, store.Try{ID: 8, TryNumber: 1}
	finishes := finishEvents(
		[]store.Result{{Try: a7, State: state.Failed, EndedAt: e}, {Try: a8, State: state.Success, EndedAt: e}},
		[]store.FinishOutcome{{Try: a8, Applied: false}, {Try: a7, Applied: true, State: state.UpForRetry}})
	want = []taskEvent{
		{Kind: eventDrop, ID: 8, Try: 1},
		{Kind: eventFinish, ID: 7, Try: 2, State: "up_for_retry", Ended: e.UnixNano()},
	}
	if fmt.Sprint(finishes) != fmt.Sprint(want) {
		t.Errorf("finishEvents = %+v, want %+v", finishes, want)
	}
	drops := dropEvents([]store.Try{a7})
	if len(drops) != 1 || drops[0] != (taskEvent{Kind: eventDrop, ID: 7, Try: 2}) {
		t.Errorf("dropEvents = %+v", drops)
	}
	// The wire form is compact and round-trips.
	b, err := json.Marshal(finishes[1])
	if err != nil || string(b) != fmt.Sprintf(`{"k":"finish","id":7,"try":2,"state":"up_for_retry","ended":%d}`, e.UnixNano()) {
		t.Errorf("finish event encodes as %s (%v)", b, err)
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

func TestTaskLedger(t *testing.T) {
	m := api.NewMetrics(clock.Real{})
	l := newTaskLedger(m)
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	ns := func(d time.Duration) int64 { return base.Add(d).UnixNano() }
	apply := func(conn int, ev taskEvent) {
		t.Helper()
		if err := l.apply(conn, ev); err != nil {
			t.Fatalf("apply %+v: %v", ev, err)
		}
	}
	apply(1, taskEvent{Kind: eventClaim, ID: 1, Try: 1, DAGID: "d", TaskID: "a", Queued: ns(0), Started: ns(time.Second)})
	apply(1, taskEvent{Kind: eventClaim, ID: 2, Try: 1, DAGID: "d", TaskID: "b", Queued: ns(0), Started: ns(3 * time.Second)})
	apply(2, taskEvent{Kind: eventClaim, ID: 3, Try: 1, DAGID: "e", TaskID: "c", Started: ns(0)})
	apply(2, taskEvent{Kind: eventClaim, ID: 3, Try: 1, DAGID: "e", TaskID: "c", Started: ns(0)}) // repeated: counted once
	if n := l.runningTries(); n != 3 {
		t.Fatalf("running = %d after 3 claims, want 3", n)
	}
	apply(1, taskEvent{Kind: eventFinish, ID: 1, Try: 1, State: "up_for_retry", Ended: ns(5 * time.Second)})
	apply(1, taskEvent{Kind: eventDrop, ID: 2, Try: 1})
	apply(1, taskEvent{Kind: eventFinish, ID: 9, Try: 1, State: "success", Ended: ns(0)}) // claim never seen
	apply(1, taskEvent{Kind: eventDrop, ID: 9, Try: 1})                                   // unknown: ignored
	if err := l.apply(1, taskEvent{Kind: eventFinish, ID: 3, Try: 1, State: "bogus"}); err == nil {
		t.Errorf("a bad event was applied")
	}
	if n := l.runningTries(); n != 1 {
		t.Fatalf("running = %d, want 1 (c on connection 2)", n)
	}
	l.close(2) // its worker process died
	if n := l.runningTries(); n != 0 || l.unmatched != 1 {
		t.Fatalf("running = %d, unmatched = %d after the close, want 0 and 1", n, l.unmatched)
	}

	if v, _ := metricValue(t, m, "trellis_task_instances_finished_total", "dag_id", "d", "task_id", "a", "state", "up_for_retry"); v != 1 {
		t.Errorf("finished a up_for_retry = %v, want 1", v)
	}
	if v, _ := metricValue(t, m, "trellis_task_instances_finished_total"); v != 1 {
		t.Errorf("%v finished tries in all, want 1 (drops and unmatched finishes count nowhere)", v)
	}
	if sum := histogramSum(t, m, "trellis_task_duration_seconds", "dag_id", "d", "task_id", "a"); sum != 4 {
		t.Errorf("duration of a = %vs, want 4 (started at 1s, ended at 5s)", sum)
	}
	// Queued times: a 1s, b 3s; c had no queued time.
	if n, _ := metricValue(t, m, "trellis_task_queued_seconds", "dag_id", "d"); n != 2 {
		t.Errorf("%v queued times for d, want 2", n)
	}
	if sum := histogramSum(t, m, "trellis_task_queued_seconds", "dag_id", "d"); sum != 4 {
		t.Errorf("queued times for d sum to %vs, want 4", sum)
	}
	if n, ok := metricValue(t, m, "trellis_task_queued_seconds", "dag_id", "e"); ok && n != 0 {
		t.Errorf("%v queued times for e, want none", n)
	}
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

// TestRelayOverSocket wraps a real store as a worker child does and
// checks that claims, finishes, refused finishes, requeues and lost tries
// reach the serve side's ledger and metrics through the socket.
func TestRelayOverSocket(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	ctx := context.Background()
	st := openTestStore(t, false)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = st.Close()
		}
	})
	reg := pairRegistry()
	m := api.NewMetrics(clock.Real{})
	ledger := newTaskLedger(m)
	changed := make(chan struct{}, 1)
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil))
	relay, err := newEventRelay(ledger, log, signalled(changed))
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relay.Stop)
	env := map[string]string{envServeEvents: relay.Path()}
	ws := relayTaskEvents(st, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, log)
	if _, ok := ws.(*relayStore); !ok {
		t.Fatalf("relayTaskEvents returned %T, want the relaying store", ws)
	}
	w := testWorker(t, st)
	finished := func(task, st string) float64 {
		v, _ := metricValue(t, m, "trellis_task_instances_finished_total", "dag_id", "pair", "task_id", task, "state", st)
		return v
	}

	// r1: a succeeds; b is claimed, the run is cancelled, b's finish is
	// refused.
	trigger(t, st, reg, "pair", "r1")
	a := claimOne(t, ws, w)
	waitUntil(t, changed, "a runs", func() bool { return ledger.runningTries() == 1 })
	aTry := store.Try{ID: a.ID, TryNumber: a.TryNumber}
	// a's finish claims b in the same transaction: both are relayed.
	_, next, err := ws.FinishAndClaim(ctx, []store.Result{{Try: aTry, State: state.Success, EndedAt: time.Now()}}, w, 4, time.Now())
	if err != nil || len(next) != 1 || next[0].TaskID != "b" {
		t.Fatalf("finish a and claim: %+v, %v; want b claimed", next, err)
	}
	b := next[0]
	waitUntil(t, changed, "a finished and b runs", func() bool { return finished("a", "success") == 1 && ledger.runningTries() == 1 })
	if _, err := st.SetRunState(ctx, "pair", "r1", state.RunFailed, time.Now()); err != nil {
		t.Fatal(err)
	}
	out, err := ws.FinishTasks(ctx, []store.Result{{Try: store.Try{ID: b.ID, TryNumber: b.TryNumber}, State: state.Success, EndedAt: time.Now()}})
	if err != nil || len(out) != 1 || out[0].Applied {
		t.Fatalf("finish of a cancelled try: %+v, %v; want refused", out, err)
	}
	waitUntil(t, changed, "b dropped", func() bool { return ledger.runningTries() == 0 })

	// r2: a is claimed and requeued (shutdown), claimed again and lost
	// (run cancelled, seen by the heartbeat).
	trigger(t, st, reg, "pair", "r2")
	a2 := claimOne(t, ws, w)
	waitUntil(t, changed, "r2 a runs", func() bool { return ledger.runningTries() == 1 })
	if err := ws.RequeueTries(ctx, []store.Try{{ID: a2.ID, TryNumber: a2.TryNumber}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, changed, "r2 a requeued", func() bool { return ledger.runningTries() == 0 })
	a3 := claimOne(t, ws, w)
	waitUntil(t, changed, "r2 a runs again", func() bool { return ledger.runningTries() == 1 })
	if _, err := st.SetRunState(ctx, "pair", "r2", state.RunFailed, time.Now()); err != nil {
		t.Fatal(err)
	}
	lost, err := ws.HeartbeatTasks(ctx, w.ID, []store.Try{{ID: a3.ID, TryNumber: a3.TryNumber}}, time.Now())
	if err != nil || len(lost) != 1 {
		t.Fatalf("heartbeat of a cancelled try: lost %v, %v; want it", lost, err)
	}
	waitUntil(t, changed, "r2 a lost", func() bool { return ledger.runningTries() == 0 })

	if v := finished("b", "success"); v != 0 {
		t.Errorf("the refused finish of b counted %v", v)
	}
	if n, _ := metricValue(t, m, "trellis_task_queued_seconds", "dag_id", "pair"); n != 4 {
		t.Errorf("%v queued times, want 4 (one per claim)", n)
	}
	if n, _ := metricValue(t, m, "trellis_task_duration_seconds", "dag_id", "pair"); n != 1 {
		t.Errorf("%v durations, want 1 (a of r1)", n)
	}

	// Closing the worker's store delivers and closes the connection.
	if err := ws.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	relay.Stop()
	if _, err := os.Stat(filepath.Dir(relay.Path())); !os.IsNotExist(err) {
		t.Errorf("the socket's directory is left after Stop (stat: %v)", err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warnings while relaying:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRelayTaskEventsWithoutServe(t *testing.T) {
	st := openTestStore(t, true)
	none := func(string) (string, bool) { return "", false }
	if got := relayTaskEvents(st, none, slog.New(slog.DiscardHandler)); got != st {
		t.Errorf("without %s the store is wrapped (%T)", envServeEvents, got)
	}
	var logs bytes.Buffer
	missing := filepath.Join(t.TempDir(), "gone.sock")
	got := relayTaskEvents(st, func(string) (string, bool) { return missing, true }, slog.New(slog.NewTextHandler(&logs, nil)))
	if got != st {
		t.Errorf("with an unreachable socket the store is wrapped (%T)", got)
	}
	if !strings.Contains(logs.String(), "cannot reach the serve process's task-event socket") {
		t.Errorf("no warning for the unreachable socket: %s", logs.String())
	}
}

// TestEventRelayIgnoresBadLines: garbage and malformed events on a
// connection are ignored (one warning), the valid events applied.
func TestEventRelayIgnoresBadLines(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	m := api.NewMetrics(clock.Real{})
	ledger := newTaskLedger(m)
	changed := make(chan struct{}, 1)
	var logs bytes.Buffer
	var mu sync.Mutex
	relay, err := newEventRelay(ledger, slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)), signalled(changed))
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer relay.Stop()
	c, err := net.Dial("unix", relay.Path())
	if err != nil {
		t.Fatal(err)
	}
	lines := "not json\n" + `{"k":"claim","id":-1,"try":1}` + "\n" + `{"k":"claim","id":5,"try":1,"dag":"d","task":"t"}` + "\n"
	if _, err := c.Write([]byte(lines)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, changed, "the valid claim applied", func() bool { return ledger.runningTries() == 1 })
	_ = c.Close()
	waitUntil(t, changed, "the connection's tries dropped", func() bool { return ledger.runningTries() == 0 })
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logs.String(), "ignoring a bad event"); n != 1 {
		t.Errorf("%d warnings for bad events, want 1:\n%s", n, logs.String())
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
