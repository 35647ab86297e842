package executor

import (
	"context"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// finisher records results in batches. A result is committed at once when
// no commit is in flight; results that arrive while one is in flight (or
// within FinishDelay) go together into the next, so one commit carries
// many results under load without adding latency when idle.
type finisher struct {
	w *Worker

	mu      sync.Mutex
	pending []store.Result
	closing bool

	signal chan struct{} // capacity 1: pending changed or closing
	done   chan struct{} // closed when the loop has returned
}

// Finish retry policy: a failed FinishTasks is retried with backoff; a
// batch that keeps failing is split and each result retried alone, so one
// bad result cannot block the others. A result that cannot be recorded is
// dropped: its try stops heart-beating and the zombie sweep recovers it.
const (
	finishAttempts      = 8
	finishFirstBackoff  = 10 * time.Millisecond
	finishMaxBackoff    = time.Second
	maxFinishBatchItems = 1000
)

func newFinisher(w *Worker) *finisher {
	return &finisher{w: w, signal: make(chan struct{}, 1), done: make(chan struct{})}
}

// submit queues r for the next commit.
func (f *finisher) submit(r store.Result) {
	f.mu.Lock()
	f.pending = append(f.pending, r)
	f.mu.Unlock()
	notify(f.signal)
}

// close makes the loop commit what is pending and return; it waits.
func (f *finisher) close() {
	f.mu.Lock()
	f.closing = true
	f.mu.Unlock()
	notify(f.signal)
	<-f.done
}

func (f *finisher) loop() {
	defer close(f.done)
	for {
		<-f.signal
		for {
			if d := f.w.cfg.FinishDelay; d > 0 && f.hasPending() {
				t := f.w.cfg.Clock.NewTimer(d)
				<-t.C()
			}
			batch, closing := f.take()
			if len(batch) == 0 {
				if closing {
					return
				}
				break
			}
			f.commit(batch)
		}
	}
}

func (f *finisher) hasPending() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending) > 0
}

func (f *finisher) take() ([]store.Result, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := min(len(f.pending), maxFinishBatchItems)
	batch := f.pending[:n:n]
	f.pending = f.pending[n:]
	if len(f.pending) == 0 {
		f.pending = nil
	}
	return batch, f.closing
}

// commit records batch, retrying and splitting on errors, then tells the
// worker which results are settled.
func (f *finisher) commit(batch []store.Result) {
	outcomes, drained, err := f.finish(batch)
	if err != nil && len(batch) > 1 {
		f.w.cfg.Logger.Warn("finish batch failed; recording results one by one", "results", len(batch), "err", err)
		for _, r := range batch {
			f.commit([]store.Result{r})
		}
		return
	}
	if err != nil {
		r := batch[0]
		f.w.cfg.Logger.Error("cannot record task result; the zombie sweep will recover the try",
			"task_instance", r.ID, "try", r.TryNumber, "state", r.State, "err", err)
		if len(r.Log) > 0 {
			// Keep the try's last output for whoever looks into it.
			if lerr := f.w.storeCall(func(ctx context.Context) error { return f.w.cfg.Store.AppendLog(ctx, r.Try, r.Log) }); lerr != nil {
				f.w.cfg.Logger.Warn("task log lost", "task_instance", r.ID, "try", r.TryNumber, "err", lerr)
			}
		}
	}
	f.w.settled(batch, outcomes, drained)
}

// finish records batch and, in the same store transaction, claims tries
// for the worker's free slots and launches them (FinishAndClaim): a task
// released by the batch starts without a claim transaction of its own.
// drained reports that the claim took fewer tries than it asked for, so
// nothing claimable was left queued.
func (f *finisher) finish(batch []store.Result) (outcomes []store.FinishOutcome, drained bool, err error) {
	backoff := finishFirstBackoff
	for i := range finishAttempts {
		var (
			out     []store.FinishOutcome
			claimed []store.Claimed
		)
		slots := f.w.reserveSlots()
		err = f.w.storeCall(func(ctx context.Context) error {
			var e error
			out, claimed, e = f.w.cfg.Store.FinishAndClaim(ctx, batch, f.w.self, slots, f.w.cfg.Clock.Now())
			return e
		})
		drained := len(claimed) < slots
		if slots > 0 && err == nil {
			f.w.queueDrained.Store(drained) // before the tries start, as in Worker.claim
		}
		f.w.launchAll(claimed)
		f.w.unreserveSlots(slots)
		if err == nil {
			return out, drained, nil
		}
		if i == finishAttempts-1 {
			break
		}
		f.w.cfg.Logger.Warn("finish tasks failed; retrying", "results", len(batch), "retry_in", backoff, "err", err)
		t := f.w.cfg.Clock.NewTimer(backoff)
		<-t.C()
		backoff = min(2*backoff, finishMaxBackoff)
	}
	return nil, false, err
}

// notify does a non-blocking send on a capacity-1 channel.
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
