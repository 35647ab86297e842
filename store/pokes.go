package store

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/trellis-dag/trellis/state"
)

// CheckPokeResults returns what is wrong with the results a poke loop
// reports to FinishPokes: an instance reported twice, a state that is
// not an outcome, a "not yet" without its next check, an output that is
// not JSON.
func CheckPokeResults(results []PokeResult) error {
	// Twice reported: equal neighbours once sorted (no map per batch).
	ids := make([]int64, len(results))
	for i, r := range results {
		ids[i] = r.ID
	}
	slices.Sort(ids)
	for k := 1; k < len(ids); k++ {
		if ids[k] != ids[k-1] {
			continue
		}
		first := slices.IndexFunc(results, func(r PokeResult) bool { return r.ID == ids[k] })
		i := first + 1 + slices.IndexFunc(results[first+1:], func(r PokeResult) bool { return r.ID == ids[k] })
		return fmt.Errorf("record pokes: result %d: instance %d is reported twice", i, ids[k])
	}
	for i, r := range results {
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

// CheckNotYet returns what is wrong with the results a poke loop sends
// with its next claim (ClaimPokesAfter): CheckPokeResults's findings, or
// a result that is not a "not yet".
func CheckNotYet(results []PokeResult) error {
	for i, r := range results {
		if r.Requeue || r.Result.State != state.Deferred {
			return fmt.Errorf("record pokes with a claim: result %d (instance %d) is not a \"not yet\"", i, r.ID)
		}
	}
	return CheckPokeResults(results)
}
