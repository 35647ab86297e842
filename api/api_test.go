package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func TestVersionAndHealth(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		clk := clock.NewFake(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
		metrics := NewMetrics(clk)
		e := newEnv(t, backend, func(c *Config) { c.Metrics = metrics; c.Clock = clk })

		v := e.ok(200, "GET", "/api/v1/version", nil)
		if str(v, "version") != "1.2.3-test" {
			t.Errorf("version = %v", v)
		}

		h := e.ok(200, "GET", "/api/v1/health", nil)
		db := h["metadatabase"].(map[string]any)
		sch := h["scheduler"].(map[string]any)
		if db["status"] != "healthy" {
			t.Errorf("metadatabase = %v, want healthy", db)
		}
		if sch["status"] != "unhealthy" || sch["latest_scheduler_heartbeat"] != nil {
			t.Errorf("scheduler before any heartbeat = %v, want unhealthy with null heartbeat", sch)
		}

		metrics.SchedulerHeartbeat()
		clk.Advance(10 * time.Second)
		sch = e.ok(200, "GET", "/api/v1/health", nil)["scheduler"].(map[string]any)
		if sch["status"] != "healthy" || sch["latest_scheduler_heartbeat"] != "2026-03-01T12:00:00+00:00" {
			t.Errorf("scheduler 10s after a heartbeat = %v, want healthy at 12:00:00", sch)
		}
		clk.Advance(25 * time.Second)
		sch = e.ok(200, "GET", "/api/v1/health", nil)["scheduler"].(map[string]any)
		if sch["status"] != "unhealthy" {
			t.Errorf("scheduler 35s after a heartbeat = %v, want unhealthy", sch)
		}
	})
}

// heartbeatStore is a store that records scheduler heartbeats.
type heartbeatStore struct {
	store.Store
	at time.Time
}

func (h heartbeatStore) LatestSchedulerHeartbeat(context.Context) (time.Time, bool, error) {
	return h.at, true, nil
}

func TestHealthReadsStoreHeartbeats(t *testing.T) {
	at := time.Now().Add(-2 * time.Second).UTC().Truncate(time.Microsecond)
	e := newEnv(t, "sqlite", func(c *Config) { c.Store = heartbeatStore{Store: c.Store, at: at} })
	sch := e.ok(200, "GET", "/api/v1/health", nil)["scheduler"].(map[string]any)
	if sch["status"] != "healthy" || sch["latest_scheduler_heartbeat"] != formatTime(at) {
		t.Errorf("scheduler = %v, want healthy at %s (from the store)", sch, formatTime(at))
	}
}

func TestHealthDatabaseDown(t *testing.T) {
	e := newEnv(t, "sqlite")
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	h := e.ok(200, "GET", "/api/v1/health", nil)
	if db := h["metadatabase"].(map[string]any); db["status"] != "unhealthy" {
		t.Errorf("metadatabase with a closed store = %v, want unhealthy", db)
	}
}

