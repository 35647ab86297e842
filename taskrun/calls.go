package taskrun

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// CallReport is the final state of one call instance of a RunDAG run.
type CallReport struct {
	TaskID    string // the callable
	MapIndex  int    // 0, 1, … per callable, in creation order
	Arguments string // canonical JSON
	State     state.TaskState
	TryNumber int
	Err       string
}

// localCalls runs the calls of one RunDAG run in-process with the
// semantics of the store: one call instance per callable and canonical
// arguments (unless NoDedup), a cycle error for a call that would wait on
// one of its callers, a cap of the DAG's MaxCalls instances, retries, and
// at most Parallelism calls executing at once — a call waiting on its own
// calls holds none of these slots.
type localCalls struct {
	r     *dagRunner
	d     *dag.DAG
	slots chan struct{}

	mu      sync.Mutex
	byKey   map[string]*localCall
	all     []*localCall
	perTask map[string]int
	wg      sync.WaitGroup
}

// localCall is one call instance.
type localCall struct {
	task     *dag.Task
	mapIndex int
	args     []byte
	label    string
	done     chan struct{}
	// Guarded by localCalls.mu.
	callees []*localCall // calls it made and may wait on
	// Set before done is closed.
	output []byte
	err    error
	tries  int
	state  state.TaskState
}

func newLocalCalls(r *dagRunner, d *dag.DAG) *localCalls {
	return &localCalls{r: r, d: d, slots: make(chan struct{}, r.opts.Parallelism),
		byKey: map[string]*localCall{}, perTask: map[string]int{}}
}

// caller returns the Caller of a try: of the static task (self nil) or of
// call instance self.
func (lc *localCalls) caller(self *localCall) *localCaller {
	return &localCaller{lc: lc, self: self, made: map[*dag.Call]*localCall{}}
}

// localCaller is the dag.Caller of one try.
type localCaller struct {
	lc   *localCalls
	self *localCall
	mu   sync.Mutex
	seq  int
	made map[*dag.Call]*localCall
}

// Start records the calls: each finds or creates its call instance.
func (k *localCaller) Start(c *dag.Context, calls []*dag.Call) {
	lc := k.lc
	for _, call := range calls {
		t := lc.d.Task(call.TaskID)
		if t == nil || t.Kind() != dag.KindCallable {
			call.Finish(nil, dag.Permanent(fmt.Errorf("call %s: no callable %q in DAG %q", call.Label(), call.TaskID, lc.d.ID())))
			continue
		}
		k.mu.Lock()
		k.seq++
		seq := k.seq
		k.mu.Unlock()
		key := call.TaskID + "\x00" + string(call.Args)
		if !t.Dedup() {
			key = fmt.Sprintf("%s\x00%p#%d", call.TaskID, k, seq)
		}
		lc.mu.Lock()
		x, ok := lc.byKey[key]
		var refuse error
		switch {
		case ok && k.self != nil:
			if path := lc.pathTo(x, k.self); path != nil {
				// From the call made again, through its callees, back to it.
				var labels []string
				for _, p := range path {
					labels = append(labels, p.label)
				}
				labels = append(labels, x.label)
				refuse = &dag.CallCycleError{Path: strings.Join(labels, " -> ")}
			}
		case !ok && len(lc.all) >= lc.d.MaxCalls():
			refuse = fmt.Errorf("call %s: the run has reached its cap of %d calls (dag.MaxCalls)", call.Label(), lc.d.MaxCalls())
		case !ok:
			x = &localCall{task: t, mapIndex: lc.perTask[call.TaskID], args: call.Args, label: call.Label(),
				done: make(chan struct{}), state: state.Queued}
			lc.perTask[call.TaskID]++
			lc.byKey[key] = x
			lc.all = append(lc.all, x)
			lc.wg.Add(1)
			go lc.run(x)
		}
		if refuse == nil && k.self != nil {
			k.self.callees = append(k.self.callees, x)
		}
		lc.mu.Unlock()
		if refuse != nil {
			call.Finish(nil, dag.Permanent(refuse))
			continue
		}
		k.mu.Lock()
		k.made[call] = x
		k.mu.Unlock()
	}
}

