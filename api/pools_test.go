package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

func TestPools(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		all := e.ok(200, "GET", "/api/v1/pools", nil)
		ps := items(t, all, "pools")
		if num(all, "total_entries") != 1 || len(ps) != 1 || str(ps[0], "name") != "default_pool" ||
			num(ps[0], "slots") != -1 || num(ps[0], "open_slots") != -1 {
			t.Fatalf("GET /pools = %v, want default_pool alone, unlimited", all)
		}
		created := e.ok(200, "POST", "/api/v1/pools", map[string]any{"name": "warehouse", "slots": 2,
			"description": "the warehouse takes 2 connections"})
		if num(created, "slots") != 2 || num(created, "open_slots") != 2 || str(created, "description") == "" {
			t.Errorf("POST /pools = %v", created)
		}
		// Bad input: 400 problems naming the field; duplicates 409.
		for _, bad := range []struct {
			body   any
			status int
		}{
			{map[string]any{"name": "warehouse", "slots": 1}, 409},
			{map[string]any{"name": "has space", "slots": 1}, 400},
			{map[string]any{"name": "neg", "slots": -3}, 400},
			{map[string]any{"name": "noslots"}, 400},
			{map[string]any{"slots": 1}, 400},
			{map[string]any{"name": "ro", "slots": 1, "open_slots": 3}, 400},
			{map[string]any{"name": "typed", "slots": "two"}, 400},
			{map[string]any{"name": "deferred", "slots": 1, "include_deferred": true}, 400},
			{"[1]", 400},
		} {
			if r := e.do("POST", "/api/v1/pools", bad.body); r.status != bad.status || !isProblem(r) {
				t.Errorf("POST /pools %v: %d %s, want a %d problem", bad.body, r.status, r.body, bad.status)
			}
		}
		patched := e.ok(200, "PATCH", "/api/v1/pools/warehouse?update_mask=slots", map[string]any{"slots": 4, "description": "ignored"})
		if num(patched, "slots") != 4 || str(patched, "description") != "the warehouse takes 2 connections" {
			t.Errorf("PATCH slots with update_mask = %v", patched)
		}
		for _, bad := range []struct {
			path   string
			body   any
			status int
		}{
			{"/api/v1/pools/warehouse", map[string]any{"name": "other"}, 400},
			{"/api/v1/pools/warehouse", map[string]any{"slots": -2}, 400},
			{"/api/v1/pools/warehouse?update_mask=open_slots", map[string]any{"slots": 1}, 400},
			{"/api/v1/pools/nope", map[string]any{"slots": 1}, 404},
		} {
			if r := e.do("PATCH", bad.path, bad.body); r.status != bad.status || !isProblem(r) {
				t.Errorf("PATCH %s %v: %d %s, want a %d problem", bad.path, bad.body, r.status, r.body, bad.status)
			}
		}

		// A task in the pool: its instances report it; a queued one
		// occupies slots; a pool in use cannot be deleted.
		ctx := context.Background()
		d := dag.New("pooled")
		d.Func("load", func(*dag.Context) error { return nil }, dag.Pool("warehouse"), dag.PoolSlots(3))
		d.Func("later", func(*dag.Context) error { return nil }, dag.Pool("not_yet"))
		sp := store.SpecFromDAG(d)
		if err := e.store.SyncDAGs(ctx, append(specsOf(e.reg), sp)); err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC()
		if _, _, err := e.store.CreateRun(ctx, store.NewRun{DAGID: "pooled", RunID: "r", RunType: store.RunManual,
			LogicalDate: now, IntervalStart: now, IntervalEnd: now, Fingerprint: sp.Fingerprint, QueuedAt: now}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.StartRuns(ctx, "pooled", now); err != nil {
			t.Fatal(err)
		}
		ti := e.ok(200, "GET", "/api/v1/dags/pooled/dagRuns/r/taskInstances/load", nil)
		if str(ti, "pool") != "warehouse" || num(ti, "pool_slots") != 3 {
			t.Errorf("task instance pool %v slots %v, want warehouse and 3", ti["pool"], ti["pool_slots"])
		}
		list := e.ok(200, "GET", "/api/v1/dags/pooled/dagRuns/r/taskInstances?pool=not_yet", nil)
		if tis := items(t, list, "task_instances"); len(tis) != 1 || str(tis[0], "task_id") != "later" {
			t.Errorf("taskInstances?pool=not_yet = %v, want later", list)
		}
		deps := e.ok(200, "GET", "/api/v1/dags/pooled/dagRuns/r/taskInstances/later/dependencies", nil)
		if ds := items(t, deps, "dependencies"); len(ds) != 1 || !strings.Contains(str(ds[0], "reason"), "non-existent pool 'not_yet'") {
			t.Errorf("dependencies of a task in a missing pool = %v", deps)
		}
		deps = e.ok(200, "GET", "/api/v1/dags/pooled/dagRuns/r/taskInstances/load/dependencies", nil)
		if ds := items(t, deps, "dependencies"); len(ds) != 0 {
			t.Errorf("dependencies of a task whose pool has room = %v, want none", deps)
		}
		// Resized below the task's pool_slots: accepted, as Airflow does
		// (a pool of 0 pauses its tasks); the task waits, and says why.
		e.ok(200, "PATCH", "/api/v1/pools/warehouse", map[string]any{"slots": 2})
		if cs, err := e.store.ClaimTasks(ctx, store.Worker{ID: "w", Hostname: "h", PID: 1, Slots: 8}, 8, now); err != nil || len(cs) != 0 {
			t.Errorf("claimed %d (%v) with the pool smaller than the task's slots, want none", len(cs), err)
		}
		deps = e.ok(200, "GET", "/api/v1/dags/pooled/dagRuns/r/taskInstances/load/dependencies", nil)
		if ds := items(t, deps, "dependencies"); len(ds) != 1 || str(ds[0], "name") != "Pool Slots Available" ||
			!strings.Contains(str(ds[0], "reason"), "requested pool slots (3) are greater than total pool slots (2) of pool warehouse") {
			t.Errorf("dependencies of a task needing more slots than its pool has = %v", deps)
		}
		e.ok(200, "PATCH", "/api/v1/pools/warehouse", map[string]any{"slots": 4})
		wh := e.ok(200, "GET", "/api/v1/pools/warehouse", nil)
		if num(wh, "queued_slots") != 3 || num(wh, "occupied_slots") != 3 || num(wh, "open_slots") != 1 {
			t.Errorf("GET /pools/warehouse = %v, want 3 queued and occupied slots, 1 open", wh)
		}
		if r := e.do("DELETE", "/api/v1/pools/warehouse", nil); r.status != 400 || !isProblem(r) {
			t.Errorf("DELETE of a pool in use: %d %s, want a 400 problem", r.status, r.body)
		}
		if r := e.do("DELETE", "/api/v1/pools/default_pool", nil); r.status != 400 || !isProblem(r) {
			t.Errorf("DELETE default_pool: %d %s, want a 400 problem", r.status, r.body)
		}
		if r := e.do("GET", "/api/v1/pools/not_yet", nil); r.status != 404 || !isProblem(r) {
			t.Errorf("GET of a missing pool: %d %s, want a 404 problem", r.status, r.body)
		}
		e.ok(200, "POST", "/api/v1/pools", map[string]any{"name": "empty", "slots": 0})
		e.ok(204, "DELETE", "/api/v1/pools/empty", nil)
		if r := e.do("DELETE", "/api/v1/pools/empty", nil); r.status != 404 {
			t.Errorf("DELETE twice: %d, want 404", r.status)
		}
		page := e.ok(200, "GET", "/api/v1/pools?limit=1&offset=1", nil)
		if ps := items(t, page, "pools"); len(ps) != 1 || str(ps[0], "name") != "warehouse" || num(page, "total_entries") != 2 {
			t.Errorf("GET /pools?limit=1&offset=1 = %v, want warehouse of 2", page)
		}
	})
}

