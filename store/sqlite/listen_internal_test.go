package sqlite

import (
	"testing"

	"github.com/trellis-dag/trellis/store"
)

// Many wake-ups of one topic before the receiver reads leave one pending
// delivery; other topics are not lost.
func TestSubscriptionCoalesces(t *testing.T) {
	sub := &subscription{
		want:    map[store.Topic]bool{store.TopicTasksReady: true, store.TopicRunsChanged: true},
		pending: map[store.Topic]bool{},
		signal:  make(chan struct{}, 1),
	}
	for range 50 {
		sub.notify(store.TopicTasksReady)
	}
	sub.notify(store.TopicRunsChanged)
	sub.notify("other") // not subscribed
	if len(sub.pending) != 2 || !sub.pending[store.TopicTasksReady] || !sub.pending[store.TopicRunsChanged] {
		t.Errorf("pending %v, want one of each subscribed topic", sub.pending)
	}
	if len(sub.signal) != 1 {
		t.Errorf("%d signals queued, want 1", len(sub.signal))
	}
}

func TestEscapePath(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/t.db":      "/tmp/t.db",
		"a?b#c%d.db":     "a%3fb%23c%25d.db",
		"dir/x y.db":     "dir/x y.db",
		"/p/%41?mode=ro": "/p/%2541%3fmode=ro",
	} {
		if got := escapePath(in); got != want {
			t.Errorf("escapePath(%q) = %q, want %q", in, got, want)
		}
	}
}
