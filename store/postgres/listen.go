package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/store"
)

// Listen subscribes to wake-ups on topics through a dedicated connection
// (outside the pool) that LISTENs on one channel per topic. When the
// connection drops, the subscription reconnects with backoff and then
// delivers every topic once, since notifications sent meanwhile are lost.
// The subscription ends, and its channel closes, on Close or when ctx
// ends.
func (s *Store) Listen(ctx context.Context, topics ...store.Topic) (store.Subscription, error) {
	if len(topics) == 0 {
		return nil, errors.New("listen: no topics")
	}
	topics = slices.Clone(topics)
	slices.Sort(topics)
	topics = slices.Compact(topics)
	conn, err := s.listenConn(ctx, topics)
	if err != nil {
		return nil, mapErr("listen", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	sub := &subscription{
		s: s, topics: topics, out: make(chan store.Topic), wake: make(chan struct{}, 1),
		pending: map[store.Topic]bool{}, cancel: cancel,
	}
	sub.wg.Add(2)
	go sub.read(sctx, conn)
	go sub.deliver(sctx)
	return sub, nil
}

func (s *Store) listenConn(ctx context.Context, topics []store.Topic) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.cfg.ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	for _, t := range topics {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{string(t)}.Sanitize()); err != nil {
			_ = conn.Close(context.Background())
			return nil, err
		}
	}
	return conn, nil
}

type subscription struct {
	s      *Store
	topics []store.Topic
	out    chan store.Topic
	wake   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending map[store.Topic]bool
}

// C delivers the topics notified; notifications of a topic not yet
// received are folded into one.
func (sub *subscription) C() <-chan store.Topic { return sub.out }

// Close ends the subscription, closes its connection and waits for its
// goroutines.
func (sub *subscription) Close() error {
	sub.cancel()
	sub.wg.Wait()
	return nil
}

func (sub *subscription) push(ts ...store.Topic) {
	sub.mu.Lock()
	for _, t := range ts {
		sub.pending[t] = true
	}
	sub.mu.Unlock()
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

func (sub *subscription) pop() (store.Topic, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for _, t := range sub.topics {
		if sub.pending[t] {
			delete(sub.pending, t)
			return t, true
		}
	}
	return "", false
}

// read waits for notifications, reconnecting when the connection fails.
func (sub *subscription) read(ctx context.Context, conn *pgx.Conn) {
	defer sub.wg.Done()
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err == nil {
			sub.push(store.Topic(n.Channel))
			continue
		}
		if ctx.Err() != nil {
			return
		}
		sub.s.log.Warn("listen connection lost, reconnecting", "err", errText(err))
		_ = conn.Close(context.Background())
		conn = nil
		delay := 100 * time.Millisecond
		for conn == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			c, err := sub.s.listenConn(ctx, sub.topics)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				sub.s.log.Warn("listen reconnect failed, retrying", "err", errText(err), "retry_in", delay)
				delay = min(2*delay, 5*time.Second)
				continue
			}
			conn = c
		}
		sub.s.log.Info("listen connection restored")
		sub.push(sub.topics...)
	}
}

// deliver hands pending topics to the receiver.
func (sub *subscription) deliver(ctx context.Context) {
	defer sub.wg.Done()
	defer close(sub.out)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.wake:
		}
		for {
			t, ok := sub.pop()
			if !ok {
				break
			}
			select {
			case sub.out <- t:
			case <-ctx.Done():
				return
			}
		}
	}
}

// String names the subscription for logs.
func (sub *subscription) String() string { return fmt.Sprintf("postgres subscription %v", sub.topics) }
