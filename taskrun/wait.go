package taskrun

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// ErrWaitTimeout is the cause of a waiting task whose deadline passed
// before it was continued.
var ErrWaitTimeout = errors.New("the wait timed out")

// Environment of a Shell try that defers or continues.
const (
	// EnvDefer names an empty file a Shell command may write a ShellWait
	// to (as JSON) before exiting with dag.ShellDeferExitCode.
	EnvDefer = "TRELLIS_DEFER"
	// EnvResumed is "1" when the try continues a deferral.
	EnvResumed = "TRELLIS_RESUMED"
	// EnvDeferredState holds the state saved by the last deferral (JSON).
	EnvDeferredState = "TRELLIS_DEFERRED_STATE"
	// EnvEventPayload holds the payload that continued the task (JSON).
	EnvEventPayload = "TRELLIS_EVENT_PAYLOAD"
)

// ShellWait is what a Shell command writes to $TRELLIS_DEFER: the JSON
// form of dag.Wait, durations as Go duration strings ("30s", "6h").
type ShellWait struct {
	State   json.RawMessage `json:"state,omitempty"`
	Event   string          `json:"event,omitempty"`
	After   string          `json:"after,omitempty"`
	Timeout string          `json:"timeout,omitempty"`
}

// Deferral is what a deferred try waits for, with absolute times.
type Deferral struct {
	// State is the saved state as JSON (nil = none).
	State json.RawMessage
	// Event is the key of the event that continues the task ("" = none).
	Event string
	// NextCheckAt is when the task is continued without an event: its
	// After or its deadline, whichever comes first (zero = never).
	NextCheckAt time.Time
	// TriggerTimeout is the deadline of the wait (zero = none).
	TriggerTimeout time.Time

	after, timeout time.Duration // as the task asked, before deferral resolves them
}

func (d *Deferral) String() string {
	var parts []string
	if d.Event != "" {
		parts = append(parts, fmt.Sprintf("event %q", d.Event))
	}
	if !d.NextCheckAt.IsZero() {
		parts = append(parts, "next check "+d.NextCheckAt.UTC().Format(time.RFC3339Nano))
	}
	if !d.TriggerTimeout.IsZero() {
		parts = append(parts, "timeout "+d.TriggerTimeout.UTC().Format(time.RFC3339Nano))
	}
	if len(parts) == 0 {
		return "until continued"
	}
	return strings.Join(parts, ", ")
}

func (t Try) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// waitingFn returns the function a Resumable, Sensor or Approval task runs
// for the try described by info.
func waitingFn(task *dag.Task, info dag.RunInfo) func(*dag.Context) error {
	switch task.Kind() {
	case dag.KindResumable:
		if info.Resumed {
			return task.Steps().Continue
		}
		return task.Steps().Start
	case dag.KindSensor:
		check := task.SensorFn()
		if check == nil {
			return nil
		}
		return func(c *dag.Context) error {
			ok, err := check(c)
			switch {
			case err != nil:
				return err
			case ok:
				return nil
			}
			return c.Defer(dag.Wait{After: task.PokeInterval()})
		}
	case dag.KindApproval:
		return func(c *dag.Context) error { return approve(c, task) }
	}
	return nil
}

// Approval is the payload that continues an Approval task and, once
// accepted, its output.
type Approval struct {
	// Approved is false to reject (the task fails); absent means true.
	Approved *bool `json:"approved,omitempty"`
	// By names who approved or rejected.
	By string `json:"approved_by"`
	// At is when (set by the API).
	At      time.Time `json:"approved_at"`
	Comment string    `json:"comment,omitempty"`
}

// approve is the body of an Approval task: wait first, then check the
// payload it was continued with.
func approve(c *dag.Context, task *dag.Task) error {
	if !c.Resumed() {
		return c.Defer(dag.Wait{})
	}
	var a Approval
	if err := c.EventPayload(&a); err != nil {
		return dag.Permanent(fmt.Errorf("approval %q was continued without an approval payload: %w", task.ID(), err))
	}
	if a.By == "" {
		return dag.Permanent(fmt.Errorf("approval %q was continued without approved_by", task.ID()))
	}
	if ap := task.Approvers(); len(ap) > 0 && !slices.Contains(ap, a.By) {
		return dag.Permanent(fmt.Errorf("approval %q: %q is not one of the approvers %v", task.ID(), a.By, ap))
	}
	if a.Approved != nil && !*a.Approved {
		return dag.Permanent(fmt.Errorf("rejected by %s: %s", a.By, a.Comment))
	}
	yes := true
	a.Approved = &yes
	c.Logger().Info("approved", "by", a.By, "at", a.At.Format(time.RFC3339Nano))
	return c.SetOutput(a)
}

