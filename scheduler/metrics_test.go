package scheduler

import (
	"context"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

var _ Metrics = (*api.Metrics)(nil)

// gather returns the metric families of m by name.
func gather(t *testing.T, m *api.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// counter returns the value of the counter name with the given label
// values (in label order), 0 when absent.
func counter(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	for _, m := range f.GetMetric() {
		ok := len(m.GetLabel()) == len(labels)
		for i, l := range m.GetLabel() {
			ok = ok && l.GetValue() == labels[i]
		}
		if ok {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestMetrics feeds the real Prometheus metrics of the API: runs created by
// type, the schedule delay of started scheduled runs, loop durations and
// heartbeats, also while idle.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	d := shellDAG("d", "@every 1m", ts("2026-01-01T00:00:00Z"), dag.Catchup(true), dag.MaxActiveRuns(1))
	h := newHarness(t, backends[0], ts("2026-01-01T00:02:30Z"), Config{}, d)
	m := api.NewMetrics(h.clk)
	h.s.cfg.Metrics = m
	h.start()
	h.waitFired("d")
	runs := h.runs("d")
	if c := states(runs); len(runs) != 2 || c[state.RunRunning] != 1 || c[state.RunQueued] != 1 {
		t.Fatalf("runs %v states %v", runIDs(runs), c)
	}
	if _, err := h.s.Backfill(ctx, "d", ts("2025-12-31T23:58:00Z"), ts("2025-12-31T23:58:00Z")); err != nil {
		t.Fatal(err)
	}
	fams := gather(t, m)
	if v := counter(fams, "trellis_dag_runs_created_total", "d", "scheduled"); v != 2 {
		t.Errorf("scheduled runs created = %v, want 2", v)
	}
	if v := counter(fams, "trellis_dag_runs_created_total", "d", "backfill"); v != 1 {
		t.Errorf("backfill runs created = %v, want 1", v)
	}
	delay := fams["trellis_dag_run_schedule_delay_seconds"].GetMetric()[0].GetHistogram()
	if delay.GetSampleCount() != 1 || delay.GetSampleSum() != 90 {
		t.Errorf("schedule delay: %d samples, sum %v s; want one of 90 s (started 00:02:30, due 00:01:00)",
			delay.GetSampleCount(), delay.GetSampleSum())
	}
	if n := fams["trellis_scheduler_loop_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); n < 1 {
		t.Errorf("no loop durations observed")
	}
	beats := counter(fams, "trellis_scheduler_heartbeat_total")
	if beats < 1 {
		t.Fatalf("no heartbeat")
	}
	// Idle: the keeper still reports itself alive every HeartbeatInterval.
	at := h.clk.Now().Add(DefaultHeartbeatInterval)
	h.waitKept(at)
	h.clk.Set(at)
	h.waitHook("a heartbeat while idle", func() bool { return h.kept.After(at) })
	if v := counter(gather(t, m), "trellis_scheduler_heartbeat_total"); v <= beats {
		t.Errorf("heartbeats %v after the idle interval, want more than %v", v, beats)
	}
}
