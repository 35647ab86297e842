package sqlite_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/sqlite"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// open opens and migrates a store on path with opts.
func open(t *testing.T, path string, opts sqlite.Options) *sqlite.Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quiet()
	}
	s, err := sqlite.Open(t.Context(), path, opts)
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return s
}

func TestOpenRefusesBadPaths(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ path, errHas string }{
		{"", "empty database path"},
		{"   ", "empty database path"},
		{":memory:", "in-memory databases are not supported"},
		{"file::memory:?cache=shared", "several processes"},
		{"file:" + filepath.Join(dir, "x.db"), "not a file: URI"},
		{filepath.Join(dir, "missing", "x.db"), "missing"},
		{filepath.Join(dir, "file.txt", "x.db"), "not a folder"},
	}
	if err := os.WriteFile(filepath.Join(dir, "file.txt"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		s, err := sqlite.Open(t.Context(), tc.path, sqlite.Options{Logger: quiet()})
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", tc.path)
			continue
		}
		if !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("Open(%q) error %q, want it to contain %q", tc.path, err, tc.errHas)
		}
	}
	if _, err := sqlite.Open(t.Context(), filepath.Join(dir, "x.db"), sqlite.Options{LogCap: -1}); err == nil {
		t.Errorf("Open with a negative LogCap succeeded")
	}
}

// A path with the characters that end or escape a URI opens the file of
// exactly that name.
func TestOpenOddPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "we?ird #name %41 ü.db")
	s := open(t, path, sqlite.Options{})
	if err := s.SyncDAGs(t.Context(), []store.DAGSpec{{DAGID: "d", Fingerprint: "f"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database file not at its path: %v", err)
	}
	if s.Path() != path || s.Backend() != "sqlite" {
		t.Errorf("Path() = %q, Backend() = %q", s.Path(), s.Backend())
	}
}

func syncRun(t *testing.T, s store.Store, sp store.DAGSpec, runID string, ld time.Time) {
	t.Helper()
	if err := s.SyncDAGs(t.Context(), []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(t.Context(), store.NewRun{DAGID: sp.DAGID, RunID: runID, RunType: store.RunManual,
		LogicalDate: ld, Fingerprint: sp.Fingerprint}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(t.Context(), sp.DAGID, ld); err != nil {
		t.Fatal(err)
	}
}

func claimIDs(cs []store.Claimed) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.DAGID+"/"+c.TaskID)
	}
	return out
}

// MaxActiveTasks caps the running instances of a DAG across its runs;
// other DAGs keep claiming, in priority order.
func TestMaxActiveTasks(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	capped := store.DAGSpec{DAGID: "capped", Fingerprint: "c1", MaxActiveRuns: 16, MaxActiveTasks: 2}
	for i := range 5 {
		ts := task(fmt.Sprintf("c%d", i))
		ts.Priority = 10
		capped.Tasks = append(capped.Tasks, ts)
	}
	free := store.DAGSpec{DAGID: "free", Fingerprint: "f1", MaxActiveRuns: 16,
		Tasks: []store.TaskSpec{task("f0"), task("f1"), task("f2")}}
	syncRun(t, s, capped, "r1", t0)
	syncRun(t, s, capped, "r2", t0.Add(time.Hour))
	syncRun(t, s, free, "r1", t0)
	w := store.Worker{ID: "w"}
	cs, err := s.ClaimTasks(t.Context(), w, 100, t0)
	if err != nil {
		t.Fatal(err)
	}
	got := claimIDs(cs)
	want := []string{"capped/c0", "capped/c1", "free/f0", "free/f1", "free/f2"}
	if !slices.Equal(got, want) {
		t.Fatalf("first claim %v, want %v (two of the capped DAG, by priority, then the rest)", got, want)
	}
	if more, err := s.ClaimTasks(t.Context(), w, 100, t0); err != nil || len(more) != 0 {
		t.Fatalf("claimed %v (%v) with the capped DAG at its cap", claimIDs(more), err)
	}
	// Finishing one frees one slot, whatever run it belongs to.
	if _, err := s.FinishTasks(t.Context(), []store.Result{{Try: store.Try{ID: cs[0].ID, TryNumber: 1},
		State: state.Success, EndedAt: t0}}); err != nil {
		t.Fatal(err)
	}
	more, err := s.ClaimTasks(t.Context(), w, 100, t0)
	if err != nil || len(more) != 1 || more[0].DAGID != "capped" {
		t.Fatalf("after a finish claimed %v (%v), want one capped instance", claimIDs(more), err)
	}
}

