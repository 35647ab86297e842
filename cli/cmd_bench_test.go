package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/bench"
	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/internal/testdb"
)

// TestBenchQuick builds trellis and runs every scenario of `trellis bench
// --quick` on SQLite and on PostgreSQL, with real worker processes. Every
// scenario must produce its rows with sane values, and the databases the
// bench made must be gone afterwards.
func TestBenchQuick(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "trellis")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/trellis").CombinedOutput(); err != nil {
		t.Fatalf("build trellis: %v\n%s", err, out)
	}
	sqliteDir := filepath.Join(t.TempDir(), "bench")
	pgServer := testdb.Postgres(t)
	jsonFile := filepath.Join(t.TempDir(), "rows.json")

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "--quick", "--db", "sqlite:"+sqliteDir, "--db", pgServer,
		"--json", jsonFile, "--workers", "2")
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("trellis bench: %v\n--- stdout:\n%s--- stderr:\n%s", err, stdout.String(), stderr.String())
	}
	defer func() {
		if t.Failed() {
			t.Logf("--- stdout:\n%s--- stderr:\n%s", stdout.String(), stderr.String())
		}
	}()

	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	var rows []bench.Row
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rows); err != nil {
		t.Fatalf("--json file is not an array of rows: %v\n%s", err, b)
	}
	got := map[string]bench.Row{} // "scenario/store/metric"
	for _, r := range rows {
		key := r.Scenario + "/" + r.Store + "/" + r.Metric
		if _, dup := got[key]; dup {
			t.Errorf("row %s twice", key)
		}
		got[key] = r
		if r.CPUs != runtime.NumCPU() {
			t.Errorf("row %s: cpus %d, want %d", key, r.CPUs, runtime.NumCPU())
		}
		if r.Value < 0 {
			t.Errorf("row %s: negative value %v", key, r.Value)
		}
	}
	q := bench.QuickSizes()
	for _, st := range []string{"sqlite", "postgres"} {
		v := func(scenario, metric, unit string) float64 {
			t.Helper()
			r, ok := got[scenario+"/"+st+"/"+metric]
			if !ok {
				t.Errorf("no row %s/%s/%s", scenario, st, metric)
				return 0
			}
			if r.Unit != unit {
				t.Errorf("row %s/%s/%s: unit %q, want %q", scenario, st, metric, r.Unit, unit)
			}
			return r.Value
		}
		for _, sc := range []string{"wide", "chain", "shell", "cron", "big"} {
			rss, pss := v(sc, "peak_rss_bytes", "bytes"), v(sc, "peak_pss_bytes", "bytes")
			// The bench process and two worker children, each a Go
			// program with a database driver.
			if rss < 20<<20 || pss <= 0 || pss > rss || rss > 4<<30 {
				t.Errorf("%s on %s: peak memory RSS %v, PSS %v: implausible", sc, st, rss, pss)
			}
		}
		if tps, total := v("wide", "tasks_per_second", "tasks/s"), v("wide", "total_seconds", "s"); tps <= 0 || total <= 0 ||
			!near(tps*total, float64(q.Wide+2)) {
			t.Errorf("wide on %s: %v tasks/s over %v s, want %d tasks", st, tps, total, q.Wide+2)
		}
		if c := v("wide", "run_creation_seconds", "s"); c <= 0 || c >= v("wide", "total_seconds", "s") {
			t.Errorf("wide on %s: run creation %v s, not within the total", st, c)
		}
		for _, sc := range []string{"chain", "shell_chain"} {
			p50, p99, mx := v(sc, "edge_latency_p50_ms", "ms"), v(sc, "edge_latency_p99_ms", "ms"), v(sc, "edge_latency_max_ms", "ms")
			if p50 > p99 || p99 > mx || mx <= 0 || mx > 1000*v(sc, "total_seconds", "s") {
				t.Errorf("%s on %s: edge latency p50 %v ≤ p99 %v ≤ max %v ≤ total does not hold", sc, st, p50, p99, mx)
			}
		}
		if tps, total := v("shell", "tasks_per_second", "tasks/s"), v("shell", "total_seconds", "s"); tps <= 0 || !near(tps*total, float64(q.Shell)) {
			t.Errorf("shell on %s: %v tasks/s over %v s, want %d tasks", st, tps, total, q.Shell)
		}
		expected := float64(q.Cron * int(bench.QuickCronDuration/time.Second))
		created, missed := v("cron", "runs_created", "runs"), v("cron", "runs_missed", "runs")
		if v("cron", "runs_expected", "runs") != expected || created+missed != expected || created == 0 {
			t.Errorf("cron on %s: %v created + %v missed, want %v expected", st, created, missed, expected)
		}
		if p50, p99, mx := v("cron", "fire_lag_p50_ms", "ms"), v("cron", "fire_lag_p99_ms", "ms"), v("cron", "fire_lag_max_ms", "ms"); p50 > p99 || p99 > mx {
			t.Errorf("cron on %s: fire lag p50 %v ≤ p99 %v ≤ max %v does not hold", st, p50, p99, mx)
		}
		if c, tps, total := v("big", "run_creation_seconds", "s"), v("big", "tasks_per_second", "tasks/s"), v("big", "total_seconds", "s"); c <= 0 || tps <= 0 ||
			total <= c || !near(tps*(total-c), float64(q.Big)) {
			t.Errorf("big on %s: creation %v s, %v tasks/s, total %v s: inconsistent with %d tasks", st, c, tps, total, q.Big)
		}
		if s := v("big", "dag_sync_seconds", "s"); s <= 0 {
			t.Errorf("big on %s: DAG sync %v s", st, s)
		}
		// scale: `trellis serve` ran each quick run; its process alone is
		// smaller than its tree, and /metrics answered.
		for _, sc := range []string{"scale_200", "scale_1000", "scale_2000_1", "scale_2000_2", "scale_2000_3"} {
			n, _ := strconv.Atoi(strings.Split(sc, "_")[1])
			if tps, total := v(sc, "tasks_per_second", "tasks/s"), v(sc, "total_seconds", "s"); tps <= 0 || !near(tps*total, float64(n+2)) {
				t.Errorf("%s on %s: %v tasks/s over %v s, want %d tasks", sc, st, tps, total, n+2)
			}
			serve, tree := v(sc, "serve_peak_rss_bytes", "bytes"), v(sc, "tree_peak_rss_bytes", "bytes")
			if serve < 10<<20 || tree <= serve || tree > 4<<30 {
				t.Errorf("%s on %s: serve peak %v bytes, tree peak %v: implausible", sc, st, serve, tree)
			}
			if b := v(sc, "metrics_bytes", "bytes"); b < 1000 || v(sc, "metrics_scrape_ms", "ms") <= 0 {
				t.Errorf("%s on %s: /metrics %v bytes: implausible", sc, st, b)
			}
			if st == "postgres" {
				if hot := v(sc, "hot_update_ratio", "ratio"); hot < 0 || hot > 1 {
					t.Errorf("%s: HOT ratio %v", sc, hot)
				}
				if r := v(sc, "rate_vs_pgbench", "ratio"); r <= 0 {
					t.Errorf("%s: rate vs pgbench %v", sc, r)
				}
			}
		}
		if r := v("scale_2000_3", "rate_vs_reference_run", "ratio"); r <= 0 {
			t.Errorf("scale on %s: rate of the last run vs the 1000-task run %v", st, r)
		}
	}
	if tps, p50, p99 := got["pgbench/postgres/update_tps"].Value, got["pgbench/postgres/commit_notify_p50_ms"].Value,
		got["pgbench/postgres/commit_notify_p99_ms"].Value; tps <= 0 || p50 <= 0 || p50 > p99 {
		t.Errorf("pgbench reference: %v UPDATEs/s, commit + NOTIFY p50 %v ms, p99 %v ms: implausible", tps, p50, p99)
	}

	out := stdout.String()
	wantContains(t, "stdout", out, "SCENARIO", "shell_chain", "tasks_per_second", "postgres", "sqlite", "quick sizes")
	if strings.Contains(out, "TARGET") {
		t.Errorf("the quick table shows targets, which only apply to the full sizes:\n%s", out)
	}

	// Every scenario database is gone.
	if entries, err := os.ReadDir(sqliteDir); err != nil || len(entries) != 0 {
		t.Errorf("SQLite directory after the bench: %v entries, %v; want empty", len(entries), err)
	}
	names := regexp.MustCompile(`database (trellis_bench_[a-z_]+_[0-9a-f]{8})\n`).FindAllStringSubmatch(stderr.String(), -1)
	if len(names) != len(bench.Scenarios) {
		t.Fatalf("stderr names %d PostgreSQL databases, want one per scenario (%d)", len(names), len(bench.Scenarios))
	}
	conn, err := pgx.Connect(ctx, pgServer)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var dbs []string
	for _, n := range names {
		dbs = append(dbs, n[1])
	}
	var left int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = ANY($1)", dbs).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d of the bench's databases %v are still there", left, dbs)
	}

	// The benchmark DAGs only exist in worker children, even with the
	// variable set.
	list := exec.Command(bin, "dags", "list")
	list.Env = append(os.Environ(), bench.EnvDAGs+"=wide=3,cron=2")
	lout, _ := list.CombinedOutput()
	if strings.Contains(string(lout), bench.IDPrefix) {
		t.Errorf("dags list shows benchmark DAGs:\n%s", lout)
	}
}

