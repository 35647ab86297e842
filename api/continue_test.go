package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/taskrun"
)

// TestContinueAndEvents: deferred instances show what they wait for
// (alone and in lists); an Approval is continued through the API by one
// of its approvers (403 for others, the identity of the request when it
// names nobody), recording who and when; a continue on an instance that
// is not deferred is 409; an event continues the instances waiting on
// its key.
func TestContinueAndEvents(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		reg := dag.NewRegistry()
		d := dag.New("release")
		sign := d.Approval("sign_off", dag.Approvers("alice", "bob"))
		cp := d.Resumable("copy", dag.Steps{Start: func(*dag.Context) error { return nil }, Continue: func(*dag.Context) error { return nil }})
		d.Func("publish", func(*dag.Context) error { return nil }).SetUpstream(sign, cp)
		reg.Register(d)
		e := newEnv(t, backend, func(c *Config) { c.Registry = reg })
		ctx := context.Background()
		if err := e.store.SyncDAGs(ctx, []store.DAGSpec{store.SpecFromDAG(d)}); err != nil {
			t.Fatal(err)
		}
		e.trigger("release", map[string]any{"dag_run_id": "r1"})
		claimed, err := e.store.ClaimTasks(ctx, e.worker, 10, time.Now())
		if err != nil || len(claimed) != 2 {
			t.Fatalf("claimed %v, %v", claimed, err)
		}
		check, deadline := time.Now().Add(time.Hour).UTC().Truncate(time.Second), time.Now().Add(6*time.Hour).UTC().Truncate(time.Second)
		var results []store.Result
		for _, c := range claimed {
			r := store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Deferred, EndedAt: time.Now()}
			if c.TaskID == "copy" {
				r.Deferral = store.Deferral{Event: "copy-done:7", NextCheckAt: check, TriggerTimeout: deadline}
			}
			results = append(results, r)
		}
		if _, err := e.store.FinishTasks(ctx, results); err != nil {
			t.Fatal(err)
		}
		base := "/api/v1/dags/release/dagRuns/r1/taskInstances/"
		ti := e.ok(200, "GET", base+"copy", nil)
		if str(ti, "state") != "deferred" || str(ti, "wait_event") != "copy-done:7" || str(ti, "operator") != "Resumable" ||
			!sameTime(str(ti, "next_check_at"), check) || !sameTime(str(ti, "trigger_timeout"), deadline) {
			t.Errorf("deferred copy = %v", ti)
		}
		list := items(t, e.ok(200, "GET", "/api/v1/dags/release/dagRuns/r1/taskInstances?state=deferred", nil), "task_instances")
		if len(list) != 2 {
			t.Fatalf("deferred list %v", list)
		}
		for _, x := range list {
			if str(x, "task_id") == "copy" && str(x, "wait_event") != "copy-done:7" {
				t.Errorf("listed copy lacks its event: %v", x)
			}
		}

		if r := e.do("POST", base+"publish/continue", map[string]any{}); r.status != 409 ||
			!strings.Contains(str(r.json(t), "detail"), "not deferred") {
			t.Errorf("continue publish → %d %s, want 409", r.status, r.body)
		}
		if r := e.do("POST", base+"nope/continue", map[string]any{}); r.status != 404 {
			t.Errorf("continue an unknown task → %d, want 404", r.status)
		}
		if r := e.do("POST", base+"sign_off/continue", map[string]any{"approved_by": "mallory"}); r.status != 403 ||
			!strings.Contains(str(r.json(t), "detail"), `"mallory" may not approve`) {
			t.Errorf("mallory approves → %d %s, want 403", r.status, r.body)
		}
		if r := e.do("POST", base+"sign_off/continue", map[string]any{}); r.status != 403 ||
			!strings.Contains(str(r.json(t), "detail"), `"anonymous"`) {
			t.Errorf("nobody named → %d %s, want 403 naming the request's identity", r.status, r.body)
		}
		if r := e.do("POST", base+"sign_off/continue", map[string]any{"payload": 1}); r.status != 400 {
			t.Errorf("payload for an approval → %d, want 400", r.status)
		}
		got := e.ok(200, "POST", base+"sign_off/continue", map[string]any{"approved_by": "alice", "comment": "ship it"})
		if str(got, "state") != "queued" {
			t.Errorf("approved sign_off = %v", got)
		}
		if r := e.do("POST", base+"sign_off/continue", map[string]any{"approved_by": "alice"}); r.status != 409 {
			t.Errorf("second approval → %d, want 409", r.status)
		}

		ev := e.ok(201, "POST", "/api/v1/events", map[string]any{"key": "copy-done:7", "payload": map[string]any{"rows": 5}})
		if num(ev, "continued_task_instances") != 1 {
			t.Errorf("event = %v, want it to continue copy", ev)
		}
		resumed, err := e.store.ClaimTasks(ctx, e.worker, 10, time.Now())
		if err != nil || len(resumed) != 2 {
			t.Fatalf("resumed %v, %v", resumed, err)
		}
		for _, c := range resumed {
			switch c.TaskID {
			case "sign_off":
				var a taskrun.Approval
				if err := json.Unmarshal(c.EventPayload, &a); err != nil || a.By != "alice" || a.Comment != "ship it" ||
					a.Approved == nil || !*a.Approved || time.Since(a.At) > time.Minute {
					t.Errorf("approval payload %s (%v)", c.EventPayload, err)
				}
			case "copy":
				var p map[string]int
				if json.Unmarshal(c.EventPayload, &p) != nil || p["rows"] != 5 || !c.Resumed || c.TryNumber != 1 {
					t.Errorf("copy resumed %+v payload %s", c, c.EventPayload)
				}
			}
		}
	})
}

// sameTime reports whether the RFC 3339 text s is the instant want.
func sameTime(s string, want time.Time) bool {
	got, err := time.Parse(time.RFC3339Nano, s)
	return err == nil && got.Equal(want)
}