func TestDAGs(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		all := e.ok(200, "GET", "/api/v1/dags", nil)
		if num(all, "total_entries") != 3 {
			t.Fatalf("total_entries = %v, want 3", all["total_entries"])
		}
		var ids []string
		for _, d := range items(t, all, "dags") {
			ids = append(ids, str(d, "dag_id"))
		}
		if !slices.Equal(ids, []string{"etl", "fan", "solo"}) {
			t.Errorf("dag ids = %v, want etl fan solo", ids)
		}

		etl := e.ok(200, "GET", "/api/v1/dags/etl", nil)
		if etl["is_paused"] != false || etl["is_active"] != true || str(etl, "description") != "extract, transform, load" {
			t.Errorf("etl = %v", etl)
		}
		if si := etl["schedule_interval"].(map[string]any); si["__type"] != "CronExpression" || si["value"] != "@daily" {
			t.Errorf("etl schedule_interval = %v", si)
		}
		if tags := etl["tags"].([]any); len(tags) != 2 {
			t.Errorf("etl tags = %v", tags)
		}
		solo := e.ok(200, "GET", "/api/v1/dags/solo", nil)
		if solo["schedule_interval"] != nil {
			t.Errorf("manual DAG schedule_interval = %v, want null", solo["schedule_interval"])
		}

		// As in Airflow, limit=0 is the default page size and a limit
		// above the maximum is the maximum.
		small := newEnv(t, backend, func(c *Config) { c.DefaultPageLimit, c.MaxPageLimit = 1, 2 })
		for query, want := range map[string]int{"": 1, "?limit=0": 1, "?limit=2": 2, "?limit=1000": 2} {
			if got := small.ok(200, "GET", "/api/v1/dags"+query, nil); len(items(t, got, "dags")) != want || num(got, "total_entries") != 3 {
				t.Errorf("GET /dags%s with page sizes 1 (default) and 2 (maximum): %v, want %d of 3", query, got, want)
			}
		}

		// Pagination, descending order, filters.
		page := e.ok(200, "GET", "/api/v1/dags?limit=1&offset=1&order_by=-dag_id", nil)
		if d := items(t, page, "dags"); len(d) != 1 || str(d[0], "dag_id") != "fan" || num(page, "total_entries") != 3 {
			t.Errorf("limit=1 offset=1 order_by=-dag_id = %v, want fan of 3", page)
		}
		for query, want := range map[string][]string{
			"tags=prod":                      {"etl"},
			"tags=dev&tags=prod":             {"etl", "fan"},
			"tags=dev,prod&order_by=-dag_id": {"fan", "etl"},
			"dag_id_pattern=O":               {"solo"},
			"dag_id_pattern=L&limit=1":       {"etl"},
			"paused=true":                    {},
			"fields=dag_id,is_paused":        {"etl", "fan", "solo"},
		} {
			got := e.ok(200, "GET", "/api/v1/dags?"+query, nil)
			var ids []string
			for _, d := range items(t, got, "dags") {
				ids = append(ids, str(d, "dag_id"))
				if strings.HasPrefix(query, "fields=") && len(d) != 2 {
					t.Errorf("%s: dag has fields %v, want only dag_id and is_paused", query, d)
				}
			}
			if !slices.Equal(ids, want) && !(len(ids) == 0 && len(want) == 0) {
				t.Errorf("GET /dags?%s = %v, want %v", query, ids, want)
			}
		}
		if got := e.ok(200, "GET", "/api/v1/dags?dag_id_pattern=L&limit=1", nil); num(got, "total_entries") != 2 {
			t.Errorf("dag_id_pattern=L total_entries = %v, want 2 (etl, solo)", got["total_entries"])
		}

		// Pause with update_mask, then unpause without it.
		p := e.ok(200, "PATCH", "/api/v1/dags/solo?update_mask=is_paused", map[string]any{"is_paused": true})
		if p["is_paused"] != true {
			t.Errorf("PATCH is_paused=true answered %v", p["is_paused"])
		}
		if d, err := e.store.GetDAG(context.Background(), "solo"); err != nil || !d.Paused {
			t.Errorf("store after pause: paused=%v err=%v", d.Paused, err)
		}
		paused := e.ok(200, "GET", "/api/v1/dags?paused=true", nil)
		if d := items(t, paused, "dags"); len(d) != 1 || str(d[0], "dag_id") != "solo" {
			t.Errorf("paused=true = %v, want solo", paused)
		}
		// GET-modify-PATCH: read-only fields in the body are ignored.
		solo["is_paused"] = false
		if p := e.ok(200, "PATCH", "/api/v1/dags/solo", solo); p["is_paused"] != false {
			t.Errorf("PATCH with the whole object answered is_paused %v", p["is_paused"])
		}
	})
}

func TestTasks(t *testing.T) {
	e := newEnv(t, "sqlite")
	tasks := e.ok(200, "GET", "/api/v1/dags/etl/tasks", nil)
	ts := items(t, tasks, "tasks")
	var ids []string
	for _, x := range ts {
		ids = append(ids, str(x, "task_id"))
	}
	if !slices.Equal(ids, []string{"extract", "load", "transform"}) {
		t.Errorf("tasks ordered by task_id = %v", ids)
	}
	desc := e.ok(200, "GET", "/api/v1/dags/etl/tasks?order_by=-priority_weight", nil)
	if first := items(t, desc, "tasks")[0]; str(first, "task_id") != "transform" {
		t.Errorf("first by -priority_weight = %v, want transform", first["task_id"])
	}
	ex := e.ok(200, "GET", "/api/v1/dags/etl/tasks/extract", nil)
	if num(ex, "retries") != 2 || ex["trigger_rule"] != "all_success" {
		t.Errorf("extract = %v", ex)
	}
	rd := ex["retry_delay"].(map[string]any)
	if rd["__type"] != "TimeDelta" || num(rd, "seconds") != 90 || num(rd, "days") != 0 {
		t.Errorf("extract retry_delay = %v, want 90 s", rd)
	}
	if ds := ex["downstream_task_ids"].([]any); len(ds) != 1 || ds[0] != "transform" {
		t.Errorf("extract downstream = %v", ds)
	}
	tr := e.ok(200, "GET", "/api/v1/dags/etl/tasks/transform", nil)
	if et := tr["execution_timeout"].(map[string]any); num(et, "seconds") != 3600 {
		t.Errorf("transform execution_timeout = %v, want 3600 s", et)
	}
	if cr := tr["class_ref"].(map[string]any); cr["class_name"] != "Func" {
		t.Errorf("transform class_ref = %v", cr)
	}
	join := e.ok(200, "GET", "/api/v1/dags/fan/tasks/join", nil)
	if join["trigger_rule"] != "all_done" {
		t.Errorf("join trigger_rule = %v", join["trigger_rule"])
	}
}

