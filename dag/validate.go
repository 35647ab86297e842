package dag

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// IDPattern is the pattern DAG and task ids must match.
const IDPattern = `^[A-Za-z0-9_.-]{1,250}$`

// ValidID reports whether id matches IDPattern.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > 250 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// Problem is one thing wrong with a DAG definition, found by Validate.
type Problem struct {
	// DAGID is the id of the DAG at fault; "" for a nil registration.
	DAGID string
	// TaskID is the task at fault; "" when the problem is the DAG's.
	TaskID string
	// Message says what is wrong.
	Message string
}

// String formats the problem as `dag "<DAGID>": task "<TaskID>": <Message>`,
// leaving out the task part for problems of the DAG itself and both parts
// for problems of a registration that has no DAG (a nil one).
func (p Problem) String() string {
	switch {
	case p.TaskID != "":
		return fmt.Sprintf("dag %q: task %q: %s", p.DAGID, p.TaskID, p.Message)
	case p.DAGID != "":
		return fmt.Sprintf("dag %q: %s", p.DAGID, p.Message)
	default:
		return p.Message
	}
}

// Validate checks every DAG and returns every problem found, in a
// deterministic order: DAGs in the order given, and within a DAG its own
// settings first, then its build issues, then its tasks in insertion order,
// then its cycles. It never panics and returns nil when all is well.
//
// Reported: nil DAGs; duplicate DAG ids; ids that do not match IDPattern;
// unparsable schedules (with the parser's reason); a schedule without
// StartDate; EndDate before StartDate; MaxActiveRuns below 1; negative
// MaxActiveTasks; Params that are not JSON-encodable; DAGs without tasks;
// the build issues of DAG.BuildIssues (nil functions, empty commands, edges
// to nil tasks or to tasks of another DAG); duplicate task ids; negative
// retries, retry delays, backoff caps and timeouts; unknown trigger rules;
// bad HTTP methods and URLs; Env and InheritEnv names that are empty,
// contain '=' or NUL, or start with TRELLIS_; and one cycle per self-loop and per strongly
// connected component, printed as "cycle: a -> b -> c -> a".
func Validate(dags []*DAG) []Problem {
	var out []Problem
	firstByID := make(map[string]int, len(dags)) // id -> first registration (1-based)
	firstByPtr := make(map[*DAG]int, len(dags))  // DAG -> first registration
	for i, d := range dags {
		pos := i + 1
		if d == nil {
			out = append(out, Problem{Message: fmt.Sprintf("registration #%d is a nil DAG", pos)})
			continue
		}
		if first, ok := firstByPtr[d]; ok {
			out = append(out, Problem{DAGID: d.id, Message: fmt.Sprintf(
				"the same DAG is registered more than once (registrations #%d and #%d)", first, pos)})
			continue
		}
		firstByPtr[d] = pos
		if first, ok := firstByID[d.id]; ok {
			out = append(out, Problem{DAGID: d.id, Message: fmt.Sprintf(
				"duplicate DAG id: registrations #%d and #%d both use it", first, pos)})
		} else {
			firstByID[d.id] = pos
		}
		out = d.validate(out)
	}
	return out
}

// Validate checks the DAG alone, as Validate([]*DAG{d}) does.
func (d *DAG) Validate() []Problem { return Validate([]*DAG{d}) }

