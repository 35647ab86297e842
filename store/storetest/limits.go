package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func inPool(name string, slots int) taskOpt {
	return func(ts *store.TaskSpec) { ts.Pool, ts.PoolSlots = name, slots }
}

func maxActive(n int) taskOpt { return func(ts *store.TaskSpec) { ts.MaxActive = n } }

func concurrencyKey(tpl string, limit int) taskOpt {
	return func(ts *store.TaskSpec) { ts.KeyTemplate, ts.KeyLimit = tpl, limit }
}

// manyTasks is n independent tasks t000… with opts.
func manyTasks(n int, opts ...taskOpt) []store.TaskSpec {
	out := make([]store.TaskSpec, n)
	for i := range out {
		out[i] = tk(fmt.Sprintf("t%03d", i), opts...)
	}
	return out
}

func (e *env) createPool(name string, slots int) {
	e.t.Helper()
	if _, err := e.s.CreatePool(e.ctx, store.PoolSpec{Name: name, Slots: slots, Description: "pool " + name}); err != nil {
		e.t.Fatalf("CreatePool(%s, %d): %v", name, slots, err)
	}
}

// runWithConf creates a manual run with conf and starts it.
func (e *env) runWithConf(sp store.DAGSpec, runID string, ld time.Time, conf string) {
	e.t.Helper()
	var c []byte
	if conf != "" {
		c = []byte(conf)
	}
	_, _, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: sp.DAGID, RunID: runID, RunType: store.RunManual,
		LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld.Add(time.Hour), Fingerprint: sp.Fingerprint,
		QueuedAt: ld, Conf: c})
	must(e.t, "CreateRun "+runID, err)
}

// limitsOf is what the running instances of a store may not exceed:
// pool sizes, task caps (dag.task) and key limits (rendered key).
type limitsOf struct {
	pools map[string]int
	tasks map[string]int
	keys  map[string]int
}

// check returns what the running instances exceed, or "".
func (l limitsOf) check(running []store.TaskInstance) string {
	pools, tasks, keys := map[string]int{}, map[string]int{}, map[string]int{}
	for _, ti := range running {
		pools[ti.Pool] += ti.PoolSlots
		tasks[ti.DAGID+"."+ti.TaskID]++
		if ti.ConcurrencyKey != "" {
			keys[ti.ConcurrencyKey]++
		}
	}
	for p, n := range pools {
		if lim, ok := l.pools[p]; ok && lim >= 0 && n > lim {
			return fmt.Sprintf("pool %s holds %d slots, limit %d", p, n, lim)
		}
	}
	for tk, n := range tasks {
		if lim, ok := l.tasks[tk]; ok && n > lim {
			return fmt.Sprintf("task %s runs %d instances, limit %d", tk, n, lim)
		}
	}
	for k, n := range keys {
		if lim, ok := l.keys[k]; ok && n > lim {
			return fmt.Sprintf("key %s runs %d instances, limit %d", k, n, lim)
		}
	}
	return ""
}

// interval is one try as the drivers saw it: started after its claim
// committed, ended before its finish was sent, so it lies within the
// try's true interval.
type interval struct {
	ti         store.Claimed
	start, end int64
}

