//go:build linux

package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store/dial"
)

// runTimeout bounds how long a run of an example DAG may take.
const runTimeout = 90 * time.Second

// serveArgs starts a small server on a free loopback port.
var serveArgs = []string{"serve", "--addr", "127.0.0.1:0", "--workers", "2", "--slots", "4", "--grace", "10s", "--metrics-interval", "1s"}

func TestServeSQLite(t *testing.T) {
	t.Parallel()
	testServe(t, testdb.SQLite(t))
}

func TestServePostgres(t *testing.T) {
	t.Parallel()
	testServe(t, testdb.Postgres(t))
}

// testServe runs `trellis serve` on the database dbURL and drives it
// over HTTP: example DAGs triggered, waited for, their task instances
// and logs read, a task cleared and run again, a DAG paused and
// unpaused, the metrics scraped; then SIGTERM must stop it with exit 0
// and no process left behind.
func testServe(t *testing.T, dbURL string) {
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + dbURL, "TRELLIS_LOG_FORMAT=json"}, serveArgs...)
	if !strings.Contains(srv.stdout.String(), "2 workers") {
		t.Errorf("the serving line does not give the workers: %q", srv.stdout)
	}
	c := newClient(t, srv.url, "")

	eventually(t, 30*time.Second, "the scheduler reports healthy", func() (bool, string) {
		h := c.ok(http.StatusOK, "GET", "/api/v1/health", nil)
		db, _ := h["metadatabase"].(map[string]any)
		sch, _ := h["scheduler"].(map[string]any)
		return db["status"] == "healthy" && sch["status"] == "healthy", fmt.Sprint(h)
	})
	dags := c.ok(http.StatusOK, "GET", "/api/v1/dags?limit=100", nil)
	var ids []string
	for _, d := range items(t, dags, "dags") {
		ids = append(ids, d["dag_id"].(string))
	}
	for _, want := range []string{"backup_automation", "etl_example", "test"} {
		if !slices.Contains(ids, want) {
			t.Fatalf("GET /dags lists %v, want %s among them", ids, want)
		}
	}

	// Trigger one run of each example DAG.
	runs := map[string]map[string]any{
		"etl_example":       {"dag_run_id": "e2e_etl", "conf": map[string]any{"rows": 7}, "note": "end-to-end"},
		"test":              {"dag_run_id": "e2e_test"},
		"backup_automation": {"dag_run_id": "e2e_backup"},
	}
	for dagID, body := range runs {
		r := c.ok(http.StatusOK, "POST", "/api/v1/dags/"+dagID+"/dagRuns", body)
		if r["dag_run_id"] != body["dag_run_id"] || r["run_type"] != "manual" {
			t.Errorf("POST %s dagRuns answered %v", dagID, r)
		}
	}
	// The same run id again is a conflict.
	if r := c.do("POST", "/api/v1/dags/test/dagRuns", map[string]any{"dag_run_id": "e2e_test"}); r.status != http.StatusConflict {
		t.Errorf("a second run e2e_test → %d, want 409: %s", r.status, r.body)
	}
	for dagID, body := range runs {
		waitRun(t, c, dagID, body["dag_run_id"].(string), "success")
	}

	// Task instances and logs of the ETL run: extract failed once and was
	// retried, the branch chose load and skipped skip_load.
	tis := taskStates(t, c, "etl_example", "e2e_etl")
	want := map[string]string{"extract": "success", "transform": "success", "choose_load": "success", "load": "success",
		"skip_load": "skipped", "report": "success", "cleanup": "success"}
	for task, st := range want {
		if tis[task].state != st {
			t.Errorf("etl_example task %s is %s, want %s (all: %v)", task, tis[task].state, st, tis)
		}
	}
	if tis["extract"].try != 2 {
		t.Errorf("extract ran %d tries, want 2 (it fails on the first)", tis["extract"].try)
	}
	ti := c.ok(http.StatusOK, "GET", "/api/v1/dags/etl_example/dagRuns/e2e_etl/taskInstances/extract", nil)
	if ti["state"] != "success" || ti["hostname"] == "" || ti["operator"] != "Func" {
		t.Errorf("GET taskInstances/extract = %v", ti)
	}
	// A worker sends the end of a try's log just after the try's result,
	// so a log read at once may still be short: poll.
	waitLog(t, c, "/api/v1/dags/etl_example/dagRuns/e2e_etl/taskInstances/extract/logs/1", "text/plain",
		"source system not ready")
	waitLog(t, c, "/api/v1/dags/etl_example/dagRuns/e2e_etl/taskInstances/extract/logs/2", "text/plain",
		"extracted orders", "rows=7")
	waitLog(t, c, "/api/v1/dags/backup_automation/dagRuns/e2e_backup/taskInstances/backup_generation/logs/1", "application/json",
		"backup created")
	if r := c.do("GET", "/api/v1/dags/test/dagRuns/e2e_test/taskInstances/print_test1/logs/9", nil); r.status != http.StatusNotFound {
		t.Errorf("a try that never ran → %d, want 404", r.status)
	}
	batch := c.ok(http.StatusOK, "POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list",
		map[string]any{"dag_ids": []string{"test"}, "dag_run_ids": []string{"e2e_test"}})
	if n := num(batch, "total_entries"); n != 2 {
		t.Errorf("taskInstances/list of e2e_test: %d entries, want 2", n)
	}

	// Clear print_test2: it runs again, as try 2, and the run succeeds
	// again.
	cleared := c.ok(http.StatusOK, "POST", "/api/v1/dags/test/clearTaskInstances", map[string]any{
		"dry_run": false, "dag_run_id": "e2e_test", "task_ids": []string{"print_test2"}, "only_failed": false})
	if refs := items(t, cleared, "task_instances"); len(refs) != 1 || refs[0]["task_id"] != "print_test2" {
		t.Fatalf("clearTaskInstances answered %v, want print_test2", cleared)
	}
	eventually(t, runTimeout, "print_test2 runs again after the clear", func() (bool, string) {
		ti := c.ok(http.StatusOK, "GET", "/api/v1/dags/test/dagRuns/e2e_test/taskInstances/print_test2", nil)
		return ti["state"] == "success" && num(ti, "try_number") == 2, fmt.Sprint(ti["state"], " try ", ti["try_number"])
	})
	waitRun(t, c, "test", "e2e_test", "success")
	waitLog(t, c, "/api/v1/dags/test/dagRuns/e2e_test/taskInstances/print_test2/logs/2", "text/plain", "test2")

	// Pause test: a run triggered meanwhile waits in queued; unpausing
	// starts it.
	p := c.ok(http.StatusOK, "PATCH", "/api/v1/dags/test?update_mask=is_paused", map[string]any{"is_paused": true})
	if p["is_paused"] != true {
		t.Fatalf("PATCH is_paused=true answered %v", p)
	}
	if d := c.ok(http.StatusOK, "GET", "/api/v1/dags/test", nil); d["is_paused"] != true {
		t.Fatalf("GET /dags/test after pausing: is_paused = %v", d["is_paused"])
	}
	queued := c.ok(http.StatusOK, "POST", "/api/v1/dags/test/dagRuns", map[string]any{"dag_run_id": "e2e_paused"})
	if queued["state"] != "queued" {
		t.Fatalf("a run of a paused DAG is %v, want queued", queued["state"])
	}
	c.ok(http.StatusOK, "PATCH", "/api/v1/dags/test", map[string]any{"is_paused": false})
	waitRun(t, c, "test", "e2e_paused", "success")

	// Metrics: every metric of CONTRACT §6, with values that follow from
	// what ran. Task events arrive from the workers a moment after the
	// store has them, and run durations are read back from the store
	// within about a second: wait for the last ones.
	var m metrics
	eventually(t, 30*time.Second, "the last runs and tries in /metrics", func() (bool, string) {
		m = c.scrape()
		// e2e_test finished twice (again after the clear), then e2e_paused.
		n, _ := m.get("trellis_dag_run_duration_seconds_count", "dag_id", "test", "state", "success")
		e, _ := m.get("trellis_dag_run_duration_seconds_count", "dag_id", "etl_example", "state", "success")
		b, _ := m.get("trellis_dag_run_duration_seconds_count", "dag_id", "backup_automation", "state", "success")
		p, _ := m.get("trellis_task_instances_finished_total", "dag_id", "test", "task_id", "print_test2", "state", "success")
		return n >= 3 && e >= 1 && b >= 1 && p >= 3, fmt.Sprintf("runs: test %v, etl_example %v, backup_automation %v; print_test2 tries %v", n, e, b, p)
	})
	checkContractMetrics(t, m)

	// The API's responses covered the endpoints exercised.
	for _, op := range []string{"get_health", "get_dags", "get_dag", "patch_dag", "post_dag_run", "get_dag_run",
		"get_task_instances", "get_task_instance", "get_log", "post_clear_task_instances", "get_task_instances_batch"} {
		if !slices.Contains(c.validated(), op) {
			t.Errorf("no response of %s was validated against the specification (validated: %v)", op, c.validated())
		}
	}

	stopAndCheck(t, srv, dbURL, 2, false)
}

