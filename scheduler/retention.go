package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// Defaults of RetentionConfig.
const (
	DefaultPurgeInterval = time.Minute
	DefaultPurgePause    = 100 * time.Millisecond
	// purgeStopTimeout bounds how long Stop waits for a batch in flight.
	purgeStopTimeout = 30 * time.Second
)

// PurgeMetrics receives what a purge deleted; *api.Metrics implements it.
type PurgeMetrics interface {
	// Purged counts rows deleted: kind is runs, task_instances or logs.
	Purged(kind string, n int)
}

// RetentionConfig configures a Purger. Store is required; zero fields
// take the defaults.
type RetentionConfig struct {
	Store store.Store
	// Registry holds the DAGs of this binary; a DAG's dag.Retention
	// overrides Runs for its runs.
	Registry *dag.Registry
	// Runs is how long finished runs (with their task instances and logs)
	// are kept after they end; 0 keeps them (DAGs with a retention of
	// their own are still purged by it).
	Runs time.Duration
	// Logs is how long the logs of finished runs are kept (usually
	// shorter than Runs); 0 keeps them as long as their runs.
	Logs time.Duration
	// Batch is how many runs one transaction deletes
	// (store.DefaultPurgeBatch); logs go by ten times as many tries.
	Batch int
	// Interval is the time between two passes (DefaultPurgeInterval).
	Interval time.Duration
	// Pause is the time between two batches of a pass (DefaultPurgePause),
	// so that the purge never holds the database for long.
	Pause   time.Duration
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics PurgeMetrics
}

// Purger applies the retention policy: every Interval it deletes the
// finished runs older than their DAG's retention and the logs older than
// the log retention, in small batches with pauses between them. Several
// purgers on one database are safe (a batch skips runs another holds).
type Purger struct {
	cfg RetentionConfig

	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{}
	started bool

	// logsBefore: every log of a run that ended before it is gone (the
	// previous pass completed), so the next pass need not scan there.
	logsBefore time.Time
}

// NewPurger returns a Purger; it does nothing until Start.
func NewPurger(cfg RetentionConfig) *Purger {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = dag.NewRegistry()
	}
	setDefault(&cfg.Batch, store.DefaultPurgeBatch)
	setDefault(&cfg.Interval, DefaultPurgeInterval)
	setDefault(&cfg.Pause, DefaultPurgePause)
	return &Purger{cfg: cfg}
}

// Enabled reports whether the policy purges anything: a run or log
// retention, or a DAG with a retention of its own.
func (p *Purger) Enabled() bool {
	return p.cfg.Runs > 0 || p.cfg.Logs > 0 || len(p.overrides()) > 0
}

// overrides returns the retention of each DAG of the registry that has
// its own.
func (p *Purger) overrides() map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, d := range p.cfg.Registry.DAGs() {
		if r := d.Retention(); r > 0 {
			out[d.ID()] = r
		}
	}
	return out
}

// Start runs a pass at once and then one every Interval, in the
// background, until Stop or ctx ends. A failed pass is logged and tried
// again at the next.
func (p *Purger) Start(ctx context.Context) error {
	if p.cfg.Store == nil {
		return errors.New("start purger: RetentionConfig.Store is nil")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return errors.New("start purger: already started")
	}
	p.started = true
	ctx, p.cancel = context.WithCancel(ctx)
	p.done = make(chan struct{})
	go p.loop(ctx)
	p.cfg.Logger.Info("purger started", "retention", p.cfg.Runs, "log_retention", p.cfg.Logs,
		"dag_overrides", len(p.overrides()))
	return nil
}

// Stop ends the purge and waits (up to 30 s) for the batch in flight.
func (p *Purger) Stop() {
	p.mu.Lock()
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case <-done:
	case <-time.After(purgeStopTimeout):
		p.cfg.Logger.Warn("purger: a batch is still in flight after the stop deadline")
	}
}

func (p *Purger) loop(ctx context.Context) {
	defer close(p.done)
	for {
		if _, err := p.Pass(ctx); err != nil && ctx.Err() == nil {
			p.cfg.Logger.Warn("purger: pass failed; trying again at the next", "err", err)
		}
		t := p.cfg.Clock.NewTimer(p.cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// Pass applies the policy once: runs past their retention, then logs past
// the log retention. It returns what it deleted. Start calls it; tests
// and tools may call it on a Purger that is not started.
func (p *Purger) Pass(ctx context.Context) (store.Purged, error) {
	now := p.cfg.Clock.Now()
	var total store.Purged
	count := func(b store.Purged) error {
		total.Runs += b.Runs
		total.TaskInstances += b.TaskInstances
		total.Logs += b.Logs
		if m := p.cfg.Metrics; m != nil {
			m.Purged("runs", b.Runs)
			m.Purged("task_instances", b.TaskInstances)
			m.Purged("logs", b.Logs)
		}
		return p.pause(ctx)
	}
	over := p.overrides()
	ids := make([]string, 0, len(over))
	for id := range over {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	type policy struct {
		q    store.PurgeQuery
		what string
	}
	var policies []policy
	if p.cfg.Runs > 0 {
		policies = append(policies, policy{store.PurgeQuery{Before: now.Add(-p.cfg.Runs), ExceptDAGIDs: ids}, "runs"})
	}
	for _, id := range ids {
		if over[id] < dag.KeepForever {
			policies = append(policies, policy{store.PurgeQuery{Before: now.Add(-over[id]), DAGID: id}, "runs of " + id})
		}
	}
	for _, pol := range policies {
		pol.q.Limit = p.cfg.Batch
		if _, err := store.PurgeAll(ctx, p.cfg.Store, pol.q, count); err != nil {
			return total, fmt.Errorf("purge %s: %w", pol.what, err)
		}
	}
	if p.cfg.Logs > 0 {
		before := now.Add(-p.cfg.Logs)
		p.mu.Lock()
		after := p.logsBefore
		p.mu.Unlock()
		q := store.PurgeQuery{Before: before, After: after, Limit: 10 * p.cfg.Batch}
		if _, err := store.PurgeAllLogs(ctx, p.cfg.Store, q, func(n int) error {
			return count(store.Purged{Logs: n})
		}); err != nil {
			return total, fmt.Errorf("purge logs: %w", err)
		}
		p.mu.Lock()
		p.logsBefore = before
		p.mu.Unlock()
	}
	if total != (store.Purged{}) {
		p.cfg.Logger.Info("purger: purged", "runs", total.Runs, "task_instances", total.TaskInstances, "logs", total.Logs)
	}
	return total, nil
}

// pause waits Pause between two batches, or until ctx ends.
func (p *Purger) pause(ctx context.Context) error {
	t := p.cfg.Clock.NewTimer(p.cfg.Pause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}
