package scheduler

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// TestStoreHeartbeat: a started scheduler records its heartbeat in the
// store at once, at the Clock's time, and again every HeartbeatInterval;
// the store reports it as the latest scheduler heartbeat.
func TestStoreHeartbeat(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		start := ts("2026-01-01T00:00:00Z")
		h := newHarness(t, b, start, Config{HeartbeatInterval: 5 * time.Millisecond},
			shellDAG("d", "@daily", start))
		if _, ok, err := h.st.LatestSchedulerHeartbeat(context.Background()); ok || err != nil {
			t.Fatalf("heartbeat before Start: ok %v err %v, want none", ok, err)
		}
		h.start()
		waitHeartbeat(t, h, start)
		later := start.Add(time.Minute)
		h.clk.Set(later)
		waitHeartbeat(t, h, later)
	})
}

// waitHeartbeat polls the store until its latest scheduler heartbeat is
// at (heartbeats wake no subscriber, so there is no signal to wait on).
func waitHeartbeat(t *testing.T, h *harness, at time.Time) {
	t.Helper()
	poll := time.NewTicker(2 * time.Millisecond)
	defer poll.Stop()
	deadline := time.After(waitTimeout)
	for {
		got, ok, err := h.st.LatestSchedulerHeartbeat(context.Background())
		if err != nil {
			t.Fatalf("LatestSchedulerHeartbeat: %v", err)
		}
		if ok && got.Equal(at) {
			return
		}
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatalf("timed out waiting for a scheduler heartbeat at %s (latest %v, ok %v)", fmtTime(at), got, ok)
		}
	}
}

func TestSchedulerID(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	if got, want := schedulerID(), fmt.Sprintf("%s:%d", host, os.Getpid()); got != want {
		t.Errorf("schedulerID() = %q, want %q", got, want)
	}
}
