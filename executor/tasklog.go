package executor

import (
	"context"
	"fmt"
	"sync"

	"github.com/trellis-dag/trellis/store"
)

// logSink appends one chunk of a try's log to durable storage.
type logSink func(ctx context.Context, chunk []byte) error

// taskLog is the io.Writer a try's output goes to: Shell stdout/stderr,
// Context.Logger() lines, panic traces. It buffers writes and sends them
// to the store in chunks — when the buffer reaches flushBytes, when the
// worker's flush tick comes, and when the try ends — so a chatty task costs
// one store call per chunk, not per line. At most maxBytes are sent; the
// rest is counted and reported in a closing store.TruncationNote.
type taskLog struct {
	sink       logSink
	ctx        context.Context
	flushBytes int
	maxBytes   int64
	onError    func(error)

	flushMu sync.Mutex // serialises sends, so chunks arrive in order

	mu      sync.Mutex
	buf     []byte
	sent    int64 // bytes accepted into buf or sent so far
	dropped int64
	closed  bool
}

func newTaskLog(ctx context.Context, sink logSink, flushBytes int, maxBytes int64, onError func(error)) *taskLog {
	return &taskLog{sink: sink, ctx: ctx, flushBytes: flushBytes, maxBytes: maxBytes, onError: onError}
}

// storeLogSink appends to the log of try a in st.
func storeLogSink(st store.Store, a store.Try) logSink {
	return func(ctx context.Context, chunk []byte) error {
		if err := st.AppendLog(ctx, a, chunk); err != nil {
			return fmt.Errorf("append log of task instance %d try %d: %w", a.ID, a.TryNumber, err)
		}
		return nil
	}
}

// limitSink makes sink wait for a token of sem, bounding the sends in
// flight across tries.
func limitSink(sem chan struct{}, sink logSink) logSink {
	return func(ctx context.Context, chunk []byte) error {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("append log: %w", ctx.Err())
		}
		defer func() { <-sem }()
		return sink(ctx, chunk)
	}
}

// Write buffers p. It never fails: output past the cap or after the try
// ended is dropped and counted, so a task never dies of its own logging.
func (l *taskLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	if l.closed {
		l.dropped += int64(len(p))
		l.mu.Unlock()
		return len(p), nil
	}
	keep := int64(len(p))
	if room := l.maxBytes - l.sent; keep > room {
		keep = max(room, 0)
	}
	l.buf = append(l.buf, p[:keep]...)
	l.sent += keep
	l.dropped += int64(len(p)) - keep
	full := len(l.buf) >= l.flushBytes
	l.mu.Unlock()
	if full {
		l.flush()
	}
	return len(p), nil
}

// pending reports whether output is waiting to be sent.
func (l *taskLog) pending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buf) > 0
}

// flush sends the buffered output.
func (l *taskLog) flush() {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	chunk := l.buf
	l.buf = nil
	l.mu.Unlock()
	l.send(chunk)
}

func (l *taskLog) send(chunk []byte) {
	if len(chunk) == 0 {
		return
	}
	if err := l.sink(l.ctx, chunk); err != nil && l.onError != nil {
		l.onError(err)
	}
}

// close flushes what is left, notes dropped output, and makes later writes
// (from goroutines a task left behind) be dropped.
func (l *taskLog) close() {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.send(l.closeLocked())
}

// finish closes the log like close but returns what is left (with the
// note on dropped output) instead of sending it, so it can travel with
// the try's result (store.Result.Log) in the commit that records it. It
// waits for a send in flight, so the chunk comes after everything sent.
func (l *taskLog) finish() []byte {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	return l.closeLocked()
}

// closeLocked marks the log closed and takes what is left; the caller
// holds flushMu.
func (l *taskLog) closeLocked() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	chunk := l.buf
	l.buf = nil
	l.closed = true
	if l.dropped > 0 {
		chunk = fmt.Appendf(chunk, store.TruncationNote, l.sent, l.dropped)
	}
	return chunk
}
