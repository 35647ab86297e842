// Package taskrun runs one try of a task — a Func, Branch, Shell or HTTP
// task — and, for `trellis dags test`, a whole DAG in-process.
//
// Run is shared by the worker processes of the executor and by the local
// DAG runner: it turns a try into an Outcome (success, failed or skipped,
// with the task's output and, for a Branch, the tasks to follow) and writes
// everything the task prints or logs into the try's log. It never records
// anything itself; the caller stores the outcome.
package taskrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// DefaultKillGrace is the grace period used when Try.KillGrace is not
// positive.
const DefaultKillGrace = 5 * time.Second

// ErrTimeout is the cause of a try that exceeded its task's Timeout; the
// Outcome's Err wraps it and TimedOut is set.
var ErrTimeout = errors.New("task timed out")

// Try is one try of one task.
type Try struct {
	// Task is the task to run.
	Task *dag.Task
	// Info identifies the run and the try (TryNumber is 1 on the first).
	Info dag.RunInfo
	// Log receives everything the try writes: the Context.Logger() lines
	// as slog text, a Shell command's stdout and stderr as they are
	// written, panics with their stack trace and a line on how the try
	// ended. Run serialises its own writes to Log and stops writing when
	// it returns. nil discards the log.
	Log io.Writer
	// Outputs reads the outputs of other tasks of the run for
	// Context.Output. Run only reads through it: the try's own output is
	// returned in Outcome.Output and never written to Outputs, so the
	// caller stores it together with the try's result. nil means no task
	// output can be read.
	Outputs dag.OutputIO
	// KillGrace is how long a try gets to stop after its timeout or the
	// cancellation of ctx: a Shell command's process group receives
	// SIGTERM and, after KillGrace, SIGKILL; a Func or Branch that ignores
	// its context is abandoned after KillGrace. Not positive means
	// DefaultKillGrace.
	KillGrace time.Duration
	// Env is added to the environment of the try (see TaskEnv) before the
	// task's own variables; the executor passes its pool mark.
	Env []string
	// HTTPClient sends the request of an HTTP task; nil means
	// http.DefaultClient. The task's Timeout applies in any case.
	HTTPClient *http.Client
	// Now reads the clock for deferrals (next check, deadlines); nil
	// means time.Now.
	Now func() time.Time
	// Arguments are the JSON arguments of a call of a callable task.
	Arguments json.RawMessage
	// Caller records the calls the task makes (dag.Callable.Call) and
	// waits for them; nil means the task cannot call callables.
	Caller dag.Caller
	// Limit bounds the try as the task's Timeout does (a timeout when it
	// passes) when it is shorter; not positive means no bound but the
	// task's. A poke loop bounds each check so its batch is recorded
	// within its lease.
	Limit time.Duration
}

// Outcome is how a try ended.
type Outcome struct {
	// State is success, failed, skipped or deferred.
	State state.TaskState
	// Deferral, when State is deferred, is what the task waits for.
	Deferral *Deferral
	// Permanent is set for a failure that must not be retried: the task
	// returned dag.Permanent, or it cannot run at all (no function, a
	// malformed HTTP request).
	Permanent bool
	// TimedOut is set when the try exceeded its task's Timeout; Err then
	// wraps ErrTimeout. A timeout is retried like any other failure.
	TimedOut bool
	// Abandoned is set when a Func or Branch ignored its context for
	// KillGrace after its timeout or cancellation: its goroutine was left
	// running. The executor counts these to recycle its worker process.
	Abandoned bool
	// Signaled is the signal that killed a Shell command when taskrun did
	// not send it (e.g. a SIGTERM to the whole control group of a service
	// being stopped); nil otherwise.
	Signaled os.Signal
	// Err says why the try failed or was skipped (a *dag.SkipError for a
	// skip); nil on success.
	Err error
	// Output is the task's output as JSON — the last value passed to
	// Context.SetOutput, the JSON a Shell command wrote to $TRELLIS_OUTPUT,
	// or the body of an HTTP task's response — and is
	// only set when State is success: outputs of failed or skipped tries
	// are dropped. nil when there is none.
	Output json.RawMessage
	// Follow lists, for a Branch task that succeeded, the direct
	// downstream tasks to follow (never nil then; duplicates removed).
	// nil for every other kind and outcome.
	Follow []string
}

