package sqlite_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/sqlite"
)

// benchStore opens a migrated store on a fresh file.
func benchStore(b *testing.B) *sqlite.Store {
	b.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"),
		sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if err := s.Migrate(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s
}

// fanSpec is root → width tasks → join: finishing the root releases the
// width tasks, finishing those counts down the join.
func fanSpec(id string, width int) store.DAGSpec {
	sp := store.DAGSpec{DAGID: id, Fingerprint: fmt.Sprintf("fan-%d", width), MaxActiveRuns: 1 << 20}
	sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: "root", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess})
	mids := make([]string, width)
	for i := range mids {
		mids[i] = fmt.Sprintf("t%05d", i)
		sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: mids[i], Kind: dag.KindFunc,
			TriggerRule: dag.AllSuccess, Upstream: []string{"root"}})
	}
	sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: "join", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, Upstream: mids})
	return sp
}

// BenchmarkClaimFinish claims and finishes task instances in batches of
// 64 through fan-shaped runs of 1,000 tasks (root → 998 → join), so every
// finish also releases downstream instances and the last one settles the
// run. Reports task instances per second (claim + finish).
func BenchmarkClaimFinish(b *testing.B) {
	for _, batch := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			s := benchStore(b)
			const width = 998
			sp := fanSpec("fan", width)
			if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
				b.Fatal(err)
			}
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			w := store.Worker{ID: "bench", Hostname: "h", PID: 1}
			runs := 0
			newRun := func() {
				startBenchRun(b, s, sp, t0, runs)
				runs++
			}
			b.ResetTimer()
			done := 0
			for done < b.N {
				cs, err := s.ClaimTasks(ctx, w, min(batch, b.N-done), t0)
				if err != nil {
					b.Fatal(err)
				}
				if len(cs) == 0 {
					b.StopTimer()
					newRun()
					b.StartTimer()
					continue
				}
				rs := make([]store.Result, len(cs))
				for i, c := range cs {
					rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0}
				}
				out, err := s.FinishTasks(ctx, rs)
				if err != nil {
					b.Fatal(err)
				}
				for _, o := range out {
					if !o.Applied {
						b.Fatalf("finish not applied: %+v", o)
					}
				}
				done += len(cs)
			}
			b.ReportMetric(float64(done)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// startBenchRun creates run "r<n>" of sp, n hours after t0, and starts it
// (its root queued); it returns the run's logical date.
func startBenchRun(b *testing.B, s *sqlite.Store, sp store.DAGSpec, t0 time.Time, n int) time.Time {
	b.Helper()
	ctx := context.Background()
	ld := t0.Add(time.Duration(n) * time.Hour)
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: sp.DAGID, RunID: fmt.Sprintf("r%d", n),
		RunType: store.RunManual, LogicalDate: ld, Fingerprint: sp.Fingerprint}); err != nil {
		b.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, sp.DAGID, ld); err != nil {
		b.Fatal(err)
	}
	return ld
}

// BenchmarkCreateRun creates (and starts) runs of fan DAGs of 10,000 and
// 100,000 tasks; one op is one run.
func BenchmarkCreateRun(b *testing.B) {
	for _, width := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("tasks=%d", width+2), func(b *testing.B) {
			ctx := context.Background()
			s := benchStore(b)
			sp := fanSpec("big", width)
			if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
				b.Fatal(err)
			}
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			b.ResetTimer()
			for i := range b.N {
				ld := t0.Add(time.Duration(i) * time.Hour)
				if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: sp.DAGID, RunID: fmt.Sprintf("r%d", i),
					RunType: store.RunManual, LogicalDate: ld, Fingerprint: sp.Fingerprint}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReleaseWide finishes the root of a fan of 10,000 tasks: one
// transaction releases all of them. One op is one root finish.
func BenchmarkReleaseWide(b *testing.B) {
	ctx := context.Background()
	s := benchStore(b)
	sp := fanSpec("wide", 10_000)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := store.Worker{ID: "bench"}
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		ld := startBenchRun(b, s, sp, t0, i)
		cs, err := s.ClaimTasks(ctx, w, 1, ld)
		if err != nil || len(cs) != 1 {
			b.Fatal(err, cs)
		}
		b.StartTimer()
		if _, err := s.FinishTasks(ctx, []store.Result{{Try: store.Try{ID: cs[0].ID, TryNumber: 1},
			State: state.Success, EndedAt: ld}}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		// Leave nothing queued for the next round.
		if _, err := s.SetRunState(ctx, sp.DAGID, fmt.Sprintf("r%d", i), state.RunFailed, ld); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkWideFinishAndClaim replays what one worker of the wide
// benchmark asks of the store: runs of root → 10,000 tasks → join,
// finished in batches of batch results (each with a short log, as a Func
// task's try sends) by FinishAndClaim, which claims as many again in the
// same transaction. One op is one task instance claimed and finished;
// cpu-µs/task is the process's CPU per op (the run creations and the
// claims that begin each run left out), which the machine's load moves
// less than the wall clock.
func BenchmarkWideFinishAndClaim(b *testing.B) {
	for _, batch := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			s := benchStore(b)
			sp := fanSpec("wide", 10_000)
			if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
				b.Fatal(err)
			}
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			w := store.Worker{ID: "bench", Hostname: "h", PID: 1}
			log := []byte("2026-01-01T00:00:00Z INFO task done dag=bench_wide task=t00001\n")
			runs := 0
			var held []store.Claimed
			var cpu, setupCPU time.Duration
			b.ResetTimer()
			cpu0 := cpuTime()
			for done := 0; done < b.N; {
				if len(held) == 0 {
					b.StopTimer()
					c0 := cpuTime()
					cs, err := s.ClaimTasks(ctx, w, batch, t0)
					if err != nil {
						b.Fatal(err)
					}
					if len(cs) == 0 {
						startBenchRun(b, s, sp, t0, runs)
						runs++
					}
					held = cs
					setupCPU += cpuTime() - c0
					b.StartTimer()
					continue
				}
				rs := make([]store.Result, len(held))
				for i, c := range held {
					rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success,
						StartedAt: t0, EndedAt: t0, Log: log}
				}
				out, cs, err := s.FinishAndClaim(ctx, rs, w, batch, t0)
				if err != nil {
					b.Fatal(err)
				}
				for _, o := range out {
					if !o.Applied {
						b.Fatalf("finish not applied: %+v", o)
					}
				}
				done += len(rs)
				held = cs
			}
			cpu = cpuTime() - cpu0 - setupCPU
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/task")
		})
	}
}
