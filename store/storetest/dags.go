package storetest

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func testMigrate(t *testing.T, e *env) {
	// Already migrated by open: migrating again, even from several
	// goroutines at once, changes nothing and fails nothing.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = e.s.Migrate(e.ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate #%d: %v", i, err)
		}
	}
	must(t, "Ping", e.s.Ping(e.ctx))
	if b := e.s.Backend(); b != "postgres" && b != "sqlite" {
		t.Errorf("Backend() = %q", b)
	}
	sp := newSpec("m", tk("a"))
	e.sync(sp)
	if _, err := e.s.GetDAG(e.ctx, "m"); err != nil {
		t.Errorf("GetDAG after repeated migrations: %v", err)
	}
}

func testSyncDAGs(t *testing.T, e *env) {
	a := newSpec("alpha", tk("x", retries(2, time.Second, 0), prio(3)), tk("y", up("x"), rule(dag.AllDone)))
	b := newSpec("beta", tk("only"))
	b.MaxActiveRuns, b.MaxActiveTasks, b.Schedule, b.Tags = 2, 5, "0 * * * *", []string{"t1", "t2"}
	b = fingerprint(b)
	e.sync(a, b)

	d, err := e.s.GetDAG(e.ctx, "beta")
	must(t, "GetDAG", err)
	if d.Fingerprint != b.Fingerprint || d.Schedule != "0 * * * *" || d.Description != "dag beta" ||
		!slices.Equal(d.Tags, []string{"t1", "t2"}) || d.MaxActiveRuns != 2 || d.MaxActiveTasks != 5 ||
		d.Paused || !d.Active || d.LastIntervalEnd != nil || d.NextDueAt != nil {
		t.Errorf("GetDAG(beta) = %+v", d)
	}
	_, err = e.s.GetDAG(e.ctx, "gamma")
	wantErr(t, "GetDAG(gamma)", err, store.ErrNotFound)

	ds, total, err := e.s.ListDAGs(e.ctx, false, 0, 0)
	must(t, "ListDAGs", err)
	if total != 2 || len(ds) != 2 || ds[0].DAGID != "alpha" || ds[1].DAGID != "beta" {
		t.Errorf("ListDAGs = %v (total %d)", ds, total)
	}
	ds, total, err = e.s.ListDAGs(e.ctx, false, 1, 1)
	must(t, "ListDAGs page", err)
	if total != 2 || len(ds) != 1 || ds[0].DAGID != "beta" {
		t.Errorf("ListDAGs(limit 1, offset 1) = %v (total %d)", ds, total)
	}

	// A run of the first structure keeps its structure after a change.
	r1 := e.newRun(a, "r1", t0)

	// alpha changes (new task), beta disappears: alpha gets the new
	// fingerprint, beta becomes inactive but stays readable.
	a2 := newSpec("alpha", tk("x"), tk("y", up("x")), tk("z", up("y")))
	e.sync(a2)
	d, err = e.s.GetDAG(e.ctx, "alpha")
	must(t, "GetDAG alpha", err)
	if d.Fingerprint != a2.Fingerprint || !d.Active {
		t.Errorf("alpha after change: %+v", d)
	}
	d, err = e.s.GetDAG(e.ctx, "beta")
	must(t, "GetDAG beta", err)
	if d.Active {
		t.Errorf("beta still active after it left the binary")
	}
	ds, total, err = e.s.ListDAGs(e.ctx, true, 0, 0)
	must(t, "ListDAGs active", err)
	if total != 1 || len(ds) != 1 || ds[0].DAGID != "alpha" {
		t.Errorf("ListDAGs(onlyActive) = %v (total %d)", ds, total)
	}
	r2 := e.newRun(a2, "r2", t0.Add(24*time.Hour))
	if got := len(e.states("alpha", "r1")); got != 2 {
		t.Errorf("run of the old structure has %d instances, want 2", got)
	}
	if got := e.states("alpha", "r2"); len(got) != 3 || got["z"] != state.None {
		t.Errorf("run of the new structure: %v", got)
	}
	x := e.ti("alpha", "r1", "x")
	if x.MaxTries != 3 || x.Priority != 3 || x.TryNumber != 0 || x.State != state.None || x.RunID != r1.ID {
		t.Errorf("instance x of r1 = %+v", x)
	}
	if y := e.ti("alpha", "r1", "y"); y.TriggerRule != dag.AllDone {
		t.Errorf("instance y of r1 rule %q, want all_done", y.TriggerRule)
	}
	if r2.Fingerprint != a2.Fingerprint || r1.Fingerprint != a.Fingerprint {
		t.Errorf("run fingerprints %s, %s", r1.Fingerprint, r2.Fingerprint)
	}
	// beta comes back: active again; syncing the same specs twice is a no-op.
	e.sync(a2, b)
	e.sync(a2, b)
	d, err = e.s.GetDAG(e.ctx, "beta")
	must(t, "GetDAG beta", err)
	if !d.Active {
		t.Errorf("beta not active after it came back")
	}
}

