// Throwaway: /metrics size and scrape time after a 100k-task run through
// real worker processes and the executor's event hook. Not committed.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"sort"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/bench"
	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

type ev struct{ m *api.Metrics }

func (e ev) TaskFinished(f executor.Finish) {
	e.m.TaskFinished(f.DAGID, f.TaskID, string(f.State), f.Duration)
	if f.Queued >= 0 {
		e.m.TaskQueued(f.DAGID, f.Queued)
	}
}
func (e ev) EventsDropped(n int) { e.m.TaskEventsDropped(n) }

func main() {
	url, bin := os.Args[1], os.Args[2]
	ctx := context.Background()
	st, err := dial.Open(ctx, url, dial.Options{Migrate: true})
	if err != nil {
		panic(err)
	}
	defer st.Close()
	set := bench.DAGSet{Shape: bench.ShapeBig, Size: 100000}
	dags, err := set.Build()
	if err != nil {
		panic(err)
	}
	var specs []store.DAGSpec
	for _, d := range dags {
		specs = append(specs, store.SpecFromDAG(d))
	}
	if err := st.SyncDAGs(ctx, specs); err != nil {
		panic(err)
	}
	m := api.NewMetrics(nil)
	p, err := executor.NewPool(executor.PoolConfig{
		Store: st, DatabaseURL: url, Events: ev{m}, Processes: 2, Slots: 16,
		Executable: bin, Args: []string{"bench", "--child"},
		Env:    []string{bench.EnvDAGs + "=" + bench.FormatDAGSets([]bench.DAGSet{set}), "TRELLIS_LOG_LEVEL=WARN"},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		panic(err)
	}
	if err := p.Start(ctx); err != nil {
		panic(err)
	}
	defer p.Stop()
	d := dags[0]
	now := time.Now().UTC()
	began := time.Now()
	if _, _, err := st.CreateRun(ctx, store.NewRun{DAGID: d.ID(), RunID: "r1", RunType: store.RunManual,
		LogicalDate: now, IntervalStart: now, IntervalEnd: now, Fingerprint: d.Fingerprint(), QueuedAt: now}); err != nil {
		panic(err)
	}
	if _, err := st.StartRuns(ctx, d.ID(), time.Now().UTC()); err != nil {
		panic(err)
	}
	for {
		r, err := st.GetRun(ctx, d.ID(), "r1")
		if err != nil {
			panic(err)
		}
		if r.State.Terminal() {
			fmt.Printf("run %s in %.1f s\n", r.State, time.Since(began).Seconds())
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // last reports
	h := m.Handler()
	var times []time.Duration
	size := 0
	for range 20 {
		rec := httptest.NewRecorder()
		t0 := time.Now()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		times = append(times, time.Since(t0))
		size = rec.Body.Len()
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	fams, _ := m.Registry().Gather()
	var fin float64
	for _, f := range fams {
		if f.GetName() == "trellis_task_instances_finished_total" {
			for _, s := range f.GetMetric() {
				fin += s.GetCounter().GetValue()
			}
		}
	}
	fmt.Printf("finished_total %.0f; /metrics %d bytes; scrape p50 %v max %v\n", fin, size, times[10], times[19])
}
