package taskrun

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// DAGOptions configures RunDAG. The zero value runs the DAG with its
// default params, logical date now, one task at a time, logs discarded.
type DAGOptions struct {
	// Conf overlays the DAG's Params (key by key) to form the run's params.
	Conf map[string]any
	// LogicalDate is the run's logical date; zero means now (UTC).
	LogicalDate time.Time
	// RunID is the run's id; "" means "manual__<logical date, RFC 3339>".
	RunID string
	// Log receives the task logs, each line prefixed with "[<task> try=<n>] ";
	// lines of tasks running at once are never interleaved. nil discards.
	Log io.Writer
	// OnTaskDone, when set, is called once per task as it reaches its final
	// state (success, failed, skipped, upstream_failed), in that order,
	// from one goroutine.
	OnTaskDone func(TaskReport)
	// Sleep waits out a retry delay; it returns an error (and the task
	// fails) when ctx ends first. nil means a real timer honouring ctx.
	Sleep func(context.Context, time.Duration) error
	// Parallelism caps the tasks running at once; below 1 means 1.
	Parallelism int
	// KillGrace is passed to every Try (not positive: DefaultKillGrace).
	KillGrace time.Duration
	// Jitter returns the jitter in [0, 1) of each retry delay with
	// exponential backoff; nil means math/rand/v2's Float64.
	Jitter func() float64
	// HTTPClient sends the requests of HTTP tasks; nil means
	// http.DefaultClient.
	HTTPClient *http.Client
	// Events are the events the run receives, by key: a task that defers
	// waiting for one of these keys is continued at once with its
	// payload. A task waiting for another key is continued at its next
	// check (its After, or its deadline, which times it out); one with
	// neither fails, saying which event it waited for.
	Events map[string]json.RawMessage
	// Approver, when set, approves every Approval task at once under this
	// name; otherwise Approval tasks wait as event waits do (and fail
	// when they have no timeout).
	Approver string
	// Now reads the clock for deferrals; nil means time.Now.
	Now func() time.Time
}

// TaskReport is the final state of one task of a RunDAG run.
type TaskReport struct {
	TaskID string
	// State is success, failed, skipped or upstream_failed.
	State state.TaskState
	// TryNumber is the number of tries started (0 when the task never ran).
	TryNumber int
	// Duration is how long the last try ran (0 when the task never ran).
	Duration time.Duration
	// Err is the last try's error, or why the task did not run.
	Err string
}

// DAGResult is a finished RunDAG run.
type DAGResult struct {
	DAGID string
	RunID string
	// LogicalDate and the data interval [IntervalStart, IntervalEnd) the
	// run was given.
	LogicalDate   time.Time
	IntervalStart time.Time
	IntervalEnd   time.Time
	// State is success or failed, by state.RunOutcome over the leaf tasks;
	// failed as well when ctx was cancelled.
	State state.RunState
	// Tasks maps every task id to its report.
	Tasks map[string]TaskReport
	// Order lists the task ids in the order they reached their final state.
	Order []string
	// Calls are the call instances of callables the run made, in
	// creation order.
	Calls []CallReport
}

// MarshalJSON encodes the result in the form of CONTRACT §4 plus run_id
// and, for tasks that failed or did not run, their error:
//
//	{"dag_id": "…", "run_id": "…", "state": "success|failed",
//	 "tasks": {"<task_id>": {"state": "…", "try_number": N, "error": "…"}, …}}
func (r *DAGResult) MarshalJSON() ([]byte, error) {
	type task struct {
		State     state.TaskState `json:"state"`
		TryNumber int             `json:"try_number"`
		Error     string          `json:"error,omitempty"`
	}
	tasks := make(map[string]task, len(r.Tasks))
	for id, rep := range r.Tasks {
		tasks[id] = task{State: rep.State, TryNumber: rep.TryNumber, Error: rep.Err}
	}
	return json.Marshal(struct {
		DAGID string          `json:"dag_id"`
		RunID string          `json:"run_id"`
		State state.RunState  `json:"state"`
		Tasks map[string]task `json:"tasks"`
	}{r.DAGID, r.RunID, r.State, tasks})
}

