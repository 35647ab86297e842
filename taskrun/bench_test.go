package taskrun_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/cputime"
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

// BenchmarkPokes measures taskrun's own cost per Sensor check: batches of
// 1,000 pokes, as a worker's poke loop makes them, of a check that says
// "not yet" at once (b.N counts pokes; cpu-ns/op is the process's CPU
// per poke, the collector's included).
func BenchmarkPokes(b *testing.B) {
	const n = 1000
	d := dag.New("d")
	task := d.Sensor("s", func(*dag.Context) (bool, error) { return false, nil },
		dag.PokeInterval(time.Second), dag.SensorTimeout(time.Hour))
	try := taskrun.Try{Task: task, Info: info("s"), Limit: 20 * time.Second}
	try.Info.Resumed, try.Info.TriggerTimeout = true, time.Now().Add(time.Hour)
	try.Info.Params = map[string]any{"release_file": "/nonexistent"}
	ctx := context.Background()
	tryOf := func(int) taskrun.Try { return try }
	var bad atomic.Int64
	done := func(_ int, o taskrun.Outcome) {
		if o.State != state.Deferred {
			bad.Add(1)
		}
	}
	b.ReportAllocs()
	cpu := cputime.Start(b)
	b.ResetTimer()
	for left := b.N; left > 0; left -= n {
		taskrun.Pokes(ctx, min(n, left), 64, tryOf, done)
	}
	cpu.Report()
	if bad.Load() > 0 {
		b.Fatalf("%d pokes did not defer", bad.Load())
	}
}
