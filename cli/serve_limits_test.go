package cli

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// TestStateSamplerLimits: the pool and concurrency key gauges carry the
// store's numbers while limits hold instances back, and no rendered key
// becomes a label (keys are unbounded; pools are created by users).
func TestStateSamplerLimits(t *testing.T) {
	st := openTestStore(t, true)
	ctx := context.Background()
	if _, err := st.CreatePool(ctx, store.PoolSpec{Name: "warehouse", Slots: 3}); err != nil {
		t.Fatal(err)
	}
	reg := dag.NewRegistry()
	d := dag.New("limited", dag.Params(map[string]any{"customer": "acme-secret-customer"}))
	noop := func(*dag.Context) error { return nil }
	for _, id := range []string{"w1", "w2", "w3"} {
		d.Func(id, noop, dag.Pool("warehouse"), dag.PoolSlots(2))
	}
	for _, id := range []string{"k1", "k2", "k3", "k4"} {
		d.Func(id, noop, dag.ConcurrencyKey("cust:{{.Params.customer}}", 1))
	}
	reg.Register(d)
	if err := st.SyncDAGs(ctx, []store.DAGSpec{store.SpecFromDAG(d)}); err != nil {
		t.Fatal(err)
	}
	trigger(t, st, reg, "limited", "r1")
	w := testWorker(t, st)
	cs, err := st.ClaimTasks(ctx, w, 16, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// One of w1..w3 (2 of the 3 slots; the next would need 4) and one of
	// k1..k4 run; 2 instances of 2 slots are queued in the pool and 3
	// wait on the key.
	if len(cs) != 2 {
		t.Fatalf("claimed %d, want one pooled and one keyed instance", len(cs))
	}
	m := api.NewMetrics(clock.Real{})
	sampled := make(chan struct{}, 1)
	s := &stateSampler{st: st, metrics: m, clk: clock.Real{}, log: slog.New(slog.DiscardHandler), interval: time.Hour, sampled: signalled(sampled)}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	select {
	case <-sampled:
	case <-time.After(10 * time.Second):
		t.Fatal("no count at start")
	}
	for _, c := range []struct {
		state string
		want  float64
	}{{"running", 2}, {"queued", 4}, {"open", 0}} {
		if v, ok := metricValue(t, m, "trellis_pool_slots", "pool", "warehouse", "state", c.state); !ok || v != c.want {
			t.Errorf("trellis_pool_slots{pool=warehouse,state=%q} = %v (present %v), want %v", c.state, v, ok, c.want)
		}
	}
	if v, ok := metricValue(t, m, "trellis_concurrency_key_waiting_task_instances"); !ok || v != 3 {
		t.Errorf("trellis_concurrency_key_waiting_task_instances = %v (present %v), want 3", v, ok)
	}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if strings.Contains(l.GetValue(), "acme-secret-customer") {
					t.Errorf("metric %s has the rendered key as label %s=%q", f.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}
