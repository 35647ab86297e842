package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// chainSpec is a DAG of n tasks in a line.
func chainSpec(id string, n int) store.DAGSpec {
	sp := store.DAGSpec{DAGID: id, Fingerprint: fmt.Sprintf("%s-%d", id, n), MaxActiveRuns: 10}
	for i := range n {
		ts := store.TaskSpec{TaskID: fmt.Sprintf("t%05d", i), Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second}
		if i > 0 {
			ts.Upstream = []string{fmt.Sprintf("t%05d", i-1)}
		}
		sp.Tasks = append(sp.Tasks, ts)
	}
	return sp
}

// benchChainStep walks a chain of b.N tasks the way one worker does: take
// the ready task, finish it with a log line in Result.Log (which releases
// the next). With claimInFinish the finish claims the next task in the
// same transaction (FinishAndClaim, what the executor does); otherwise
// each step is a ClaimTasks and a FinishTasks. One op is one edge of the
// chain as the store sees it: ns/op is the store's share of the end →
// next start latency with no contention.
func benchChainStep(b *testing.B, claimInFinish bool) {
	s := benchStore(b)
	ctx := context.Background()
	sp := chainSpec("chain", b.N)
	startOneRun(b, s, sp)
	wk := store.Worker{ID: "w", Hostname: "bench", PID: 1}
	line := []byte("task ran\n")
	b.ResetTimer()
	var cs []store.Claimed
	for i := 0; i < b.N; i++ {
		if !claimInFinish || i == 0 {
			var err error
			if cs, err = s.ClaimTasks(ctx, wk, 4, bt0); err != nil {
				b.Fatal(err)
			}
		}
		if len(cs) != 1 {
			b.Fatalf("step %d: claimed %d; want 1", i, len(cs))
		}
		a := store.Try{ID: cs[0].ID, TryNumber: cs[0].TryNumber}
		r := store.Result{Try: a, State: state.Success, EndedAt: bt0, Log: line}
		var (
			out []store.FinishOutcome
			err error
		)
		if claimInFinish {
			out, cs, err = s.FinishAndClaim(ctx, []store.Result{r}, wk, 4, bt0)
		} else {
			out, err = s.FinishTasks(ctx, []store.Result{r})
		}
		if err != nil || !out[0].Applied {
			b.Fatalf("step %d: finish: %v %+v", i, err, out)
		}
	}
	b.StopTimer()
	run, err := s.GetRun(ctx, sp.DAGID, "r")
	if err != nil || run.State != state.RunSuccess {
		b.Fatalf("run after the chain: %+v, %v; want success", run, err)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/edge")
}

// BenchmarkChainStep: the store's part of the Func chain latency (target
// for the whole edge: p50 ≤ 2 ms), with the next task claimed by the
// finish (claim=finish) or by a claim of its own (claim=separate).
func BenchmarkChainStep(b *testing.B) {
	b.Run("claim=finish", func(b *testing.B) { benchChainStep(b, true) })
	b.Run("claim=separate", func(b *testing.B) { benchChainStep(b, false) })
}
