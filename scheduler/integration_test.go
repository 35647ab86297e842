package scheduler

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// created records the runs a real-clock scheduler created, with when.
type created struct {
	mu      sync.Mutex
	changed chan struct{}
	byDAG   map[string][]createdRun
}

type createdRun struct {
	run store.Run
	at  time.Time
}

func newCreated() *created {
	return &created{changed: make(chan struct{}), byDAG: map[string][]createdRun{}}
}

func (c *created) hook(r store.Run, at time.Time) {
	c.mu.Lock()
	c.byDAG[r.DAGID] = append(c.byDAG[r.DAGID], createdRun{r, at})
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// wait waits until cond (called with the lock held) holds.
func (c *created) wait(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		c.mu.Lock()
		ok := cond()
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (c *created) count(dagID string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byDAG[dagID])
}

func realScheduler(t testing.TB, st store.Store, reg *dag.Registry, c *created) *Scheduler {
	t.Helper()
	s := New(Config{Store: st, Registry: reg, Logger: testLogger(t), OnRunCreated: c.hook})
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// checkGrid checks that runs (in logical-date order) cover consecutive
// intervals of length period with Airflow's ids, that every logical date is
// a multiple of period, and reports the gaps between consecutive runs.
func checkGrid(t testing.TB, dagID string, runs []store.Run, period time.Duration) (gaps int) {
	t.Helper()
	for i, r := range runs {
		if r.RunID != RunID(store.RunScheduled, r.LogicalDate) || !r.IntervalStart.Equal(r.LogicalDate) ||
			r.IntervalEnd.Sub(r.IntervalStart) != period || r.LogicalDate.UnixNano()%int64(period) != 0 {
			t.Errorf("%s: run %s has logical date %s and interval [%s, %s), want a %s interval on the grid",
				dagID, r.RunID, r.LogicalDate, r.IntervalStart, r.IntervalEnd, period)
		}
		if r.QueuedAt.Before(r.IntervalEnd) {
			t.Errorf("%s: run %s was created at %s, before its interval ended at %s", dagID, r.RunID, r.QueuedAt, r.IntervalEnd)
		}
		if i > 0 {
			switch d := r.LogicalDate.Sub(runs[i-1].LogicalDate); {
			case d == period:
			case d > period && d%period == 0:
				gaps++
			default:
				t.Errorf("%s: runs %s and %s are %s apart, want %s", dagID, runs[i-1].RunID, r.RunID, d, period)
			}
		}
	}
	return gaps
}

// TestRealClockFires runs an "@every 1s" and a "*/2 * * * * *" DAG for a
// few seconds of real time on each backend: the runs have the logical dates
// and data intervals of Airflow's semantics and are created right after
// their intervals end.
func TestRealClockFires(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		start := time.Now().Add(-time.Hour).Truncate(time.Hour)
		reg := registry(
			shellDAG("every1s", "@every 1s", start, dag.MaxActiveRuns(100)),
			shellDAG("even2s", "*/2 * * * * *", start, dag.MaxActiveRuns(100)))
		st := b.open(t, clock.Real{})
		c := newCreated()
		s := realScheduler(t, st, reg, c)
		c.wait(t, "5 runs of every1s and 3 of even2s", 30*time.Second, func() bool {
			return len(c.byDAG["every1s"]) >= 5 && len(c.byDAG["even2s"]) >= 3
		})
		s.Stop()
		for _, id := range []string{"every1s", "even2s"} {
			period := time.Second
			if id == "even2s" {
				period = 2 * time.Second
			}
			runs := listRuns(t, st, id)
			if len(runs) != c.count(id) {
				t.Errorf("%s: %d runs stored, %d reported created", id, len(runs), c.count(id))
			}
			if gaps := checkGrid(t, id, runs, period); gaps != 0 {
				t.Errorf("%s: %d gaps between runs of a live scheduler", id, gaps)
			}
			c.mu.Lock()
			for i, cr := range c.byDAG[id] {
				lag := cr.at.Sub(cr.run.IntervalEnd)
				// The first run is the latest interval at start-up; the
				// others are created by their timers.
				if i > 0 && (lag < 0 || lag > time.Second) {
					t.Errorf("%s: run %s created %s after its interval ended", id, cr.run.RunID, lag)
				}
			}
			c.mu.Unlock()
			for _, r := range runs {
				if r.State != state.RunRunning {
					t.Errorf("%s: run %s is %s, want running", id, r.RunID, r.State)
				}
			}
		}
	})
}

