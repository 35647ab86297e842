package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/taskrun"
)

// Worker is the loop of one worker process: it claims queued tries from
// the store up to its free slots, runs each in a goroutine with taskrun,
// reports results in batches, and heartbeats itself and its tries. Create
// it with NewWorker, then Start and Stop it.
type Worker struct {
	cfg  WorkerConfig
	self store.Worker

	// ctx carries every store call and is the parent of every try's
	// context. Stop does not cancel it until the very end, so a stopping
	// worker can still report and requeue; cancelling Start's context
	// halts the worker.
	ctx    context.Context
	cancel context.CancelFunc
	sub    store.Subscription
	fin    *finisher
	calls  *callBatcher

	mu        sync.Mutex
	active    map[int64]*activeTry // claimed and not yet settled, by task instance id
	executing int                  // tries whose goroutine has not returned
	reserved  int                  // slots the finisher claims for (FinishAndClaim in flight)
	requeue   []store.Try          // interrupted by shutdown, to put back
	leaks     int
	draining  bool
	closing   bool // shutdown began: no try is launched any more

	// queueDrained: the last claim (of the claim loop or of a finish)
	// took fewer tries than it asked for: the queue was empty. Then a
	// finish claims in its own transaction what it releases (a chain's
	// next task); while claims come back full, work is waiting and the
	// claim loop keeps claiming while finishes are in flight.
	queueDrained atomic.Bool

	kick      chan struct{} // queued work may exist
	pokeKick  chan struct{} // this worker scheduled a poke
	logWake   chan struct{} // a try was launched: its log may need flushing
	slotFreed chan struct{} // a try returned
	stopping  chan struct{} // closed when Stop begins
	halted    chan struct{} // closed by Halt
	leakLimit chan struct{} // closed when MaxLeaks abandoned goroutines are reached
	done      chan struct{} // closed when Stop has finished
	// tryReturned: a try that holds a limit returned (finisher.gather).
	tryReturned chan struct{}

	startOnce sync.Once
	started   bool
	stopOnce  sync.Once
	haltOnce  sync.Once
	leakOnce  sync.Once
	claimWG   sync.WaitGroup
	tryWG     sync.WaitGroup
	logWG     sync.WaitGroup // final log flushes
	logSem    chan struct{}  // bounds concurrent log sends
	loopsWG   sync.WaitGroup
	loopsStop chan struct{}

	pokeBufs pokeBuffers // the poke loop's
}

// maxLogFlushes bounds the log sends in flight, so that they never take
// every store connection from claims and finishes (docs/benchmarks.md has
// the measurement).
const maxLogFlushes = 2

// activeTry is one claimed try. Its flags are guarded by Worker.mu.
type activeTry struct {
	claim   store.Claimed
	key     store.Try
	ctx     context.Context
	cancel  context.CancelFunc
	log     *taskLog
	outputs storeOutputs

	running     bool // its goroutine has not returned
	lost        bool // the store took it away: drop the result
	interrupted bool // shutdown cancelled it: requeue unless it succeeded
	abandoned   bool // shutdown requeued it while it still ran
	// heldAt is when a try that holds a pool's or a key's slot
	// (holdsLimit) was launched; zero for the others. Set before its
	// goroutine starts.
	heldAt time.Time
	// parked: deferred on its calls, its goroutine waiting without a
	// slot until the worker's claim closes resume (tryCaller).
	parked bool
	resume chan struct{}
}

// NewWorker checks cfg, fills in defaults and returns a worker ready to
// Start.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Worker{
		cfg: c,
		self: store.Worker{
			ID:       c.ID,
			Hostname: c.Hostname,
			PID:      c.PID,
			Slots:    c.Slots,
		},
		active:    map[int64]*activeTry{},
		kick:      make(chan struct{}, 1),
		pokeKick:  make(chan struct{}, 1),
		logWake:   make(chan struct{}, 1),
		slotFreed: make(chan struct{}, 1),
		stopping:  make(chan struct{}),
		halted:    make(chan struct{}),
		leakLimit: make(chan struct{}),
		done:      make(chan struct{}),
		loopsStop: make(chan struct{}),
		logSem:    make(chan struct{}, maxLogFlushes),

		tryReturned: make(chan struct{}, 1),
	}, nil
}

