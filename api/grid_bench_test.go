package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// BenchmarkGrid measures the grid of a 1,000-task DAG with 25 finished
// runs on each store: the store read alone (Store.Grid), and the whole
// request over real HTTP with gzip, as the UI's DAG page makes it, each a
// fresh read (a fake clock moves past the shared-read window). Target: a
// request ≤ 200 ms on PostgreSQL.
//
//	go test -run '^$' -bench Grid -benchtime 20x ./api/
func BenchmarkGrid(b *testing.B) {
	for _, backend := range backends {
		b.Run(backend, func(b *testing.B) { benchGrid(b, backend) })
	}
}

func benchGrid(b *testing.B, backend string) {
	clk := clock.NewFake(time.Now())
	e := newEnv(b, backend, func(c *Config) { c.Clock = clk })
	ctx := context.Background()
	d := dag.New("big1000")
	noop := func(*dag.Context) error { return nil }
	root := d.Func("t0000", noop)
	ids := []string{"t0000"}
	for i := 1; i < 1000; i++ {
		id := fmt.Sprintf("t%04d", i)
		d.Func(id, noop).SetUpstream(root)
		ids = append(ids, id)
	}
	e.reg.Register(d)
	if err := e.store.SyncDAGs(ctx, []store.DAGSpec{store.SpecFromDAG(d)}); err != nil {
		b.Fatal(err)
	}
	for i := range 25 {
		ld := time.Date(2026, 1, 1, i, 0, 0, 0, time.UTC).Format(time.RFC3339)
		e.trigger("big1000", map[string]any{"dag_run_id": fmt.Sprintf("r%02d", i), "logical_date": ld})
	}
	for {
		cs, err := e.store.ClaimTasks(ctx, e.worker, 1000, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		if len(cs) == 0 {
			if runs, err := e.store.StartRuns(ctx, "big1000", time.Now()); err != nil || len(runs) == 0 {
				break
			}
			continue
		}
		rs := make([]store.Result, len(cs))
		for i, c := range cs {
			rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: time.Now()}
		}
		if _, err := e.store.FinishTasks(ctx, rs); err != nil {
			b.Fatal(err)
		}
	}
	for _, all := range []bool{true, false} {
		name := "store_named_tasks"
		if all {
			name = "store_all_tasks"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				g, err := e.store.Grid(ctx, store.GridQuery{DAGID: "big1000", RunLimit: 25, TaskIDs: ids, AllTasks: all})
				if err != nil || len(g.Runs) != 25 || len(g.Cells) != 25000 {
					b.Fatalf("grid: %d runs, %d cells, %v", len(g.Runs), len(g.Cells), err)
				}
			}
		})
	}
	b.Run("request", func(b *testing.B) {
		client := &http.Client{} // asks for gzip, as browsers do
		url := e.srv.URL + "/api/v1/dags/big1000/grid?limit=25&task_limit=1000"
		for b.Loop() {
			clk.Advance(2 * gridFresh)
			resp, err := client.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n < 100_000 {
				b.Fatalf("grid: %d, %d bytes", resp.StatusCode, n)
			}
		}
	})
}

// BenchmarkGridWatchers measures what pages watching a running run cost
// the workers: a run of root → 10,000 no-op tasks is executed by two
// goroutines claiming and finishing 16 tasks at a time (FinishAndClaim, as
// worker processes do), while 0 or 20 simulated browsers poll as the UI's
// DAG and run pages do (the grid and a page of 500 task instances, every
// 1.5 s each). It reports the run's tasks/s; the target is that 20
// watchers do not halve it.
//
//	go test -run '^$' -bench GridWatchers -benchtime 3x ./api/
func BenchmarkGridWatchers(b *testing.B) {
	for _, backend := range backends {
		for _, watchers := range []int{0, 20} {
			b.Run(fmt.Sprintf("%s/watchers=%d", backend, watchers), func(b *testing.B) { benchWatchers(b, backend, watchers) })
		}
	}
}

