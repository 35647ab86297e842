package executor

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func TestGatherDeadline(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	for _, tc := range []struct {
		name   string
		heldAt []time.Time
		want   time.Time
		ok     bool
	}{
		{"none running", nil, time.Time{}, false},
		{"launched now", []time.Time{now}, now.Add(gatherWait), true},
		{"the latest counts", []time.Time{ago(gatherWait / 2), ago(gatherWait / 4)}, ago(gatherWait / 4).Add(gatherWait), true},
		{"older ones are left out", []time.Time{ago(time.Hour), ago(gatherWait / 2)}, ago(gatherWait / 2).Add(gatherWait), true},
		{"all launched gatherWait ago or more", []time.Time{ago(gatherWait), ago(time.Minute)}, time.Time{}, false},
	} {
		got, ok := gatherDeadline(tc.heldAt, now)
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("%s: gatherDeadline = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// recordingStore records the number of results of every FinishAndClaim
// call.
type recordingStore struct {
	store.Store
	mu      sync.Mutex
	batches []int
}

func (s *recordingStore) FinishAndClaim(ctx context.Context, rs []store.Result, w store.Worker, max int, now time.Time) ([]store.FinishOutcome, []store.Claimed, error) {
	s.mu.Lock()
	s.batches = append(s.batches, len(rs))
	s.mu.Unlock()
	return s.Store.FinishAndClaim(ctx, rs, w, max, now)
}

func (s *recordingStore) calls() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.batches...)
}

// TestWorkerGathersHeldTries: the results of tries that hold a pool's
// slots and were launched together wait (on the worker's clock, here a
// fake one that does not move) for each other and go in one finish,
// instead of the first to return going alone; once gatherWait has passed
// on that clock, a result no longer waits for the others.
func TestWorkerGathersHeldTries(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			const slots, n, pool = 4, 8, "gather"
			real := openStore(t, be.url(t))
			st := &recordingStore{Store: real}
			if _, err := real.CreatePool(context.Background(), store.PoolSpec{Name: pool, Slots: n}); err != nil {
				t.Fatal(err)
			}
			started := map[string]chan struct{}{}
			release := map[string]chan struct{}{}
			d := dag.New("gather")
			for i := range n {
				id := fmt.Sprintf("t%d", i)
				started[id], release[id] = make(chan struct{}), make(chan struct{})
				s, r := started[id], release[id]
				d.Func(id, func(c *dag.Context) error {
					close(s)
					<-r
					return nil
				}, dag.Pool(pool))
			}
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, real, d)
			t0 := time.Now().UTC().Truncate(time.Millisecond)
			fc := clock.NewFake(t0)
			newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Clock, c.Slots = fc, slots })
			// Before the worker stops (its grace runs on the fake clock).
			released := map[string]bool{}
			free := func(id string) {
				if !released[id] {
					released[id] = true
					close(release[id])
				}
			}
			t.Cleanup(func() {
				for id := range release {
					free(id)
				}
			})
			startRun(t, real, d, "r1", nil)

			// The worker's slots take four tasks; the first to return waits
			// for the gather's timer, the others then join it.
			running := func() []string {
				var ids []string
				for id, tk := range tasksOf(t, real, "gather", "r1") {
					if tk.State == state.Running {
						ids = append(ids, id)
					}
				}
				return ids
			}
			waitCond(t, 30*time.Second, "four tasks running", func() bool { return len(running()) == slots })
			first := running()
			for _, id := range first {
				waitFor(t, started[id], 30*time.Second, "task "+id+" to start")
			}
			free(first[0])
			waitCond(t, 10*time.Second, "the gather's timer", func() bool {
				at, ok := fc.NextDeadline()
				return ok && at.Equal(t0.Add(gatherWait))
			})
			if got := st.calls(); len(got) != 0 {
				t.Fatalf("finish calls %v while the other held tries run, want none (the result waits for them)", got)
			}
			for _, id := range first[1:] {
				free(id)
			}
			waitCond(t, 30*time.Second, "the first finish", func() bool { return len(st.calls()) >= 1 })
			if got := st.calls()[0]; got != slots {
				t.Fatalf("first finish carried %d results, want %d (all the tries launched together)", got, slots)
			}

			// That finish claimed the other four, launched at the same fake
			// time: once gatherWait has passed, the first to return goes
			// alone.
			waitCond(t, 30*time.Second, "the next four tasks running", func() bool {
				ids := running()
				return len(ids) == slots && !slices.Contains(ids, first[0])
			})
			next := running()
			for _, id := range next {
				waitFor(t, started[id], 30*time.Second, "task "+id+" to start")
			}
			free(next[0])
			waitCond(t, 10*time.Second, "the gather's timer", func() bool {
				at, ok := fc.NextDeadline()
				return ok && at.Equal(t0.Add(gatherWait))
			})
			fc.Advance(gatherWait)
			waitCond(t, 30*time.Second, "the second finish", func() bool { return len(st.calls()) >= 2 })
			if got := st.calls()[1]; got != 1 {
				t.Fatalf("second finish carried %d results, want 1 (gatherWait passed)", got)
			}
			for _, id := range next[1:] {
				free(id)
			}
			if run := waitRun(t, real, "gather", "r1", 30*time.Second); run.State != state.RunSuccess {
				t.Fatalf("run = %s, want success", run.State)
			}
		})
	}
}
