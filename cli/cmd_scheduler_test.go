package cli

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

// runsRegistry holds a manual DAG with params, an hourly DAG limited to
// two active runs, and an "@every 1s" DAG.
func runsRegistry() *dag.Registry {
	reg := dag.NewRegistry()
	m := dag.New("manual_dag", dag.Params(map[string]any{"rows": 1}))
	chain(m, "only")
	reg.Register(m)
	h := dag.New("hourly", dag.Schedule("@hourly"), dag.StartDate(startDate), dag.MaxActiveRuns(2))
	chain(h, "a", "b")
	reg.Register(h)
	e := dag.New("every_second", dag.Schedule("@every 1s"), dag.StartDate(startDate))
	chain(e, "x")
	reg.Register(e)
	return reg
}

// sqliteEnv returns the environment pointing the CLI at a new SQLite file.
func sqliteEnv(t *testing.T) (map[string]string, string) {
	u := "sqlite:" + filepath.Join(t.TempDir(), "trellis.db")
	return map[string]string{"TRELLIS_DATABASE_URL": u}, u
}

// openURL opens the database the CLI used, to look at what it did.
func openURL(t *testing.T, u string) store.Store {
	t.Helper()
	st, err := dial.Open(context.Background(), u, dial.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func TestDBMigrate(t *testing.T) {
	env, u := sqliteEnv(t)
	r := runCLI(t, runsRegistry(), env, "db", "migrate")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "is up to date", "(sqlite)")
	// Again: nothing to do, still fine.
	wantCode(t, runCLI(t, runsRegistry(), env, "db", "migrate"), 0)
	if _, _, err := openURL(t, u).ListDAGs(context.Background(), false, 0, 0); err != nil {
		t.Fatalf("the migrated database has no DAG table: %v", err)
	}
	r = runCLI(t, runsRegistry(), map[string]string{"TRELLIS_DATABASE_URL": "mysql://x"}, "db", "migrate")
	if r.code == 0 {
		t.Fatalf("a bad database URL succeeded:\n%s", r)
	}
}

func TestDAGsTrigger(t *testing.T) {
	env, u := sqliteEnv(t)
	reg := runsRegistry()
	r := runCLI(t, reg, env, "dags", "trigger", "manual_dag", "--conf", `{"rows": 5}`)
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "triggered run manual__2026-03-10T12:30:15Z", "running")
	r = runCLI(t, reg, env, "dags", "trigger", "hourly", "--logical-date", "2026-03-01T10:20:00Z", "--run-id", "mine")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "triggered run mine", "data interval [2026-03-01T09:00:00Z, 2026-03-01T10:00:00Z)")

	st := openURL(t, u)
	run, err := st.GetRun(context.Background(), "manual_dag", "manual__2026-03-10T12:30:15Z")
	if err != nil || string(run.Conf) != `{"rows":5}` || run.State != state.RunRunning {
		t.Fatalf("stored run: %+v %v", run, err)
	}

	// The same run id again is a conflict (exit 1).
	r = runCLI(t, reg, env, "dags", "trigger", "hourly", "--logical-date", "2026-03-01T10:20:00Z", "--run-id", "mine")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, `run "mine" exists already`)

	usage := []struct {
		args []string
		want string
	}{
		{[]string{"dags", "trigger", "hourlyy"}, `unknown DAG "hourlyy" (did you mean "hourly"?)`},
		{[]string{"dags", "trigger", "hourly", "--conf", "[1]"}, "--conf: conf must be a JSON object"},
		{[]string{"dags", "trigger", "hourly", "--conf", "{"}, "--conf: conf is not valid JSON"},
		{[]string{"dags", "trigger", "hourly", "--logical-date", "yesterday"}, `--logical-date "yesterday" is not a time`},
		{[]string{"dags", "trigger"}, "takes 1 argument"},
	}
	for _, c := range usage {
		r := runCLI(t, reg, env, c.args...)
		wantCode(t, r, 2)
		wantContains(t, strings.Join(c.args, " "), r.stderr, c.want)
	}
}

func TestDAGsPauseUnpause(t *testing.T) {
	env, u := sqliteEnv(t)
	reg := runsRegistry()
	r := runCLI(t, reg, env, "dags", "pause", "hourly")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, `DAG "hourly" paused`)
	st := openURL(t, u)
	if d, err := st.GetDAG(context.Background(), "hourly"); err != nil || !d.Paused {
		t.Fatalf("after pause: %+v %v", d, err)
	}
	// A run triggered while paused waits; unpausing starts it.
	r = runCLI(t, reg, env, "dags", "trigger", "hourly")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "queued")
	r = runCLI(t, reg, env, "dags", "unpause", "hourly")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, `DAG "hourly" unpaused`)
	if d, err := st.GetDAG(context.Background(), "hourly"); err != nil || d.Paused {
		t.Fatalf("after unpause: %+v %v", d, err)
	}
	runs, _, err := st.ListRuns(context.Background(), store.RunQuery{DAGIDs: []string{"hourly"}})
	if err != nil || len(runs) != 1 || runs[0].State != state.RunRunning {
		t.Fatalf("runs after unpause: %+v %v", runs, err)
	}
	r = runCLI(t, reg, env, "dags", "pause", "nope")
	wantCode(t, r, 2)
	wantContains(t, "stderr", r.stderr, `unknown DAG "nope"`)
}

