package api

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// TestXComEntries reads task outputs as Airflow's XCom entries, on both
// stores, every answer validated against the specification: the list of
// a task instance (one return_value entry, or none), the list across runs
// and tasks with ~, the filters, and one entry with its value as JSON
// text (stringify, the default) or as the JSON value.
func TestXComEntries(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.outputs = map[string]json.RawMessage{
			"extract":   json.RawMessage(`{"rows":3,"names":["a","b"]}`),
			"transform": json.RawMessage(`42`),
		}
		e.trigger("etl", map[string]any{"dag_run_id": "r1"})
		e.trigger("etl", map[string]any{"dag_run_id": "r2"})
		e.work(nil)
		base := "/api/v1/dags/etl/dagRuns/r1/taskInstances/"

		list := e.ok(200, "GET", base+"extract/xcomEntries", nil)
		entries := items(t, list, "xcom_entries")
		if num(list, "total_entries") != 1 || len(entries) != 1 {
			t.Fatalf("extract's entries: %v, want one", list)
		}
		got := entries[0]
		if str(got, "key") != "return_value" || str(got, "task_id") != "extract" || str(got, "dag_id") != "etl" ||
			num(got, "map_index") != -1 || str(got, "timestamp") == "" || str(got, "execution_date") == "" {
			t.Errorf("extract's entry %v", got)
		}
		if _, ok := got["value"]; ok {
			t.Errorf("a listed entry carries its value: %v", got)
		}
		if l := e.ok(200, "GET", base+"load/xcomEntries", nil); num(l, "total_entries") != 0 {
			t.Errorf("load (no output) lists %v", l)
		}
		for _, path := range []string{
			base + "extract/xcomEntries?xcom_key=other",
			base + "extract/xcomEntries?map_index=2",
			base + "nosuchtask/xcomEntries",
			"/api/v1/dags/etl/dagRuns/nosuchrun/taskInstances/extract/xcomEntries",
		} {
			if l := e.ok(200, "GET", path, nil); num(l, "total_entries") != 0 || len(items(t, l, "xcom_entries")) != 0 {
				t.Errorf("GET %s lists %v, want nothing", path, l)
			}
		}
		all := e.ok(200, "GET", "/api/v1/dags/~/dagRuns/~/taskInstances/~/xcomEntries?xcom_key=return_value", nil)
		if num(all, "total_entries") != 4 {
			t.Errorf("~/~/~ lists %v, want 4 entries (extract and transform of two runs)", all)
		}
		page := e.ok(200, "GET", "/api/v1/dags/etl/dagRuns/~/taskInstances/transform/xcomEntries?limit=1&offset=1", nil)
		if num(page, "total_entries") != 2 || len(items(t, page, "xcom_entries")) != 1 {
			t.Errorf("a page of transform's entries: %v, want 1 of 2", page)
		}

		one := e.ok(200, "GET", base+"extract/xcomEntries/return_value", nil)
		if s, ok := one["value"].(string); !ok || !sameJSONText(s, `{"rows":3,"names":["a","b"]}`) {
			t.Errorf("stringified value %#v, want the output's JSON text", one["value"])
		}
		raw := e.ok(200, "GET", base+"extract/xcomEntries/return_value?stringify=false&deserialize=true", nil)
		want := map[string]any{"rows": 3.0, "names": []any{"a", "b"}}
		if !reflect.DeepEqual(raw["value"], want) {
			t.Errorf("value with stringify=false: %#v, want %#v", raw["value"], want)
		}
		if v := e.ok(200, "GET", base+"transform/xcomEntries/return_value?stringify=false", nil)["value"]; v != 42.0 {
			t.Errorf("transform's value %#v, want 42", v)
		}

		for path, status := range map[string]int{
			base + "extract/xcomEntries/other":                                             http.StatusNotFound,
			base + "load/xcomEntries/return_value":                                         http.StatusNotFound,
			base + "nosuch/xcomEntries/return_value":                                       http.StatusNotFound,
			base + "extract/xcomEntries/return_value?map_index=3":                          http.StatusNotFound,
			base + "extract/xcomEntries/return_value?stringify=yes":                        http.StatusBadRequest,
			base + "extract/xcomEntries?limit=-1":                                          http.StatusBadRequest,
			"/api/v1/dags/etl/dagRuns/nope/taskInstances/extract/xcomEntries/return_value": http.StatusNotFound,
		} {
			if r := e.do("GET", path, nil); r.status != status {
				t.Errorf("GET %s: %d, want %d\n%s", path, r.status, status, r.body)
			}
		}
	})
}

// sameJSONText reports whether two JSON texts hold the same value.
func sameJSONText(a, b string) bool {
	var x, y any
	return json.Unmarshal([]byte(a), &x) == nil && json.Unmarshal([]byte(b), &y) == nil && reflect.DeepEqual(x, y)
}

// TestDAGDetails reads Airflow's DAGDetail of a DAG of the binary (with its
// start date, catchup, params and zone) and of one only the store knows,
// both validated against the specification.
func TestDAGDetails(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		reg := fixtureRegistry()
		zoned := dag.New("zoned", dag.Schedule("CRON_TZ=Europe/Paris 0 6 * * *"), dag.Catchup(true),
			dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), dag.EndDate(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)),
			dag.Params(map[string]any{"rows": 10.0}))
		zoned.Shell("a", "true")
		reg.Register(zoned)
		e := newEnv(t, backend, func(c *Config) { c.Registry = reg })
		var specs []store.DAGSpec
		for _, d := range reg.DAGs() {
			specs = append(specs, store.SpecFromDAG(d))
		}
		if err := e.store.SyncDAGs(context.Background(), specs); err != nil {
			t.Fatal(err)
		}
		d := e.ok(200, "GET", "/api/v1/dags/zoned/details", nil)
		if str(d, "dag_id") != "zoned" || str(d, "timezone") != "Europe/Paris" || d["catchup"] != true ||
			str(d, "start_date") != "2026-01-01T00:00:00+00:00" || str(d, "end_date") != "2027-01-01T00:00:00+00:00" ||
			!reflect.DeepEqual(d["params"], map[string]any{"rows": 10.0}) || d["is_paused"] != false {
			t.Errorf("details of zoned: %v", d)
		}
		if d := e.ok(200, "GET", "/api/v1/dags/etl/details?fields=dag_id,catchup,timezone", nil); len(d) != 3 ||
			d["catchup"] != false || str(d, "timezone") != "UTC" {
			t.Errorf("details of etl with fields: %v", d)
		}
		e.ok(404, "GET", "/api/v1/dags/nope/details", nil)
		// An API whose binary lacks the DAG answers what the store knows.
		bare := newEnv(t, backend, func(c *Config) { c.Registry = dag.NewRegistry() })
		if d := bare.ok(200, "GET", "/api/v1/dags/solo/details", nil); d["catchup"] != nil || d["start_date"] != nil || str(d, "dag_id") != "solo" {
			t.Errorf("details of a DAG the binary lacks: %v", d)
		}
		e.ok(400, "GET", "/api/v1/dags/etl/details?fields=colour", nil)
	})
}
