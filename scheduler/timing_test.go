package scheduler

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// timingStore wraps a store and measures the calls on the scheduler's fire
// path, so that benchmarks can say where the time goes.
type timingStore struct {
	store.Store
	mu  sync.Mutex
	sum map[string]time.Duration
	n   map[string]int
}

func (t *timingStore) record(op string, start time.Time) {
	d := time.Since(start)
	t.mu.Lock()
	if t.sum == nil {
		t.sum, t.n = map[string]time.Duration{}, map[string]int{}
	}
	t.sum[op] += d
	t.n[op]++
	t.mu.Unlock()
}

// report logs the count and mean duration of each measured call.
func (t *timingStore) report(b *testing.B) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ops := make([]string, 0, len(t.n))
	for op := range t.n {
		ops = append(ops, op)
	}
	slices.Sort(ops)
	for _, op := range ops {
		b.Logf("  %-15s %6d calls, mean %s", op, t.n[op], (t.sum[op] / time.Duration(t.n[op])).Round(10*time.Microsecond))
	}
}

func (t *timingStore) GetDAG(ctx context.Context, id string) (store.DAG, error) {
	defer t.record("GetDAG", time.Now())
	return t.Store.GetDAG(ctx, id)
}

func (t *timingStore) CreateRun(ctx context.Context, r store.NewRun) (store.Run, bool, error) {
	defer t.record("CreateRun", time.Now())
	return t.Store.CreateRun(ctx, r)
}

func (t *timingStore) StartRuns(ctx context.Context, id string, now time.Time) ([]store.Run, error) {
	defer t.record("StartRuns", time.Now())
	return t.Store.StartRuns(ctx, id, now)
}

func (t *timingStore) FireRuns(ctx context.Context, fires []store.Fire, now time.Time) ([]store.FireResult, error) {
	defer t.record("FireRuns", time.Now())
	return t.Store.FireRuns(ctx, fires, now)
}
