package api

import (
	"context"
	"errors"
	"sync"
	"time"
)

// flightTimeout bounds a shared read: it runs on a context of its own, so
// that the request that started it may go away without failing the
// others.
const flightTimeout = 30 * time.Second

// flights coalesces identical reads in progress: while the body for a key
// is being read and rendered, further requests for the same key wait for
// it instead of reading it again, and all get the same body. Nothing is
// kept once the read is done, so no answer is older than the request it
// answers by more than one read in progress; it is how many clients
// polling one running run cost about one read per read's duration, not
// one each.
type flights struct {
	mu    sync.Mutex
	calls map[string]*flight
}

// flight is one read in progress.
type flight struct {
	done   chan struct{}
	body   []byte
	err    error
	shared int // requests that waited for it
}

// do returns the body for key: read by fn, or by the read for key already
// in progress. fn's context is detached from ctx; ctx only bounds the
// wait. The body must not be changed by the caller.
func (f *flights) do(ctx context.Context, key string, fn func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]*flight{}
	}
	if c, ok := f.calls[key]; ok {
		c.shared++
		f.mu.Unlock()
		select {
		case <-c.done:
			return c.body, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &flight{done: make(chan struct{})}
	f.calls[key] = c
	f.mu.Unlock()

	defer func() {
		if v := recover(); v != nil {
			c.body, c.err = nil, errFlightPanicked
			f.end(key, c)
			panic(v) // for the recoverer of the request that read
		}
		f.end(key, c)
	}()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flightTimeout)
	defer cancel()
	c.body, c.err = fn(rctx)
	return c.body, c.err
}

// errFlightPanicked answers the requests that waited for a read that
// panicked.
var errFlightPanicked = errors.New("the shared read of this request failed")

// end removes the finished read c of key and releases its waiters.
func (f *flights) end(key string, c *flight) {
	f.mu.Lock()
	delete(f.calls, key)
	f.mu.Unlock()
	close(c.done)
}
