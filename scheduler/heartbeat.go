package scheduler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// schedulerID names the schedulers of this process in the store's
// heartbeat table: hostname:pid.
func schedulerID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return fmt.Sprintf("%s:%d", h, os.Getpid())
}

// beatStore records the scheduler's heartbeat in the store
// (HeartbeatScheduler) at once and then every HeartbeatInterval until ctx
// ends, so that a process apart from the scheduler (`trellis api`) can
// report its health. The time recorded is the Clock's; the period is
// wall-clock time, so the beat adds no timer to an injected fake clock and
// does not move the deadlines tests step through.
func (s *Scheduler) beatStore(ctx context.Context) {
	id := schedulerID()
	tick := time.NewTicker(s.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		now := s.clk.Now()
		err := s.st.HeartbeatScheduler(ctx, id, now)
		if err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("scheduler: record heartbeat", "scheduler", id, "err", err)
		}
		s.reach.observe(err, now)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