// checkContractMetrics checks that every metric of CONTRACT §6 is in m,
// with values that follow from the runs of testServe.
func checkContractMetrics(t *testing.T, m metrics) {
	t.Helper()
	atLeast := func(min float64, name string, labels ...string) {
		t.Helper()
		v, ok := m.get(name, labels...)
		if !ok {
			t.Errorf("/metrics has no %s%v", name, labels)
			return
		}
		if v < min {
			t.Errorf("%s%v = %v, want at least %v", name, labels, v, min)
		}
	}
	atLeast(1, "trellis_scheduler_heartbeat_total")
	atLeast(1, "trellis_scheduler_loop_duration_seconds_count")
	atLeast(1, "trellis_dag_runs_created_total", "dag_id", "etl_example", "run_type", "manual")
	atLeast(2, "trellis_dag_runs_created_total", "dag_id", "test", "run_type", "manual")
	// Every example DAG has a schedule whose latest interval is due at
	// start-up: the scheduler created and started one scheduled run each.
	atLeast(1, "trellis_dag_runs_created_total", "dag_id", "backup_automation", "run_type", "scheduled")
	atLeast(1, "trellis_dag_run_schedule_delay_seconds_count", "dag_id", "test")
	atLeast(1, "trellis_dag_run_duration_seconds_count", "dag_id", "backup_automation", "state", "success")
	// extract failed once (up_for_retry), then succeeded, in every ETL run.
	atLeast(1, "trellis_task_instances_finished_total", "dag_id", "etl_example", "task_id", "extract", "state", "up_for_retry")
	atLeast(1, "trellis_task_instances_finished_total", "dag_id", "etl_example", "task_id", "extract", "state", "success")
	// print_test2 of e2e_test ran twice (cleared), then once in e2e_paused.
	atLeast(3, "trellis_task_instances_finished_total", "dag_id", "test", "task_id", "print_test2", "state", "success")
	atLeast(2, "trellis_task_duration_seconds_count", "dag_id", "etl_example", "task_id", "extract")
	atLeast(3, "trellis_task_queued_seconds_count", "dag_id", "backup_automation")
	if v, _ := m.get("trellis_task_instances_finished_total", "state", "failed"); v != 0 {
		t.Errorf("%v tries failed for good, want none", v)
	}
	if sum, ok := m.get("trellis_task_duration_seconds_sum", "dag_id", "etl_example"); !ok || sum <= 0 || sum > 60 {
		t.Errorf("etl_example task durations sum to %vs, want a positive number of seconds below a minute", sum)
	}
	for _, st := range []string{"none", "queued", "running", "up_for_retry"} {
		v, ok := m.get("trellis_task_instances", "state", st)
		if !ok || v < 0 {
			t.Errorf("trellis_task_instances{state=%q} = %v (present %v), want a count", st, v, ok)
		}
	}
	if w, _ := m.get("trellis_executor_workers"); w != 2 {
		t.Errorf("trellis_executor_workers = %v, want 2", w)
	}
	open, okOpen := m.get("trellis_executor_slots", "state", "open")
	running, okRunning := m.get("trellis_executor_slots", "state", "running")
	if !okOpen || !okRunning || open+running != 8 || running < 0 {
		t.Errorf("trellis_executor_slots open=%v running=%v, want 8 slots in all (2 workers × 4)", open, running)
	}
	if z, ok := m.get("trellis_zombie_tasks_total"); !ok || z != 0 {
		t.Errorf("trellis_zombie_tasks_total = %v (present %v), want 0", z, ok)
	}
	atLeast(1, "trellis_api_requests_total", "route", "/api/v1/dags/{dag_id}/dagRuns", "method", "POST", "code", "200")
	atLeast(1, "go_goroutines")
	atLeast(0, "process_cpu_seconds_total")
}

