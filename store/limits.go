package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/trellis-dag/trellis/dag"
)

// Limited reports whether instances of t take the claim's limited path:
// a pool other than default_pool, more than one slot, MaxActive or a
// concurrency key. Tasks in default_pool count as limited too while
// default_pool is not unlimited (the stores check that themselves).
func (t TaskSpec) Limited() bool {
	return (t.Pool != "" && t.Pool != dag.DefaultPool) || t.PoolSlots > 1 || t.MaxActive > 0 || t.KeyTemplate != ""
}

// KeyParams returns the params concurrency keys render from: the DAG's
// params overlaid by the run's conf.
func KeyParams(dagParams, conf json.RawMessage) (map[string]any, error) {
	params, err := dag.ParseConf(dagParams)
	if err != nil {
		return nil, fmt.Errorf("DAG params: %w", err)
	}
	over, err := dag.ParseConf(conf)
	if err != nil {
		return nil, fmt.Errorf("%w: run conf: %v", ErrInvalid, err)
	}
	if params == nil {
		params = map[string]any{}
	}
	maps.Copy(params, over)
	return params, nil
}

// RenderKey renders a task's concurrency key template for one run and
// returns the counter name ("key:" + key); errors wrap ErrInvalid.
func RenderKey(template string, params map[string]any, dagID, taskID, runID string) (string, error) {
	k, err := dag.RenderKey(template, dag.KeyData{Params: params, DAGID: dagID, TaskID: taskID, RunID: runID})
	if err != nil {
		return "", fmt.Errorf("%w: DAG %q task %q run %q: %v", ErrInvalid, dagID, taskID, runID, err)
	}
	return KeyPrefixKey + k, nil
}

// Candidate is a queued instance a claim may take, with the counters it
// would add to: its pool (Slots of it), its task's MaxActive, its
// concurrency key and its DAG's MaxActiveTasks, as counter names ("" =
// none).
type Candidate struct {
	ID       int64
	Counters []Use
}

// Use is an amount taken from one counter.
type Use struct {
	Counter string
	Amount  int
}

// Admit decides which candidates, in the order given (best first), a
// claim takes: each in turn while every counter it uses has room for it,
// at most max. room holds what each counter has left (negative =
// unlimited); a counter missing from room (a pool not created yet) has
// none. A candidate that does not fit never holds back those behind it.
// room is not modified.
func Admit(cands []Candidate, room map[string]int, max int) []int64 {
	a := NewAdmitter(room)
	var out []int64
	for _, c := range cands {
		if len(out) >= max {
			break
		}
		if a.Take(c) {
			out = append(out, c.ID)
		}
	}
	return out
}

// Admitter is Admit one candidate at a time, for claims that read their
// candidates as a stream and stop once they have enough.
type Admitter struct{ left map[string]int }

// NewAdmitter starts from a copy of room (see Admit).
func NewAdmitter(room map[string]int) *Admitter { return &Admitter{left: maps.Clone(room)} }

// Known reports whether counter has a room yet.
func (a *Admitter) Known(counter string) bool {
	_, ok := a.left[counter]
	return ok
}

// Set gives counter its room (negative = unlimited).
func (a *Admitter) Set(counter string, room int) {
	if a.left == nil {
		a.left = map[string]int{}
	}
	a.left[counter] = room
}

// Take takes c when every counter it uses has room for it, and reports
// whether it did.
func (a *Admitter) Take(c Candidate) bool {
	for _, u := range c.Counters {
		r, ok := a.left[u.Counter]
		if !ok || (r >= 0 && r < u.Amount) {
			return false
		}
	}
	for _, u := range c.Counters {
		if a.left[u.Counter] >= 0 {
			a.left[u.Counter] -= u.Amount
		}
	}
	return true
}

// CheckLimits returns what is wrong with the limits of a task spec, or
// nil.
func (t TaskSpec) CheckLimits() error {
	if t.Pool != "" && !dag.ValidPoolName(t.Pool) {
		return fmt.Errorf("invalid pool name %q: must match %s", t.Pool, dag.PoolNamePattern)
	}
	if t.PoolSlots < 0 {
		return fmt.Errorf("pool slots must be at least 1, got %d", t.PoolSlots)
	}
	if t.MaxActive < 0 {
		return fmt.Errorf("MaxActive must be 0 (no cap) or positive, got %d", t.MaxActive)
	}
	if t.KeyTemplate != "" {
		if t.KeyLimit < 1 {
			return fmt.Errorf("concurrency key limit must be at least 1, got %d", t.KeyLimit)
		}
		if _, err := dag.ParseKeyTemplate(t.KeyTemplate); err != nil {
			return fmt.Errorf("concurrency key template %q does not parse: %v", t.KeyTemplate, err)
		}
	}
	return nil
}

// RenderCallKey renders the concurrency key of a call instance with
// canonical arguments args (dag.ConcurrencyByArguments, ByKeys) and
// returns the counter name; errors say why the call cannot be made.
func RenderCallKey(template, dagID, taskID, runID string, args json.RawMessage) (string, error) {
	k, err := dag.RenderKey(template, dag.KeyData{DAGID: dagID, TaskID: taskID, RunID: runID, Args: args})
	if ke := (*dag.CallKeyError)(nil); errors.As(err, &ke) {
		return "", fmt.Errorf("concurrency key: %s", ke.Reason)
	}
	if err != nil {
		return "", err
	}
	return KeyPrefixKey + k, nil
}
