package api

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// callsEnv is an API env whose registry also has the DAG "calls": a
// callable "sq" (no static work but a no-op task "noop").
func callsEnv(t *testing.T, backend string) *env {
	reg := fixtureRegistry()
	d := dag.New("calls")
	dag.NewCallable(d, "sq", func(_ *dag.Context, n int) (int, error) { return n * n, nil })
	d.Func("noop", func(*dag.Context) error { return nil })
	reg.Register(d)
	e := newEnv(t, backend, func(c *Config) { c.Registry = reg })
	var specs []store.DAGSpec
	for _, x := range reg.DAGs() {
		specs = append(specs, store.SpecFromDAG(x))
	}
	if err := e.store.SyncDAGs(context.Background(), specs); err != nil {
		t.Fatal(err)
	}
	e.reg = reg
	return e
}

// TestCallsAPI: a call made through the API creates a run and a call
// instance (map index 0), answered 202 until a worker has run it, then
// 200 with its result; the same arguments again deduplicate into it; the
// call instance is listed by listMapped, fetched by map index with its
// arguments and result, and its log read with ?map_index; bad requests are
// clear 4xx problems.
func TestCallsAPI(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := callsEnv(t, backend)
		e.outputs = map[string]json.RawMessage{"sq": json.RawMessage("49")}
		got := e.ok(http.StatusAccepted, "POST", "/api/v1/dags/calls/calls/sq", map[string]any{"arguments": 7})
		runID := str(got, "dag_run_id")
		if runID == "" || num(got, "map_index") != 0 || str(got, "state") != "queued" || got["result"] != nil {
			t.Fatalf("call answer %v", got)
		}
		e.work(nil)
		again := e.ok(http.StatusOK, "POST", "/api/v1/dags/calls/calls/sq",
			map[string]any{"arguments": 7, "dag_run_id": runID, "wait": "1s"})
		if num(again, "map_index") != 0 || str(again, "state") != "success" || num(again, "result") != 49 {
			t.Errorf("call deduplicated into the finished one: %v", again)
		}
		list := e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/"+runID+"/taskInstances/sq/listMapped", nil)
		tis := items(t, list, "task_instances")
		if num(list, "total_entries") != 1 || len(tis) != 1 || num(tis[0], "map_index") != 0 || num(tis[0], "result") != 49 ||
			num(tis[0], "arguments") != 7 || str(tis[0], "operator") != "Callable" {
			t.Errorf("listMapped = %v", list)
		}
		one := e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/"+runID+"/taskInstances/sq/0", nil)
		if str(one, "state") != "success" || num(one, "arguments") != 7 || one["caller"] != nil {
			t.Errorf("call instance = %v", one)
		}
		static := e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/"+runID+"/taskInstances/noop/-1", nil)
		if num(static, "map_index") != -1 || str(static, "task_id") != "noop" {
			t.Errorf("static instance by map index -1 = %v", static)
		}
		lg := e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/"+runID+"/taskInstances/sq/logs/1?map_index=0", nil)
		if str(lg, "content") == "" {
			t.Errorf("log of the call = %v", lg)
		}
		e.ok(404, "GET", "/api/v1/dags/calls/dagRuns/"+runID+"/taskInstances/sq/3", nil)
		e.ok(404, "POST", "/api/v1/dags/calls/calls/noop", map[string]any{"arguments": 1})
		e.ok(404, "POST", "/api/v1/dags/nope/calls/sq", map[string]any{"arguments": 1})
		e.ok(400, "POST", "/api/v1/dags/calls/calls/sq", map[string]any{"args": 1})
		e.ok(400, "POST", "/api/v1/dags/calls/calls/sq", map[string]any{"arguments": 1, "wait": "forever"})
		e.ok(400, "GET", "/api/v1/dags/calls/dagRuns/"+runID+"/taskInstances/sq/x", nil)
		run := e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/"+runID, nil)
		if str(run, "state") == string(state.RunSuccess) {
			e.ok(409, "POST", "/api/v1/dags/calls/calls/sq", map[string]any{"arguments": 8, "dag_run_id": runID})
		}
	})
}

