//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/bench"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
	"github.com/trellis-dag/trellis/ui"
)

// BenchmarkUI measures the web UI in headless Chromium, served over real
// HTTP by the API and UI handlers on PostgreSQL, with the benchmark DAGs
// bench_big (1,000 tasks, 25 finished runs) and bench_wide (a finished run
// of 10,002 tasks), recorded through the store as workers would (the
// benchmark DAGs exist only in `trellis bench`'s workers, so `trellis
// serve` cannot be used):
//
//   - grid_request: GET /api/v1/dags/bench_big/grid for 25 runs × 1,000
//     tasks, each request a fresh read (the shared-read window is let
//     pass);
//   - dag_page: from navigation until the grid is on screen;
//   - graph: from the click on the Graph tab until the 1,000 tasks are
//     laid out by dagre and drawn;
//   - run_page_10000: from navigation until the run page shows its first
//     rows, then a scroll to the middle of the 10,002 rows until they are
//     filled.
//
// Run it with: go test -run '^$' -bench UI -benchtime 5x ./e2e/
func BenchmarkUI(b *testing.B) {
	ctx := browser(b)
	base := uiBenchServer(b)
	c := newClient(b, base, "")
	p := &page{t: b, ctx: ctx, base: base}

	b.Run("grid_request", func(b *testing.B) {
		var times []time.Duration
		for b.Loop() {
			b.StopTimer()
			time.Sleep(1100 * time.Millisecond) // past the shared-read window
			b.StartTimer()
			start := time.Now()
			r := c.do("GET", "/api/v1/dags/bench_big/grid?limit=25&task_limit=1000", nil)
			times = append(times, time.Since(start))
			if r.status != http.StatusOK || len(r.body) < 100_000 {
				b.Fatalf("grid: %d, %d bytes", r.status, len(r.body))
			}
		}
		report(b, times, "grid")
	})
	b.Run("dag_page", func(b *testing.B) {
		var times []time.Duration
		for b.Loop() {
			p.open("/dags/bench_big")
			p.until("the grid is painted", `performance.getEntriesByName("trellis-grid").length`, time.Minute)
			ms := evalJS[float64](p, `performance.getEntriesByName("trellis-grid")[0].startTime`)
			if n := evalJS[int](p, `document.querySelector("#grid-table").offsetHeight / 22`); n != 1000 {
				b.Fatalf("the grid has %d rows, want 1,000", n)
			}
			if n := evalJS[int](p, `document.querySelectorAll("#grid-table a.c").length`); n == 0 || n%25 != 0 {
				b.Fatalf("the grid shows %d cells, want full rows of 25", n)
			}
			times = append(times, time.Duration(ms*float64(time.Millisecond)))
		}
		report(b, times, "painted")
	})
	b.Run("graph", func(b *testing.B) {
		var times []time.Duration
		for b.Loop() {
			p.open("/dags/bench_big")
			p.until("the grid is painted", `performance.getEntriesByName("trellis-grid").length`, time.Minute)
			evalJS[float64](p, `window.__t0 = performance.now(); document.querySelector("#tab-graph").click(); window.__t0`)
			p.until("the graph is drawn", `performance.getEntriesByName("trellis-graph").length`, 2*time.Minute)
			ms := evalJS[float64](p, `performance.getEntriesByName("trellis-graph")[0].startTime - window.__t0`)
			times = append(times, time.Duration(ms*float64(time.Millisecond)))
		}
		report(b, times, "drawn")
	})
	b.Run("run_page_10000", func(b *testing.B) {
		var open, scroll []time.Duration
		for b.Loop() {
			p.open("/dags/bench_wide/runs/wide")
			p.until("the first rows are painted", `performance.getEntriesByName("trellis-run").length`, time.Minute)
			open = append(open, time.Duration(evalJS[float64](p, `performance.getEntriesByName("trellis-run")[0].startTime`)*float64(time.Millisecond)))
			if n := evalJS[int](p, `+document.querySelector("#ti-summary").textContent.split(" ")[0]`); n != 10002 {
				b.Fatalf("the run page counts %d task instances, want 10,002", n)
			}
			evalJS[float64](p, `window.__t0 = performance.now(); const l = document.querySelector("#ti-list"); l.scrollTop = 5000 * 30; window.__t0`)
			p.until("the middle rows are filled", `[...document.querySelectorAll(".ti-row[data-task]")].some(r => r.style.top === (5001 * 30) + "px")`, time.Minute)
			scroll = append(scroll, time.Duration((evalJS[float64](p, `performance.now() - window.__t0`))*float64(time.Millisecond)))
		}
		report(b, open, "painted")
		report(b, scroll, "scrolled")
	})
}

