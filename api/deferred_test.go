package api

import (
	"testing"

	"github.com/trellis-dag/trellis/state"
)

// TestDeferredShown: a deferred task instance is shown as Airflow's
// deferred, filtered by it, and not claimed (its downstream waits).
func TestDeferredShown(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.trigger("fan", map[string]any{"dag_run_id": "run1", "logical_date": "2026-02-01T00:00:00Z"})
		e.work(func(id string) state.TaskState {
			if id == "b" {
				return state.Deferred
			}
			return ""
		})
		ti := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/b", nil)
		if str(ti, "state") != "deferred" || num(ti, "try_number") != 1 || ti["end_date"] != nil {
			t.Errorf("deferred task instance b = %v", ti)
		}
		got := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances?state=deferred", nil)
		if ts := items(t, got, "task_instances"); len(ts) != 1 || str(ts[0], "task_id") != "b" {
			t.Errorf("state=deferred lists %v", got)
		}
		join := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1/taskInstances/join", nil)
		if s := str(join, "state"); s == "success" || s == "queued" || s == "running" {
			t.Errorf("join is %s while b is deferred", s)
		}
		run := e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/run1", nil)
		if str(run, "state") != "running" {
			t.Errorf("run with a deferred instance is %v", run["state"])
		}
	})
}