// drive runs every queued instance to success with workers goroutines,
// each claiming up to slots at a time through FinishAndClaim and holding
// what it claimed for a little while, and a sampler that checks the
// running instances read from the store against lim throughout. It stops
// when total tries finished (or fails the test after a deadline) and
// returns the tries with their logical start and end.
func drive(t *testing.T, s store.Store, lim limitsOf, workers, slots, total int) []interval {
	t.Helper()
	var (
		clock    atomic.Int64
		mu       sync.Mutex
		tries    []interval
		finished atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		samples  atomic.Int64
	)
	deadline := time.Now().Add(90 * time.Second)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			tis, _, err := s.ListTaskInstances(t.Context(), store.TaskQuery{States: []state.TaskState{state.Running}})
			if err != nil {
				t.Errorf("sample running instances: %v", err)
				return
			}
			if bad := lim.check(tis); bad != "" {
				t.Errorf("sampled from the store: %s", bad)
				return
			}
			samples.Add(1)
			time.Sleep(time.Millisecond)
		}
	})
	for i := range workers {
		w := store.Worker{ID: fmt.Sprintf("drv-%d", i), Hostname: "host", PID: 1000 + i, Slots: slots}
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			var held []interval
			for finished.Load() < int64(total) {
				if time.Now().After(deadline) {
					t.Errorf("worker %s: %d of %d tries finished before the deadline (starved?)", w.ID, finished.Load(), total)
					return
				}
				var results []store.Result
				var keep []interval
				for _, h := range held {
					if rng.IntN(3) == 0 {
						keep = append(keep, h)
						continue
					}
					h.end = clock.Add(1)
					mu.Lock()
					tries = append(tries, h)
					mu.Unlock()
					results = append(results, store.Result{Try: store.Try{ID: h.ti.ID, TryNumber: h.ti.TryNumber},
						State: state.Success, EndedAt: t0.Add(3 * time.Minute)})
				}
				out, cs, err := s.FinishAndClaim(t.Context(), results, w, slots-len(keep), t0.Add(2*time.Minute))
				if err != nil {
					t.Errorf("FinishAndClaim: %v", err)
					return
				}
				for _, o := range out {
					if !o.Applied {
						t.Errorf("finish of %v not applied (state %s)", o.Try, o.State)
					}
				}
				finished.Add(int64(len(results)))
				held = keep
				for _, c := range cs {
					held = append(held, interval{ti: c, start: clock.Add(1)})
				}
				time.Sleep(time.Duration(rng.IntN(1500)) * time.Microsecond)
			}
		})
	}
	for finished.Load() < int64(total) && !t.Failed() && time.Now().Before(deadline.Add(time.Second)) {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if samples.Load() == 0 {
		t.Errorf("the sampler read the store no time")
	}
	return tries
}

// checkIntervals replays recorded tries in time order and reports the
// first moment any limit was exceeded.
func checkIntervals(t *testing.T, lim limitsOf, tries []interval) {
	t.Helper()
	type ev struct {
		at    int64
		start bool
		ti    store.TaskInstance
	}
	evs := make([]ev, 0, 2*len(tries))
	for _, tr := range tries {
		evs = append(evs, ev{tr.start, true, tr.ti.TaskInstance}, ev{tr.end, false, tr.ti.TaskInstance})
	}
	// Events have distinct times (one counter).
	byTime := make(map[int64]ev, len(evs))
	var last int64
	for _, e := range evs {
		byTime[e.at] = e
		last = max(last, e.at)
	}
	running := map[int64]store.TaskInstance{}
	for at := int64(1); at <= last; at++ {
		e, ok := byTime[at]
		if !ok {
			continue
		}
		if !e.start {
			delete(running, e.ti.ID)
			continue
		}
		running[e.ti.ID] = e.ti
		list := make([]store.TaskInstance, 0, len(running))
		for _, ti := range running {
			list = append(list, ti)
		}
		if bad := lim.check(list); bad != "" {
			t.Fatalf("recorded tries at time %d: %s", at, bad)
		}
	}
}

// testPoolLimit: a pool of 3, 200 queued tasks, 3 workers × 16 slots: never
// more than 3 slots in use (sampled from the store and replayed from the
// tries), every task runs.
func testPoolLimit(t *testing.T, e *env) {
	e.createPool("warehouse", 3)
	sp := newSpec("pooled", manyTasks(200, inPool("warehouse", 1))...)
	e.started(sp, "r")
	lim := limitsOf{pools: map[string]int{"warehouse": 3}}
	tries := drive(t, e.s, lim, 3, 16, 200)
	if len(tries) != 200 {
		t.Fatalf("%d tries ran, want 200", len(tries))
	}
	checkIntervals(t, lim, tries)
	e.wantRunState("pooled", "r", state.RunSuccess)
	p, err := e.s.GetPool(e.ctx, "warehouse")
	must(t, "GetPool", err)
	if p.RunningSlots != 0 || p.QueuedSlots != 0 || p.OpenSlots() != 3 {
		t.Errorf("pool after the run: %+v (open %d), want nothing running or queued and 3 open", p, p.OpenSlots())
	}
	e.wantCountersIdle()
}

