package executor

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// fibCallsDAG: start calls fibonacci(n), which calls itself; start
// records the result as its output. bad always fails; handle calls it and
// records the error.
func fibCallsDAG(id string, n int, opts ...dag.TaskOption) *dag.DAG {
	d := dag.New(id)
	var fib *dag.Callable[int, int]
	fib = dag.NewCallable(d, "fibonacci", func(c *dag.Context, n int) (int, error) {
		if n <= 1 {
			return n, nil
		}
		fs := fib.Map(c, []int{n - 1, n - 2})
		x, err := fs[0].Result(c)
		if err != nil {
			return 0, err
		}
		y, err := fs[1].Result(c)
		return x + y, err
	}, opts...)
	bad := dag.NewCallable(d, "bad", func(c *dag.Context, n int) (int, error) {
		return 0, fmt.Errorf("no luck with %d", n)
	})
	d.Func("start", func(c *dag.Context) error {
		v, err := fib.Call(c, n).Result(c)
		if err != nil {
			return err
		}
		return c.SetOutput(v)
	})
	d.Func("handle", func(c *dag.Context) error {
		_, err := bad.Call(c, 7).Result(c)
		return c.SetOutput(err.Error())
	})
	return d
}

// TestWorkerCalls: with one worker and one slot, fib(15) completes (a
// waiting caller holds no slot): 16 call instances, each run once, the
// result right; a failed call's error reaches its caller.
func TestWorkerCalls(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			d := fibCallsDAG("fibcalls", 15)
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Slots = 1 })
			startRun(t, st, d, "r1", nil)
			run := waitRun(t, st, d.ID(), "r1", 60*time.Second)
			if run.State != state.RunSuccess {
				t.Fatalf("run %s: %s", run.State, describeTasks(t, st, d.ID(), "r1"))
			}
			tis, _, err := st.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{d.ID()}, Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			fibs, outputs := 0, map[string]string{}
			for _, ti := range tis {
				switch ti.TaskID {
				case "fibonacci":
					fibs++
					if ti.State != state.Success || ti.TryNumber != 1 {
						t.Errorf("call %s: %s try %d", ti.Arguments, ti.State, ti.TryNumber)
					}
				case "start", "handle":
					outputs[ti.TaskID] = string(ti.Output)
				}
			}
			if fibs != 16 {
				t.Errorf("%d call instances of fibonacci, want 16", fibs)
			}
			if outputs["start"] != "610" {
				t.Errorf("fib(15) = %s, want 610", outputs["start"])
			}
			var msg string
			_ = json.Unmarshal([]byte(outputs["handle"]), &msg)
			if !strings.Contains(msg, "call bad(7) failed") || !strings.Contains(msg, "no luck with 7") {
				t.Errorf("handled error %q", msg)
			}
		})
	}
}
