package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// hourly builds the fire of n hourly scheduled runs of sp after prev
// (nil: from t0).
func hourly(sp store.DAGSpec, prev *time.Time, n int) store.Fire {
	start := t0
	if prev != nil {
		start = *prev
	}
	f := store.Fire{DAGID: sp.DAGID, Prev: prev}
	for i := range n {
		ld := start.Add(time.Duration(i) * time.Hour)
		f.Runs = append(f.Runs, store.NewRun{DAGID: sp.DAGID, RunID: "scheduled__" + ld.Format(time.RFC3339),
			RunType: store.RunScheduled, LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld.Add(time.Hour),
			Fingerprint: sp.Fingerprint, QueuedAt: ld})
	}
	f.Last = start.Add(time.Duration(n) * time.Hour)
	next := f.Last.Add(time.Hour)
	f.NextDue = &next
	return f
}

func (e *env) fire(fires ...store.Fire) []store.FireResult {
	e.t.Helper()
	res, err := e.s.FireRuns(e.ctx, fires, t0.Add(time.Minute))
	if err != nil {
		e.t.Fatalf("FireRuns: %v", err)
	}
	if len(res) != len(fires) {
		e.t.Fatalf("FireRuns returned %d results for %d fires", len(res), len(fires))
	}
	for i, r := range res {
		if r.DAGID != fires[i].DAGID {
			e.t.Fatalf("result %d is for DAG %q, want %q (results in the order of fires)", i, r.DAGID, fires[i].DAGID)
		}
	}
	return res
}

// testFireRuns: runs of several DAGs are created and admitted by
// MaxActiveRuns, schedules advance, and firing again is idempotent.
func testFireRuns(t *testing.T, e *env) {
	a := newSpec("fa", tk("x"), tk("y", up("x")))
	a.MaxActiveRuns = 2
	a = fingerprint(a)
	b := newSpec("fb", tk("x"))
	b.MaxActiveRuns = 0
	b = fingerprint(b)
	e.sync(a, b)
	fa, fb := hourly(a, nil, 3), hourly(b, nil, 3)
	res := e.fire(fb, fa) // not in id order: the store orders its locks
	ra, rb := res[1], res[0]
	for _, r := range res {
		if r.Err != nil || r.Paused {
			t.Fatalf("fire %s: err %v, paused %v", r.DAGID, r.Err, r.Paused)
		}
		if len(r.Created) != 3 {
			t.Errorf("fire %s created %v, want 3 runs", r.DAGID, runIDs(r.Created))
		}
		if r.LastIntervalEnd == nil || !r.LastIntervalEnd.Equal(t0.Add(3*time.Hour)) {
			t.Errorf("fire %s: LastIntervalEnd %v, want %v", r.DAGID, r.LastIntervalEnd, t0.Add(3*time.Hour))
		}
	}
	if got := runIDs(ra.Started); !slices.Equal(got, runIDs(ra.Created[:2])) {
		t.Errorf("fa started %v, want the two oldest of %v (MaxActiveRuns 2)", got, runIDs(ra.Created))
	}
	if len(rb.Started) != 3 {
		t.Errorf("fb started %v, want all 3 (no limit)", runIDs(rb.Started))
	}
	for _, r := range ra.Started {
		if r.State != state.RunRunning || r.StartedAt == nil {
			t.Errorf("started run %s: state %s, started %v", r.RunID, r.State, r.StartedAt)
		}
	}
	e.wantRunState("fa", ra.Created[2].RunID, state.RunQueued)
	e.wantStates("fa", ra.Created[0].RunID, map[string]state.TaskState{"x": state.Queued, "y": state.None})
	d, err := e.s.GetDAG(e.ctx, "fa")
	if err != nil {
		t.Fatalf("GetDAG: %v", err)
	}
	if d.LastIntervalEnd == nil || !d.LastIntervalEnd.Equal(fa.Last) || d.NextDueAt == nil || !d.NextDueAt.Equal(*fa.NextDue) {
		t.Errorf("fa schedule = last %v next %v, want %v %v", d.LastIntervalEnd, d.NextDueAt, fa.Last, *fa.NextDue)
	}
	if n := len(e.claim(100)); n != 5 {
		t.Errorf("%d root tasks queued, want 5 (2 runs of fa, 3 of fb)", n)
	}

	// Again with the same runs (a scheduler retrying after a lost
	// answer): nothing new, and no run beyond the limit.
	again := fa
	prev := fa.Last
	again.Prev, again.Last = &prev, prev.Add(time.Hour)
	res = e.fire(again)
	if r := res[0]; r.Err != nil || len(r.Created) != 0 || len(r.Started) != 0 {
		t.Errorf("repeat fire: err %v, created %v, started %v; want nothing new", r.Err, runIDs(r.Created), runIDs(r.Started))
	}
	if runs, total, err := e.s.ListRuns(e.ctx, store.RunQuery{DAGIDs: []string{"fa"}}); err != nil || total != 3 {
		t.Errorf("fa has %d runs (%v, %v), want 3", total, runIDs(runs), err)
	}
	if res, err := e.s.FireRuns(e.ctx, nil, t0); err != nil || len(res) != 0 {
		t.Errorf("FireRuns(nil) = %v, %v; want no results", res, err)
	}
	if _, err := e.s.FireRuns(e.ctx, []store.Fire{hourly(a, nil, 1), hourly(a, nil, 1)}, t0); err == nil {
		t.Errorf("FireRuns accepted the same DAG twice")
	}
}