func TestGraph(t *testing.T) {
	e := newEnv(t, "sqlite")
	r := e.do("GET", "/api/v1/dags/fan/graph", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("graph json: %d %s", r.status, r.header.Get("Content-Type"))
	}
	var g struct {
		DAGID string `json:"dag_id"`
		Tasks []any  `json:"tasks"`
		Edges []struct {
			From, To string
		} `json:"edges"`
	}
	if err := json.Unmarshal(r.body, &g); err != nil || g.DAGID != "fan" || len(g.Tasks) != 4 || len(g.Edges) != 4 {
		t.Errorf("graph json = %+v (%v)\n%s", g, err, r.body)
	}
	r = e.do("GET", "/api/v1/dags/fan/graph?format=dot", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/vnd.graphviz") ||
		!strings.Contains(string(r.body), `"start" -> "a"`) {
		t.Errorf("graph dot: %d %s\n%s", r.status, r.header.Get("Content-Type"), r.body)
	}
}

func TestTriggerAndRuns(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		ld := "2026-02-01T00:00:00+00:00"
		run := e.trigger("etl", map[string]any{
			"dag_run_id": "my_run", "logical_date": ld, "conf": map[string]any{"x": 1}, "note": "by test",
		})
		if str(run, "dag_run_id") != "my_run" || str(run, "logical_date") != ld || str(run, "run_type") != "manual" ||
			run["external_trigger"] != true || str(run, "note") != "by test" {
			t.Errorf("triggered run = %v", run)
		}
		if c := run["conf"].(map[string]any); c["x"] != float64(1) {
			t.Errorf("conf = %v", c)
		}
		if s := str(run, "state"); s != "running" && s != "queued" {
			t.Errorf("state = %s", s)
		}
		// The same run id again is a conflict; so is the same logical date.
		r := e.do("POST", "/api/v1/dags/etl/dagRuns", map[string]any{"dag_run_id": "my_run"})
		if r.status != 409 || !strings.Contains(string(r.body), "my_run") {
			t.Errorf("same run id: %d %s", r.status, r.body)
		}
		r = e.do("POST", "/api/v1/dags/etl/dagRuns", map[string]any{"logical_date": ld})
		if r.status != 409 {
			t.Errorf("same logical date: %d %s", r.status, r.body)
		}
		// A generated id, and execution_date as a synonym.
		auto := e.trigger("etl", map[string]any{"execution_date": "2026-02-02T00:00:00Z"})
		if id := str(auto, "dag_run_id"); !strings.HasPrefix(id, "manual__2026-02-02T00:00:00") {
			t.Errorf("generated run id = %q", id)
		}
		e.trigger("solo", nil)

		got := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/my_run", nil)
		if str(got, "dag_run_id") != "my_run" || str(got, "dag_id") != "etl" {
			t.Errorf("GET run = %v", got)
		}
		runs := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns", nil)
		if num(runs, "total_entries") != 2 {
			t.Errorf("etl runs total = %v, want 2", runs["total_entries"])
		}
		if rs := items(t, runs, "dag_runs"); str(rs[0], "dag_run_id") != "my_run" {
			t.Errorf("default order (id): first = %v, want my_run", rs[0]["dag_run_id"])
		}
		all := e.ok(200, "GET", "/api/v1/dags/~/dagRuns?order_by=-execution_date&limit=1", nil)
		if num(all, "total_entries") != 3 || len(items(t, all, "dag_runs")) != 1 {
			t.Errorf("all runs = %v", all)
		}
		filtered := e.ok(200, "GET", "/api/v1/dags/~/dagRuns?execution_date_gte="+url.QueryEscape("2026-02-01T12:00:00+00:00")+"&execution_date_lte=2026-02-03T00:00:00Z", nil)
		if rs := items(t, filtered, "dag_runs"); len(rs) != 1 || !strings.HasPrefix(str(rs[0], "dag_run_id"), "manual__2026-02-02") {
			t.Errorf("execution date range = %v", filtered)
		}
		// An unescaped '+' of a zone offset arrives as a space: still read.
		plus := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns?execution_date_lte=2026-02-01T00:00:00+00:00", nil)
		if num(plus, "total_entries") != 1 {
			t.Errorf("execution_date_lte with a raw '+' = %v, want 1 run", plus["total_entries"])
		}
		batch := e.ok(200, "POST", "/api/v1/dags/~/dagRuns/list", map[string]any{
			"dag_ids": []string{"etl", "solo"}, "order_by": "-execution_date", "page_limit": 2, "page_offset": 0,
		})
		if num(batch, "total_entries") != 3 || len(items(t, batch, "dag_runs")) != 2 {
			t.Errorf("batch list = %v", batch)
		}
		none := e.ok(200, "POST", "/api/v1/dags/~/dagRuns/list", map[string]any{"states": []string{"success"}})
		if num(none, "total_entries") != 0 {
			t.Errorf("no run succeeded yet, got %v", none)
		}
		updated := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns?updated_at_gte=2000-01-01T00:00:00Z&limit=1", nil)
		if num(updated, "total_entries") != 2 || len(items(t, updated, "dag_runs")) != 1 {
			t.Errorf("updated_at_gte = %v", updated)
		}

		// Run the first run to success; the list by state sees it.
		e.work(nil)
		done := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/my_run", nil)
		if str(done, "state") != "success" || done["end_date"] == nil || done["start_date"] == nil {
			t.Errorf("after work: %v", done)
		}
		succ := e.ok(200, "GET", "/api/v1/dags/~/dagRuns?state=success", nil)
		if num(succ, "total_entries") != 3 {
			t.Errorf("state=success total = %v, want 3", succ["total_entries"])
		}

		// DELETE removes a finished run and its task instances.
		e.ok(204, "DELETE", "/api/v1/dags/etl/dagRuns/my_run", nil)
		e.ok(404, "GET", "/api/v1/dags/etl/dagRuns/my_run", nil)
		e.ok(404, "GET", "/api/v1/dags/etl/dagRuns/my_run/taskInstances", nil)
		e.ok(404, "DELETE", "/api/v1/dags/etl/dagRuns/my_run", nil)
	})
}

