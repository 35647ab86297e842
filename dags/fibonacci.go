package dags

import (
	"fmt"

	"github.com/trellis-dag/trellis/dag"
)

// Fibonacci is the seed's automatic orchestration example (Pynenc's
// auto_orchestration): the callable fibonacci calls itself and waits for
// the results. Calls with the same argument in a run are one call
// instance, so fibonacci(n) makes n+1 calls; a waiting call holds no
// worker slot. The start task computes fibonacci of the run's param n.
// From outside, POST /api/v1/dags/fibonacci/calls/fibonacci with
// {"arguments": 30} answers {"result": 832040, …}.
var Fibonacci *dag.Callable[int, int]

func init() {
	d := dag.New("fibonacci",
		dag.Description("Recursive fibonacci: a callable task that calls itself (the seed's auto orchestration)"),
		dag.Tags("example", "calls"),
		dag.Params(map[string]any{"n": 20}),
		dag.MaxCalls(10_000),
	)
	Fibonacci = dag.NewCallable(d, "fibonacci", func(c *dag.Context, n int) (int, error) {
		c.Logger().Info("calculating", "n", n)
		if n < 0 {
			return 0, dag.Permanent(fmt.Errorf("fibonacci(%d): n must not be negative", n))
		}
		if n <= 1 {
			return n, nil
		}
		a, b := Fibonacci.Call(c, n-1), Fibonacci.Call(c, n-2) // both start at once
		x, err := a.Result(c)
		if err != nil {
			return 0, err
		}
		y, err := b.Result(c)
		if err != nil {
			return 0, err
		}
		c.Logger().Info("result", "n", n, "fibonacci", x+y)
		return x + y, nil
	}, dag.Retries(2))
	d.Func("start", func(c *dag.Context) error {
		n, err := intParam(c.Params(), "n", 20)
		if err != nil {
			return dag.Permanent(err)
		}
		v, err := Fibonacci.Call(c, n).Result(c)
		if err != nil {
			return err
		}
		c.Logger().Info("done", "n", n, "fibonacci", v)
		return c.SetOutput(v)
	})
	dag.Register(d)
}
