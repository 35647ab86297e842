package postgres

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// callKeyIndex is the unique index of call instances by run, callable
// and key.
const callKeyIndex = "task_instances_run_id_task_id_call_key_key"

// TestCallPlans runs the calls' path (new calls, calls finding existing
// ones with a cycle check, a cycle refused, a call from outside, a
// deferral on calls, the callee's finish waking its caller, the results
// read) and checks the generic plan of every statement it sent, as
// TestHotPlans does, and besides that every probe of a call instance by
// its key binds the key: a plan binding only the run reads all the run's
// instances (seen: 10 ms per call batch at 16,000 instances).
func TestCallPlans(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{seen: map[string]bool{}}
	s := tracedStore(t, &stmtTracer{stmt: rec.add})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sp := store.DAGSpec{DAGID: "calls", Fingerprint: "c1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
		{TaskID: "f", Kind: dag.KindCallable, TriggerRule: dag.AllSuccess},
		{TaskID: "g", Kind: dag.KindCallable, TriggerRule: dag.AllSuccess}}}
	must(s.SyncDAGs(ctx, []store.DAGSpec{sp}))
	run, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "calls", RunID: "r", RunType: store.RunManual,
		LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0, Fingerprint: "c1", QueuedAt: t0})
	must(err)
	_, err = s.StartRuns(ctx, "calls", t0)
	must(err)
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	claim := func(n int) map[string]store.Try {
		t.Helper()
		cs, err := s.ClaimTasks(ctx, w, 10, t0)
		must(err)
		if len(cs) != n {
			t.Fatalf("claimed %d, want %d", len(cs), n)
		}
		out := map[string]store.Try{}
		for _, c := range cs {
			tis, err := s.TaskInstancesByID(ctx, []int64{c.ID})
			must(err)
			key := c.TaskID
			if len(tis) == 1 && tis[0].Arguments != nil {
				key = dag.CallLabel(c.TaskID, tis[0].Arguments)
			}
			out[key] = store.Try{ID: c.ID, TryNumber: c.TryNumber}
		}
		return out
	}
	call := func(task, args string) store.NewCall {
		return store.NewCall{TaskID: task, Key: args, Arguments: json.RawMessage(args)}
	}
	batch := func(caller store.Try, calls ...store.NewCall) store.CallBatch {
		return store.CallBatch{Caller: caller, Calls: calls, MaxCalls: 100, Now: t0}
	}
	rec.on.Store(true)
	a := claim(1)["a"]
	_, err = s.Call(ctx, batch(a, call("f", "1"), call("f", "2")))
	must(err)
	fs := claim(2)
	f1, f2 := fs["f(1)"], fs["f(2)"]
	// f(1) creates g(1); f(2) finds f(1) unfinished: checked for a cycle.
	answers, err := s.CallMany(ctx, []store.CallBatch{batch(f1, call("g", "1")), batch(f2, call("f", "1"))})
	must(err)
	for i, an := range answers {
		if an.Err != nil || len(an.States) != 1 || an.States[0].Refused != "" {
			t.Fatalf("batch %d: %+v", i, an)
		}
	}
	g1 := claim(1)["g(1)"]
	// g(1) → f(1) → g(1): refused, the cycle named.
	st, err := s.Call(ctx, batch(g1, call("f", "1")))
	must(err)
	if !st[0].Cycle {
		t.Fatalf("g(1) calling f(1): %+v, want a cycle", st[0])
	}
	// From outside, into the run.
	_, err = s.Call(ctx, store.CallBatch{RunID: run.ID, Calls: []store.NewCall{call("g", "2")}, MaxCalls: 100, Now: t0})
	must(err)
	// f(1) waits on g(1), whose finish queues it again.
	_, err = s.FinishTasks(ctx, []store.Result{{Try: f1, State: state.Deferred, EndedAt: t0,
		Deferral: store.Deferral{Calls: true}}})
	must(err)
	_, err = s.FinishTasks(ctx, []store.Result{{Try: g1, State: state.Success, StartedAt: t0, EndedAt: t0,
		Output: json.RawMessage(`1`)}})
	must(err)
	_, err = s.CallResults(ctx, []int64{g1.ID, f1.ID})
	must(err)
	_, err = s.Callees(ctx, f1.ID)
	must(err)
	rec.on.Store(false)

	probes := 0
	checked := checkGenericPlans(t, rec.sqls, func(plan []string) []string {
		var bad []string
		for i, l := range plan {
			if !strings.Contains(l, " using "+callKeyIndex+" ") {
				continue
			}
			probes++
			cond := ""
			if i+1 < len(plan) {
				cond = plan[i+1]
			}
			if !strings.Contains(cond, "Index Cond:") || !strings.Contains(cond, "call_key =") {
				bad = append(bad, strings.TrimSpace(l)+" without the key bound: "+strings.TrimSpace(cond))
			}
		}
		return bad
	})
	if checked < 10 || probes < 2 {
		t.Errorf("checked the plans of %d statements with %d probes by key; the workload should send at least 10 and 2",
			checked, probes)
	}
	t.Logf("checked %d statements of the calls' path, %d probes by key", checked, probes)
}
