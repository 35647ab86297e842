package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// Errors callers can test with errors.Is. Backend errors never leak as
// driver types.
var (
	// ErrNotFound: the DAG, run, task instance or log does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the row exists already (e.g. a run id taken by another run).
	ErrConflict = errors.New("conflict")
	// ErrStale: a compare-and-set found another state or try than expected.
	ErrStale = errors.New("stale state")
	// ErrInvalid: the input cannot be stored (e.g. a run's conf lacks a
	// param a concurrency key template renders).
	ErrInvalid = errors.New("invalid")
	// ErrUnavailable: the database cannot be reached or cannot write (a
	// connection refused or lost, the server shutting down, a full disk).
	// Nothing was done; the same call may succeed later.
	ErrUnavailable = errors.New("database unavailable")
)

// RunType says who created a run.
type RunType string

// Run types.
const (
	RunScheduled RunType = "scheduled"
	RunManual    RunType = "manual"
	RunBackfill  RunType = "backfill"
)

// TaskSpec is one task of a DAG structure as the store keeps it: enough to
// create task instances and release downstream tasks without the Go code.
type TaskSpec struct {
	TaskID      string
	Kind        dag.Kind
	TriggerRule dag.TriggerRule
	Priority    int
	Retries     int
	RetryDelay  time.Duration
	MaxBackoff  time.Duration // 0 = no exponential backoff
	Timeout     time.Duration
	Upstream    []string // direct upstream task ids
	// Limits: the pool ("" = default_pool) and the slots an instance
	// takes in it (0 = 1), the cap on running instances of the task (0 =
	// none), and a concurrency key template with its limit ("" = none).
	Pool        string
	PoolSlots   int
	MaxActive   int
	KeyTemplate string
	KeyLimit    int
}

// DAGSpec is what SyncDAGs records for one DAG of the binary.
type DAGSpec struct {
	DAGID          string
	Fingerprint    string // hash of the structure; changes when tasks or edges change
	Schedule       string
	Description    string
	Tags           []string
	MaxActiveRuns  int
	MaxActiveTasks int
	// EventKey is the key of the events that create runs of the DAG
	// (dag.ScheduleOnEvent); "" = none.
	EventKey string
	// Params are the DAG's default params (JSON object; nil = {}), which
	// concurrency keys render from, overlaid by a run's conf.
	Params json.RawMessage
	Tasks  []TaskSpec
}

// DAG is the stored record of a DAG.
type DAG struct {
	DAGID          string
	Fingerprint    string
	Schedule       string
	Description    string
	Tags           []string
	MaxActiveRuns  int
	MaxActiveTasks int
	Paused         bool
	Active         bool   // false once the DAG is gone from the binary
	EventKey       string // dag.ScheduleOnEvent's key; "" = none
	// LastIntervalEnd is the end of the latest data interval the scheduler
	// created a run for (nil before the first).
	LastIntervalEnd *time.Time
	// NextDueAt is when the scheduler next has to create a run (nil = none).
	NextDueAt *time.Time
	UpdatedAt time.Time
}

// NewRun describes a run to create. The store creates one task instance per
// task of the structure recorded for Fingerprint by SyncDAGs.
type NewRun struct {
	DAGID         string
	RunID         string
	RunType       RunType
	LogicalDate   time.Time
	IntervalStart time.Time
	IntervalEnd   time.Time
	Conf          json.RawMessage // nil = {}
	Fingerprint   string
	Note          string
	QueuedAt      time.Time
}

// Run is a stored DAG run.
type Run struct {
	ID            int64
	DAGID         string
	RunID         string
	RunType       RunType
	LogicalDate   time.Time
	IntervalStart time.Time
	IntervalEnd   time.Time
	State         state.RunState
	Conf          json.RawMessage
	Fingerprint   string
	Note          string
	QueuedAt      time.Time
	StartedAt     *time.Time
	EndedAt       *time.Time
}