// stopAndCheck sends SIGTERM to a server on dbURL running workers worker
// processes, which must exit 0, and checks that none of its processes
// outlives it.
//
// It first waits until the worker processes have registered in the
// database, which they do after installing their signal handlers: a
// worker process that gets SIGTERM before that misses it (main's
// signal.NotifyContext takes it, and the worker-child role runs on a
// context without cancellation) and is only killed after the pool's stop
// timeout, which would make the test slow, not wrong.
//
// With twice set it sends a second SIGTERM once the server has begun
// shutting down, which must halt the workers at once.
func stopAndCheck(t *testing.T, srv *proc, dbURL string, workers int, twice bool) {
	t.Helper()
	st, err := dial.Open(context.Background(), dbURL, dial.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eventually(t, 60*time.Second, "the worker processes register", func() (bool, string) {
		ws, err := st.ListWorkers(context.Background())
		return err == nil && len(ws) >= workers, fmt.Sprint(len(ws), " registered, ", err)
	})
	kids := descendants(srv.cmd.Process.Pid)
	if len(kids) < workers {
		t.Errorf("the server runs %d processes below it, want its %d worker processes", len(kids), workers)
	}
	srv.terminate()
	if twice {
		// Signals do not queue: send the second one once the first was
		// taken.
		eventually(t, 30*time.Second, "the server begins shutting down", func() (bool, string) {
			return strings.Contains(srv.stderr.String(), "serve: shutting down"), ""
		})
		srv.terminate()
	}
	if code := srv.waitExit(); code != 0 {
		t.Fatalf("trellis serve exited with %d after SIGTERM, want 0\nstderr:\n%s", code, srv.stderr)
	}
	if twice && !strings.Contains(srv.stderr.String(), "serve: stopping now") {
		t.Errorf("the second SIGTERM did not halt the workers:\n%s", srv.stderr)
	}
	for _, k := range kids {
		if alive(k) {
			t.Errorf("process %d (child of %d) outlived the server", k.pid, k.ppid)
		}
	}
	for _, want := range []string{"serve: API stopped", "worker pool stopped", "serve: stopped"} {
		if !strings.Contains(srv.stderr.String(), want) {
			t.Errorf("the server's log lacks %s", want)
		}
	}
}

// waitRun polls a run until it reaches a final state, which must be want.
func waitRun(t *testing.T, c *client, dagID, runID, want string) {
	t.Helper()
	path := "/api/v1/dags/" + dagID + "/dagRuns/" + url.PathEscape(runID)
	eventually(t, runTimeout, "run "+dagID+"/"+runID+" finishes", func() (bool, string) {
		r := c.ok(http.StatusOK, "GET", path, nil)
		st := r["state"].(string)
		if st == "success" || st == "failed" {
			if st != want {
				t.Fatalf("run %s/%s ended %s, want %s; task instances: %v", dagID, runID, st, want, taskStates(t, c, dagID, runID))
			}
			return true, st
		}
		return false, st
	})
}

// waitLog reads a try's log, as text or as Airflow's JSON object by
// accept, until it contains every one of wants.
func waitLog(t *testing.T, c *client, path, accept string, wants ...string) {
	t.Helper()
	eventually(t, 30*time.Second, "the log "+path, func() (bool, string) {
		r := c.do("GET", path, nil, "Accept", accept)
		if r.status != http.StatusOK {
			return false, fmt.Sprintf("%d %s", r.status, r.body)
		}
		text := string(r.body)
		if accept == "application/json" {
			content, ok := r.json(t)["content"].(string)
			if !ok {
				return false, "no content in " + text
			}
			text = content
		} else if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			return false, "Content-Type " + ct
		}
		for _, w := range wants {
			if !strings.Contains(text, w) {
				return false, fmt.Sprintf("no %q in %q", w, text)
			}
		}
		return true, ""
	})
}

