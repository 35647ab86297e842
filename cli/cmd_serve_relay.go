package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// Relay client limits.
const (
	// relayDialTimeout bounds the connection to the serve process.
	relayDialTimeout = 5 * time.Second
	// relayQueue is how many batches of events may wait to be written;
	// beyond, events are dropped rather than slowing the worker.
	relayQueue = 4096
	// relayWriteTimeout bounds one write to the socket.
	relayWriteTimeout = 5 * time.Second
	// relayCloseTimeout bounds how long Close waits for queued events to
	// be written.
	relayCloseTimeout = 2 * time.Second
)

// relayTaskEvents is called by the worker-child role with the store it
// opened. When the child was started by `trellis serve`
// (TRELLIS_SERVE_EVENTS names its task-event socket), it returns st
// wrapped so that the tries the worker claims, finishes and gives back are
// relayed to the serve process for its metrics; otherwise st itself. A
// socket that cannot be reached is logged and the worker runs without
// relaying: metrics must never stop work.
func relayTaskEvents(st store.Store, lookupEnv func(string) (string, bool), log *slog.Logger) store.Store {
	path, ok := lookupEnv(envServeEvents)
	if !ok || path == "" {
		return st
	}
	// The tasks this process starts need not see the socket.
	_ = os.Unsetenv(envServeEvents)
	c, err := net.DialTimeout("unix", path, relayDialTimeout)
	if err != nil {
		log.Warn("cannot reach the serve process's task-event socket; task metrics of this worker are not exported", "socket", path, "err", err)
		return st
	}
	return &relayStore{Store: st, sender: newEventSender(c, log)}
}

// relayStore is a store.Store that relays the task events of a worker
// (see cmd_serve_events.go) after each successful store call.
type relayStore struct {
	store.Store
	sender *eventSender
}

// ClaimTasks claims tries and relays them.
func (s *relayStore) ClaimTasks(ctx context.Context, w store.Worker, max int, now time.Time) ([]store.Claimed, error) {
	claimed, err := s.Store.ClaimTasks(ctx, w, max, now)
	if err == nil && len(claimed) > 0 {
		s.sender.send(claimEvents(claimed))
	}
	return claimed, err
}

// FinishTasks records outcomes and relays what the store did with them.
func (s *relayStore) FinishTasks(ctx context.Context, results []store.Result) ([]store.FinishOutcome, error) {
	outcomes, _, err := s.FinishAndClaim(ctx, results, store.Worker{}, 0, time.Time{})
	return outcomes, err
}

// FinishAndClaim records outcomes and claims tries in one transaction,
// and relays both: the finishes first, then the claims.
func (s *relayStore) FinishAndClaim(ctx context.Context, results []store.Result, w store.Worker, max int, now time.Time) ([]store.FinishOutcome, []store.Claimed, error) {
	outcomes, claimed, err := s.Store.FinishAndClaim(ctx, results, w, max, now)
	if err == nil {
		var events []taskEvent
		if len(outcomes) > 0 {
			events = finishEvents(results, outcomes)
		}
		if len(claimed) > 0 {
			events = append(events, claimEvents(claimed)...)
		}
		if len(events) > 0 {
			s.sender.send(events)
		}
	}
	return outcomes, claimed, err
}

// RequeueTries puts tries back and relays that the worker gave them
// up (it does so whether or not the store call succeeded).
func (s *relayStore) RequeueTries(ctx context.Context, tries []store.Try) error {
	err := s.Store.RequeueTries(ctx, tries)
	if len(tries) > 0 {
		s.sender.send(dropEvents(tries))
	}
	return err
}

// HeartbeatTasks heartbeats tries and relays those taken away.
func (s *relayStore) HeartbeatTasks(ctx context.Context, workerID string, tries []store.Try, now time.Time) ([]store.Try, error) {
	lost, err := s.Store.HeartbeatTasks(ctx, workerID, tries, now)
	if err == nil && len(lost) > 0 {
		s.sender.send(dropEvents(lost))
	}
	return lost, err
}

// Close delivers the events still queued (briefly), then closes the
// store.
func (s *relayStore) Close() error {
	s.sender.close()
	return s.Store.Close()
}

// eventSender writes batches of events to the socket from one goroutine.
// send never blocks.
type eventSender struct {
	conn net.Conn
	log  *slog.Logger
	ch   chan []taskEvent
	done chan struct{}

	mu      sync.Mutex
	closed  bool
	dropped int
}

func newEventSender(c net.Conn, log *slog.Logger) *eventSender {
	s := &eventSender{conn: c, log: log, ch: make(chan []taskEvent, relayQueue), done: make(chan struct{})}
	go s.loop()
	return s
}

// send queues events, or drops them when the queue is full or the sender
// closed.
func (s *eventSender) send(events []taskEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	select {
	case s.ch <- events:
	default:
		if s.dropped == 0 {
			s.log.Warn("task-event relay falls behind; dropping events (task metrics will undercount)")
		}
		s.dropped += len(events)
	}
}

func (s *eventSender) loop() {
	defer close(s.done)
	w := bufio.NewWriter(s.conn)
	enc := json.NewEncoder(w)
	broken := false
	for events := range s.ch {
		if broken {
			continue // drain so that send never blocks
		}
		for _, ev := range events {
			_ = enc.Encode(ev) // errors surface in Flush
		}
		if len(s.ch) > 0 && w.Buffered() < 32<<10 {
			continue // more is coming: write it together
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(relayWriteTimeout))
		if err := w.Flush(); err != nil {
			broken = true
			s.log.Warn("task-event relay: the serve process stopped reading; task metrics of this worker stop", "err", err)
		}
	}
	if !broken && w.Buffered() > 0 {
		_ = s.conn.SetWriteDeadline(time.Now().Add(relayWriteTimeout))
		_ = w.Flush()
	}
}

// close stops accepting events, waits up to relayCloseTimeout for the
// queued ones to be written, and closes the connection.
func (s *eventSender) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.ch)
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-time.After(relayCloseTimeout):
		s.log.Warn("task-event relay: could not deliver the last events in time")
	}
	_ = s.conn.Close()
	<-s.done
}
