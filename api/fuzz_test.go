package api

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

var fuzzMethods = []string{"GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"}

// FuzzRouter throws random methods, paths, queries and bodies at the API on
// both stores: no answer may be a 5xx or a panic, every error must be a
// problem body, and every answer of an implemented endpoint must follow
// Airflow's specification. The seed corpus runs in go test.
func FuzzRouter(f *testing.F) {
	seeds := []struct {
		method      byte
		path, query string
		body        string
	}{
		{0, "dags", "", ""},
		{0, "dags", "limit=0&offset=-5&order_by=-dag_id&tags=a,b&paused=x", ""},
		{0, "dags/etl", "fields=dag_id", ""},
		{2, "dags/etl", "update_mask=is_paused", `{"is_paused": false}`},
		{2, "dags/etl", "", `{"is_paused": [1]}`},
		{0, "dags/etl/tasks", "order_by=-retries", ""},
		{0, "dags/etl/tasks/extract", "", ""},
		{0, "dags/etl/graph", "format=dot", ""},
		{0, "dags/~/dagRuns", "state=success&execution_date_gte=2026-01-01", ""},
		{1, "dags/etl/dagRuns", "", `{"dag_run_id": "fz", "conf": {"a": [1, {"b": null}]}, "note": "n"}`},
		{1, "dags/etl/dagRuns", "", `{"conf": {"\u0000": 1}}`},
		{1, "dags/etl/dagRuns", "", `{"note": "a\u0000b"}`},
		{1, "dags/etl/dagRuns", "", `{"logical_date": "0000-01-01T00:00:00Z"}`},
		{1, "dags/etl/dagRuns", "", `{"logical_date": "9999-12-31T23:59:59.999999999-23:59"}`},
		{1, "dags/etl/dagRuns", "", "\xff\xfe{"},
		{1, "dags/~/dagRuns/list", "", `{"dag_ids": ["etl", "a\u0000"], "page_limit": 1e3}`},
		{1, "dags/~/dagRuns/list", "", `{"page_offset": 9223372036854775807}`},
		{0, "dags/etl/dagRuns/fz", "", ""},
		{2, "dags/etl/dagRuns/fz", "", `{"state": "failed"}`},
		{3, "dags/etl/dagRuns/fz", "", ""},
		{0, "dags/etl/dagRuns/fz/taskInstances", "duration_lte=NaN&state=none", ""},
		{0, "dags/etl/dagRuns/fz/taskInstances/extract", "", ""},
		{0, "dags/etl/dagRuns/fz/taskInstances/extract/logs/1", "token=eyJsb2dfcG9zIjotMX0", ""},
		{0, "dags/etl/dagRuns/fz/taskInstances/extract/logs/99999999999999999999", "", ""},
		{1, "dags/etl/clearTaskInstances", "", `{"dry_run": false, "only_failed": false, "include_downstream": true}`},
		{1, "dags/etl/updateTaskInstancesState", "", `{"task_id": "extract", "dag_run_id": "fz", "new_state": "skipped", "dry_run": false}`},
		{1, "dags/~/dagRuns/~/taskInstances/list", "", `{"state": [null, "queued"], "dag_run_ids": ["\u0000"]}`},
		{0, "dags/a%00b", "", ""},
		{0, "dags/etl/dagRuns/%ff%00", "", ""},
		{0, "dags/etl/dagRuns/r/taskInstances/%2e%2e", "", ""},
		{4, "../../etc/passwd", "", ""},
		{0, "dags/" + strings.Repeat("x", 300), "", ""},
		{1, "dags/etl/dagRuns", "", strings.Repeat("[", 10000)},
		{5, "health", "", ""},
		{6, "dags", "", ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.query, []byte(s.body))
	}
	// One API per backend serves every input; the stores are removed when
	// the fuzz test ends.
	var apis []http.Handler
	for _, b := range backends {
		apis = append(apis, newEnv(f, b).srv.Config.Handler)
	}
	f.Fuzz(func(t *testing.T, m byte, path, rawQuery string, body []byte) {
		method := fuzzMethods[int(m)%len(fuzzMethods)]
		for _, h := range apis {
			req := httptest.NewRequest(method, "/", bytes.NewReader(body))
			req.URL = &url.URL{Path: "/api/v1/" + path, RawQuery: rawQuery}
			req.RequestURI = req.URL.RequestURI()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			res := rec.Result()
			data, _ := io.ReadAll(res.Body)
			if problems := validateResponse(req, res.StatusCode, res.Header, data, nil); len(problems) > 0 {
				t.Errorf("%s %s?%s %q → %d:\n  %s\n  %.400s", method, req.URL.Path, rawQuery, body, res.StatusCode,
					strings.Join(problems, "\n  "), data)
			}
		}
	})
}
