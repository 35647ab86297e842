package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/state"
)

func TestGrid(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend)
		for _, id := range []string{"r1", "r2", "r3"} {
			e.trigger("etl", map[string]any{"dag_run_id": id})
		}
		e.work(func(task string) state.TaskState {
			if task == "transform" {
				return state.Failed
			}
			return ""
		})
		var g struct {
			TotalRuns  int `json:"total_runs"`
			TotalTasks int `json:"total_tasks"`
			Runs       []struct {
				DAGRunID string `json:"dag_run_id"`
				State    string `json:"state"`
			} `json:"runs"`
			Tasks []gridRowJSON `json:"tasks"`
		}
		r := e.do("GET", "/api/v1/dags/etl/grid?limit=2&task_limit=2&task_offset=1", nil)
		if r.status != http.StatusOK {
			t.Fatalf("grid: %d %s", r.status, r.body)
		}
		if err := json.Unmarshal(r.body, &g); err != nil {
			t.Fatalf("grid body: %v\n%s", err, r.body)
		}
		if g.TotalRuns != 3 || g.TotalTasks != 3 || len(g.Runs) != 2 || len(g.Tasks) != 2 {
			t.Fatalf("grid = %d of %d runs, %d of %d tasks; want 2 of 3, 2 of 3", len(g.Runs), g.TotalRuns, len(g.Tasks), g.TotalTasks)
		}
		if g.Tasks[0].TaskID != "transform" || g.Tasks[1].TaskID != "load" {
			t.Errorf("grid rows = %s, %s; want transform, load (topological order from offset 1)", g.Tasks[0].TaskID, g.Tasks[1].TaskID)
		}
		for j := range g.Runs {
			if s := g.Tasks[0].States[j]; s == nil || *s != "failed" || g.Tasks[0].Tries[j] != 1 || g.Tasks[0].End[j] == nil {
				t.Errorf("run %s transform: %v try %d end %v; want failed, try 1, an end", g.Runs[j].DAGRunID, s, g.Tasks[0].Tries[j], g.Tasks[0].End[j])
			}
			if s := g.Tasks[1].States[j]; s == nil || *s != "upstream_failed" {
				t.Errorf("run %s load: %v, want upstream_failed", g.Runs[j].DAGRunID, s)
			}
			if g.Runs[j].State != "failed" {
				t.Errorf("run %s: %s, want failed", g.Runs[j].DAGRunID, g.Runs[j].State)
			}
		}
		// A clear through the API is seen at once, not a second later.
		e.ok(http.StatusOK, "POST", "/api/v1/dags/etl/clearTaskInstances",
			map[string]any{"dry_run": false, "dag_run_id": g.Runs[0].DAGRunID, "task_ids": []string{"transform"}, "only_failed": false})
		r = e.do("GET", "/api/v1/dags/etl/grid?limit=2&task_limit=2&task_offset=1", nil)
		if err := json.Unmarshal(r.body, &g); err != nil {
			t.Fatalf("grid body: %v", err)
		}
		if s := g.Tasks[0].States[0]; s == nil || *s == "failed" {
			t.Errorf("transform after the clear: %v, want it cleared", s)
		}
		for _, bad := range []string{"?limit=-1", "?task_limit=-1", "?task_offset=-1", "?offset=-1", "?limit=x"} {
			if r := e.do("GET", "/api/v1/dags/etl/grid"+bad, nil); r.status != http.StatusBadRequest {
				t.Errorf("grid%s: %d, want 400", bad, r.status)
			}
		}
		// Limits above the maximum are the maximum, 0 is the default (as
		// Airflow's limit).
		if r := e.do("GET", "/api/v1/dags/etl/grid?limit=1000&task_limit=0", nil); r.status != http.StatusOK ||
			!strings.Contains(string(r.body), `"task_id":"extract"`) {
			t.Errorf("grid?limit=1000&task_limit=0: %d %.200s", r.status, r.body)
		}
		if r := e.do("GET", "/api/v1/dags/nope/grid", nil); r.status != http.StatusNotFound {
			t.Errorf("grid of an unknown DAG: %d, want 404", r.status)
		}
	})
}

