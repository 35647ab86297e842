package executor

import (
	"context"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
)

// TestLogFlushTimerOnlyWhileTriesRun: the log flush loop's timer runs
// while a try runs (its buffered output is sent every LogFlushInterval)
// and is off while none does (no wake-up for nothing); launching a try
// turns it on again.
func TestLogFlushTimerOnlyWhileTriesRun(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC))
	const every = 250 * time.Millisecond
	w, err := NewWorker(WorkerConfig{Store: openStore(t, testdb.SQLite(t)), Registry: dag.NewRegistry(), Clock: clk,
		LogFlushInterval: every})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); w.logFlushLoop() }()
	defer func() { close(w.loopsStop); <-done }()
	waitTimers := func(want int, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for clk.Timers() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d timers, want %d", what, clk.Timers(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitTimers(1, "started")
	clk.Advance(every) // nothing runs: the timer goes off
	waitTimers(0, "no try running")

	sent := make(chan string, 4)
	a := &activeTry{running: true, log: newTaskLog(context.Background(), func(_ context.Context, chunk []byte) error {
		sent <- string(chunk)
		return nil
	}, 1<<20, 1<<20, nil)}
	w.mu.Lock()
	w.active[1] = a
	w.mu.Unlock()
	notify(w.logWake) // as launch does
	waitTimers(1, "a try launched")
	_, _ = a.log.Write([]byte("hello\n"))
	clk.Advance(every)
	select {
	case got := <-sent:
		if got != "hello\n" {
			t.Fatalf("flushed %q, want the try's output", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the running try's output was not flushed")
	}
	waitTimers(1, "the try still runs")

	w.mu.Lock()
	delete(w.active, 1)
	w.mu.Unlock()
	clk.Advance(every)
	waitTimers(0, "the try ended")
}
