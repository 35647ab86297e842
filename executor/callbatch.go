package executor

import (
	"context"
	"fmt"
	"sync"

	"github.com/trellis-dag/trellis/store"
)

// callBatcher records the calls of the worker's tries. A batch is recorded
// at once when no recording is in flight; batches submitted meanwhile go
// together into the next Store.CallMany (one per run), so under load one
// transaction carries the calls of many tries, as the finisher does for
// results.
type callBatcher struct {
	w *Worker

	mu      sync.Mutex
	pending []*callReq
	closed  bool

	signal chan struct{} // capacity 1: pending changed
	done   chan struct{} // closed when the loop has returned
}

// callReq is one try's batch waiting to be recorded.
type callReq struct {
	runID  int64
	batch  store.CallBatch
	answer chan store.CallAnswer // capacity 1
}

// maxCallBatchTries bounds the tries one CallMany records.
const maxCallBatchTries = 256

// errCallsStopped: the worker stopped before the calls were recorded.
var errCallsStopped = fmt.Errorf("%w: the worker is stopping", store.ErrUnavailable)

func newCallBatcher(w *Worker) *callBatcher {
	return &callBatcher{w: w, signal: make(chan struct{}, 1), done: make(chan struct{})}
}

// call records batch, a try of run runID, with the next CallMany and
// returns its answer; it returns early when ctx ends or the worker stops.
func (b *callBatcher) call(ctx context.Context, runID int64, batch store.CallBatch) ([]store.CallState, error) {
	req := &callReq{runID: runID, batch: batch, answer: make(chan store.CallAnswer, 1)}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, errCallsStopped
	}
	b.pending = append(b.pending, req)
	b.mu.Unlock()
	notify(b.signal)
	select {
	case a := <-req.answer:
		return a.States, a.Err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-b.done:
		select {
		case a := <-req.answer:
			return a.States, a.Err
		default:
			return nil, errCallsStopped
		}
	}
}

// loop records pending batches until stop is closed.
func (b *callBatcher) loop(stop <-chan struct{}) {
	defer close(b.done)
	for {
		select {
		case <-b.signal:
		case <-stop:
			b.mu.Lock()
			b.closed = true
			reqs := b.pending
			b.pending = nil
			b.mu.Unlock()
			for _, r := range reqs {
				r.answer <- store.CallAnswer{Err: errCallsStopped}
			}
			return
		}
		for {
			reqs := b.take()
			if len(reqs) == 0 {
				break
			}
			b.record(reqs)
		}
	}
}

func (b *callBatcher) take() []*callReq {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := min(len(b.pending), maxCallBatchTries)
	reqs := b.pending[:n:n]
	b.pending = b.pending[n:]
	if len(b.pending) == 0 {
		b.pending = nil
	}
	return reqs
}

// record sends reqs in one CallMany per run, in the order submitted, and
// answers each.
func (b *callBatcher) record(reqs []*callReq) {
	var runs []int64
	byRun := map[int64][]*callReq{}
	for _, r := range reqs {
		if _, ok := byRun[r.runID]; !ok {
			runs = append(runs, r.runID)
		}
		byRun[r.runID] = append(byRun[r.runID], r)
	}
	for _, run := range runs {
		group := byRun[run]
		batches := make([]store.CallBatch, len(group))
		for i, r := range group {
			batches[i] = r.batch
		}
		var answers []store.CallAnswer
		err := b.w.storeCall(func(ctx context.Context) error {
			var e error
			answers, e = b.w.cfg.Store.CallMany(ctx, batches)
			return e
		})
		for i, r := range group {
			switch {
			case err != nil:
				r.answer <- store.CallAnswer{Err: err}
			case i < len(answers):
				r.answer <- answers[i]
			default:
				r.answer <- store.CallAnswer{Err: fmt.Errorf("the store answered %d of %d call batches", len(answers), len(batches))}
			}
		}
	}
}
