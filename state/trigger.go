package state

import (
	"fmt"

	"github.com/trellis-dag/trellis/dag"
)

// Upstream counts the instances of a task's DIRECT upstream tasks in one
// run by state. Total counts all of them, finished or not; the other fields
// count the finished ones by final state.
type Upstream struct {
	Total          int
	Success        int
	Failed         int
	Skipped        int
	UpstreamFailed int
	Removed        int
}

// Done returns how many upstream instances have finished (success, failed,
// skipped, upstream_failed or removed) — Airflow's "done" count.
func (u Upstream) Done() int {
	return u.Success + u.Failed + u.Skipped + u.UpstreamFailed + u.Removed
}

// Valid reports an error when the counts are inconsistent: a negative count
// or more finished instances than Total.
func (u Upstream) Valid() error {
	if u.Total < 0 || u.Success < 0 || u.Failed < 0 || u.Skipped < 0 ||
		u.UpstreamFailed < 0 || u.Removed < 0 {
		return fmt.Errorf("upstream counts %+v: negative count", u)
	}
	if u.Done() > u.Total {
		return fmt.Errorf("upstream counts %+v: %d finished of %d in total", u, u.Done(), u.Total)
	}
	return nil
}

// Add returns u with one more finished upstream instance in state s (s
// must be terminal; other states only count towards Total, which Add does
// not change).
func (u Upstream) Add(s TaskState) Upstream {
	switch s {
	case Success:
		u.Success++
	case Failed:
		u.Failed++
	case Skipped:
		u.Skipped++
	case UpstreamFailed:
		u.UpstreamFailed++
	case Removed:
		u.Removed++
	}
	return u
}

// Decision is what a trigger rule decides for a task instance waiting in
// state none.
type Decision int

// Decisions.
const (
	// Wait: not decidable yet; evaluate again when an upstream finishes.
	Wait Decision = iota
	// Run: the trigger rule is met; schedule the task.
	Run
	// Skip: the task will never run; mark it skipped.
	Skip
	// FailUpstream: the task will never run because of an upstream
	// failure; mark it upstream_failed.
	FailUpstream
)

// String returns the decision's name: wait, run, skip or upstream_failed.
func (d Decision) String() string {
	switch d {
	case Wait:
		return "wait"
	case Run:
		return "run"
	case Skip:
		return "skip"
	case FailUpstream:
		return "upstream_failed"
	}
	return fmt.Sprintf("Decision(%d)", int(d))
}

// State returns the task state a final decision writes: skipped for Skip,
// upstream_failed for FailUpstream, scheduled for Run and none for Wait.
func (d Decision) State() TaskState {
	switch d {
	case Run:
		return Scheduled
	case Skip:
		return Skipped
	case FailUpstream:
		return UpstreamFailed
	}
	return None
}

// Decide applies trigger rule rule to the states of a task's direct
// upstream instances. It follows Apache Airflow's TriggerRuleDep
// (airflow/ti_deps/deps/trigger_rule_dep.py) with the scheduler's
// flag_upstream_failed evaluation, which is what marks instances skipped
// and upstream_failed:
//
//   - A task with no upstream tasks runs, whatever its rule, and a task with
//     rule always runs at once, without waiting for its upstream (Airflow
//     passes both before looking at any count).
//   - Skips and upstream failures are decided as soon as they are certain,
//     not when every upstream has finished; runs likewise for the "one_*"
//     rules. The decisions per rule are documented case by case below.
//
// Removed upstream instances are left out of the counts, as Airflow does
// for the only removed instances it can meet (removed mapped instances:
// "num_failures -= removed"): they are neither successes nor failures, and
// Total shrinks by their number. A task all of whose upstream instances
// were removed is then decided with an empty upstream by its rule (it is
// not treated as a task without upstream tasks).
//
// Whenever every upstream instance has finished (Done() == Total), the
// decision is never Wait for a valid rule, so a run cannot deadlock.
// Inconsistent counts (see Upstream.Valid) and unknown rules yield Wait;
// Airflow likewise fails the dependency of a rule it has no strategy for.
func Decide(rule dag.TriggerRule, u Upstream) Decision {
	if u.Valid() != nil {
		return Wait
	}
	if u.Total == 0 || rule == dag.Always {
		return Run
	}
	// Airflow's counts with removed instances taken out.
	n := u.Total - u.Removed
	success, failed, skipped, upFailed := u.Success, u.Failed, u.Skipped, u.UpstreamFailed
	done := success + failed + skipped + upFailed
	allDone := done >= n
	anyFailed := failed+upFailed > 0

	switch rule {
	case dag.AllSuccess:
		// Airflow: upstream_failed as soon as any upstream failed or is
		// upstream_failed; otherwise skipped as soon as any upstream was
		// skipped (skips propagate); runs once every upstream succeeded.
		switch {
		case anyFailed:
			return FailUpstream
		case skipped > 0:
			return Skip
		case success == n:
			return Run
		}
	case dag.AllFailed:
		// Airflow: skipped as soon as any upstream succeeded or was skipped;
		// runs once every upstream is failed or upstream_failed.
		switch {
		case success+skipped > 0:
			return Skip
		case failed+upFailed == n:
			return Run
		}
	case dag.AllDone:
		// Airflow: runs once every upstream finished, whatever its state;
		// never skipped nor upstream_failed.
		if allDone {
			return Run
		}
	case dag.AllSkipped:
		// Airflow: skipped as soon as any upstream succeeded, failed or is
		// upstream_failed; runs once every upstream was skipped.
		switch {
		case success+failed+upFailed > 0:
			return Skip
		case skipped == n:
			return Run
		}
	case dag.OneSuccess:
		// Airflow: runs as soon as one upstream succeeded; once every
		// upstream finished without a success it is skipped if they were all
		// skipped, upstream_failed otherwise.
		switch {
		case success > 0:
			return Run
		case allDone && done == skipped:
			return Skip
		case allDone:
			return FailUpstream
		}
	case dag.OneFailed:
		// Airflow: runs as soon as one upstream failed or is
		// upstream_failed; skipped once every upstream finished without one.
		switch {
		case anyFailed:
			return Run
		case allDone:
			return Skip
		}
	case dag.OneDone:
		// Airflow: runs as soon as one upstream succeeded or failed
		// (upstream_failed does not count); skipped once every upstream
		// finished without one.
		switch {
		case success+failed > 0:
			return Run
		case allDone:
			return Skip
		}
	case dag.NoneFailed:
		// Airflow: upstream_failed as soon as any upstream failed or is
		// upstream_failed; runs once every upstream succeeded or was
		// skipped — even when all were skipped (skips do not propagate).
		switch {
		case anyFailed:
			return FailUpstream
		case success+skipped == n:
			return Run
		}
	case dag.NoneFailedMinOneSuccess:
		// Airflow: upstream_failed as soon as any upstream failed or is
		// upstream_failed; skipped when every upstream was skipped; runs once
		// every upstream succeeded or was skipped with at least one success.
		switch {
		case anyFailed:
			return FailUpstream
		case skipped == n:
			return Skip
		case success+skipped == n:
			return Run
		}
	case dag.NoneSkipped:
		// Airflow: skipped as soon as any upstream was skipped; runs once
		// every upstream finished with none skipped (failures do not stop
		// it).
		switch {
		case skipped > 0:
			return Skip
		case allDone:
			return Run
		}
	}
	return Wait
}