func specsOf(reg *dag.Registry) []store.DAGSpec {
	var out []store.DAGSpec
	for _, d := range reg.DAGs() {
		out = append(out, store.SpecFromDAG(d))
	}
	return out
}

// isProblem reports whether r is an RFC 7807 problem body.
func isProblem(r response) bool {
	var p struct {
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	return json.Unmarshal(r.body, &p) == nil && p.Status == r.status && p.Detail != ""
}

func TestLimitDependencies(t *testing.T) {
	queued := store.TaskInstance{DAGID: "d", TaskID: "t", State: "queued", Pool: "p", PoolSlots: 2, ConcurrencyKey: "c:1"}
	full := &store.Pool{Name: "p", Slots: 3, RunningSlots: 2}
	roomy := &store.Pool{Name: "p", Slots: 3}
	keys := []store.KeyWait{{Key: "task:d.t", Limit: 1, Running: 1}, {Key: "key:c:1", Limit: 2, Running: 2}, {Key: "key:other", Limit: 1, Running: 1}}
	for _, tc := range []struct {
		name string
		ti   store.TaskInstance
		pool *store.Pool
		keys []store.KeyWait
		want []string
	}{
		{"missing pool", queued, nil, nil, []string{"non-existent pool 'p'"}},
		{"pool full", queued, full, nil, []string{"there are 1 open slots in pool p and require 2 pool slots"}},
		{"pool too small", queued, &store.Pool{Name: "p", Slots: 1}, nil,
			[]string{"requested pool slots (2) are greater than total pool slots (1) of pool p"}},
		{"pool of 0", queued, &store.Pool{Name: "p", Slots: 0}, nil, []string{"greater than total pool slots (0)"}},
		{"room", queued, roomy, nil, nil},
		{"keys", queued, roomy, keys, []string{"max task concurrency", "Concurrency key 'c:1' is at its limit: 2 of 2"}},
		{"running waits on nothing", store.TaskInstance{State: "running", Pool: "p"}, nil, keys, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := limitDependencies(tc.ti, tc.pool, tc.keys)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %d reasons %v", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i].Reason, w) {
					t.Errorf("reason %d = %q, want it to contain %q", i, got[i].Reason, w)
				}
			}
		})
	}
}
