package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// keeper reacts to store wake-ups and runs the periodic chores: admitting
// queued runs, noticing pause changes, re-queueing retries, sweeping
// zombies.
type keeper struct {
	s   *Scheduler
	sub store.Subscription

	paused  map[string]bool // as last read; inactive DAGs count as paused
	pending map[string]bool // DAGs that may have queued runs to admit

	admitWanted   bool // a wake-up not yet answered by admit
	refreshWanted bool // a wake-up not yet answered by refresh
	forceRefresh  bool // an in-process pause change: refresh at once
	lastAdmit     time.Time
	lastRefresh   time.Time
	resyncAt      time.Time
	retryAt       time.Time // zero: no retry pending
	lastSweep     time.Time // the last RequeueRetries
	zombieAt      time.Time
	heartbeatAt   time.Time // zero: no Metrics to report to

	timer clock.Timer
	armed time.Time
}

func newKeeper(s *Scheduler, sub store.Subscription, rows []store.DAG, pending map[string]bool) *keeper {
	now := s.clk.Now()
	k := &keeper{
		s: s, sub: sub,
		paused:      map[string]bool{},
		pending:     pending,
		admitWanted: len(pending) > 0,
		lastRefresh: now,
		resyncAt:    now.Add(s.cfg.ResyncInterval),
		zombieAt:    now.Add(s.cfg.ZombieCheckInterval),
	}
	if s.cfg.Metrics != nil {
		k.heartbeatAt = now
	}
	k.notePaused(rows)
	return k
}

func (k *keeper) run(ctx context.Context) {
	// The durable heartbeat (store) runs beside the chores and ends with them.
	beating := make(chan struct{})
	go func() { defer close(beating); k.s.beatStore(ctx) }()
	defer func() { <-beating }()
	k.timer = k.s.clk.NewTimer(time.Hour)
	k.timer.Stop()
	defer k.timer.Stop()
	k.updateRetry(ctx)
	subC := k.sub.C()
	for {
		k.tick(ctx)
		k.arm()
		if k.s.hookKept != nil {
			k.s.hookKept(k.armed)
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-subC:
			if !ok {
				if ctx.Err() == nil {
					k.s.log.Error("scheduler: wake-up subscription ended; relying on the periodic resync")
				}
				subC = nil
				continue
			}
			k.admitWanted, k.refreshWanted = true, true
		case <-k.s.pokeRefresh:
			k.forceRefresh = true
		case <-k.timer.C():
			k.armed = time.Time{}
		}
	}
}

// deadline returns the earliest instant a chore is due.
func (k *keeper) deadline() time.Time {
	d := k.resyncAt
	consider := func(t time.Time) {
		if !t.IsZero() && t.Before(d) {
			d = t
		}
	}
	consider(k.zombieAt)
	consider(k.sweepAt())
	consider(k.heartbeatAt)
	if k.admitWanted {
		consider(k.lastAdmit.Add(k.s.cfg.WakeupInterval))
	}
	if k.refreshWanted {
		consider(k.lastRefresh.Add(k.s.cfg.RefreshInterval))
	}
	return d
}

func (k *keeper) arm() {
	d := k.deadline()
	if d.Equal(k.armed) {
		return
	}
	k.timer.Stop()
	k.timer.Reset(d.Sub(k.s.clk.Now()))
	k.armed = d
}

// tick does the chores that are due.
func (k *keeper) tick(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	now := k.s.clk.Now()
	if !k.heartbeatAt.IsZero() && !now.Before(k.heartbeatAt) {
		k.s.cfg.Metrics.SchedulerHeartbeat()
		k.heartbeatAt = now.Add(k.s.cfg.HeartbeatInterval)
	}
	resync := !now.Before(k.resyncAt)
	if resync || k.forceRefresh || (k.refreshWanted && !now.Before(k.lastRefresh.Add(k.s.cfg.RefreshInterval))) {
		k.refresh(ctx, now, resync)
	}
	if k.admitWanted && !now.Before(k.lastAdmit.Add(k.s.cfg.WakeupInterval)) {
		k.admit(ctx, now)
		k.updateRetry(ctx)
	}
	if at := k.sweepAt(); !at.IsZero() && !now.Before(at) {
		k.lastSweep = now
		n, err := k.s.st.RequeueRetries(ctx, now)
		if err != nil {
			k.logErr("requeue retries", err)
		} else if n > 0 {
			k.s.log.Debug("scheduler: requeued retries", "count", n)
		}
		k.updateRetry(ctx)
		if !k.retryAt.IsZero() && !k.retryAt.After(now) {
			// The store failed, or another scheduler holds those rows:
			// look again shortly rather than spin.
			k.retryAt = now.Add(k.s.cfg.WakeupInterval)
		}
	}
	if !now.Before(k.zombieAt) {
		k.sweepDeadWorkers(ctx, now)
		k.sweepZombies(ctx, now)
		k.zombieAt = now.Add(k.s.cfg.ZombieCheckInterval)
	}
}