// TaskInstance is a stored task instance: the current try of one task in
// one run.
type TaskInstance struct {
	ID          int64
	RunID       int64 // Run.ID
	DAGID       string
	DAGRunID    string // Run.RunID
	TaskID      string
	State       state.TaskState
	TryNumber   int // tries started so far; 0 before the first
	MaxTries    int // 1 + retries
	Priority    int
	TriggerRule dag.TriggerRule
	QueuedAt    *time.Time
	StartedAt   *time.Time
	EndedAt     *time.Time
	NextRetryAt *time.Time
	WorkerID    string
	Hostname    string
	PID         int
	HeartbeatAt *time.Time
	Output      json.RawMessage // nil = none
	Error       string
	// What a deferred instance waits for (nil/"" = nothing of that kind):
	// when the scheduler's due sweep queues it again (its poll time or
	// its deadline, whichever is first), the key of the event that
	// queues it, and the deadline of its wait.
	NextCheckAt    *time.Time
	WaitEvent      string
	TriggerTimeout *time.Time
	// MapIndex is -1 for the instance of a static task, and numbers the
	// call instances of a callable in a run (0, 1, … in creation order).
	MapIndex int
	// Arguments are the JSON arguments of a call instance (nil otherwise).
	Arguments json.RawMessage
	// CallerID is the instance that made the call first (0: none).
	CallerID int64
	// WaitingOn is, for an instance deferred on its calls, how many of
	// them have not finished.
	WaitingOn int
	// Pool and PoolSlots: where the instance takes slots (default_pool,
	// 1 unless the task says otherwise). ConcurrencyKey is its rendered
	// key ("" = none).
	Pool           string
	PoolSlots      int
	ConcurrencyKey string
}

// RunTaskInstance is a task instance with the fields of its run that
// task instance lists show, read in the same query.
type RunTaskInstance struct {
	TaskInstance
	LogicalDate time.Time // the run's
}

// Instances returns the task instances of rtis, without their runs' fields.
func Instances(rtis []RunTaskInstance) []TaskInstance {
	if rtis == nil {
		return nil
	}
	out := make([]TaskInstance, len(rtis))
	for i, r := range rtis {
		out[i] = r.TaskInstance
	}
	return out
}

// Duration returns EndedAt − StartedAt, or 0 when either is unset.
func (ti TaskInstance) Duration() time.Duration {
	if ti.StartedAt == nil || ti.EndedAt == nil {
		return 0
	}
	return ti.EndedAt.Sub(*ti.StartedAt)
}

// SchedulerRetention is how long the row of a scheduler that stopped
// heart-beating is kept: HeartbeatScheduler removes older ones.
const SchedulerRetention = 24 * time.Hour

// Worker identifies a worker process.
type Worker struct {
	ID          string
	Hostname    string
	PID         int
	Slots       int
	StartedAt   time.Time
	HeartbeatAt time.Time
}

// Claimed is a task instance handed to a worker, with what it needs to run
// it.
type Claimed struct {
	TaskInstance
	LogicalDate   time.Time
	IntervalStart time.Time
	IntervalEnd   time.Time
	Conf          json.RawMessage
	Timeout       time.Duration
	// Resumed is set when the try continues a deferral (the instance was
	// queued again by its due time, an event or the continue call), with
	// the state its last deferral saved and the payload that continued
	// it (nil = none). A retry after such a try continues too.
	Resumed       bool
	DeferredState json.RawMessage
	EventPayload  json.RawMessage
}

// Try names one try of a task instance, the key of every
// compare-and-set from a worker.
type Try struct {
	ID        int64 // TaskInstance.ID
	TryNumber int
}

// Result is the outcome of one try, reported by a worker.
type Result struct {
	Try
	// State is success, failed or skipped. A failed try with tries left
	// and Permanent false becomes up_for_retry. State deferred suspends
	// the try (Deferral says until what): it releases the worker's slot,
	// uses up no try and keeps its try number.
	State     state.TaskState
	Permanent bool
	Error     string
	Output    json.RawMessage // nil = none
	// Follow, for Branch tasks, lists the direct downstream tasks to
	// follow; the other direct downstream tasks are skipped. nil for other
	// kinds.
	Follow []string
	// StartedAt, when set, is when the try began to execute in the
	// worker; it replaces the claim time as the instance's start, so a
	// try's start and duration are its own and not those of the claim
	// (which FinishAndClaim makes before the previous task's commit).
	StartedAt time.Time
	EndedAt   time.Time
	// Deferral, with State deferred, says what the try waits for.
	Deferral Deferral
	// Log, when not empty, is the try's last log chunk: FinishTasks
	// appends it to the try's log (as AppendLog would, within the same
	// cap) in the transaction that records the result, when the result is
	// applied, so a try needs no separate AppendLog commit.
	Log []byte
}

