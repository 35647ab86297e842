package storetest

import (
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// onEvent is a spec of a DAG scheduled on event key.
func onEvent(dagID, key string) store.DAGSpec {
	sp := newSpec(dagID, tk("a"), tk("b", up("a")))
	sp.Schedule, sp.EventKey = "", key
	return fingerprint(sp)
}

func (e *env) event(ne store.NewEvent) store.EventResult {
	e.t.Helper()
	res, err := e.s.RecordEvent(e.ctx, ne)
	if err != nil {
		e.t.Fatalf("RecordEvent(%q): %v", ne.Key, err)
	}
	return res
}

// testEvents: events are recorded with their payload and times; a dedupe
// key makes a repeat a duplicate while its event is kept, and frees it
// once expired; bad events are refused with nothing written; PurgeEvents
// removes the expired ones.
func testEvents(t *testing.T, e *env) {
	res := e.event(store.NewEvent{Key: "copy-done:7", Payload: json.RawMessage(`{ "rows": 12, "a": [1, 2] }`),
		At: t0, Keep: time.Minute})
	ev := res.Event
	if res.Duplicate || ev.ID == 0 || ev.Key != "copy-done:7" || string(ev.Payload) != `{"rows":12,"a":[1,2]}` ||
		!ev.ReceivedAt.Equal(t0) || !ev.ExpiresAt.Equal(t0.Add(time.Minute)) || len(res.Runs) != 0 {
		t.Fatalf("first event = %+v", res)
	}
	if res := e.event(store.NewEvent{Key: "k"}); res.Event.Payload != nil || res.Event.ExpiresAt.Sub(res.Event.ReceivedAt) != store.DefaultEventRetention {
		t.Errorf("event without payload or keep = %+v", res.Event)
	}

	first := e.event(store.NewEvent{Key: "k", DedupeKey: "d1", Payload: json.RawMessage(`1`), At: t0, Keep: time.Minute})
	dup := e.event(store.NewEvent{Key: "k", DedupeKey: "d1", Payload: json.RawMessage(`2`), At: t0.Add(30 * time.Second)})
	if !dup.Duplicate || dup.Event.ID != first.Event.ID || string(dup.Event.Payload) != "1" {
		t.Errorf("repeat within the keep = %+v, want the first event as a duplicate", dup)
	}
	again := e.event(store.NewEvent{Key: "k", DedupeKey: "d1", Payload: json.RawMessage(`3`), At: t0.Add(2 * time.Minute)})
	if again.Duplicate || again.Event.ID == first.Event.ID {
		t.Errorf("repeat after expiry = %+v, want a new event", again)
	}

	for _, bad := range []struct {
		ne   store.NewEvent
		want string
	}{
		{store.NewEvent{Key: ""}, "event key is empty"},
		{store.NewEvent{Key: "a\tb"}, "control character"},
		{store.NewEvent{Key: "k", Payload: json.RawMessage(`{"a":`)}, "not JSON"},
		{store.NewEvent{Key: "k", DedupeKey: strings.Repeat("d", store.MaxDedupeKey+1)}, "dedupe key"},
		{store.NewEvent{Key: "k", Payload: json.RawMessage(`"` + strings.Repeat("x", store.MaxEventPayload) + `"`)}, "too large"},
	} {
		if _, err := e.s.RecordEvent(e.ctx, bad.ne); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("RecordEvent(key %q) = %v, want an error with %q", bad.ne.Key, err, bad.want)
		}
	}
	if _, err := e.s.RecordEvent(e.ctx, store.NewEvent{Key: "k", Payload: make(json.RawMessage, store.MaxEventPayload+1)}); !errors.Is(err, store.ErrTooLarge) {
		t.Errorf("oversized payload: %v, want ErrTooLarge", err)
	}

	// Recording deletes expired events in passing: copy-done:7 (expired
	// at t0+1m) went with the event recorded at t0+2m.
	if n, err := e.s.PurgeEvents(e.ctx, t0.Add(2*time.Minute), 0); err != nil || n != 0 {
		t.Errorf("PurgeEvents(t0+2m) = %d, %v; want 0 (recording expired copy-done:7 already)", n, err)
	}
	// Left: the event without keep (received now, kept an hour) and the
	// last d1 (kept until t0+62m).
	if n, err := e.s.PurgeEvents(e.ctx, t0.Add(24*time.Hour), 1); err != nil || n != 1 {
		t.Errorf("PurgeEvents(t0+24h, limit 1) = %d, %v; want 1", n, err)
	}
	if n, err := e.s.PurgeEvents(e.ctx, time.Now().Add(2*time.Hour), 0); err != nil || n != 1 {
		t.Errorf("PurgeEvents(now+2h) = %d, %v; want 1", n, err)
	}
}