// Run runs one try of t.Task and reports how it ended. It never panics on
// a bad task or a panicking one, and it always returns within the task's
// Timeout (when set) plus t.KillGrace, or within KillGrace of ctx being
// cancelled, whatever the task does:
//
//   - Func and Branch run in a goroutine with a *dag.Context whose deadline
//     is the task's Timeout and whose Logger() writes slog text lines into
//     Log. nil is success, dag.Skip skipped, dag.Permanent a permanent
//     failure, any other error or a panic a failure (the panic value and
//     stack trace go to Log). A Branch's ids must be direct downstream
//     tasks (the error names the first that is not). A function that
//     ignores its context past the deadline (or past the cancellation of
//     ctx) is abandoned after KillGrace: Run returns a failed outcome with
//     Abandoned set and the goroutine is left running, writing nowhere.
//     Containing it is the job of the worker process it runs in (the
//     executor recycles such workers; `dags test` exits).
//   - Shell runs `/bin/sh -c <command>` in its own process group with the
//     environment of TaskEnv — never the whole of the process's — including TRELLIS_DAG_ID, TRELLIS_RUN_ID,
//     TRELLIS_TASK_ID, TRELLIS_TRY_NUMBER, TRELLIS_LOGICAL_DATE and
//     TRELLIS_DATA_INTERVAL_START/END (RFC 3339); stdout and stderr are
//     copied into Log as they are written. Exit 0 is success, 99 skipped,
//     anything else failed. JSON written to the file named by
//     TRELLIS_OUTPUT is the output of a successful try. On timeout or cancellation the group gets
//     SIGTERM, then SIGKILL after KillGrace; once the shell exits, what is
//     left of its group is killed, so background children neither outlive
//     the task nor keep Run waiting on the output pipe.
//   - HTTP sends the request (Method default GET, Header, Body) with the
//     task's Timeout; a 2xx response is success and its body, up to
//     MaxHTTPOutput bytes, the output (the JSON itself when the body is
//     JSON, else a JSON string); other statuses fail with the status and
//     the start of the body.
//
// A try whose context is cancelled (not timed out) and that still returns
// on its own keeps its result; one that had to be stopped is failed with
// the context's cause.
func Run(ctx context.Context, t Try) Outcome { return run(ctx, t) }

// Poke runs one poke of a Sensor for a worker's poke loop: its check, as
// Run runs the try of a Sensor continued by time (the deadline's outcome
// when it has passed; timeouts, panics and errors as Run), except that a
// "not yet" writes nothing to the log: a poke loop drops the log of such
// a poke and keeps only the one that ends the wait.
func Poke(ctx context.Context, t Try) Outcome {
	var out Outcome
	Pokes(ctx, 1, 1, func(int) Try { return t }, func(_ int, o Outcome) { out = o })
	return out
}

