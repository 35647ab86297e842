package scheduler

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// batchRecorder passes FireRuns through and records the size of each call.
type batchRecorder struct {
	store.Store
	mu    sync.Mutex
	sizes []int
}

func (r *batchRecorder) FireRuns(ctx context.Context, fires []store.Fire, now time.Time) ([]store.FireResult, error) {
	r.mu.Lock()
	r.sizes = append(r.sizes, len(fires))
	r.mu.Unlock()
	return r.Store.FireRuns(ctx, fires, now)
}

func (r *batchRecorder) calls() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sizes)
}

// TestFireBatchesDueDAGs: DAGs falling due at the same instant are fired
// in store calls of at most FireBatchSize DAGs, each DAG once.
func TestFireBatchesDueDAGs(t *testing.T) {
	const n = 7
	start := ts("2026-01-01T00:00:00Z")
	dags := func() []*dag.DAG {
		var out []*dag.DAG
		for i := range n {
			out = append(out, shellDAG(fmt.Sprintf("b%d", i), "@every 1m", start))
		}
		return out
	}
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("batched", func(t *testing.T) {
			clk := clock.NewFake(start.Add(30 * time.Second))
			rec := &batchRecorder{Store: b.open(t, clk)}
			h := newHarnessOn(t, clk, rec, Config{FireBatchSize: 3, FireConcurrency: 1}, dags()...)
			h.start()
			for round := 1; round <= 2; round++ {
				due := start.Add(time.Duration(round) * time.Minute)
				h.waitArmed(due)
				h.clk.Set(due)
				for i := range n {
					if res := h.waitFired(fmt.Sprintf("b%d", i)); res.err != nil || !res.next.Equal(due.Add(time.Minute)) {
						t.Fatalf("round %d: fire of b%d: next %s, err %v", round, i, res.next, res.err)
					}
				}
				if got, want := rec.calls(), slices.Repeat([]int{3, 3, 1}, round); !slices.Equal(got, want) {
					t.Fatalf("round %d: FireRuns calls of %v DAGs, want %v", round, got, want)
				}
				for i := range n {
					want := []string{RunID(store.RunScheduled, start)}
					if round == 2 {
						want = append(want, RunID(store.RunScheduled, start.Add(time.Minute)))
					}
					h.wantRuns(fmt.Sprintf("b%d", i), want...)
				}
			}
		})
	})
}