// RunDAG runs every task of d once, in-process, in dependency order, as
// `trellis dags test` does, and records nothing. Tasks whose trigger rule
// is met (state.Decide) run concurrently up to opts.Parallelism, higher
// Priority first, then in topological order; a Branch skips the direct
// downstream tasks it does not follow (state.BranchSkips); failed tries
// are retried after state.RetryDelay while tries remain, and not after
// dag.Permanent; each try gets its task's Timeout; outputs set by a task
// are readable by the tasks after it.
//
// The run's params are d's Params overlaid by opts.Conf; its data interval
// is [logical date, next fire time after it) for a scheduled DAG and
// [logical date, logical date] for a manual one.
//
// A DAG that fails d.Validate (a cycle, a bad id, a nil function…) is an
// error listing every problem, and nothing runs. When ctx is cancelled,
// running tries are stopped (see Run), tasks that did not start are
// marked skipped, and RunDAG returns the failed result together with an
// error wrapping ctx's cause.
func RunDAG(ctx context.Context, d *dag.DAG, opts DAGOptions) (*DAGResult, error) {
	if d == nil {
		return nil, errors.New("run dag: no DAG given")
	}
	if problems := d.Validate(); len(problems) > 0 {
		msgs := make([]string, len(problems))
		for i, p := range problems {
			msgs[i] = p.String()
		}
		return nil, fmt.Errorf("run dag %q: the DAG is invalid:\n  %s", d.ID(), strings.Join(msgs, "\n  "))
	}
	tasks, added, err := topoOrder(d)
	if err != nil {
		return nil, fmt.Errorf("run dag %q: %w", d.ID(), err)
	}

	ld := opts.LogicalDate
	if ld.IsZero() {
		ld = time.Now().UTC()
	}
	start, end := ld, ld
	tt, err := d.ParsedSchedule()
	if err != nil {
		return nil, fmt.Errorf("run dag %q: %w", d.ID(), err)
	}
	if tt != nil {
		if next := tt.Next(ld); !next.IsZero() {
			end = next
		}
	}
	runID := opts.RunID
	if runID == "" {
		runID = "manual__" + ld.Format(time.RFC3339)
	}
	params := d.Params()
	if params == nil && len(opts.Conf) > 0 {
		params = map[string]any{}
	}
	maps.Copy(params, opts.Conf)

	r := &dagRunner{
		ctx:     ctx,
		opts:    opts,
		tasks:   tasks,
		added:   added,
		idx:     make(map[*dag.Task]int, len(tasks)),
		byID:    make(map[string]int, len(tasks)),
		st:      make([]state.TaskState, len(tasks)),
		reports: make([]TaskReport, len(tasks)),
		outputs: &memOutputs{vals: map[string]json.RawMessage{}},
		events:  make(chan taskEvent),
		log:     &sharedLog{w: opts.Log},
		info: dag.RunInfo{DAGID: d.ID(), RunID: runID, LogicalDate: ld,
			IntervalStart: start, IntervalEnd: end, Params: params},
		result: &DAGResult{DAGID: d.ID(), RunID: runID, LogicalDate: ld,
			IntervalStart: start, IntervalEnd: end, Tasks: make(map[string]TaskReport, len(tasks))},
	}
	if r.opts.Parallelism < 1 {
		r.opts.Parallelism = 1
	}
	if r.opts.Sleep == nil {
		r.opts.Sleep = sleep
	}
	if r.opts.Jitter == nil {
		r.opts.Jitter = rand.Float64
	}
	if r.log.w == nil {
		r.log.w = io.Discard
	}
	for i, t := range tasks {
		r.idx[t] = i
		r.byID[t.ID()] = i
		r.st[i] = state.None
		r.reports[i] = TaskReport{TaskID: t.ID(), State: state.None}
	}
	r.calls = newLocalCalls(r, d)
	r.run()
	r.result.Calls = r.calls.wait()
	return r.finishRun()
}