// ID returns the worker's id in the store.
func (w *Worker) ID() string { return w.cfg.ID }

// Slots returns how many tries the worker runs at once.
func (w *Worker) Slots() int { return w.cfg.Slots }

// Running returns how many tries are executing now.
func (w *Worker) Running() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.executing
}

// Leaks returns how many task goroutines were abandoned so far.
func (w *Worker) Leaks() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.leaks
}

// LeakLimit is closed when MaxLeaks task goroutines have been abandoned;
// the worker has stopped claiming by then. The owner should Stop the
// worker and end the process so that the goroutines die with it.
func (w *Worker) LeakLimit() <-chan struct{} { return w.leakLimit }

// Done is closed when the worker has stopped.
func (w *Worker) Done() <-chan struct{} { return w.done }

// Start registers the worker, subscribes to task wake-ups and starts
// claiming. Cancelling ctx later halts the worker (as Halt then Stop);
// call Stop to wait for it.
func (w *Worker) Start(ctx context.Context) error {
	err := errors.New("worker already started")
	w.startOnce.Do(func() { err = w.start(ctx) })
	return err
}

func (w *Worker) start(ctx context.Context) error {
	w.ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	now := w.cfg.Clock.Now()
	w.self.StartedAt, w.self.HeartbeatAt = now, now
	sub, err := w.cfg.Store.Listen(w.ctx, store.TopicTasksReady)
	if err != nil {
		w.cancel()
		return fmt.Errorf("start worker %s: listen for ready tasks: %w", w.cfg.ID, err)
	}
	w.sub = sub
	if err := w.storeCall(func(ctx context.Context) error { return w.cfg.Store.RegisterWorker(ctx, w.self) }); err != nil {
		_ = sub.Close()
		w.cancel()
		return fmt.Errorf("start worker %s: register: %w", w.cfg.ID, err)
	}
	w.deliverSpools()
	w.started = true
	w.fin = newFinisher(w)
	w.calls = newCallBatcher(w)
	w.loopsWG.Add(4)
	go func() { defer w.loopsWG.Done(); w.calls.loop(w.loopsStop) }()
	go func() { defer w.loopsWG.Done(); w.fin.loop() }()
	go func() { defer w.loopsWG.Done(); w.heartbeatLoop() }()
	go func() { defer w.loopsWG.Done(); w.logFlushLoop() }()
	w.claimWG.Add(2)
	go func() { defer w.claimWG.Done(); w.claimLoop() }()
	go func() { defer w.claimWG.Done(); w.pokeLoop() }()
	go func() {
		select {
		case <-ctx.Done():
			w.Halt()
			w.Stop()
		case <-w.stopping:
		}
	}()
	notify(w.kick)
	w.cfg.Logger.Info("worker started", "hostname", w.cfg.Hostname, "pid", w.cfg.PID, "slots", w.cfg.Slots)
	return nil
}

// Stop shuts the worker down gracefully and waits: it stops claiming, lets
// running tries finish within Grace, cancels the rest and requeues them
// without using up a try, records pending results and deregisters.
// Calling it again, or on a worker never started, is safe.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		close(w.stopping)
		if !w.started {
			close(w.done)
			return
		}
		w.shutdown()
	})
	<-w.done
}

// Halt makes a Stop in progress (or the next one) skip what is left of
// the grace period: running tries are cancelled and requeued at once.
func (w *Worker) Halt() {
	w.haltOnce.Do(func() { close(w.halted) })
}

