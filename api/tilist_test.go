package api

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// queryCounter counts the store reads of task instance lists.
type queryCounter struct {
	store.Store
	getRun, lists atomic.Int64
}

func (c *queryCounter) GetRun(ctx context.Context, dagID, runID string) (store.Run, error) {
	c.getRun.Add(1)
	return c.Store.GetRun(ctx, dagID, runID)
}

func (c *queryCounter) ListTaskInstances(ctx context.Context, q store.TaskQuery) ([]store.TaskInstance, int, error) {
	c.lists.Add(1)
	return c.Store.ListTaskInstances(ctx, q)
}

func (c *queryCounter) ListRunTaskInstances(ctx context.Context, q store.TaskQuery) ([]store.RunTaskInstance, int, error) {
	c.lists.Add(1)
	return c.Store.ListRunTaskInstances(ctx, q)
}

// TestCrossRunTaskInstancesOneQuery: lists across runs read the
// instances with their runs' logical dates in one store call, with no
// lookup per run, and filter by execution date in the store.
func TestCrossRunTaskInstancesOneQuery(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		var qc *queryCounter
		e := newEnv(t, backend, func(c *Config) {
			qc = &queryCounter{Store: c.Store}
			c.Store = qc
		})
		const runs = 40
		for i := range runs {
			e.trigger("solo", map[string]any{"dag_run_id": fmt.Sprintf("r%02d", i),
				"logical_date": time.Date(2026, 3, 1+i, 0, 0, 0, 0, time.UTC).Format(time.RFC3339)})
		}
		for _, c := range []struct {
			method, path string
			body         any
			n            int
			date         string // execution_date of the first, "" = do not check
		}{
			{"GET", "/api/v1/dags/~/dagRuns/~/taskInstances?limit=1000", nil, runs, "2026-03-01T00:00:00+00:00"},
			{"GET", "/api/v1/dags/solo/dagRuns/~/taskInstances?limit=5&offset=3", nil, 5, "2026-03-04T00:00:00+00:00"},
			{"GET", "/api/v1/dags/~/dagRuns/~/taskInstances?limit=1&execution_date_gte=2026-03-20T00:00:00Z", nil, 1, "2026-03-20T00:00:00+00:00"},
			{"GET", "/api/v1/dags/~/dagRuns/~/taskInstances?execution_date_gte=2030-01-01T00:00:00Z", nil, 0, ""},
			{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", map[string]any{"page_limit": 1000}, runs, "2026-03-01T00:00:00+00:00"},
			{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", map[string]any{"execution_date_lte": "2026-03-02T00:00:00Z",
				"dag_ids": []string{"solo"}}, 2, "2026-03-01T00:00:00+00:00"},
		} {
			qc.getRun.Store(0)
			qc.lists.Store(0)
			m := e.ok(200, c.method, c.path, c.body)
			tis := items(t, m, "task_instances")
			if len(tis) != c.n {
				t.Errorf("%s %s: %d instances, want %d", c.method, c.path, len(tis), c.n)
			}
			if c.date != "" && len(tis) > 0 && tis[0]["execution_date"] != c.date {
				t.Errorf("%s %s: first execution_date %v, want %s", c.method, c.path, tis[0]["execution_date"], c.date)
			}
			if n := qc.getRun.Load(); n != 0 {
				t.Errorf("%s %s: %d run lookups, want none", c.method, c.path, n)
			}
			if n := qc.lists.Load(); n != 1 {
				t.Errorf("%s %s: %d list reads, want 1", c.method, c.path, n)
			}
		}
	})
}
