package api

import (
	"bytes"
	"cmp"
	"encoding/json"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// timeLayout writes date-times as Airflow does: RFC 3339 with microseconds
// and a numeric zone, in UTC ("2026-01-02T15:04:05.123456+00:00").
const timeLayout = "2006-01-02T15:04:05.999999-07:00"

// apiTime is a date-time in Airflow's JSON form.
type apiTime time.Time

// MarshalJSON writes the time in UTC with timeLayout.
func (t apiTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + formatTime(time.Time(t)) + `"`), nil
}

func timePtr(t *time.Time) *apiTime {
	if t == nil || t.IsZero() {
		return nil
	}
	v := apiTime(*t)
	return &v
}

func timeVal(t time.Time) *apiTime { return timePtr(&t) }

func formatTime(t time.Time) string { return string(appendTimeText(nil, t)) }

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Fields of Airflow's objects that Trellis has no notion of are present
// with the null or default value Airflow's schema allows; the comments
// say so.

// dagJSON is Airflow's DAG object.
type dagJSON struct {
	DAGID                       string    `json:"dag_id"`
	DAGDisplayName              string    `json:"dag_display_name"`
	IsPaused                    bool      `json:"is_paused"`
	IsActive                    bool      `json:"is_active"`
	LastParsedTime              *apiTime  `json:"last_parsed_time"` // last sync of the binary's DAG
	LastPickled                 *apiTime  `json:"last_pickled"`     // no pickling
	LastExpired                 *apiTime  `json:"last_expired"`     // no refresh signal
	SchedulerLock               *bool     `json:"scheduler_lock"`   // no DAG lock
	PickleID                    *string   `json:"pickle_id"`        // no pickling
	DefaultView                 string    `json:"default_view"`
	Fileloc                     string    `json:"fileloc"`    // compiled in: no file
	FileToken                   string    `json:"file_token"` // compiled in: no file
	Owners                      []string  `json:"owners"`     // no owners
	Description                 *string   `json:"description"`
	ScheduleInterval            any       `json:"schedule_interval"`
	TimetableDescription        *string   `json:"timetable_description"`
	Tags                        []tagJSON `json:"tags"`
	MaxActiveTasks              int       `json:"max_active_tasks"`
	MaxActiveRuns               int       `json:"max_active_runs"`
	HasTaskConcurrencyLimits    bool      `json:"has_task_concurrency_limits"`
	HasImportErrors             bool      `json:"has_import_errors"`
	NextDagrun                  *apiTime  `json:"next_dagrun"`
	NextDagrunDataIntervalStart *apiTime  `json:"next_dagrun_data_interval_start"`
	NextDagrunDataIntervalEnd   *apiTime  `json:"next_dagrun_data_interval_end"`
	NextDagrunCreateAfter       *apiTime  `json:"next_dagrun_create_after"`
	MaxConsecutiveFailedRuns    int       `json:"max_consecutive_failed_dag_runs"` // 0: never paused automatically
}

type tagJSON struct {
	Name string `json:"name"`
}

// cronJSON and timeDeltaJSON are Airflow's ScheduleInterval variants.
type cronJSON struct {
	Type  string `json:"__type"`
	Value string `json:"value"`
}

type timeDeltaJSON struct {
	Type         string `json:"__type"`
	Days         int64  `json:"days"`
	Seconds      int64  `json:"seconds"`
	Microseconds int64  `json:"microseconds"`
}

func timeDelta(d time.Duration) timeDeltaJSON {
	us := d.Microseconds()
	const usPerDay = int64(24 * time.Hour / time.Microsecond)
	days := us / usPerDay
	us -= days * usPerDay
	return timeDeltaJSON{Type: "TimeDelta", Days: days, Seconds: us / 1e6, Microseconds: us % 1e6}
}

// scheduleJSON describes a schedule expression as Airflow's
// schedule_interval and timetable_description: @every as a TimeDelta,
// anything else (cron fields, descriptors, zone prefix) as a
// CronExpression; nil for a manual-only DAG.
func scheduleJSON(expr string) (interval any, description *string) {
	if expr == "" {
		return nil, nil
	}
	if tt, err := dag.ParseSchedule(expr); err == nil && tt.Every() > 0 {
		desc := "every " + tt.Every().String()
		return timeDelta(tt.Every()), &desc
	}
	return cronJSON{Type: "CronExpression", Value: expr}, &expr
}