func TestDAGsBackfill(t *testing.T) {
	env, u := sqliteEnv(t)
	reg := runsRegistry()
	r := runCLI(t, reg, env, "dags", "backfill", "hourly", "--from", "2026-03-01T00:00:00Z", "--to", "2026-03-01T03:00:00Z")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout,
		"backfill__2026-03-01T00:00:00Z\trunning\t[2026-03-01T00:00:00Z, 2026-03-01T01:00:00Z)",
		"backfill__2026-03-01T01:00:00Z\trunning",
		"backfill__2026-03-01T02:00:00Z\tqueued",
		"backfill__2026-03-01T03:00:00Z\tqueued",
		`created 4 runs of DAG "hourly": 2 running, 2 queued`)
	st := openURL(t, u)
	if _, n, err := st.ListRuns(context.Background(), store.RunQuery{DAGIDs: []string{"hourly"}}); err != nil || n != 4 {
		t.Fatalf("%d runs stored, %v; want 4", n, err)
	}
	// Dates without a time are midnight UTC; the runs exist already.
	r = runCLI(t, reg, env, "dags", "backfill", "hourly", "--from", "2026-03-01", "--to", "2026-03-01T02:30:00")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "no runs created")

	usage := []struct {
		args []string
		want string
	}{
		{[]string{"dags", "backfill", "hourly", "--from", "2026-03-02"}, "needs both --from and --to"},
		{[]string{"dags", "backfill", "hourly", "--from", "March", "--to", "2026-03-02"}, `--from "March" is not a time`},
		{[]string{"dags", "backfill", "hourly", "--from", "2026-03-02", "--to", "2026-03-01"}, "--to 2026-03-01T00:00:00Z is before --from"},
		{[]string{"dags", "backfill", "manual_dag", "--from", "2026-03-01", "--to", "2026-03-02"}, "has no schedule"},
		{[]string{"dags", "backfill", "hourli", "--from", "2026-03-01", "--to", "2026-03-02"}, `unknown DAG "hourli"`},
	}
	for _, c := range usage {
		r := runCLI(t, reg, env, c.args...)
		wantCode(t, r, 2)
		wantContains(t, strings.Join(c.args, " "), r.stderr, c.want)
	}
}

// TestSchedulerCommand runs `trellis scheduler` in-process until its
// context ends: it migrates, records the DAGs and fires the due interval.
func TestSchedulerCommand(t *testing.T) {
	env, u := sqliteEnv(t)
	var stdout, stderr syncBuffer
	clk := clock.NewFake(testNow)
	a := &app{registry: runsRegistry(), stdout: &stdout, stderr: &stderr, clock: clk,
		lookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	metricsAddr := freeAddr(t)
	go func() {
		done <- a.execute(ctx, []string{"scheduler", "--log-level", "debug", "--metrics-addr", metricsAddr})
	}()

	// The every_second DAG is due at start-up (Catchup(false): the latest
	// interval). Wait for its run through the store's wake-ups.
	st := openURL(t, u)
	sub, err := st.Listen(context.Background(), store.TopicRunsChanged)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	want := "scheduled__2026-03-10T12:30:14Z"
	deadline := time.After(20 * time.Second)
	for {
		if _, err := st.GetRun(context.Background(), "every_second", want); err == nil {
			break
		}
		select {
		case <-sub.C():
		case code := <-done:
			t.Fatalf("scheduler exited %d early:\n%s", code, stderr.String())
		case <-deadline:
			t.Fatalf("no run %s; stderr:\n%s", want, stderr.String())
		}
	}
	waitScrape(t, "http://"+metricsAddr+"/metrics",
		`trellis_dag_runs_created_total{dag_id="every_second",run_type="scheduled"} 1`, "trellis_scheduler_heartbeat_total ")
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("scheduler exited %d:\n%s", code, stderr.String())
	}
	wantContains(t, "stderr", stderr.String(), "scheduler started", "scheduler stopped")

	// An invalid registry stops it at start-up with every problem.
	r := runCLI(t, mixedRegistry(), env, "scheduler")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "the scheduler cannot start", "cycle: a -> b -> c -> a", "bad_schedule")
}
