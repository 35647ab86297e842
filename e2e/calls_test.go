package e2e

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/internal/testdb"
)

func TestServeCallsSQLite(t *testing.T) {
	t.Parallel()
	testServeCalls(t, testdb.SQLite(t))
}

func TestServeCallsPostgres(t *testing.T) {
	t.Parallel()
	testServeCalls(t, testdb.Postgres(t))
}

// testServeCalls runs `trellis serve` and calls the example callable
// fibonacci through the REST call endpoint, as Pynenc's
// fibonacci(30).result: the answer is 832040 and the run holds 31 call
// instances (dedup). Then a second call is made while a worker process is
// killed with SIGKILL mid-way: it still ends with the right result, every
// call instance once.
func testServeCalls(t *testing.T, dbURL string) {
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + dbURL, "TRELLIS_LOG_FORMAT=json"}, serveArgs...)
	c := newClient(t, srv.url, "")
	got := c.ok(http.StatusOK, "POST", "/api/v1/dags/fibonacci/calls/fibonacci",
		map[string]any{"arguments": 30, "wait": "120s"})
	// The call's map index is 0 unless the run's static task start made
	// its own call (fibonacci(20)) first: either order is right.
	if got["state"] != "success" || got["result"] != float64(832040) || got["map_index"] == nil {
		t.Fatalf("fibonacci(30) answered %v", got)
	}
	runID := got["dag_run_id"].(string)
	list := c.ok(http.StatusOK, "GET", "/api/v1/dags/fibonacci/dagRuns/"+runID+"/taskInstances/fibonacci/listMapped?limit=100", nil)
	if list["total_entries"] != float64(31) {
		t.Errorf("fibonacci(30) made %v call instances, want 31", list["total_entries"])
	}
	for _, ti := range items(t, list, "task_instances") {
		if ti["state"] != "success" || ti["try_number"] != float64(1) {
			t.Errorf("call instance %v: %v try %v, want success on the first try", ti["map_index"], ti["state"], ti["try_number"])
		}
	}
	// The run's static task start calls fibonacci(20) too: find
	// fibonacci(29) by its arguments, then fetch it by its map index.
	mi := -1.0
	for _, ti := range items(t, list, "task_instances") {
		if ti["arguments"] == float64(29) {
			mi = ti["map_index"].(float64)
		}
	}
	one := c.ok(http.StatusOK, "GET", fmt.Sprintf("/api/v1/dags/fibonacci/dagRuns/%s/taskInstances/fibonacci/%d", runID, int(mi)), nil)
	if one["arguments"] != float64(29) || one["result"] != float64(514229) {
		t.Errorf("call instance %v = %v, want fibonacci(29) = 514229", mi, one)
	}
	if caller, _ := one["caller"].(map[string]any); caller["task_id"] != "fibonacci" || caller["map_index"] != got["map_index"] {
		t.Errorf("caller of fibonacci(29): %v, want fibonacci[%v]", one["caller"], got["map_index"])
	}

	// A worker process killed mid-way: the call still ends right.
	first := c.ok(http.StatusAccepted, "POST", "/api/v1/dags/fibonacci/calls/fibonacci", map[string]any{"arguments": 40})
	run2 := first["dag_run_id"].(string)
	eventually(t, 60*time.Second, "calls are running", func() (bool, string) {
		l := c.ok(http.StatusOK, "GET", "/api/v1/dags/fibonacci/dagRuns/"+run2+"/taskInstances/fibonacci/listMapped?limit=1", nil)
		return l["total_entries"].(float64) >= 10, fmt.Sprint(l["total_entries"])
	})
	kids := descendants(srv.cmd.Process.Pid)
	if len(kids) == 0 {
		t.Fatal("no worker process to kill")
	}
	if err := syscall.Kill(kids[0].pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill worker %d: %v", kids[0].pid, err)
	}
	done := c.ok(http.StatusOK, "POST", "/api/v1/dags/fibonacci/calls/fibonacci",
		map[string]any{"arguments": 40, "dag_run_id": run2, "wait": "180s"})
	if done["state"] != "success" || done["result"] != float64(102334155) {
		t.Fatalf("fibonacci(40) after a worker was killed answered %v", done)
	}
	l := c.ok(http.StatusOK, "GET", "/api/v1/dags/fibonacci/dagRuns/"+run2+"/taskInstances/fibonacci/listMapped?limit=100", nil)
	if l["total_entries"] != float64(41) {
		t.Errorf("fibonacci(40) made %v call instances, want 41", l["total_entries"])
	}
	for _, ti := range items(t, l, "task_instances") {
		if ti["state"] != "success" {
			t.Errorf("call instance %v: %v", ti["map_index"], ti["state"])
		}
	}
	stopAndCheck(t, srv, dbURL, 2, false)
}