// testScheduleOnEvent: an event creates one queued run, conf = payload,
// of every active unpaused DAG scheduled on its key, in its transaction;
// a duplicate creates none; events at the same instant get runs of their
// own.
func testScheduleOnEvent(t *testing.T, e *env) {
	a, b, other := onEvent("on_signup_a", "user.signup"), onEvent("on_signup_b", "user.signup"), onEvent("other", "x")
	paused := onEvent("paused", "user.signup")
	e.sync(a, b, other, paused)
	if err := e.s.SetPaused(e.ctx, "paused", true); err != nil {
		t.Fatal(err)
	}
	if d, err := e.s.GetDAG(e.ctx, "on_signup_a"); err != nil || d.EventKey != "user.signup" {
		t.Fatalf("GetDAG = %+v, %v; want event key user.signup", d, err)
	}
	res := e.event(store.NewEvent{Key: "user.signup", Payload: json.RawMessage(`{"user": 42}`), At: t0, DedupeKey: "signup-42"})
	if len(res.Runs) != 2 || res.Runs[0].DAGID != "on_signup_a" || res.Runs[1].DAGID != "on_signup_b" {
		t.Fatalf("runs = %+v, want one of on_signup_a and of on_signup_b", res.Runs)
	}
	r := res.Runs[0]
	var conf map[string]int
	if r.State != state.RunQueued || json.Unmarshal(r.Conf, &conf) != nil || conf["user"] != 42 ||
		!r.LogicalDate.Equal(t0) || !strings.HasPrefix(r.RunID, "event__2026-01-01T00:00:00Z__") {
		t.Errorf("run = %+v (conf %s)", r, r.Conf)
	}
	e.wantStates("on_signup_a", r.RunID, map[string]state.TaskState{"a": state.None, "b": state.None})
	if dup := e.event(store.NewEvent{Key: "user.signup", DedupeKey: "signup-42", At: t0}); !dup.Duplicate || len(dup.Runs) != 0 {
		t.Errorf("duplicate = %+v, want no runs", dup)
	}
	// Same instant, another event: a run of its own, a microsecond later.
	res2 := e.event(store.NewEvent{Key: "user.signup", Payload: json.RawMessage(`[1]`), At: t0})
	var conf2 struct{ Payload []int }
	if len(res2.Runs) != 2 || !res2.Runs[0].LogicalDate.Equal(t0.Add(time.Microsecond)) ||
		json.Unmarshal(res2.Runs[0].Conf, &conf2) != nil || len(conf2.Payload) != 1 {
		t.Errorf("second event's runs = %+v", res2.Runs)
	}
	// Concurrent events each get their runs.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.s.RecordEvent(e.ctx, store.NewEvent{Key: "user.signup", At: t0})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent RecordEvent: %v", err)
		}
	}
	_, total, err := e.s.ListRuns(e.ctx, store.RunQuery{DAGIDs: []string{"on_signup_b"}})
	if err != nil || total != 10 {
		t.Errorf("runs of on_signup_b = %d, %v; want 10", total, err)
	}
	if _, total, _ := e.s.ListRuns(e.ctx, store.RunQuery{DAGIDs: []string{"paused", "other"}}); total != 0 {
		t.Errorf("paused or other DAGs got %d runs", total)
	}
	// The runs start like any queued run.
	if started := e.start("on_signup_a"); len(started) != 10 {
		t.Errorf("StartRuns = %d runs, want 10", len(started))
	}
}