// toDAG converts a stored DAG.
func toDAG(d store.DAG) dagJSON {
	interval, desc := scheduleJSON(d.Schedule)
	out := dagJSON{
		DAGID:                    d.DAGID,
		DAGDisplayName:           d.DAGID,
		IsPaused:                 d.Paused,
		IsActive:                 d.Active,
		LastParsedTime:           timeVal(d.UpdatedAt),
		DefaultView:              "grid",
		Owners:                   []string{},
		Description:              strPtr(d.Description),
		ScheduleInterval:         interval,
		TimetableDescription:     desc,
		Tags:                     make([]tagJSON, 0, len(d.Tags)),
		MaxActiveTasks:           d.MaxActiveTasks,
		MaxActiveRuns:            d.MaxActiveRuns,
		HasTaskConcurrencyLimits: d.MaxActiveTasks > 0,
	}
	for _, t := range d.Tags {
		out.Tags = append(out.Tags, tagJSON{Name: t})
	}
	if d.NextDueAt != nil && d.Schedule != "" {
		// The next run covers the interval ending when it is due; it starts
		// where the last one ended when that is the previous activation.
		out.NextDagrunCreateAfter = timePtr(d.NextDueAt)
		out.NextDagrunDataIntervalEnd = timePtr(d.NextDueAt)
		if start := nextIntervalStart(d); start != nil {
			out.NextDagrunDataIntervalStart = timePtr(start)
			out.NextDagrun = timePtr(start)
		}
	}
	return out
}

// nextIntervalStart returns the start of the interval that ends at
// d.NextDueAt, when it can be told from the schedule: the last interval's
// end if the schedule's next activation after it is NextDueAt, or, for
// @every, NextDueAt minus the interval.
func nextIntervalStart(d store.DAG) *time.Time {
	tt, err := dag.ParseSchedule(d.Schedule)
	if err != nil || d.NextDueAt == nil {
		return nil
	}
	if d.LastIntervalEnd != nil && tt.Next(*d.LastIntervalEnd).Equal(*d.NextDueAt) {
		t := *d.LastIntervalEnd
		return &t
	}
	if tt.Every() > 0 {
		t := d.NextDueAt.Add(-tt.Every())
		return &t
	}
	return nil
}

// dagRunJSON is Airflow's DAGRun object.
type dagRunJSON struct {
	DAGRunID               string          `json:"dag_run_id"`
	DAGID                  string          `json:"dag_id"`
	LogicalDate            *apiTime        `json:"logical_date"`
	ExecutionDate          *apiTime        `json:"execution_date"`
	StartDate              *apiTime        `json:"start_date"`
	EndDate                *apiTime        `json:"end_date"`
	DataIntervalStart      *apiTime        `json:"data_interval_start"`
	DataIntervalEnd        *apiTime        `json:"data_interval_end"`
	LastSchedulingDecision *apiTime        `json:"last_scheduling_decision"` // not recorded
	RunType                string          `json:"run_type"`
	State                  string          `json:"state"`
	ExternalTrigger        bool            `json:"external_trigger"`
	Conf                   json.RawMessage `json:"conf"`
	Note                   *string         `json:"note"`
}

// toRun converts a stored run.
func toRun(r store.Run) dagRunJSON {
	return dagRunJSON{
		DAGRunID:          r.RunID,
		DAGID:             r.DAGID,
		LogicalDate:       timeVal(r.LogicalDate),
		ExecutionDate:     timeVal(r.LogicalDate),
		StartDate:         timePtr(r.StartedAt),
		EndDate:           timePtr(r.EndedAt),
		DataIntervalStart: timeVal(r.IntervalStart),
		DataIntervalEnd:   timeVal(r.IntervalEnd),
		RunType:           string(r.RunType),
		State:             string(r.State),
		ExternalTrigger:   r.RunType == store.RunManual,
		Conf:              confObject(r.Conf),
		Note:              strPtr(r.Note),
	}
}

// confObject returns conf when it is a JSON object, else {} (Airflow's
// schema types conf as an object; the API only stores objects).
func confObject(conf json.RawMessage) json.RawMessage {
	t := bytes.TrimSpace(conf)
	if len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return json.RawMessage("{}")
	}
	return t
}

