package scheduler

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestDeferredSurviveRestart: 1,000 instances deferred (half on a time,
// half on an event) survive closing every store handle; after the
// restart two schedulers' sweeps at the due time queue each timed one
// exactly once between them, the event queues the others, and every one
// is claimed again on its first try, resumed.
func TestDeferredSurviveRestart(t *testing.T) {
	for _, b := range []struct {
		name string
		url  func(t testing.TB) string
		open func(t testing.TB, u string) store.Store
	}{
		{"sqlite", func(t testing.TB) string { return testdb.SQLite(t) },
			func(t testing.TB, u string) store.Store { return openSQLiteURL(t, u, clock.Real{}) }},
		{"postgres", func(t testing.TB) string { return testdb.Postgres(t) },
			func(t testing.TB, u string) store.Store { return openPostgresURL(t, u, clock.Real{}, 0) }},
	} {
		t.Run(b.name, func(t *testing.T) {
			const n = 1000
			ctx := context.Background()
			u := b.url(t)
			d := dag.New("waits")
			for i := range n {
				d.Func(fmt.Sprintf("t%04d", i), func(*dag.Context) error { return nil })
			}
			sp := store.SpecFromDAG(d)
			t0 := time.Now().UTC().Truncate(time.Second)
			due := t0.Add(time.Minute)

			st := b.open(t, u)
			if err := st.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := st.CreateRun(ctx, store.NewRun{DAGID: "waits", RunID: "r", RunType: store.RunManual,
				LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0, Fingerprint: sp.Fingerprint, QueuedAt: t0}); err != nil {
				t.Fatal(err)
			}
			if _, err := st.StartRuns(ctx, "waits", t0); err != nil {
				t.Fatal(err)
			}
			w := store.Worker{ID: "w", Hostname: "h", PID: 1, Slots: n, StartedAt: t0, HeartbeatAt: t0}
			deferred := 0
			for deferred < n {
				cs, err := st.ClaimTasks(ctx, w, 250, t0)
				if err != nil || len(cs) == 0 {
					t.Fatalf("claimed %d after %d: %v", len(cs), deferred, err)
				}
				rs := make([]store.Result, len(cs))
				for i, c := range cs {
					d := store.Deferral{NextCheckAt: due}
					if (deferred+i)%2 == 1 {
						d = store.Deferral{Event: "go"}
					}
					rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Deferred, EndedAt: t0, Deferral: d}
				}
				if _, err := st.FinishTasks(ctx, rs); err != nil {
					t.Fatal(err)
				}
				deferred += len(cs)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}

			// Restarted: two schedulers, each with its own store handle.
			s1, s2 := b.open(t, u), b.open(t, u)
			if _, total, err := s1.ListTaskInstances(ctx, store.TaskQuery{States: []state.TaskState{state.Deferred}, Limit: 1}); err != nil || total != n {
				t.Fatalf("deferred after the restart: %d, %v; want %d", total, err, n)
			}
			if n, err := s1.RequeueRetries(ctx, due.Add(-time.Second)); err != nil || n != 0 {
				t.Fatalf("sweep before due: %d, %v", n, err)
			}
			var wg sync.WaitGroup
			got := make([]int, 2)
			for i, s := range []store.Store{s1, s2} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					k, err := s.RequeueRetries(ctx, due)
					if err != nil {
						t.Errorf("sweep: %v", err)
					}
					got[i] = k
				}()
			}
			wg.Wait()
			if got[0]+got[1] != n/2 {
				t.Errorf("the two sweeps queued %v, want %d between them", got, n/2)
			}
			res, err := s2.RecordEvent(ctx, store.NewEvent{Key: "go"})
			if err != nil || res.Continued != n/2 {
				t.Fatalf("event continued %d, %v; want %d", res.Continued, err, n/2)
			}
			claimed := map[int64]bool{}
			for {
				cs, err := s1.ClaimTasks(ctx, w, 300, due)
				if err != nil {
					t.Fatal(err)
				}
				if len(cs) == 0 {
					break
				}
				for _, c := range cs {
					if claimed[c.ID] || c.TryNumber != 1 || !c.Resumed {
						t.Fatalf("claim %+v: twice, or not try 1 resumed", c.TaskInstance)
					}
					claimed[c.ID] = true
				}
			}
			if len(claimed) != n {
				t.Errorf("claimed %d resumed instances, want %d", len(claimed), n)
			}
		})
	}
}