// A try's first chunk longer than the cap is cut at the cap (the first
// chunk is written with its counts at once), and later chunks are counted.
func TestLogCapFirstChunk(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{LogCap: 10})
	syncRun(t, s, store.DAGSpec{DAGID: "d", Fingerprint: "f", MaxActiveRuns: 1, Tasks: []store.TaskSpec{task("a")}}, "r", t0)
	cs, err := s.ClaimTasks(t.Context(), store.Worker{ID: "w"}, 1, t0)
	if err != nil || len(cs) != 1 {
		t.Fatal(cs, err)
	}
	a := store.Try{ID: cs[0].ID, TryNumber: 1}
	for _, chunk := range []string{"0123456789abcdef", "gh"} {
		if err := s.AppendLog(t.Context(), a, []byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ReadLog(t.Context(), "d", "r", "a", 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := "0123456789" + fmt.Sprintf(sqlite.TruncationMarker, 10, 8); string(got) != want {
		t.Errorf("log %q, want %q", got, want)
	}
}

// The log cap of Options: the first LogCap bytes are kept, the rest
// counted, and the log ends with the truncation marker.
func TestLogCap(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{LogCap: 10})
	syncRun(t, s, store.DAGSpec{DAGID: "d", Fingerprint: "f", MaxActiveRuns: 1, Tasks: []store.TaskSpec{task("a")}}, "r", t0)
	cs, err := s.ClaimTasks(t.Context(), store.Worker{ID: "w"}, 1, t0)
	if err != nil || len(cs) != 1 {
		t.Fatal(cs, err)
	}
	a := store.Try{ID: cs[0].ID, TryNumber: 1}
	for _, chunk := range []string{"012345", "6789ab", "cdef"} {
		if err := s.AppendLog(t.Context(), a, []byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ReadLog(t.Context(), "d", "r", "a", 1)
	if err != nil {
		t.Fatal(err)
	}
	want := "0123456789" + fmt.Sprintf(sqlite.TruncationMarker, 10, 6)
	if string(got) != want {
		t.Errorf("log %q, want %q", got, want)
	}
	if err := s.AppendLog(t.Context(), store.Try{ID: cs[0].ID, TryNumber: 2}, []byte("x")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AppendLog to a try that has not started: %v, want ErrNotFound", err)
	}
	if err := s.AppendLog(t.Context(), store.Try{ID: 1 << 40, TryNumber: 1}, []byte("x")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AppendLog to an unknown instance: %v, want ErrNotFound", err)
	}
}

func TestSyncDAGsReportsCycle(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	sp := store.DAGSpec{DAGID: "cyc", Fingerprint: "f", Tasks: []store.TaskSpec{
		task("a", "c"), task("b", "a"), task("c", "b"), task("d")}}
	err := s.SyncDAGs(t.Context(), []store.DAGSpec{sp})
	if err == nil || !strings.Contains(err.Error(), "cycle") || !strings.Contains(err.Error(), "->") {
		t.Fatalf("SyncDAGs of a cycle: %v, want an error naming the cycle", err)
	}
	bad := store.DAGSpec{DAGID: "neg", Fingerprint: "f", Tasks: []store.TaskSpec{{TaskID: "x", TriggerRule: "all_success", Retries: -1}}}
	if err := s.SyncDAGs(t.Context(), []store.DAGSpec{bad, bad}); err == nil ||
		!strings.Contains(err.Error(), "negative retries") || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("SyncDAGs of bad specs: %v, want every problem reported", err)
	}
}

func TestListOrderErrors(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	if _, _, err := s.ListRuns(t.Context(), store.RunQuery{OrderBy: "dag_id; DROP TABLE dags"}); err == nil ||
		!strings.Contains(err.Error(), "logical_date") {
		t.Errorf("ListRuns with a bad order: %v, want an error listing the fields", err)
	}
	if _, _, err := s.ListTaskInstances(t.Context(), store.TaskQuery{OrderBy: "-nope"}); err == nil ||
		!strings.Contains(err.Error(), "task_id") {
		t.Errorf("ListTaskInstances with a bad order: %v", err)
	}
	if _, _, err := s.ListRuns(t.Context(), store.RunQuery{States: []state.RunState{"paused"}}); err == nil {
		t.Errorf("ListRuns with an unknown state succeeded")
	}
	if _, _, err := s.ListRuns(t.Context(), store.RunQuery{Limit: -1}); err == nil {
		t.Errorf("ListRuns with a negative limit succeeded")
	}
	if _, _, err := s.ListDAGs(t.Context(), false, 0, 0); err != nil {
		t.Errorf("ListDAGs: %v", err)
	}
}

// A fault injected after CreateRun inserted its rows rolls all of them
// back.
func TestCreateRunAtomic(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	sp := store.DAGSpec{DAGID: "d", Fingerprint: "f", MaxActiveRuns: 1, Tasks: []store.TaskSpec{task("a"), task("b", "a")}}
	if err := s.SyncDAGs(t.Context(), []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	s.SetFaultHook(func(p string) error {
		if p == sqlite.FaultCreateRunInserted {
			return errors.New("boom")
		}
		return nil
	})
	nr := store.NewRun{DAGID: "d", RunID: "r", RunType: store.RunManual, LogicalDate: t0}
	if _, _, err := s.CreateRun(t.Context(), nr); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("CreateRun with a fault: %v", err)
	}
	s.SetFaultHook(nil)
	if _, err := s.GetRun(t.Context(), "d", "r"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("run left behind by a failed CreateRun: %v", err)
	}
	if _, n, err := s.ListTaskInstances(t.Context(), store.TaskQuery{}); err != nil || n != 0 {
		t.Errorf("%d instances left behind (%v)", n, err)
	}
	if _, created, err := s.CreateRun(t.Context(), nr); err != nil || !created {
		t.Errorf("CreateRun after the fault: created %v, %v", created, err)
	}
}

// Another connection holding the write lock: a write waits busy_timeout,
// is retried a few times, then fails with a clear error; once the lock is
// released the same write succeeds.
func TestBusyWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	s := open(t, path, sqlite.Options{BusyTimeout: 5 * time.Millisecond})
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	err = s.RegisterWorker(t.Context(), store.Worker{ID: "w", StartedAt: t0})
	if err == nil || !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), `register worker "w"`) {
		t.Fatalf("write while another connection holds the lock: %v, want a 'database is locked' error naming the operation", err)
	}
	if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterWorker(t.Context(), store.Worker{ID: "w", StartedAt: t0}); err != nil {
		t.Fatalf("write after the lock was released: %v", err)
	}
	// Reads are not blocked by a writer (WAL).
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	if ws, err := s.ListWorkers(t.Context()); err != nil || len(ws) != 1 {
		t.Errorf("read during another connection's write: %v, %v", ws, err)
	}
	if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
}