// sweepDeadWorkers puts back the running tries of workers whose process
// heartbeat is older than WorkerDeadAfter and removes their rows, unless
// the store was cut off lately (zombieCutoff).
func (k *keeper) sweepDeadWorkers(ctx context.Context, now time.Time) {
	cut, regained := k.s.reach.state()
	staleBefore, ok := zombieCutoff(now, k.s.cfg.WorkerDeadAfter, cut, regained)
	if !ok {
		return
	}
	workers, err := k.s.st.ListWorkers(ctx)
	k.s.reach.observe(err, now)
	if err != nil {
		k.logErr("list workers", err)
		return
	}
	for _, w := range deadWorkers(workers, staleBefore) {
		cause := fmt.Sprintf("worker %s (host %s, pid %d) stopped heart-beating at %s", w.ID, w.Hostname, w.PID,
			w.HeartbeatAt.UTC().Format(time.RFC3339))
		rec, err := k.s.st.RecoverWorkerTasks(ctx, w.ID, cause, now)
		if err != nil {
			k.logErr("recover tries of dead worker "+w.ID, err)
			continue
		}
		if err := k.s.st.DeregisterWorker(ctx, w.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			k.logErr("remove dead worker "+w.ID, err)
		}
		k.s.log.Warn("scheduler: worker stopped heart-beating; its tries were put back", "worker", w.ID,
			"last_heartbeat", w.HeartbeatAt, "requeued", len(rec.Requeued), "failed", len(rec.Failed))
	}
}

// deadWorkers returns the workers whose last heartbeat is before
// staleBefore.
func deadWorkers(ws []store.Worker, staleBefore time.Time) []store.Worker {
	var out []store.Worker
	for _, w := range ws {
		if w.HeartbeatAt.Before(staleBefore) {
			out = append(out, w)
		}
	}
	return out
}

// sweepZombies fails the running tries whose heartbeat is older than the
// zombie threshold, unless the store was cut off lately (zombieCutoff).
func (k *keeper) sweepZombies(ctx context.Context, now time.Time) {
	cut, regained := k.s.reach.state()
	staleBefore, ok := zombieCutoff(now, k.s.cfg.ZombieThreshold, cut, regained)
	if !ok {
		k.s.log.Debug("scheduler: zombie sweep skipped: workers get time to reach the database again", "cut_off", cut, "regained_at", regained)
		return
	}
	taken, err := k.s.st.FailZombies(ctx, staleBefore, now)
	k.s.reach.observe(err, now)
	if err != nil {
		k.logErr("fail zombies", err)
	} else if len(taken) > 0 {
		k.s.log.Warn("scheduler: failed zombie tasks", "count", len(taken), "threshold", k.s.cfg.ZombieThreshold)
		if k.s.cfg.Metrics != nil {
			k.s.cfg.Metrics.ZombiesDetected(len(taken))
		}
	}
}

// refresh re-reads the DAG rows, hands them to the loop and notes which
// DAGs were unpaused (their queued runs may now start). A full resync also
// re-reads every DAG with queued runs.
func (k *keeper) refresh(ctx context.Context, now time.Time, full bool) {
	k.forceRefresh, k.refreshWanted, k.lastRefresh = false, false, now
	if full {
		k.resyncAt = now.Add(k.s.cfg.ResyncInterval)
		k.admitWanted = true
		if q, err := queuedDAGs(ctx, k.s.st, 0); err != nil {
			k.logErr("resync queued runs", err)
		} else {
			for id := range q {
				k.pending[id] = true
			}
		}
	}
	rows, err := listAllDAGs(ctx, k.s.st)
	if err != nil {
		k.logErr("refresh DAGs", err)
		return
	}
	if k.notePaused(rows) {
		k.admitWanted = true
	}
	select {
	case k.s.rows <- rows:
	case <-ctx.Done():
	}
}

// notePaused records the paused state of rows and reports whether a DAG
// was unpaused (it is then pending admission).
func (k *keeper) notePaused(rows []store.DAG) bool {
	unpaused := false
	for _, r := range rows {
		p := r.Paused || !r.Active
		if was, seen := k.paused[r.DAGID]; seen && was && !p {
			k.pending[r.DAGID] = true
			unpaused = true
		}
		k.paused[r.DAGID] = p
	}
	return unpaused
}

