package taskrun_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

// BenchmarkRunShellTrue measures one Shell try of `true`: process start,
// process-group cleanup and output draining.
func BenchmarkRunShellTrue(b *testing.B) {
	task := dag.New("d").Shell("t", "true")
	for b.Loop() {
		if out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("t")}); out.State != state.Success {
			b.Fatalf("outcome %+v", out)
		}
	}
}

// BenchmarkRunFunc measures the overhead of one Func try.
func BenchmarkRunFunc(b *testing.B) {
	task := dag.New("d").Func("t", noop)
	for b.Loop() {
		if out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("t")}); out.State != state.Success {
			b.Fatalf("outcome %+v", out)
		}
	}
}

// BenchmarkRunDAGChain measures RunDAG on a chain of 1,000 Func tasks.
func BenchmarkRunDAGChain(b *testing.B) {
	d := dag.New("chain")
	var prev *dag.Task
	for i := range 1000 {
		t := d.Func(fmt.Sprintf("t%d", i), noop)
		if prev != nil {
			prev.SetDownstream(t)
		}
		prev = t
	}
	for b.Loop() {
		res, err := taskrun.RunDAG(context.Background(), d, taskrun.DAGOptions{})
		if err != nil || res.State != state.RunSuccess {
			b.Fatalf("%v %v", err, res.State)
		}
	}
}