// Deferral is what a deferred try waits for before it is queued again
// (deferred → queued, in a transaction that exists anyway). A deferral
// with no condition waits for ResumeDeferred.
type Deferral struct {
	// Calls: the calls the instance made that have not finished. It is
	// queued by the finishing transaction of its last unfinished callee,
	// or at once when none is left when the deferral is recorded.
	Calls bool
	// Event is the key of the event that queues it (RecordEvent); an
	// event with that key that is kept and newer than the last the
	// instance consumed queues it at once ("" = none).
	Event string
	// NextCheckAt is when RequeueRetries queues it again (zero = never);
	// TriggerTimeout the deadline of its wait, shown by the API (zero =
	// none; the worker decides what a continued try past it does).
	NextCheckAt    time.Time
	TriggerTimeout time.Time
	// State is JSON the next try reads back (nil = none).
	State json.RawMessage
	// Poke marks a Sensor's "not yet": the instance stays deferred and
	// is not queued again at NextCheckAt; a worker's poke loop claims it
	// then (ClaimPokes) and calls its check in-process. Only NextCheckAt
	// and TriggerTimeout count with it.
	Poke bool
}

// Poke is a deferred Sensor instance whose check is due, leased to one
// worker by ClaimPokes.
type Poke struct {
	Try
	// Lease names the claim: FinishPokes records a result only under it.
	Lease         int64
	RunID         int64 // Run.ID
	DAGID         string
	DAGRunID      string // Run.RunID
	TaskID        string
	LogicalDate   time.Time
	IntervalStart time.Time
	IntervalEnd   time.Time
	// Conf is the run's conf, sent with the first poke of each run in a
	// claim (nil on the others: the caller keeps it by RunID).
	Conf json.RawMessage
	// TriggerTimeout is the sensor's deadline (zero = none).
	TriggerTimeout time.Time
}

// PokeResult is what one poke said, reported by FinishPokes under the
// poke's lease.
type PokeResult struct {
	Try
	Lease int64
	// Result.State deferred ("not yet") moves the next check to
	// Result.Deferral.NextCheckAt; success, failed or skipped end the try
	// as FinishTasks would (the instance moves from deferred to running
	// under the poking worker first), with Result.Log as the log the
	// poke wrote.
	Result Result
	// Requeue hands the instance to the task queue instead, resumed, for
	// an ordinary try (the poking worker cannot run its check).
	Requeue bool
}

// FinishOutcome reports what FinishTasks did with one Result.
type FinishOutcome struct {
	Try
	// Applied is false when the compare-and-set failed: the task was no
	// longer running that try (e.g. declared a zombie); nothing changed.
	Applied bool
	// State is the state written (up_for_retry for a retried failure;
	// deferred, or queued when a deferral had nothing left to wait for).
	State state.TaskState
}

// RunQuery filters ListRuns. Zero fields do not filter.
type RunQuery struct {
	DAGIDs         []string
	States         []state.RunState
	LogicalDateGTE *time.Time
	LogicalDateLTE *time.Time
	StartDateGTE   *time.Time
	StartDateLTE   *time.Time
	EndDateGTE     *time.Time
	EndDateLTE     *time.Time
	OrderBy        string // field name, "-" prefix for descending; default "-logical_date"
	Limit, Offset  int
}

// PurgeQuery selects finished runs (success or failed) for PurgeRuns and
// PurgeLogs.
type PurgeQuery struct {
	// Before: runs that ended before it. Required.
	Before time.Time
	// After, when set, leaves out runs that ended before it (a purger that
	// cleaned everything before After already need not scan it again).
	After time.Time
	// DAGID, when set, selects the runs of this DAG only.
	DAGID string
	// ExceptDAGIDs leaves out the runs of these DAGs (those with a
	// retention of their own).
	ExceptDAGIDs []string
	// Limit bounds what one call deletes: runs for PurgeRuns, tries' logs
	// for PurgeLogs. 0 = no bound.
	Limit int
	// MaxTaskInstances, when positive, also bounds a PurgeRuns call by
	// the task instances of its runs (always at least one run), so a
	// batch of large runs stays a short transaction.
	MaxTaskInstances int
	// DryRun counts what would be deleted and deletes nothing.
	DryRun bool
}

