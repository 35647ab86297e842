package executor

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/taskrun"
)

// Pokes of Sensors. A Sensor's first try runs as any task; when its
// check says "not yet" the try ends deferred with its next check in the
// store's poke schedule (store.Deferral.Poke). From then on the worker's
// poke loop, beside the claim loop and without a slot, claims the due
// pokes in batches (one statement), calls their check functions here,
// and records the batch in one transaction: "not yet" moves the next
// check (no try, no log, no change to the instance); true, an error or
// the deadline end the try as a finish would, with the log of that poke.
const (
	// pokeBatch is the most pokes one claim takes: what falls due over
	// one pokeGap at 10,000 pokes a second, so that a loop claims once per
	// wake-up (each claim and record costs about 1 ms of worker CPU
	// whatever its size: docs/benchmarks.md, Session 8: poke2) even when
	// one worker process of a pool takes every poke (PokeStandby); a full
	// batch claims again at once.
	pokeBatch = 5000
	// pokeParallel bounds the checks running at once in a worker: they
	// run one after another on one goroutine, and on more (up to this
	// many) only while some take long (taskrun.Pokes).
	pokeParallel = 64
	// pokeLease is how long a claimed poke is held: a poke whose result
	// was not recorded by then (its worker died) is due again.
	pokeLease = time.Minute
	// pokeMaxCheck bounds one check (under the task's own Timeout, when
	// shorter), so that a batch is recorded well within its lease.
	pokeMaxCheck = pokeLease / 3
	// pokeGap is the least time between two claims of a poke loop that
	// found fewer than a batch due: the pokes that fall due meanwhile go
	// in one batch, each at most pokeGap late, instead of one claim per
	// sensor whose due times are spread over the interval. A poke thus
	// runs up to about pokeGap after its due time (as Airflow's
	// rescheduled sensors run at the scheduler's next loop, seconds late);
	// events do not wait for it (they resume through the scheduler). Each
	// wake-up of the poking process costs a few milliseconds of CPU
	// whatever its batch, so the gap bounds what many sensors cost
	// (docs/benchmarks.md, "Session 10: the poke cycle's wake-ups").
	pokeGap = 500 * time.Millisecond
	// pokeStandbyLate is how overdue a poke must be before a standby poke
	// loop (PokeStandby) takes it: well over what a poking worker that
	// keeps up leaves (pokeGap, its claim's round trip and the batch
	// before), so that the standby does not take, batch after batch, the
	// few pokes due just before each of the poking worker's claims, and
	// wake every pokeGap to do it.
	pokeStandbyLate = 2 * pokeGap
	// pokeLogBytes is how much of one poke's log is kept for the finish
	// that ends the wait.
	pokeLogBytes = 64 << 10
)