func (w *Worker) shutdown() {
	log := w.cfg.Logger
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	w.claimWG.Wait()
	w.mu.Lock()
	n := w.executing
	w.mu.Unlock()
	log.Info("worker stopping", "running", n, "grace", w.cfg.Grace)

	allReturned := make(chan struct{})
	go func() { w.tryWG.Wait(); close(allReturned) }()
	grace := w.cfg.Clock.NewTimer(w.cfg.Grace)
	select {
	case <-allReturned:
	case <-grace.C():
	case <-w.halted:
	}
	grace.Stop()

	if w.interruptAll() > 0 {
		// Give cancelled tries the time taskrun needs to stop them
		// (SIGTERM, KillGrace, SIGKILL), then requeue whatever is left.
		wait := w.cfg.Clock.NewTimer(w.cfg.KillGrace + time.Second)
		select {
		case <-allReturned:
		case <-wait.C():
		}
		wait.Stop()
	}
	if put := w.takeRequeue(); len(put) > 0 {
		err := w.storeCall(func(ctx context.Context) error { return w.cfg.Store.RequeueTries(ctx, put) })
		if err != nil {
			log.Error("requeue interrupted tries; the zombie sweep will recover them", "tries", len(put), "err", err)
		} else {
			log.Info("requeued interrupted tries without using a try", "tries", len(put))
		}
	}

	w.fin.close()
	w.logWG.Wait()
	close(w.loopsStop)
	w.loopsWG.Wait()
	if err := w.storeCall(func(ctx context.Context) error { return w.cfg.Store.DeregisterWorker(ctx, w.cfg.ID) }); err != nil {
		log.Warn("deregister worker", "err", err)
	}
	if err := w.sub.Close(); err != nil {
		log.Warn("close wake-up subscription", "err", err)
	}
	w.cancel()
	log.Info("worker stopped")
	close(w.done)
}

// interruptAll cancels every running try, marking it for requeueing, and
// returns how many there were.
func (w *Worker) interruptAll() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.active {
		if a.running && !a.lost {
			a.interrupted = true
			a.cancel()
			n++
		}
	}
	return n
}

// takeRequeue returns the tries to put back: those whose goroutine
// returned after being interrupted, and those interrupted that still run.
// Every try still running is marked abandoned: its late result and log
// are dropped.
func (w *Worker) takeRequeue() []store.Try {
	w.mu.Lock()
	defer w.mu.Unlock()
	put := w.requeue
	w.requeue = nil
	for id, a := range w.active {
		if a.running {
			a.abandoned = true
			if a.interrupted {
				put = append(put, a.key)
			}
			delete(w.active, id)
		}
	}
	return put
}

// storeCall runs f with the worker's store context bounded by
// StoreTimeout.
func (w *Worker) storeCall(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(w.ctx, w.cfg.StoreTimeout)
	defer cancel()
	return f(ctx)
}

// claimLoop claims tries while slots are free and work may be queued, and
// otherwise waits for a wake-up. It never polls faster than PollInterval.
func (w *Worker) claimLoop() {
	poll := w.cfg.Clock.NewTimer(w.cfg.PollInterval)
	defer poll.Stop()
	maybeWork := true
	for {
		select {
		case <-w.stopping:
			return
		default:
		}
		if free := w.freeSlots(); maybeWork && free > 0 {
			n, err := w.claim(free)
			switch {
			case err != nil:
				w.cfg.Logger.Warn("claim tasks", "err", err)
				maybeWork = false // retried on the next wake-up or poll
			case n < free:
				maybeWork = false
			case n > 0:
				// Let the tries just launched run before the slots
				// still free are claimed: tries that end at once free
				// theirs, and one claim takes them all. Claiming at once
				// split the slots for good into two groups claimed in
				// turn, each while the other ran (twice the claims, each
				// a transaction). It yields once; it does not wait.
				runtime.Gosched()
			}
			continue
		}
		select {
		case <-w.stopping:
			return
		case _, ok := <-w.sub.C():
			if !ok {
				w.cfg.Logger.Warn("wake-up subscription closed; relying on the safety poll")
				w.sub = closedSubscription{w.sub}
			}
			maybeWork = true
		case <-w.kick:
			maybeWork = true
		case <-w.slotFreed:
		case <-poll.C():
			poll.Reset(w.cfg.PollInterval)
			maybeWork = true
		}
	}
}

