package executor

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// backends lists the databases the cheap tests run against.
var backends = []struct {
	name string
	url  func(testing.TB) string
}{
	{"postgres", testdb.Postgres},
	{"sqlite", testdb.SQLite},
}

// openStore opens and migrates the store at url, closed when the test
// ends.
func openStore(t testing.TB, url string) store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := dial.Open(ctx, url, dial.Options{Migrate: true, ConnectTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("open store %s: %v", url, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// testLogger writes the worker's own log to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// syncDAGs records dags in st.
func syncDAGs(t testing.TB, st store.Store, dags ...*dag.DAG) {
	t.Helper()
	specs := make([]store.DAGSpec, len(dags))
	for i, d := range dags {
		specs[i] = store.SpecFromDAG(d)
	}
	if err := st.SyncDAGs(context.Background(), specs); err != nil {
		t.Fatalf("sync DAGs: %v", err)
	}
}

// startRun creates run runID of d (already synced) with conf and starts
// it, queueing its root tasks (or finds it started by a scheduler).
func startRun(t testing.TB, st store.Store, d *dag.DAG, runID string, conf json.RawMessage) store.Run {
	t.Helper()
	ctx := context.Background()
	now := time.Now().UTC()
	run, _, err := st.CreateRun(ctx, store.NewRun{
		DAGID: d.ID(), RunID: runID, RunType: store.RunManual,
		LogicalDate: now, IntervalStart: now, IntervalEnd: now,
		Conf: conf, Fingerprint: d.Fingerprint(), QueuedAt: now,
	})
	if err != nil {
		t.Fatalf("create run %s of %s: %v", runID, d.ID(), err)
	}
	started, err := st.StartRuns(ctx, d.ID(), time.Now().UTC())
	if err != nil {
		t.Fatalf("start runs of %s: %v", d.ID(), err)
	}
	for _, r := range started {
		if r.RunID == runID {
			return r
		}
	}
	// A scheduler running alongside (the chaos tests') may have started it
	// between the two calls.
	if got, err := st.GetRun(ctx, d.ID(), runID); err == nil && got.State == state.RunRunning {
		return got
	}
	t.Fatalf("run %s of %s was not started (started %v)", runID, d.ID(), started)
	return run
}

// waitRun waits until the run is finished, woken by the store's
// run-changed notifications (and a coarse re-check for backends whose
// notifications cross processes by polling).
func waitRun(t testing.TB, st store.Store, dagID, runID string, timeout time.Duration) store.Run {
	t.Helper()
	return waitRunCond(t, st, dagID, runID, timeout, func(r store.Run) bool { return r.State.Terminal() })
}

func waitRunCond(t testing.TB, st store.Store, dagID, runID string, timeout time.Duration, done func(store.Run) bool) store.Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sub, err := st.Listen(ctx, store.TopicRunsChanged, store.TopicTasksReady)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer sub.Close()
	recheck := time.NewTicker(100 * time.Millisecond)
	defer recheck.Stop()
	for {
		run, err := st.GetRun(context.Background(), dagID, runID)
		if err != nil {
			t.Fatalf("get run %s/%s: %v", dagID, runID, err)
		}
		if done(run) {
			return run
		}
		select {
		case <-ctx.Done():
			t.Fatalf("run %s/%s still %s after %v; tasks: %s", dagID, runID, run.State, timeout, describeTasks(t, st, dagID, runID))
		case <-sub.C():
		case <-recheck.C:
		}
	}
}

// tasksOf returns the task instances of a run by task id.
func tasksOf(t testing.TB, st store.Store, dagID, runID string) map[string]store.TaskInstance {
	t.Helper()
	tis, _, err := st.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{dagID}, DAGRunIDs: []string{runID}, Limit: 100000})
	if err != nil {
		t.Fatalf("list task instances of %s/%s: %v", dagID, runID, err)
	}
	out := make(map[string]store.TaskInstance, len(tis))
	for _, ti := range tis {
		out[ti.TaskID] = ti
	}
	return out
}

func describeTasks(t testing.TB, st store.Store, dagID, runID string) string {
	var b strings.Builder
	counts := map[state.TaskState]int{}
	for id, ti := range tasksOf(t, st, dagID, runID) {
		counts[ti.State]++
		if len(b.String()) < 2000 && !ti.State.Terminal() {
			b.WriteString(id + "=" + string(ti.State) + " ")
		}
	}
	return strings.TrimSpace(b.String()) + " counts=" + jsonString(counts)
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// retrier stands in for the scheduler's retry loop: it queues due retries
// until stopped.
func retrier(t testing.TB, st store.Store) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if _, err := st.RequeueRetries(ctx, time.Now()); err != nil && ctx.Err() == nil {
					t.Errorf("requeue retries: %v", err)
					return
				}
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// newTestWorker starts a worker on st with reg; it is stopped when the
// test ends.
func newTestWorker(t testing.TB, st store.Store, reg *dag.Registry, tweak func(*WorkerConfig)) *Worker {
	t.Helper()
	cfg := WorkerConfig{
		Store: st, Registry: reg, Logger: testLogger(t),
		Slots: 4, HeartbeatInterval: 50 * time.Millisecond, Grace: 5 * time.Second, KillGrace: 200 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	w, err := NewWorker(cfg)
	if err != nil {
		t.Fatalf("new worker: %v", err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	t.Cleanup(w.Stop)
	return w
}

// waitLog returns the log of one try once it contains every string of
// want (a try's log is written alongside its result, so it may complete a
// moment after the try's state changed), or fails after 10 s.
func waitLog(t testing.TB, st store.Store, dagID, runID, taskID string, try int, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := st.ReadLog(context.Background(), dagID, runID, taskID, try)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("read log of %s/%s/%s try %d: %v", dagID, runID, taskID, try, err)
		}
		missing := ""
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("log of %s/%s/%s try %d = %q, want it to contain %q", dagID, runID, taskID, try, b, missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor waits for c or fails after d.
func waitFor(t testing.TB, c <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}