// pokeLoop claims and runs due pokes until the worker stops. It sleeps
// until the next poke is due (at least pokeGap, at most PollInterval:
// pokes deferred by other workers are found then), or until this worker
// schedules one.
//
// With PokeStandby it stands by for the worker that pokes: it claims only
// the pokes already pokeStandbyLate overdue — those the poking worker,
// claiming every pokeGap, has left (it is busy, slow or gone) — every
// PollInterval while it finds none and every pokeGap while it does; so a
// poke is at most about pokeGap late while the poking worker keeps up,
// and the standby takes over within PollInterval + pokeStandbyLate when
// it does not. Each wake-up of a process costs a fixed share of CPU
// whatever its batch (the Go runtime's sysmon polls for a millisecond
// after each; docs/benchmarks.md, "Session 9: cycle"), so one worker
// taking whole batches while the others sleep costs less than all taking
// a share at each their own wake-up. For PollInterval after this worker schedules a poke it claims
// as a poking worker does: by then the poking worker has claimed once and
// read the new poke's due time.
func (w *Worker) pokeLoop() {
	t := w.cfg.Clock.NewTimer(0)
	defer t.Stop()
	// Checks stop when the worker halts; Stop alone lets a batch end.
	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	go func() {
		select {
		case <-w.halted:
			cancel()
		case <-ctx.Done():
		}
	}()
	// One batch's results are recorded while the next batch is claimed
	// and poked: the two round trips overlap. A batch of "not yet" only
	// (most batches) is held instead and sent with the next claim
	// (ClaimPokesAfter: one round trip, one wake-up of the worker, for
	// both), when that claim comes within pokeGap.
	recording := make(chan struct{}, 1)
	var (
		heldPokes []store.Poke
		held      []store.PokeResult
	)
	defer func() {
		recording <- struct{}{}
		if len(held) > 0 {
			w.recordPokes(heldPokes, held) // stopping: one try, else their lease
		}
	}()
	var last time.Time  // the last claim
	var eager time.Time // with PokeStandby: claim as a poking worker until then
	for {
		select {
		case <-w.stopping:
			return
		case <-t.C():
		case <-w.pokeKick:
			if w.cfg.PokeStandby {
				eager = w.cfg.Clock.Now().Add(w.cfg.PollInterval + pokeGap)
			}
			// Look soon, but not more often than every pokeGap.
			t.Stop()
			if gap := pokeGap - w.cfg.Clock.Now().Sub(last); gap > 0 {
				t.Reset(gap)
				continue
			}
		}
		now := w.cfg.Clock.Now()
		last = now
		standby := w.cfg.PokeStandby && !now.Before(eager)
		due := now
		if standby {
			due = now.Add(-pokeStandbyLate)
		}
		wait := w.cfg.PollInterval
		var pokes []store.Poke
		var next time.Time
		var outcomes []store.FinishOutcome
		err := w.storeCall(func(ctx context.Context) error {
			var e error
			pokes, next, outcomes, e = w.cfg.Store.ClaimPokesAfter(ctx, w.self, held, pokeBatch, due, now.Add(pokeLease))
			return e
		})
		if err != nil {
			w.cfg.Logger.Warn("claim pokes", "err", err)
		}
		if len(held) > 0 {
			if err == nil {
				w.pokesRecorded(heldPokes, held, outcomes)
			} else {
				w.recordAsync(recording, heldPokes, held) // with its own retries
			}
			heldPokes, held = nil, nil
		}
		switch {
		case err == nil && len(pokes) == pokeBatch:
			wait = 0 // a full batch: more are due now
		case standby && len(pokes) > 0:
			wait = pokeGap // the poking worker leaves pokes overdue: help
		case standby:
			// The poking worker keeps up (or nothing is due): its next
			// due times are not this loop's.
		case err == nil && !next.IsZero():
			// Pokes due within pokeGap of each other go together.
			wait = min(wait, max(next.Sub(w.cfg.Clock.Now()), pokeGap))
		}
		if len(pokes) > 0 {
			results := w.runPokes(ctx, pokes)
			if at := earliestNext(results); !standby && !at.IsZero() {
				// The store's next due time counts these pokes' leases,
				// not the next checks they just chose.
				wait = min(wait, max(at.Sub(w.cfg.Clock.Now()), pokeGap))
			}
			if wait <= pokeGap && allNotYet(results) {
				// The buffer of results two batches back is reused by
				// the next batch: its record must have ended.
				recording <- struct{}{}
				<-recording
				heldPokes, held = pokes, results
			} else {
				w.recordAsync(recording, pokes, results)
			}
		}
		t.Reset(max(wait-w.cfg.Clock.Now().Sub(now), 0))
	}
}

// recordAsync records a batch's results on another goroutine, once the
// record of the batch before has ended.
func (w *Worker) recordAsync(recording chan struct{}, pokes []store.Poke, results []store.PokeResult) {
	recording <- struct{}{}
	go func() {
		defer func() { <-recording }()
		w.recordPokes(pokes, results)
	}()
}

// earliestNext is the earliest next check among the "not yet" results
// (zero when there is none).
func earliestNext(results []store.PokeResult) time.Time {
	var at time.Time
	for _, r := range results {
		if r.Requeue || r.Result.State != state.Deferred {
			continue
		}
		if n := r.Result.Deferral.NextCheckAt; !n.IsZero() && (at.IsZero() || n.Before(at)) {
			at = n
		}
	}
	return at
}

// allNotYet says whether every result is a "not yet" (ClaimPokesAfter
// takes them).
func allNotYet(results []store.PokeResult) bool {
	for _, r := range results {
		if r.Requeue || r.Result.State != state.Deferred {
			return false
		}
	}
	return true
}