func testSyncDAGsBad(t *testing.T, e *env) {
	bad := []store.DAGSpec{
		newSpec("u", tk("a", up("missing"))),
		newSpec("d", tk("a"), tk("a")),
		newSpec("r", tk("a", rule("sometimes"))),
		{DAGID: "f", Tasks: []store.TaskSpec{tk("a")}}, // no fingerprint
	}
	for _, sp := range bad {
		if err := e.s.SyncDAGs(e.ctx, []store.DAGSpec{sp}); err == nil {
			t.Errorf("SyncDAGs accepted bad spec %s", sp.DAGID)
		}
	}
	_, total, err := e.s.ListDAGs(e.ctx, false, 0, 0)
	must(t, "ListDAGs", err)
	if total != 0 {
		t.Errorf("%d DAGs stored after rejected syncs", total)
	}
}

func testPauseAndSchedule(t *testing.T, e *env) {
	e.sync(newSpec("p", tk("a")))
	must(t, "SetPaused", e.s.SetPaused(e.ctx, "p", true))
	d, _ := e.s.GetDAG(e.ctx, "p")
	if !d.Paused {
		t.Errorf("not paused")
	}
	// Syncing does not unpause.
	e.sync(newSpec("p", tk("a")))
	d, _ = e.s.GetDAG(e.ctx, "p")
	if !d.Paused {
		t.Errorf("SyncDAGs unpaused the DAG")
	}
	must(t, "SetPaused false", e.s.SetPaused(e.ctx, "p", false))
	d, _ = e.s.GetDAG(e.ctx, "p")
	if d.Paused {
		t.Errorf("still paused")
	}
	wantErr(t, "SetPaused(unknown)", e.s.SetPaused(e.ctx, "nope", true), store.ErrNotFound)

	end1 := t0.Add(time.Hour)
	due := t0.Add(2 * time.Hour)
	must(t, "advance from nil", e.advance("p", nil, end1, &due))
	d, _ = e.s.GetDAG(e.ctx, "p")
	if d.LastIntervalEnd == nil || !d.LastIntervalEnd.Equal(end1) || d.NextDueAt == nil || !d.NextDueAt.Equal(due) {
		t.Errorf("after advance: last %v next %v", d.LastIntervalEnd, d.NextDueAt)
	}
	// A second scheduler still believing prev = nil loses.
	wantErr(t, "advance stale", e.advance("p", nil, end1, &due), store.ErrStale)
	wrong := end1.Add(time.Second)
	wantErr(t, "advance wrong prev", e.advance("p", &wrong, due, nil), store.ErrStale)
	must(t, "advance from end1", e.advance("p", d.LastIntervalEnd, due, nil))
	d, _ = e.s.GetDAG(e.ctx, "p")
	if !d.LastIntervalEnd.Equal(due) || d.NextDueAt != nil {
		t.Errorf("after second advance: last %v next %v", d.LastIntervalEnd, d.NextDueAt)
	}
	wantErr(t, "advance unknown", e.advance("nope", nil, due, nil), store.ErrNotFound)
}

