package taskrun

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// fibDAG is the seed's recursive fibonacci: a start task calls fib(n).
func fibDAG(n int, opts ...dag.TaskOption) (*dag.DAG, *int) {
	d := dag.New("fib")
	var fib *dag.Callable[int, int]
	fib = dag.NewCallable(d, "fibonacci", func(c *dag.Context, n int) (int, error) {
		if n <= 1 {
			return n, nil
		}
		a, b := fib.Call(c, n-1), fib.Call(c, n-2)
		x, err := a.Result(c)
		if err != nil {
			return 0, err
		}
		y, err := b.Result(c)
		return x + y, err
	}, opts...)
	got := new(int)
	d.Func("start", func(c *dag.Context) error {
		v, err := fib.Call(c, n).Result(c)
		*got = v
		return err
	})
	return d, got
}

func TestLocalCallsDedup(t *testing.T) {
	d, got := fibDAG(25)
	// One slot: a waiting call holds none, so the recursion completes.
	res, err := RunDAG(context.Background(), d, DAGOptions{Parallelism: 1})
	if err != nil || res.State != state.RunSuccess {
		t.Fatalf("RunDAG: %v %+v", err, res)
	}
	if *got != 75025 {
		t.Errorf("fib(25) = %d, want 75025", *got)
	}
	if len(res.Calls) != 26 {
		t.Errorf("%d call instances, want 26 (n+1 with dedup)", len(res.Calls))
	}
	seen := map[int]bool{}
	for _, c := range res.Calls {
		if c.State != state.Success || c.TaskID != "fibonacci" || seen[c.MapIndex] {
			t.Errorf("call %+v", c)
		}
		seen[c.MapIndex] = true
	}
	if res.Calls[0].Arguments != "25" || res.Calls[0].MapIndex != 0 {
		t.Errorf("first call %+v, want fibonacci(25) with map index 0", res.Calls[0])
	}
}

func TestLocalCallsNoDedup(t *testing.T) {
	d, got := fibDAG(10, dag.NoDedup())
	res, err := RunDAG(context.Background(), d, DAGOptions{Parallelism: 4})
	if err != nil || res.State != state.RunSuccess || *got != 55 {
		t.Fatalf("RunDAG: %v %v fib=%d", err, res.State, *got)
	}
	if len(res.Calls) != 177 {
		t.Errorf("%d call instances, want 177 without dedup", len(res.Calls))
	}
}

func TestLocalCallsCycle(t *testing.T) {
	d := dag.New("cyc")
	var f, g *dag.Callable[int, int]
	f = dag.NewCallable(d, "f", func(c *dag.Context, n int) (int, error) { return g.Call(c, n).Result(c) })
	g = dag.NewCallable(d, "g", func(c *dag.Context, n int) (int, error) { return f.Call(c, n).Result(c) })
	self := dag.NewCallable(d, "self", func(c *dag.Context, n int) (int, error) { return 0, nil })
	var selfRef *dag.Callable[int, int]
	selfRef = dag.NewCallable(d, "selfref", func(c *dag.Context, n int) (int, error) { return selfRef.Call(c, n).Result(c) })
	_ = self
	var fErr, sErr error
	d.Func("start", func(c *dag.Context) error {
		_, fErr = f.Call(c, 3).Result(c)
		_, sErr = selfRef.Call(c, 1).Result(c)
		return nil
	})
	res, err := RunDAG(context.Background(), d, DAGOptions{Parallelism: 2})
	if err != nil || res.State != state.RunSuccess {
		t.Fatalf("RunDAG: %v %+v", err, res)
	}
	var ce *dag.CallError
	if !errors.As(fErr, &ce) || !strings.Contains(ce.Err, "call cycle: f(3) -> g(3) -> f(3)") {
		t.Errorf("f(3) error %v, want a call error naming the cycle f(3) -> g(3) -> f(3)", fErr)
	}
	if !errors.As(sErr, &ce) || !strings.Contains(ce.Err, "call cycle: selfref(1) -> selfref(1)") {
		t.Errorf("selfref(1) error %v, want the self cycle", sErr)
	}
	if !dag.IsPermanent(fErr) {
		t.Errorf("a call error is not permanent: %v", fErr)
	}
}

func TestLocalCallsFailureCapAndArgs(t *testing.T) {
	d := dag.New("fail", dag.MaxCalls(3))
	tries := 0
	bad := dag.NewCallable(d, "bad", func(c *dag.Context, n int) (int, error) {
		tries++
		return 0, fmt.Errorf("no luck with %d", n)
	}, dag.Retries(1), dag.RetryDelay(0))
	id := dag.NewCallable(d, "id", func(c *dag.Context, v any) (any, error) { return v, nil })
	var handled, capErr, argErr error
	d.Func("handles", func(c *dag.Context) error {
		_, handled = bad.Call(c, 7).Result(c)
		fs := id.Map(c, []any{1, 2, 3})
		for _, f := range fs {
			if _, err := f.Result(c); err != nil {
				capErr = err
			}
		}
		_, argErr = id.Call(c, func() {}).Result(c)
		return nil
	})
	d.Func("unhandled", func(c *dag.Context) error {
		_, err := bad.Call(c, 7).Result(c)
		return err
	})
	res, err := RunDAG(context.Background(), d, DAGOptions{Parallelism: 1})
	if err != nil {
		t.Fatal(err)
	}
	if tries != 2 {
		t.Errorf("bad(7) ran %d tries, want 2 (one retry, one instance for both callers)", tries)
	}
	if handled == nil || !strings.Contains(handled.Error(), "call bad(7) failed: no luck with 7") {
		t.Errorf("handled error %v", handled)
	}
	if capErr == nil || !strings.Contains(capErr.Error(), "cap of 3 calls (dag.MaxCalls)") {
		t.Errorf("cap error %v", capErr)
	}
	if argErr == nil || !strings.Contains(argErr.Error(), "not JSON-encodable") {
		t.Errorf("bad arguments error %v", argErr)
	}
	if r := res.Tasks["unhandled"]; r.State != state.Failed || !strings.Contains(r.Err, "call bad(7) failed") || r.TryNumber != 1 {
		t.Errorf("unhandled: %+v, want failed once naming the call", r)
	}
	if res.Tasks["handles"].State != state.Success || res.State != state.RunFailed {
		t.Errorf("run %s, handles %+v", res.State, res.Tasks["handles"])
	}
	if _, ok := res.Tasks["bad"]; ok {
		t.Errorf("a callable is reported as a static task")
	}
}

func TestCallableValidation(t *testing.T) {
	d := dag.New("v", dag.MaxCalls(-1))
	k := dag.NewCallable[int, int](d, "k", nil)
	s := d.Func("s", func(*dag.Context) error { return nil }, dag.NoDedup())
	s.SetDownstream(k.Task())
	var msgs []string
	for _, p := range d.Validate() {
		msgs = append(msgs, p.String())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"MaxCalls must be positive", "NewCallable has a nil function",
		"a callable has no edges", "NoDedup applies to callables only"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems %q lack %q", all, want)
		}
	}
}
