package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/scheduler"
)

// TestAPIAloneReportsSchedulerHealth: `trellis api` with no scheduler in
// its process reads the scheduler heartbeats from the database: a stale
// one is unhealthy, and once a scheduler (another process in production,
// here one started on the same database) beats, it is healthy.
func TestAPIAloneReportsSchedulerHealth(t *testing.T) {
	env, u := sqliteEnv(t)
	s := serveInProcess(t, runsRegistry(), env, "api", "--addr", "127.0.0.1:0")
	st := openURL(t, u)
	ctx := context.Background()

	health := func() (status string, latest *time.Time) {
		t.Helper()
		resp, err := http.Get(s.url + "/api/v1/health")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Scheduler struct {
				Status          string  `json:"status"`
				LatestHeartbeat *string `json:"latest_scheduler_heartbeat"`
			} `json:"scheduler"`
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /api/v1/health → %d, want 200", resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("decode /api/v1/health: %v", err)
		}
		if body.Scheduler.LatestHeartbeat != nil {
			at, err := time.Parse(time.RFC3339Nano, *body.Scheduler.LatestHeartbeat)
			if err != nil {
				t.Fatalf("latest_scheduler_heartbeat %q: %v", *body.Scheduler.LatestHeartbeat, err)
			}
			latest = &at
		}
		return body.Scheduler.Status, latest
	}

	if status, latest := health(); status != "unhealthy" || latest != nil {
		t.Errorf("before any heartbeat: %s at %v, want unhealthy with none", status, latest)
	}
	stale := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)
	if err := st.HeartbeatScheduler(ctx, "gone-host:1", stale); err != nil {
		t.Fatal(err)
	}
	if status, latest := health(); status != "unhealthy" || latest == nil || !latest.Equal(stale) {
		t.Errorf("with a 10-minute-old heartbeat: %s at %v, want unhealthy at %v", status, latest, stale)
	}

	sched := scheduler.New(scheduler.Config{Store: st, Registry: runsRegistry(), Clock: clock.Real{},
		HeartbeatInterval: 10 * time.Millisecond})
	began := time.Now().Add(-time.Second)
	if err := sched.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sched.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	deadline := time.After(30 * time.Second)
	for {
		status, latest := health()
		if status == "healthy" {
			if latest == nil || latest.Before(began) {
				t.Errorf("healthy with latest heartbeat %v, want one after %v", latest, began)
			}
			break
		}
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatalf("the API never reported the running scheduler healthy (last: %s at %v)", status, latest)
		}
	}
}