func TestListenEnds(t *testing.T) {
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "t.db"), sqlite.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Listen(t.Context(), "nope"); err == nil {
		t.Errorf("Listen to an unknown topic succeeded")
	}
	// A cancelled context ends a subscription: its channel closes.
	ctx, cancel := context.WithCancel(t.Context())
	sub1, err := s.Listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	waitClosed(t, sub1)
	// Closing the store ends the others.
	sub2, err := s.Listen(t.Context(), store.TopicTasksReady)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, sub2)
	if err := sub2.Close(); err != nil {
		t.Errorf("Close after the store closed: %v", err)
	}
	if _, err := s.Listen(t.Context()); err == nil {
		t.Errorf("Listen on a closed store succeeded")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func waitClosed(t *testing.T, sub store.Subscription) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-sub.C():
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("subscription channel not closed")
		}
	}
}

// Close stops every goroutine the store started (poller, subscriptions).
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "t.db"), sqlite.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Listen(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetPaused(t.Context(), "none", true); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetPaused(unknown): %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
	}
}

// Migrate while other goroutines of the process write: no deadlock over
// the writer connection, every write lands.
func TestMigrateWhileWriting(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	done := make(chan error, 4)
	for g := range 3 {
		go func() {
			for i := range 20 {
				if err := s.RegisterWorker(t.Context(), store.Worker{ID: fmt.Sprintf("w%d-%d", g, i), StartedAt: t0}); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	go func() {
		for range 5 {
			if err := s.Migrate(t.Context()); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range 4 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Migrate and writes deadlocked")
		}
	}
	if ws, err := s.ListWorkers(t.Context()); err != nil || len(ws) != 60 {
		t.Errorf("%d workers registered (%v), want 60", len(ws), err)
	}
}

// A finish batch reads its instances in one statement; a result repeated
// in the batch is judged on what the first one wrote (refused), results
// for unknown instances are refused, and the others are applied and
// release their downstream tasks.
func TestFinishBatchRepeatedResult(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	syncRun(t, s, store.DAGSpec{DAGID: "d", Fingerprint: "f", MaxActiveRuns: 1,
		Tasks: []store.TaskSpec{task("a"), task("b"), task("c", "a", "b")}}, "r", t0)
	cs, err := s.ClaimTasks(t.Context(), store.Worker{ID: "w"}, 2, t0)
	if err != nil || len(cs) != 2 {
		t.Fatal(cs, err)
	}
	ok := func(c store.Claimed) store.Result {
		return store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0.Add(time.Second)}
	}
	failed := ok(cs[0])
	failed.State, failed.Error = state.Failed, "late"
	ghost := ok(cs[0])
	ghost.ID = 1 << 40
	out, err := s.FinishTasks(t.Context(), []store.Result{ok(cs[0]), failed, ghost, ok(cs[1])})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		applied bool
		state   state.TaskState
	}{{true, state.Success}, {false, state.Success}, {false, ""}, {true, state.Success}}
	for i, w := range want {
		if out[i].Applied != w.applied || out[i].State != w.state {
			t.Errorf("outcome %d = applied %v, state %q; want %v, %q", i, out[i].Applied, out[i].State, w.applied, w.state)
		}
	}
	next, err := s.ClaimTasks(t.Context(), store.Worker{ID: "w"}, 2, t0)
	if err != nil || len(next) != 1 || next[0].TaskID != "c" {
		t.Fatalf("after the batch, claimed %v (err %v); want c alone", next, err)
	}
}

// TestFinishBatchFanIn finishes several upstream tasks of two joins in
// one batch, each result with its output and log: consecutive results
// reaching one state move their join's counter once by their number
// (releaseGroup), and each join is queued exactly when its last upstream
// task is counted.
func TestFinishBatchFanIn(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	j := task("j", "a", "b", "c", "d")
	k := task("k", "e", "f", "g")
	k.TriggerRule = dag.AllDone
	syncRun(t, s, store.DAGSpec{DAGID: "d", Fingerprint: "f", MaxActiveRuns: 1,
		Tasks: []store.TaskSpec{task("a"), task("b"), task("c"), task("d"), j, task("e"), task("f"), task("g"), k}}, "r", t0)
	w := store.Worker{ID: "w"}
	cs, err := s.ClaimTasks(t.Context(), w, 10, t0)
	if err != nil || len(cs) != 7 {
		t.Fatal(cs, err)
	}
	byTask := map[string]store.Claimed{}
	for _, c := range cs {
		byTask[c.TaskID] = c
	}
	big := bytes.Repeat([]byte("x"), 100<<10) // beyond what a batch queues
	result := func(id string, st state.TaskState) store.Result {
		c := byTask[id]
		log := []byte("log of " + id + "\n\x00\xff")
		if id == "g" {
			log = big
		}
		return store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: st, EndedAt: t0.Add(time.Second),
			Output: json.RawMessage(`{"task":"` + id + `"}`), Log: log}
	}
	claimed := func(want ...string) {
		t.Helper()
		next, err := s.ClaimTasks(t.Context(), w, 10, t0)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range next {
			got = append(got, c.TaskID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("claimed %q; want %q", got, want)
		}
	}
	// j waits for d; k's upstream tasks end in three states.
	out, err := s.FinishTasks(t.Context(), []store.Result{result("a", state.Success), result("b", state.Success),
		result("e", state.Success), result("f", state.Failed), result("c", state.Success), result("g", state.Success)})
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if !o.Applied {
			t.Errorf("outcome %d not applied: %+v", i, o)
		}
	}
	claimed("k")
	if _, err := s.FinishTasks(t.Context(), []store.Result{result("d", state.Success)}); err != nil {
		t.Fatal(err)
	}
	claimed("j")
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		ti, err := s.GetTaskInstance(t.Context(), "d", "r", id)
		if err != nil {
			t.Fatal(err)
		}
		want := state.Success
		if id == "f" {
			want = state.UpForRetry
			if byTask[id].MaxTries <= 1 {
				want = state.Failed
			}
		}
		if ti.State != want || string(ti.Output) != `{"task":"`+id+`"}` || ti.EndedAt == nil || !ti.EndedAt.Equal(t0.Add(time.Second)) {
			t.Errorf("%s: state %s, output %s, ended %v; want %s, its output, %v", id, ti.State, ti.Output, ti.EndedAt, want, t0.Add(time.Second))
		}
		log, err := s.ReadLog(t.Context(), "d", "r", id, 1)
		if err != nil {
			t.Fatal(err)
		}
		if wantLog := result(id, state.Success).Log; !bytes.Equal(log, wantLog) {
			t.Errorf("%s: log of %d bytes %q…; want %d bytes %q…", id, len(log), log[:min(len(log), 20)], len(wantLog), wantLog[:min(len(wantLog), 20)])
		}
	}
}