func TestSessionCookie(t *testing.T) {
	const token = "s3cret-token-of-the-ui"
	e := newEnv(t, "sqlite", func(c *Config) { c.Token = token })
	e.token = ""
	s := NewSessions(token)
	req, _ := http.NewRequest("GET", "/", nil)
	c := s.New(req)
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %+v: want HttpOnly and SameSite=Strict", c)
	}
	req.AddCookie(c)
	csrf, ok := s.Check(req)
	if !ok || csrf == "" {
		t.Fatalf("Check of a new session = %q, %v", csrf, ok)
	}
	cookie := c.Name + "=" + c.Value
	if r := e.do("GET", "/api/v1/dags", nil, "Cookie", cookie); r.status != http.StatusOK {
		t.Errorf("GET with the session cookie: %d", r.status)
	}
	pause := `{"is_paused": true}`
	if r := e.do("PATCH", "/api/v1/dags/etl", pause, "Cookie", cookie); r.status != http.StatusUnauthorized ||
		!strings.Contains(string(r.body), CSRFHeader) {
		t.Errorf("PATCH with the cookie and no CSRF header: %d %s, want 401 naming %s", r.status, r.body, CSRFHeader)
	}
	if r := e.do("PATCH", "/api/v1/dags/etl", pause, "Cookie", cookie, CSRFHeader, "wrong"); r.status != http.StatusUnauthorized {
		t.Errorf("PATCH with a wrong CSRF header: %d, want 401", r.status)
	}
	if r := e.do("PATCH", "/api/v1/dags/etl", pause, "Cookie", cookie, CSRFHeader, csrf, "Sec-Fetch-Site", "cross-site"); r.status != http.StatusForbidden {
		t.Errorf("PATCH from another site: %d, want 403", r.status)
	}
	if r := e.do("PATCH", "/api/v1/dags/etl", pause, "Cookie", cookie, CSRFHeader, csrf, "Origin", "http://evil.example"); r.status != http.StatusForbidden {
		t.Errorf("PATCH with a foreign Origin: %d, want 403", r.status)
	}
	if r := e.do("PATCH", "/api/v1/dags/etl", pause, "Cookie", cookie, CSRFHeader, csrf, "Sec-Fetch-Site", "same-origin"); r.status != http.StatusOK {
		t.Errorf("PATCH with the cookie and its CSRF header: %d %s", r.status, r.body)
	}
	forged := SessionCookie + "=abc." + "forged"
	if r := e.do("GET", "/api/v1/dags", nil, "Cookie", forged); r.status != http.StatusUnauthorized {
		t.Errorf("GET with a forged cookie: %d, want 401", r.status)
	}
	other := NewSessions("another-token-of-the-ui").New(req)
	if r := e.do("GET", "/api/v1/dags", nil, "Cookie", other.Name+"="+other.Value); r.status != http.StatusUnauthorized {
		t.Errorf("GET with a cookie of another token: %d, want 401", r.status)
	}
}

func TestRecentReads(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := &recentReads{now: clk.Now}
	reads := 0
	read := func(body string) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) { reads++; return []byte(body), nil }
	}
	get := func(key, body string) string {
		b, err := c.get(context.Background(), key, read(body))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if get("a", "1") != "1" || get("a", "2") != "1" || reads != 1 {
		t.Errorf("a second request within the window read again (%d reads)", reads)
	}
	clk.Advance(gridFresh)
	if get("a", "3") != "3" || reads != 2 {
		t.Errorf("a request after the window was served the old body (%d reads)", reads)
	}
	c.forget()
	if get("a", "4") != "4" || reads != 3 {
		t.Errorf("a request after forget was served the old body (%d reads)", reads)
	}
	// Bodies are bounded in bytes, and stale ones are dropped.
	big := strings.Repeat("x", gridKeptBytes/2+1)
	get("b", big)
	get("c", big) // does not fit beside b: served, not kept
	if c.bytes > gridKeptBytes || len(c.bodies) != 2 {
		t.Errorf("kept %d bytes in %d bodies, want a, b within %d", c.bytes, len(c.bodies), gridKeptBytes)
	}
	clk.Advance(gridFresh)
	get("d", "5")
	if len(c.bodies) != 1 || c.bytes != 1 {
		t.Errorf("after the window: %d bodies, %d bytes; want only d's", len(c.bodies), c.bytes)
	}
}
