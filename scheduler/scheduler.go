// Package scheduler turns the DAGs of the binary into runs at the right
// instants and admits queued runs as others finish.
//
// Timing follows Airflow's data-interval semantics (see Due): the run for
// the interval [start, end) is created at end with logical date start. A
// Scheduler keeps the next due instant of every active, unpaused schedule
// in a heap and sleeps on one clock timer until the earliest; it does not
// poll. When a DAG falls due it creates the runs of every due interval
// (idempotently), moves the DAG's schedule forward with a compare-and-set
// and admits queued runs (respecting MaxActiveRuns under a lock on the DAG
// row). DAGs falling due together are fired in batches of FireBatchSize,
// each in one store transaction (Store.FireRuns). Because every step is idempotent or a compare-and-set, several
// schedulers may share one PostgreSQL database: each run is created once
// and each task queued once.
//
// Besides firing, a Scheduler listens for store wake-ups to admit queued
// runs when running ones finish and to notice paused and unpaused DAGs,
// re-queues retries when they fall due and sweeps zombie tasks.
//
// Manual runs, backfills and pausing (TriggerRun, Backfill, SetPaused) are
// methods that work on a Scheduler that was never started, so that the
// command line can use them without running the loop.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// Defaults of Config.
const (
	DefaultZombieThreshold     = time.Minute
	DefaultZombieCheckInterval = 10 * time.Second
	DefaultWorkerDeadAfter     = 30 * time.Second
	DefaultFireConcurrency     = 8
	DefaultFireBatchSize       = 250
	DefaultMaxRunsPerFire      = 1000
	DefaultWakeupInterval      = 20 * time.Millisecond
	DefaultRefreshInterval     = time.Second
	DefaultResyncInterval      = 30 * time.Second
	DefaultMaxBackfillRuns     = 10000
	DefaultHeartbeatInterval   = 5 * time.Second
)

// fireTimeout bounds one fire of one DAG.
const fireTimeout = time.Minute

// maxFireBackoff caps the delay before a DAG whose fire failed is tried
// again.
const maxFireBackoff = 30 * time.Second

// Config configures a Scheduler. Store and Registry are required; zero
// fields take the defaults above.
type Config struct {
	// Store is where DAGs, runs and task instances live.
	Store store.Store
	// Registry holds the DAGs of this binary.
	Registry *dag.Registry
	// Clock tells the time and makes the timers (default clock.Real).
	Clock clock.Clock
	// Logger receives the scheduler's log (default: discard).
	Logger *slog.Logger

	// ZombieThreshold is how old a running task's last heartbeat may be
	// before it is failed as a zombie.
	ZombieThreshold time.Duration
	// ZombieCheckInterval is how often zombies are swept.
	ZombieCheckInterval time.Duration
	// WorkerDeadAfter is how old a worker process's own heartbeat may be
	// before it is taken for dead: on the zombie sweep its running tries
	// are put back without using a try (Store.RecoverWorkerTasks) and its
	// row removed, well before their own heartbeats reach
	// ZombieThreshold (after a crash of a whole host, say). Keep it
	// several worker heartbeat intervals long.
	WorkerDeadAfter time.Duration
	// FireConcurrency is how many fires (each of up to FireBatchSize
	// DAGs) run at once.
	FireConcurrency int
	// FireBatchSize caps how many DAGs due together are fired in one store
	// transaction.
	FireBatchSize int
	// MaxRunsPerFire caps the runs one fire of a DAG creates; a longer
	// catch-up continues at once in further batches.
	MaxRunsPerFire int
	// WakeupInterval is the least time between two reactions to store
	// wake-ups (admitting queued runs, reading the next retry time); wake-
	// ups arriving meanwhile are handled together. Negative: no limit.
	WakeupInterval time.Duration
	// RefreshInterval is the least time between two re-reads of the DAG
	// rows prompted by wake-ups (to notice pause and unpause done by other
	// processes). Negative: no limit.
	RefreshInterval time.Duration
	// ResyncInterval is how often everything is re-read even without
	// wake-ups, in case a notification was lost.
	ResyncInterval time.Duration
	// MaxBackfillRuns caps the runs one Backfill call may create.
	MaxBackfillRuns int

	// DefaultPoolSlots, when set, is the size Start gives default_pool
	// (-1 = unlimited, the size it is created with); nil leaves the
	// stored size, which the API may have changed.
	DefaultPoolSlots *int

	// Metrics, when set, receives the scheduler's events (*api.Metrics
	// implements it).
	Metrics Metrics
	// HeartbeatInterval is how often an idle scheduler reports itself
	// alive to Metrics (default 5 s; only used with Metrics).
	HeartbeatInterval time.Duration

	// OnRunCreated, when set, is called after the scheduler created a
	// scheduled run, with the time CreateRun returned. It is called from
	// the scheduler's goroutines and must not block (metrics, benchmarks).
	OnRunCreated func(r store.Run, createdAt time.Time)
}

