package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// hub delivers wake-ups to the subscriptions of one Store: at once for
// this Store's own commits, and by polling for other processes' commits.
type hub struct {
	s    *Store
	poll time.Duration

	mu      sync.Mutex
	subs    map[*subscription]struct{}
	seen    map[store.Topic]int64 // wake-up sequences already delivered
	based   bool                  // seen holds a baseline read while subscribed
	closed  bool
	started bool
	kick    chan struct{} // a first subscriber arrived
	ctx     context.Context
	cancel  context.CancelFunc // stops the poller and every subscription
	wg      sync.WaitGroup
}

func newHub(s *Store, poll time.Duration) *hub {
	ctx, cancel := context.WithCancel(context.Background())
	return &hub{
		s:      s,
		poll:   poll,
		subs:   map[*subscription]struct{}{},
		seen:   map[store.Topic]int64{},
		kick:   make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
	}
}

// Listen subscribes to wake-ups on topics (every topic when none is
// given). The subscription ends with Close, when ctx ends, or when the
// Store closes; its channel is then closed.
func (s *Store) Listen(ctx context.Context, topics ...store.Topic) (store.Subscription, error) {
	if len(topics) == 0 {
		topics = []store.Topic{store.TopicTasksReady, store.TopicRunsChanged}
	}
	for _, t := range topics {
		if t != store.TopicTasksReady && t != store.TopicRunsChanged {
			return nil, fmt.Errorf("listen: unknown topic %q", t)
		}
	}
	return s.hub.subscribe(ctx, topics)
}

func (h *hub) subscribe(ctx context.Context, topics []store.Topic) (*subscription, error) {
	sub := &subscription{
		h:       h,
		want:    map[store.Topic]bool{},
		pending: map[store.Topic]bool{},
		ch:      make(chan store.Topic),
		signal:  make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	for _, t := range topics {
		sub.want[t] = true
	}
	// Read the wake-up sequences before returning, so that every commit
	// made after Listen returns is delivered, however late the poller
	// looks. (Before migrations there is no table yet: start from zero.)
	h.mu.Lock()
	based := h.based
	h.mu.Unlock()
	var baseline map[store.Topic]int64
	if !based {
		var err error
		if baseline, err = readWakeups(ctx, h.s.rdb); err != nil && !isNoTable(err) {
			return nil, fmt.Errorf("listen: %w", mapErr(err))
		}
	}
	h.mu.Lock()
	if !h.based {
		for t, seq := range baseline {
			h.seen[t] = seq
		}
		h.based = true
	}
	if h.closed {
		h.mu.Unlock()
		return nil, errors.New("listen: store is closed")
	}
	h.subs[sub] = struct{}{}
	if !h.started {
		h.started = true
		h.wg.Add(1)
		go h.poller()
	}
	h.mu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
	h.wg.Add(1)
	go sub.run(ctx)
	return sub, nil
}

// publishLocal wakes this process's subscribers of topics after a commit
// that moved their sequences to seqs (which the poller then need not
// deliver again).
func (h *hub) publishLocal(seqs map[store.Topic]int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for t, seq := range seqs {
		if seq > h.seen[t] {
			h.seen[t] = seq
		}
		for sub := range h.subs {
			sub.notify(t)
		}
	}
}

func (h *hub) remove(sub *subscription) {
	h.mu.Lock()
	delete(h.subs, sub)
	h.mu.Unlock()
}

// idle reports whether nobody listens, and then drops the baseline (the
// next Listen reads a new one).
func (h *hub) idle() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		h.based = false
		return true
	}
	return false
}

// close ends every subscription and the poller, and waits for their
// goroutines.
func (h *hub) close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.mu.Unlock()
	h.cancel()
	h.wg.Wait()
}

// poller watches for commits of other connections (other processes) with
// PRAGMA data_version on a dedicated read connection and, when it changes,
// reads the wake-up sequences to wake the subscribers of topics that
// moved. It idles while there is no subscriber.
func (h *hub) poller() {
	defer h.wg.Done()
	var (
		conn    *sql.Conn
		version int64 = -1
		failing bool
	)
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	ctx := h.ctx
	ticker := time.NewTicker(h.poll)
	defer ticker.Stop()
	for {
		if h.idle() {
			// Idle: forget the baselines, so nothing that happened while
			// nobody listened is delivered late.
			version = -1
			select {
			case <-ctx.Done():
				return
			case <-h.kick:
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if conn == nil {
			c, err := h.s.rdb.Conn(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				h.logPollError(&failing, err)
				continue
			}
			conn = c
		}
		var v int64
		if err := conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
			if ctx.Err() != nil {
				return
			}
			h.logPollError(&failing, err)
			_ = conn.Close()
			conn = nil
			continue
		}
		if v == version {
			continue
		}
		version = v
		seqs, err := readWakeups(ctx, conn)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.logPollError(&failing, err)
			version = -1
			continue
		}
		if failing {
			failing = false
			h.s.log.Info("wake-up poll works again")
		}
		h.deliver(seqs)
	}
}

func (h *hub) logPollError(failing *bool, err error) {
	if !*failing {
		*failing = true
		h.s.log.Warn("wake-up poll failed; retrying", "err", mapErr(err))
	}
}

// deliver wakes the subscribers of every topic whose sequence moved past
// what was delivered.
func (h *hub) deliver(seqs map[store.Topic]int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for t, seq := range seqs {
		if seq <= h.seen[t] {
			continue
		}
		h.seen[t] = seq
		for sub := range h.subs {
			sub.notify(t)
		}
	}
}

// isNoTable reports SQLite's "no such table" (a store not migrated yet).
func isNoTable(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such table")
}

func readWakeups(ctx context.Context, conn querier) (map[store.Topic]int64, error) {
	rows, err := conn.QueryContext(ctx, `SELECT topic, seq FROM wakeups`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[store.Topic]int64{}
	for rows.Next() {
		var t string
		var seq int64
		if err := rows.Scan(&t, &seq); err != nil {
			return nil, err
		}
		out[store.Topic(t)] = seq
	}
	return out, rows.Err()
}

// subscription coalesces wake-ups: at most one undelivered wake-up per
// topic is kept, however many commits happen before the receiver reads.
type subscription struct {
	h    *hub
	want map[store.Topic]bool

	mu      sync.Mutex
	pending map[store.Topic]bool
	signal  chan struct{}

	ch        chan store.Topic
	done      chan struct{}
	closeOnce sync.Once
}

// C delivers wake-ups; it is closed when the subscription ends.
func (s *subscription) C() <-chan store.Topic { return s.ch }

// Close ends the subscription and waits until its channel is closed.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	for range s.ch { //nolint:revive // drain until run closes ch
	}
	return nil
}

// notify records a wake-up; called with the hub locked.
func (s *subscription) notify(t store.Topic) {
	if !s.want[t] {
		return
	}
	s.mu.Lock()
	s.pending[t] = true
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// run forwards pending wake-ups to ch until the subscription ends.
func (s *subscription) run(ctx context.Context) {
	defer s.h.wg.Done()
	defer close(s.ch)
	defer s.h.remove(s)
	for {
		select {
		case <-s.done:
			return
		case <-ctx.Done():
			return
		case <-s.h.ctx.Done():
			return
		case <-s.signal:
		}
		s.mu.Lock()
		var topics []store.Topic
		for t := range s.pending {
			topics = append(topics, t)
			delete(s.pending, t)
		}
		s.mu.Unlock()
		for _, t := range topics {
			select {
			case s.ch <- t:
			case <-s.done:
				return
			case <-ctx.Done():
				return
			case <-s.h.ctx.Done():
				return
			}
		}
	}
}
