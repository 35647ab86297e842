package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// TestPostEvent records events through the API on both stores: 201 with
// the event and the runs of the DAGs scheduled on its key (conf = the
// payload), 200 with the kept event for a repeated dedupe_key, the
// configured retention, 400 for bad fields, 413 for a payload over the
// limit, and the events metric.
func TestPostEvent(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, func(c *Config) { c.EventRetention = 10 * time.Minute })
		d := dag.New("on_signup", dag.ScheduleOnEvent("user.signup"))
		d.Func("welcome", func(*dag.Context) error { return nil })
		if err := e.store.SyncDAGs(context.Background(), []store.DAGSpec{store.SpecFromDAG(d)}); err != nil {
			t.Fatal(err)
		}

		got := e.ok(201, "POST", "/api/v1/events", map[string]any{
			"key": "user.signup", "payload": map[string]any{"user": 42}, "dedupe_key": "signup-42"})
		runs, _ := got["dag_runs"].([]any)
		if str(got, "key") != "user.signup" || num(got, "event_id") < 1 || got["duplicate"] != false || len(runs) != 1 {
			t.Fatalf("event = %v", got)
		}
		received, _ := time.Parse(time.RFC3339Nano, str(got, "received_at"))
		expires, _ := time.Parse(time.RFC3339Nano, str(got, "expires_at"))
		if expires.Sub(received) != 10*time.Minute {
			t.Errorf("kept %v, want the configured 10m", expires.Sub(received))
		}
		run := runs[0].(map[string]any)
		r := e.ok(200, "GET", "/api/v1/dags/on_signup/dagRuns/"+str(run, "dag_run_id"), nil)
		if conf, _ := r["conf"].(map[string]any); conf["user"] != 42.0 {
			t.Errorf("run = %v, want conf {user: 42}", r)
		}

		dup := e.ok(200, "POST", "/api/v1/events", map[string]any{"key": "user.signup", "dedupe_key": "signup-42"})
		if dup["duplicate"] != true || num(dup, "event_id") != num(got, "event_id") || len(dup["dag_runs"].([]any)) != 0 {
			t.Errorf("duplicate = %v", dup)
		}
		// An unknown key is accepted and kept.
		if u := e.ok(201, "POST", "/api/v1/events", map[string]any{"key": "nobody.listens"}); u["payload"] != nil {
			t.Errorf("event without payload = %v", u)
		}

		for body, want := range map[string]string{
			`{}`:                            `field "key" is required`,
			`{"key": ""}`:                   "event key is empty",
			`{"key": 7}`:                    `"key"`,
			`{"key": "k", "dedupe_key": 3}`: `"dedupe_key"`,
			`{"key": "k", "extra": 1}`:      `unknown field(s) "extra"`,
			`{"key": "` + strings.Repeat("k", 251) + `"}`: "more than 250",
		} {
			resp := e.do("POST", "/api/v1/events", body)
			if resp.status != 400 || !strings.Contains(str(resp.json(t), "detail"), want) {
				t.Errorf("POST %s → %d %s, want 400 with %q", body, resp.status, string(resp.body), want)
			}
		}
		big := `{"key": "k", "payload": "` + strings.Repeat("x", store.MaxEventPayload) + `"}`
		if resp := e.do("POST", "/api/v1/events", big); resp.status != 413 {
			t.Errorf("oversized payload → %d %s, want 413", resp.status, string(resp.body))
		}
		metrics := string(e.do("GET", "/metrics", nil).body)
		for _, line := range []string{`trellis_events_total{outcome="recorded"} 2`, `trellis_events_total{outcome="duplicate"} 1`,
			`trellis_dag_runs_created_total{dag_id="on_signup",run_type="event"} 1`} {
			if !strings.Contains(metrics, line) {
				t.Errorf("metrics lack %s", line)
			}
		}
	})
}
