package api

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/state"
)

// stateOf returns the state of a task in a task instance list.
func stateOf(t *testing.T, list map[string]any, taskID string) any {
	t.Helper()
	for _, ti := range items(t, list, "task_instances") {
		if str(ti, "task_id") == taskID {
			return ti["state"]
		}
	}
	t.Fatalf("no task %s in %v", taskID, list)
	return nil
}

func TestFinishedRunCache(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		clk := clock.NewFake(time.Now())
		e := newEnv(t, backend, func(c *Config) { c.Clock = clk })
		e.trigger("fan", map[string]any{"dag_run_id": "r"})
		e.work(func(id string) state.TaskState {
			if id == "b" {
				return state.Failed
			}
			return ""
		})
		const path = "/api/v1/dags/fan/dagRuns/r/taskInstances"
		if s := str(e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/r", nil), "state"); s != "success" {
			t.Fatalf("run is %s, want success (join is all_done)", s)
		}
		if s := stateOf(t, e.ok(200, "GET", path, nil), "b"); s != "failed" {
			t.Fatalf("b is %v, want failed", s)
		}
		// Another process marks b success: the run itself does not change.
		if _, err := e.store.SetTaskState(context.Background(), "fan", "r", "b", state.Success, time.Now()); err != nil {
			t.Fatal(err)
		}
		if s := str(e.ok(200, "GET", "/api/v1/dags/fan/dagRuns/r", nil), "state"); s != "success" {
			t.Fatalf("run is %s after marking b, want success", s)
		}
		if s := stateOf(t, e.ok(200, "GET", path, nil), "b"); s != "failed" {
			t.Errorf("within the TTL the cached list shows b %v, want failed (cached)", s)
		}
		clk.Advance(DefaultCacheTTL)
		if s := stateOf(t, e.ok(200, "GET", path, nil), "b"); s != "success" {
			t.Errorf("after the TTL b is %v, want success", s)
		}
		// A change through the API is seen at once.
		e.ok(200, "POST", "/api/v1/dags/fan/updateTaskInstancesState", map[string]any{
			"dry_run": false, "task_id": "a", "dag_run_id": "r", "new_state": "skipped"})
		if s := stateOf(t, e.ok(200, "GET", path, nil), "a"); s != "skipped" {
			t.Errorf("after marking a skipped through the API, a is %v", s)
		}
		// Clearing makes the run running: never served from the cache.
		e.ok(200, "POST", "/api/v1/dags/fan/clearTaskInstances", map[string]any{
			"dry_run": false, "dag_run_id": "r", "task_ids": []string{"join"}, "only_failed": false})
		if s := stateOf(t, e.ok(200, "GET", path, nil), "join"); s == "success" {
			t.Errorf("after clearing join it is still %v", s)
		}
	})
}

// TestCachedListsMatchUncached compares the answers of a cached API and an
// API without cache on the same store, for filters and pages.
func TestCachedListsMatchUncached(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		e.trigger("fan", map[string]any{"dag_run_id": "r"})
		e.work(func(id string) state.TaskState {
			if id == "a" {
				return state.Failed
			}
			return ""
		})
		h, err := New(Config{Store: e.store, Registry: e.reg, CacheTTL: -1})
		if err != nil {
			t.Fatal(err)
		}
		uncached := e.withHandler(h)
		for _, q := range []string{
			"", "?limit=2", "?limit=2&offset=1", "?offset=10", "?state=failed", "?state=success&state=upstream_failed",
			"?start_date_gte=2000-01-01T00:00:00Z", "?end_date_lte=2000-01-01T00:00:00Z", "?duration_gte=0",
			"?pool=default_pool&limit=1", "?execution_date_lte=2000-01-01T00:00:00Z", "?updated_at_gte=2000-01-01",
		} {
			path := "/api/v1/dags/fan/dagRuns/r/taskInstances" + q
			for i := 0; i < 2; i++ { // the second time from the cache
				got, want := e.do("GET", path, nil), uncached.do("GET", path, nil)
				var g, w any
				if json.Unmarshal(got.body, &g) != nil || json.Unmarshal(want.body, &w) != nil || string(got.body) != string(want.body) {
					t.Errorf("GET %s: cached answer differs:\n got %s\nwant %s", path, got.body, want.body)
				}
			}
		}
	})
}

// The finished-run cache stays within cacheMaxBytes however many runs
// are put in it, keeping the most recently put.
func TestRunCacheStaysUnderItsCap(t *testing.T) {
	c := newRunCache(time.Hour, time.Now)
	const size, n = cacheMaxBytes / 10, 1000
	for i := range n {
		c.put(&cachedRun{key: [2]string{"d", strconv.Itoa(i)}, size: size}, c.generation())
		if c.bytes > cacheMaxBytes || len(c.entries) != c.lru.Len() {
			t.Fatalf("after %d runs: %d bytes in %d entries (%d listed), cap %d", i+1, c.bytes, len(c.entries), c.lru.Len(), cacheMaxBytes)
		}
	}
	if len(c.entries) != 10 {
		t.Errorf("%d entries kept, want the 10 that fit", len(c.entries))
	}
	for i := n - 10; i < n; i++ {
		if _, ok := c.entries[[2]string{"d", strconv.Itoa(i)}]; !ok {
			t.Errorf("run %d, among the last put, was evicted", i)
		}
	}
}
