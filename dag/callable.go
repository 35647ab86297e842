package dag

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// KindCallable is the kind of a callable task (NewCallable): it runs only
// when called, once per distinct call in a run.
const KindCallable Kind = "callable"

// DefaultMaxCalls is the cap on the call instances of one run when the DAG
// sets none with MaxCalls.
const DefaultMaxCalls = 100_000

// MaxCalls caps the call instances one run may create (default
// DefaultMaxCalls): a call beyond it fails its caller with a permanent
// error instead of filling the database (runaway recursion).
func MaxCalls(n int) Option { return func(d *DAG) { d.maxCalls = n } }

// MaxCalls returns the cap on the call instances of one run.
func (d *DAG) MaxCalls() int {
	if d.maxCalls == 0 {
		return DefaultMaxCalls
	}
	return d.maxCalls
}

// NoDedup turns deduplication off for a callable: every call creates its
// own call instance, even with the same arguments as another call of the
// run. Without it, calls with the same canonical arguments in one run are
// one call instance whose result every caller gets.
func NoDedup() TaskOption { return func(t *Task) { t.setM().noDedup = true } }

// Dedup reports whether calls of a callable with the same arguments in one
// run share one call instance.
func (t *Task) Dedup() bool { return !t.m().noDedup }

// CallFn returns the function of a callable task, on JSON arguments and
// result (nil for other kinds).
func (t *Task) CallFn() func(*Context, json.RawMessage) (json.RawMessage, error) { return t.m().call }

// Callable is a task that other tasks of its DAG call at run time with
// arguments of type In, getting a result of type Out: Pynenc's tasks that
// call tasks, Airflow's dynamic task mapping. Create it with NewCallable.
type Callable[In, Out any] struct {
	task *Task
}

// NewCallable adds a callable task to d: fn runs once per distinct call
// (the arguments encoded as JSON identify a call within a run unless the
// task has NoDedup) and its result, encoded as JSON, is the call's result.
// A callable takes the options of other tasks (Retries, RetryDelay,
// ExponentialBackoff, Timeout, Priority) and NoDedup; it is a node of the
// DAG without edges (Func tasks and other callables call it, it is not fed
// by upstream tasks). It may call itself and the other callables of d.
//
// fn must make its calls in an order that depends only on its arguments
// and on the results of its calls (see Future): a call waiting on results
// may be run again from the start, its finished calls answered at once.
func NewCallable[In, Out any](d *DAG, id string, fn func(*Context, In) (Out, error), opts ...TaskOption) *Callable[In, Out] {
	t := d.addTask(id, KindCallable, opts)
	if fn == nil {
		d.addIssue(id, "NewCallable has a nil function")
	} else {
		t.setM().call = func(c *Context, args json.RawMessage) (json.RawMessage, error) {
			var in In
			if err := json.Unmarshal(args, &in); err != nil {
				return nil, Permanent(fmt.Errorf("arguments %s of callable %q: %w", args, id, err))
			}
			out, err := fn(c, in)
			if err != nil {
				return nil, err
			}
			b, err := json.Marshal(out)
			if err != nil {
				return nil, Permanent(fmt.Errorf("result of callable %q is not JSON-encodable: %w", id, err))
			}
			return b, nil
		}
	}
	return &Callable[In, Out]{task: t}
}

// Task returns the callable's task.
func (k *Callable[In, Out]) Task() *Task { return k.task }

// ID returns the callable's task id.
func (k *Callable[In, Out]) ID() string { return k.task.id }

// Call calls the callable with in from the task c runs and returns the
// call's future at once: the call is recorded (with the other calls made
// since the last wait, in one write) and starts when c next waits for a
// result or returns. in must encode as JSON; when it does not, the
// future's Result is a permanent error saying why.
func (k *Callable[In, Out]) Call(c *Context, in In) *Future[Out] {
	return k.Map(c, []In{in})[0]
}

// Map calls the callable once per element of ins (Airflow's expand) and
// returns the futures in the order of ins. The calls are recorded
// together.
func (k *Callable[In, Out]) Map(c *Context, ins []In) []*Future[Out] {
	out := make([]*Future[Out], len(ins))
	calls := make([]*Call, 0, len(ins))
	for i, in := range ins {
		call := &Call{TaskID: k.task.id}
		out[i] = &Future[Out]{call: call}
		switch {
		case c == nil:
			call.finish(nil, Permanent(fmt.Errorf("call %s: nil context", k.task.id)))
			continue
		case k.task.dag == nil || k.task.dag.id != c.DAGID():
			call.finish(nil, Permanent(fmt.Errorf("call %s: it is not a callable of DAG %q", k.task.id, c.DAGID())))
			continue
		}
		args, err := CanonicalArgs(in)
		if err != nil {
			call.finish(nil, Permanent(fmt.Errorf("call %s: arguments %s", k.task.id, err)))
			continue
		}
		call.Args = args
		calls = append(calls, call)
	}
	if len(calls) > 0 {
		if c.calls == nil {
			for _, call := range calls {
				call.finish(nil, Permanent(fmt.Errorf("call %s: this context cannot make calls", call.Label())))
			}
		} else {
			c.calls.Start(c, calls)
		}
	}
	return out
}

