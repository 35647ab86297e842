package dag

import (
	"encoding/json"
	"fmt"
	"iter"
	"maps"
	"slices"
	"time"
)

// Kind is what a task runs.
type Kind string

// Task kinds.
const (
	KindFunc   Kind = "func"
	KindShell  Kind = "shell"
	KindHTTP   Kind = "http"
	KindBranch Kind = "branch"
)

// Task is one node of a DAG. Create tasks with the DAG's Func, Shell, HTTP
// and Branch methods.
//
// A DAG may hold hundreds of thousands of tasks in every process that
// registers it, so a Task keeps only what every task has; what its options
// set lives in opts, allocated by the first option that sets something
// (a task without options shares the defaults).
type Task struct {
	dag        *DAG
	id         string
	fn         func(*Context) error
	upstream   []int32 // positions in dag.tasks (no pointers: cheaper to hold and to scan)
	downstream []int32
	index      int32 // position in dag.tasks
	kind       kindCode
	opts       *taskOpts // nil: every option at its default
}

// taskOpts holds the options of a task given any, and a Shell task's
// command.
type taskOpts struct {
	retries    int
	retryDelay time.Duration
	maxBackoff time.Duration
	timeout    time.Duration
	trigger    TriggerRule
	priority   int
	command    string
	more       *taskMore // nil: none of the rarer options
}

// taskMore holds what few tasks have: the functions and requests of the
// other kinds, environment, limits and waiting options.
type taskMore struct {
	branch  func(*Context) ([]string, error)
	call    func(*Context, json.RawMessage) (json.RawMessage, error)
	noDedup bool
	http    *HTTPRequest
	env     map[string]string // Env
	inherit []string          // InheritEnv
	// Limits (limits.go).
	pool         string
	poolSlots    int
	poolSlotsSet bool
	maxActive    int
	keyTemplate  string
	keyLimit     int
	keySet       bool
	callKey      bool     // the key is ConcurrencyByArguments or ConcurrencyByKeys
	keyFields    []string // ConcurrencyByKeys's fields (nil: by arguments)

	// Waiting tasks (wait.go).
	steps           Steps
	sensor          func(*Context) (bool, error)
	pokeInterval    time.Duration
	sensorTimeout   time.Duration
	softFail        bool
	approvers       []string
	approvalTimeout time.Duration
	waitOpts        int // which of the waiting options were given
}

// defaultOpts and noMore are what o and m return for a task without
// options. They are shared and never written: writes go through setO and
// setM.
var (
	defaultOpts = taskOpts{retryDelay: DefaultRetryDelay, trigger: AllSuccess}
	noMore      taskMore
)

// o returns the task's options for reading.
func (t *Task) o() *taskOpts {
	if t.opts == nil {
		return &defaultOpts
	}
	return t.opts
}

// m returns the task's rarer options for reading.
func (t *Task) m() *taskMore {
	if t.opts == nil || t.opts.more == nil {
		return &noMore
	}
	return t.opts.more
}

// setO returns the task's options for writing, allocating them (at their
// defaults) on first use.
func (t *Task) setO() *taskOpts {
	if t.opts == nil {
		o := defaultOpts
		t.opts = &o
	}
	return t.opts
}

// setM returns the task's rarer options for writing, allocating them on
// first use.
func (t *Task) setM() *taskMore {
	o := t.setO()
	if o.more == nil {
		o.more = &taskMore{}
	}
	return o.more
}

// kindCode is a Kind held in one byte; kinds lists them in code order.
type kindCode uint8

var kinds = [...]Kind{KindFunc, KindShell, KindHTTP, KindBranch, KindCallable, KindResumable, KindSensor, KindApproval}

// codeOf returns the code of k, one of kinds.
func codeOf(k Kind) kindCode {
	for i, x := range kinds {
		if x == k {
			return kindCode(i)
		}
	}
	panic("dag: unknown task kind " + string(k)) // the constructors pass only the kinds above
}

// TaskOption configures a task.
type TaskOption func(*Task)

// Retries sets how many times a failed task is tried again (default 0).
func Retries(n int) TaskOption { return func(t *Task) { t.setO().retries = n } }

// RetryDelay sets the wait before a retry (default 10s).
func RetryDelay(d time.Duration) TaskOption { return func(t *Task) { t.setO().retryDelay = d } }

// ExponentialBackoff doubles the retry delay on every try, with jitter, up
// to max.
func ExponentialBackoff(max time.Duration) TaskOption {
	return func(t *Task) { t.setO().maxBackoff = max }
}

// Timeout bounds one try of the task; 0 means no timeout.
func Timeout(d time.Duration) TaskOption { return func(t *Task) { t.setO().timeout = d } }

// Trigger sets the trigger rule (default AllSuccess).
func Trigger(r TriggerRule) TaskOption { return func(t *Task) { t.setO().trigger = r } }

// Priority orders ready tasks: higher runs first (default 0).
func Priority(p int) TaskOption { return func(t *Task) { t.setO().priority = p } }

