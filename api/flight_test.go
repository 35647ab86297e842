package api

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func TestFlightsShareOneRead(t *testing.T) {
	var f flights
	var reads atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	const waiters = 8
	var wg sync.WaitGroup
	bodies := make([][]byte, waiters+1)
	read := func(context.Context) ([]byte, error) {
		reads.Add(1)
		close(started)
		<-release
		return []byte("body"), nil
	}
	wg.Go(func() { bodies[0], _ = f.do(context.Background(), "k", read) })
	<-started
	for i := 1; i <= waiters; i++ {
		wg.Go(func() {
			var err error
			bodies[i], err = f.do(context.Background(), "k", func(context.Context) ([]byte, error) {
				t.Error("a second read of k started while one was in progress")
				return nil, nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	// Every waiter has joined the read in progress before it ends.
	for {
		f.mu.Lock()
		n := f.calls[flightKey{0, "k"}].shared
		f.mu.Unlock()
		if n == waiters {
			break
		}
		runtime.Gosched()
	}
	close(release)
	wg.Wait()
	if reads.Load() != 1 {
		t.Errorf("%d reads, want 1", reads.Load())
	}
	for i, b := range bodies {
		if string(b) != "body" {
			t.Errorf("request %d got %q", i, b)
		}
	}
	// Done reads are not kept: the next request reads again.
	b, err := f.do(context.Background(), "k", func(context.Context) ([]byte, error) { return []byte("fresh"), nil })
	if err != nil || string(b) != "fresh" {
		t.Errorf("read after the shared one: %q, %v; want a fresh read", b, err)
	}
}

func TestFlightsDetachAndRecover(t *testing.T) {
	var f flights
	// The read runs on a context of its own: the first caller's
	// cancellation does not fail it.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b, err := f.do(ctx, "k", func(rctx context.Context) ([]byte, error) { return []byte("ok"), rctx.Err() })
	if err != nil || string(b) != "ok" {
		t.Errorf("read with a cancelled caller: %q, %v; want it to complete", b, err)
	}
	// A read that panics releases its waiters with an error and re-panics
	// for the request that ran it.
	started, waiting := make(chan struct{}), make(chan error, 1)
	go func() {
		defer func() { _ = recover() }()
		_, _ = f.do(context.Background(), "p", func(context.Context) ([]byte, error) {
			close(started)
			for {
				f.mu.Lock()
				n := f.calls[flightKey{0, "p"}].shared
				f.mu.Unlock()
				if n == 1 {
					panic("boom")
				}
				runtime.Gosched()
			}
		})
	}()
	<-started
	go func() {
		_, err := f.do(context.Background(), "p", func(context.Context) ([]byte, error) { return nil, nil })
		waiting <- err
	}()
	if err := <-waiting; !errors.Is(err, errFlightPanicked) {
		t.Errorf("waiter of a read that panicked got %v, want errFlightPanicked", err)
	}
}

// TestFlightsForget: after forget (a change made through the API), a
// request does not join a read begun before it.
func TestFlightsForget(t *testing.T) {
	var f flights
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan []byte, 1)
	go func() {
		b, _ := f.do(context.Background(), "k", func(context.Context) ([]byte, error) {
			close(started)
			<-release
			return []byte("before"), nil
		})
		done <- b
	}()
	<-started
	f.forget()
	b, err := f.do(context.Background(), "k", func(context.Context) ([]byte, error) { return []byte("after"), nil })
	if err != nil || string(b) != "after" {
		t.Errorf("request after forget got %q, %v; want a read of its own", b, err)
	}
	close(release)
	if b := <-done; string(b) != "before" {
		t.Errorf("the earlier read got %q", b)
	}
}