type tiState struct {
	state string
	try   int
}

// taskStates returns the state and try number of every task instance of
// a run.
func taskStates(t *testing.T, c *client, dagID, runID string) map[string]tiState {
	t.Helper()
	r := c.ok(http.StatusOK, "GET", "/api/v1/dags/"+dagID+"/dagRuns/"+url.PathEscape(runID)+"/taskInstances", nil)
	out := map[string]tiState{}
	for _, ti := range items(t, r, "task_instances") {
		st, _ := ti["state"].(string)
		out[ti["task_id"].(string)] = tiState{state: st, try: num(ti, "try_number")}
	}
	return out
}

func items(t *testing.T, m map[string]any, key string) []map[string]any {
	t.Helper()
	raw, ok := m[key].([]any)
	if !ok {
		t.Fatalf("%s is not a list in %v", key, m)
	}
	out := make([]map[string]any, len(raw))
	for i, v := range raw {
		out[i], _ = v.(map[string]any)
	}
	return out
}

func num(m map[string]any, key string) int {
	f, _ := m[key].(float64)
	return int(f)
}

// TestServeAuth: with a token every request but /health needs it.
func TestServeAuth(t *testing.T) {
	t.Parallel()
	const token = "e2e-s3cret-0123456789"
	dbURL := testdb.SQLite(t)
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + dbURL, "TRELLIS_API_TOKEN=" + token}, serveArgs...)
	anon := newClient(t, srv.url, "")
	wrong := newClient(t, srv.url, "not-the-token")
	good := newClient(t, srv.url, token)
	for _, path := range []string{"/api/v1/dags", "/api/v1/dags/test/dagRuns", "/api/v1/version", "/metrics"} {
		for _, c := range []*client{anon, wrong} {
			r := c.do("GET", path, nil)
			if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") == "" {
				t.Errorf("GET %s with token %q → %d (WWW-Authenticate %q), want 401", path, c.token, r.status, r.header.Get("WWW-Authenticate"))
			}
		}
		if r := good.do("GET", path, nil); r.status != http.StatusOK {
			t.Errorf("GET %s with the token → %d, want 200: %s", path, r.status, r.body)
		}
	}
	if r := anon.do("POST", "/api/v1/dags/test/dagRuns", map[string]any{}); r.status != http.StatusUnauthorized {
		t.Errorf("POST dagRuns without the token → %d, want 401", r.status)
	}
	if r := anon.do("GET", "/api/v1/health", nil); r.status != http.StatusOK {
		t.Errorf("GET /health without the token → %d, want 200", r.status)
	}
	if strings.Contains(srv.stdout.String()+srv.stderr.String(), token) {
		t.Errorf("the server printed its token")
	}
	stopAndCheck(t, srv, dbURL, 2, false)
}