// report adds the median and the worst of times to the benchmark's
// results, in milliseconds.
func report(b *testing.B, times []time.Duration, name string) {
	if len(times) == 0 {
		return
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2])/float64(time.Millisecond), name+"-p50-ms")
	b.ReportMetric(float64(times[len(times)-1])/float64(time.Millisecond), name+"-max-ms")
}

// uiBenchServer serves the API and the UI on a fresh PostgreSQL store
// holding 25 finished runs of bench_big=1000 and one of bench_wide=10000.
func uiBenchServer(b *testing.B) string {
	ctx := context.Background()
	st, err := postgres.Open(ctx, testdb.Postgres(b), postgres.Options{})
	if err != nil {
		b.Fatalf("open postgres: %v", err)
	}
	b.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		b.Fatalf("migrate: %v", err)
	}
	ds, err := bench.BuildAll([]bench.DAGSet{{Shape: bench.ShapeBig, Size: 1000}, {Shape: bench.ShapeWide, Size: 10000}})
	if err != nil {
		b.Fatalf("benchmark DAGs: %v", err)
	}
	reg := dag.NewRegistry()
	var specs []store.DAGSpec
	for _, d := range ds {
		reg.Register(d)
		specs = append(specs, store.SpecFromDAG(d))
	}
	if err := st.SyncDAGs(ctx, specs); err != nil {
		b.Fatalf("sync DAGs: %v", err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	newRun := func(d *dag.DAG, id string, ld time.Time) {
		if _, _, err := st.CreateRun(ctx, store.NewRun{DAGID: d.ID(), RunID: id, RunType: store.RunManual, LogicalDate: ld,
			IntervalStart: ld, IntervalEnd: ld, Fingerprint: d.Fingerprint(), QueuedAt: time.Now()}); err != nil {
			b.Fatalf("create run %s: %v", id, err)
		}
	}
	for _, d := range ds {
		switch d.ID() {
		case "bench_big":
			for i := range 25 {
				newRun(d, fmt.Sprintf("big_%02d", i), t0.Add(time.Duration(i)*time.Hour))
			}
		case "bench_wide":
			newRun(d, "wide", t0)
		}
	}
	w := store.Worker{ID: "ui-bench", Hostname: "bench", PID: 1, Slots: 1000, StartedAt: time.Now(), HeartbeatAt: time.Now()}
	if err := st.RegisterWorker(ctx, w); err != nil {
		b.Fatalf("register worker: %v", err)
	}
	for {
		started := 0
		for _, d := range ds {
			runs, err := st.StartRuns(ctx, d.ID(), time.Now())
			if err != nil {
				b.Fatalf("start runs: %v", err)
			}
			started += len(runs)
		}
		done := 0
		for {
			cs, err := st.ClaimTasks(ctx, w, 1000, time.Now())
			if err != nil {
				b.Fatalf("claim: %v", err)
			}
			if len(cs) == 0 {
				break
			}
			rs := make([]store.Result, len(cs))
			for i, c := range cs {
				now := time.Now()
				rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success,
					StartedAt: now.Add(-time.Duration(i%50) * time.Millisecond), EndedAt: now}
			}
			if _, err := st.FinishTasks(ctx, rs); err != nil {
				b.Fatalf("finish: %v", err)
			}
			done += len(cs)
		}
		if started == 0 && done == 0 {
			break
		}
	}
	_, total, err := st.ListRuns(ctx, store.RunQuery{States: []state.RunState{state.RunSuccess}, Limit: 1})
	if err != nil || total != 26 {
		b.Fatalf("%d runs succeeded (%v), want 26", total, err)
	}
	apiH, err := api.New(api.Config{Store: st, Registry: reg})
	if err != nil {
		b.Fatalf("api: %v", err)
	}
	uiH, err := ui.New(ui.Config{Registry: reg})
	if err != nil {
		b.Fatalf("ui: %v", err)
	}
	srv := httptest.NewServer(ui.Mount(apiH, uiH))
	b.Cleanup(srv.Close)
	return srv.URL
}