// taskInstanceJSON is Airflow's TaskInstance object.
type taskInstanceJSON struct {
	TaskID           string          `json:"task_id"`
	TaskDisplayName  string          `json:"task_display_name"`
	DAGID            string          `json:"dag_id"`
	DAGRunID         string          `json:"dag_run_id"`
	ExecutionDate    string          `json:"execution_date"`
	StartDate        *apiTime        `json:"start_date"`
	EndDate          *apiTime        `json:"end_date"`
	Duration         *seconds        `json:"duration"`
	State            *string         `json:"state"`
	TryNumber        int             `json:"try_number"`
	MapIndex         int             `json:"map_index"` // no mapped tasks: -1
	MaxTries         int             `json:"max_tries"`
	Hostname         string          `json:"hostname"`
	Unixname         string          `json:"unixname"` // not recorded
	Pool             string          `json:"pool"`
	PoolSlots        int             `json:"pool_slots"`
	Queue            *string         `json:"queue"` // no queues: default
	PriorityWeight   int             `json:"priority_weight"`
	Operator         *string         `json:"operator"`
	QueuedWhen       *apiTime        `json:"queued_when"`
	PID              *int            `json:"pid"`
	Executor         *string         `json:"executor"`        // one executor: null (the default)
	ExecutorConfig   string          `json:"executor_config"` // none: {}
	SLAMiss          *struct{}       `json:"sla_miss"`        // no SLAs
	RenderedMapIndex *string         `json:"rendered_map_index"`
	RenderedFields   json.RawMessage `json:"rendered_fields"` // no templates: {}
	Trigger          *struct{}       `json:"trigger"`         // no triggerer
	TriggererJob     *struct{}       `json:"triggerer_job"`   // no triggerer
	Note             *string         `json:"note"`
	// Trellis extensions, set while the instance is deferred: the
	// deadline of its wait (Airflow's column name), when the scheduler
	// queues it again, and the key of the event it waits for.
	TriggerTimeout *apiTime `json:"trigger_timeout,omitempty"`
	NextCheckAt    *apiTime `json:"next_check_at,omitempty"`
	WaitEvent      *string  `json:"wait_event,omitempty"`
	// Trellis extensions for calls (docs/api.md): a call instance's
	// arguments and result, a deferred instance's unfinished calls; and,
	// when one task instance is fetched, its caller and the calls it
	// waits on.
	Arguments      json.RawMessage `json:"arguments,omitempty"`
	Result         json.RawMessage `json:"result,omitempty"`
	WaitingOn      *int            `json:"waiting_on,omitempty"`
	Caller         *callRefJSON    `json:"caller,omitempty"`
	WaitingOnCalls []callRefJSON   `json:"waiting_on_calls,omitempty"`
}

// callRefJSON names a task instance: a call instance by its callable and
// map index, a static one with map index -1.
type callRefJSON struct {
	TaskID   string `json:"task_id"`
	MapIndex int    `json:"map_index"`
}

// poolOf is the pool of an instance (default_pool for rows without one).
func poolOf(ti store.TaskInstance) string { return cmp.Or(ti.Pool, defaultPool) }

// Names of the defaults Trellis reports for Airflow's pools and queues.
const (
	defaultPool  = "default_pool"
	defaultQueue = "default"
)

// operatorName names what a task runs, in the spirit of Airflow's operator
// class names: the DAG method that created it.
func operatorName(k dag.Kind) string {
	switch k {
	case dag.KindFunc:
		return "Func"
	case dag.KindShell:
		return "Shell"
	case dag.KindHTTP:
		return "HTTP"
	case dag.KindBranch:
		return "Branch"
	case dag.KindResumable:
		return "Resumable"
	case dag.KindSensor:
		return "Sensor"
	case dag.KindApproval:
		return "Approval"
	case dag.KindCallable:
		return "Callable"
	}
	return string(k)
}

// toTaskInstance converts a stored task instance of a run with the given
// logical date; kind is "" when the task is unknown to the binary.
func toTaskInstance(ti store.TaskInstance, logicalDate time.Time, kind dag.Kind) taskInstanceJSON {
	queue := defaultQueue
	out := taskInstanceJSON{
		TaskID:          ti.TaskID,
		TaskDisplayName: ti.TaskID,
		DAGID:           ti.DAGID,
		DAGRunID:        ti.DAGRunID,
		ExecutionDate:   formatTime(logicalDate),
		StartDate:       timePtr(ti.StartedAt),
		EndDate:         timePtr(ti.EndedAt),
		TryNumber:       ti.TryNumber,
		MapIndex:        ti.MapIndex,
		MaxTries:        max(ti.MaxTries-1, 0), // Airflow counts retries
		Hostname:        ti.Hostname,
		Pool:            poolOf(ti),
		PoolSlots:       max(ti.PoolSlots, 1),
		Queue:           &queue,
		PriorityWeight:  ti.Priority,
		QueuedWhen:      timePtr(ti.QueuedAt),
		ExecutorConfig:  "{}",
		RenderedFields:  json.RawMessage("{}"),
	}
	if ti.StartedAt != nil && ti.EndedAt != nil {
		d := durationSeconds(ti.Duration())
		out.Duration = &d
	}
	if ti.State != state.None && ti.State != "" {
		// Airflow (2.7+) reports a task instance without state as null.
		s := string(ti.State)
		out.State = &s
	}
	if kind != "" {
		op := operatorName(kind)
		out.Operator = &op
	}
	if ti.PID > 0 {
		pid := ti.PID
		out.PID = &pid
	}
	if ti.State == state.Deferred {
		out.TriggerTimeout, out.NextCheckAt = timePtr(ti.TriggerTimeout), timePtr(ti.NextCheckAt)
		if ti.WaitEvent != "" {
			ev := ti.WaitEvent
			out.WaitEvent = &ev
		}
	}
	if ti.MapIndex >= 0 && len(ti.Arguments) > 0 {
		out.Arguments = ti.Arguments
	}
	if ti.MapIndex >= 0 && ti.State == state.Success && len(ti.Output) > 0 {
		out.Result = ti.Output
	}
	if ti.State == state.Deferred {
		n := ti.WaitingOn
		out.WaitingOn = &n
	}
	return out
}