// waitTimedOut returns the outcome of a try that continues a wait whose
// deadline has passed without an event: failed without retries, or
// skipped with SoftFail. The task's code is not run.
func waitTimedOut(t *Try, now time.Time) (Outcome, bool) {
	if t.Task == nil || !t.Info.WaitTimedOut(now) || t.Info.EventPayload != nil {
		return Outcome{}, false
	}
	err := fmt.Errorf("%w at %s", ErrWaitTimeout, t.Info.TriggerTimeout.UTC().Format(time.RFC3339Nano))
	if t.Task.SoftFail() {
		return Outcome{State: state.Skipped, Err: dag.Skip(err.Error())}, true
	}
	return Outcome{State: state.Failed, Permanent: true, Err: err}, true
}

// deferral resolves what a deferred try asked for into absolute times:
// a Sensor or Approval keeps the deadline of its first wait; a Shell
// command that named no wait checks again after its PokeInterval; the
// next check is never after the deadline, so a timeout is noticed by the
// same sweep that continues polls.
func deferral(t *Try, d Deferral, now time.Time) Deferral {
	out := d
	task := t.Task
	after, timeout := d.after, d.timeout
	switch task.Kind() {
	case dag.KindSensor:
		timeout = task.SensorTimeout()
	case dag.KindApproval:
		timeout = task.ApprovalTimeout()
	case dag.KindShell:
		if after == 0 && d.Event == "" {
			after = task.PokeInterval()
		}
	}
	keep := task.Kind() == dag.KindSensor || task.Kind() == dag.KindApproval
	switch {
	case keep && t.Info.Resumed && !t.Info.TriggerTimeout.IsZero():
		out.TriggerTimeout = t.Info.TriggerTimeout
	case timeout > 0:
		out.TriggerTimeout = now.Add(timeout)
	}
	if after > 0 {
		out.NextCheckAt = now.Add(after)
	}
	if !out.TriggerTimeout.IsZero() && (out.NextCheckAt.IsZero() || out.TriggerTimeout.Before(out.NextCheckAt)) {
		out.NextCheckAt = out.TriggerTimeout
	}
	return out
}

// readShellWait returns the deferral a Shell command asked for in its
// $TRELLIS_DEFER file (an empty file: check again after PokeInterval).
func readShellWait(path string) (*Deferral, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("shell: read $%s: %w", EnvDefer, err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return &Deferral{}, nil
	}
	if len(data) > MaxShellOutput {
		return nil, fmt.Errorf("shell: the wait written to $%s is over %d bytes", EnvDefer, MaxShellOutput)
	}
	var sw ShellWait
	if err := json.Unmarshal(data, &sw); err != nil {
		return nil, fmt.Errorf("shell: the wait written to $%s is not a JSON object with state, event, after and timeout: %v", EnvDefer, err)
	}
	w := dag.Wait{Event: sw.Event}
	for _, f := range []struct {
		name string
		s    string
		into *time.Duration
	}{{"after", sw.After, &w.After}, {"timeout", sw.Timeout, &w.Timeout}} {
		if f.s == "" {
			continue
		}
		v, err := time.ParseDuration(f.s)
		if err != nil {
			return nil, fmt.Errorf("shell: %q of the wait written to $%s is not a duration: %v", f.name, EnvDefer, err)
		}
		*f.into = v
	}
	de, err := dag.CheckWait(w)
	if err != nil {
		return nil, fmt.Errorf("shell: the wait written to $%s: %w", EnvDefer, err)
	}
	d := &Deferral{Event: de.Event, after: de.After, timeout: de.Timeout}
	if len(sw.State) > 0 {
		d.State = sw.State
	}
	return d, nil
}

// waitEnv returns the variables of a try that continues a deferral.
func waitEnv(info dag.RunInfo) []string {
	if !info.Resumed {
		return nil
	}
	env := []string{EnvResumed + "=1"}
	if info.DeferredState != nil {
		env = append(env, EnvDeferredState+"="+string(info.DeferredState))
	}
	if info.EventPayload != nil {
		env = append(env, EnvEventPayload+"="+string(info.EventPayload))
	}
	return env
}