func TestTriggerPausedAndInactive(t *testing.T) {
	e := newEnv(t, "sqlite")
	e.ok(200, "PATCH", "/api/v1/dags/solo", map[string]any{"is_paused": true})
	run := e.trigger("solo", nil)
	if str(run, "state") != "queued" {
		t.Errorf("run of a paused DAG is %s, want queued", str(run, "state"))
	}
	// A DAG gone from the binary cannot be triggered.
	var specs []store.DAGSpec
	for _, d := range e.reg.DAGs() {
		if d.ID() != "solo" {
			specs = append(specs, store.SpecFromDAG(d))
		}
	}
	if err := e.store.SyncDAGs(context.Background(), specs); err != nil {
		t.Fatal(err)
	}
	r := e.do("POST", "/api/v1/dags/solo/dagRuns", map[string]any{})
	if r.status != 404 || !strings.Contains(string(r.body), "inactive") {
		t.Errorf("trigger of an inactive DAG: %d %s", r.status, r.body)
	}
	if got := e.ok(200, "GET", "/api/v1/dags", nil); num(got, "total_entries") != 2 {
		t.Errorf("only_active default lists %v DAGs, want 2", got["total_entries"])
	}
	if got := e.ok(200, "GET", "/api/v1/dags?only_active=false", nil); num(got, "total_entries") != 3 {
		t.Errorf("only_active=false lists %v DAGs, want 3", got["total_entries"])
	}
}

func TestPatchRun(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.trigger("etl", map[string]any{"dag_run_id": "r1"})
		// Start extract, then cancel the run: extract fails, the rest skip.
		ctx := context.Background()
		claimed, err := e.store.ClaimTasks(ctx, e.worker, 10, time.Now())
		if err != nil || len(claimed) != 1 || claimed[0].TaskID != "extract" {
			t.Fatalf("claim: %v %v", claimed, err)
		}
		run := e.ok(200, "PATCH", "/api/v1/dags/etl/dagRuns/r1", map[string]any{"state": "failed"})
		if str(run, "state") != "failed" {
			t.Errorf("PATCH failed answered %v", run["state"])
		}
		tis := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances", nil)
		states := map[string]any{}
		for _, ti := range items(t, tis, "task_instances") {
			states[str(ti, "task_id")] = ti["state"]
		}
		if states["extract"] != "failed" || states["transform"] != "skipped" || states["load"] != "skipped" {
			t.Errorf("after cancel: %v", states)
		}
		// Mark it success: every unfinished task... none left; the run is success.
		e.trigger("etl", map[string]any{"dag_run_id": "r2"})
		run = e.ok(200, "PATCH", "/api/v1/dags/etl/dagRuns/r2", map[string]any{"state": "success"})
		if str(run, "state") != "success" {
			t.Errorf("PATCH success answered %v", run["state"])
		}
		tis = e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r2/taskInstances?state=success", nil)
		if num(tis, "total_entries") != 3 {
			t.Errorf("after mark success: %v success tasks, want 3", tis["total_entries"])
		}
		// Re-queued, the cancelled run runs again what failed and what the
		// cancellation skipped downstream of it; the successful run, with
		// nothing failed, is left as it is.
		run = e.ok(200, "PATCH", "/api/v1/dags/etl/dagRuns/r1", map[string]any{"state": "queued"})
		if str(run, "state") != "running" || run["end_date"] != nil {
			t.Errorf("PATCH queued of a failed run answered %v", run)
		}
		if n := e.work(nil); n != 3 {
			t.Errorf("the re-queued run ran %d tries, want 3 (extract, transform, load)", n)
		}
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1", nil), "state"); s != "success" {
			t.Errorf("the re-queued run ended %s, want success", s)
		}
		if s := str(e.ok(200, "PATCH", "/api/v1/dags/etl/dagRuns/r2", map[string]any{"state": "queued"}), "state"); s != "success" {
			t.Errorf("PATCH queued of a run without failures answered %s, want it unchanged (success)", s)
		}

		// A running run is deleted: its running try is failed first (a
		// worker's heartbeat then loses it), the rest go with the run.
		e.trigger("etl", map[string]any{"dag_run_id": "r3"})
		claimed, err = e.store.ClaimTasks(ctx, e.worker, 10, time.Now())
		if err != nil || len(claimed) != 1 {
			t.Fatalf("claim: %v %v", claimed, err)
		}
		e.ok(204, "DELETE", "/api/v1/dags/etl/dagRuns/r3", nil)
		e.ok(404, "GET", "/api/v1/dags/etl/dagRuns/r3", nil)
		lost, err := e.store.HeartbeatTasks(ctx, e.worker.ID, []store.Try{{ID: claimed[0].ID, TryNumber: claimed[0].TryNumber}}, time.Now())
		if err != nil || len(lost) != 1 {
			t.Errorf("heartbeat of the deleted run's try: lost %v, %v; want it lost", lost, err)
		}
		// So is a queued one (the DAG paused: it waits).
		e.ok(200, "PATCH", "/api/v1/dags/etl", map[string]any{"is_paused": true})
		if s := str(e.trigger("etl", map[string]any{"dag_run_id": "r4"}), "state"); s != "queued" {
			t.Fatalf("run of a paused DAG is %s", s)
		}
		e.ok(204, "DELETE", "/api/v1/dags/etl/dagRuns/r4", nil)
		e.ok(404, "GET", "/api/v1/dags/etl/dagRuns/r4", nil)
	})
}