// testTaskAndKeyLimits: MaxActive across runs and concurrency keys
// rendered from conf hold under concurrent workers.
func testTaskAndKeyLimits(t *testing.T, e *env) {
	capped := newSpec("capped_task", tk("sync", maxActive(2)))
	keyed := newSpec("keyed", manyTasks(10, concurrencyKey("customer:{{.Params.customer}}", 1))...)
	e.sync(capped, keyed)
	for i := range 12 {
		e.runWithConf(capped, fmt.Sprintf("c%02d", i), t0.Add(time.Duration(i)*time.Hour), "")
	}
	for i, c := range []string{"a", "b", "c"} {
		e.runWithConf(keyed, "k-"+c, t0.Add(time.Duration(i)*time.Hour), fmt.Sprintf(`{"customer": %q}`, c))
	}
	e.start("capped_task")
	e.start("keyed")
	ti := e.ti("keyed", "k-b", "t003")
	if ti.ConcurrencyKey != "customer:b" || ti.Pool != "default_pool" || ti.PoolSlots != 1 {
		t.Fatalf("keyed instance: key %q pool %q slots %d, want customer:b in default_pool with 1 slot",
			ti.ConcurrencyKey, ti.Pool, ti.PoolSlots)
	}
	lim := limitsOf{tasks: map[string]int{"capped_task.sync": 2},
		keys: map[string]int{"customer:a": 1, "customer:b": 1, "customer:c": 1}}
	tries := drive(t, e.s, lim, 4, 8, 12+30)
	checkIntervals(t, lim, tries)
	e.wantCountersIdle()
}

// testKeyNoHeadOfLine: a saturated key does not hold back other keys,
// even when its instances come first in claim order; a missing pool
// holds back only its own instances.
func testKeyNoHeadOfLine(t *testing.T, e *env) {
	hot := newSpec("hot", manyTasks(40, prio(10), concurrencyKey("k:{{.DAGID}}", 1))...)
	cold := newSpec("cold", manyTasks(3, concurrencyKey("k:{{.DAGID}}", 1))...)
	later := newSpec("later", manyTasks(2, inPool("not_yet", 1), prio(20))...)
	free := newSpec("free", tk("x"))
	e.sync(hot, cold, later, free)
	for _, sp := range []store.DAGSpec{hot, cold, later, free} {
		e.newRun(sp, "r", t0)
		e.start(sp.DAGID)
	}
	cs := e.claim(8)
	got := map[string]int{}
	for _, c := range cs {
		got[c.DAGID]++
	}
	if got["hot"] != 1 || got["cold"] != 1 || got["free"] != 1 || got["later"] != 0 || len(cs) != 3 {
		t.Fatalf("claimed %v per DAG, want one of hot, one of cold, the free task and none waiting for the missing pool", got)
	}
	if more := e.claim(8); len(more) != 0 {
		t.Fatalf("claimed %v with both keys saturated and the pool missing", taskIDs(more))
	}
	ws, err := e.s.WaitingOnKeys(e.ctx)
	must(t, "WaitingOnKeys", err)
	want := []store.KeyWait{{Key: "key:k:cold", Limit: 1, Running: 1, Queued: 2}, {Key: "key:k:hot", Limit: 1, Running: 1, Queued: 39}}
	if !slices.Equal(ws, want) {
		t.Errorf("WaitingOnKeys = %+v, want %+v", ws, want)
	}
	if _, err := e.s.GetPool(e.ctx, "not_yet"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetPool of a pool not created: %v, want ErrNotFound", err)
	}
	e.createPool("not_yet", 1)
	cs = e.claim(8)
	if len(cs) != 1 || cs[0].DAGID != "later" || cs[0].Pool != "not_yet" {
		t.Fatalf("after creating the pool claimed %v, want one task of later in not_yet", taskIDs(cs))
	}
}

