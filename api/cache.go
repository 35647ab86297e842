package api

import (
	"container/list"
	"slices"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// Limits of the finished-run cache.
const (
	// DefaultCacheTTL is how long a cached run's task instances are served
	// without reading them again (see Config.CacheTTL).
	DefaultCacheTTL = 2 * time.Second
	// cacheMaxBytes bounds the memory of the cache; cacheMaxTasks the
	// size of a run that is cached at all.
	cacheMaxBytes = 32 << 20
	cacheMaxTasks = 5000
)

// runCache keeps the task instances of finished runs, already rendered as
// JSON, so that clients polling GET …/dagRuns/{run}/taskInstances cost one
// small query (the run itself) instead of reading and encoding every
// instance. A finished run's instances only change when someone clears,
// marks or deletes them: an entry is used only while the run's id, state
// and start and end times are those it was filled with and it is younger
// than the TTL, and the handlers that change runs purge the cache, so
// changes made through this API are seen at once and changes made by
// other processes (e.g. the CLI) within the TTL.
type runCache struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	gen     uint64 // incremented by purge
	bytes   int
	entries map[[2]string]*list.Element
	lru     *list.List // front: most recently used *cachedRun
}

// cachedRun is the rendered task instances of one finished run.
type cachedRun struct {
	key                [2]string // dag id, run id
	id                 int64     // store.Run.ID
	state              state.RunState
	startedAt, endedAt time.Time
	filled             time.Time
	tis                []cachedTI
	size               int
	jsonBytes          int // of every instance's JSON, with separators
}

type cachedTI struct {
	ti   store.TaskInstance
	json []byte
}

func newRunCache(ttl time.Duration, now func() time.Time) *runCache {
	return &runCache{ttl: ttl, now: now, entries: map[[2]string]*list.Element{}, lru: list.New()}
}

func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// get returns the entry of run when it is fresh, else nil.
func (c *runCache) get(run store.Run) *cachedRun {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[[2]string{run.DAGID, run.RunID}]
	if !ok {
		return nil
	}
	e := el.Value.(*cachedRun)
	if e.id != run.ID || e.state != run.State || !e.startedAt.Equal(timeOrZero(run.StartedAt)) ||
		!e.endedAt.Equal(timeOrZero(run.EndedAt)) || c.now().Sub(e.filled) >= c.ttl {
		c.removeLocked(el)
		return nil
	}
	c.lru.MoveToFront(el)
	return e
}

// generation returns the purge count, read before filling an entry.
func (c *runCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put stores e, read while the purge count was gen, evicting the least
// recently used entries over the bound. An entry read before a purge is
// dropped: it may hold what the purge was for.
func (c *runCache) put(e *cachedRun, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if el, ok := c.entries[e.key]; ok {
		c.removeLocked(el)
	}
	c.entries[e.key] = c.lru.PushFront(e)
	c.bytes += e.size
	for c.bytes > cacheMaxBytes && c.lru.Len() > 1 {
		c.removeLocked(c.lru.Back())
	}
}

func (c *runCache) removeLocked(el *list.Element) {
	e := el.Value.(*cachedRun)
	c.lru.Remove(el)
	delete(c.entries, e.key)
	c.bytes -= e.size
}

// changed is called by the handlers that change runs or task instances:
// later reads see the change, neither served from the cache nor taken
// from a read begun before it.
func (a *api) changed() {
	a.cache.purge()
	a.runTIs.forget()
	a.grids.forget()
}

// purge empties the cache (see api.changed).
func (c *runCache) purge() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.entries)
	c.lru.Init()
	c.bytes = 0
}

// cachedTaskInstances returns the cache entry of a finished run, reading
// and rendering its task instances on a miss; nil when the run is not
// finished, has more than cacheMaxTasks instances, or caching is off.
func (a *api) cachedTaskInstances(c *tiContext, run store.Run) (*cachedRun, error) {
	if a.cache == nil || !run.State.Terminal() {
		return nil, nil
	}
	if e := a.cache.get(run); e != nil {
		return e, nil
	}
	filled, gen := a.cache.now(), a.cache.generation()
	q := store.TaskQuery{DAGIDs: []string{run.DAGID}, DAGRunIDs: []string{run.RunID}, Limit: 1000}
	var tis []store.TaskInstance
	for q.Offset = 0; ; q.Offset += q.Limit {
		page, total, err := a.store.ListTaskInstances(c.ctx, q)
		if err != nil {
			return nil, err
		}
		if total > cacheMaxTasks {
			return nil, nil
		}
		tis = append(tis, page...)
		if len(page) < q.Limit {
			break
		}
	}
	e := &cachedRun{key: [2]string{run.DAGID, run.RunID}, id: run.ID, state: run.State,
		startedAt: timeOrZero(run.StartedAt), endedAt: timeOrZero(run.EndedAt), filled: filled,
		tis: make([]cachedTI, len(tis))}
	if err := c.loadCallers(tis); err != nil {
		return nil, err
	}
	for i, ti := range tis {
		js := c.appendTI(nil, ti, run.LogicalDate)
		e.tis[i] = cachedTI{ti: ti, json: js}
		e.size += len(js) + 400 // the instance itself
		e.jsonBytes += len(js) + 1
	}
	a.cache.put(e, gen)
	return e, nil
}

// matches applies the filters the store would apply (q) and the residual
// ones to a cached instance.
func (f taskFilter) matches(ti store.TaskInstance, residual func(store.TaskInstance) bool) bool {
	q := f.q
	if len(q.DAGIDs) > 0 && !slices.Contains(q.DAGIDs, ti.DAGID) ||
		len(q.DAGRunIDs) > 0 && !slices.Contains(q.DAGRunIDs, ti.DAGRunID) ||
		len(q.TaskIDs) > 0 && !slices.Contains(q.TaskIDs, ti.TaskID) ||
		len(q.States) > 0 && !slices.Contains(q.States, ti.State) ||
		!(timeRange{q.StartDateGTE, q.StartDateLTE}).contains(ti.StartedAt) ||
		!(timeRange{q.EndDateGTE, q.EndDateLTE}).contains(ti.EndedAt) {
		return false
	}
	return residual == nil || residual(ti)
}

// renderCached appends to b[:0] the body answering one page of the
// cached instances matching f.
func (c *tiContext) renderCached(b []byte, e *cachedRun, f taskFilter, p page) ([]byte, error) {
	residual := f.residual()
	if need := e.jsonBytes + 64; cap(b) < need {
		b = make([]byte, 0, need)
	}
	b = append(b[:0], `{"task_instances":[`...)
	total, n := 0, 0
	for _, ct := range e.tis {
		if !f.matches(ct.ti, residual) {
			continue
		}
		if total >= p.offset && n < p.limit {
			if n > 0 {
				b = append(b, ',')
			}
			b = append(b, ct.json...)
			n++
		}
		total++
	}
	return appendTotal(b, total), nil
}