// closedSubscription replaces a subscription whose channel was closed, so
// the claim loop stops selecting on it.
type closedSubscription struct{ store.Subscription }

func (closedSubscription) C() <-chan store.Topic { return nil }

func (w *Worker) freeSlots() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.draining {
		return 0
	}
	return w.cfg.Slots - w.executing - w.reserved
}

// reserveSlots reserves the free slots for a claim made by the finisher,
// which the claim loop then leaves alone; none while the worker stops or
// drains, or while work waits in the queue (queueDrained is false: the
// claim loop claims it, alongside the finishes). Release them with
// unreserveSlots once the claimed tries are launched.
func (w *Worker) reserveSlots() int {
	if !w.queueDrained.Load() {
		return 0
	}
	select {
	case <-w.stopping:
		return 0
	default:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.draining {
		return 0
	}
	n := max(w.cfg.Slots-w.executing-w.reserved, 0)
	w.reserved += n
	return n
}

// mayClaim reports whether the finisher may claim for the slots its
// results hold: not while the worker stops or drains.
func (w *Worker) mayClaim() bool {
	select {
	case <-w.stopping:
		return false
	default:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.draining
}

// unreserveSlots releases n reserved slots and lets the claim loop look
// at them again.
func (w *Worker) unreserveSlots(n int) {
	if n == 0 {
		return
	}
	w.mu.Lock()
	w.reserved -= n
	w.mu.Unlock()
	notify(w.slotFreed)
}

// claim claims up to max tries and starts them; it returns how many.
func (w *Worker) claim(max int) (int, error) {
	var claimed []store.Claimed
	err := w.storeCall(func(ctx context.Context) error {
		var e error
		claimed, e = w.cfg.Store.ClaimTasks(ctx, w.self, max, w.cfg.Clock.Now())
		return e
	})
	if err != nil {
		return 0, fmt.Errorf("claim up to %d tasks: %w", max, err)
	}
	// Before the tries start: one may end, and its finish read the flag,
	// at once.
	w.queueDrained.Store(len(claimed) < max)
	w.launchAll(claimed)
	return len(claimed), nil
}

// launchAll starts the claimed tries. Tries claimed while the worker
// began to shut down (by a finish in flight) are put back at once,
// without using up a try.
func (w *Worker) launchAll(claimed []store.Claimed) {
	var back []store.Try
	for _, c := range claimed {
		if !w.launch(c) {
			back = append(back, store.Try{ID: c.ID, TryNumber: c.TryNumber})
		}
	}
	if len(back) == 0 {
		return
	}
	if err := w.storeCall(func(ctx context.Context) error { return w.cfg.Store.RequeueTries(ctx, back) }); err != nil {
		w.cfg.Logger.Error("requeue tries claimed during shutdown; the zombie sweep will recover them", "tries", len(back), "err", err)
	}
}

// launch starts the goroutine of one claimed try; false when the worker
// is shutting down (nothing started).
func (w *Worker) launch(c store.Claimed) bool {
	notify(w.logWake)
	key := store.Try{ID: c.ID, TryNumber: c.TryNumber}
	ctx, cancel := context.WithCancel(w.ctx)
	a := &activeTry{claim: c, key: key, ctx: ctx, cancel: cancel, running: true}
	a.log = newTaskLog(w.ctx, limitSink(w.logSem, storeLogSink(w.cfg.Store, key)), w.cfg.LogFlushBytes, logRoom(w.cfg.MaxLogBytes), func(err error) {
		// Through a: a closure over c would copy the whole claim.
		c := &a.claim
		w.cfg.Logger.Warn("task log lost", "dag_id", c.DAGID, "run_id", c.DAGRunID, "task_id", c.TaskID, "try", c.TryNumber, "err", err)
	})
	a.outputs = storeOutputs{st: w.cfg.Store, ctx: w.ctx, runID: c.RunID}
	w.mu.Lock()
	if old := w.active[c.ID]; old != nil {
		if w.resumeParked(old, c) {
			w.mu.Unlock()
			cancel()
			return true
		}
		if old.parked {
			// Parked under an older try: that try was taken away.
			old.lost = true
			old.cancel()
		}
	}
	if w.closing {
		w.mu.Unlock()
		cancel()
		return false
	}
	w.active[c.ID] = a
	w.executing++
	if holdsLimit(c) {
		a.heldAt = w.cfg.Clock.Now()
	}
	// Added under w.mu, before shutdown (which sets closing under w.mu)
	// can wait for the tries.
	w.tryWG.Add(1)
	w.mu.Unlock()
	go w.runTry(a)
	return true
}

// logRoom is how much task output fits in a log of maxBytes beside the
// truncation note.
func logRoom(maxBytes int64) int64 {
	return max(maxBytes-store.MaxTruncationNote, maxBytes/2)
}

// runTry executes one try and hands its result on.
func (w *Worker) runTry(a *activeTry) {
	defer w.tryWG.Done()
	res, abandonedGoroutine, signaled := w.execute(a)
	a.cancel()
	// A Shell command killed by a SIGTERM it did not get from us was most
	// likely hit by the signal that stops this worker too (systemd's
	// default KillMode=control-group signals every process of the
	// service at once): put it back like an interrupted try.
	groupStop := signaled == syscall.SIGTERM && res.State == state.Failed && w.awaitStopping(groupStopWait)
	// The rest of the log normally travels with the result and is written
	// in the commit that records it: no store round trip of its own
	// between this task's end and the start of the tasks it releases.
	final := a.log.finish()

	w.mu.Lock()
	a.running = false
	w.executing--
	if abandonedGoroutine {
		w.leaks++
		if w.cfg.MaxLeaks > 0 && w.leaks >= w.cfg.MaxLeaks {
			w.draining = true
			w.leakOnce.Do(func() {
				w.cfg.Logger.Warn("worker drains: too many abandoned task goroutines", "leaks", w.leaks, "max_leaks", w.cfg.MaxLeaks)
				close(w.leakLimit)
			})
		}
	}
	switch {
	case a.abandoned:
		// Shutdown gave up waiting for it (and requeued it if it was
		// interrupted); the store may be closing.
		w.cfg.Logger.Debug("dropping the result of an abandoned try", "task_instance", a.key.ID, "try", a.key.TryNumber)
	case a.lost:
		if w.active[a.key.ID] == a {
			delete(w.active, a.key.ID)
		}
		w.cfg.Logger.Debug("dropping the result of a try taken away", "task_instance", a.key.ID, "try", a.key.TryNumber)
	case (a.interrupted || groupStop) && res.State == state.Failed:
		w.requeue = append(w.requeue, a.key)
		if w.active[a.key.ID] == a {
			delete(w.active, a.key.ID)
		}
	default:
		// Submitted under w.mu: shutdown marks tries abandoned under
		// w.mu before it closes the finisher, so nothing is submitted
		// after that.
		res.Log = final
		if holdsLimit(a.claim) {
			// Its slot stays reserved for its finish, which claims for it
			// in the same transaction (finisher.finish): the claim loop
			// would find the limit's slot still taken until that commit,
			// and the finish would then wake every worker for it.
			w.reserved++
			w.fin.submitHeld(res)
		} else {
			w.fin.submit(res)
		}
		final = nil
	}
	if !a.abandoned && len(final) > 0 {
		// No result carries it (taken away or put back): append it on its
		// own. Stop waits for these sends.
		w.logWG.Add(1)
		go func() { defer w.logWG.Done(); a.log.send(final) }()
	}
	w.mu.Unlock()
	notify(w.slotFreed)
	if !a.heldAt.IsZero() {
		notify(w.tryReturned)
	}
}

// gatherWait bounds how long the finisher waits for tries that hold a
// limit and were launched just before it takes a batch (gatherDeadline).
const gatherWait = time.Millisecond

// gatherDeadline returns until when the finisher waits before it takes a
// batch, given the launch times of the tries that hold a limit and still
// run: the latest launch within gatherWait of now, plus gatherWait; false
// when there is none. A try that holds a limit keeps its worker slot
// until its finish commits, and that finish claims for the slot (see
// runTry); if the finisher took its batch while the tries a claim had
// just launched were still returning, the worker's slots would split into
// two groups finishing in turn, each finish carrying half of them. Tries
// that end within gatherWait of their start join the results already
// waiting instead; longer ones cost the results waiting gatherWait at
// most.
func gatherDeadline(heldAt []time.Time, now time.Time) (time.Time, bool) {
	var latest time.Time
	for _, t := range heldAt {
		if now.Sub(t) < gatherWait && t.After(latest) {
			latest = t
		}
	}
	if latest.IsZero() {
		return time.Time{}, false
	}
	return latest.Add(gatherWait), true
}

// heldLaunches returns the launch times of the running tries that hold a
// limit.
func (w *Worker) heldLaunches() []time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var at []time.Time
	for _, a := range w.active {
		if a.running && !a.heldAt.IsZero() {
			at = append(at, a.heldAt)
		}
	}
	return at
}

// holdsLimit reports whether c takes a slot of a pool or a concurrency
// key, given back only when its finish commits (store.TaskSpec.Limited;
// a task cap alone or a limited default_pool are not seen here: their
// finishes free the worker slot at once, as unlimited ones do, so that
// the claim loop reuses it without waiting for the finish).
func holdsLimit(c store.Claimed) bool {
	return (c.Pool != "" && c.Pool != dag.DefaultPool) || c.PoolSlots > 1 || c.ConcurrencyKey != ""
}

// groupStopWait is how long a try whose Shell command was killed by a
// foreign SIGTERM waits for the worker's own stop to begin.
const groupStopWait = 2 * time.Second

// awaitStopping reports whether Stop begins within d.
func (w *Worker) awaitStopping(d time.Duration) bool {
	t := w.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.stopping:
		return true
	case <-t.C():
		return false
	}
}

