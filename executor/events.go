package executor

import (
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// Events receives what workers did, for monitoring (the scheduler's
// Metrics hook is the model). A Worker calls TaskFinished for every result
// the store applied, after the transaction that recorded it committed; a
// Pool calls it with the finishes its children forward, and EventsDropped
// with how many finishes a child could not forward (its queue to the pool
// was full). Methods must be cheap, must not block and must be safe for
// concurrent use.
type Events interface {
	TaskFinished(Finish)
	EventsDropped(n int)
}

// Finish is one try whose result the store recorded.
type Finish struct {
	DAGID  string `json:"dag"`
	RunID  string `json:"run"`
	TaskID string `json:"task"`
	Try    int    `json:"try"`
	// State is what the store wrote: success, failed, skipped or
	// up_for_retry.
	State state.TaskState `json:"state"`
	// Duration is how long the try ran, from the start of its execution
	// in the worker to its end.
	Duration time.Duration `json:"dur"`
	// Queued is how long the task instance waited in queued before a
	// worker claimed it; negative when unknown.
	Queued time.Duration `json:"queued"`
}

// finishes describes the applied outcomes of a committed batch; claims
// holds the claim of each try of the batch that is still known.
func finishes(batch []store.Result, outcomes []store.FinishOutcome, claims map[int64]store.Claimed) []Finish {
	if len(outcomes) == 0 {
		return nil
	}
	results := make(map[int64]store.Result, len(batch))
	for _, r := range batch {
		results[r.ID] = r
	}
	out := make([]Finish, 0, len(outcomes))
	for _, o := range outcomes {
		c, ok := claims[o.ID]
		r, rok := results[o.ID]
		if !o.Applied || !ok || !rok || c.TryNumber != o.TryNumber || r.State == state.Deferred {
			continue // a deferral is no finish: the try goes on
		}
		f := Finish{DAGID: c.DAGID, RunID: c.DAGRunID, TaskID: c.TaskID, Try: o.TryNumber, State: o.State, Queued: -1}
		if !r.StartedAt.IsZero() && r.EndedAt.After(r.StartedAt) {
			f.Duration = r.EndedAt.Sub(r.StartedAt)
		}
		if c.QueuedAt != nil && c.StartedAt != nil {
			f.Queued = max(0, c.StartedAt.Sub(*c.QueuedAt))
		}
		out = append(out, f)
	}
	return out
}
