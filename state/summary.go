package state

// summaryOrder ranks states from the most pressing: the summary of a group
// of instances is the first of these any of them is in (Airflow's rule for
// mapped tasks): failed if any failed, running if any runs, success only
// when every one succeeded (or was skipped or removed).
var summaryOrder = []TaskState{Failed, UpstreamFailed, UpForRetry, Running, Restarting, Deferred,
	Queued, Scheduled, None, Success, Skipped, Removed}

// Summary is the one state shown for a group of instances (the call
// instances of a callable in a run), from how many are in each state.
// An empty group is None; states Summary does not know rank last.
func Summary(counts map[TaskState]int) TaskState {
	for _, s := range summaryOrder {
		if counts[s] > 0 {
			return s
		}
	}
	for s, n := range counts {
		if n > 0 {
			return s
		}
	}
	return None
}