func TestTaskInstancesAndLogs(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.trigger("fan", map[string]any{"dag_run_id": "run1", "logical_date": "2026-02-01T00:00:00Z"})
		e.trigger("fan", map[string]any{"dag_run_id": "run2", "logical_date": "2026-02-02T00:00:00Z"})
		e.work(func(id string) state.TaskState {
			if id == "b" {
				return state.Failed
			}
			return ""
		})
		tis := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances", nil)
		if num(tis, "total_entries") != 4 {
			t.Fatalf("run1 task instances = %v", tis)
		}
		byID := map[string]map[string]any{}
		for _, ti := range items(t, tis, "task_instances") {
			byID[str(ti, "task_id")] = ti
		}
		if byID["b"]["state"] != "failed" || byID["join"]["state"] != "success" || byID["a"]["state"] != "success" {
			t.Errorf("states: a=%v b=%v join=%v", byID["a"]["state"], byID["b"]["state"], byID["join"]["state"])
		}
		a := byID["a"]
		if str(a, "execution_date") != "2026-02-01T00:00:00+00:00" || str(a, "hostname") != "testhost" ||
			num(a, "try_number") != 1 || num(a, "map_index") != -1 || str(a, "operator") != "Shell" ||
			a["duration"] == nil || num(a, "pid") != 4242 {
			t.Errorf("task instance a = %v", a)
		}

		// Filters: state, ~ for DAG and run, execution date, duration, pool.
		for path, want := range map[string]int{
			"/api/v1/dags/fan/dagRuns/run1/taskInstances?state=failed":                            1,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?state=failed&state=success":                 8,
			"/api/v1/dags/~/dagRuns/~/taskInstances":                                              8,
			"/api/v1/dags/~/dagRuns/run2/taskInstances":                                           4,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?execution_date_gte=2026-02-02T00:00:00Z":    4,
			"/api/v1/dags/fan/dagRuns/run1/taskInstances?execution_date_gte=2026-02-02T00:00:00Z": 0,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?duration_gte=0&limit=3":                     8,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?duration_gte=100000":                        0,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?pool=default_pool":                          8,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?pool=other":                                 0,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?queue=default":                              8,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?executor=CeleryExecutor":                    0,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?end_date_gte=2000-01-01":                    8,
			"/api/v1/dags/fan/dagRuns/~/taskInstances?updated_at_lte=2000-01-01T00:00:00Z":        0,
		} {
			if got := e.ok(200, "GET", path, nil); num(got, "total_entries") != want {
				t.Errorf("GET %s: total_entries %v, want %d", path, got["total_entries"], want)
			}
		}
		page := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/~/taskInstances?duration_gte=0&limit=3&offset=6", nil)
		if n := len(items(t, page, "task_instances")); n != 2 {
			t.Errorf("residual filter page offset 6 limit 3: %d items, want 2", n)
		}

		batch := e.ok(200, "POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", map[string]any{
			"dag_ids": []string{"fan"}, "dag_run_ids": []string{"run2"}, "task_ids": []string{"a", "b"},
			"state": []any{"failed", nil},
		})
		if ts := items(t, batch, "task_instances"); len(ts) != 1 || str(ts[0], "task_id") != "b" {
			t.Errorf("batch list = %v", batch)
		}
		batch = e.ok(200, "POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", map[string]any{
			"execution_date_lte": "2026-02-01T00:00:00Z", "page_limit": 2,
		})
		if num(batch, "total_entries") != 4 || len(items(t, batch, "task_instances")) != 2 {
			t.Errorf("batch list by execution date = %v", batch)
		}

		ti := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/b", nil)
		if str(ti, "state") != "failed" || str(ti, "dag_run_id") != "run1" {
			t.Errorf("GET task instance b = %v", ti)
		}

		// Logs, as JSON and text, with a continuation token.
		lg := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/a/logs/1", nil)
		if str(lg, "content") != "running a of run1 try 1\n" || str(lg, "continuation_token") == "" {
			t.Errorf("log JSON = %v", lg)
		}
		tok, err := decodeLogToken(str(lg, "continuation_token"))
		if err != nil || tok.LogPos != len("running a of run1 try 1\n") || !tok.EndOfLog {
			t.Errorf("continuation token = %+v %v", tok, err)
		}
		next := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/a/logs/1?token="+str(lg, "continuation_token"), nil)
		if str(next, "content") != "" {
			t.Errorf("log after the token = %q, want empty", next["content"])
		}
		txt := e.do("GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/a/logs/1", nil, "Accept", "text/plain")
		if txt.status != 200 || !strings.HasPrefix(txt.header.Get("Content-Type"), "text/plain") ||
			string(txt.body) != "running a of run1 try 1\n" {
			t.Errorf("log text: %d %s %q", txt.status, txt.header.Get("Content-Type"), txt.body)
		}
		txt = e.do("GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/a/logs/1", nil, "Accept", "*/*")
		if !strings.HasPrefix(txt.header.Get("Content-Type"), "text/plain") {
			t.Errorf("Accept */*: %s, want text/plain as Airflow", txt.header.Get("Content-Type"))
		}
		e.ok(404, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/a/logs/2", nil)
	})
}