// Metrics receives the events of a Scheduler for monitoring. Its methods
// must be cheap and safe for concurrent use; *api.Metrics implements it.
type Metrics interface {
	// SchedulerHeartbeat: the scheduler is alive (after each fire and
	// chore, and every HeartbeatInterval when idle).
	SchedulerHeartbeat()
	// ObserveSchedulerLoop records how long one fire of a DAG or one round
	// of chores took.
	ObserveSchedulerLoop(d time.Duration)
	// RunCreated counts a run the scheduler created ("scheduled" or
	// "backfill"; manual runs are counted by whoever triggers them).
	RunCreated(dagID, runType string)
	// ScheduleDelay records how late a scheduled run started: its start
	// minus the end of its data interval.
	ScheduleDelay(dagID string, d time.Duration)
	// ZombiesDetected counts running task instances taken away from
	// workers that stopped heart-beating.
	ZombiesDetected(n int)
}

// InvalidDAGsError is returned by Start when DAGs of the registry do not
// validate. Its message lists every problem.
type InvalidDAGsError struct {
	Problems []dag.Problem
}

func (e *InvalidDAGsError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invalid DAGs (%d problem", len(e.Problems))
	if len(e.Problems) != 1 {
		b.WriteString("s")
	}
	b.WriteString("):")
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// dagInfo is what the scheduler derives once from a DAG of the registry.
type dagInfo struct {
	id          string
	d           *dag.DAG
	tt          *dag.Timetable // nil: manual runs only
	policy      Policy
	fingerprint string
}

// Scheduler creates scheduled runs and admits queued ones. Create it with
// New; run its loop with Start and end it with Stop.
type Scheduler struct {
	cfg Config
	st  store.Store
	reg *dag.Registry
	clk clock.Clock
	log *slog.Logger

	mu      sync.Mutex
	started bool
	stopped bool
	// infos are the registry's DAGs as Start derived them (validated, with
	// their fingerprints), by id; lookup reuses them. Nil before Start.
	infos  map[string]*dagInfo
	cancel context.CancelFunc
	sub    store.Subscription
	wg     sync.WaitGroup

	// Channels between the goroutines of a started scheduler.
	work        chan []*entry
	results     chan []fireResult
	rows        chan []store.DAG
	pokeRefresh chan struct{}

	// Admission bookkeeping shared by the fire workers and the keeper, so
	// that the keeper does not race a fire to start the runs it just
	// created.
	admitMu sync.Mutex
	firing  map[string]int  // DAGs being fired now
	waiting map[string]bool // DAGs a fire left with queued runs

	// reach: whether the store answers, for the zombie sweep's grace
	// after an outage.
	reach reach

	// Hooks for the tests of this package, set before Start: the loop's
	// timer was set (zero: stopped), a fire was taken back, the keeper
	// finished a round and set its timer.
	hookArmed func(at time.Time)
	hookFired func(dagID string, res fireResult)
	hookKept  func(armed time.Time)
}

// New returns a Scheduler for cfg. It does nothing until Start; TriggerRun,
// Backfill and SetPaused work without Start.
func New(cfg Config) *Scheduler {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = dag.NewRegistry()
	}
	setDefault(&cfg.ZombieThreshold, DefaultZombieThreshold)
	setDefault(&cfg.ZombieCheckInterval, DefaultZombieCheckInterval)
	setDefault(&cfg.WorkerDeadAfter, DefaultWorkerDeadAfter)
	setDefault(&cfg.FireConcurrency, DefaultFireConcurrency)
	setDefault(&cfg.FireBatchSize, DefaultFireBatchSize)
	setDefault(&cfg.MaxRunsPerFire, DefaultMaxRunsPerFire)
	// A negative wake-up or refresh interval means no throttling at all.
	if cfg.WakeupInterval == 0 {
		cfg.WakeupInterval = DefaultWakeupInterval
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	setDefault(&cfg.ResyncInterval, DefaultResyncInterval)
	setDefault(&cfg.MaxBackfillRuns, DefaultMaxBackfillRuns)
	setDefault(&cfg.HeartbeatInterval, DefaultHeartbeatInterval)
	return &Scheduler{
		cfg:         cfg,
		st:          cfg.Store,
		reg:         cfg.Registry,
		clk:         cfg.Clock,
		log:         cfg.Logger,
		work:        make(chan []*entry),
		results:     make(chan []fireResult),
		rows:        make(chan []store.DAG),
		pokeRefresh: make(chan struct{}, 1),
		firing:      map[string]int{},
		waiting:     map[string]bool{},
	}
}

// runsStarted reports the schedule delay of the scheduled runs among
// started to Metrics.
func (s *Scheduler) runsStarted(started []store.Run) {
	if s.cfg.Metrics == nil {
		return
	}
	for _, r := range started {
		if r.RunType == store.RunScheduled && r.StartedAt != nil {
			s.cfg.Metrics.ScheduleDelay(r.DAGID, r.StartedAt.Sub(r.IntervalEnd))
		}
	}
}

// loopDone reports one fire or round of chores that began at start.
func (s *Scheduler) loopDone(start time.Time) {
	if s.cfg.Metrics == nil {
		return
	}
	s.cfg.Metrics.ObserveSchedulerLoop(s.clk.Now().Sub(start))
	s.cfg.Metrics.SchedulerHeartbeat()
}

// beginFire notes that dagID is being fired.
func (s *Scheduler) beginFire(dagID string) {
	s.admitMu.Lock()
	s.firing[dagID]++
	s.admitMu.Unlock()
}

// endFire notes that the fire of dagID ended, leaving queued runs or not.
func (s *Scheduler) endFire(dagID string, leftQueued bool) {
	s.admitMu.Lock()
	if s.firing[dagID]--; s.firing[dagID] <= 0 {
		delete(s.firing, dagID)
	}
	if leftQueued {
		s.waiting[dagID] = true
	}
	s.admitMu.Unlock()
}

// admissionState returns the DAGs being fired now and takes the DAGs that
// fires left with queued runs.
func (s *Scheduler) admissionState() (firing, waiting map[string]bool) {
	s.admitMu.Lock()
	defer s.admitMu.Unlock()
	firing = make(map[string]bool, len(s.firing))
	for id := range s.firing {
		firing[id] = true
	}
	waiting, s.waiting = s.waiting, map[string]bool{}
	return firing, waiting
}

func setDefault[T time.Duration | int](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// ensurePools creates the pools declared in code that are missing and
// gives default_pool its configured size.
func (s *Scheduler) ensurePools(ctx context.Context, decls []dag.PoolDecl) error {
	specs := make([]store.PoolSpec, len(decls))
	for i, d := range decls {
		specs[i] = store.PoolSpec{Name: d.Name, Slots: d.Slots, Description: d.Description}
	}
	if err := s.st.EnsurePools(ctx, specs); err != nil {
		return fmt.Errorf("create pools: %w", err)
	}
	if n := s.cfg.DefaultPoolSlots; n != nil {
		if _, err := s.st.UpdatePool(ctx, dag.DefaultPool, store.PoolPatch{Slots: n}); err != nil {
			return fmt.Errorf("size default_pool: %w", err)
		}
	}
	return nil
}

// Start validates the registry (an invalid one is an *InvalidDAGsError
// listing every problem), records its DAGs in the store (SyncDAGs) and
// starts the scheduling goroutines, which run until ctx ends or Stop.
func (s *Scheduler) Start(ctx context.Context) error {
	if s.st == nil {
		return errors.New("start scheduler: Config.Store is nil")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("start scheduler: already started")
	}
	dags := s.reg.DAGs()
	pools := s.reg.Pools()
	problems := append(dag.Validate(dags), dag.ValidatePools(pools, dags...)...)
	if len(problems) > 0 {
		return &InvalidDAGsError{Problems: problems}
	}
	infos := make(map[string]*dagInfo, len(dags))
	specs := make([]store.DAGSpec, 0, len(dags))
	for _, d := range dags {
		info, err := newDAGInfo(d)
		if err != nil {
			return fmt.Errorf("start scheduler: %w", err)
		}
		infos[d.ID()] = info
		specs = append(specs, store.SpecFromDAG(d))
	}
	if err := s.st.SyncDAGs(ctx, specs); err != nil {
		return fmt.Errorf("start scheduler: sync DAGs: %w", err)
	}
	if err := s.ensurePools(ctx, pools); err != nil {
		return fmt.Errorf("start scheduler: %w", err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	// Listen before reading, so that no change after the read is missed.
	sub, err := s.st.Listen(runCtx, store.TopicRunsChanged)
	if err != nil {
		cancel()
		return fmt.Errorf("start scheduler: listen: %w", err)
	}
	rows, err := listAllDAGs(ctx, s.st)
	if err != nil {
		cancel()
		_ = sub.Close()
		return fmt.Errorf("start scheduler: %w", err)
	}
	pending, err := queuedDAGs(ctx, s.st, 0)
	if err != nil {
		cancel()
		_ = sub.Close()
		return fmt.Errorf("start scheduler: %w", err)
	}

	lp := &loop{s: s, entries: map[string]*entry{}}
	scheduled := 0
	for id, info := range infos {
		if info.tt != nil {
			lp.entries[id] = &entry{info: info, index: -1}
			scheduled++
		}
	}
	lp.apply(rows)
	kp := newKeeper(s, sub, rows, pending)

	s.started, s.cancel, s.sub, s.infos = true, cancel, sub, infos
	s.wg.Add(2 + s.cfg.FireConcurrency)
	go func() { defer s.wg.Done(); lp.run(runCtx) }()
	go func() { defer s.wg.Done(); kp.run(runCtx) }()
	for range s.cfg.FireConcurrency {
		go func() { defer s.wg.Done(); s.fireWorker(runCtx) }()
	}
	s.log.Info("scheduler started", "dags", len(infos), "scheduled", scheduled, "store", s.st.Backend())
	return nil
}

// Stop ends the scheduling goroutines and waits for them. Runs already
// created are left to the store and the workers. Stop on a scheduler that
// was not started does nothing.
func (s *Scheduler) Stop() {
	s.mu.Lock()
	if !s.started || s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	cancel, sub := s.cancel, s.sub
	s.mu.Unlock()
	cancel()
	s.wg.Wait()
	if err := sub.Close(); err != nil {
		s.log.Warn("scheduler: close subscription", "err", err)
	}
	s.log.Info("scheduler stopped")
}

// running reports whether the loop runs (started and not stopped).
func (s *Scheduler) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started && !s.stopped
}

func newDAGInfo(d *dag.DAG) (*dagInfo, error) {
	tt, err := d.ParsedSchedule()
	if err != nil {
		return nil, fmt.Errorf("DAG %q: %w", d.ID(), err)
	}
	return &dagInfo{
		id:          d.ID(),
		d:           d,
		tt:          tt,
		policy:      Policy{StartDate: d.StartDate(), EndDate: d.EndDate(), Catchup: d.Catchup()},
		fingerprint: d.Fingerprint(),
	}, nil
}

// firstDue returns when a DAG whose last interval ended at last must fire
// next: at once (the end of the first due interval) when one is due, else
// the next due instant; ok=false when its schedule has ended.
func firstDue(info *dagInfo, last *time.Time, now time.Time) (time.Time, bool) {
	ivs, next := Due(info.tt, info.policy, last, now, 1)
	if len(ivs) > 0 {
		return ivs[0].End, true
	}
	return next, !next.IsZero()
}

// loop owns the heap of due instants; only its goroutine touches it.
type loop struct {
	s       *Scheduler
	entries map[string]*entry // scheduled DAGs by id
	heap    dueHeap
	ready   []*entry // due, waiting for a fire worker
	timer   clock.Timer
	armed   time.Time // deadline the timer is set for; zero = stopped
}

// fireResult is what a fire worker reports back to the loop.
type fireResult struct {
	e       *entry
	next    time.Time  // next due instant; zero = schedule ended
	paused  bool       // the DAG is paused (or inactive): nothing scheduled
	last    *time.Time // the DAG's last interval end as the store reported it
	hasLast bool       // last was reported
	err     error
}

func (l *loop) run(ctx context.Context) {
	l.timer = l.s.clk.NewTimer(time.Hour)
	l.timer.Stop()
	defer l.timer.Stop()
	for {
		l.arm()
		var send chan<- []*entry
		var head []*entry
		if len(l.ready) > 0 {
			n := min(len(l.ready), l.s.cfg.FireBatchSize)
			send, head = l.s.work, l.ready[:n:n]
		}
		select {
		case <-ctx.Done():
			return
		case <-l.timer.C():
			l.armed = time.Time{}
			if l.s.hookArmed != nil {
				l.s.hookArmed(time.Time{})
			}
			for _, e := range l.heap.popDue(l.s.clk.Now()) {
				e.inFlight = true
				l.ready = append(l.ready, e)
			}
		case send <- head:
			l.ready = l.ready[len(head):]
			if len(l.ready) == 0 {
				l.ready = nil
			}
		case results := <-l.s.results:
			for _, res := range results {
				l.done(res)
				if l.s.hookFired != nil {
					l.s.hookFired(res.e.info.id, res)
				}
			}
		case rows := <-l.s.rows:
			l.apply(rows)
		}
	}
}

// arm sets the timer for the earliest due instant.
func (l *loop) arm() {
	next, ok := l.heap.next()
	if !ok {
		if !l.armed.IsZero() {
			l.timer.Stop()
			l.armed = time.Time{}
			if l.s.hookArmed != nil {
				l.s.hookArmed(time.Time{})
			}
		}
		return
	}
	if next.Equal(l.armed) {
		return
	}
	l.timer.Stop()
	l.timer.Reset(next.Sub(l.s.clk.Now()))
	l.armed = next
	if l.s.hookArmed != nil {
		l.s.hookArmed(next)
	}
}

// done takes back an entry from a fire worker.
func (l *loop) done(res fireResult) {
	e := res.e
	e.inFlight = false
	if res.hasLast {
		e.last = res.last
	}
	rearm := e.rearm
	e.rearm = false
	now := l.s.clk.Now()
	if res.err != nil {
		e.failures++
		backoff := min(time.Second<<min(e.failures-1, 10), maxFireBackoff)
		l.heap.schedule(e, now.Add(backoff))
		return
	}
	e.failures = 0
	switch {
	case res.paused:
		e.paused = true
		if rearm {
			l.heap.schedule(e, now)
		}
	case res.next.IsZero():
		if rearm {
			l.heap.schedule(e, now)
		}
	default:
		l.heap.schedule(e, res.next)
	}
}

// apply takes in DAG rows read from the store: paused DAGs leave the heap,
// unpaused ones not in it (or just unpaused) are scheduled by the catchup
// rules.
func (l *loop) apply(rows []store.DAG) {
	now := l.s.clk.Now()
	for _, r := range rows {
		e := l.entries[r.DAGID]
		if e == nil {
			continue
		}
		if r.Paused || !r.Active {
			e.paused = true
			l.heap.remove(e)
			continue
		}
		wasPaused := e.paused
		e.paused = false
		if e.inFlight {
			if wasPaused {
				e.rearm = true
			}
			continue
		}
		if r.LastIntervalEnd != nil && (e.last == nil || r.LastIntervalEnd.After(*e.last)) {
			e.last = r.LastIntervalEnd
		}
		if e.index >= 0 {
			continue
		}
		if due, ok := firstDue(e.info, r.LastIntervalEnd, now); ok {
			l.heap.schedule(e, due)
		}
	}
}

// fireWorker fires the batches of DAGs the loop hands it.
func (s *Scheduler) fireWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case batch := <-s.work:
			// A fire under way completes even when Stop comes meanwhile,
			// so that the runs it created are also admitted; fireTimeout
			// bounds it.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fireTimeout)
			results := s.fireBatch(fctx, batch)
			cancel()
			select {
			case s.results <- results:
			case <-ctx.Done():
				return
			}
		}
	}
}

// maxStaleRetries bounds how often one fire re-reads a DAG whose schedule
// another scheduler moved meanwhile.
const maxStaleRetries = 3
