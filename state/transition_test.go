package state

import (
	"slices"
	"testing"
)

// allowedTask is the expected transition table, written out by hand: for
// every state, every state it may move to.
var allowedTask = map[TaskState][]TaskState{
	None:           {Scheduled, Queued, Success, Failed, Skipped, UpstreamFailed, Removed},
	Scheduled:      {None, Queued, Success, Failed, Skipped, Removed},
	Queued:         {None, Scheduled, Running, Success, Failed, Skipped, UpForRetry, Removed},
	Running:        {Success, Failed, Skipped, UpForRetry, Deferred, Restarting, Queued, Removed},
	Success:        {None, Failed, Skipped, Removed},
	Failed:         {None, Success, Skipped, Removed},
	Skipped:        {None, Success, Failed, Removed},
	UpstreamFailed: {None, Success, Failed, Skipped, Removed},
	UpForRetry:     {None, Scheduled, Queued, Success, Failed, Skipped, Removed},
	Deferred:       {None, Scheduled, Queued, Success, Failed, Skipped, UpForRetry, Removed},
	Removed:        {None},
	Restarting:     {None, Queued, UpForRetry, Success, Failed, Skipped, Removed},
}

func TestCanTransitionEveryPair(t *testing.T) {
	if len(allowedTask) != len(TaskStates) {
		t.Fatalf("expected table covers %d states, there are %d", len(allowedTask), len(TaskStates))
	}
	for _, from := range TaskStates {
		for _, to := range TaskStates {
			want := slices.Contains(allowedTask[from], to)
			if got := CanTransition(from, to); got != want {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", from, to, got, want)
			}
		}
	}
}

func TestCanTransitionLifecycles(t *testing.T) {
	paths := []struct {
		name string
		path []TaskState
		ok   bool
	}{
		{"happy path", []TaskState{None, Scheduled, Queued, Running, Success}, true},
		{"retry", []TaskState{None, Scheduled, Queued, Running, UpForRetry, Queued, Running, Failed}, true},
		{"retry via scheduled", []TaskState{Running, UpForRetry, Scheduled, Queued, Running, Success}, true},
		{"deferral", []TaskState{Queued, Running, Deferred, Scheduled, Queued, Running, Success}, true},
		{"graceful shutdown requeue", []TaskState{Queued, Running, Queued, Running, Success}, true},
		{"clear while running", []TaskState{Running, Restarting, UpForRetry, Queued, Running, Success}, true},
		{"clear and rerun", []TaskState{Running, Failed, None, Scheduled}, true},
		{"trigger rule skip", []TaskState{None, Skipped}, true},
		{"upstream failed", []TaskState{None, UpstreamFailed, None}, true},
		{"removed and back", []TaskState{Success, Removed, None}, true},
		{"cancel queued", []TaskState{Queued, Skipped}, true},
		{"mark by hand", []TaskState{UpstreamFailed, Success, Failed}, true},
		{"no skipping the queue", []TaskState{None, Running}, false},
		{"running cannot be cleared to none", []TaskState{Running, None}, false},
		{"success does not retry", []TaskState{Success, UpForRetry}, false},
		{"removed cannot be marked", []TaskState{Removed, Success}, false},
		{"finished cannot run again without clear", []TaskState{Failed, Running}, false},
		{"self transition", []TaskState{Queued, Queued}, false},
		{"upstream_failed only from none", []TaskState{Queued, UpstreamFailed}, false},
		{"unknown state", []TaskState{None, "bogus"}, false},
	}
	for _, p := range paths {
		ok := true
		for i := 1; i < len(p.path); i++ {
			if !CanTransition(p.path[i-1], p.path[i]) {
				ok = false
			}
		}
		if ok != p.ok {
			t.Errorf("%s %v: all transitions allowed = %v, want %v", p.name, p.path, ok, p.ok)
		}
	}
}

func TestCanTransitionRunEveryPair(t *testing.T) {
	allowed := map[RunState][]RunState{
		RunQueued:  {RunRunning, RunSuccess, RunFailed},
		RunRunning: {RunQueued, RunSuccess, RunFailed},
		RunSuccess: {RunQueued, RunFailed},
		RunFailed:  {RunQueued, RunSuccess},
	}
	for _, from := range RunStates {
		for _, to := range RunStates {
			want := slices.Contains(allowed[from], to)
			if got := CanTransitionRun(from, to); got != want {
				t.Errorf("CanTransitionRun(%s, %s) = %v, want %v", from, to, got, want)
			}
		}
	}
	if CanTransitionRun("bogus", RunRunning) || CanTransitionRun(RunQueued, "bogus") {
		t.Error("unknown run states must be refused")
	}
}