// TestServeListenAddress: without a token a non-loopback address is
// refused, before the database is touched, unless --insecure-no-auth.
func TestServeListenAddress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "trellis.db")
	env := []string{"TRELLIS_DATABASE_URL=sqlite:" + db}
	for _, cmd := range []string{"serve", "api"} {
		code, p := runTrellis(t, env, cmd, "--addr", "0.0.0.0:0")
		if code != 2 {
			t.Errorf("trellis %s --addr 0.0.0.0:0 without a token exited %d, want 2", cmd, code)
		}
		for _, want := range []string{"refusing to serve the API without a token on the non-loopback address 0.0.0.0:0",
			"TRELLIS_API_TOKEN", "--insecure-no-auth"} {
			if !strings.Contains(p.stderr.String(), want) {
				t.Errorf("trellis %s: the error lacks %q:\n%s", cmd, want, p.stderr)
			}
		}
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Errorf("the refused server touched the database %s (stat: %v)", db, err)
	}

	// With --insecure-no-auth it serves, on every interface; a second
	// SIGTERM during the shutdown halts it. The server is the multihost
	// command (the same command line with a DAG whose tasks sleep as long
	// as the run's conf says): its tasks still run in the grace period
	// when the second signal comes, so the shutdown cannot end first.
	bin, err := buildCommand("multihostbin", "github.com/trellis-dag/trellis/e2e/internal/multihostbin")
	if err != nil {
		t.Fatal(err)
	}
	srv := startServing(t, launchCmd(t, exec.Command(bin, "serve", "--addr", "0.0.0.0:0", "--insecure-no-auth", "--workers", "1"), env))
	u, err := url.Parse(srv.url)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, "http://127.0.0.1:"+u.Port(), "")
	c.ok(http.StatusOK, "POST", "/api/v1/dags/multihost/dagRuns", map[string]any{
		"dag_run_id": "slow", "conf": map[string]any{"sleep": "1h", "effects": filepath.Join(dir, "effects")}})
	eventually(t, 60*time.Second, "a task of the run sleeps", func() (bool, string) {
		r := c.ok(http.StatusOK, "GET", "/api/v1/dags/multihost/dagRuns/slow/taskInstances?state=running", nil)
		n, _ := r["total_entries"].(float64)
		return n > 0, fmt.Sprint(n, " running")
	})
	stopAndCheck(t, srv, "sqlite:"+db, 1, true)
}