func benchWatchers(b *testing.B, backend string, watchers int) {
	e := newEnv(b, backend)
	ctx := context.Background()
	const n = 10000
	d := dag.New("wide10k")
	noop := func(*dag.Context) error { return nil }
	root := d.Func("root", noop)
	for i := range n {
		d.Func(fmt.Sprintf("t%05d", i), noop).SetUpstream(root)
	}
	e.reg.Register(d)
	if err := e.store.SyncDAGs(ctx, []store.DAGSpec{store.SpecFromDAG(d)}); err != nil {
		b.Fatal(err)
	}
	var tasks int
	var elapsed time.Duration
	i := 0
	for b.Loop() {
		runID := fmt.Sprintf("w%d", i)
		ld := time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC).Format(time.RFC3339)
		i++
		e.trigger("wide10k", map[string]any{"dag_run_id": runID, "logical_date": ld})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range watchers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				urls := []string{
					e.srv.URL + "/api/v1/dags/wide10k/grid?limit=25&task_limit=1000",
					e.srv.URL + "/api/v1/dags/wide10k/dagRuns/" + runID + "/taskInstances?limit=500&offset=" + fmt.Sprint(w*500%n),
				}
				for {
					for _, u := range urls {
						if resp, err := http.Get(u); err == nil {
							_, _ = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
					}
					select {
					case <-stop:
						return
					case <-time.After(1500 * time.Millisecond):
					}
				}
			}()
		}
		start := time.Now()
		var done atomic.Int64
		var workers sync.WaitGroup
		for w := range 2 {
			workers.Add(1)
			go func() {
				defer workers.Done()
				wk := e.worker
				wk.ID = fmt.Sprintf("%s-%d", wk.ID, w)
				if err := e.store.RegisterWorker(ctx, wk); err != nil {
					b.Error(err)
					return
				}
				cs, err := e.store.ClaimTasks(ctx, wk, 16, time.Now())
				for idle := 0; err == nil && idle < 200; {
					if len(cs) == 0 {
						idle++
						time.Sleep(2 * time.Millisecond)
						cs, err = e.store.ClaimTasks(ctx, wk, 16, time.Now())
						continue
					}
					idle = 0
					rs := make([]store.Result, len(cs))
					for k, c := range cs {
						rs[k] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: time.Now()}
					}
					done.Add(int64(len(cs)))
					_, cs, err = e.store.FinishAndClaim(ctx, rs, wk, 16, time.Now())
				}
				if err != nil {
					b.Error(err)
				}
			}()
		}
		for done.Load() < n+1 {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed += time.Since(start)
		tasks += n + 1
		close(stop)
		wg.Wait()
		workers.Wait()
	}
	b.ReportMetric(float64(tasks)/elapsed.Seconds(), "tasks/s")
}

// BenchmarkGridCalls measures the grid of a DAG whose 25 finished runs
// each made 1,000 calls of its callable: the store read, which groups
// each run's 1,000 call instances into one cell, and the whole request.
//
//	go test -run '^$' -bench GridCalls -benchtime 20x ./api/
func BenchmarkGridCalls(b *testing.B) {
	for _, backend := range backends {
		b.Run(backend, func(b *testing.B) { benchGridCalls(b, backend) })
	}
}

func benchGridCalls(b *testing.B, backend string) {
	clk := clock.NewFake(time.Now())
	e := newEnv(b, backend, func(c *Config) { c.Clock = clk })
	ctx := context.Background()
	d := dag.New("calls1000")
	d.Func("a", func(*dag.Context) error { return nil })
	dag.NewCallable(d, "k", func(_ *dag.Context, n int) (int, error) { return n, nil })
	e.reg.Register(d)
	if err := e.store.SyncDAGs(ctx, []store.DAGSpec{store.SpecFromDAG(d)}); err != nil {
		b.Fatal(err)
	}
	for i := range 25 {
		ld := time.Date(2026, 1, 1, i, 0, 0, 0, time.UTC).Format(time.RFC3339)
		e.trigger("calls1000", map[string]any{"dag_run_id": fmt.Sprintf("r%02d", i), "logical_date": ld})
	}
	if _, err := e.store.StartRuns(ctx, "calls1000", time.Now()); err != nil {
		b.Fatal(err)
	}
	g, err := e.store.Grid(ctx, store.GridQuery{DAGID: "calls1000", RunLimit: 25})
	if err != nil || len(g.Runs) != 25 {
		b.Fatalf("runs: %d, %v", len(g.Runs), err)
	}
	for _, r := range g.Runs {
		calls := make([]store.NewCall, 1000)
		for i := range calls {
			arg := fmt.Sprint(i)
			calls[i] = store.NewCall{TaskID: "k", Key: arg, Arguments: []byte(arg)}
		}
		if _, err := e.store.Call(ctx, store.CallBatch{RunID: r.ID, Calls: calls, MaxCalls: 100_000, Now: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	for {
		cs, err := e.store.ClaimTasks(ctx, e.worker, 1000, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		if len(cs) == 0 {
			break
		}
		rs := make([]store.Result, len(cs))
		for i, c := range cs {
			rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: time.Now()}
		}
		if _, err := e.store.FinishTasks(ctx, rs); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("store", func(b *testing.B) {
		for b.Loop() {
			g, err := e.store.Grid(ctx, store.GridQuery{DAGID: "calls1000", RunLimit: 25, AllTasks: true})
			if err != nil || len(g.Runs) != 25 || len(g.Cells) != 50 {
				b.Fatalf("grid: %d runs, %d cells, %v", len(g.Runs), len(g.Cells), err)
			}
			for _, c := range g.Cells {
				if c.TaskID == "k" && (c.Calls != 1000 || c.State != state.Success) {
					b.Fatalf("grid cell of k: %d calls, %s", c.Calls, c.State)
				}
			}
		}
	})
	b.Run("request", func(b *testing.B) {
		client := &http.Client{}
		url := e.srv.URL + "/api/v1/dags/calls1000/grid?limit=25"
		for b.Loop() {
			clk.Advance(2 * gridFresh)
			resp, err := client.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n == 0 {
				b.Fatalf("grid: %d, %d bytes", resp.StatusCode, n)
			}
		}
	})
}