func run(ctx context.Context, t Try) Outcome {
	logw := newTryLog(t.Log)
	defer logw.close()
	logger := slog.New(slog.NewTextHandler(logw.records(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	if t.Task == nil {
		return failed(errors.New("run try: no task given"), true)
	}
	grace := t.KillGrace
	if grace <= 0 {
		grace = DefaultKillGrace
	}
	timeout := t.Task.Timeout()
	if t.Limit > 0 && (timeout <= 0 || t.Limit < timeout) {
		timeout = t.Limit
	}
	tctx, cancel := taskContext(ctx, timeout)
	defer cancel()

	now := t.now()
	if out, ok := waitTimedOut(&t, now); ok {
		logger.Warn("the wait timed out", "deadline", t.Info.TriggerTimeout.Format(time.RFC3339Nano))
		return out
	}
	var out Outcome
	switch t.Task.Kind() {
	case dag.KindFunc, dag.KindBranch, dag.KindCallable, dag.KindResumable, dag.KindSensor, dag.KindApproval:
		out = runFunc(tctx, t, logw.records(), logger, grace)
	case dag.KindShell:
		out = runShell(tctx, t, logw, logger, grace)
	case dag.KindHTTP:
		out = runHTTP(tctx, t, logger)
	default:
		out = failed(fmt.Errorf("task %q has unknown kind %q", t.Task.ID(), t.Task.Kind()), true)
	}
	if out.State == state.Deferred {
		d := deferral(&t, *out.Deferral, now)
		out.Deferral = &d
	}
	logOutcome(logger, out, false)
	return out
}

// logOutcome writes the line that says how a try ended; with quietDefer
// a deferral writes none (a poke's "not yet").
func logOutcome(logger *slog.Logger, out Outcome, quietDefer bool) {
	switch {
	case out.State == state.Deferred && quietDefer:
	case out.State == state.Deferred:
		logger.Info("task deferred", "wait", out.Deferral.String())
	case out.State == state.Success:
		logger.Info("task succeeded")
	case out.State == state.Skipped:
		logger.Info("task skipped", "reason", errText(out.Err))
	default:
		logger.Error("task failed", "error", errText(out.Err),
			"permanent", out.Permanent, "timed_out", out.TimedOut)
	}
}

// taskContext bounds ctx by the task's timeout; the deadline's cause
// wraps ErrTimeout.
func taskContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, timeout, timeoutCause(timeout))
}

// timeoutCause is the cause of a try's deadline: ErrTimeout after the
// duration, its text made only when read.
type timeoutCause time.Duration

func (c timeoutCause) Error() string { return fmt.Sprintf("%v after %v", ErrTimeout, time.Duration(c)) }
func (c timeoutCause) Unwrap() error { return ErrTimeout }

// stopCause returns why tctx is done: (cause, true) for the task's
// timeout, (cause, false) for a cancellation of the parent context.
func stopCause(tctx context.Context) (error, bool) {
	cause := context.Cause(tctx)
	return cause, errors.Is(cause, ErrTimeout)
}

func failed(err error, permanent bool) Outcome {
	return Outcome{State: state.Failed, Err: err, Permanent: permanent}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// funcResult is what the goroutine running a Func or Branch reports.
type funcResult struct {
	err     error
	follow  []string
	expired bool // the try's context was done when the function returned
}

// runFunc runs a Func, Branch, Callable or waiting task's function.
func runFunc(tctx context.Context, t Try, logw io.Writer, logger *slog.Logger, grace time.Duration) Outcome {
	task := t.Task
	fn, branch, call := task.Fn(), task.BranchFn(), task.CallFn()
	if task.Waits() {
		fn = waitingFn(task, t.Info)
	}
	if (fn == nil && (task.Kind() == dag.KindFunc || task.Waits())) || (task.Kind() == dag.KindBranch && branch == nil) ||
		(task.Kind() == dag.KindCallable && call == nil) {
		return failed(fmt.Errorf("task %q has no function", task.ID()), true)
	}
	outs := &tryOutputs{under: t.Outputs, self: t.Info.TaskID}
	defer outs.close()
	// The environment is made if the function reads it (Getenv): most
	// never do, and it is a good part of a short try's cost.
	c := dag.NewLazyEnvContext(tctx, t.Info, logger, outs, func() []string { return TaskEnv(t, nil, nil) })
	if t.Caller != nil {
		c = c.WithCaller(t.Caller)
	}
	var result json.RawMessage

	done := make(chan funcResult, 1)
	go func() {
		var r funcResult
		defer func() {
			if p := recover(); p != nil {
				fmt.Fprintf(logw, "panic: %v\n\n%s\n", p, debug.Stack())
				r = funcResult{err: fmt.Errorf("panic: %v", p)}
			}
			r.expired = tctx.Err() != nil
			done <- r
		}()
		switch {
		case call != nil:
			result, r.err = call(c, t.Arguments)
		case branch != nil:
			r.follow, r.err = branch(c)
		default:
			r.err = fn(c)
		}
	}()

	var r funcResult
	select {
	case r = <-done:
	case <-tctx.Done():
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case r = <-done:
		case <-timer.C:
			cause, timedOut := stopCause(tctx)
			return Outcome{State: state.Failed, TimedOut: timedOut, Abandoned: true, Err: fmt.Errorf(
				"%w; the function ignored its context for %v and was abandoned", cause, grace)}
		}
	}
	if r.expired {
		if cause, timedOut := stopCause(tctx); timedOut {
			err := cause
			if r.err != nil {
				err = fmt.Errorf("%w (task returned: %v)", cause, r.err)
			}
			return Outcome{State: state.Failed, TimedOut: true, Err: err}
		}
	}
	out := classify(r.err)
	if out.State != state.Success {
		return out
	}
	if task.Kind() == dag.KindBranch {
		follow := dedupe(r.follow)
		if _, err := state.BranchSkips(task, follow); err != nil {
			return failed(err, false)
		}
		out.Follow = follow
	}
	out.Output = outs.value()
	if call != nil {
		// A call's result is its output.
		out.Output = result
	}
	return out
}

// classify maps a task's returned error to an outcome.
func classify(err error) Outcome {
	if d, ok := dag.IsDefer(err); ok {
		return Outcome{State: state.Deferred, Deferral: &Deferral{State: d.State, Event: d.Event,
			after: d.After, timeout: d.Timeout}}
	}
	switch {
	case err == nil:
		return Outcome{State: state.Success}
	case dag.IsPermanent(err):
		return failed(err, true)
	}
	if _, ok := dag.IsSkip(err); ok {
		return Outcome{State: state.Skipped, Err: err}
	}
	return failed(err, false)
}

func dedupe(ids []string) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