// SetDownstream makes every task in ts run after t and returns t.
//
// It never panics: a nil task, a task not created by a DAG's methods, or a
// task of another DAG is not linked and the problem is recorded on the DAGs
// involved, for Validate to report.
func (t *Task) SetDownstream(ts ...*Task) *Task {
	for _, d := range ts {
		link(t, t, d)
	}
	return t
}

// SetUpstream makes t run after every task in ts and returns t. Bad tasks
// are handled as in SetDownstream.
func (t *Task) SetUpstream(ts ...*Task) *Task {
	for _, u := range ts {
		link(t, u, t)
	}
	return t
}

// link adds the edge up -> down on behalf of self (the receiver of
// SetDownstream/SetUpstream), or records why it cannot.
func link(self, up, down *Task) {
	other := up
	if other == self {
		other = down
	}
	switch {
	case self == nil && other == nil:
		return // no DAG to record the problem on
	case self == nil:
		if other.dag != nil {
			other.dag.addIssue(other.id, "edge from a nil task")
		}
		return
	case other == nil:
		if self.dag != nil {
			self.dag.addIssue(self.id, "edge to a nil task")
		}
		return
	case up.dag == nil || down.dag == nil:
		for _, x := range []*Task{up, down} {
			if x.dag != nil {
				y := up
				if x == up {
					y = down
				}
				x.dag.addIssue(x.id, fmt.Sprintf("edge to task %q that was not created by a DAG (use DAG.Func, Shell, HTTP or Branch)", y.id))
			}
		}
		return
	case up.dag != down.dag:
		up.dag.addIssue(up.id, fmt.Sprintf("edge to task %q of another DAG %q", down.id, down.dag.id))
		down.dag.addIssue(down.id, fmt.Sprintf("edge from task %q of another DAG %q", up.id, up.dag.id))
		return
	}
	// Search the shorter list: fan-out and fan-in stay linear.
	if len(up.downstream) <= len(down.upstream) {
		if slices.Contains(up.downstream, down.index) {
			return
		}
	} else if slices.Contains(down.upstream, up.index) {
		return
	}
	up.downstream = append(up.downstream, down.index)
	down.upstream = append(down.upstream, up.index)
}

// DAG returns the DAG the task belongs to.
func (t *Task) DAG() *DAG { return t.dag }

// ID returns the task id.
func (t *Task) ID() string { return t.id }

// Kind returns what the task runs.
func (t *Task) Kind() Kind { return kinds[t.kind] }

// Fn returns the function of a Func task (nil otherwise).
func (t *Task) Fn() func(*Context) error { return t.fn }

// BranchFn returns the function of a Branch task (nil otherwise).
func (t *Task) BranchFn() func(*Context) ([]string, error) { return t.m().branch }

// Command returns the command of a Shell task.
func (t *Task) Command() string { return t.o().command }

// req returns the request of an HTTP task, the zero request for the others.
func (t *Task) req() HTTPRequest {
	if h := t.m().http; h != nil {
		return *h
	}
	return HTTPRequest{}
}

// HTTPRequest returns a copy of the request of an HTTP task.
func (t *Task) HTTPRequest() HTTPRequest {
	r := t.req()
	r.Header = maps.Clone(r.Header)
	return r
}

// Retries returns how many retries a failed task gets.
func (t *Task) Retries() int { return t.o().retries }

// RetryDelay returns the base delay between tries.
func (t *Task) RetryDelay() time.Duration { return t.o().retryDelay }

// MaxBackoff returns the cap of exponential backoff, 0 when backoff is off.
func (t *Task) MaxBackoff() time.Duration { return t.o().maxBackoff }

// Timeout returns the per-try timeout (0 = none).
func (t *Task) Timeout() time.Duration { return t.o().timeout }

// TriggerRule returns the task's trigger rule.
func (t *Task) TriggerRule() TriggerRule { return t.o().trigger }

// Priority returns the task's priority weight.
func (t *Task) Priority() int { return t.o().priority }

// Upstream returns the tasks t directly depends on, in the order added.
func (t *Task) Upstream() []*Task { return t.tasksAt(t.upstream) }

// Downstream returns the tasks directly depending on t, in the order added.
func (t *Task) Downstream() []*Task { return t.tasksAt(t.downstream) }

// UpstreamIDs returns the ids of Upstream.
func (t *Task) UpstreamIDs() []string { return t.idsAt(t.upstream) }

// DownstreamIDs returns the ids of Downstream.
func (t *Task) DownstreamIDs() []string { return t.idsAt(t.downstream) }

// tasksAt returns the tasks of t's DAG at positions ps.
func (t *Task) tasksAt(ps []int32) []*Task {
	out := make([]*Task, len(ps))
	for i, p := range ps {
		out[i] = t.dag.tasks[p]
	}
	return out
}

// idsAt returns the ids of the tasks of t's DAG at positions ps.
func (t *Task) idsAt(ps []int32) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = t.dag.tasks[p].id
	}
	return out
}

// downTasks ranges over the direct downstream tasks, in the order added,
// with their place in that order.
func (t *Task) downTasks() iter.Seq2[int, *Task] {
	return func(yield func(int, *Task) bool) {
		for i, p := range t.downstream {
			if !yield(i, t.dag.tasks[p]) {
				return
			}
		}
	}
}
