package store

import (
	"encoding/json"
	"fmt"

	"github.com/trellis-dag/trellis/state"
)

// CheckPokeResults returns what is wrong with the results a poke loop
// reports to FinishPokes: an instance reported twice, a state that is
// not an outcome, a "not yet" without its next check, an output that is
// not JSON.
func CheckPokeResults(results []PokeResult) error {
	seen := make(map[int64]bool, len(results))
	for i, r := range results {
		if seen[r.ID] {
			return fmt.Errorf("record pokes: result %d: instance %d is reported twice", i, r.ID)
		}
		seen[r.ID] = true
		if r.Requeue {
			continue
		}
		switch r.Result.State {
		case state.Success, state.Failed, state.Skipped:
		case state.Deferred:
			if r.Result.Deferral.NextCheckAt.IsZero() {
				return fmt.Errorf("record pokes: result %d (instance %d): a \"not yet\" needs its next check time", i, r.ID)
			}
		default:
			return fmt.Errorf("record pokes: result %d (instance %d): state %q is not an outcome (want success, failed, skipped or deferred)",
				i, r.ID, r.Result.State)
		}
		if r.Result.Output != nil && !json.Valid(r.Result.Output) {
			return fmt.Errorf("record pokes: result %d (instance %d): output is not valid JSON", i, r.ID)
		}
	}
	return nil
}