// testPoolResize: a larger pool takes effect at the next claim; pool
// slots count per instance; a default_pool given a size limits the
// instances already queued and counts those running.
func testPoolResize(t *testing.T, e *env) {
	e.createPool("p", 1)
	wide := newSpec("wide2", manyTasks(6, inPool("p", 2))...)
	plain := newSpec("plain", manyTasks(6)...)
	e.sync(wide, plain)
	e.newRun(wide, "r", t0)
	e.start("wide2")
	if cs := e.claim(8); len(cs) != 0 {
		t.Fatalf("claimed %v: tasks of 2 slots in a pool of 1", taskIDs(cs))
	}
	p, err := e.s.UpdatePool(e.ctx, "p", store.PoolPatch{Slots: ptr(5)})
	must(t, "UpdatePool", err)
	if p.Slots != 5 || p.QueuedSlots != 12 {
		t.Fatalf("resized pool %+v, want 5 slots and 12 queued slots", p)
	}
	if cs := e.claim(8); len(cs) != 2 {
		t.Fatalf("after resizing to 5 claimed %d tasks of 2 slots, want 2", len(cs))
	}
	p, err = e.s.GetPool(e.ctx, "p")
	must(t, "GetPool", err)
	if p.RunningSlots != 4 || p.OpenSlots() != 0 {
		t.Errorf("pool %+v: running %d open %d, want 4 running and 0 open (8 queued slots occupy the rest)",
			p, p.RunningSlots, p.OpenSlots())
	}
	// default_pool: unlimited until given a size.
	e.newRun(plain, "r", t0)
	e.start("plain")
	first := e.claim(1)
	if len(first) != 1 || first[0].DAGID != "plain" {
		t.Fatalf("claimed %v, want a plain task", taskIDs(first))
	}
	_, err = e.s.UpdatePool(e.ctx, "default_pool", store.PoolPatch{Slots: ptr(3)})
	must(t, "UpdatePool default_pool", err)
	cs := e.claim(8)
	if len(cs) != 2 {
		t.Fatalf("default_pool of 3 with one running: claimed %d more, want 2", len(cs))
	}
	e.finish(result(first[0], state.Success))
	if cs := e.claim(8); len(cs) != 1 {
		t.Fatalf("after one finished claimed %d, want 1", len(cs))
	}
}

// testLimitsSurviveDeadWorker: the slots of a dead worker's tries come
// back when they are failed (and for a zombie); a put-back try frees
// its slot too.
func testLimitsSurviveDeadWorker(t *testing.T, e *env) {
	e.createPool("small", 2)
	sp := newSpec("dies", manyTasks(6, inPool("small", 1), retries(1, time.Second, 0))...)
	e.started(sp, "r")
	cs := e.claim(8)
	if len(cs) != 2 {
		t.Fatalf("claimed %d in a pool of 2", len(cs))
	}
	taken, err := e.s.FailWorkerTasks(e.ctx, e.w.ID, t0.Add(3*time.Minute))
	must(t, "FailWorkerTasks", err)
	if len(taken) != 2 {
		t.Fatalf("FailWorkerTasks took %d tries, want 2", len(taken))
	}
	w2 := store.Worker{ID: "w2", Hostname: "h2", PID: 2}
	cs, err = e.s.ClaimTasks(e.ctx, w2, 8, t0.Add(4*time.Minute))
	must(t, "ClaimTasks", err)
	if len(cs) != 2 {
		t.Fatalf("after the dead worker's tries failed claimed %d, want 2", len(cs))
	}
	zs, err := e.s.FailZombies(e.ctx, t0.Add(10*time.Minute), t0.Add(10*time.Minute))
	must(t, "FailZombies", err)
	if len(zs) != 2 {
		t.Fatalf("FailZombies took %d, want 2", len(zs))
	}
	cs, err = e.s.ClaimTasks(e.ctx, w2, 8, t0.Add(11*time.Minute))
	must(t, "ClaimTasks", err)
	if len(cs) != 2 {
		t.Fatalf("after zombies claimed %d, want 2", len(cs))
	}
	tries := []store.Try{{ID: cs[0].ID, TryNumber: cs[0].TryNumber}}
	must(t, "RequeueTries", e.s.RequeueTries(e.ctx, tries))
	cs2, err := e.s.ClaimTasks(e.ctx, w2, 8, t0.Add(12*time.Minute))
	must(t, "ClaimTasks", err)
	if len(cs2) != 1 {
		t.Fatalf("after a put-back claimed %d, want 1", len(cs2))
	}
	p, err := e.s.GetPool(e.ctx, "small")
	must(t, "GetPool", err)
	if p.RunningSlots != 2 {
		t.Errorf("pool %+v, want 2 running slots", p)
	}
}

