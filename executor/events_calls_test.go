package executor

import (
	"testing"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestFinishesSkipDeferrals: a deferral is no finish (the try goes on,
// parked); the finish of a call counts as a task's, under the callable's
// task id.
func TestFinishesSkipDeferrals(t *testing.T) {
	call := store.Claimed{TaskInstance: store.TaskInstance{ID: 1, DAGID: "d", TaskID: "fibonacci", TryNumber: 1, MapIndex: 3}}
	caller := store.Claimed{TaskInstance: store.TaskInstance{ID: 2, DAGID: "d", TaskID: "start", TryNumber: 1, MapIndex: -1}}
	batch := []store.Result{
		{Try: store.Try{ID: 1, TryNumber: 1}, State: state.Success},
		{Try: store.Try{ID: 2, TryNumber: 1}, State: state.Deferred, Deferral: store.Deferral{Calls: true}},
	}
	outcomes := []store.FinishOutcome{
		{Try: store.Try{ID: 1, TryNumber: 1}, Applied: true, State: state.Success},
		{Try: store.Try{ID: 2, TryNumber: 1}, Applied: true, State: state.Deferred},
	}
	got := finishes(batch, outcomes, map[int64]store.Claimed{1: call, 2: caller})
	if len(got) != 1 || got[0].TaskID != "fibonacci" || got[0].State != state.Success {
		t.Errorf("finishes = %+v, want only the call's success", got)
	}
}