// runPokes runs the checks of pokes on one goroutine, or on up to
// pokeParallel while some are slow (taskrun.Pokes: no goroutine, timer or
// channel per poke), and returns their results.
func (w *Worker) runPokes(ctx context.Context, pokes []store.Poke) []store.PokeResult {
	bufs := &w.pokeBufs
	bufs.turn ^= 1
	out := resize(bufs.results[bufs.turn], len(pokes))
	bufs.results[bufs.turn] = out
	// A batch is mostly the pokes of one DAG and one run, consecutive:
	// the last DAG and run are kept, and the maps hold the others.
	var (
		lastDAG  string
		d        *dag.DAG
		haveRun  bool
		run      int64
		runCheck pokeCheck
		runErr   error
		runs     map[int64]pokeRun
		noParams map[string]any
	)
	checks := bufs.checks[:0]
	defer func() {
		clear(checks) // no task or params kept past the batch
		bufs.checks = checks[:0]
	}()
	for i := range pokes {
		p := &pokes[i]
		out[i] = store.PokeResult{Try: p.Try, Lease: p.Lease}
		if i == 0 || p.DAGID != lastDAG {
			d, lastDAG = w.cfg.Registry.Lookup(p.DAGID), p.DAGID
		}
		var task *dag.Task
		if d != nil {
			task = d.Task(p.TaskID)
		}
		if task == nil || task.Kind() != dag.KindSensor {
			// Not a Sensor of this binary: an ordinary try says what is
			// wrong (or runs what the task now is).
			out[i].Requeue = true
			continue
		}
		if !haveRun || p.RunID != run {
			if haveRun {
				if runs == nil {
					runs = map[int64]pokeRun{}
				}
				runs[run] = pokeRun{runCheck, runErr}
			}
			haveRun, run = true, p.RunID
			if r, ok := runs[run]; ok {
				runCheck, runErr = r.check, r.err
			} else {
				runCheck, runErr = pokeCheck{outputs: storeOutputs{st: w.cfg.Store, ctx: w.ctx, runID: run}}, nil
			}
		}
		if runCheck.params == nil && runErr == nil && p.Conf != nil {
			runCheck.params, runErr = runParams(d.Params(), p.Conf)
		}
		if runErr != nil {
			out[i].Result = store.Result{Try: p.Try, State: state.Failed, Permanent: true,
				Error: fmt.Sprintf("run %q of DAG %q: %v", p.DAGRunID, p.DAGID, runErr), EndedAt: w.cfg.Clock.Now()}
			continue
		}
		c := runCheck // shared params: Context.Params hands out copies
		if c.params == nil {
			if noParams == nil {
				noParams = map[string]any{}
			}
			c.params = noParams
		}
		c.i, c.task = i, task
		checks = append(checks, c)
	}
	logs := resize(bufs.logs, len(checks))
	bufs.logs = logs
	// On the real clock a check's deferral reads the time its check
	// started (Try.Now nil) rather than the clock once more.
	now := w.cfg.Clock.Now
	if _, wall := w.cfg.Clock.(clock.Real); wall {
		now = nil
	}
	taskrun.Pokes(ctx, len(checks), pokeParallel, func(k int) taskrun.Try {
		c := checks[k]
		p := &pokes[c.i]
		logs[k] = cappedLog{max: pokeLogBytes}
		return taskrun.Try{
			Limit: pokeMaxCheck, // under the task's Timeout when shorter
			Task:  c.task,
			Info: dag.RunInfo{
				DAGID: p.DAGID, RunID: p.DAGRunID, TaskID: p.TaskID, TryNumber: p.TryNumber,
				LogicalDate: p.LogicalDate, IntervalStart: p.IntervalStart, IntervalEnd: p.IntervalEnd,
				Params: c.params, Resumed: true, TriggerTimeout: p.TriggerTimeout,
			},
			Log:       &logs[k],
			Outputs:   c.outputs,
			KillGrace: w.cfg.KillGrace,
			Env:       w.cfg.TaskEnv,
			Now:       now,
		}
	}, func(k int, o taskrun.Outcome) {
		i := checks[k].i
		w.pokeResult(ctx, &out[i].Result, &pokes[i], &o, &logs[k])
	})
	return out
}

// pokeBuffers are the slices of the poke loop's batches, kept from one
// batch to the next instead of made per batch: two of results (a batch's
// results are recorded while the next batch runs, and the loop waits for
// that record before the batch after), the checks and their logs (a log's
// bytes go with the results; the next batch starts a new one).
type pokeBuffers struct {
	results [2][]store.PokeResult
	turn    int
	checks  []pokeCheck
	logs    []cappedLog
}

// pokeCheck is a poke whose check this worker runs: pokes[i], its task,
// the run's params and its outputs.
type pokeCheck struct {
	i       int
	task    *dag.Task
	params  map[string]any
	outputs dag.OutputIO
}

// pokeRun is what runPokes keeps of a run: its params and outputs (in
// check), or why its conf cannot be used.
type pokeRun struct {
	check pokeCheck
	err   error
}

