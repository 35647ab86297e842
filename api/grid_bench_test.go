package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
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
			rs[i] = store.Result{Attempt: store.Attempt{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: time.Now()}
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