// Purged counts what PurgeRuns deleted (or would delete).
type Purged struct {
	Runs, TaskInstances int
	// Logs counts the tries whose logs were deleted.
	Logs int
}

// TaskQuery filters ListTaskInstances. Zero fields do not filter.
type TaskQuery struct {
	DAGIDs       []string
	DAGRunIDs    []string
	TaskIDs      []string
	States       []state.TaskState
	StartDateGTE *time.Time
	StartDateLTE *time.Time
	EndDateGTE   *time.Time
	EndDateLTE   *time.Time
	// LogicalDateGTE/LTE filter by the logical date of the instance's run.
	LogicalDateGTE *time.Time
	LogicalDateLTE *time.Time
	OrderBy        string
	Limit, Offset  int
}

// GridQuery selects a window of a DAG's grid: a page of its runs, newest
// logical date first, and the instances of some of its tasks in them.
type GridQuery struct {
	DAGID     string
	RunLimit  int // runs per page; 0 = none
	RunOffset int
	// TaskIDs are the rows wanted; instances of other tasks are left out.
	TaskIDs []string
	// AllTasks asks for the instances of every task instead (TaskIDs is
	// then ignored): cheaper than naming them all.
	AllTasks bool
}

// GridCell is the compact state of one task instance for the grid, or
// of a callable's call instances in a run grouped in one cell.
type GridCell struct {
	RunID  int64 // Run.ID
	TaskID string
	// State is the instance's, or for calls state.Summary of CallStates.
	State state.TaskState
	// TryNumber, StartedAt and EndedAt: for calls the highest try, the
	// first start and the last end among them.
	TryNumber int
	StartedAt *time.Time
	EndedAt   *time.Time
	// Calls counts the call instances grouped in the cell (0 for a
	// static task's instance), CallStates how many are in each state.
	Calls      int
	CallStates map[state.TaskState]int
}

// AddCalls groups n call instances in state s, with their highest try and
// first start and last end, into c.
func (c *GridCell) AddCalls(s state.TaskState, n, try int, started, ended *time.Time) {
	if c.CallStates == nil {
		c.CallStates = map[state.TaskState]int{}
	}
	c.Calls += n
	c.CallStates[s] += n
	c.State = state.Summary(c.CallStates)
	c.TryNumber = max(c.TryNumber, try)
	if started != nil && (c.StartedAt == nil || started.Before(*c.StartedAt)) {
		c.StartedAt = started
	}
	if ended != nil && (c.EndedAt == nil || ended.After(*c.EndedAt)) {
		c.EndedAt = ended
	}
}

// Grid is one window of a DAG's grid.
type Grid struct {
	Runs      []Run // newest logical date first
	TotalRuns int   // runs of the DAG, before pagination
	// Cells are the instances of the query's tasks in Runs, in no order,
	// one per run and task: a callable's call instances in a run are one
	// cell; a task a run's structure lacks, or a callable not called in
	// the run, has no cell.
	Cells []GridCell
}

// Topic is a kind of wake-up.
type Topic string

// Wake-up topics.
const (
	// TopicTasksReady: task instances became queued.
	TopicTasksReady Topic = "trellis_tasks_ready"
	// TopicRunsChanged: a run was created or changed state, or retries or
	// schedules changed.
	TopicRunsChanged Topic = "trellis_runs_changed"
)

// Subscription delivers wake-ups. Several notifications may be coalesced
// into one; a receiver re-reads the store after each.
type Subscription interface {
	C() <-chan Topic
	Close() error
}