// A run ends when its last unfinished instance finishes, and not before:
// settling finds an unfinished instance of the run through three indexes
// (waiting, queued by DAG, running by worker; migration 00035), here each
// the only one holding an instance of the run in turn, while other runs
// of the DAG have queued and running instances on the same worker.
func TestRunEndsWithItsLastUnfinishedInstance(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "t.db"), sqlite.Options{})
	a := task("a")
	a.Retries, a.RetryDelay = 1, time.Minute
	sp := store.DAGSpec{DAGID: "d", Fingerprint: "f", MaxActiveRuns: 3, Tasks: []store.TaskSpec{a, task("b"), task("c")}}
	syncRun(t, s, sp, "r1", t0)
	syncRun(t, s, sp, "r2", t0.Add(time.Hour))
	w := store.Worker{ID: "w"}
	claimed := map[string]store.Claimed{}
	claim := func(max int, want ...string) {
		t.Helper()
		cs, err := s.ClaimTasks(t.Context(), w, max, t0)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range cs {
			key := c.DAGRunID + "." + c.TaskID
			got = append(got, key)
			claimed[key] = c
		}
		if !slices.Equal(got, want) {
			t.Fatalf("claimed %v, want %v", got, want)
		}
	}
	finish := func(key string, st state.TaskState) {
		t.Helper()
		c := claimed[key]
		out, err := s.FinishTasks(t.Context(), []store.Result{{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber},
			State: st, Error: "e", EndedAt: t0}})
		if err != nil || !out[0].Applied {
			t.Fatalf("finish %s: %+v, %v", key, out, err)
		}
	}
	runState := func(runID string, want state.RunState, why string) {
		t.Helper()
		r, err := s.GetRun(t.Context(), "d", runID)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != want {
			t.Fatalf("run %s is %s, want %s (%s)", runID, r.State, want, why)
		}
	}
	claim(4, "r1.a", "r1.b", "r1.c", "r2.a")
	finish("r1.b", state.Success)
	finish("r1.c", state.Success)
	runState("r1", state.RunRunning, "a running")
	finish("r1.a", state.Failed)
	runState("r1", state.RunRunning, "a up for retry")
	finish("r2.a", state.Success)
	runState("r2", state.RunRunning, "b and c queued")
	if n, err := s.RequeueRetries(t.Context(), t0.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("RequeueRetries = %d, %v; want r1.a queued", n, err)
	}
	runState("r1", state.RunRunning, "a queued again")
	claim(1, "r1.a")
	claim(1, "r2.b")
	syncRun(t, s, sp, "r3", t0.Add(2*time.Hour))
	finish("r1.a", state.Success)
	runState("r1", state.RunSuccess, "r2's and r3's instances running and queued")
	finish("r2.b", state.Success)
	runState("r2", state.RunRunning, "c queued")
	claim(1, "r2.c")
	finish("r2.c", state.Success)
	runState("r2", state.RunSuccess, "all done")
	runState("r3", state.RunRunning, "all queued")
}
