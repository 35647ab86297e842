package dag

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Kinds of the tasks that wait without holding a worker.
const (
	// KindResumable runs Steps: Start, then Continue after each deferral.
	KindResumable Kind = "resumable"
	// KindSensor calls a check function every PokeInterval until it
	// reports true.
	KindSensor Kind = "sensor"
	// KindApproval waits until a person continues it through the API.
	KindApproval Kind = "approval"
)

// Defaults of the waiting tasks (Airflow's for sensors).
const (
	DefaultPokeInterval  = time.Minute
	DefaultSensorTimeout = 7 * 24 * time.Hour
)

// ShellDeferExitCode is the exit status with which a Shell command asks
// to be run again later instead of succeeding or failing: the try ends
// deferred, holding no worker slot, and the command runs again after its
// PokeInterval, or when the event named in $TRELLIS_DEFER (a JSON Wait,
// see ShellWait) arrives.
const ShellDeferExitCode = 100

// MaxEventKey is the longest event key accepted, in bytes.
const MaxEventKey = 250

// Steps are the two functions of a Resumable task. Start runs on the
// task's first try; Continue runs each time the task is continued after a
// deferral (its time came, its event arrived, or someone continued it
// through the API). Either may return c.Defer to wait again, nil to
// succeed, or an error to fail.
type Steps struct {
	Start    func(*Context) error
	Continue func(*Context) error
}

// Wait says what a deferred task waits for. At least one of Event, After
// and Timeout should be set; a Wait with none waits until the task is
// continued through the API.
type Wait struct {
	// State is saved (as JSON) with the deferred task and read back by the
	// next step with Context.DeferredState.
	State any
	// Event is the key of the event that continues the task (POST
	// /api/v1/events); its payload is read with Context.EventPayload. An
	// event with this key received while the task was not yet waiting,
	// and not yet expired, continues it at once.
	Event string
	// After continues the task after this long even without an event (a
	// poll). 0 = only the event, the API or the timeout continue it.
	After time.Duration
	// Timeout bounds the wait from this deferral: past it the task fails
	// (or is skipped with SoftFail). 0 = no bound.
	Timeout time.Duration
}

// DeferError ends a try as deferred. Create it with Context.Defer; a Shell
// command defers by exiting with ShellDeferExitCode.
type DeferError struct {
	// State is the saved state as JSON (nil = none).
	State json.RawMessage
	// Event, After and Timeout are those of the Wait.
	Event   string
	After   time.Duration
	Timeout time.Duration
}

func (e *DeferError) Error() string {
	switch {
	case e.Event != "" && e.After > 0:
		return fmt.Sprintf("deferred: waiting for event %q, checking again after %v", e.Event, e.After)
	case e.Event != "":
		return fmt.Sprintf("deferred: waiting for event %q", e.Event)
	case e.After > 0:
		return fmt.Sprintf("deferred: checking again after %v", e.After)
	}
	return "deferred: waiting to be continued"
}

// IsDefer reports whether err (or an error it wraps) is a deferral.
func IsDefer(err error) (*DeferError, bool) {
	var d *DeferError
	if errors.As(err, &d) {
		return d, true
	}
	return nil, false
}

// CheckWait returns what is wrong with w (nil when it is usable): a
// negative duration, a bad event key, a state that does not encode as
// JSON.
func CheckWait(w Wait) (*DeferError, error) {
	if w.After < 0 {
		return nil, fmt.Errorf("defer: After must not be negative, got %v", w.After)
	}
	if w.Timeout < 0 {
		return nil, fmt.Errorf("defer: Timeout must not be negative, got %v", w.Timeout)
	}
	if w.Event != "" {
		if err := CheckEventKey(w.Event); err != nil {
			return nil, fmt.Errorf("defer: %w", err)
		}
	}
	d := &DeferError{Event: w.Event, After: w.After, Timeout: w.Timeout}
	if w.State != nil {
		b, err := json.Marshal(w.State)
		if err != nil {
			return nil, fmt.Errorf("defer: State is not JSON-encodable: %w", err)
		}
		d.State = b
	}
	return d, nil
}

// CheckEventKey returns what is wrong with an event key: empty, longer
// than MaxEventKey bytes, or holding control characters.
func CheckEventKey(key string) error {
	switch {
	case key == "":
		return errors.New("event key is empty")
	case len(key) > MaxEventKey:
		return fmt.Errorf("event key is %d bytes long, more than %d", len(key), MaxEventKey)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("event key %q holds a control character", key)
		}
	}
	return nil
}