func TestClearAndMarkTasks(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.trigger("etl", map[string]any{"dag_run_id": "r1", "logical_date": "2026-02-01T00:00:00Z"})
		e.trigger("etl", map[string]any{"dag_run_id": "r2", "logical_date": "2026-02-02T00:00:00Z"})
		e.work(func(id string) state.TaskState {
			if id == "transform" {
				return state.Failed
			}
			return ""
		})
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1", nil), "state"); s != "failed" {
			t.Fatalf("r1 is %s, want failed", s)
		}
		// Dry run by default: nothing changes.
		dry := e.ok(200, "POST", "/api/v1/dags/etl/clearTaskInstances", map[string]any{"dag_run_id": "r1"})
		refs := items(t, dry, "task_instances")
		var ids []string
		for _, r := range refs {
			ids = append(ids, str(r, "task_id"))
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"load", "transform"}) {
			t.Errorf("dry clear of failed tasks = %v, want load (upstream_failed) and transform", ids)
		}
		if refs[0]["execution_date"] != "2026-02-01T00:00:00+00:00" || refs[0]["dag_run_id"] != "r1" {
			t.Errorf("reference = %v", refs[0])
		}
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/transform", nil), "state"); s != "failed" {
			t.Errorf("dry run changed transform to %s", s)
		}
		// Clear transform with its downstream in r1: both run again.
		cl := e.ok(200, "POST", "/api/v1/dags/etl/clearTaskInstances", map[string]any{
			"dry_run": false, "dag_run_id": "r1", "task_ids": []string{"transform"},
			"include_downstream": true, "only_failed": false,
		})
		if n := len(items(t, cl, "task_instances")); n != 2 {
			t.Errorf("cleared %d instances, want 2 (transform, load): %v", n, cl)
		}
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1", nil), "state"); s != "running" {
			t.Errorf("r1 after clear is %s, want running", s)
		}
		if n := e.work(nil); n != 2 {
			t.Errorf("after clear %d tries ran, want 2", n)
		}
		tr := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1/taskInstances/transform", nil)
		if str(tr, "state") != "success" || num(tr, "try_number") != 2 {
			t.Errorf("transform after clear = %v, want success try 2", tr)
		}
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r1", nil), "state"); s != "success" {
			t.Errorf("r1 after the rerun is %s, want success", s)
		}
		// Clearing by date range finds r2's failed tasks.
		cl = e.ok(200, "POST", "/api/v1/dags/etl/clearTaskInstances", map[string]any{
			"dry_run": true, "start_date": "2026-02-02T00:00:00Z", "end_date": "2026-02-03T00:00:00Z",
		})
		if n := len(items(t, cl, "task_instances")); n != 2 {
			t.Errorf("dry clear by dates: %d, want 2", n)
		}

		// Mark transform of r2 success with its downstream: load follows.
		up := e.ok(200, "POST", "/api/v1/dags/etl/updateTaskInstancesState", map[string]any{
			"dry_run": false, "task_id": "transform", "dag_run_id": "r2", "new_state": "success",
			"include_downstream": true,
		})
		if n := len(items(t, up, "task_instances")); n != 2 {
			t.Errorf("marked %d, want 2: %v", n, up)
		}
		if s := str(e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/r2/taskInstances/load", nil), "state"); s != "success" {
			t.Errorf("load after mark is %s", s)
		}
		// By execution date, with upstream and past: extract of r1 and r2
		// is success already; a dry mark failed would change all of them.
		up = e.ok(200, "POST", "/api/v1/dags/etl/updateTaskInstancesState", map[string]any{
			"task_id": "transform", "execution_date": "2026-02-02T00:00:00Z", "new_state": "failed",
			"include_upstream": true, "include_past": true,
		})
		if n := len(items(t, up, "task_instances")); n != 4 {
			t.Errorf("dry mark failed with upstream and past: %d, want 4: %v", n, up)
		}
	})
}