func testCreateRun(t *testing.T, e *env) {
	sp := newSpec("c", tk("a", retries(1, time.Second, 0)), tk("b", up("a"), prio(7)))
	e.sync(sp)
	conf := json.RawMessage(`{"k": [1, 2, "three"]}`)
	nr := store.NewRun{DAGID: "c", RunID: "manual__1", RunType: store.RunManual, LogicalDate: t0,
		IntervalStart: t0.Add(-time.Hour), IntervalEnd: t0, Conf: conf, Fingerprint: sp.Fingerprint,
		Note: "a note", QueuedAt: t0.Add(time.Second)}
	r, created, err := e.s.CreateRun(e.ctx, nr)
	must(t, "CreateRun", err)
	if !created || r.ID == 0 || r.DAGID != "c" || r.RunID != "manual__1" || r.RunType != store.RunManual ||
		!r.LogicalDate.Equal(t0) || !r.IntervalStart.Equal(t0.Add(-time.Hour)) || !r.IntervalEnd.Equal(t0) ||
		r.State != state.RunQueued || r.Fingerprint != sp.Fingerprint || r.Note != "a note" ||
		!r.QueuedAt.Equal(t0.Add(time.Second)) || r.StartedAt != nil || r.EndedAt != nil {
		t.Errorf("CreateRun = %+v, created %v", r, created)
	}
	jsonEqual(t, "conf", r.Conf, conf)
	if got := e.run("c", "manual__1"); got.ID != r.ID {
		t.Errorf("GetRun id %d, want %d", got.ID, r.ID)
	}
	e.wantStates("c", "manual__1", map[string]state.TaskState{"a": state.None, "b": state.None})

	// Same (dag, logical date) again, whatever the run id: the same run.
	for _, id := range []string{"manual__1", "other"} {
		again := nr
		again.RunID = id
		r2, created, err := e.s.CreateRun(e.ctx, again)
		must(t, "CreateRun again", err)
		if created || r2.ID != r.ID {
			t.Errorf("CreateRun again (%s): created %v id %d, want existing %d", id, created, r2.ID, r.ID)
		}
	}
	if n := len(e.states("c", "manual__1")); n != 2 {
		t.Errorf("%d instances after repeated creation, want 2", n)
	}
	// The run id with another logical date conflicts.
	clash := nr
	clash.LogicalDate = t0.Add(time.Hour)
	_, _, err = e.s.CreateRun(e.ctx, clash)
	wantErr(t, "CreateRun taken run id", err, store.ErrConflict)

	// Unknown structure, bad conf, nil conf.
	unknown := nr
	unknown.RunID, unknown.LogicalDate, unknown.Fingerprint = "u", t0.Add(48*time.Hour), "deadbeef"
	_, _, err = e.s.CreateRun(e.ctx, unknown)
	wantErr(t, "CreateRun unknown fingerprint", err, store.ErrNotFound)
	badConf := nr
	badConf.RunID, badConf.LogicalDate, badConf.Conf = "bad", t0.Add(72*time.Hour), json.RawMessage(`{"a":`)
	if _, _, err := e.s.CreateRun(e.ctx, badConf); err == nil {
		t.Errorf("CreateRun accepted invalid conf JSON")
	}
	noConf := nr
	noConf.RunID, noConf.LogicalDate, noConf.Conf = "noconf", t0.Add(96*time.Hour), nil
	r3, _, err := e.s.CreateRun(e.ctx, noConf)
	must(t, "CreateRun nil conf", err)
	jsonEqual(t, "nil conf", r3.Conf, json.RawMessage(`{}`))
	_, err = e.s.GetRun(e.ctx, "c", "nope")
	wantErr(t, "GetRun unknown", err, store.ErrNotFound)
}

func testCreateRunConcurrent(t *testing.T, e *env) {
	var tasks []store.TaskSpec
	for _, id := range names(200, "t") {
		tasks = append(tasks, tk(id))
	}
	sp := newSpec("cc", tasks...)
	e.sync(sp)
	const n = 8
	runs := make([]store.Run, n)
	created := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			runs[i], created[i], errs[i] = e.s.CreateRun(e.ctx, store.NewRun{DAGID: "cc", RunID: fmt.Sprintf("r%d", i),
				RunType: store.RunScheduled, LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0.Add(time.Hour),
				Fingerprint: sp.Fingerprint, QueuedAt: t0})
		})
	}
	wg.Wait()
	nCreated := 0
	for i := range n {
		must(t, "CreateRun", errs[i])
		if created[i] {
			nCreated++
		}
		if runs[i].ID != runs[0].ID {
			t.Errorf("goroutine %d got run %d, goroutine 0 run %d", i, runs[i].ID, runs[0].ID)
		}
	}
	if nCreated != 1 {
		t.Errorf("%d goroutines created the run, want 1", nCreated)
	}
	tis, total, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"cc"}})
	must(t, "ListTaskInstances", err)
	if total != 200 || len(tis) != 200 {
		t.Errorf("%d instances (total %d), want 200", len(tis), total)
	}
}

func testCreateRunEmpty(t *testing.T, e *env) {
	sp := newSpec("empty")
	e.sync(sp)
	e.newRun(sp, "r", t0)
	started := e.start("empty")
	if len(started) != 1 {
		t.Fatalf("started %d runs", len(started))
	}
	e.wantRunState("empty", "r", state.RunSuccess)
}

