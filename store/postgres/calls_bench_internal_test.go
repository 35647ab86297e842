package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// BenchmarkCallNew records, per op, one Call of two new calls by a call
// instance (fib_nodedup's step): ns/op is the call transaction's latency
// with no contention, round_trips/op what it costs under load.
func BenchmarkCallNew(b *testing.B) {
	ctx := context.Background()
	var trips atomic.Int64
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sp := store.DAGSpec{DAGID: "calls", Fingerprint: "c1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
		{TaskID: "f", Kind: dag.KindCallable, TriggerRule: dag.AllSuccess}}}
	s := tracedRun(b, &stmtTracer{trip: func() { trips.Add(1) }}, sp, t0)
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	claim := func() store.Claimed {
		cs, err := s.ClaimTasks(ctx, w, 1, t0)
		if err != nil || len(cs) != 1 {
			b.Fatalf("claim: %v, %d claimed", err, len(cs))
		}
		return cs[0]
	}
	root := claim()
	st, err := s.Call(ctx, store.CallBatch{Caller: store.Try{ID: root.ID, TryNumber: root.TryNumber},
		Calls: []store.NewCall{{TaskID: "f", Key: "0", Arguments: json.RawMessage(`0`)}}, MaxCalls: 1 << 30, Now: t0})
	if err != nil || st[0].State != state.Queued {
		b.Fatalf("Call: %v %+v", err, st)
	}
	caller := claim() // the call instance f(0)
	try := store.Try{ID: caller.ID, TryNumber: caller.TryNumber}
	n := 0
	b.ResetTimer()
	before := trips.Load()
	for b.Loop() {
		calls := make([]store.NewCall, 2)
		for i := range calls {
			n++
			calls[i] = store.NewCall{TaskID: "f", Key: fmt.Sprintf("~%d", n), Arguments: json.RawMessage(fmt.Sprint(n))}
		}
		st, err := s.Call(ctx, store.CallBatch{Caller: try, Calls: calls, MaxCalls: 1 << 30, Now: t0})
		if err != nil || len(st) != 2 || st[1].ID == 0 || st[1].State != state.Queued {
			b.Fatalf("Call: %v %+v", err, st)
		}
	}
	b.ReportMetric(float64(trips.Load()-before)/float64(b.N), "round_trips/op")
}
