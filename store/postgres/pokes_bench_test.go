package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/cputime"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// BenchmarkClaimPokesAfter claims the pokes of 2,500 deferred Sensors
// over and over as a poke loop does, each claim sending the last batch's
// "not yet" (due again at once). b.N counts pokes; cpu-ns/op is this
// process's CPU per poke (PostgreSQL's not counted: another process).
func BenchmarkClaimPokesAfter(b *testing.B) {
	const n = 2500
	s := benchStore(b)
	ctx := context.Background()
	sp := store.DAGSpec{DAGID: "pokes", Fingerprint: "pokes", MaxActiveRuns: 1}
	for i := range n {
		sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: fmt.Sprintf("s%04d", i), Kind: dag.KindSensor, TriggerRule: dag.AllSuccess})
	}
	startOneRun(b, s, sp)
	w := store.Worker{ID: "poker", Hostname: "bench", PID: 1}
	if err := s.RegisterWorker(ctx, w); err != nil {
		b.Fatal(err)
	}
	claimed, err := s.ClaimTasks(ctx, w, n, time.Now())
	if err != nil || len(claimed) != n {
		b.Fatalf("claimed %d sensors, %v; want %d", len(claimed), err, n)
	}
	results := make([]store.Result, n)
	for i, c := range claimed {
		results[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Deferred, EndedAt: time.Now(),
			Deferral: store.Deferral{Poke: true, NextCheckAt: time.Now(), TriggerTimeout: time.Now().Add(time.Hour)}}
	}
	if _, err := s.FinishTasks(ctx, results); err != nil {
		b.Fatal(err)
	}
	notYet := make([]store.PokeResult, 0, n)
	b.ReportAllocs()
	cpu := cputime.Start(b)
	b.ResetTimer()
	for done := 0; done < b.N; done += n {
		now := time.Now()
		pokes, _, outs, err := s.ClaimPokesAfter(ctx, w, notYet, n, now, now.Add(time.Minute))
		if err != nil || len(pokes) != n || len(outs) != len(notYet) {
			b.Fatalf("claimed %d pokes (%d outcomes), %v; want %d", len(pokes), len(outs), err, n)
		}
		for _, o := range outs {
			if !o.Applied {
				b.Fatalf("not yet not applied: %+v", o)
			}
		}
		notYet = notYet[:0]
		for _, p := range pokes {
			notYet = append(notYet, store.PokeResult{Try: p.Try, Lease: p.Lease, Result: store.Result{Try: p.Try, State: state.Deferred,
				Deferral: store.Deferral{Poke: true, NextCheckAt: now}}})
		}
	}
	cpu.Report()
}
