package storetest

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// callKeysSpec: a static task "a", callable "byargs" under
// ConcurrencyByArguments(1) and "bykeys" under ConcurrencyByKeys(1,
// "user"), as SpecFromDAG records them.
func callKeysSpec(dagID string) store.DAGSpec {
	d := dag.New(dagID)
	d.Func("a", func(*dag.Context) error { return nil })
	fn := func(*dag.Context, json.RawMessage) (int, error) { return 0, nil }
	dag.NewCallable(d, "byargs", fn, dag.ConcurrencyByArguments(1), dag.NoDedup())
	dag.NewCallable(d, "bykeys", fn, dag.ConcurrencyByKeys(1, "user"), dag.NoDedup())
	return store.SpecFromDAG(d)
}

// keyedCall is a call with its own key (no deduplication) and arguments.
func keyedCall(task, key, args string) store.NewCall {
	return store.NewCall{TaskID: task, Key: key, Arguments: []byte(args)}
}

// testCallConcurrency: calls with the same arguments under
// ConcurrencyByArguments(1), and with the same key fields under
// ConcurrencyByKeys(1, "user"), never run at once, across runs, while
// calls with other arguments or key values do; a call whose arguments
// lack the field or are not an object is refused saying why.
func testCallConcurrency(t *testing.T, e *env) {
	sp := callKeysSpec("ck")
	e.sync(sp)
	e.newRun(sp, "r1", t0)
	e.newRun(sp, "r2", t0.Add(time.Hour))
	if runs := e.start("ck"); len(runs) != 2 {
		t.Fatalf("started %d runs, want 2", len(runs))
	}
	callers := e.claim(2)
	if len(callers) != 2 || callers[0].TaskID != "a" || callers[1].TaskID != "a" {
		t.Fatalf("claimed %v, want the two a", taskIDs(callers))
	}
	for i, c := range callers {
		p := string(rune('a' + i))
		cs := e.call(c, 100,
			keyedCall("byargs", p+"1", `{"x":1}`), keyedCall("byargs", p+"2", `{"x":1}`),
			keyedCall("byargs", p+"3", `{"x":2}`),
			keyedCall("bykeys", p+"1", `{"user":"u","n":1}`), keyedCall("bykeys", p+"2", `{"n":2,"user":"u"}`),
			keyedCall("bykeys", p+"3", `{"user":"v","n":1}`),
			keyedCall("bykeys", p+"4", `{"n":1}`), keyedCall("bykeys", p+"5", `[1]`))
		for j, s := range cs[:6] {
			if s.Refused != "" || s.State != state.Queued {
				t.Fatalf("call %d: %+v, want queued", j, s)
			}
		}
		if !strings.Contains(cs[6].Refused, `concurrency key: the arguments have no field "user"`) {
			t.Errorf("call without the key field: refused %q, want it to name the field", cs[6].Refused)
		}
		if !strings.Contains(cs[7].Refused, "concurrency key: the arguments [1] are not a JSON object") {
			t.Errorf("call with an array: refused %q, want it to say it is not an object", cs[7].Refused)
		}
	}
	keyOf := map[string]string{
		`byargs:{"x":1}`:            `call:ck.byargs:{"x":1}`,
		`byargs:{"x":2}`:            `call:ck.byargs:{"x":2}`,
		`bykeys:{"n":1,"user":"u"}`: `call:ck.bykeys:{"user":"u"}`,
		`bykeys:{"n":2,"user":"u"}`: `call:ck.bykeys:{"user":"u"}`,
		`bykeys:{"n":1,"user":"v"}`: `call:ck.bykeys:{"user":"v"}`,
	}
	// 12 call instances under 4 keys of limit 1: each claim takes one per
	// key with none running, whatever the run.
	running := map[string]store.Claimed{}
	done := 0
	for round := 0; done < 12; round++ {
		if round > 12 {
			t.Fatalf("%d of 12 calls ran", done)
		}
		for _, c := range e.claim(20) {
			args, err := dag.CanonicalJSON(c.Arguments)
			must(t, "canonical arguments", err)
			want := keyOf[c.TaskID+":"+string(args)]
			if c.ConcurrencyKey != want || want == "" {
				t.Fatalf("%s(%s) claimed with key %q, want %q", c.TaskID, c.Arguments, c.ConcurrencyKey, want)
			}
			if o, busy := running[want]; busy {
				t.Fatalf("%s(%s) claimed while %s(%s) of the same key runs", c.TaskID, c.Arguments, o.TaskID, o.Arguments)
			}
			running[want] = c
		}
		if round == 0 && len(running) != 4 {
			t.Fatalf("first claim ran %d keys at once, want 4 (different arguments and key values run together)", len(running))
		}
		if len(running) == 0 {
			t.Fatalf("nothing claimable with %d of 12 calls run", done)
		}
		// Finish the oldest key's instance only: the others stay held.
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range running {
				if !yield(k) {
					return
				}
			}
		})
		c := running[keys[0]]
		delete(running, keys[0])
		e.finish(succeed(c))
		done++
		if len(running) > 0 && round%3 == 2 {
			for k, c := range running {
				e.finish(succeed(c))
				delete(running, k)
				done++
			}
		}
	}
	// No counter is left holding a slot or a queued instance.
	left, _, err := e.s.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{"ck"}, States: []state.TaskState{state.Queued}})
	must(t, "ListTaskInstances", err)
	if len(left) != 0 {
		t.Errorf("%d call instances still queued", len(left))
	}
}