// taskInstanceRefJSON is Airflow's TaskInstanceReference.
type taskInstanceRefJSON struct {
	TaskID        string `json:"task_id"`
	DAGID         string `json:"dag_id"`
	ExecutionDate string `json:"execution_date"`
	DAGRunID      string `json:"dag_run_id"`
}

// taskJSON is Airflow's Task object.
type taskJSON struct {
	ClassRef                classRefJSON   `json:"class_ref"`
	TaskID                  string         `json:"task_id"`
	TaskDisplayName         string         `json:"task_display_name"`
	Owner                   string         `json:"owner"` // no owners
	StartDate               *apiTime       `json:"start_date"`
	EndDate                 *apiTime       `json:"end_date"`
	TriggerRule             string         `json:"trigger_rule"`
	ExtraLinks              []struct{}     `json:"extra_links"`         // none
	DependsOnPast           bool           `json:"depends_on_past"`     // not supported: false
	IsMapped                bool           `json:"is_mapped"`           // no mapped tasks
	WaitForDownstream       bool           `json:"wait_for_downstream"` // not supported: false
	Retries                 int            `json:"retries"`
	Queue                   *string        `json:"queue"`
	Executor                *string        `json:"executor"`
	Pool                    string         `json:"pool"`
	PoolSlots               int            `json:"pool_slots"`
	ExecutionTimeout        *timeDeltaJSON `json:"execution_timeout"`
	RetryDelay              timeDeltaJSON  `json:"retry_delay"`
	RetryExponentialBackoff bool           `json:"retry_exponential_backoff"`
	PriorityWeight          int            `json:"priority_weight"`
	WeightRule              string         `json:"weight_rule"` // priorities are absolute
	UIColor                 string         `json:"ui_color"`
	UIFgcolor               string         `json:"ui_fgcolor"`
	TemplateFields          []string       `json:"template_fields"` // no templates
	DownstreamTaskIDs       []string       `json:"downstream_task_ids"`
	DocMD                   *string        `json:"doc_md"`
}

type classRefJSON struct {
	ModulePath string `json:"module_path"`
	ClassName  string `json:"class_name"`
}

// dagPackage is the module path reported as every task's class module.
const dagPackage = "github.com/trellis-dag/trellis/dag"

// toTask converts a task of the binary.
func toTask(t *dag.Task) taskJSON {
	queue := defaultQueue
	out := taskJSON{
		ClassRef:                classRefJSON{ModulePath: dagPackage, ClassName: operatorName(t.Kind())},
		TaskID:                  t.ID(),
		TaskDisplayName:         t.ID(),
		TriggerRule:             string(t.TriggerRule()),
		ExtraLinks:              []struct{}{},
		Retries:                 t.Retries(),
		Queue:                   &queue,
		Pool:                    cmp.Or(t.Pool(), defaultPool),
		PoolSlots:               t.PoolSlots(),
		RetryDelay:              timeDelta(t.RetryDelay()),
		RetryExponentialBackoff: t.MaxBackoff() > 0,
		PriorityWeight:          t.Priority(),
		WeightRule:              "absolute",
		UIColor:                 "#fff",
		UIFgcolor:               "#000",
		TemplateFields:          []string{},
		DownstreamTaskIDs:       t.DownstreamIDs(),
	}
	if d := t.DAG(); d != nil {
		out.StartDate = timeVal(d.StartDate())
		out.EndDate = timeVal(d.EndDate())
	}
	if t.Timeout() > 0 {
		td := timeDelta(t.Timeout())
		out.ExecutionTimeout = &td
	}
	if out.DownstreamTaskIDs == nil {
		out.DownstreamTaskIDs = []string{}
	}
	return out
}

// lowerContains reports whether s contains sub, ignoring case (Airflow's
// dag_id_pattern is a case-insensitive LIKE %pattern%).
func lowerContains(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