// Defer ends the try as deferred: it returns an error the task must
// return as is (return c.Defer(...)). The task then holds no worker slot
// until w's event arrives, its After passes, it is continued through the
// API or its Timeout passes. A deferral does not use a retry and keeps the
// try number. A bad Wait (negative durations, a bad event key, a state
// that does not encode) fails the task without retries.
func (c *Context) Defer(w Wait) error {
	d, err := CheckWait(w)
	if err != nil {
		return Permanent(err)
	}
	return d
}

// Errors of DeferredState and EventPayload.
var (
	// ErrNoDeferredState: the task was not deferred with a State.
	ErrNoDeferredState = errors.New("no deferred state")
	// ErrNoEventPayload: the task was not continued by an event or by
	// the API with a payload.
	ErrNoEventPayload = errors.New("no event payload")
)

// Resumed reports whether this try continues a deferral (Continue runs)
// rather than starting the task.
func (c *Context) Resumed() bool { return c.info.Resumed }

// DeferredState decodes into into the State saved by the last deferral;
// the error wraps ErrNoDeferredState when there is none.
func (c *Context) DeferredState(into any) error {
	if len(c.info.DeferredState) == 0 {
		return ErrNoDeferredState
	}
	if err := json.Unmarshal(c.info.DeferredState, into); err != nil {
		return fmt.Errorf("read deferred state of task %q: %w", c.info.TaskID, err)
	}
	return nil
}

// EventPayload decodes into into the payload of the event (or API call)
// that continued the task; the error wraps ErrNoEventPayload when it was
// continued by time or had no payload.
func (c *Context) EventPayload(into any) error {
	if len(c.info.EventPayload) == 0 {
		return ErrNoEventPayload
	}
	if err := json.Unmarshal(c.info.EventPayload, into); err != nil {
		return fmt.Errorf("read event payload of task %q: %w", c.info.TaskID, err)
	}
	return nil
}

// WaitTimedOut reports whether this try runs because the deadline of the
// last deferral passed (the runtime then fails or soft-fails the task
// without calling its steps).
func (i RunInfo) WaitTimedOut(now time.Time) bool {
	return i.Resumed && !i.TriggerTimeout.IsZero() && !now.Before(i.TriggerTimeout)
}

// Resumable adds a task that runs steps.Start, may defer itself with
// c.Defer, and is then continued by steps.Continue (which may defer
// again). The task holds no worker slot while deferred.
func (d *DAG) Resumable(id string, steps Steps, opts ...TaskOption) *Task {
	t := d.addTask(id, KindResumable, opts)
	t.setM().steps = steps
	if steps.Start == nil {
		d.addIssue(id, "Resumable has a nil Start step")
	}
	if steps.Continue == nil {
		d.addIssue(id, "Resumable has a nil Continue step")
	}
	return t
}

// Sensor adds a task that calls check every PokeInterval (default 1 min)
// until it returns true (success) or an error (a failure, retried as
// usual), holding no worker slot between pokes. Past SensorTimeout
// (default 7 days) from the first poke it fails, or is skipped with
// SoftFail.
func (d *DAG) Sensor(id string, check func(*Context) (bool, error), opts ...TaskOption) *Task {
	t := d.addTask(id, KindSensor, opts)
	t.setM().sensor = check
	if check == nil {
		d.addIssue(id, "Sensor has a nil check function")
	}
	return t
}

// Approval adds a task that waits, holding no worker slot, until a person
// continues it through the API (POST …/taskInstances/{task_id}/continue);
// it succeeds with an output recording who approved and when, or fails
// when the payload says "approved": false. Approvers restricts who may
// approve; past ApprovalTimeout it fails (or is skipped with SoftFail).
func (d *DAG) Approval(id string, opts ...TaskOption) *Task {
	return d.addTask(id, KindApproval, opts)
}

// PokeInterval sets how often a Sensor checks (default 1 min), and when a
// Shell task that exits with ShellDeferExitCode without naming a wait
// runs again.
func PokeInterval(d time.Duration) TaskOption {
	return func(t *Task) { m := t.setM(); m.pokeInterval = d; m.waitOpts |= optPoke }
}

// SensorTimeout bounds how long a Sensor pokes, from its first poke
// (default 7 days).
func SensorTimeout(d time.Duration) TaskOption {
	return func(t *Task) { m := t.setM(); m.sensorTimeout = d; m.waitOpts |= optSensorTimeout }
}

// SoftFail makes a waiting task (Sensor, Resumable, Approval, deferred
// Shell) whose wait times out end skipped instead of failed.
func SoftFail() TaskOption {
	return func(t *Task) { m := t.setM(); m.softFail = true; m.waitOpts |= optSoftFail }
}

// Approvers restricts who may approve an Approval task: the name given in
// the continue call, or the API token's identity, must be one of names.
func Approvers(names ...string) TaskOption {
	return func(t *Task) { m := t.setM(); m.approvers = append(m.approvers, names...); m.waitOpts |= optApprovers }
}

