package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
)

var bt0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// layeredSpec is a DAG of depth layers of width tasks; each task below the
// first layer waits for two tasks of the layer above (a join), so every
// finish releases downstream work.
func layeredSpec(id string, width, depth int) store.DAGSpec {
	sp := store.DAGSpec{DAGID: id, Fingerprint: fmt.Sprintf("%s-%dx%d", id, width, depth), MaxActiveRuns: 1000}
	name := func(l, i int) string { return fmt.Sprintf("l%03d_t%04d", l, i) }
	for l := range depth {
		for i := range width {
			ts := store.TaskSpec{TaskID: name(l, i), Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second}
			if l > 0 {
				ts.Upstream = []string{name(l-1, i), name(l-1, (i+1)%width)}
			}
			sp.Tasks = append(sp.Tasks, ts)
		}
	}
	return sp
}

func benchStore(b *testing.B) *postgres.Store {
	return open(b)
}

// startOneRun records sp and starts one manual run "r" of it at bt0.
func startOneRun(b *testing.B, s *postgres.Store, sp store.DAGSpec) {
	ctx := context.Background()
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		b.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: sp.DAGID, RunID: "r", RunType: store.RunManual,
		LogicalDate: bt0, IntervalStart: bt0, IntervalEnd: bt0, Fingerprint: sp.Fingerprint, QueuedAt: bt0}); err != nil {
		b.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, sp.DAGID, bt0); err != nil {
		b.Fatal(err)
	}
}

func benchCreateRun(b *testing.B, width, depth int) {
	s := benchStore(b)
	ctx := context.Background()
	sp := layeredSpec("create", width, depth)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		ld := bt0.Add(time.Duration(i) * time.Hour)
		_, created, err := s.CreateRun(ctx, store.NewRun{DAGID: sp.DAGID, RunID: fmt.Sprintf("r%d", i), RunType: store.RunManual,
			LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld, Fingerprint: sp.Fingerprint, QueuedAt: ld})
		if err != nil || !created {
			b.Fatalf("CreateRun: %v (created %v)", err, created)
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/run")
	b.ReportMetric(float64(width*depth), "tasks/run")
}

// BenchmarkCreateRun10k creates runs of a 10,000-task DAG (target ≤ 300 ms).
func BenchmarkCreateRun10k(b *testing.B) { benchCreateRun(b, 100, 100) }

// BenchmarkCreateRun100k creates runs of a 100,000-task DAG (target ≤ 3 s).
func BenchmarkCreateRun100k(b *testing.B) { benchCreateRun(b, 500, 200) }

// benchClaimFinish runs b.N task instances through claim and finish (with
// downstream release and run settlement), workers goroutines each
// claiming batch instances at a time. With combined, a worker claims its
// next batch in the transaction that finishes the last (FinishAndClaim,
// as the executor does); otherwise it calls ClaimTasks and FinishTasks.
func benchClaimFinish(b *testing.B, workers, batch int, combined bool) {
	s := benchStore(b)
	ctx := context.Background()
	const width, depth = 1000, 10 // 10,000 tasks per run
	sp := layeredSpec("cf", width, depth)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		b.Fatal(err)
	}
	runs := (b.N + width*depth - 1) / (width * depth)
	for i := range runs {
		ld := bt0.Add(time.Duration(i) * time.Hour)
		if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: sp.DAGID, RunID: fmt.Sprintf("r%d", i), RunType: store.RunManual,
			LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld, Fingerprint: sp.Fingerprint, QueuedAt: ld}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.StartRuns(ctx, sp.DAGID, bt0); err != nil {
		b.Fatal(err)
	}
	var (
		done     atomic.Int64
		failed   atomic.Bool
		mu       sync.Mutex
		finished = sync.NewCond(&mu)
		gen      int // finishes so far
		inflight int // workers holding claimed instances
	)
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			wk := store.Worker{ID: fmt.Sprintf("w%d", w), Hostname: "bench", PID: w}
			var held []store.Claimed // claimed by the last finish
			for done.Load() < int64(b.N) && !failed.Load() {
				mu.Lock()
				seen := gen
				inflight++
				mu.Unlock()
				cs, err := held, error(nil)
				if len(cs) == 0 {
					cs, err = s.ClaimTasks(ctx, wk, batch, bt0)
				}
				held = nil
				if err == nil && len(cs) > 0 {
					rs := make([]store.Result, len(cs))
					for i, c := range cs {
						rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: bt0}
					}
					if combined {
						_, held, err = s.FinishAndClaim(ctx, rs, wk, batch, bt0)
					} else {
						_, err = s.FinishTasks(ctx, rs)
					}
					done.Add(int64(len(cs)))
				}
				mu.Lock()
				if len(held) == 0 {
					inflight--
				}
				if len(cs) > 0 {
					gen++
				}
				finished.Broadcast()
				if err != nil {
					b.Error(err)
					failed.Store(true)
				}
				// Nothing ready: wait for another worker's finish to release
				// more, unless no other worker holds any.
				for len(cs) == 0 && err == nil && gen == seen && inflight > 0 {
					finished.Wait()
				}
				stuck := len(cs) == 0 && gen == seen && inflight == 0
				if len(held) > 0 {
					inflight-- // counted again at the top of the loop
				}
				mu.Unlock()
				if stuck {
					if done.Load() < int64(b.N) {
						b.Errorf("nothing left to claim after %d of %d instances", done.Load(), b.N)
						failed.Store(true)
					}
					return
				}
			}
			if len(held) > 0 {
				// b.N reached with tries claimed: give them back.
				as := make([]store.Try, len(held))
				for i, c := range held {
					as[i] = store.Try{ID: c.ID, TryNumber: c.TryNumber}
				}
				if err := s.RequeueTries(ctx, as); err != nil {
					b.Error(err)
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(done.Load())/b.Elapsed().Seconds(), "tasks/s")
}

// BenchmarkClaimFinish: claim + finish with downstream release, in
// batches (target ≥ 20,000 task instances/s), with the claim in the
// finishing transaction (claim=finish, what workers do) or apart; batch=16
// is a worker's default slots, the size of claims in the bench's wide
// scenario (B/op and allocs/op: the client's share of a task).
func BenchmarkClaimFinish(b *testing.B) {
	for _, c := range []struct {
		workers, batch int
		combined       bool
	}{{1, 1000, true}, {2, 1000, true}, {2, 2000, true}, {2, 1000, false}, {1, 16, false}} {
		mode := "separate"
		if c.combined {
			mode = "finish"
		}
		b.Run(fmt.Sprintf("workers=%d/batch=%d/claim=%s", c.workers, c.batch, mode), func(b *testing.B) {
			benchClaimFinish(b, c.workers, c.batch, c.combined)
		})
	}
}