// resize returns s with length n, reusing its array when large enough.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// pokeResult sets *res to the result of what one check of a Sensor
// said. A "not yet" gets no EndedAt: the stores keep only its next check.
func (w *Worker) pokeResult(parent context.Context, res *store.Result, p *store.Poke, out *taskrun.Outcome, log *cappedLog) {
	if out.Abandoned {
		w.noteLeak()
	}
	*res = store.Result{Try: p.Try, State: out.State, Permanent: out.Permanent}
	if parent.Err() != nil {
		// Interrupted by the worker's halt, not an answer: due again now,
		// for another worker.
		res.State, res.Permanent, res.EndedAt = state.Deferred, false, w.cfg.Clock.Now()
		res.Deferral = store.Deferral{Poke: true, NextCheckAt: res.EndedAt}
		return
	}
	if out.State == state.Deferred && out.Deferral != nil {
		res.Deferral = store.Deferral{Poke: true, NextCheckAt: out.Deferral.NextCheckAt, TriggerTimeout: out.Deferral.TriggerTimeout}
		if out.Err != nil {
			res.Error = out.Err.Error()
		}
		return // "not yet": its log is dropped
	}
	res.EndedAt = w.cfg.Clock.Now()
	if out.Err != nil {
		res.Error = out.Err.Error()
	}
	switch {
	case out.State == state.Deferred, out.State != state.Success && out.State != state.Skipped && out.State != state.Failed:
		res.State, res.Permanent = state.Failed, true
		res.Error = fmt.Sprintf("sensor check ended %q without saying what it waits for (error: %s)", out.State, res.Error)
	case len(out.Output) > w.cfg.MaxOutputBytes:
		res.State, res.Permanent = state.Failed, true
		res.Error = fmt.Sprintf("task output is %d bytes of JSON, over the limit of %d", len(out.Output), w.cfg.MaxOutputBytes)
	default:
		res.Output = out.Output
	}
	res.Log = log.bytes()
}

// noteLeak counts a check goroutine abandoned after ignoring its
// context, as runTry does for tries.
func (w *Worker) noteLeak() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.leaks++
	if w.cfg.MaxLeaks > 0 && w.leaks >= w.cfg.MaxLeaks {
		w.draining = true
		w.leakOnce.Do(func() {
			w.cfg.Logger.Warn("worker drains: too many abandoned task goroutines", "leaks", w.leaks, "max_leaks", w.cfg.MaxLeaks)
			close(w.leakLimit)
		})
	}
}

// recordPokes records a batch of poke results, retrying while the store
// is unavailable and the worker runs. Results given up on are not lost:
// their leases run out and the pokes are due again.
func (w *Worker) recordPokes(pokes []store.Poke, results []store.PokeResult) {
	backoff := finishFirstBackoff
	for attempt := 1; ; attempt++ {
		var outcomes []store.FinishOutcome
		err := w.storeCall(func(ctx context.Context) error {
			var e error
			outcomes, e = w.cfg.Store.FinishPokes(ctx, w.self, results, w.cfg.Clock.Now())
			return e
		})
		if err == nil {
			w.pokesRecorded(pokes, results, outcomes)
			return
		}
		if attempt >= finishAttempts && !unavailable(err) {
			w.cfg.Logger.Error("record pokes; they are poked again when their lease ends", "pokes", len(results), "err", err)
			return
		}
		w.cfg.Logger.Warn("record pokes; retrying", "pokes", len(results), "attempt", attempt, "err", err)
		t := w.cfg.Clock.NewTimer(backoff)
		select {
		case <-w.stopping:
			t.Stop()
			w.cfg.Logger.Warn("worker stopping: poke results left to their lease", "pokes", len(results))
			return
		case <-t.C():
		}
		backoff = min(2*backoff, outageMaxBackoff)
	}
}

// pokesRecorded hands the pokes that ended their tries to Events.
func (w *Worker) pokesRecorded(pokes []store.Poke, results []store.PokeResult, outcomes []store.FinishOutcome) {
	if w.cfg.Events == nil {
		return
	}
	for i, o := range outcomes {
		r := results[i]
		if !o.Applied || r.Requeue || r.Result.State == state.Deferred || o.State == state.Queued {
			continue
		}
		p := pokes[i]
		w.cfg.Events.TaskFinished(Finish{DAGID: p.DAGID, RunID: p.DAGRunID, TaskID: p.TaskID, Try: o.TryNumber,
			State: o.State, Queued: -1})
	}
}

// cappedLog keeps the first max bytes written to it.
type cappedLog struct {
	mu  sync.Mutex
	buf []byte
	max int
	cut bool
}

func (l *cappedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.max - len(l.buf); room > 0 {
		l.buf = append(l.buf, p[:min(room, len(p))]...)
	}
	if len(l.buf) >= l.max {
		l.cut = true
	}
	return len(p), nil
}

func (l *cappedLog) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut {
		return append(l.buf, "\n[trellis: the log of this poke was cut]\n"...)
	}
	return l.buf
}