// testLimitsBadInput: bad limits and pools are refused with errors that
// say what is wrong, and nothing is written.
func testLimitsBadInput(t *testing.T, e *env) {
	for _, bad := range []store.TaskSpec{
		tk("a", inPool("bad name", 1)),
		tk("a", inPool("p", -1)),
		tk("a", maxActive(-2)),
		tk("a", concurrencyKey("{{.Params.x", 1)),
		tk("a", concurrencyKey("k", 0)),
	} {
		if err := e.s.SyncDAGs(e.ctx, []store.DAGSpec{newSpec("bad", bad)}); err == nil {
			t.Errorf("SyncDAGs accepted task %+v", bad)
		}
	}
	if _, err := e.s.CreatePool(e.ctx, store.PoolSpec{Name: "has space", Slots: 1}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("CreatePool with a bad name: %v, want ErrInvalid", err)
	}
	if _, err := e.s.CreatePool(e.ctx, store.PoolSpec{Name: "neg", Slots: -5}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("CreatePool with -5 slots: %v, want ErrInvalid", err)
	}
	e.createPool("dup", 1)
	if _, err := e.s.CreatePool(e.ctx, store.PoolSpec{Name: "dup", Slots: 1}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreatePool twice: %v, want ErrConflict", err)
	}
	if _, err := e.s.UpdatePool(e.ctx, "dup", store.PoolPatch{Name: ptr("other")}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("renaming a pool: %v, want ErrInvalid", err)
	}
	if _, err := e.s.UpdatePool(e.ctx, "nope", store.PoolPatch{Slots: ptr(1)}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdatePool of a missing pool: %v, want ErrNotFound", err)
	}
	if err := e.s.DeletePool(e.ctx, "default_pool"); !errors.Is(err, store.ErrInUse) {
		t.Errorf("DeletePool(default_pool): %v, want ErrInUse", err)
	}
	sp := newSpec("uses", tk("a", inPool("dup", 1)))
	e.started(sp, "r")
	if err := e.s.DeletePool(e.ctx, "dup"); !errors.Is(err, store.ErrInUse) {
		t.Errorf("DeletePool of a pool with a queued instance: %v, want ErrInUse", err)
	}
	keyed := newSpec("keyed_bad", tk("a", concurrencyKey("c:{{.Params.customer}}", 1)))
	e.sync(keyed)
	_, _, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: keyed.DAGID, RunID: "nokey", RunType: store.RunManual,
		LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0, Fingerprint: keyed.Fingerprint, QueuedAt: t0})
	if !errors.Is(err, store.ErrInvalid) {
		t.Errorf("CreateRun whose conf lacks the key's param: %v, want ErrInvalid", err)
	}
	if _, err := e.s.GetRun(e.ctx, keyed.DAGID, "nokey"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused run was written: GetRun says %v", err)
	}
	e.createPool("gone", 2)
	must(t, "DeletePool", e.s.DeletePool(e.ctx, "gone"))
	ps, total, err := e.s.ListPools(e.ctx, 0, 0)
	must(t, "ListPools", err)
	if total != 2 || len(ps) != 2 || ps[0].Name != "default_pool" || ps[1].Name != "dup" || ps[1].QueuedSlots != 1 {
		t.Errorf("ListPools = %+v (total %d), want default_pool and dup with one queued slot", ps, total)
	}
}

