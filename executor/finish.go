package executor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// finisher records results in batches. A result is committed at once when
// no commit is in flight; results that arrive while one is in flight (or
// within FinishDelay) go together into the next, so one commit carries
// many results under load without adding latency when idle. Only tries
// that hold a limit and were launched just before make it wait, at most
// gatherWait, for them (gatherDeadline).
//
// A finished result is never given up while the worker runs: while the
// store is unavailable (database unreachable, disk full) the commit is
// retried with backoff, and the tries keep heart-beating. A stopping
// worker tries for up to StoreTimeout more (none after Halt), then writes
// what is left to its spool file (SpoolDir), which the next worker to
// start delivers.
type finisher struct {
	w *Worker

	mu       sync.Mutex
	pending  []store.Result
	held     []bool // pending[i] holds its try's slot (Worker.reserved) for the claim of its finish
	closing  bool
	closedAt time.Time // when closing began
	spooling bool      // the store was given up on: spool without trying

	signal chan struct{} // capacity 1: pending changed or closing
	closed chan struct{} // closed when closing begins: ends a retry wait
	done   chan struct{} // closed when the loop has returned
}

// Finish retry policy: a FinishTasks that fails because the store is
// unavailable is retried with backoff up to outageMaxBackoff, without
// limit while the worker runs. Any other failure is retried
// finishAttempts times; a batch that keeps failing so is split and each
// result retried alone, so one bad result cannot block the others, and a
// single result that still fails is dropped (its try stops heart-beating
// and the zombie sweep recovers it).
const (
	finishAttempts      = 8
	finishFirstBackoff  = 10 * time.Millisecond
	finishMaxBackoff    = time.Second
	outageMaxBackoff    = 5 * time.Second
	maxFinishBatchItems = 1000
)

// errSpooling: the finisher gave up on the store while stopping.
var errSpooling = fmt.Errorf("%w: the worker is stopping and gave up waiting for the database", store.ErrUnavailable)

// unavailable reports whether err means the store could not be reached
// (or timed out): the result is kept and tried again.
func unavailable(err error) bool {
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)
}

func newFinisher(w *Worker) *finisher {
	return &finisher{w: w, signal: make(chan struct{}, 1), closed: make(chan struct{}), done: make(chan struct{})}
}

// submit queues r for the next commit.
func (f *finisher) submit(r store.Result) { f.add(r, false) }

// submitHeld queues r, whose try's slot the caller reserved (under
// Worker.mu) for the claim of r's finish; the finish releases it.
func (f *finisher) submitHeld(r store.Result) { f.add(r, true) }

func (f *finisher) add(r store.Result, held bool) {
	f.mu.Lock()
	f.pending = append(f.pending, r)
	f.held = append(f.held, held)
	f.mu.Unlock()
	notify(f.signal)
}

// close makes the loop commit (or spool) what is pending and return; it
// waits.
func (f *finisher) close() {
	f.mu.Lock()
	f.closing = true
	f.closedAt = f.w.cfg.Clock.Now()
	f.mu.Unlock()
	close(f.closed)
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
			f.gather()
			batch, held, closing := f.take()
			if len(batch) == 0 {
				if closing {
					return
				}
				break
			}
			f.commit(batch, held)
		}
	}
}

// gather waits, before a batch is taken, for the tries that hold a limit
// and were just launched to return (gatherDeadline), unless the worker
// stops.
func (f *finisher) gather() {
	for {
		f.mu.Lock()
		closing := f.closing
		f.mu.Unlock()
		if closing {
			return
		}
		clk := f.w.cfg.Clock
		until, ok := gatherDeadline(f.w.heldLaunches(), clk.Now())
		if !ok {
			return
		}
		t := clk.NewTimer(until.Sub(clk.Now()))
		select {
		case <-f.w.tryReturned:
			t.Stop()
		case <-t.C():
			return
		case <-f.closed:
			t.Stop()
			return
		}
	}
}

func (f *finisher) hasPending() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending) > 0
}

// take returns the next batch, how many slots its results hold, and
// whether the finisher is closing.
func (f *finisher) take() ([]store.Result, int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := min(len(f.pending), maxFinishBatchItems)
	batch := f.pending[:n:n]
	held := 0
	for _, h := range f.held[:n] {
		if h {
			held++
		}
	}
	f.pending, f.held = f.pending[n:], f.held[n:]
	if len(f.pending) == 0 {
		f.pending, f.held = nil, nil
	}
	return batch, held, f.closing
}

// giveUp reports whether a stopping worker stops waiting for the store:
// after Halt, or StoreTimeout after the stop began. From then on every
// result goes to the spool.
func (f *finisher) giveUp() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.spooling {
		return true
	}
	if !f.closing {
		return false
	}
	select {
	case <-f.w.halted:
		f.spooling = true
	default:
		f.spooling = f.w.cfg.Clock.Now().Sub(f.closedAt) >= f.w.cfg.StoreTimeout
	}
	return f.spooling
}

