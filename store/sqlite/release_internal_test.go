package sqlite

import (
	"slices"
	"testing"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// TestReleaseGroupDecidesAsOneByOne checks, over every trigger rule and
// every upstream count of up to six upstream tasks, what releaseGroup
// relies on: k upstream instances reaching the same final state, counted
// at once, decide a waiting task as counting them one by one does (the
// first of the k decisions that is not "wait"). A rule for which this
// failed would have to be released one result at a time.
func TestReleaseGroupDecidesAsOneByOne(t *testing.T) {
	rules := []dag.TriggerRule{dag.AllSuccess, dag.AllFailed, dag.AllDone, dag.AllSkipped, dag.OneSuccess,
		dag.OneFailed, dag.OneDone, dag.NoneFailed, dag.NoneFailedMinOneSuccess, dag.NoneSkipped, dag.Always}
	finals := []state.TaskState{state.Success, state.Failed, state.Skipped, state.UpstreamFailed, state.Removed}
	checked := 0
	for _, rule := range rules {
		for total := 1; total <= 6; total++ {
			for _, u := range upstreamCounts(total) {
				if state.Decide(rule, u) != state.Wait {
					continue // decided already: not waiting any more
				}
				for _, s := range finals {
					oneByOne, v := state.Wait, u
					for k := 1; v.Done() < total; k++ {
						v = v.Add(s)
						if oneByOne == state.Wait {
							oneByOne = state.Decide(rule, v)
						}
						if got := state.Decide(rule, v); got != oneByOne {
							t.Errorf("%s, %+v then %d × %s: at once %v, one by one %v", rule, u, k, s, got, oneByOne)
						}
						checked++
					}
				}
			}
		}
	}
	if checked < 1000 {
		t.Fatalf("only %d cases checked", checked)
	}
}

// upstreamCounts lists every Upstream of total instances with some not
// finished yet.
func upstreamCounts(total int) []state.Upstream {
	var out []state.Upstream
	for su := 0; su < total; su++ {
		for f := 0; su+f < total; f++ {
			for sk := 0; su+f+sk < total; sk++ {
				for uf := 0; su+f+sk+uf < total; uf++ {
					for rm := 0; su+f+sk+uf+rm < total; rm++ {
						out = append(out, state.Upstream{Total: total, Success: su, Failed: f, Skipped: sk, UpstreamFailed: uf, Removed: rm})
					}
				}
			}
		}
	}
	return out
}

// The waiting, queued and running states of unfinishedSQL's three
// indexes are every non-terminal state, each once: a state left out would
// let a run end with an instance in it.
func TestUnfinishedStatesSplit(t *testing.T) {
	seen := map[state.TaskState]int{state.Queued: 1}
	for _, s := range append(slices.Clone(waitingStates), runningStates...) {
		seen[s]++
	}
	for _, s := range state.TaskStates {
		want := 0
		if !s.Terminal() {
			want = 1
		}
		if seen[s] != want {
			t.Errorf("state %s is in %d of the unfinished indexes, want %d", s, seen[s], want)
		}
	}
}