// TestRealClockRestart stops a scheduler for two seconds and starts a new
// one: with Catchup(true) the missed runs are all created (no gap, no
// duplicate); with Catchup(false) exactly one run covers the downtime.
func TestRealClockRestart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		for _, catchup := range []bool{true, false} {
			t.Run(fmt.Sprintf("catchup=%v", catchup), func(t *testing.T) {
				startDate := time.Now().Add(-time.Hour).Truncate(time.Hour)
				if catchup {
					// The first start must not catch up the hour before it.
					startDate = time.Now().Truncate(time.Second)
				}
				reg := registry(shellDAG("d", "@every 1s", startDate, dag.Catchup(catchup), dag.MaxActiveRuns(100)))
				st := b.open(t, clock.Real{})
				c := newCreated()
				s := realScheduler(t, st, reg, c)
				c.wait(t, "a run", 30*time.Second, func() bool { return len(c.byDAG["d"]) >= 1 })
				s.Stop()
				before := listRuns(t, st, "d")
				lastEnd := before[len(before)-1].IntervalEnd

				<-time.After(2 * time.Second) // the downtime itself
				restartAt := time.Now()
				c2 := newCreated()
				s2 := realScheduler(t, st, reg, c2)
				c2.wait(t, "a run of an interval ending after the restart", 30*time.Second, func() bool {
					runs := c2.byDAG["d"]
					return len(runs) > 0 && runs[len(runs)-1].run.IntervalEnd.After(restartAt)
				})
				c2.mu.Lock()
				firstFire := slices.Clone(c2.byDAG["d"])
				c2.mu.Unlock()
				s2.Stop()

				runs := listRuns(t, st, "d")
				gaps := checkGrid(t, "d", runs, time.Second)
				var after []store.Run
				for _, r := range runs {
					if r.LogicalDate.Compare(lastEnd) >= 0 {
						after = append(after, r)
					}
				}
				missed := int(restartAt.Sub(lastEnd) / time.Second) // intervals that ended during the downtime
				if catchup {
					// Every interval from the first to the last has its run:
					// the missed ones included, none twice.
					if gaps != 0 {
						t.Errorf("catchup left %d gaps", gaps)
					}
					if len(after) < missed {
						t.Errorf("%d runs after the downtime, want at least the %d missed", len(after), missed)
					}
					return
				}
				if gaps != 1 {
					t.Errorf("%d gaps, want exactly one (the downtime)", gaps)
				}
				// The first run after the restart is the latest interval that
				// had ended when the new scheduler started.
				first := after[0]
				if first.IntervalEnd.After(firstFire[0].at) || restartAt.Sub(first.IntervalEnd) >= time.Second {
					t.Errorf("first run after the restart covers [%s, %s); the scheduler restarted at %s",
						first.IntervalStart, first.IntervalEnd, restartAt)
				}
				if firstFire[0].run.RunID != first.RunID {
					t.Errorf("the first run created after the restart is %s, want %s", firstFire[0].run.RunID, first.RunID)
				}
			})
		}
	})
}

// raceSeconds is how long TestTwoSchedulers runs: TRELLIS_SCHED_RACE_SECONDS
// or 15 s.
func raceSeconds(t testing.TB) time.Duration {
	if v := os.Getenv("TRELLIS_SCHED_RACE_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TRELLIS_SCHED_RACE_SECONDS=%q: want a positive number of seconds", v)
		}
		return time.Duration(n) * time.Second
	}
	return 15 * time.Second
}

