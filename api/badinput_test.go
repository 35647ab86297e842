package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// badCase is a request that must fail with status and a problem whose
// detail contains detail.
type badCase struct {
	method, path string
	body         any // string: sent as is
	status       int
	detail       string
}

// badInputCases covers every endpoint. The store holds the fixture DAGs, a
// finished run etl/r1 and a running run etl/r2.
var badInputCases = []badCase{
	// GET /health, /version
	{"POST", "/api/v1/health", "{}", 405, "not allowed"},
	{"DELETE", "/api/v1/version", nil, 405, "not allowed"},

	// GET /dags
	{"GET", "/api/v1/dags?limit=-1", nil, 400, "limit must not be negative, got -1"},
	{"GET", "/api/v1/dags?limit=abc", nil, 400, `"limit" must be an integer`},
	{"GET", "/api/v1/dags?limit=1&limit=2", nil, 400, "given 2 times"},
	{"GET", "/api/v1/dags?offset=-1", nil, 400, "offset must not be negative"},
	{"GET", "/api/v1/dags?order_by=description", nil, 400, `ordering with "description"`},
	{"GET", "/api/v1/dags?only_active=maybe", nil, 400, `"only_active" must be true or false`},
	{"GET", "/api/v1/dags?paused=2", nil, 400, `"paused" must be true or false`},
	{"GET", "/api/v1/dags?fields=dag_id,colour", nil, 400, `unknown field "colour"`},
	{"PUT", "/api/v1/dags", "{}", 405, "not allowed"},

	// GET|PATCH /dags/{dag_id}
	{"GET", "/api/v1/dags/nope", nil, 404, "DAG with dag_id: 'nope' not found"},
	{"GET", "/api/v1/dags/etl?fields=x", nil, 400, `unknown field "x"`},
	{"DELETE", "/api/v1/dags/etl", nil, 405, "allowed: GET, PATCH"},
	{"PATCH", "/api/v1/dags/etl", `{"is_paused": tru`, 400, "not valid JSON"},
	{"PATCH", "/api/v1/dags/etl", "", 400, "body is empty"},
	{"PATCH", "/api/v1/dags/etl", "[true]", 400, "must be a JSON object"},
	{"PATCH", "/api/v1/dags/etl", `{"is_paused": true} {}`, 400, "data after its JSON value"},
	{"PATCH", "/api/v1/dags/etl", "{}", 400, `"is_paused" is required`},
	{"PATCH", "/api/v1/dags/etl", `{"is_paused": "yes"}`, 400, `"is_paused" must be a boolean, got a string`},
	{"PATCH", "/api/v1/dags/etl", `{"is_paused": null}`, 400, `"is_paused" must be a boolean, got null`},
	{"PATCH", "/api/v1/dags/etl", `{"is_paused": true, "colour": "red"}`, 400, `unknown field(s) "colour"`},
	{"PATCH", "/api/v1/dags/etl?update_mask=description", `{"is_paused": true}`, 400, "only the is_paused field"},
	{"PATCH", "/api/v1/dags/etl?update_mask=is_paused,description", `{"is_paused": true}`, 400, "only the is_paused field"},
	{"PATCH", "/api/v1/dags/nope", `{"is_paused": true}`, 404, "'nope' not found"},

	// GET /dags/{dag_id}/tasks, /tasks/{task_id}, /graph
	{"GET", "/api/v1/dags/nope/tasks", nil, 404, "'nope' not found"},
	{"GET", "/api/v1/dags/etl/tasks?order_by=colour", nil, 400, `ordering with "colour"`},
	{"GET", "/api/v1/dags/etl/tasks/nope", nil, 404, "task_id: 'nope' not found in DAG 'etl'"},
	{"GET", "/api/v1/dags/nope/tasks/extract", nil, 404, "'nope' not found"},
	{"GET", "/api/v1/dags/etl/graph?format=png", nil, 400, `"format" must be json or dot`},
	{"GET", "/api/v1/dags/nope/graph", nil, 404, "'nope' not found"},

	// GET|POST /dags/{dag_id}/dagRuns
	{"GET", "/api/v1/dags/nope/dagRuns", nil, 404, "'nope' not found"},
	{"GET", "/api/v1/dags/etl/dagRuns?state=bogus", nil, 400, `unknown DAG run state "bogus"`},
	{"GET", "/api/v1/dags/etl/dagRuns?execution_date_gte=yesterday", nil, 400, `"execution_date_gte": invalid date-time "yesterday"`},
	{"GET", "/api/v1/dags/etl/dagRuns?end_date_lte=2026-13-01T00:00:00Z", nil, 400, "invalid date-time"},
	{"GET", "/api/v1/dags/etl/dagRuns?updated_at_gte=x", nil, 400, "invalid date-time"},
	{"GET", "/api/v1/dags/etl/dagRuns?order_by=conf", nil, 400, `ordering with "conf"`},
	{"GET", "/api/v1/dags/etl/dagRuns?limit=-5", nil, 400, "limit must not be negative"},
	{"POST", "/api/v1/dags/nope/dagRuns", "{}", 404, "'nope' not found"},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"dag_run_id": "a/b"}`, 400, `"dag_run_id" "a/b" must be`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"dag_run_id": 123}`, 400, `"dag_run_id" must be a string, got a number`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"dag_run_id": ""}`, 400, `"dag_run_id" "" must be`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"logical_date": "tomorrow"}`, 400, `"logical_date": invalid date-time`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"logical_date": 5}`, 400, `"logical_date" must be a date-time string`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"logical_date": "2026-01-01T00:00:00Z", "execution_date": "2026-01-02T00:00:00Z"}`, 400, "differ"},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"data_interval_start": "2026-01-01T00:00:00Z"}`, 400, `give both data_interval_start and data_interval_end`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"data_interval_start": "2026-01-02T00:00:00Z", "data_interval_end": "2026-01-01T00:00:00Z"}`, 400, `data_interval_end 2026-01-01T00:00:00+00:00 is before data_interval_start`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"data_interval_start": "yesterday", "data_interval_end": "2026-01-01T00:00:00Z"}`, 400, `data_interval_start`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"conf": {"a": "\u0000"}}`, 400, "must not contain NUL"},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"note": "a\u0000"}`, 400, "must not contain NUL"},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"conf": {"n": 1e400}}`, 400, `field "conf.n": the number (5 characters) is beyond the range of a 64-bit float`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"conf": {"a": [` + strings.Repeat("7", 400) + `]}}`, 400, `field "conf.a[0]": the number (400 characters)`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"conf": []}`, 400, `"conf" must be a JSON object, got an array`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"conf": "x"}`, 400, `"conf" must be a JSON object, got a string`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"note": 5}`, 400, `"note" must be a string`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"state": "success"}`, 400, `"state" is read-only`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"dag_id": "etl"}`, 400, `"dag_id" is read-only`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"colour": 1, "size": 2}`, 400, `unknown field(s) "colour", "size"`},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"dag_run_id": "r1"}`, 409, "DAGRun ID: 'r1' already exists"},
	{"POST", "/api/v1/dags/etl/dagRuns", `{"dag_run_id": "r9", "logical_date": "2026-02-01T00:00:00Z"}`, 409, "already exists"},
	{"POST", "/api/v1/dags/etl/dagRuns", "{", 400, "not valid JSON"},
	{"POST", "/api/v1/dags/etl/dagRuns", "", 400, "body is empty"},
	{"DELETE", "/api/v1/dags/etl/dagRuns", nil, 405, "allowed: GET, POST"},

	// POST /dags/~/dagRuns/list
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"page_limit": 0}`, 400, "page_limit must be between 1 and 1000"},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"page_limit": "x"}`, 400, `"page_limit" must be an integer`},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"page_limit": 1.5}`, 400, `"page_limit" must be an integer`},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"page_offset": -1}`, 400, "page_offset must not be negative"},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"states": ["bogus"]}`, 400, `unknown DAG run state "bogus"`},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"dag_ids": "etl"}`, 400, `"dag_ids" must be an array of strings`},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"execution_date_gte": "x"}`, 400, "invalid date-time"},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"order_by": "conf"}`, 400, `ordering with "conf"`},
	{"POST", "/api/v1/dags/~/dagRuns/list", `{"limit": 5}`, 400, `unknown field(s) "limit"`},
	{"POST", "/api/v1/dags/~/dagRuns/list", `"x"`, 400, "must be a JSON object"},

	// GET|PATCH|DELETE /dags/{dag_id}/dagRuns/{dag_run_id}
	{"GET", "/api/v1/dags/etl/dagRuns/nope", nil, 404, "DagRun ID: 'nope' not found"},
	{"GET", "/api/v1/dags/nope/dagRuns/r1", nil, 404, "DAG ID: 'nope'"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1?fields=colour", nil, 400, `unknown field "colour"`},
	{"PATCH", "/api/v1/dags/etl/dagRuns/r1", `{"state": "running"}`, 400, `must be success, failed or queued, got "running"`},
	{"PATCH", "/api/v1/dags/etl/dagRuns/r1", `{"state": 1}`, 400, `"state" must be a string, got a number`},
	{"PATCH", "/api/v1/dags/etl/dagRuns/r1", `{}`, 400, `"state" is required`},
	{"PATCH", "/api/v1/dags/etl/dagRuns/r1", `{"state": "failed", "conf": {}}`, 400, `unknown field(s) "conf"`},
	{"PATCH", "/api/v1/dags/etl/dagRuns/nope", `{"state": "failed"}`, 404, "DagRun ID: 'nope' not found"},
	{"DELETE", "/api/v1/dags/etl/dagRuns/nope", nil, 404, "DagRun ID: 'nope' not found"},
	{"POST", "/api/v1/dags/etl/dagRuns/r1", "{}", 405, "allowed: GET, PATCH, DELETE"},

	// GET …/taskInstances, …/taskInstances/{task_id}
	{"GET", "/api/v1/dags/etl/dagRuns/nope/taskInstances", nil, 404, "DagRun ID: 'nope' not found"},
	{"GET", "/api/v1/dags/nope/dagRuns/~/taskInstances", nil, 404, "'nope' not found"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances?state=bogus", nil, 400, `unknown task instance state "bogus"`},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances?duration_gte=abc", nil, 400, `"duration_gte" must be a number`},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances?limit=-1", nil, 400, "limit must not be negative"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances?start_date_gte=1st", nil, 400, "invalid date-time"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/nope", nil, 404, "task_id: 'nope' not found"},
	{"GET", "/api/v1/dags/etl/dagRuns/nope/taskInstances/extract", nil, 404, "DagRun ID: 'nope' not found"},
	{"PUT", "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract", "{}", 405, "not allowed"},

	// GET …/logs/{task_try_number}
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/0", nil, 400, "positive integer, got \"0\""},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/abc", nil, 400, "positive integer"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/5", nil, 404, "there is no try 5"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/1?token=garbage!", nil, 400, "not a continuation token"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/1?map_index=3", nil, 404, "not found"},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/1?full_content=maybe", nil, 400, `"full_content" must be true or false`},
	{"GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/nope/logs/1", nil, 404, "task_id: 'nope' not found"},

	// POST /dags/{dag_id}/clearTaskInstances
	{"POST", "/api/v1/dags/nope/clearTaskInstances", "{}", 404, "'nope' not found"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"dag_run_id": "nope"}`, 404, "DagRun ID: 'nope' not found"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"only_running": true}`, 400, "cannot both be true"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"start_date": "2026-02-02T00:00:00Z", "end_date": "2026-02-01T00:00:00Z"}`, 400, "end_date is before start_date"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"dag_run_id": "r1", "start_date": "2026-02-01T00:00:00Z"}`, 400, "not both"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"include_past": true}`, 400, "need dag_run_id"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"task_ids": []}`, 400, "at least one task id"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"dry_run": "no"}`, 400, `"dry_run" must be a boolean`},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"start_date": "soon"}`, 400, "invalid date-time"},
	{"POST", "/api/v1/dags/etl/clearTaskInstances", `{"reset_dag_run": true}`, 400, `unknown field(s) "reset_dag_run"`},
	{"GET", "/api/v1/dags/etl/clearTaskInstances", nil, 405, "allowed: POST"},

	// POST /dags/{dag_id}/updateTaskInstancesState
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"dag_run_id": "r1", "new_state": "success"}`, 400, `"task_id" is required`},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "dag_run_id": "r1"}`, 400, `"new_state" is required`},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "dag_run_id": "r1", "new_state": "running"}`, 400, `got "running"`},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "new_state": "failed"}`, 400, "exactly one of dag_run_id and execution_date"},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "new_state": "failed", "dag_run_id": "r1", "execution_date": "2026-02-01T00:00:00Z"}`, 400, "exactly one"},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "new_state": "failed", "dag_run_id": 7}`, 400, `"dag_run_id" must be a string`},
	{"POST", "/api/v1/dags/nope/updateTaskInstancesState", `{"task_id": "x", "new_state": "failed", "dag_run_id": "r1"}`, 404, "'nope' not found"},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "nope", "new_state": "failed", "dag_run_id": "r1"}`, 404, "task_id: 'nope' not found"},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "new_state": "failed", "dag_run_id": "nope"}`, 404, "DagRun ID: 'nope' not found"},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "new_state": "failed", "execution_date": "2030-01-01T00:00:00Z"}`, 404, "logical date '2030-01-01T00:00:00+00:00' not found"},
	{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{"task_id": "extract", "new_state": "failed", "dag_run_id": "r1", "map_index": 1}`, 400, `unknown field(s) "map_index"`},

	// POST /dags/~/dagRuns/~/taskInstances/list
	{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"state": ["bogus"]}`, 400, `unknown task instance state "bogus"`},
	{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"state": "failed"}`, 400, `"state" must be an array`},
	{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"dag_ids": 5}`, 400, `"dag_ids" must be an array of strings, got a number`},
	{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"page_limit": 0}`, 400, "page_limit must be between"},
	{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"duration_gte": "x"}`, 400, `"duration_gte" must be a number`},
	{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"pool": "default_pool"}`, 400, `"pool" must be an array`},
	{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"order_by": "x"}`, 400, `unknown field(s) "order_by"`},

	// POST /dagRuns/purge
	{"POST", "/api/v1/dagRuns/purge", `{}`, 400, `field "before" is required`},
	{"POST", "/api/v1/dagRuns/purge", `{"before": "soon"}`, 400, `"before" "soon" is neither a date-time`},
	{"POST", "/api/v1/dagRuns/purge", `{"before": "-3d"}`, 400, "is neither a date-time"},
	{"POST", "/api/v1/dagRuns/purge", `{"before": 5}`, 400, `"before" must be a string`},
	{"POST", "/api/v1/dagRuns/purge", `{"before": "30d", "dry_run": "no"}`, 400, `"dry_run" must be a boolean`},
	{"POST", "/api/v1/dagRuns/purge", `{"before": "30d", "dag_id": "nope"}`, 404, "'nope' not found"},
	{"POST", "/api/v1/dagRuns/purge", `{"before": "30d", "state": "failed"}`, 400, `unknown field(s) "state"`},
	{"GET", "/api/v1/dagRuns/purge", nil, 405, "allowed: POST"},

	// Long ids
	{"GET", "/api/v1/dags/etl/dagRuns/" + strings.Repeat("r", 8000), nil, 404, "not found"},
	{"GET", "/api/v1/dags/" + strings.Repeat("d", 300), nil, 404, "not found"},

	// Unknown paths
	{"GET", "/api/v1/dagz", nil, 404, "no endpoint"},
	{"GET", "/api/v2/dags", nil, 404, "no endpoint"},
}

func TestBadInput(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.trigger("etl", map[string]any{"dag_run_id": "r1", "logical_date": "2026-02-01T00:00:00Z"})
		e.work(nil)
		e.trigger("etl", map[string]any{"dag_run_id": "r2", "logical_date": "2026-02-02T00:00:00Z"})
		for _, c := range badInputCases {
			r := e.do(c.method, c.path, c.body)
			if r.status != c.status {
				t.Errorf("%s %s %v: status %d, want %d\n%s", c.method, c.path, c.body, r.status, c.status, r.body)
				continue
			}
			var p Problem
			if err := json.Unmarshal(r.body, &p); err != nil {
				t.Errorf("%s %s: problem body: %v", c.method, c.path, err)
				continue
			}
			if !strings.Contains(p.Detail, c.detail) {
				t.Errorf("%s %s %v: detail %q does not contain %q", c.method, c.path, c.body, p.Detail, c.detail)
			}
		}
		// Nothing of the above changed the state.
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1", nil), "state"); s != "success" {
			t.Errorf("r1 is %s after the bad requests, want success", s)
		}
		if p := e.ok(200, "GET", "/api/v1/dags/etl", nil)["is_paused"]; p != false {
			t.Errorf("etl paused = %v after the bad requests", p)
		}
	})
}

// TestBadInputCoversEveryEndpoint checks the table has a case for every
// route of the router.
func TestBadInputCoversEveryEndpoint(t *testing.T) {
	routes := []string{
		"/health", "/version", "/dags", "/dags/x", "/dags/x/tasks", "/dags/x/tasks/y", "/dags/x/graph",
		"/dags/x/dagRuns", "/dags/~/dagRuns/list", "/dags/x/dagRuns/y", "/dags/x/dagRuns/y/taskInstances",
		"/dags/x/dagRuns/y/taskInstances/z", "/dags/x/dagRuns/y/taskInstances/z/logs/1",
		"/dags/x/clearTaskInstances", "/dags/x/updateTaskInstancesState", "/dags/~/dagRuns/~/taskInstances/list",
		"/dagRuns/purge",
	}
	for _, r := range routes {
		shape := routeShape(r)
		found := false
		for _, c := range badInputCases {
			p, _, _ := strings.Cut(strings.TrimPrefix(c.path, "/api/v1"), "?")
			if routeShape(p) == shape {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no bad-input case for %s", r)
		}
	}
}

// routeShape replaces the variable segments of a path by *.
func routeShape(p string) string {
	segs := strings.Split(p, "/")
	fixed := map[string]bool{"": true, "health": true, "version": true, "dags": true, "tasks": true, "graph": true,
		"dagRuns": true, "list": true, "taskInstances": true, "logs": true, "clearTaskInstances": true,
		"updateTaskInstancesState": true, "~": true, "purge": true}
	for i, s := range segs {
		if !fixed[s] {
			segs[i] = "*"
		}
	}
	return strings.Join(segs, "/")
}