// execute runs the try with taskrun and returns its result, whether
// taskrun left the task's goroutine running, and the signal that killed a
// Shell command (taskrun.Outcome.Signaled).
func (w *Worker) execute(a *activeTry) (store.Result, bool, os.Signal) {
	c := a.claim
	res := store.Result{Try: a.key}
	fail := func(msg string) (store.Result, bool, os.Signal) {
		_, _ = fmt.Fprintf(a.log, "trellis: %s\n", msg)
		res.State, res.Permanent, res.Error, res.EndedAt = state.Failed, true, msg, w.cfg.Clock.Now()
		return res, false, nil
	}
	d := w.cfg.Registry.Lookup(c.DAGID)
	var t *dag.Task
	if d != nil {
		t = d.Task(c.TaskID)
	}
	if t == nil {
		return fail(fmt.Sprintf("task %q of DAG %q is not defined in this binary (worker %s on %s); was it renamed or removed?",
			c.TaskID, c.DAGID, w.cfg.ID, w.cfg.Hostname))
	}
	params, err := runParams(d.Params(), c.Conf)
	if err != nil {
		return fail(fmt.Sprintf("run %q of DAG %q: %v", c.DAGRunID, c.DAGID, err))
	}
	res.StartedAt = w.cfg.Clock.Now()
	out := taskrun.Run(a.ctx, taskrun.Try{
		Arguments: c.Arguments,
		Caller:    newTryCaller(w, a, d),
		Task:      t,
		Info: dag.RunInfo{
			DAGID:         c.DAGID,
			RunID:         c.DAGRunID,
			TaskID:        c.TaskID,
			TryNumber:     c.TryNumber,
			LogicalDate:   c.LogicalDate,
			IntervalStart: c.IntervalStart,
			IntervalEnd:   c.IntervalEnd,
			Params:        params,

			Resumed:        c.Resumed,
			DeferredState:  c.DeferredState,
			EventPayload:   c.EventPayload,
			TriggerTimeout: timeOrZero(c.TriggerTimeout),
		},
		Log:       a.log,
		Outputs:   a.outputs,
		KillGrace: w.cfg.KillGrace,
		Env:       w.cfg.TaskEnv,
	})
	res.EndedAt = w.cfg.Clock.Now()
	res.State, res.Permanent, res.Follow = out.State, out.Permanent, out.Follow
	if out.Err != nil {
		res.Error = out.Err.Error()
	}
	res.Output = out.Output
	if out.State == state.Deferred && out.Deferral != nil {
		d := out.Deferral
		res.Deferral = store.Deferral{Event: d.Event, NextCheckAt: d.NextCheckAt, TriggerTimeout: d.TriggerTimeout, State: d.State,
			Poke: t.Kind() == dag.KindSensor}
		res.Output, res.Follow = nil, nil
	}
	switch {
	case res.State == state.Deferred && out.Deferral == nil:
		res.State, res.Permanent = state.Failed, true
		res.Error = "task runner returned state deferred without saying what it waits for"
	case res.State == state.Deferred:
	case res.State != state.Success && res.State != state.Skipped && res.State != state.Failed:
		res.State, res.Permanent, res.Output, res.Follow = state.Failed, false, nil, nil
		res.Error = fmt.Sprintf("task runner returned state %q, want success, failed or skipped (error: %s)", out.State, res.Error)
	case len(res.Output) > w.cfg.MaxOutputBytes:
		msg := fmt.Sprintf("task output is %d bytes of JSON, over the limit of %d", len(res.Output), w.cfg.MaxOutputBytes)
		_, _ = fmt.Fprintf(a.log, "trellis: %s\n", msg)
		res.State, res.Permanent, res.Output, res.Follow, res.Error = state.Failed, true, nil, nil, msg
	}
	return res, out.Abandoned, out.Signaled
}

