package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// scheduledRun returns the run of the scheduled interval iv of info.
func scheduledRun(info *dagInfo, iv Interval, now time.Time) store.NewRun {
	return store.NewRun{
		DAGID:         info.id,
		RunID:         RunID(store.RunScheduled, iv.Start),
		RunType:       store.RunScheduled,
		LogicalDate:   iv.Start,
		IntervalStart: iv.Start,
		IntervalEnd:   iv.End,
		Fingerprint:   info.fingerprint,
		QueuedAt:      now,
	}
}

// fireBatch fires the DAGs of batch: it creates the runs of all of them,
// advances their schedules and admits their queued runs in one store call
// (one transaction). It returns one result per entry, in order.
func (s *Scheduler) fireBatch(ctx context.Context, batch []*entry) []fireResult {
	out := make([]fireResult, len(batch))
	leftQueued := make([]bool, len(batch))
	prev := make([]*time.Time, len(batch))
	for i, e := range batch {
		out[i].e = e
		prev[i] = e.last
		s.beginFire(e.info.id)
	}
	defer func(start time.Time) {
		for i, e := range batch {
			s.endFire(e.info.id, leftQueued[i] || out[i].err != nil)
		}
		s.loopDone(start)
	}(s.clk.Now())

	pending := make([]int, len(batch))
	for i := range pending {
		pending[i] = i
	}
	for attempt := 1; len(pending) > 0; attempt++ {
		now := s.clk.Now()
		fires := make([]store.Fire, 0, len(pending))
		idx := make([]int, 0, len(pending))
		ivsOf := make([][]Interval, 0, len(pending))
		for _, i := range pending {
			info := batch[i].info
			ivs, next := Due(info.tt, info.policy, prev[i], now, s.cfg.MaxRunsPerFire)
			out[i].next = next
			if len(ivs) == 0 {
				continue
			}
			f := store.Fire{DAGID: info.id, Prev: prev[i], Last: ivs[len(ivs)-1].End, Runs: make([]store.NewRun, len(ivs))}
			if !next.IsZero() {
				f.NextDue = &next
			}
			for j, iv := range ivs {
				f.Runs[j] = scheduledRun(info, iv, now)
			}
			fires, idx, ivsOf = append(fires, f), append(idx, i), append(ivsOf, ivs)
		}
		pending = nil
		if len(fires) == 0 {
			break
		}
		res, err := s.st.FireRuns(ctx, fires, now)
		if err != nil {
			s.log.Error("scheduler: fire DAGs", "dags", len(fires), "err", err)
			for _, i := range idx {
				out[i] = fireResult{e: batch[i], err: fmt.Errorf("fire runs: %w", err)}
			}
			break
		}
		for k, r := range res {
			i, info := idx[k], batch[idx[k]].info
			out[i].last, out[i].hasLast = r.LastIntervalEnd, true
			switch {
			case r.Paused:
				out[i].paused, out[i].next = true, time.Time{}
			case errors.Is(r.Err, store.ErrStale):
				// Another scheduler moved it: recompute from its value.
				prev[i] = r.LastIntervalEnd
				if attempt < maxStaleRetries {
					pending = append(pending, i)
				}
			case r.Err != nil:
				out[i] = fireResult{e: batch[i], err: fmt.Errorf("fire: %w", r.Err)}
				s.log.Error("scheduler: fire DAG", "dag_id", info.id, "err", r.Err)
			default:
				s.fired(info, r, ivsOf[k], now, out[i].next)
				leftQueued[i] = len(r.Started) < len(r.Created)
			}
		}
	}
	return out
}

// fired reports the runs one successful fire of info created and started.
func (s *Scheduler) fired(info *dagInfo, r store.FireResult, ivs []Interval, now, next time.Time) {
	at := s.clk.Now()
	for _, run := range r.Created {
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.RunCreated(info.id, string(store.RunScheduled))
		}
		if s.cfg.OnRunCreated != nil {
			s.cfg.OnRunCreated(run, at)
		}
	}
	s.runsStarted(r.Started)
	if len(ivs) == s.cfg.MaxRunsPerFire && !next.After(now) {
		s.log.Info("scheduler: catching up in batches", "dag_id", info.id, "created", len(r.Created),
			"through", ivs[len(ivs)-1].End, "batch", s.cfg.MaxRunsPerFire)
	} else {
		s.log.Debug("scheduler: fired", "dag_id", info.id, "intervals", len(ivs), "created", len(r.Created), "next_due", next)
	}
}
