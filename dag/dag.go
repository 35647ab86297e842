package dag

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"time"
)

// Defaults applied by New and by the task constructors.
const (
	DefaultMaxActiveRuns = 16
	DefaultRetryDelay    = 10 * time.Second
)

// DAG is a directed acyclic graph of tasks with a schedule. Build one with
// New, add tasks with Func, Shell, HTTP and Branch, connect them with
// SetDownstream/SetUpstream and record it with Register.
//
// A DAG never panics while being built: problems (bad ids, duplicate tasks,
// invalid option values) are kept and reported by Validate.
type DAG struct {
	id              string
	schedule        string
	startDate       time.Time
	endDate         time.Time
	catchup         bool
	maxActiveRuns   int
	maxActiveTasks  int
	maxCalls        int
	description     string
	tags            []string
	params          map[string]any
	retention       time.Duration
	defaultTaskOpts []TaskOption
	taskMetrics     bool
	eventKey        string
	eventKeySet     bool

	tasks  []*Task
	byID   taskIndex    // the first task added with each id
	issues []buildIssue // problems found while building, reported by Validate

	parseOnce sync.Once
	parsed    *Timetable
	parseErr  error
}

// buildIssue is a problem noticed while the DAG was built.
type buildIssue struct {
	taskID  string // "" for a problem of the DAG itself
	message string
}

func (d *DAG) addIssue(taskID, message string) {
	d.issues = append(d.issues, buildIssue{taskID: taskID, message: message})
}

// Option configures a DAG in New.
type Option func(*DAG)

// New returns a DAG with the given id and options. The id must match
// ^[A-Za-z0-9_.-]{1,250}$; a bad id is reported by Validate.
func New(id string, opts ...Option) *DAG {
	d := &DAG{id: id, maxActiveRuns: DefaultMaxActiveRuns}
	for _, o := range opts {
		if o != nil {
			o(d)
		}
	}
	return d
}

// Schedule sets the cron expression (5 or 6 fields), descriptor (@daily …,
// @every <duration>) with an optional "CRON_TZ=<zone> " prefix. An empty
// schedule means the DAG only runs when triggered.
func Schedule(expr string) Option { return func(d *DAG) { d.schedule = expr } }

// StartDate sets the first instant intervals may start at.
func StartDate(t time.Time) Option { return func(d *DAG) { d.startDate = t } }

// EndDate sets the instant after which no interval is scheduled.
func EndDate(t time.Time) Option { return func(d *DAG) { d.endDate = t } }

// Catchup makes the scheduler create a run for every missed interval
// (true) or only for the latest one (false, the default).
func Catchup(b bool) Option { return func(d *DAG) { d.catchup = b } }

// MaxActiveRuns caps the runs of this DAG that are running at once; extra
// runs wait in state queued. Default 16.
func MaxActiveRuns(n int) Option { return func(d *DAG) { d.maxActiveRuns = n } }

// MaxActiveTasks caps the task instances of this DAG running at once across
// all its runs; 0 means no cap.
func MaxActiveTasks(n int) Option { return func(d *DAG) { d.maxActiveTasks = n } }

// Description sets a human description of the DAG.
func Description(s string) Option { return func(d *DAG) { d.description = s } }

// Tags labels the DAG for filtering.
func Tags(tags ...string) Option {
	return func(d *DAG) { d.tags = append(d.tags, tags...) }
}

// Params sets default run parameters, overlaid by a run's conf.
func Params(p map[string]any) Option { return func(d *DAG) { d.params = maps.Clone(p) } }

// KeepForever, given to Retention, keeps a DAG's finished runs however
// old they are.
const KeepForever = time.Duration(math.MaxInt64)

// Retention keeps this DAG's finished runs (with their task instances and
// logs) for d after they end, instead of the server's retention
// (`--retention`); KeepForever keeps them. The server's shorter log
// retention (`--log-retention`) still applies to their logs. Not part of
// the fingerprint: changing it changes no run.
func Retention(d time.Duration) Option { return func(dg *DAG) { dg.retention = d } }

// DefaultTaskOptions applies opts to every task added after this option,
// before the task's own options.
func DefaultTaskOptions(opts ...TaskOption) Option {
	return func(d *DAG) { d.defaultTaskOpts = append(d.defaultTaskOpts, opts...) }
}

// ID returns the DAG id.
func (d *DAG) ID() string { return d.id }