// topoOrder returns d's tasks in a topological order (Kahn's algorithm)
// and, for each, its position in d.Tasks(). Callables are left out: they
// run when called.
func topoOrder(d *dag.DAG) ([]*dag.Task, []int, error) {
	var all []*dag.Task
	for _, t := range d.Tasks() {
		if t.Kind() != dag.KindCallable {
			all = append(all, t)
		}
	}
	pos := make(map[*dag.Task]int, len(all))
	for i, t := range all {
		pos[t] = i
	}
	indeg := make([]int, len(all))
	for i, t := range all {
		for _, u := range t.Upstream() {
			if _, ok := pos[u]; !ok {
				return nil, nil, fmt.Errorf("task %q depends on %q, which is not a task of this DAG", t.ID(), u.ID())
			}
			indeg[i]++
		}
	}
	var queue, out []*dag.Task
	var added []int
	for i, t := range all {
		if indeg[i] == 0 {
			queue = append(queue, t)
		}
	}
	for len(queue) > 0 {
		t := queue[0]
		queue = queue[1:]
		out = append(out, t)
		added = append(added, pos[t])
		for _, dn := range t.Downstream() {
			j := pos[dn]
			if indeg[j]--; indeg[j] == 0 {
				queue = append(queue, dn)
			}
		}
	}
	if len(out) != len(all) {
		return nil, nil, errors.New("the tasks contain a cycle")
	}
	return out, added, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// taskEvent is a try that ended or a retry delay that passed.
type taskEvent struct {
	i        int
	out      Outcome
	dur      time.Duration
	retryDue bool
	err      error // of the retry wait
}

// dagRunner is the release loop of RunDAG. Only the goroutine of run
// touches its fields; tries and retry waits report through events.
type dagRunner struct {
	ctx     context.Context
	opts    DAGOptions
	info    dag.RunInfo
	tasks   []*dag.Task // topological order
	added   []int       // position of each task in d.Tasks()
	idx     map[*dag.Task]int
	byID    map[string]int
	st      []state.TaskState
	tries   []int
	reports []TaskReport
	result  *DAGResult
	outputs *memOutputs
	log     *sharedLog
	resume  []*dag.RunInfo // per task: how its next try continues a deferral
	calls   *localCalls

	ready    readyQueue
	work     []int // tasks to evaluate with their trigger rule
	running  int   // tries in flight
	waiting  int   // retry delays in flight
	events   chan taskEvent
	finished int
}

func (r *dagRunner) run() {
	r.tries = make([]int, len(r.tasks))
	r.resume = make([]*dag.RunInfo, len(r.tasks))
	r.ready.r = r
	for i := range r.tasks {
		r.work = append(r.work, i)
	}
	for {
		r.evaluate()
		for r.running < r.opts.Parallelism && r.ready.Len() > 0 && r.ctx.Err() == nil {
			i := heap.Pop(&r.ready).(int)
			if r.st[i] == state.Scheduled { // a branch may have skipped it since
				r.start(i)
			}
		}
		if r.running == 0 && r.waiting == 0 {
			return
		}
		r.handle(<-r.events)
	}
}

// evaluate applies the trigger rules of the tasks in the work list, and of
// the tasks their decisions affect.
func (r *dagRunner) evaluate() {
	for len(r.work) > 0 {
		i := r.work[0]
		r.work = r.work[1:]
		if r.st[i] != state.None {
			continue
		}
		t := r.tasks[i]
		ups := t.Upstream()
		u := state.Upstream{Total: len(ups)}
		for _, up := range ups {
			u = u.Add(r.st[r.idx[up]])
		}
		switch d := state.Decide(t.TriggerRule(), u); d {
		case state.Run:
			r.st[i] = state.Scheduled
			heap.Push(&r.ready, i)
		case state.Skip, state.FailUpstream:
			r.finish(i, d.State(), fmt.Sprintf("trigger rule %s: upstream %s", t.TriggerRule(), upstreamText(u)))
		}
	}
}

func upstreamText(u state.Upstream) string {
	return fmt.Sprintf("%d success, %d failed, %d skipped, %d upstream_failed of %d",
		u.Success, u.Failed, u.Skipped, u.UpstreamFailed, u.Total)
}

func (r *dagRunner) start(i int) {
	t := r.tasks[i]
	info := r.info
	if res := r.resume[i]; res != nil {
		info = *res // a deferral continued: same try
		r.resume[i] = nil
	} else {
		r.tries[i]++
	}
	r.st[i] = state.Running
	r.running++
	info.TaskID = t.ID()
	info.TryNumber = r.tries[i]
	w := r.log.forTry(t.ID(), info.TryNumber)
	try := Try{Task: t, Info: info, Log: w, Outputs: r.outputs,
		KillGrace: r.opts.KillGrace, HTTPClient: r.opts.HTTPClient, Now: r.opts.Now, Caller: r.calls.caller(nil)}
	go func() {
		begin := time.Now()
		out := Run(r.ctx, try)
		dur := time.Since(begin)
		w.flush()
		r.events <- taskEvent{i: i, out: out, dur: dur}
	}()
}

func (r *dagRunner) handle(ev taskEvent) {
	i, t := ev.i, r.tasks[ev.i]
	if ev.retryDue {
		r.waiting--
		if ev.err != nil {
			r.finish(i, state.Failed, fmt.Sprintf("%s; the retry wait ended: %v", r.reports[i].Err, ev.err))
			return
		}
		r.st[i] = state.Scheduled
		heap.Push(&r.ready, i)
		return
	}
	r.running--
	r.reports[i].Duration = ev.dur
	out := ev.out
	switch out.State {
	case state.Success:
		if out.Output != nil {
			r.outputs.set(t.ID(), out.Output)
		}
		r.finish(i, state.Success, "")
		if t.Kind() == dag.KindBranch {
			r.skipUnfollowed(t, out.Follow)
		}
	case state.Skipped:
		r.finish(i, state.Skipped, errText(out.Err))
	case state.Deferred:
		r.deferred(i, out.Deferral)
	default:
		r.reports[i].Err = errText(out.Err)
		if !out.Permanent && r.tries[i] <= t.Retries() && r.ctx.Err() == nil {
			r.st[i] = state.UpForRetry
			delay := state.RetryDelay(t.RetryDelay(), t.MaxBackoff(), r.tries[i], r.opts.Jitter())
			r.log.line(t.ID(), r.tries[i], fmt.Sprintf("try %d of %d failed; retrying in %v",
				r.tries[i], t.Retries()+1, delay))
			r.waiting++
			go func() {
				err := r.opts.Sleep(r.ctx, delay)
				r.events <- taskEvent{i: i, retryDue: true, err: err}
			}()
			return
		}
		r.finish(i, state.Failed, errText(out.Err))
	}
}

// deferred arranges how task i, whose try deferred with d, continues: at
// once with the payload of an event of opts.Events (or an approval by
// opts.Approver), else after a sleep until its next check; a wait that
// nothing in the run can end fails.
func (r *dagRunner) deferred(i int, d *Deferral) {
	t := r.tasks[i]
	info := r.info
	info.Resumed, info.DeferredState, info.TriggerTimeout = true, d.State, d.TriggerTimeout
	r.st[i] = state.Deferred
	var payload json.RawMessage
	if p, ok := r.opts.Events[d.Event]; ok && d.Event != "" {
		payload = p
	} else if t.Kind() == dag.KindApproval && r.opts.Approver != "" {
		payload, _ = json.Marshal(Approval{By: r.opts.Approver, At: r.now()})
	}
	r.log.line(t.ID(), r.tries[i], "deferred: "+d.String())
	if payload != nil {
		info.EventPayload = payload
		r.resume[i] = &info
		r.st[i] = state.Scheduled
		heap.Push(&r.ready, i)
		return
	}
	if d.NextCheckAt.IsZero() {
		why := "deferred until continued through the API, which `dags test` cannot do"
		if d.Event != "" {
			why = fmt.Sprintf("deferred waiting for event %q, which `dags test` did not receive (give it with --event %s=JSON)", d.Event, d.Event)
		}
		r.finish(i, state.Failed, why)
		return
	}
	r.resume[i] = &info
	r.waiting++
	wait := max(d.NextCheckAt.Sub(r.now()), 0)
	go func() {
		err := r.opts.Sleep(r.ctx, wait)
		r.events <- taskEvent{i: i, retryDue: true, err: err}
	}()
}

func (r *dagRunner) now() time.Time {
	if r.opts.Now != nil {
		return r.opts.Now()
	}
	return time.Now()
}

// skipUnfollowed marks skipped the direct downstream tasks of branch t
// that its choice leaves out and that have not started.
func (r *dagRunner) skipUnfollowed(t *dag.Task, follow []string) {
	skips, err := state.BranchSkips(t, follow)
	if err != nil { // Run has checked the choice already
		return
	}
	for _, id := range skips {
		j := r.byID[id]
		if r.st[j] == state.None || r.st[j] == state.Scheduled {
			r.finish(j, state.Skipped, fmt.Sprintf("not followed by branch %q", t.ID()))
		}
	}
}

// finish records the final state of task i and queues its downstream
// tasks for evaluation.
func (r *dagRunner) finish(i int, s state.TaskState, why string) {
	t := r.tasks[i]
	r.st[i] = s
	rep := &r.reports[i]
	rep.State = s
	rep.TryNumber = r.tries[i]
	if why != "" || s == state.Success {
		rep.Err = why
	}
	r.finished++
	r.result.Order = append(r.result.Order, t.ID())
	r.result.Tasks[t.ID()] = *rep
	if r.opts.OnTaskDone != nil {
		r.opts.OnTaskDone(*rep)
	}
	for _, dn := range t.Downstream() {
		r.work = append(r.work, r.idx[dn])
	}
}

func (r *dagRunner) finishRun() (*DAGResult, error) {
	cause := context.Cause(r.ctx)
	for i, s := range r.st {
		if s.Terminal() {
			continue
		}
		why := "not run: no trigger rule decision was reached"
		if cause != nil {
			why = "not run: the run was cancelled: " + cause.Error()
		}
		r.finish(i, state.Skipped, why)
	}
	var leaves []state.TaskState
	for i, t := range r.tasks {
		if len(t.Downstream()) == 0 {
			leaves = append(leaves, r.st[i])
		}
	}
	r.result.State = state.RunOutcome(leaves)
	if cause != nil {
		r.result.State = state.RunFailed
		return r.result, fmt.Errorf("run dag %q: cancelled: %w", r.result.DAGID, cause)
	}
	return r.result, nil
}

// readyQueue orders ready tasks by Priority (higher first), then by the
// order they were added to the DAG.
type readyQueue struct {
	r     *dagRunner
	items []int
}

func (q *readyQueue) Len() int { return len(q.items) }
func (q *readyQueue) Less(a, b int) bool {
	ia, ib := q.items[a], q.items[b]
	pa, pb := q.r.tasks[ia].Priority(), q.r.tasks[ib].Priority()
	if pa != pb {
		return pa > pb
	}
	return q.r.added[ia] < q.r.added[ib]
}
func (q *readyQueue) Swap(a, b int) { q.items[a], q.items[b] = q.items[b], q.items[a] }
func (q *readyQueue) Push(x any)    { q.items = append(q.items, x.(int)) }
func (q *readyQueue) Pop() any {
	n := len(q.items) - 1
	x := q.items[n]
	q.items = q.items[:n]
	return x
}

// memOutputs holds the outputs of a RunDAG run in memory.
type memOutputs struct {
	mu   sync.RWMutex
	vals map[string]json.RawMessage
}

func (m *memOutputs) set(taskID string, v json.RawMessage) {
	m.mu.Lock()
	m.vals[taskID] = v
	m.mu.Unlock()
}

// SetOutput is never called: Run returns a try's output in its Outcome,
// and RunDAG records it with set.
func (m *memOutputs) SetOutput([]byte) error {
	return errors.New("outputs are recorded from the outcome of a try")
}

// Output returns the output of taskID, or dag.ErrNoOutput.
func (m *memOutputs) Output(taskID string) ([]byte, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	v, ok := m.vals[taskID]
	if !ok {
		return nil, fmt.Errorf("output of task %q: %w", taskID, dag.ErrNoOutput)
	}
	return v, nil
}
