package state

// The task-instance lifecycle, after Airflow's (see Airflow's "Task
// Instances" lifecycle diagram and the states of airflow.utils.state):
//
//	none ──► scheduled ──► queued ──► running ──► success | failed | skipped
//	  │          │            │          │
//	  │          │            │          ├──► up_for_retry ──► scheduled | queued
//	  │          │            │          ├──► deferred ──► scheduled | queued
//	  │          │            │          ├──► restarting (cleared while running)
//	  │          │            │          └──► queued (requeued on graceful shutdown)
//	  │          │            └──► scheduled (requeued), failed | up_for_retry (lost before it ran)
//	  └──► skipped | upstream_failed (trigger rule, branch)
//
// plus the transitions every state has:
//
//   - clear: any state but running → none (a running instance is cleared
//     to restarting instead and goes on once its try ends);
//   - marking by hand (the REST API's updateTaskInstancesState): any state
//     but removed → success, failed or skipped; skipped is also how a run
//     marked failed cancels its instances that had not started;
//   - structure change: any state → removed when the task disappears from
//     the DAG, and removed → none when it comes back.
//
// A transition from a state to itself is not a transition and is refused.
var taskTransitions = map[TaskState][]TaskState{
	// Waiting for upstream: the trigger rule decides (scheduled, skipped,
	// upstream_failed); the store may queue a ready instance directly.
	None: {Scheduled, Queued, Skipped, UpstreamFailed},
	// Ready, waiting for its run's admission; back to none on clear.
	Scheduled: {Queued, None},
	// Waiting for a worker: claimed (running), requeued (scheduled), or
	// lost by the executor before it started (failed, or up_for_retry when
	// tries remain), as Airflow's executor-reported failures of queued tasks.
	Queued: {Running, Scheduled, None, UpForRetry},
	// A try ends (success, failed, skipped, up_for_retry), suspends
	// (deferred), is cleared while running (restarting), or is put back
	// without using up a try on graceful shutdown (queued).
	Running: {UpForRetry, Deferred, Restarting, Queued},
	// Due again: Airflow moves it to scheduled; Trellis may queue it
	// directly.
	UpForRetry: {Scheduled, Queued, None},
	// Resumed by its trigger (scheduled or queued), or the trigger failed
	// (up_for_retry when tries remain).
	Deferred: {Scheduled, Queued, None, UpForRetry},
	// The cleared try ended: tried again without using up a try (Airflow
	// treats restarting as always eligible to retry), or requeued at once.
	Restarting: {UpForRetry, Queued, None},
	// Terminal states leave only by clear, by hand or by removal.
	Success:        {None},
	Failed:         {None},
	Skipped:        {None},
	UpstreamFailed: {None},
	// A removed task that reappears in the DAG starts over.
	Removed: {None},
}

// CanTransition reports whether a task instance may move from state from
// to state to. The table is documented on taskTransitions above; in short:
// the forward lifecycle none → scheduled → queued → running → outcome,
// retries through up_for_retry, deferral, restarting, requeue on graceful
// shutdown, plus clear (→ none; running → restarting), marking by hand
// (→ success, failed, skipped) and removal (→ removed, removed → none).
// Unknown states and from == to are refused.
func CanTransition(from, to TaskState) bool {
	if from == to || !from.Valid() || !to.Valid() {
		return false
	}
	switch to {
	case Success, Failed, Skipped:
		// Outcomes of a running try, and marking by hand from any state but
		// removed (a removed task has nothing to mark).
		if from != Removed {
			return true
		}
	case Removed:
		// The task disappeared from the DAG's structure.
		return true
	case None:
		// Clear; a running instance is cleared to restarting instead.
		if from != Running {
			return true
		}
	}
	for _, s := range taskTransitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// CanTransitionRun reports whether a DAG run may move from state from to
// state to. As in Airflow:
//
//   - queued → running when the scheduler admits it (MaxActiveRuns);
//   - running → success | failed when its leaf tasks decide it (RunOutcome);
//   - any → success | failed | queued by hand (the REST API's PATCH of a
//     dag run accepts exactly these three), queued being how a cleared run
//     starts over.
//
// Nothing but queued enters running, and from == to is refused.
func CanTransitionRun(from, to RunState) bool {
	if from == to || !from.Valid() || !to.Valid() {
		return false
	}
	switch to {
	case RunRunning:
		return from == RunQueued
	case RunSuccess, RunFailed, RunQueued:
		return true
	}
	return false
}