func TestMethodNotAllowedAndNotFound(t *testing.T) {
	e := newEnv(t, "sqlite")
	r := e.do("PUT", "/api/v1/dags/etl", nil)
	if r.status != 405 || r.header.Get("Allow") != "GET, PATCH" {
		t.Errorf("PUT /dags/etl: %d Allow=%q", r.status, r.header.Get("Allow"))
	}
	r = e.do("HEAD", "/api/v1/dags/etl", nil)
	if r.status != 200 || len(r.body) != 0 {
		t.Errorf("HEAD /dags/etl: %d, %d bytes", r.status, len(r.body))
	}
	r = e.do("GET", "/api/v1/nowhere", nil)
	if r.status != 404 {
		t.Errorf("unknown path: %d", r.status)
	}
	r = e.do("GET", "/api/v1/dags/~/dagRuns/list", nil)
	if r.status != 404 {
		t.Errorf("GET of the batch path (a run named list of DAG ~): %d", r.status)
	}
}

func TestOversizedBody(t *testing.T) {
	e := newEnv(t, "sqlite")
	big := `{"conf": {"x": "` + strings.Repeat("a", MaxBodyBytes) + `"}}`
	r := e.do("POST", "/api/v1/dags/etl/dagRuns", big)
	if r.status != 413 {
		t.Errorf("declared 1 MiB+ body: %d %s", r.status, r.body)
	}
	// Without a declared length (chunked), the limit applies while reading.
	req, _ := http.NewRequest("POST", e.srv.URL+"/api/v1/dags/etl/dagRuns", struct{ *strings.Reader }{strings.NewReader(big)})
	req.ContentLength = -1
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("chunked 1 MiB+ body: %d", resp.StatusCode)
	}
}

// TestTriggerDataInterval: a data interval given to POST dagRuns is the
// run's, as in Airflow 2.8+ (the StoreTriggerer of an API alone; the
// scheduler's path is in TestTriggerThroughScheduler).
func TestTriggerDataInterval(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		iv := e.trigger("etl", map[string]any{"dag_run_id": "iv", "logical_date": "2026-02-05T00:00:00Z",
			"data_interval_start": "2026-02-03T00:00:00Z", "data_interval_end": "2026-02-04T00:00:00Z"})
		if str(iv, "data_interval_start") != "2026-02-03T00:00:00+00:00" || str(iv, "data_interval_end") != "2026-02-04T00:00:00+00:00" ||
			str(iv, "logical_date") != "2026-02-05T00:00:00+00:00" {
			t.Errorf("run with a data interval: %v", iv)
		}
	})
}

// TestTriggerThroughScheduler wires the scheduler's TriggerRun as serve
// does and checks the API's answers to it.
func TestTriggerThroughScheduler(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		var sched *scheduler.Scheduler
		e := newEnv(t, backend, func(c *Config) {
			// The scheduler's binary lacks solo, which the store has.
			reg := dag.NewRegistry()
			for _, d := range c.Registry.DAGs() {
				if d.ID() != "solo" {
					reg.Register(d)
				}
			}
			sched = scheduler.New(scheduler.Config{Store: c.Store, Registry: reg})
			c.Pauser = sched
			c.Triggerer = TriggerFunc(func(ctx context.Context, dagID string, r TriggerRequest) (store.Run, error) {
				opts := scheduler.TriggerOptions{RunID: r.RunID, LogicalDate: r.LogicalDate, Conf: r.Conf, Note: r.Note}
				if r.IntervalStart != nil {
					opts.DataInterval = &scheduler.Interval{Start: *r.IntervalStart, End: *r.IntervalEnd}
				}
				return sched.TriggerRun(ctx, dagID, opts)
			})
		})
		// A data interval given is the run's, as in Airflow 2.8+.
		given := e.trigger("etl", map[string]any{"dag_run_id": "iv", "logical_date": "2026-03-05T00:00:00Z",
			"data_interval_start": "2026-03-01T00:00:00Z", "data_interval_end": "2026-03-04T06:00:00+02:00"})
		if str(given, "data_interval_start") != "2026-03-01T00:00:00+00:00" || str(given, "data_interval_end") != "2026-03-04T04:00:00+00:00" {
			t.Errorf("run with a data interval: %v – %v", given["data_interval_start"], given["data_interval_end"])
		}
		run := e.trigger("etl", map[string]any{"dag_run_id": "s1", "logical_date": "2026-02-01T12:00:00Z", "conf": map[string]any{"k": "v"}})
		if str(run, "data_interval_start") != "2026-01-31T00:00:00+00:00" || str(run, "data_interval_end") != "2026-02-01T00:00:00+00:00" {
			t.Errorf("manual run of @daily at noon: interval %v – %v, want the day before", run["data_interval_start"], run["data_interval_end"])
		}
		if str(run, "state") != "running" {
			t.Errorf("state %v, want running", run["state"])
		}
		r := e.do("POST", "/api/v1/dags/etl/dagRuns", map[string]any{"dag_run_id": "s1"})
		if r.status != 409 || !strings.Contains(string(r.body), "DAGRun ID: 's1' already exists") {
			t.Errorf("same run id: %d %s", r.status, r.body)
		}
		r = e.do("POST", "/api/v1/dags/etl/dagRuns", map[string]any{"logical_date": "2026-02-01T12:00:00+00:00"})
		if r.status != 409 || !strings.Contains(string(r.body), "logical date: '2026-02-01T12:00:00+00:00'") {
			t.Errorf("same logical date: %d %s", r.status, r.body)
		}
		// Paused, a triggered run waits; unpausing through the scheduler
		// starts it at once.
		e.ok(200, "PATCH", "/api/v1/dags/fan", map[string]any{"is_paused": true})
		if s := str(e.trigger("fan", map[string]any{"dag_run_id": "p1"}), "state"); s != "queued" {
			t.Errorf("run of a paused DAG is %s, want queued", s)
		}
		e.ok(200, "PATCH", "/api/v1/dags/fan", map[string]any{"is_paused": false})
		if s := str(e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/p1", nil), "state"); s != "running" {
			t.Errorf("after unpausing, the run is %s, want running", s)
		}
		// A DAG of the store that the scheduler's binary lacks is a 404.
		if r := e.do("POST", "/api/v1/dags/solo/dagRuns", map[string]any{}); r.status != 404 ||
			!strings.Contains(string(r.body), "'solo' not found") {
			t.Errorf("DAG unknown to the scheduler: %d %s", r.status, r.body)
		}
	})
}

