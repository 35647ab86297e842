package executor

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// tryCaller is the dag.Caller of one try in a worker. Calls made since the
// last wait are recorded together (with those of the worker's other tries
// waiting at the same time: callBatcher); a wait on unfinished
// calls parks the try: its slot is released and its deferral recorded in
// the next finishing batch, its goroutine waits here, heartbeats keep it,
// and the worker's own claim of the instance (queued again by the
// finishing transaction of its last callee) resumes it. Any other claimer
// runs the try from the start, its finished calls answered by the store.
type tryCaller struct {
	w *Worker
	a *activeTry
	d *dag.DAG

	mu      sync.Mutex
	pending []*dag.Call
	seq     int                 // calls recorded by this execution of the try
	open    map[*dag.Call]int64 // recorded, not finished: the call instance
}

func newTryCaller(w *Worker, a *activeTry, d *dag.DAG) *tryCaller {
	return &tryCaller{w: w, a: a, d: d, open: map[*dag.Call]int64{}}
}

// Start queues calls to record with the next wait.
func (k *tryCaller) Start(_ *dag.Context, calls []*dag.Call) {
	k.mu.Lock()
	k.pending = append(k.pending, calls...)
	k.mu.Unlock()
}

// Wait records what is pending and, while call is unfinished, parks the
// try until its calls have finished.
func (k *tryCaller) Wait(c *dag.Context, call *dag.Call) error {
	for !call.Done() {
		if err := k.flush(c); err != nil {
			return err
		}
		if call.Done() {
			return nil
		}
		if err := k.park(c); err != nil {
			return err
		}
		if err := k.refresh(c); err != nil {
			return err
		}
	}
	return nil
}

// flush records the pending calls (callBatcher) and finishes those
// answered at once (final, refused).
func (k *tryCaller) flush(c *dag.Context) error {
	k.mu.Lock()
	calls := k.pending
	k.pending = nil
	batch := make([]store.NewCall, len(calls))
	for i, call := range calls {
		k.seq++
		key := store.CallKey(call.Args)
		if t := k.d.Task(call.TaskID); t != nil && !t.Dedup() {
			// The caller and the call's position: a try run again from
			// the start makes the same calls in the same order.
			key = fmt.Sprintf("~%d.%d", k.a.key.ID, k.seq)
		}
		batch[i] = store.NewCall{TaskID: call.TaskID, Key: key, Arguments: call.Args}
	}
	k.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	states, err := k.w.calls.call(c, k.a.claim.RunID, store.CallBatch{Caller: k.a.key, Calls: batch,
		MaxCalls: k.d.MaxCalls(), Now: k.w.cfg.Clock.Now()})
	if errors.Is(err, store.ErrStale) {
		return fmt.Errorf("record calls: the try was taken away: %w", err)
	}
	if err != nil {
		return fmt.Errorf("record %d calls: %w", len(batch), err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, cs := range states {
		k.settle(calls[i], cs)
	}
	return nil
}

// settle finishes call from its state when it is final or refused, and
// keeps it open otherwise. k.mu is held.
func (k *tryCaller) settle(call *dag.Call, cs store.CallState) {
	switch {
	case cs.Cycle:
		call.Finish(nil, dag.Permanent(&dag.CallCycleError{Path: cs.Refused}))
	case cs.Refused != "":
		call.Finish(nil, dag.Permanent(fmt.Errorf("call %s: %s", call.Label(), cs.Refused)))
	case cs.State == state.Success:
		out := cs.Output
		if out == nil {
			out = []byte("null")
		}
		call.Finish(out, nil)
	case cs.State.Terminal():
		why := cs.Error
		if why == "" {
			why = "it ended " + string(cs.State)
		}
		call.Finish(nil, &dag.CallError{Call: call.Label(), Err: why})
	default:
		k.open[call] = cs.ID
		return
	}
	delete(k.open, call)
}

// refresh reads the states of the open calls in one CallResults.
func (k *tryCaller) refresh(c *dag.Context) error {
	k.mu.Lock()
	calls := make([]*dag.Call, 0, len(k.open))
	ids := make([]int64, 0, len(k.open))
	for call, id := range k.open {
		calls, ids = append(calls, call), append(ids, id)
	}
	k.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	var states []store.CallState
	err := k.w.storeCall(func(ctx context.Context) error {
		var e error
		states, e = k.w.cfg.Store.CallResults(ctx, ids)
		return e
	})
	if err != nil {
		return fmt.Errorf("read the results of %d calls: %w", len(ids), err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, cs := range states {
		k.settle(calls[i], cs)
	}
	return nil
}

// park releases the try's slot, records its deferral and waits until the
// worker's claim resumes it (the slot is then taken again) or the try's
// context ends.
func (k *tryCaller) park(c *dag.Context) error {
	w, a := k.w, k.a
	resume := make(chan struct{})
	w.mu.Lock()
	// Parked before the deferral is submitted: a claim of the instance
	// may follow the deferral's commit at once.
	a.parked, a.resume = true, resume
	w.executing--
	w.mu.Unlock()
	notify(w.slotFreed)
	w.fin.submit(store.Result{Try: a.key, State: state.Deferred, Deferral: store.Deferral{Calls: true},
		EndedAt: w.cfg.Clock.Now()})
	select {
	case <-resume:
		return nil
	case <-c.Done():
		w.mu.Lock()
		if a.parked {
			a.parked, a.resume = false, nil
			w.executing++
		}
		w.mu.Unlock()
		return context.Cause(c)
	}
}

// resumeParked resumes the parked try a for claim c, taking a slot for it;
// false when a is not parked under that try. w.mu is held.
func (w *Worker) resumeParked(a *activeTry, c store.Claimed) bool {
	if a == nil || !a.parked || a.key != (store.Try{ID: c.ID, TryNumber: c.TryNumber}) {
		return false
	}
	a.parked = false
	close(a.resume)
	a.resume = nil
	w.executing++
	return true
}

var _ dag.Caller = (*tryCaller)(nil)