// ApprovalTimeout bounds how long an Approval task waits (0, the default,
// waits until approved).
func ApprovalTimeout(d time.Duration) TaskOption {
	return func(t *Task) { m := t.setM(); m.approvalTimeout = d; m.waitOpts |= optApprovalTimeout }
}

// Which waiting options a task was given, to report those given to a kind
// they do not apply to.
const (
	optPoke = 1 << iota
	optSensorTimeout
	optSoftFail
	optApprovers
	optApprovalTimeout
)

// Steps returns the steps of a Resumable task (zero otherwise).
func (t *Task) Steps() Steps { return t.m().steps }

// SensorFn returns the check function of a Sensor task (nil otherwise).
func (t *Task) SensorFn() func(*Context) (bool, error) { return t.m().sensor }

// PokeInterval returns the interval between a Sensor's pokes.
func (t *Task) PokeInterval() time.Duration {
	if t.m().waitOpts&optPoke == 0 {
		return DefaultPokeInterval
	}
	return t.m().pokeInterval
}

// SensorTimeout returns how long a Sensor pokes at most.
func (t *Task) SensorTimeout() time.Duration {
	if t.m().waitOpts&optSensorTimeout == 0 {
		return DefaultSensorTimeout
	}
	return t.m().sensorTimeout
}

// SoftFail reports whether a timed-out wait skips the task.
func (t *Task) SoftFail() bool { return t.m().softFail }

// Approvers returns who may approve an Approval task (nil = anyone).
func (t *Task) Approvers() []string { return slices.Clone(t.m().approvers) }

// ApprovalTimeout returns how long an Approval task waits (0 = no bound).
func (t *Task) ApprovalTimeout() time.Duration { return t.m().approvalTimeout }

// Waits reports whether the task is of a kind that defers itself
// (Resumable, Sensor, Approval); Shell tasks may defer too.
func (t *Task) Waits() bool {
	return t.Kind() == KindResumable || t.Kind() == KindSensor || t.Kind() == KindApproval
}

// ScheduleOnEvent makes the DAG get a run for every event with key (POST
// /api/v1/events), created in the transaction that records the event; the
// run's conf is the event's payload (an object as is, any other value as
// {"payload": value}). It may be combined with a time Schedule.
func ScheduleOnEvent(key string) Option {
	return func(d *DAG) { d.eventKey = key; d.eventKeySet = true }
}

// EventKey returns the key given to ScheduleOnEvent ("" = none).
func (d *DAG) EventKey() string { return d.eventKey }

// validateWait adds the problems of t's waiting options.
func (t *Task) validateWait(problem func(format string, args ...any)) {
	wrongKind := func(name string, kinds ...Kind) {
		problem("%s applies to %s tasks, not to a %s task", name, kindList(kinds), t.Kind())
	}
	if t.m().waitOpts&optPoke != 0 {
		if t.Kind() != KindSensor && t.Kind() != KindShell {
			wrongKind("PokeInterval", KindSensor, KindShell)
		} else if t.m().pokeInterval <= 0 {
			problem("PokeInterval must be positive, got %v", t.m().pokeInterval)
		}
	}
	if t.m().waitOpts&optSensorTimeout != 0 {
		if t.Kind() != KindSensor {
			wrongKind("SensorTimeout", KindSensor)
		} else if t.m().sensorTimeout <= 0 {
			problem("SensorTimeout must be positive, got %v", t.m().sensorTimeout)
		}
	}
	if t.m().waitOpts&optSoftFail != 0 && !t.Waits() && t.Kind() != KindShell {
		wrongKind("SoftFail", KindSensor, KindResumable, KindApproval, KindShell)
	}
	if t.m().waitOpts&optApprovers != 0 {
		if t.Kind() != KindApproval {
			wrongKind("Approvers", KindApproval)
		}
		if len(t.m().approvers) == 0 {
			problem("Approvers names nobody")
		}
		for _, a := range t.m().approvers {
			if a == "" {
				problem("Approvers holds an empty name")
			}
		}
	}
	if t.m().waitOpts&optApprovalTimeout != 0 {
		if t.Kind() != KindApproval {
			wrongKind("ApprovalTimeout", KindApproval)
		} else if t.m().approvalTimeout < 0 {
			problem("ApprovalTimeout must not be negative, got %v", t.m().approvalTimeout)
		}
	}
}

func kindList(kinds []Kind) string {
	s := ""
	for i, k := range kinds {
		switch {
		case i == 0:
		case i == len(kinds)-1:
			s += " and "
		default:
			s += ", "
		}
		s += string(k)
	}
	return s
}
