package api

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestPurge: POST /api/v1/dagRuns/purge counts (dry run, the default) or
// deletes finished runs that ended before a time or an age, with their
// task instances and logs, and counts them in trellis_purged_total.
func TestPurge(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.trigger("etl", map[string]any{"dag_run_id": "r1", "logical_date": "2026-02-01T00:00:00Z"})
		e.work(nil)
		e.trigger("etl", map[string]any{"dag_run_id": "r2", "logical_date": "2026-02-02T00:00:00Z"})
		const future = "2100-01-01T00:00:00Z"
		check := func(body map[string]any, dry bool, runs, tis, logs int) {
			t.Helper()
			got := e.ok(200, "POST", "/api/v1/dagRuns/purge", body)
			if got["dry_run"] != dry || num(got, "dag_runs") != runs ||
				num(got, "task_instances") != tis || num(got, "logs") != logs {
				t.Errorf("purge %v = %v; want dry_run %v, %d runs, %d instances, %d logs", body, got, dry, runs, tis, logs)
			}
		}
		check(map[string]any{"before": future}, true, 1, 3, 3)
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1", nil), "state"); s != "success" {
			t.Fatalf("r1 after a dry run: %s", s)
		}
		check(map[string]any{"before": "1d", "dry_run": false}, false, 0, 0, 0)
		check(map[string]any{"before": future, "dag_id": "fan", "dry_run": false}, false, 0, 0, 0)
		got := e.ok(200, "POST", "/api/v1/dagRuns/purge", map[string]any{"before": future, "dag_id": "etl", "dry_run": false})
		if got["dag_id"] != "etl" || got["before"] != "2100-01-01T00:00:00+00:00" || num(got, "dag_runs") != 1 {
			t.Errorf("purge of etl: %v", got)
		}
		if r := e.do("GET", "/api/v1/dags/etl/dagRuns/r1", nil); r.status != 404 {
			t.Errorf("purged r1: %d", r.status)
		}
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r2", nil), "state"); s != "running" {
			t.Errorf("running r2 after the purge: %s", s)
		}
		resp, err := http.Get(e.srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range []string{`trellis_purged_total{kind="runs"} 1`, `trellis_purged_total{kind="task_instances"} 3`,
			`trellis_purged_total{kind="logs"} 3`} {
			if !strings.Contains(string(m), line) {
				t.Errorf("metrics lack %s", line)
			}
		}
	})
}