// near reports whether a and b agree within 1%.
func near(a, b float64) bool { return a > 0.99*b && a < 1.01*b }

func TestBenchUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--scenario", "wide,tall"}, `unknown scenario "tall"`},
		{[]string{"bench", "--db", "mysql://u@db/x"}, "want sqlite, sqlite:DIR, postgres or postgres://"},
		{[]string{"bench", "--cron-duration", "1500ms"}, "want whole seconds"},
		{[]string{"bench", "--quick", "--cron-duration", "0s"}, "at least 1s"},
		{[]string{"bench", "--slots", "0"}, "--slots must be at least 1"},
		{[]string{"bench", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"bench", "--scale-runs", "1000,0"}, "--scale-runs: 0 tasks: want 1 to"},
		{[]string{"bench", "--reference-duration", "0s"}, "--reference-duration must be positive"},
		{[]string{"bench", "extra"}, "takes 0 argument(s)"},
	} {
		r := runCLI(t, cycleRegistry(), nil, tc.args...)
		wantCode(t, r, 2)
		wantContains(t, "stderr", r.stderr, tc.want)
	}
}

// TestServeHasNoBenchDAGs starts a plain `trellis serve` process with the
// benchmark's variables set, as if it had inherited them: it must serve
// the example DAGs and no benchmark DAG, since only `trellis bench --child`
// reads those variables.
func TestServeHasNoBenchDAGs(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "trellis")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/trellis").CombinedOutput(); err != nil {
		t.Fatalf("build trellis: %v\n%s", err, out)
	}
	addr := startServe(t, bin,
		bench.EnvDAGs+"=wide=3,cron=2",
		bench.EnvCPUProfile+"="+filepath.Join(t.TempDir(), "cpu"),
	)
	var body struct {
		DAGs []struct {
			DAGID string `json:"dag_id"`
		} `json:"dags"`
	}
	getJSON(t, "http://"+addr+"/api/v1/dags?limit=100", &body)
	var ids []string
	for _, d := range body.DAGs {
		ids = append(ids, d.DAGID)
		if strings.HasPrefix(d.DAGID, bench.IDPrefix) {
			t.Errorf("serve registered the benchmark DAG %q", d.DAGID)
		}
	}
	if !slices.Contains(ids, "test") {
		t.Errorf("serve's DAGs %v lack the example DAG test", ids)
	}

	// Not even a process marked as a worker child registers them, unless
	// it runs in the bench's child role.
	list := exec.Command(bin, "dags", "list")
	list.Env = append(os.Environ(), bench.EnvDAGs+"=wide=3,cron=2", executor.EnvChild+"=w1")
	lout, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("dags list: %v\n%s", err, lout)
	}
	if strings.Contains(string(lout), bench.IDPrefix) || !strings.Contains(string(lout), "etl_example") {
		t.Errorf("dags list in a worker child's environment shows benchmark DAGs or lacks the examples:\n%s", lout)
	}
}