// wait sleeps d, less when the worker begins to stop or halts; false
// when it was cut short.
func (f *finisher) wait(d time.Duration) bool {
	t := f.w.cfg.Clock.NewTimer(d)
	defer t.Stop()
	closed := f.closed
	f.mu.Lock()
	if f.closing {
		closed = nil // already stopping: only Halt cuts the wait short
	}
	f.mu.Unlock()
	select {
	case <-t.C():
		return true
	case <-closed:
	case <-f.w.halted:
	}
	return false
}

// commit records batch, whose results hold held slots, retrying and
// splitting on errors, then tells the worker which results are settled.
func (f *finisher) commit(batch []store.Result, held int) {
	outcomes, drained, err := f.finish(batch, held)
	if err != nil && unavailable(err) {
		f.spool(batch, err)
		f.w.settled(batch, nil, true)
		return
	}
	if err != nil && len(batch) > 1 {
		f.w.cfg.Logger.Warn("finish batch failed; recording results one by one", "results", len(batch), "err", err)
		for _, r := range batch {
			f.commit([]store.Result{r}, 0)
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

// spool writes results the store could not take to the worker's spool
// file, for the next worker started on this host to deliver.
func (f *finisher) spool(batch []store.Result, cause error) {
	w := f.w
	entries := make([]spooled, len(batch))
	w.mu.Lock()
	for i, r := range batch {
		entries[i].Result = r
		if a, ok := w.active[r.ID]; ok && a.key == r.Try {
			entries[i].Claim = a.claim
		}
	}
	w.mu.Unlock()
	if w.cfg.SpoolDir == "" {
		for _, r := range batch {
			w.cfg.Logger.Error("task result lost: the database is unavailable and no spool folder is set; the zombie sweep will recover the try",
				"task_instance", r.ID, "try", r.TryNumber, "state", r.State, "err", cause)
		}
		return
	}
	if err := writeSpool(w.cfg.SpoolDir, w.cfg.ID, entries); err != nil {
		w.cfg.Logger.Error("task results lost: the database is unavailable and the spool cannot be written; the zombie sweep will recover the tries",
			"results", len(batch), "err", err, "cause", cause)
		return
	}
	w.cfg.Logger.Warn("database unavailable: results spooled for the next worker start",
		"results", len(batch), "file", spoolPath(w.cfg.SpoolDir, w.cfg.ID), "err", cause)
}

// finish records batch and, in the same store transaction, claims tries
// for the worker's free slots and launches them (FinishAndClaim): a task
// released by the batch starts without a claim transaction of its own.
// drained reports that the claim took fewer tries than it asked for, so
// nothing claimable was left queued. The held slots of the batch's tries
// are claimed for in the first attempt (unless the worker stops or
// drains) and released after it.
func (f *finisher) finish(batch []store.Result, held int) (outcomes []store.FinishOutcome, drained bool, err error) {
	release := func() {
		f.w.unreserveSlots(held)
		held = 0
	}
	defer release()
	backoff := finishFirstBackoff
	failures := 0 // other than the store being unavailable
	outage := false
	for {
		if f.giveUp() {
			return nil, false, errSpooling
		}
		var (
			out     []store.FinishOutcome
			claimed []store.Claimed
		)
		slots := f.w.reserveSlots()
		ask := slots
		if held > 0 && f.w.mayClaim() {
			ask += held
		}
		err = f.w.storeCall(func(ctx context.Context) error {
			var e error
			out, claimed, e = f.w.cfg.Store.FinishAndClaim(ctx, batch, f.w.self, ask, f.w.cfg.Clock.Now())
			return e
		})
		drained := len(claimed) < ask
		if ask > 0 && err == nil {
			f.w.queueDrained.Store(drained) // before the tries start, as in Worker.claim
		}
		f.w.launchAll(claimed)
		f.w.unreserveSlots(slots)
		release()
		if err == nil {
			if outage {
				f.w.cfg.Logger.Info("database reachable again; results recorded", "results", len(batch))
			}
			return out, drained, nil
		}
		limit := finishMaxBackoff
		if unavailable(err) {
			limit = outageMaxBackoff
			if !outage {
				outage = true
				f.w.cfg.Logger.Warn("database unavailable; keeping results and retrying until it returns", "results", len(batch), "err", err)
			}
		} else {
			failures++
			if failures >= finishAttempts {
				return nil, false, err
			}
			f.w.cfg.Logger.Warn("finish tasks failed; retrying", "results", len(batch), "retry_in", backoff, "err", err)
		}
		if f.wait(backoff) {
			backoff = min(2*backoff, limit)
		}
	}
}

// notify does a non-blocking send on a capacity-1 channel.
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