// implementedOperations are the operation ids of Airflow's specification
// that Trellis implements.
var implementedOperations = []string{
	"get_health", "get_version", "get_dags", "get_dag", "patch_dag", "get_tasks", "get_task",
	"get_dag_runs", "post_dag_run", "get_dag_runs_batch", "get_dag_run", "update_dag_run_state",
	"delete_dag_run", "get_task_instances", "get_task_instance", "get_log", "get_task_instances_batch",
	"post_clear_task_instances", "post_set_task_instances_state", "get_xcom_entries", "get_xcom_entry",
	"get_dag_details", "get_pools", "post_pool", "get_task_instance_dependencies", "get_pool", "patch_pool", "delete_pool",
}

// TestEveryOperationValidated tours every endpoint with successful
// requests and checks each answer was validated against its operation in
// Airflow's specification (not skipped for want of a matching route).
func TestEveryOperationValidated(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.ok(200, "GET", "/api/v1/health", nil)
		e.ok(200, "GET", "/api/v1/version", nil)
		e.ok(200, "GET", "/api/v1/dags", nil)
		e.ok(200, "GET", "/api/v1/dags/etl", nil)
		e.ok(200, "GET", "/api/v1/dags/etl/details", nil)
		e.ok(200, "PATCH", "/api/v1/dags/etl?update_mask=is_paused", map[string]any{"is_paused": false})
		e.ok(200, "GET", "/api/v1/dags/etl/tasks", nil)
		e.ok(200, "GET", "/api/v1/dags/etl/tasks/load", nil)
		e.trigger("etl", map[string]any{"dag_run_id": "tour"})
		e.outputs = map[string]json.RawMessage{"load": json.RawMessage(`"loaded"`)}
		e.work(nil)
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns", nil)
		e.ok(200, "POST", "/api/v1/dags/~/dagRuns/list", map[string]any{})
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/tour", nil)
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/tour/taskInstances", nil)
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/tour/taskInstances/load", nil)
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/tour/taskInstances/load/logs/1", nil)
		if r := e.do("GET", "/api/v1/dags/etl/dagRuns/tour/taskInstances/load/logs/1", nil, "Accept", "text/plain"); r.status != 200 {
			t.Errorf("text log: %d", r.status)
		}
		e.ok(200, "POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", map[string]any{})
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/tour/taskInstances/load/xcomEntries", nil)
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/tour/taskInstances/load/xcomEntries/return_value", nil)
		e.ok(200, "POST", "/api/v1/dags/etl/clearTaskInstances", map[string]any{"dag_run_id": "tour"})
		e.ok(200, "POST", "/api/v1/dags/etl/updateTaskInstancesState", map[string]any{
			"task_id": "load", "dag_run_id": "tour", "new_state": "failed"})
		e.ok(200, "PATCH", "/api/v1/dags/etl/dagRuns/tour", map[string]any{"state": "failed"})
		e.ok(204, "DELETE", "/api/v1/dags/etl/dagRuns/tour", nil)
		e.ok(200, "GET", "/api/v1/pools", nil)
		e.trigger("etl", map[string]any{"dag_run_id": "tour2"})
		e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/tour2/taskInstances/extract/dependencies", nil)
		e.ok(200, "POST", "/api/v1/pools", map[string]any{"name": "tour", "slots": 1})
		e.ok(200, "GET", "/api/v1/pools/tour", nil)
		e.ok(200, "PATCH", "/api/v1/pools/tour", map[string]any{"slots": 2})
		e.ok(204, "DELETE", "/api/v1/pools/tour", nil)
		for _, op := range implementedOperations {
			if e.vt.calls[op] == 0 {
				t.Errorf("no answer of %s was validated against the specification", op)
			}
		}
	})
}