// Store is the durable state of Trellis. Every method is safe for
// concurrent use from many goroutines and processes.
type Store interface {
	// Backend returns "postgres" or "sqlite".
	Backend() string
	// Migrate applies pending migrations (safe to call from many processes at once).
	Migrate(ctx context.Context) error
	// Ping checks the database answers.
	Ping(ctx context.Context) error
	// Close releases connections.
	Close() error

	// SyncDAGs records the DAGs of the binary: new ones are added (not
	// paused), changed ones get their new fingerprint and structure, and
	// DAGs missing from specs are marked inactive; history is kept.
	SyncDAGs(ctx context.Context, specs []DAGSpec) error
	GetDAG(ctx context.Context, dagID string) (DAG, error)
	// ListDAGs returns DAGs ordered by id, and the total count.
	ListDAGs(ctx context.Context, onlyActive bool, limit, offset int) ([]DAG, int, error)
	SetPaused(ctx context.Context, dagID string, paused bool) error

	// CreateRun creates a run in state queued with all its task instances
	// in one transaction. Creating the same (dag, logical date) or (dag,
	// run id) again returns the existing run and created=false; a run id
	// taken with another logical date is ErrConflict.
	CreateRun(ctx context.Context, r NewRun) (run Run, created bool, err error)
	// StartRuns moves the oldest queued runs of dagID to running while
	// fewer than its MaxActiveRuns are running, queueing their root tasks;
	// safe against concurrent schedulers. Returns the runs started.
	StartRuns(ctx context.Context, dagID string, now time.Time) ([]Run, error)
	// FireRuns, for each Fire in one transaction, creates its runs (with
	// their task instances) and moves the DAG's schedule from Prev to Last
	// as a compare-and-set, then admits queued runs of the fired DAGs as
	// StartRuns does (MaxActiveRuns, safe against concurrent callers). It
	// returns one FireResult per Fire, in the order of fires. DAG ids must
	// be distinct. A failed Fire does not undo the others; the returned
	// error is for the whole call (nothing done).
	FireRuns(ctx context.Context, fires []Fire, now time.Time) ([]FireResult, error)
	GetRun(ctx context.Context, dagID, runID string) (Run, error)
	ListRuns(ctx context.Context, q RunQuery) ([]Run, int, error)
	// SetRunState marks a run. failed cancels it: running tasks become
	// failed (their workers stop them), unstarted tasks skipped. success
	// marks every unfinished task success.
	SetRunState(ctx context.Context, dagID, runID string, s state.RunState, now time.Time) (Run, error)
	// DeleteRun removes a finished run with its task instances and logs;
	// ErrConflict while the run is running or has instances queued or
	// running (a run put back to queued).
	DeleteRun(ctx context.Context, dagID, runID string) error
	// PurgeRuns deletes the finished runs q selects (oldest end first, at
	// most q.Limit), with their task instances and logs, in one short
	// transaction that skips runs locked by others; with q.DryRun it only
	// counts them (all of them when q.Limit is 0).
	PurgeRuns(ctx context.Context, q PurgeQuery) (Purged, error)
	// PurgeLogs deletes the logs of the tries of the finished runs q
	// selects (at most q.Limit tries' logs), keeping runs and task
	// instances; with q.DryRun it only counts them. Returns how many
	// tries' logs.
	PurgeLogs(ctx context.Context, q PurgeQuery) (int, error)

	GetTaskInstance(ctx context.Context, dagID, runID, taskID string) (TaskInstance, error)
	ListTaskInstances(ctx context.Context, q TaskQuery) ([]TaskInstance, int, error)
	// ListRunTaskInstances is ListTaskInstances with each instance's run's
	// logical date, from the same query (lists across runs need no lookup
	// per run).
	ListRunTaskInstances(ctx context.Context, q TaskQuery) ([]RunTaskInstance, int, error)
	// ClearTasks resets the named task instances of a run (and, with
	// downstream, every task downstream of them) to be run again, and puts
	// the run back to running. Returns the instances cleared.
	ClearTasks(ctx context.Context, dagID, runID string, taskIDs []string, downstream bool, now time.Time) ([]TaskInstance, error)
	// SetTaskState marks one task instance success or failed by hand and
	// releases its downstream tasks as a finish would.
	SetTaskState(ctx context.Context, dagID, runID, taskID string, s state.TaskState, now time.Time) (TaskInstance, error)

	// ClaimTasks moves up to max queued task instances to running for
	// worker w, highest priority first then oldest, starting a new try.
	ClaimTasks(ctx context.Context, w Worker, max int, now time.Time) ([]Claimed, error)
	// FinishTasks records outcomes and, in the same transaction per batch,
	// releases downstream tasks by their trigger rules and settles runs.
	FinishTasks(ctx context.Context, results []Result) ([]FinishOutcome, error)
	// FinishAndClaim records results as FinishTasks does and then, in the
	// same transaction, claims up to max queued task instances for worker
	// w as ClaimTasks does (highest priority first, then oldest; within
	// MaxActiveTasks caps), the instances the results released included.
	// A worker that finishes a task and takes the next so pays for one
	// transaction, not two. max 0 claims nothing. An error means nothing
	// was recorded and nothing claimed.
	FinishAndClaim(ctx context.Context, results []Result, w Worker, max int, now time.Time) ([]FinishOutcome, []Claimed, error)
	// HeartbeatTasks refreshes the heartbeat of running tries and
	// returns those that are no longer running under that try (taken away:
	// the worker must stop them). A try the worker deferred and keeps
	// parked is held while it is deferred, or queued again without having
	// been claimed by anybody (see ResumeDeferred).
	HeartbeatTasks(ctx context.Context, workerID string, tries []Try, now time.Time) (lost []Try, err error)
	// ResumeDeferred queues again the deferred instances among ids
	// (deferred → queued), whatever they wait for, and wakes the workers.
	// The try number is lowered by one, so the claim that resumes the try
	// gives it back its number. Returns how many were queued.
	ResumeDeferred(ctx context.Context, ids []int64, now time.Time) (int, error)
	// RequeueRetries queues up_for_retry instances due at or before now,
	// and deferred instances whose next check is due (in batches of
	// DeferredBatch, each a compare-and-set on the deferred state, so two
	// schedulers never queue one twice; their try number is lowered by
	// one and marked resumed, as ResumeDeferred does).
	RequeueRetries(ctx context.Context, now time.Time) (int, error)
	// NextRetryAt returns the earliest pending retry time or next check
	// of a deferred instance (ok=false: none); sensors' pokes are not
	// counted (ClaimPokes says when the next is due).
	NextRetryAt(ctx context.Context) (t time.Time, ok bool, err error)
	// ClaimPokes leases to worker w up to max deferred Sensor instances
	// whose poke is due at now, in one transaction, until leaseUntil (when
	// a poke whose result was not recorded is due again), skipping rows
	// another claim holds: two workers never get the same poke under one
	// lease. It returns them in instance id order, and the earliest due time
	// of the pokes left (zero: none).
	ClaimPokes(ctx context.Context, w Worker, max int, now, leaseUntil time.Time) ([]Poke, time.Time, error)
	// ClaimPokesAfter records notYet — poke results that are all "not
	// yet" (an error otherwise) — as FinishPokes does, then claims as
	// ClaimPokes: a poke loop sends a batch's "not yet" with its next
	// claim, one round trip where the store can (PostgreSQL: one implicit
	// transaction). The outcomes are in the order of notYet. Recording
	// "not yet" again under the same lease is harmless, so a caller
	// retries the whole call.
	ClaimPokesAfter(ctx context.Context, w Worker, notYet []PokeResult, max int, now, leaseUntil time.Time) ([]Poke, time.Time, []FinishOutcome, error)
	// FinishPokes records what pokes said, in one transaction: "not yet"
	// moves their next checks, final outcomes end their tries as
	// FinishTasks does (releasing downstream), requeues queue them. A
	// result whose lease is no longer current, or whose instance is no
	// longer deferred on that try, changes nothing (Applied false). The
	// outcomes are in the order of results.
	FinishPokes(ctx context.Context, w Worker, results []PokeResult, now time.Time) ([]FinishOutcome, error)
	// FailZombies fails (or puts up for retry) running instances whose
	// heartbeat is older than staleBefore, releasing downstream as a finish
	// would, but not those of a worker whose own (process) heartbeat is
	// not older than staleBefore: it is alive. Returns the tries it took
	// away.
	FailZombies(ctx context.Context, staleBefore, now time.Time) ([]Try, error)
	// FailWorkerTasks treats the running tries of a worker known to be
	// dead (its process exited) like zombies, at once. Returns them.
	FailWorkerTasks(ctx context.Context, workerID string, now time.Time) ([]Try, error)
	// RecoverWorkerTasks handles the running tries of a worker whose
	// process died: each goes back to queued without using up a try (it
	// keeps its number: it was merely on that worker), unless it was put
	// back so once already under the same try number — two workers died
	// in a row while running it — when it is failed (retried while tries
	// remain) with PoisonError(cause, its last log). Tries of a cleared
	// instance (restarting) are treated as FailWorkerTasks does.
	RecoverWorkerTasks(ctx context.Context, workerID, cause string, now time.Time) (Recovered, error)
	// RequeueTries puts running tries back to queued without using
	// up a try (graceful shutdown). Stale tries are ignored.
	RequeueTries(ctx context.Context, tries []Try) error
	// GetOutput returns the output of taskID in the run with internal id
	// runID, or ErrNotFound.
	GetOutput(ctx context.Context, runID int64, taskID string) (json.RawMessage, error)

	// Grid returns a page of a DAG's runs with the compact states of the
	// given tasks' instances in them, for the UI's grid: one read, however
	// many runs and tasks. An unknown DAG has no runs (not ErrNotFound).
	Grid(ctx context.Context, q GridQuery) (Grid, error)

	// AppendLog appends to the log of one try, keeping at most the
	// configured cap and marking truncation.
	AppendLog(ctx context.Context, a Try, chunk []byte) error
	// ReadLog returns the log of one try.
	ReadLog(ctx context.Context, dagID, runID, taskID string, try int) ([]byte, error)

	RegisterWorker(ctx context.Context, w Worker) error
	HeartbeatWorker(ctx context.Context, workerID string, now time.Time) error
	DeregisterWorker(ctx context.Context, workerID string) error
	ListWorkers(ctx context.Context) ([]Worker, error)

	// HeartbeatScheduler records that the scheduler schedulerID is alive
	// at now (creating its row on the first beat), and forgets schedulers
	// whose latest beat is older than now − SchedulerRetention.
	HeartbeatScheduler(ctx context.Context, schedulerID string, now time.Time) error
	// LatestSchedulerHeartbeat returns the newest heartbeat of any
	// scheduler; ok is false when none was recorded. GET /api/v1/health
	// reports it, so an API process apart from the scheduler sees it.
	LatestSchedulerHeartbeat(ctx context.Context) (t time.Time, ok bool, err error)

	// RecordEvent records an event and, in the same transaction, queues
	// again every deferred task instance waiting on its key (resumed,
	// with the event's payload) and creates a queued run of every
	// active, unpaused DAG scheduled on its key (EventRun). With a DedupeKey held by a kept event it does nothing
	// and returns that event with Duplicate set. A bad key, dedupe key or
	// payload is an error saying so (ErrTooLarge for a payload over
	// MaxEventPayload); nothing is recorded then. It also deletes up to
	// ExpireEventsPerEvent expired events.
	RecordEvent(ctx context.Context, e NewEvent) (EventResult, error)
	// ContinueDeferred queues again one deferred task instance (resumed,
	// with payload, which may be nil), whatever it waits for: the API's
	// continue call and approvals. ErrNotFound when there is no such
	// instance, ErrConflict (saying its state) when it is not deferred.
	// Returns the instance as queued.
	ContinueDeferred(ctx context.Context, dagID, runID, taskID string, payload json.RawMessage, now time.Time) (TaskInstance, error)
	// PurgeEvents deletes up to limit events that expired at or before
	// now (limit ≤ 0: all). Returns how many.
	PurgeEvents(ctx context.Context, now time.Time, limit int) (int, error)

	// Listen subscribes to wake-ups on topics.
	Listen(ctx context.Context, topics ...Topic) (Subscription, error)

	// Caller records and answers the calls of callables.
	Caller
	Pools
}

// Fire asks FireRuns to create the due runs of one DAG and move its
// schedule forward, as one step.
type Fire struct {
	DAGID string
	// Prev is the LastIntervalEnd the caller computed Runs from (nil =
	// none): the compare-and-set key of the schedule.
	Prev *time.Time
	// Last becomes the DAG's LastIntervalEnd and NextDue its NextDueAt.
	Last    time.Time
	NextDue *time.Time
	// Runs are the runs to create (each with DAGID equal to Fire.DAGID);
	// runs that exist already are left as they are.
	Runs []NewRun
}

// FireResult reports what FireRuns did for one Fire.
type FireResult struct {
	DAGID string
	// Created lists the runs created (not those that existed already).
	Created []Run
	// Started lists the runs of the DAG moved to running by admission.
	Started []Run
	// Paused: the DAG is paused or inactive; nothing was done for it.
	Paused bool
	// LastIntervalEnd is the DAG's LastIntervalEnd after the call; with
	// ErrStale, the value another scheduler wrote.
	LastIntervalEnd *time.Time
	// Err is ErrStale (another scheduler moved the schedule first),
	// ErrNotFound (no such DAG or structure) or ErrConflict (a run id
	// taken by another logical date); nothing was done for the DAG then.
	Err error
}