// testLimitsProperty: random pools, caps and keys over random DAGs run by
// several workers never exceed a limit and finish every task.
func testLimitsProperty(t *testing.T, e *env) {
	for round := range 3 {
		rng := rand.New(rand.NewPCG(uint64(round), 42))
		lim := limitsOf{pools: map[string]int{}, tasks: map[string]int{}, keys: map[string]int{}}
		nPools := 1 + rng.IntN(3)
		for p := range nPools {
			name := fmt.Sprintf("p%d_%d", round, p)
			lim.pools[name] = 2 + rng.IntN(3)
			e.createPool(name, lim.pools[name])
		}
		keyLimit := 1 + rng.IntN(2)
		total := 0
		var specs []store.DAGSpec
		for d := range 2 + rng.IntN(2) {
			dagID := fmt.Sprintf("prop%d_%d", round, d)
			n := 5 + rng.IntN(10)
			tasks := make([]store.TaskSpec, n)
			for i := range tasks {
				var opts []taskOpt
				for j := range i {
					if rng.IntN(6) == 0 {
						opts = append(opts, up(tasks[j].TaskID))
					}
				}
				if rng.IntN(2) == 0 {
					p := fmt.Sprintf("p%d_%d", round, rng.IntN(nPools))
					opts = append(opts, inPool(p, 1+rng.IntN(lim.pools[p])))
				}
				if rng.IntN(3) == 0 {
					m := 1 + rng.IntN(2)
					opts = append(opts, maxActive(m))
					lim.tasks[fmt.Sprintf("%s.t%03d", dagID, i)] = m
				}
				if rng.IntN(3) == 0 {
					opts = append(opts, concurrencyKey(fmt.Sprintf("r%d:{{.Params.k}}", round), keyLimit))
				}
				if rng.IntN(4) == 0 {
					opts = append(opts, prio(rng.IntN(5)))
				}
				tasks[i] = tk(fmt.Sprintf("t%03d", i), opts...)
			}
			sp := newSpec(dagID, tasks...)
			specs = append(specs, sp)
			total += n * 2
		}
		e.sync(specs...)
		for _, sp := range specs {
			for r := range 2 {
				e.runWithConf(sp, fmt.Sprintf("r%d", r), t0.Add(time.Duration(r)*time.Hour), fmt.Sprintf(`{"k": "v%d"}`, r%2))
			}
			e.start(sp.DAGID)
		}
		for r := range 2 {
			lim.keys[fmt.Sprintf("r%d:v%d", round, r)] = keyLimit
		}
		tries := drive(t, e.s, lim, 3, 4, total)
		if len(tries) != total {
			t.Fatalf("round %d: %d tries finished, want %d", round, len(tries), total)
		}
		checkIntervals(t, lim, tries)
		e.wantCountersIdle(slices.Collect(maps.Keys(lim.pools))...)
	}
}

// testFreedSlotWakes: finishing the try that held a full pool's slot
// wakes claimers (TopicTasksReady) in its transaction, with and without
// a claim alongside; the slot is then claimable.
func testFreedSlotWakes(t *testing.T, e *env) {
	e.createPool("one", 1)
	sp := newSpec("waker", manyTasks(3, inPool("one", 1))...)
	e.started(sp, "r")
	cs := e.claim(4)
	if len(cs) != 1 {
		t.Fatalf("claimed %d in a pool of 1", len(cs))
	}
	sub, err := e.s.Listen(e.ctx, store.TopicTasksReady)
	must(t, "Listen", err)
	defer sub.Close()
	drainWakes(sub)
	e.finish(result(cs[0], state.Success))
	waitWake(t, sub, "finishing the pool's only running try")
	// Finished with a claim by another worker that takes less than it
	// asks for; the freed slot is claimable by whoever was woken.
	w2 := store.Worker{ID: "w2", Hostname: "h2", PID: 2}
	next := e.claim(4)
	if len(next) != 1 {
		t.Fatalf("after the wake-up claimed %d, want 1", len(next))
	}
	drainWakes(sub)
	_, got, err := e.s.FinishAndClaim(e.ctx, []store.Result{result(next[0], state.Success)}, w2, 1, t0.Add(4*time.Minute))
	must(t, "FinishAndClaim", err)
	if len(got) != 1 {
		t.Fatalf("FinishAndClaim claimed %d, want the freed slot's next task", len(got))
	}
}

