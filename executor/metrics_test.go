package executor

import (
	"context"
	"fmt"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/executor/internal/testdags"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// apiEvents feeds api.Metrics from the Events hook, as the commands do.
type apiEvents struct{ m *api.Metrics }

func (e apiEvents) TaskFinished(f Finish) {
	e.m.TaskFinished(f.DAGID, f.TaskID, string(f.State), f.Duration)
	if f.Queued >= 0 {
		e.m.TaskQueued(f.DAGID, f.Queued)
	}
}

func (e apiEvents) EventsDropped(n int) { e.m.TaskEventsDropped(n) }

// gathered sums the series of metric name by the value of label (""
// sums them all): counter values, histogram sample counts.
func gathered(t testing.TB, m *api.Metrics, name, label string) map[string]float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			key := ""
			for _, l := range s.GetLabel() {
				if l.GetName() == label {
					key = l.GetValue()
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] += s.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] += float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestPoolMetricsMatchStore runs 10,000 tasks ending in every outcome on
// three worker processes and checks that the task metrics fed by the
// finishes the workers report equal what the store recorded.
func TestPoolMetricsMatchStore(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 tasks")
	}
	bin := buildTestbin(t)
	const runs = 10
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			url := b.url(t)
			st := openStore(t, url)
			syncDAGs(t, st, testdags.Registry().DAGs()...)
			m := api.NewMetrics(nil)
			env := newProcEnv(t)
			logs := &syncBuffer{}
			p := newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) {
				c.Processes, c.Slots, c.Events = 3, 16, apiEvents{m}
			})
			defer retrier(t, st)()
			d := testdags.Registry().Lookup(testdags.Outcomes)
			for i := range runs {
				startRun(t, st, d, fmt.Sprintf("r%02d", i), nil)
			}
			for i := range runs {
				if r := waitRun(t, st, d.ID(), fmt.Sprintf("r%02d", i), 5*time.Minute); !r.State.Terminal() {
					t.Fatalf("run %s", r.State)
				}
			}

			// What the store recorded, and what OutcomeOf says it must be.
			ctx := context.Background()
			count := func(s state.TaskState, q store.TaskQuery) float64 {
				q.DAGIDs, q.States, q.Limit = []string{d.ID()}, []state.TaskState{s}, 1
				_, n, err := st.ListTaskInstances(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				return float64(n)
			}
			want := map[string]float64{}
			for _, s := range []state.TaskState{state.Success, state.Failed, state.Skipped} {
				want[string(s)] = count(s, store.TaskQuery{})
			}
			wantOutcome := map[string]float64{}
			for i := range testdags.OutcomesTasks {
				first, final := testdags.OutcomeOf(i)
				wantOutcome[final] += runs
				if first == "up_for_retry" {
					want["up_for_retry"] += runs // one retried try per such task
				}
			}
			for _, s := range []string{"success", "failed", "skipped"} {
				if want[s] != wantOutcome[s] {
					t.Fatalf("the store has %v %s instances, want %v", want[s], s, wantOutcome[s])
				}
			}
			total := want["success"] + want["failed"] + want["skipped"] + want["up_for_retry"]

			// The reports of the last finishes may still be on their way.
			deadline := time.Now().Add(30 * time.Second)
			var got map[string]float64
			for {
				got = gathered(t, m, "trellis_task_instances_finished_total", "state")
				if n := got["success"] + got["failed"] + got["skipped"] + got["up_for_retry"]; n >= total || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			for _, s := range []string{"success", "failed", "skipped", "up_for_retry"} {
				if got[s] != want[s] {
					t.Errorf("trellis_task_instances_finished_total{state=%q} = %v, the store recorded %v", s, got[s], want[s])
				}
			}
			if n := gathered(t, m, "trellis_task_duration_seconds", "")[""]; n != total {
				t.Errorf("trellis_task_duration_seconds has %v observations, want %v", n, total)
			}
			if n := gathered(t, m, "trellis_task_queued_seconds", "")[""]; n != total {
				t.Errorf("trellis_task_queued_seconds has %v observations, want %v", n, total)
			}
			if n := gathered(t, m, "trellis_task_events_dropped_total", "")[""]; n != 0 {
				t.Errorf("%v finishes dropped", n)
			}
			if series := gathered(t, m, "trellis_task_duration_seconds", "task_id"); len(series) != 1 {
				t.Errorf("task duration series by task_id: %v, want one per DAG", series)
			}
			if n := p.RunningTries(); n != 0 {
				t.Errorf("the pool says %d tries run after every run finished", n)
			}
			if p.Restarts() != 0 {
				t.Errorf("%d worker processes restarted", p.Restarts())
			}
		})
	}
}