// testFireRunsRejects: a stale schedule, a paused DAG, an unknown DAG and
// a taken run id each fail alone; the other fires of the call go on.
func testFireRunsRejects(t *testing.T, e *env) {
	ok := newSpec("fok", tk("x"))
	stale := newSpec("fstale", tk("x"))
	paused := newSpec("fpaused", tk("x"))
	taken := newSpec("ftaken", tk("x"))
	e.sync(ok, stale, paused, taken)
	if err := e.s.SetPaused(e.ctx, "fpaused", true); err != nil {
		t.Fatalf("SetPaused: %v", err)
	}
	moved := t0.Add(time.Hour)
	if err := e.advance("fstale", nil, moved, nil); err != nil {
		t.Fatalf("advance: %v", err)
	}
	// The run id of ftaken's first interval is taken by another date.
	fTaken := hourly(taken, nil, 2)
	if _, _, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: "ftaken", RunID: fTaken.Runs[1].RunID,
		RunType: store.RunManual, LogicalDate: t0.Add(-time.Hour), IntervalStart: t0.Add(-time.Hour),
		IntervalEnd: t0, Fingerprint: taken.Fingerprint}); err != nil {
		t.Fatalf("CreateRun: %v", err)
	}
	ghost := hourly(newSpec("fghost", tk("x")), nil, 1)
	res := e.fire(hourly(stale, nil, 1), hourly(paused, nil, 1), ghost, fTaken, hourly(ok, nil, 2))
	if r := res[0]; !errors.Is(r.Err, store.ErrStale) || r.LastIntervalEnd == nil || !r.LastIntervalEnd.Equal(moved) ||
		len(r.Created) != 0 {
		t.Errorf("stale fire: err %v, last %v, created %d; want ErrStale with last %v", r.Err, r.LastIntervalEnd, len(r.Created), moved)
	}
	if r := res[1]; !r.Paused || r.Err != nil || len(r.Created) != 0 {
		t.Errorf("paused fire: paused %v, err %v, created %d; want paused and nothing created", r.Paused, r.Err, len(r.Created))
	}
	if r := res[2]; !errors.Is(r.Err, store.ErrNotFound) {
		t.Errorf("fire of an unknown DAG: err %v, want ErrNotFound", r.Err)
	}
	if r := res[3]; !errors.Is(r.Err, store.ErrConflict) || len(r.Created) != 0 {
		t.Errorf("fire with a taken run id: err %v, created %d; want ErrConflict", r.Err, len(r.Created))
	}
	if r := res[4]; r.Err != nil || len(r.Created) != 2 || len(r.Started) != 2 {
		t.Errorf("good fire: err %v, created %d, started %d; want 2 and 2", r.Err, len(r.Created), len(r.Started))
	}
	for id, want := range map[string]int{"fstale": 0, "fpaused": 0, "ftaken": 1, "fok": 2} {
		if _, total, err := e.s.ListRuns(e.ctx, store.RunQuery{DAGIDs: []string{id}}); err != nil || total != want {
			t.Errorf("%s has %d runs (%v), want %d", id, total, err, want)
		}
	}
	for id, want := range map[string]*time.Time{"fstale": &moved, "fpaused": nil, "ftaken": nil} {
		d, err := e.s.GetDAG(e.ctx, id)
		if err != nil {
			t.Fatalf("GetDAG(%s): %v", id, err)
		}
		if (d.LastIntervalEnd == nil) != (want == nil) || (want != nil && !d.LastIntervalEnd.Equal(*want)) {
			t.Errorf("%s last interval end %v, want %v (a failed fire moves nothing)", id, d.LastIntervalEnd, want)
		}
	}
}

// testFireRunsConcurrent: callers racing on the same DAGs (listed in
// different orders) create each run once, win each schedule once and
// never exceed MaxActiveRuns.
func testFireRunsConcurrent(t *testing.T, e *env) {
	var specs []store.DAGSpec
	for i := range 4 {
		sp := newSpec(fmt.Sprintf("fc%d", i), tk("x"))
		sp.MaxActiveRuns = 2
		specs = append(specs, fingerprint(sp))
	}
	e.sync(specs...)
	var mu sync.Mutex
	created, started, won := map[string]int{}, map[string]int{}, map[string]int{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			fires := make([]store.Fire, len(specs))
			for i, sp := range specs {
				fires[i] = hourly(sp, nil, 5)
			}
			if g%2 == 1 {
				slices.Reverse(fires)
			}
			res, err := e.s.FireRuns(e.ctx, fires, t0.Add(time.Minute))
			if err != nil {
				t.Errorf("FireRuns: %v", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range res {
				switch {
				case r.Err == nil:
					won[r.DAGID]++
				case !errors.Is(r.Err, store.ErrStale):
					t.Errorf("fire %s: %v (want success or ErrStale)", r.DAGID, r.Err)
				}
				created[r.DAGID] += len(r.Created)
				started[r.DAGID] += len(r.Started)
			}
		})
	}
	wg.Wait()
	for _, sp := range specs {
		id := sp.DAGID
		if won[id] != 1 || created[id] != 5 || started[id] != 2 {
			t.Errorf("%s: won %d, created %d, started %d; want 1, 5, 2", id, won[id], created[id], started[id])
		}
		running, _, err := e.s.ListRuns(e.ctx, store.RunQuery{DAGIDs: []string{id}, States: []state.RunState{state.RunRunning}})
		if err != nil || len(running) != 2 {
			t.Errorf("%s: %d running runs (%v), want 2", id, len(running), err)
		}
	}
}