// recentQueued is how many of the newest queued runs each admission looks
// at to learn of runs queued by other processes.
const recentQueued = 500

// admit starts queued runs of every DAG that may have some, as far as
// MaxActiveRuns allows.
func (k *keeper) admit(ctx context.Context, now time.Time) {
	k.admitWanted, k.lastAdmit = false, now
	recent, _, err := k.s.st.ListRuns(ctx, store.RunQuery{
		States: []state.RunState{state.RunQueued}, OrderBy: "-queued_at", Limit: recentQueued})
	if err != nil {
		k.logErr("list queued runs", err)
		k.admitWanted = true
		k.lastAdmit = now.Add(time.Second) // back off while the store fails
		return
	}
	// A DAG being fired starts its new runs itself; a fire that could not
	// start them all says so through waiting.
	firing, waiting := k.s.admissionState()
	for _, r := range recent {
		if !firing[r.DAGID] {
			k.pending[r.DAGID] = true
		}
	}
	for id := range waiting {
		k.pending[id] = true
	}
	ids := make([]string, 0, len(k.pending))
	for id := range k.pending {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if k.paused[id] || firing[id] || ctx.Err() != nil {
			continue
		}
		started, err := k.s.st.StartRuns(ctx, id, now)
		if errors.Is(err, store.ErrNotFound) {
			delete(k.pending, id)
			continue
		}
		if err != nil {
			k.logErr("start runs of "+id, err)
			continue
		}
		k.s.runsStarted(started)
		if len(started) > 0 {
			k.s.log.Debug("scheduler: admitted queued runs", "dag_id", id, "count", len(started))
			continue // there may be more; look again at the next wake-up
		}
		_, left, err := k.s.st.ListRuns(ctx, store.RunQuery{DAGIDs: []string{id},
			States: []state.RunState{state.RunQueued}, Limit: 1})
		if err == nil && left == 0 {
			delete(k.pending, id)
		}
	}
}

// sweepGap is the least time between two sweeps of RequeueRetries: many
// deferred instances with next checks spread over time (sensors) are
// queued in batches, not one sweep each.
const sweepGap = 50 * time.Millisecond

// sweepAt is when RequeueRetries is next due: the earliest retry or next
// check, but not within sweepGap of the last sweep (zero: none pending).
func (k *keeper) sweepAt() time.Time {
	if k.retryAt.IsZero() {
		return time.Time{}
	}
	if !k.lastSweep.IsZero() && k.retryAt.Before(k.lastSweep.Add(sweepGap)) {
		return k.lastSweep.Add(sweepGap)
	}
	return k.retryAt
}

// updateRetry reads the earliest pending retry time.
func (k *keeper) updateRetry(ctx context.Context) {
	t, ok, err := k.s.st.NextRetryAt(ctx)
	if err != nil {
		k.logErr("read next retry time", err)
		return
	}
	if !ok {
		k.retryAt = time.Time{}
		return
	}
	k.retryAt = t
}

func (k *keeper) logErr(what string, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	if errors.Is(err, store.ErrUnavailable) {
		// Expected during an outage; the chore is retried.
		k.s.log.Warn("scheduler: "+what+": database unavailable", "err", err)
		return
	}
	k.s.log.Error("scheduler: "+what, "err", err)
}

// listAllDAGs reads every DAG row, page by page.
func listAllDAGs(ctx context.Context, st store.Store) ([]store.DAG, error) {
	const page = 1000
	var out []store.DAG
	for off := 0; ; off += page {
		rows, total, err := st.ListDAGs(ctx, false, page, off)
		if err != nil {
			return nil, fmt.Errorf("list DAGs: %w", err)
		}
		out = append(out, rows...)
		if len(rows) < page || off+len(rows) >= total {
			return out, nil
		}
	}
}

// queuedDAGs returns the ids of the DAGs that have queued runs (reading at
// most limit runs; 0 = all).
func queuedDAGs(ctx context.Context, st store.Store, limit int) (map[string]bool, error) {
	const page = 1000
	out := map[string]bool{}
	for off := 0; limit <= 0 || off < limit; off += page {
		runs, total, err := st.ListRuns(ctx, store.RunQuery{
			States: []state.RunState{state.RunQueued}, OrderBy: "queued_at", Limit: page, Offset: off})
		if err != nil {
			return nil, fmt.Errorf("list queued runs: %w", err)
		}
		for _, r := range runs {
			out[r.DAGID] = true
		}
		if len(runs) < page || off+len(runs) >= total {
			break
		}
	}
	return out, nil
}