func (d *DAG) validate(out []Problem) []Problem {
	dagProblem := func(format string, args ...any) {
		out = append(out, Problem{DAGID: d.id, Message: fmt.Sprintf(format, args...)})
	}
	if !ValidID(d.id) {
		dagProblem("invalid DAG id %q: must match %s", d.id, IDPattern)
	}
	if d.schedule != "" {
		if _, err := d.ParsedSchedule(); err != nil {
			dagProblem("%v", err)
		}
		if d.startDate.IsZero() {
			dagProblem("schedule %q needs a StartDate", d.schedule)
		}
	}
	if d.eventKeySet {
		if err := CheckEventKey(d.eventKey); err != nil {
			dagProblem("ScheduleOnEvent: %v", err)
		}
	}
	if !d.startDate.IsZero() && !d.endDate.IsZero() && d.endDate.Before(d.startDate) {
		dagProblem("EndDate %s is before StartDate %s",
			d.endDate.Format(time.RFC3339), d.startDate.Format(time.RFC3339))
	}
	if d.maxActiveRuns < 1 {
		dagProblem("MaxActiveRuns must be at least 1, got %d", d.maxActiveRuns)
	}
	if d.maxActiveTasks < 0 {
		dagProblem("MaxActiveTasks must be 0 (no cap) or positive, got %d", d.maxActiveTasks)
	}
	if d.retention < 0 {
		dagProblem("Retention must be positive (or KeepForever), got %v", d.retention)
	}
	if d.maxCalls < 0 {
		dagProblem("MaxCalls must be positive (0: the default %d), got %d", DefaultMaxCalls, d.maxCalls)
	}
	if len(d.params) > 0 {
		if _, err := json.Marshal(d.params); err != nil {
			dagProblem("Params are not JSON-encodable: %v", err)
		}
	}
	if len(d.tasks) == 0 {
		dagProblem("DAG has no tasks")
	}
	for _, is := range d.issues {
		out = append(out, Problem{DAGID: d.id, TaskID: is.taskID, Message: is.message})
	}

	for _, t := range d.tasks {
		out = t.validate(out)
	}

	for _, c := range d.cycles() {
		out = append(out, Problem{DAGID: d.id, TaskID: c[0].id,
			Message: "cycle: " + strings.Join(cycleIDs(c), " -> ")})
	}
	return out
}

func (t *Task) validate(out []Problem) []Problem {
	problem := func(format string, args ...any) {
		out = append(out, Problem{DAGID: t.dag.id, TaskID: t.id, Message: fmt.Sprintf(format, args...)})
	}
	if !ValidID(t.id) {
		problem("invalid task id %q: must match %s", t.id, IDPattern)
	}
	if first := t.dag.Task(t.id); first != t {
		problem("duplicate task id: tasks #%d and #%d both use it", first.index+1, t.index+1)
	}
	if t.o().retries < 0 {
		problem("Retries must not be negative, got %d", t.o().retries)
	}
	if t.o().retryDelay < 0 {
		problem("RetryDelay must not be negative, got %s", t.o().retryDelay)
	}
	if t.o().maxBackoff < 0 {
		problem("ExponentialBackoff maximum must not be negative, got %s", t.o().maxBackoff)
	}
	if t.o().timeout < 0 {
		problem("Timeout must not be negative, got %s", t.o().timeout)
	}
	t.validateEnv(problem)
	t.validateWait(problem)
	t.validateLimits(problem)
	if !t.o().trigger.Valid() {
		problem("unknown trigger rule %q (want one of %v)", string(t.o().trigger), TriggerRules)
	}
	if t.Kind() == KindCallable && (len(t.upstream) > 0 || len(t.downstream) > 0) {
		problem("a callable has no edges: tasks call it (Callable.Call), they do not depend on it")
	}
	if t.m().noDedup && t.Kind() != KindCallable {
		problem("NoDedup applies to callables only")
	}
	if t.Kind() == KindHTTP {
		if m := t.req().Method; m != "" && !validMethod(m) {
			problem("HTTP method %q is not a valid method token", m)
		}
		if t.req().URL != "" {
			if u, err := url.Parse(t.req().URL); err != nil {
				problem("HTTP URL %q does not parse: %v", t.req().URL, err)
			} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				problem("HTTP URL %q is not an absolute http:// or https:// URL", t.req().URL)
			}
		}
	}
	return out
}

// validMethod reports whether m is an RFC 9110 token.
func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		c := m[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
