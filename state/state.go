// Package state holds the task-instance and run state machines of Trellis
// and the pure decisions made on them: which transitions are allowed, what
// a trigger rule decides from the states of a task's upstream tasks, and
// when a failed try is retried. Nothing here touches a database or a clock;
// the store applies these decisions inside its transactions.
package state

// TaskState is the state of one task instance. Names follow Airflow.
type TaskState string

// Task-instance states (CONTRACT §3).
const (
	// None: waiting for its upstream tasks.
	None TaskState = "none"
	// Scheduled: dependencies met, waiting for its run to be admitted.
	Scheduled TaskState = "scheduled"
	// Queued: ready to be claimed by a worker.
	Queued TaskState = "queued"
	// Running: claimed by a worker and executing.
	Running TaskState = "running"
	// Success, Failed, Skipped, UpstreamFailed: terminal outcomes.
	Success        TaskState = "success"
	Failed         TaskState = "failed"
	Skipped        TaskState = "skipped"
	UpstreamFailed TaskState = "upstream_failed"
	// UpForRetry: a failed try with tries left, queued again when due.
	UpForRetry TaskState = "up_for_retry"
	// Deferred: suspended, to be resumed later (reserved for deferrable tasks).
	Deferred TaskState = "deferred"
	// Removed: the task no longer exists in the DAG's current structure.
	Removed TaskState = "removed"
	// Restarting: cleared while running; re-queued once the running try ends.
	Restarting TaskState = "restarting"
)

// TaskStates lists every task-instance state.
var TaskStates = []TaskState{None, Scheduled, Queued, Running, Success, Failed,
	Skipped, UpstreamFailed, UpForRetry, Deferred, Removed, Restarting}

// Terminal reports whether s is a final outcome: success, failed, skipped,
// upstream_failed or removed.
func (s TaskState) Terminal() bool {
	switch s {
	case Success, Failed, Skipped, UpstreamFailed, Removed:
		return true
	}
	return false
}

// Valid reports whether s is a known task-instance state.
func (s TaskState) Valid() bool {
	for _, x := range TaskStates {
		if s == x {
			return true
		}
	}
	return false
}

// RunState is the state of a DAG run.
type RunState string

// Run states.
const (
	RunQueued  RunState = "queued"
	RunRunning RunState = "running"
	RunSuccess RunState = "success"
	RunFailed  RunState = "failed"
)

// RunStates lists every run state.
var RunStates = []RunState{RunQueued, RunRunning, RunSuccess, RunFailed}

// Terminal reports whether the run has finished.
func (s RunState) Terminal() bool { return s == RunSuccess || s == RunFailed }

// Valid reports whether s is a known run state.
func (s RunState) Valid() bool {
	for _, x := range RunStates {
		if s == x {
			return true
		}
	}
	return false
}
