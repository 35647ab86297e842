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
// one each. A change made through the API calls forget, so that no
// request after it joins a read begun before it.
type flights struct {
	mu    sync.Mutex
	gen   uint64 // incremented by forget: part of every key
	calls map[flightKey]*flight
}

// flightKey names a read: its key, in the generation it began in.
type flightKey struct {
	gen uint64
	key string
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
func (f *flights) do(ctx context.Context, name string, fn func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[flightKey]*flight{}
	}
	key := flightKey{f.gen, name}
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

// forget makes later requests start reads of their own rather than join
// those in progress (which may have read what a change replaced).
func (f *flights) forget() {
	f.mu.Lock()
	f.gen++
	f.mu.Unlock()
}

// end removes the finished read c of key and releases its waiters.
func (f *flights) end(key flightKey, c *flight) {
	f.mu.Lock()
	delete(f.calls, key)
	f.mu.Unlock()
	close(c.done)
}