// Future is the pending result of a call.
type Future[Out any] struct {
	call *Call
}

// Result waits for the call to finish and returns its result. A call that
// failed (after its retries) returns a *CallError; a call that would wait
// on one of its own callers a *CallCycleError. Both are permanent: returned
// as they are, they fail the caller without retries.
//
// While it waits, the task holds no worker slot. After a worker is lost
// the caller runs again from its start: calls already finished are
// answered at once, so task code must make the same calls in the same
// order given the same arguments and results.
func (f *Future[Out]) Result(c *Context) (Out, error) {
	var out Out
	if f == nil || f.call == nil {
		return out, Permanent(errors.New("result of a nil future"))
	}
	call := f.call
	if !call.Done() {
		if c == nil || c.calls == nil {
			return out, Permanent(fmt.Errorf("result of call %s: this context cannot wait for calls", call.Label()))
		}
		if err := c.calls.Wait(c, call); err != nil {
			return out, err
		}
	}
	output, err := call.Outcome()
	if err != nil {
		if !IsPermanent(err) {
			err = Permanent(err)
		}
		return out, err
	}
	if err := json.Unmarshal(output, &out); err != nil {
		return out, Permanent(fmt.Errorf("result %s of call %s: %w", output, call.Label(), err))
	}
	return out, nil
}

// Call is one call made by a task: the callable's task id and its
// canonical JSON arguments. The Caller that records it finishes it with
// its result.
type Call struct {
	TaskID string
	Args   json.RawMessage

	mu     sync.Mutex
	done   bool
	output json.RawMessage
	err    error
}

// Label names the call as callable(arguments).
func (c *Call) Label() string { return CallLabel(c.TaskID, c.Args) }

// CallLabel names a call of callable taskID with JSON arguments args as
// taskID(args), the arguments compacted and cut after 80 bytes.
func CallLabel(taskID string, args json.RawMessage) string {
	var b bytes.Buffer
	if len(args) > 0 && json.Compact(&b, args) == nil {
		args = b.Bytes()
	}
	s := string(args)
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return taskID + "(" + s + ")"
}

// Finish records the call's outcome: its JSON result, or why it failed.
// Only the first outcome counts.
func (c *Call) Finish(output json.RawMessage, err error) { c.finish(output, err) }

func (c *Call) finish(output json.RawMessage, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	c.done, c.output, c.err = true, output, err
}

// Done reports whether the call has finished.
func (c *Call) Done() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// Outcome returns the result of a finished call.
func (c *Call) Outcome() (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.output, c.err
}

// Caller records the calls of one task try and waits for them; the
// executor supplies one backed by the store, `dags test` an in-process
// one. Methods are called from the task's goroutines.
type Caller interface {
	// Start records calls, in the order they were made; they may start
	// at once or when the task first waits.
	Start(c *Context, calls []*Call)
	// Wait returns once call has finished (Call.Finish was called), or
	// with an error when it cannot wait (the context is done).
	Wait(c *Context, call *Call) error
}

// CallError is the error of a call whose callable failed: Result returns
// it, and a caller returning it fails naming the call.
type CallError struct {
	Call string // callable(arguments)
	Err  string // why it failed
}

func (e *CallError) Error() string { return fmt.Sprintf("call %s failed: %s", e.Call, e.Err) }

// CallCycleError is the error of a call that would wait on one of its own
// callers: Path names the calls from the one that would wait back to
// itself, as "fibonacci(3) -> g(3) -> fibonacci(3)".
type CallCycleError struct {
	Path string
}

func (e *CallCycleError) Error() string { return "call cycle: " + e.Path }

// CanonicalArgs encodes v as the canonical JSON that identifies a call:
// objects with their keys sorted, no insignificant space, numbers as
// written.
func CanonicalArgs(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("are not JSON-encodable: %w", err)
	}
	return CanonicalJSON(b)
}

// CanonicalJSON rewrites the JSON b in canonical form (see CanonicalArgs).
func CanonicalJSON(b []byte) (json.RawMessage, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var x any
	if err := d.Decode(&x); err != nil {
		return nil, fmt.Errorf("are not JSON: %w", err)
	}
	if d.More() {
		return nil, errors.New("are not one JSON value")
	}
	out, err := json.Marshal(x)
	if err != nil {
		return nil, fmt.Errorf("are not JSON: %w", err)
	}
	return out, nil
}