// TestGridCalls: a run's call instances of a callable are one grid cell
// with their count, how many are in each state and the summary state;
// the static task's row carries no calls.
func TestGridCalls(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := callsEnv(t, backend)
		runID := str(e.ok(http.StatusAccepted, "POST", "/api/v1/dags/calls/calls/sq", map[string]any{"arguments": 2}), "dag_run_id")
		for _, n := range []int{3, 4} {
			e.ok(http.StatusAccepted, "POST", "/api/v1/dags/calls/calls/sq", map[string]any{"arguments": n, "dag_run_id": runID})
		}
		type row struct {
			TaskID     string           `json:"task_id"`
			States     []*string        `json:"states"`
			Calls      []int            `json:"calls"`
			CallStates []map[string]int `json:"call_states"`
		}
		grid := func(path string) map[string]row {
			t.Helper()
			var g struct {
				Runs []struct {
					DAGRunID string `json:"dag_run_id"`
				} `json:"runs"`
				Tasks []row `json:"tasks"`
			}
			r := e.do("GET", path, nil)
			if err := json.Unmarshal(r.body, &g); err != nil || r.status != http.StatusOK {
				t.Fatalf("grid: %d %v %s", r.status, err, r.body)
			}
			if len(g.Runs) != 1 || g.Runs[0].DAGRunID != runID {
				t.Fatalf("grid runs %+v, want %s", g.Runs, runID)
			}
			rows := map[string]row{}
			for _, x := range g.Tasks {
				rows[x.TaskID] = x
			}
			return rows
		}
		rows := grid("/api/v1/dags/calls/grid?limit=5")
		sq := rows["sq"]
		if len(sq.Calls) != 1 || sq.Calls[0] != 3 || sq.CallStates[0]["queued"] != 3 || len(sq.CallStates[0]) != 1 ||
			sq.States[0] == nil || *sq.States[0] != "queued" {
			t.Errorf("grid row of sq = %+v, want one cell of 3 queued calls", sq)
		}
		if noop := rows["noop"]; noop.Calls != nil || noop.CallStates != nil {
			t.Errorf("grid row of the static task noop has calls: %+v", noop)
		}
		e.work(nil)
		sq = grid("/api/v1/dags/calls/grid?limit=6")["sq"]
		if len(sq.Calls) != 1 || sq.Calls[0] != 3 || sq.CallStates[0]["success"] != 3 || sq.States[0] == nil || *sq.States[0] != "success" {
			t.Errorf("grid row of sq after work = %+v, want 3 successful calls", sq)
		}
	})
}

// TestCallsListCallers: task instance lists (a run's, listMapped and the
// batch list, from the store and from the finished-run cache) carry each
// call instance's caller and a deferred caller's waiting_on, as a single
// GET does; every answer validates against the specification.
func TestCallsListCallers(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		ctx := context.Background()
		e := callsEnv(t, backend)
		e.outputs = map[string]json.RawMessage{"sq": json.RawMessage("9")}
		e.trigger("calls", map[string]any{"dag_run_id": "r1"})
		claimed, err := e.store.ClaimTasks(ctx, e.worker, 10, time.Now())
		if err != nil || len(claimed) != 1 || claimed[0].TaskID != "noop" {
			t.Fatalf("claim = %v, %v; want the noop task", claimed, err)
		}
		try := store.Try{ID: claimed[0].ID, TryNumber: claimed[0].TryNumber}
		states, err := e.store.Call(ctx, store.CallBatch{Caller: try, MaxCalls: 100, Now: time.Now(),
			Calls: []store.NewCall{{TaskID: "sq", Key: store.CallKey(json.RawMessage("3")), Arguments: json.RawMessage("3")}}})
		if err != nil || len(states) != 1 || states[0].State != state.Queued {
			t.Fatalf("call = %v, %v", states, err)
		}
		if _, err := e.store.FinishTasks(ctx, []store.Result{{Try: try, State: state.Deferred,
			Deferral: store.Deferral{Calls: true}, EndedAt: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		byTask := func(list map[string]any) map[string]map[string]any {
			out := map[string]map[string]any{}
			for _, ti := range items(t, list, "task_instances") {
				out[str(ti, "task_id")] = ti
			}
			return out
		}
		isCaller := func(where string, ti map[string]any) {
			t.Helper()
			ref, _ := ti["caller"].(map[string]any)
			if ref == nil || str(ref, "task_id") != "noop" || num(ref, "map_index") != -1 {
				t.Errorf("%s: caller of sq[0] = %v, want noop (-1): %v", where, ti["caller"], ti)
			}
		}
		run := byTask(e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/r1/taskInstances", nil))
		isCaller("run list", run["sq"])
		if str(run["noop"], "state") != "deferred" || num(run["noop"], "waiting_on") != 1 || run["noop"]["caller"] != nil {
			t.Errorf("run list: the deferred caller = %v, want waiting_on 1 and no caller", run["noop"])
		}
		mapped := items(t, e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/r1/taskInstances/sq/listMapped", nil), "task_instances")
		if len(mapped) != 1 {
			t.Fatalf("listMapped = %v", mapped)
		}
		isCaller("listMapped", mapped[0])
		isCaller("batch list", byTask(e.ok(200, "POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list",
			map[string]any{"dag_ids": []string{"calls"}}))["sq"])

		e.work(nil) // sq, then noop woken by it
		done := e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/r1", nil)
		if str(done, "state") != string(state.RunSuccess) {
			t.Fatalf("run = %v, want success", done)
		}
		for range 2 { // the cache is filled, then answers
			isCaller("finished run list", byTask(e.ok(200, "GET", "/api/v1/dags/calls/dagRuns/r1/taskInstances", nil))["sq"])
		}
	})
}