// ScheduleExpr returns the schedule expression as given ("" for manual only).
func (d *DAG) ScheduleExpr() string { return d.schedule }

// StartDate returns the start date (zero when unset).
func (d *DAG) StartDate() time.Time { return d.startDate }

// EndDate returns the end date (zero when unset).
func (d *DAG) EndDate() time.Time { return d.endDate }

// Catchup reports whether missed intervals are all run.
func (d *DAG) Catchup() bool { return d.catchup }

// MaxActiveRuns returns the cap on running runs.
func (d *DAG) MaxActiveRuns() int { return d.maxActiveRuns }

// MaxActiveTasks returns the cap on running task instances (0 = none).
func (d *DAG) MaxActiveTasks() int { return d.maxActiveTasks }

// Description returns the DAG's description.
func (d *DAG) Description() string { return d.description }

// Tags returns a copy of the DAG's tags.
func (d *DAG) Tags() []string { return slices.Clone(d.tags) }

// Retention returns how long the DAG's finished runs are kept; 0 means the
// server's retention applies.
func (d *DAG) Retention() time.Duration { return d.retention }

// Params returns a copy of the DAG's default params.
func (d *DAG) Params() map[string]any { return maps.Clone(d.params) }

// Tasks returns the tasks in the order they were added. Duplicates (same
// id added twice) are included so that Validate can report them.
func (d *DAG) Tasks() []*Task { return slices.Clone(d.tasks) }

// Task returns the first task added with the given id, or nil.
func (d *DAG) Task(id string) *Task { return d.byID.find(d.tasks, id) }

func (d *DAG) addTask(id string, kind Kind, opts []TaskOption) *Task {
	t := &Task{dag: d, index: int32(len(d.tasks)), id: id, kind: codeOf(kind)}
	for _, o := range d.defaultTaskOpts {
		if o != nil {
			o(t)
		}
	}
	for _, o := range opts {
		if o != nil {
			o(t)
		}
	}
	d.tasks = append(d.tasks, t)
	d.byID.add(d.tasks, len(d.tasks)-1)
	return t
}

// Func adds a task that runs fn in a worker process.
func (d *DAG) Func(id string, fn func(*Context) error, opts ...TaskOption) *Task {
	t := d.addTask(id, KindFunc, opts)
	t.fn = fn
	if fn == nil {
		d.addIssue(id, "Func has a nil function")
	}
	return t
}

// Shell adds a task that runs command with /bin/sh -c. Exit 0 is success,
// exit 99 skipped, anything else failed.
func (d *DAG) Shell(id, command string, opts ...TaskOption) *Task {
	t := d.addTask(id, KindShell, opts)
	t.setO().command = command
	if command == "" {
		d.addIssue(id, "Shell has an empty command")
	}
	return t
}

// HTTPRequest describes the request an HTTP task sends.
type HTTPRequest struct {
	Method string
	URL    string
	Header map[string]string
	Body   string
}

// HTTP adds a task that sends req; a 2xx response is success and its body
// (capped) becomes the task's output.
func (d *DAG) HTTP(id string, req HTTPRequest, opts ...TaskOption) *Task {
	t := d.addTask(id, KindHTTP, opts)
	req.Header = maps.Clone(req.Header)
	t.setM().http = &req
	if req.URL == "" {
		d.addIssue(id, "HTTP has an empty URL")
	}
	return t
}

// Branch adds a task whose function returns the ids of the direct downstream
// tasks to follow; every other direct downstream task is skipped.
func (d *DAG) Branch(id string, fn func(*Context) ([]string, error), opts ...TaskOption) *Task {
	t := d.addTask(id, KindBranch, opts)
	t.setM().branch = fn
	if fn == nil {
		d.addIssue(id, "Branch has a nil function")
	}
	return t
}

// BuildIssues returns the problems recorded while the DAG was built (nil
// functions, empty commands and URLs, edges to nil tasks, to tasks not made
// by a DAG or to tasks of another DAG), each as `task "<id>": <message>`.
// Validate reports them together with the structural checks.
func (d *DAG) BuildIssues() []string {
	if len(d.issues) == 0 {
		return nil
	}
	out := make([]string, len(d.issues))
	for i, is := range d.issues {
		if is.taskID == "" {
			out[i] = is.message
			continue
		}
		out[i] = fmt.Sprintf("task %q: %s", is.taskID, is.message)
	}
	return out
}
