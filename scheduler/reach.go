package scheduler

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// reach tracks whether the scheduler can reach the store. When the
// database was unavailable to the scheduler it was, as a rule, unavailable
// to the workers too: their heartbeats could not be written. The zombie
// sweep therefore waits until the scheduler has had the database back for
// a whole zombie threshold, giving the workers that much time to beat
// again, before it judges heartbeats (zombieCutoff).
type reach struct {
	mu         sync.Mutex
	cut        bool      // the last store call failed as unavailable
	regainedAt time.Time // when a call last succeeded after a cut (zero: never cut)
}

// observe records the outcome err of a store call made at now. Errors
// other than unavailability say nothing about reachability.
func (r *reach) observe(err error, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		if r.cut {
			r.cut, r.regainedAt = false, now
		}
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		r.cut = true
	}
}

func (r *reach) state() (cut bool, regainedAt time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cut, r.regainedAt
}

// zombieCutoff decides the zombie sweep at now: ok is false while the
// store is cut off and for threshold after it was regained; otherwise
// tries whose heartbeat is older than staleBefore are zombies.
func zombieCutoff(now time.Time, threshold time.Duration, cut bool, regainedAt time.Time) (staleBefore time.Time, ok bool) {
	if cut {
		return time.Time{}, false
	}
	if !regainedAt.IsZero() && now.Sub(regainedAt) < threshold {
		return time.Time{}, false
	}
	return now.Add(-threshold), true
}