// TestAPICommand runs `trellis api` alone next to a run triggered by the
// command line: it serves the run and creates new ones; SIGTERM stops it.
func TestAPICommand(t *testing.T) {
	t.Parallel()
	env := []string{"TRELLIS_DATABASE_URL=" + testdb.SQLite(t)}
	if code, p := runTrellis(t, env, "dags", "trigger", "test", "--run-id", "from_cli"); code != 0 {
		t.Fatalf("trellis dags trigger exited %d:\n%s", code, p.stderr)
	}
	srv := startTrellis(t, env, "api", "--addr", "127.0.0.1:0")
	c := newClient(t, srv.url, "")
	run := c.ok(http.StatusOK, "GET", "/api/v1/dags/test/dagRuns/from_cli", nil)
	if run["state"] != "running" || run["run_type"] != "manual" {
		t.Errorf("the CLI's run through the API: %v", run)
	}
	created := c.ok(http.StatusOK, "POST", "/api/v1/dags/test/dagRuns", map[string]any{"dag_run_id": "from_api"})
	if created["state"] != "running" {
		t.Errorf("a run triggered through trellis api is %v, want running (the DAG has room)", created["state"])
	}
	h := c.ok(http.StatusOK, "GET", "/api/v1/health", nil)
	if db, _ := h["metadatabase"].(map[string]any); db["status"] != "healthy" {
		t.Errorf("health: %v", h)
	}
	// A request is counted just after its answer is sent.
	eventually(t, 10*time.Second, "the POST counted in /metrics", func() (bool, string) {
		v, _ := c.scrape().get("trellis_api_requests_total", "route", "/api/v1/dags/{dag_id}/dagRuns", "method", "POST", "code", "200")
		return v == 1, fmt.Sprint(v)
	})
	if descendants(srv.cmd.Process.Pid) != nil {
		t.Errorf("trellis api started processes: %v", descendants(srv.cmd.Process.Pid))
	}
	if code := srv.stop(); code != 0 {
		t.Fatalf("trellis api exited %d after SIGTERM, want 0", code)
	}
}