// TestTwoSchedulers runs two schedulers against one PostgreSQL database on
// 50 fast schedules while a slow worker finishes every task: each interval
// gets exactly one run, each task is claimed once, and MaxActiveRuns holds
// at every moment although queued runs pile up and both schedulers race to
// start them (Airflow #45388).
func TestTwoSchedulers(t *testing.T) {
	ctx := context.Background()
	dur := raceSeconds(t)
	start := time.Now().Truncate(time.Second)
	var dags []*dag.DAG
	maxActive := map[string]int{}
	periods := map[string]time.Duration{}
	// Each task "runs" for taskHold, so a run takes over two seconds and
	// both kinds of DAG reach MaxActiveRuns: queued runs pile up and both
	// schedulers race to start them whenever a run finishes.
	const taskHold = 1200 * time.Millisecond
	for i := range 50 {
		expr, ma := "@every 1s", 2
		if i%2 == 1 {
			expr, ma = "*/2 * * * * *", 1
		}
		id := fmt.Sprintf("race%02d", i)
		maxActive[id] = ma
		periods[id] = time.Second
		if i%2 == 1 {
			periods[id] = 2 * time.Second
		}
		d := dag.New(id, dag.Schedule(expr), dag.StartDate(start), dag.Catchup(true), dag.MaxActiveRuns(ma))
		a := d.Shell("a", "true")
		d.Shell("b", "true").SetUpstream(a)
		dags = append(dags, d)
	}
	u := testdb.Postgres(t)
	stA := openPostgresURL(t, u, clock.Real{}, 8)
	stB := openPostgresURL(t, u, clock.Real{}, 8)
	stW := openPostgresURL(t, u, clock.Real{}, 4)

	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var wg sync.WaitGroup
	var mu sync.Mutex
	claims := map[int64]int{}
	violations := []string{}
	var maxSeen int
	reached := map[string]int{} // most runs of a DAG seen running at once

	// The worker: claims and finishes tasks as they are queued.
	sub, err := stW.Listen(workCtx, store.TopicTasksReady)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	w := store.Worker{ID: "race-worker", Hostname: "test", PID: os.Getpid(), Slots: 200}
	if err := stW.RegisterWorker(ctx, w); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			for {
				cl, err := stW.ClaimTasks(workCtx, w, 200, time.Now())
				if err != nil || len(cl) == 0 {
					break
				}
				mu.Lock()
				for _, c := range cl {
					claims[c.ID]++
				}
				mu.Unlock()
				wg.Add(1)
				time.AfterFunc(taskHold, func() {
					defer wg.Done()
					res := make([]store.Result, len(cl))
					for i, c := range cl {
						res[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: time.Now()}
					}
					if _, err := stW.FinishTasks(workCtx, res); err != nil && workCtx.Err() == nil {
						t.Errorf("finish: %v", err)
					}
				})
			}
			select {
			case <-workCtx.Done():
				return
			case <-sub.C():
			}
		}
	}()
	// The monitor: after every change, no DAG has more running runs than
	// its MaxActiveRuns.
	mon, err := stW.Listen(workCtx, store.TopicRunsChanged)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-workCtx.Done():
				return
			case <-mon.C():
			}
			running, _, err := stW.ListRuns(workCtx, store.RunQuery{States: []state.RunState{state.RunRunning}})
			if err != nil {
				continue
			}
			per := map[string]int{}
			for _, r := range running {
				per[r.DAGID]++
			}
			mu.Lock()
			for id, n := range per {
				maxSeen = max(maxSeen, n)
				reached[id] = max(reached[id], n)
				if n > maxActive[id] {
					violations = append(violations, fmt.Sprintf("%s had %d running runs (MaxActiveRuns %d)", id, n, maxActive[id]))
				}
			}
			mu.Unlock()
		}
	}()

	cA, cB := newCreated(), newCreated()
	sA := realScheduler(t, stA, registry(dags...), cA)
	sB := realScheduler(t, stB, registry(dags...), cB)
	<-time.After(dur) // the length of the race
	sA.Stop()
	sB.Stop()
	stopWork()
	wg.Wait()

	total, byA, byB := 0, 0, 0
	for _, d := range dags {
		id := d.ID()
		period := periods[id]
		runs := listRuns(t, stW, id)
		total += len(runs)
		byA += cA.count(id)
		byB += cB.count(id)
		if cA.count(id)+cB.count(id) != len(runs) {
			t.Errorf("%s: %d runs stored but %d+%d reported created: a run was created twice", id, len(runs), cA.count(id), cB.count(id))
		}
		if gaps := checkGrid(t, id, runs, period); gaps != 0 {
			t.Errorf("%s: %d gaps with catchup", id, gaps)
		}
		tt, _ := d.ParsedSchedule()
		if first, want := runs[0].LogicalDate, newGrid(tt, start).alignNext(start); !first.Equal(want) {
			t.Errorf("%s: first run at %s, want the first interval %s", id, first, want)
		}
		if want := int(dur / period); len(runs) < want-2 {
			t.Errorf("%s: %d runs in %s, want about %d", id, len(runs), dur, want)
		}
		tis, _, err := stW.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		if reached[id] != maxActive[id] {
			t.Errorf("%s: at most %d runs running at once, want its MaxActiveRuns %d (the test did not saturate it)", id, reached[id], maxActive[id])
		}
		if len(tis) != 2*len(runs) {
			t.Errorf("%s: %d task instances for %d runs", id, len(tis), len(runs))
		}
		for _, ti := range tis {
			if ti.TryNumber > 1 {
				t.Errorf("%s: task %s of %s ran %d times", id, ti.TaskID, ti.DAGRunID, ti.TryNumber)
			}
		}
	}
	for id, n := range claims {
		if n != 1 {
			t.Errorf("task instance %d was claimed %d times", id, n)
		}
	}
	for _, v := range violations {
		t.Error(v)
	}
	t.Logf("%s: %d runs of 50 DAGs, %d created by scheduler A and %d by B, %d task claims, at most %d runs of one DAG running at once",
		dur, total, byA, byB, len(claims), maxSeen)
	if maxSeen != 2 {
		t.Errorf("no DAG had 2 runs running at once; the MaxActiveRuns(2) DAGs were not saturated")
	}
	if byA+byB != total {
		t.Errorf("created %d+%d runs, stored %d", byA, byB, total)
	}
}