func drainWakes(sub store.Subscription) {
	for {
		select {
		case <-sub.C():
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

func waitWake(t *testing.T, sub store.Subscription, what string) {
	t.Helper()
	select {
	case <-sub.C():
	case <-time.After(10 * time.Second):
		t.Fatalf("no TopicTasksReady wake-up after %s", what)
	}
}

// KeyCounterLister is implemented by backends so the suite can read the
// counters of concurrency keys and task caps (the claim's bookkeeping,
// which no part of the Store interface lists).
type KeyCounterLister interface {
	KeyCounters(ctx context.Context) ([]store.KeyWait, error)
}

// keyCounters returns the store's counters by name.
func (e *env) keyCounters() map[string]store.KeyWait {
	e.t.Helper()
	l, ok := e.s.(KeyCounterLister)
	if !ok {
		e.t.Fatalf("%T does not implement storetest.KeyCounterLister", e.s)
	}
	ks, err := l.KeyCounters(e.ctx)
	must(e.t, "KeyCounters", err)
	out := map[string]store.KeyWait{}
	for _, k := range ks {
		out[k.Key] = k
	}
	return out
}

// wantCountersIdle checks that once nothing runs or waits, every counter
// says so: what the claims and finishes added and took away balances.
func (e *env) wantCountersIdle(pools ...string) {
	e.t.Helper()
	for name, k := range e.keyCounters() {
		if k.Running != 0 || k.Queued != 0 {
			e.t.Errorf("counter %s with nothing running or queued: %+v", name, k)
		}
	}
	for _, name := range pools {
		p, err := e.s.GetPool(e.ctx, name)
		must(e.t, "GetPool "+name, err)
		if p.RunningSlots != 0 || p.QueuedSlots != 0 {
			e.t.Errorf("pool %s with nothing running or queued: %+v", name, p)
		}
	}
}

// keyNames lists the counters of rendered concurrency keys, sorted.
func (e *env) keyNames() []string {
	e.t.Helper()
	var out []string
	for name := range e.keyCounters() {
		if strings.HasPrefix(name, store.KeyPrefixKey) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// runAll claims and finishes with success until nothing is claimable.
func (e *env) runAll() int {
	e.t.Helper()
	n := 0
	for {
		cs := e.claim(16)
		if len(cs) == 0 {
			return n
		}
		for _, c := range cs {
			e.finish(result(c, state.Success))
		}
		n += len(cs)
	}
}

// testKeyCountersPurged: the counter of a concurrency key goes when the
// last instance naming it is purged or deleted with its run, and comes
// back when the key is used again; a key still named by an instance of
// a run not started yet, or running, keeps its counter.
func testKeyCountersPurged(t *testing.T, e *env) {
	sp := newSpec("per_customer", tk("sync", concurrencyKey("cust:{{.Params.customer}}", 1)))
	e.sync(sp)
	for i := range 12 {
		e.runWithConf(sp, fmt.Sprintf("r%02d", i), t0.Add(time.Duration(i)*time.Hour), fmt.Sprintf(`{"customer": "c%02d"}`, i))
	}
	e.start(sp.DAGID)
	if n := e.runAll(); n != 12 {
		t.Fatalf("ran %d instances, want 12", n)
	}
	if got := e.keyNames(); len(got) != 12 {
		t.Fatalf("counters after 12 customers: %v, want 12", got)
	}
	// busy runs under c01; waiting (not started) names c00.
	e.runWithConf(sp, "busy", t0.Add(100*time.Hour), `{"customer": "c01"}`)
	e.start(sp.DAGID)
	busy := e.claimOne("sync")
	e.runWithConf(sp, "waiting", t0.Add(101*time.Hour), `{"customer": "c00"}`)
	p, err := store.PurgeAll(e.ctx, e.s, store.PurgeQuery{Before: t0.Add(1000 * time.Hour)}, nil)
	must(t, "PurgeAll", err)
	if p.Runs != 12 {
		t.Fatalf("purged %d runs, want the 12 finished", p.Runs)
	}
	if got := e.keyNames(); !slices.Equal(got, []string{"key:cust:c00", "key:cust:c01"}) {
		t.Fatalf("counters after the purge: %v, want those of the waiting and the running instance", got)
	}
	e.finish(result(busy, state.Success))
	e.start(sp.DAGID)
	waiting := e.claimOne("sync") // its counter is there
	must(t, "DeleteRun busy", e.s.DeleteRun(e.ctx, sp.DAGID, "busy"))
	if got := e.keyNames(); !slices.Equal(got, []string{"key:cust:c00"}) {
		t.Fatalf("counters after deleting busy: %v, want c00's alone (waiting's instance runs)", got)
	}
	if c := e.keyCounters()["key:cust:c00"]; c.Running != 1 || c.Limit != 1 {
		t.Errorf("counter of the running instance: %+v, want 1 running of 1", c)
	}
	// Used again after its counter went: a new counter, and the limit holds.
	for i := range 2 {
		e.runWithConf(sp, fmt.Sprintf("again%d", i), t0.Add(time.Duration(200+i)*time.Hour), `{"customer": "c05"}`)
	}
	e.start(sp.DAGID)
	if got := e.keyNames(); !slices.Equal(got, []string{"key:cust:c00", "key:cust:c05"}) {
		t.Fatalf("counters with c05 used again: %v", got)
	}
	cs := e.claim(8)
	if len(cs) != 1 || cs[0].ConcurrencyKey != "cust:c05" {
		t.Fatalf("claimed %v, want one instance of c05 (c00 runs, c05's limit is 1)", taskIDs(cs))
	}
	e.finish(result(cs[0], state.Success), result(waiting, state.Success))
	if n := e.runAll(); n != 1 {
		t.Fatalf("ran %d after the first of c05, want its second", n)
	}
	e.wantCountersIdle()
	p, err = store.PurgeAll(e.ctx, e.s, store.PurgeQuery{Before: t0.Add(1000 * time.Hour)}, nil)
	must(t, "PurgeAll", err)
	if got := e.keyNames(); p.Runs != 3 || len(got) != 0 {
		t.Fatalf("purged %d runs, counters left %v; want 3 runs and no counter", p.Runs, got)
	}
}

// testKeyCountersPurgeRace: a run created under a key while the purge
// deletes the last other instance of that key keeps a counter, whichever
// commits first: its instance is claimable.
func testKeyCountersPurgeRace(t *testing.T, e *env) {
	sp := newSpec("race_key", tk("sync", concurrencyKey("k:{{.Params.k}}", 1)))
	e.sync(sp)
	for i := range 20 {
		key := fmt.Sprintf(`{"k": "v%02d"}`, i)
		e.runWithConf(sp, fmt.Sprintf("old%02d", i), t0.Add(time.Duration(2*i)*time.Hour), key)
		e.start(sp.DAGID)
		if n := e.runAll(); n != 1 {
			t.Fatalf("round %d: ran %d, want 1", i, n)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := store.PurgeAll(e.ctx, e.s, store.PurgeQuery{Before: t0.Add(1000 * time.Hour)}, nil); err != nil {
				t.Errorf("PurgeAll: %v", err)
			}
		})
		wg.Go(func() {
			ld := t0.Add(time.Duration(2*i+1) * time.Hour)
			if _, _, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: sp.DAGID, RunID: fmt.Sprintf("new%02d", i),
				RunType: store.RunManual, LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld.Add(time.Hour),
				Fingerprint: sp.Fingerprint, QueuedAt: ld, Conf: []byte(key)}); err != nil {
				t.Errorf("CreateRun: %v", err)
			}
		})
		wg.Wait()
		if t.Failed() {
			return
		}
		want := fmt.Sprintf("key:k:v%02d", i)
		if c, ok := e.keyCounters()[want]; !ok || c.Limit != 1 {
			t.Fatalf("round %d: counter %s = %+v (present %v) with a run naming it", i, want, c, ok)
		}
		e.start(sp.DAGID)
		if n := e.runAll(); n != 1 {
			t.Fatalf("round %d: the new run's instance: ran %d, want 1", i, n)
		}
	}
}

// testDeleteRunKeepsCounters: a run put back to queued while a limited
// instance of it runs cannot be deleted from under its counters: the
// deletion is refused until the run is marked finished, which frees the
// slot.
func testDeleteRunKeepsCounters(t *testing.T, e *env) {
	e.createPool("one", 1)
	sp := newSpec("requeued", tk("a", inPool("one", 1), concurrencyKey("k", 1)), tk("b", inPool("one", 1)))
	e.started(sp, "r")
	c := e.claimOne("a")
	_, err := e.s.SetRunState(e.ctx, sp.DAGID, "r", state.RunQueued, t0.Add(3*time.Minute))
	must(t, "SetRunState queued", err)
	if err := e.s.DeleteRun(e.ctx, sp.DAGID, "r"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("DeleteRun of a queued run with a running instance: %v, want ErrConflict", err)
	}
	if got := e.ti(sp.DAGID, "r", "a"); got.State != state.Running || got.TryNumber != c.TryNumber {
		t.Fatalf("the refused deletion changed a: %s try %d", got.State, got.TryNumber)
	}
	_, err = e.s.SetRunState(e.ctx, sp.DAGID, "r", state.RunFailed, t0.Add(4*time.Minute))
	must(t, "SetRunState failed", err)
	must(t, "DeleteRun", e.s.DeleteRun(e.ctx, sp.DAGID, "r"))
	e.wantCountersIdle("one")
	if got := e.keyNames(); len(got) != 0 {
		t.Errorf("counters left after the run's deletion: %v", got)
	}
	other := newSpec("after", tk("x", inPool("one", 1)))
	e.started(other, "r")
	e.claimOne("x")
}