// timeOrZero returns *t, or the zero time for nil.
func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// settled is called by the finisher once results are recorded (or given
// up): their tries stop heart-beating, and the recorded ones go to
// Events. A finish may have released
// downstream tasks, so unless it claimed them itself (drained, when it
// claimed fewer than it asked for) the claim loop looks for work.
func (w *Worker) settled(batch []store.Result, outcomes []store.FinishOutcome, drained bool) {
	var claims map[int64]store.Claimed
	if w.cfg.Events != nil && len(outcomes) > 0 {
		claims = make(map[int64]store.Claimed, len(batch))
	}
	for i, r := range batch {
		if r.Deferral.Poke && i < len(outcomes) && outcomes[i].Applied {
			notify(w.pokeKick) // its next poke may be due before the poke loop looks again
			break
		}
	}
	w.mu.Lock()
	for i, r := range batch {
		if a, ok := w.active[r.ID]; r.State == state.Deferred && ok && a.key == r.Try && a.running {
			// The try goes on, parked; a deferral not recorded means the
			// try was taken away.
			if i < len(outcomes) && !outcomes[i].Applied {
				a.lost = true
				a.cancel()
			}
			continue
		}
		// A try that ended deferred (its goroutine returned) is done here;
		// a claim that resumed it already runs under the same key.
		if a, ok := w.active[r.ID]; ok && a.key == r.Try && !(r.State == state.Deferred && a.running) {
			if claims != nil {
				claims[r.ID] = a.claim
			}
			delete(w.active, r.ID)
		}
	}
	w.mu.Unlock()
	for _, f := range finishes(batch, outcomes, claims) {
		w.cfg.Events.TaskFinished(f)
	}
	for _, o := range outcomes {
		if !o.Applied {
			w.cfg.Logger.Info("result not recorded: the try was taken away (zombie, cancelled run or cleared)",
				"task_instance", o.ID, "try", o.TryNumber)
		}
	}
	if !drained {
		notify(w.kick)
	}
}

