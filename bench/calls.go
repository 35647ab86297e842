package bench

import (
	"context"
	"fmt"

	"github.com/trellis-dag/trellis/dag"
)

// DAG ids of the call shapes.
const (
	FibDAGID        = IDPrefix + "fib"
	FibNoDedupDAGID = IDPrefix + "fib_nodedup"
	CallsWideDAGID  = IDPrefix + "calls_wide"
)

// Metric and unit of the call scenarios.
const (
	MetricCallsPerSecond = "calls_per_second"
	MetricCalls          = "calls"
	UnitCallsPerSecond   = "calls/s"
	UnitCalls            = "calls"
)

// fibMod is fib(n) modulo 2^64, computed in a loop: what the callable's
// recursion must find (fib(200) does not fit in 64 bits).
func fibMod(n int) uint64 {
	var a, b uint64 = 0, 1
	for range n {
		a, b = b, a+b
	}
	return a
}

// FibCalls is how many call instances fib(n) makes: n+1 with dedup, and
// without it the size of the recursion tree.
func FibCalls(n int, dedup bool) int {
	if dedup {
		return n + 1
	}
	a, b := 1, 1 // calls of fib(0), fib(1)
	for range n - 1 {
		a, b = b, a+b+1
	}
	if n == 0 {
		return 1
	}
	return b
}

// fibDAG is a DAG whose task start calls the recursive callable fibonacci
// with n and checks the result.
func fibDAG(id string, n int, opts ...dag.TaskOption) *dag.DAG {
	d := dag.New(id, dag.Description(fmt.Sprintf("trellis bench: start calls the recursive callable fibonacci(%d)", n)))
	var fib *dag.Callable[int, uint64]
	fib = dag.NewCallable(d, "fibonacci", func(c *dag.Context, n int) (uint64, error) {
		if n <= 1 {
			return uint64(n), nil
		}
		a, b := fib.Call(c, n-1), fib.Call(c, n-2)
		x, err := a.Result(c)
		if err != nil {
			return 0, err
		}
		y, err := b.Result(c)
		return x + y, err
	}, opts...)
	d.Func("start", func(c *dag.Context) error {
		v, err := fib.Call(c, n).Result(c)
		if err != nil {
			return err
		}
		if want := fibMod(n); v != want {
			return fmt.Errorf("fibonacci(%d) = %d, want %d (mod 2^64)", n, v, want)
		}
		return c.SetOutput(v)
	})
	return d
}

// callsWideDAG is a DAG whose task start maps n calls of the callable
// item (which returns its argument) and sums the results.
func callsWideDAG(n int) *dag.DAG {
	d := dag.New(CallsWideDAGID, dag.Description(fmt.Sprintf("trellis bench: start maps %d calls and sums them", n)))
	item := dag.NewCallable(d, "item", func(_ *dag.Context, i int) (int, error) { return i, nil })
	d.Func("start", func(c *dag.Context) error {
		ins := make([]int, n)
		for i := range ins {
			ins[i] = i
		}
		sum := 0
		for _, f := range item.Map(c, ins) {
			v, err := f.Result(c)
			if err != nil {
				return err
			}
			sum += v
		}
		if want := n * (n - 1) / 2; sum != want {
			return fmt.Errorf("sum of %d calls = %d, want %d", n, sum, want)
		}
		return c.SetOutput(sum)
	})
	return d
}

// calls runs one run of a call DAG: total seconds and calls/s from the
// trigger to the run's success, with every one of its calls instances
// succeeded.
func (h *harness) calls(ctx context.Context, scenario, dagID string, calls int) error {
	n := calls + 1 // and the start task
	t, _, err := h.runOnce(ctx, dagID, n, false)
	if err != nil {
		return err
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	h.work, h.workUnit = n, "task"
	m := h.rowsFor(scenario)
	m.seconds(MetricTotalSeconds, t.Total())
	v := 0.0
	if t.Total() > 0 {
		v = float64(calls) / t.Total().Seconds()
	}
	m.add(MetricCallsPerSecond, v, UnitCallsPerSecond)
	m.add(MetricCalls, float64(calls), UnitCalls)
	h.peak(m)
	h.keep(m)
	h.progress("%d calls in %.3f s: %.0f calls/s", calls, t.Total().Seconds(), v)
	return nil
}