// pathTo returns the calls from `from` to `to` following the calls each
// made that have not finished (from first, to last), or nil. lc.mu is
// held.
func (lc *localCalls) pathTo(from, to *localCall) []*localCall {
	seen := map[*localCall]bool{}
	var walk func(x *localCall) []*localCall
	walk = func(x *localCall) []*localCall {
		if x == to {
			return []*localCall{x}
		}
		if seen[x] || x.finished() {
			return nil
		}
		seen[x] = true
		for _, y := range x.callees {
			if p := walk(y); p != nil {
				return append([]*localCall{x}, p...)
			}
		}
		return nil
	}
	return walk(from)
}

func (x *localCall) finished() bool {
	select {
	case <-x.done:
		return true
	default:
		return false
	}
}

// Wait waits for call, giving up the try's call slot meanwhile.
func (k *localCaller) Wait(c *dag.Context, call *dag.Call) error {
	k.mu.Lock()
	x := k.made[call]
	k.mu.Unlock()
	if x == nil {
		return dag.Permanent(fmt.Errorf("wait for call %s: it was not made by this task", call.Label()))
	}
	if !x.finished() && k.self != nil {
		<-k.lc.slots
		defer func() { k.lc.slots <- struct{}{} }()
	}
	select {
	case <-x.done:
	case <-c.Done():
		return context.Cause(c)
	}
	if x.err != nil {
		call.Finish(nil, &dag.CallError{Call: x.label, Err: dag.ErrorText(x.err)})
	} else {
		call.Finish(x.output, nil)
	}
	return nil
}

// run executes call x with its retries, holding a call slot while a try
// runs.
func (lc *localCalls) run(x *localCall) {
	defer lc.wg.Done()
	r := lc.r
	t := x.task
	var out Outcome
	for {
		lc.slots <- struct{}{}
		x.tries++
		info := r.info
		info.TaskID = t.ID()
		info.TryNumber = x.tries
		w := r.log.forTry(fmt.Sprintf("%s[%d]", t.ID(), x.mapIndex), x.tries)
		out = Run(r.ctx, Try{Task: t, Info: info, Log: w, Outputs: r.outputs, KillGrace: r.opts.KillGrace,
			HTTPClient: r.opts.HTTPClient, Arguments: x.args, Caller: lc.caller(x)})
		w.flush()
		<-lc.slots
		if out.State != state.Failed || out.Permanent || x.tries > t.Retries() || r.ctx.Err() != nil {
			break
		}
		delay := state.RetryDelay(t.RetryDelay(), t.MaxBackoff(), x.tries, r.opts.Jitter())
		r.log.line(t.ID(), x.tries, fmt.Sprintf("call %s: try %d of %d failed; retrying in %v", x.label, x.tries, t.Retries()+1, delay))
		if err := r.opts.Sleep(r.ctx, delay); err != nil {
			out.Err = fmt.Errorf("%v; the retry wait ended: %w", out.Err, err)
			break
		}
	}
	x.state = out.State
	switch out.State {
	case state.Success:
		x.output = out.Output
		if x.output == nil {
			x.output = []byte("null")
		}
	case state.Skipped:
		x.err = fmt.Errorf("skipped: %s", errText(out.Err))
	default:
		x.err = out.Err
		if x.err == nil {
			x.err = fmt.Errorf("failed")
		}
	}
	close(x.done)
}

// wait waits for every call to finish (the run ends with its calls), then
// returns their reports in creation order.
func (lc *localCalls) wait() []CallReport {
	lc.wg.Wait()
	lc.mu.Lock()
	defer lc.mu.Unlock()
	out := make([]CallReport, len(lc.all))
	for i, x := range lc.all {
		out[i] = CallReport{TaskID: x.task.ID(), MapIndex: x.mapIndex, Arguments: string(x.args),
			State: x.state, TryNumber: x.tries, Err: errText(x.err)}
	}
	return out
}

var _ dag.Caller = (*localCaller)(nil)