// heartbeatLoop refreshes the worker's heartbeat and its tries', and
// cancels tries the store reports lost.
func (w *Worker) heartbeatLoop() {
	t := w.cfg.Clock.NewTimer(w.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-w.loopsStop:
			return
		case <-t.C():
			w.heartbeat()
			t.Reset(w.cfg.HeartbeatInterval)
		}
	}
}

func (w *Worker) heartbeat() {
	now := w.cfg.Clock.Now()
	err := w.storeCall(func(ctx context.Context) error { return w.cfg.Store.HeartbeatWorker(ctx, w.cfg.ID, now) })
	if errors.Is(err, store.ErrNotFound) {
		w.cfg.Logger.Warn("worker row was removed; registering again")
		self := w.self
		self.HeartbeatAt = now
		err = w.storeCall(func(ctx context.Context) error { return w.cfg.Store.RegisterWorker(ctx, self) })
	}
	if err != nil {
		w.cfg.Logger.Warn("heartbeat worker", "err", err)
	}

	w.mu.Lock()
	tries := make([]store.Try, 0, len(w.active))
	for _, a := range w.active {
		if !a.lost {
			tries = append(tries, a.key)
		}
	}
	w.mu.Unlock()
	if len(tries) == 0 {
		return
	}
	var lost []store.Try
	err = w.storeCall(func(ctx context.Context) error {
		var e error
		lost, e = w.cfg.Store.HeartbeatTasks(ctx, w.cfg.ID, tries, now)
		return e
	})
	if err != nil {
		w.cfg.Logger.Warn("heartbeat tasks", "tries", len(tries), "err", err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range lost {
		a, ok := w.active[l.ID]
		if !ok || a.key != l || !a.running {
			continue // already finished; its result decides (compare-and-set)
		}
		a.lost = true
		a.cancel()
		w.cfg.Logger.Info("try taken away by the store; stopping it",
			"dag_id", a.claim.DAGID, "run_id", a.claim.DAGRunID, "task_id", a.claim.TaskID, "try", l.TryNumber)
	}
}

// logFlushLoop sends buffered task log output every LogFlushInterval
// while tries run. While none runs its timer is off (no wake-up of the
// process every LogFlushInterval for nothing, as while only Sensors'
// pokes cycle: pokes keep their logs themselves); launching a try wakes
// it (logWake).
func (w *Worker) logFlushLoop() {
	t := w.cfg.Clock.NewTimer(w.cfg.LogFlushInterval)
	defer t.Stop()
	armed := true
	for {
		var tick <-chan time.Time
		if armed {
			tick = t.C()
		}
		select {
		case <-w.loopsStop:
			return
		case <-w.logWake:
			if !armed {
				armed = true
				t.Reset(w.cfg.LogFlushInterval)
			}
		case <-tick:
			w.mu.Lock()
			logs := make([]*taskLog, 0, len(w.active))
			running := false
			for _, a := range w.active {
				running = running || a.running
				if a.running && a.log.pending() {
					logs = append(logs, a.log)
				}
			}
			w.mu.Unlock()
			for _, l := range logs {
				l.flush()
			}
			// A try launched after the look above has sent logWake.
			if armed = running; armed {
				t.Reset(w.cfg.LogFlushInterval)
			}
		}
	}
}