func testStartRuns(t *testing.T, e *env) {
	sp := newSpec("s", tk("root1"), tk("root2"), tk("mid", up("root1", "root2")), tk("always", up("mid"), rule(dag.Always)))
	sp.MaxActiveRuns = 2
	sp = fingerprint(sp)
	e.sync(sp)
	// Created out of order; started oldest logical date first.
	e.newRun(sp, "d3", t0.Add(72*time.Hour))
	e.newRun(sp, "d1", t0.Add(24*time.Hour))
	e.newRun(sp, "d2", t0.Add(48*time.Hour))
	started := e.start("s")
	if len(started) != 2 || started[0].RunID != "d1" && started[1].RunID != "d1" {
		t.Fatalf("StartRuns started %v, want d1 and d2", runIDs(started))
	}
	for _, r := range started {
		if r.State != state.RunRunning || r.StartedAt == nil || !r.StartedAt.Equal(t0.Add(time.Minute)) {
			t.Errorf("started run %+v", r)
		}
	}
	// Roots and "always" tasks are queued at once; the rest wait.
	e.wantStates("s", "d1", map[string]state.TaskState{"root1": state.Queued, "root2": state.Queued,
		"mid": state.None, "always": state.Queued})
	e.wantStates("s", "d3", map[string]state.TaskState{"root1": state.None, "always": state.None})
	e.wantRunState("s", "d3", state.RunQueued)
	if again := e.start("s"); len(again) != 0 {
		t.Errorf("StartRuns at the limit started %v", runIDs(again))
	}
	// Finishing d1 frees a slot for d3.
	e.drive(10, func(c store.Claimed) store.Result {
		if c.DAGRunID != "d1" {
			return store.Result{Try: att(c), State: state.Failed, Permanent: true, EndedAt: t0.Add(3 * time.Minute)}
		}
		return succeed(c)
	})
	e.wantRunState("s", "d1", state.RunSuccess)
	e.wantRunState("s", "d2", state.RunFailed)
	started = e.start("s")
	if len(started) != 1 || started[0].RunID != "d3" {
		t.Errorf("StartRuns after d1 ended started %v, want d3", runIDs(started))
	}
	_, err := e.s.StartRuns(e.ctx, "nope", t0)
	wantErr(t, "StartRuns unknown dag", err, store.ErrNotFound)
}

func testStartRunsConcurrent(t *testing.T, e *env) {
	sp := newSpec("sc", tk("a"))
	sp.MaxActiveRuns = 3
	sp = fingerprint(sp)
	e.sync(sp)
	for i := range 10 {
		e.newRun(sp, fmt.Sprintf("r%02d", i), t0.Add(time.Duration(i)*time.Hour))
	}
	var mu sync.Mutex
	var all []store.Run
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			runs, err := e.s.StartRuns(e.ctx, "sc", t0)
			if err != nil {
				t.Errorf("StartRuns: %v", err)
			}
			mu.Lock()
			all = append(all, runs...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(all) != 3 {
		t.Fatalf("concurrent StartRuns started %d runs in all, want 3: %v", len(all), runIDs(all))
	}
	got := runIDs(all)
	slices.Sort(got)
	if !slices.Equal(got, []string{"r00", "r01", "r02"}) {
		t.Errorf("started %v, want the three oldest", got)
	}
	if n := len(e.claim(100)); n != 3 {
		t.Errorf("%d tasks queued, want 3 (one per started run)", n)
	}
}

func runIDs(rs []store.Run) []string {
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.RunID
	}
	return ids
}

func jsonEqual(t *testing.T, what string, got, want json.RawMessage) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Errorf("%s: stored JSON %q does not parse: %v", what, truncate(got), err)
		return
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: test JSON does not parse: %v", what, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("%s: got %s, want %s", what, truncate(gb), truncate(wb))
	}
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + fmt.Sprintf("…(%d bytes)", len(b))
	}
	return string(b)
}

// advance moves a DAG's schedule from prev to last with next due, as a
// FireRuns of no runs does: the compare-and-set of the schedule alone.
func (e *env) advance(dagID string, prev *time.Time, last time.Time, next *time.Time) error {
	res, err := e.s.FireRuns(e.ctx, []store.Fire{{DAGID: dagID, Prev: prev, Last: last, NextDue: next}}, last)
	if err != nil {
		return err
	}
	return res[0].Err
}
