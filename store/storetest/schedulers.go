package storetest

import (
	"testing"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// testSchedulerHeartbeats: the latest heartbeat is the newest beat of any
// scheduler, a beat replaces the scheduler's previous one, schedulers
// silent for longer than SchedulerRetention are forgotten, and an empty id
// is refused.
func testSchedulerHeartbeats(t *testing.T, e *env) {
	latest := func(what string) (time.Time, bool) {
		t.Helper()
		at, ok, err := e.s.LatestSchedulerHeartbeat(e.ctx)
		must(t, "LatestSchedulerHeartbeat "+what, err)
		return at, ok
	}
	want := func(what string, at time.Time) {
		t.Helper()
		got, ok := latest(what)
		if !ok || !got.Equal(at) || got.Location() != time.UTC {
			t.Errorf("LatestSchedulerHeartbeat %s = %v (ok %v), want %v UTC", what, got, ok, at)
		}
	}
	if at, ok := latest("before any beat"); ok {
		t.Errorf("LatestSchedulerHeartbeat before any beat = %v, want none", at)
	}
	// Microsecond precision survives; a zone other than UTC comes back as UTC.
	first := t0.Add(1234567 * time.Microsecond).In(time.FixedZone("X", 3600))
	must(t, "HeartbeatScheduler s1", e.s.HeartbeatScheduler(e.ctx, "host-a:1", first))
	want("after the first beat", first)

	must(t, "HeartbeatScheduler s2", e.s.HeartbeatScheduler(e.ctx, "host-b:2", t0.Add(5*time.Second)))
	must(t, "HeartbeatScheduler s1 again", e.s.HeartbeatScheduler(e.ctx, "host-a:1", t0.Add(3*time.Second)))
	want("with two schedulers", t0.Add(5*time.Second))

	// s1 beats long after s2 went silent: s2 is forgotten. A later beat of
	// s1 at an earlier instant (its clock stepped back) is then the latest,
	// which it could not be while s2's row (t0+5s) remained.
	late := t0.Add(store.SchedulerRetention + 10*time.Second)
	must(t, "HeartbeatScheduler s1 late", e.s.HeartbeatScheduler(e.ctx, "host-a:1", late))
	want("after the late beat", late)
	must(t, "HeartbeatScheduler s1 stepped back", e.s.HeartbeatScheduler(e.ctx, "host-a:1", t0.Add(4*time.Second)))
	want("after s2 was forgotten", t0.Add(4*time.Second))

	if err := e.s.HeartbeatScheduler(e.ctx, "", t0); err == nil {
		t.Errorf("HeartbeatScheduler with an empty id succeeded")
	}
}
