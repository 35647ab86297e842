package executor

import (
	"context"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestWorkerCallsNoDedup: fib(8) without dedup on two workers (67 call
// instances): callers parked on one worker may be resumed or run again
// from the start by the other; the run succeeds with every call once.
func TestWorkerCallsNoDedup(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			d := fibCallsDAG("fibnd", 8, dag.NoDedup())
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Slots = 16 })
			newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Slots = 16; c.ID = "w2" })
			startRun(t, st, d, "r1", nil)
			run := waitRun(t, st, d.ID(), "r1", 30*time.Second)
			if run.State != state.RunSuccess {
				t.Fatalf("run %s: %s", run.State, describeTasks(t, st, d.ID(), "r1"))
			}
			tis, n, err := st.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{d.ID()}, TaskIDs: []string{"fibonacci"}, Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if n != 67 {
				t.Errorf("%d call instances, want 67", n)
			}
			for _, ti := range tis {
				if ti.State != state.Success {
					t.Errorf("call %s is %s", ti.Arguments, ti.State)
				}
			}
		})
	}
}
