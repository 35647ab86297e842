package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// testGrid checks Grid: runs newest first with paging and the total, the
// cells of the wanted tasks only with their states, tries and times, runs
// of other DAGs left out, and empty and past-the-end pages.
func testGrid(t *testing.T, e *env) {
	sp := newSpec("gd", tk("a"), tk("b", up("a")), tk("c", up("b")))
	other := newSpec("go", tk("a"))
	e.sync(sp, other)
	runs := make([]store.Run, 4)
	for i := range runs {
		runs[i] = e.newRun(sp, fmt.Sprintf("r%d", i), t0.Add(time.Duration(i)*24*time.Hour))
	}
	e.newRun(other, "o0", t0.Add(10*24*time.Hour))
	e.start("gd")
	// Every run has a queued. The first claimed is r0's (created first);
	// it fails without retries, so b and c become upstream_failed.
	c := e.claimOne("a")
	e.finish(result(c, state.Failed))

	g, err := e.s.Grid(e.ctx, store.GridQuery{DAGID: "gd", RunLimit: 2, RunOffset: 1, TaskIDs: []string{"a", "b"}})
	must(t, "Grid", err)
	if g.TotalRuns != 4 || !equalIDs(g.Runs, "r2", "r1") {
		t.Fatalf("Grid page = %v (total %d), want [r2 r1] of 4", runIDs(g.Runs), g.TotalRuns)
	}
	cells := map[string]store.GridCell{}
	for _, cl := range g.Cells {
		byID := map[int64]string{g.Runs[0].ID: g.Runs[0].RunID, g.Runs[1].ID: g.Runs[1].RunID}
		run, ok := byID[cl.RunID]
		if !ok {
			t.Fatalf("Grid cell of run #%d, not on the page", cl.RunID)
		}
		cells[run+"/"+cl.TaskID] = cl
	}
	if len(g.Cells) != 4 || len(cells) != 4 {
		t.Fatalf("Grid cells = %+v, want a and b of r1 and r2", g.Cells)
	}
	if _, ok := cells["r1/c"]; ok {
		t.Errorf("Grid returned task c, not asked for")
	}
	for _, k := range []string{"r1/a", "r2/a"} {
		if cl := cells[k]; cl.State != state.Queued || cl.TryNumber != 0 {
			t.Errorf("Grid %s = %+v, want queued try 0", k, cl)
		}
	}

	// The oldest run, where a failed: states, tries and times as stored.
	g, err = e.s.Grid(e.ctx, store.GridQuery{DAGID: "gd", RunLimit: 1, RunOffset: 3, TaskIDs: []string{"a", "b", "c", "nope"}})
	must(t, "Grid oldest", err)
	if !equalIDs(g.Runs, "r0") || len(g.Cells) != 3 {
		t.Fatalf("Grid oldest = %v with %+v, want r0 with 3 cells", runIDs(g.Runs), g.Cells)
	}
	ti := e.ti("gd", "r0", "a")
	for _, cl := range g.Cells {
		want := map[string]state.TaskState{"a": state.Failed, "b": state.UpstreamFailed, "c": state.UpstreamFailed}[cl.TaskID]
		if cl.State != want {
			t.Errorf("Grid r0/%s: state %q, want %q", cl.TaskID, cl.State, want)
		}
		if cl.TaskID == "a" {
			if cl.TryNumber != 1 || !sameTime(cl.StartedAt, ti.StartedAt) || !sameTime(cl.EndedAt, ti.EndedAt) || cl.EndedAt == nil {
				t.Errorf("Grid r0/a = %+v, want try 1 started %v ended %v", cl, ti.StartedAt, ti.EndedAt)
			}
		}
	}

	// Every task: the cells of every instance.
	g, err = e.s.Grid(e.ctx, store.GridQuery{DAGID: "gd", RunLimit: 2, AllTasks: true, TaskIDs: []string{"a"}})
	must(t, "Grid of every task", err)
	if len(g.Runs) != 2 || len(g.Cells) != 6 {
		t.Errorf("Grid of every task = %d runs, %d cells; want 2 runs, 6 cells", len(g.Runs), len(g.Cells))
	}

	// No tasks asked: runs without cells. Past the end: the total only.
	g, err = e.s.Grid(e.ctx, store.GridQuery{DAGID: "gd", RunLimit: 10})
	must(t, "Grid without tasks", err)
	if len(g.Runs) != 4 || len(g.Cells) != 0 || g.TotalRuns != 4 {
		t.Errorf("Grid without tasks = %d runs, %d cells, total %d; want 4, 0, 4", len(g.Runs), len(g.Cells), g.TotalRuns)
	}
	g, err = e.s.Grid(e.ctx, store.GridQuery{DAGID: "gd", RunLimit: 10, RunOffset: 10, TaskIDs: []string{"a"}})
	must(t, "Grid past the end", err)
	if len(g.Runs) != 0 || len(g.Cells) != 0 || g.TotalRuns != 4 {
		t.Errorf("Grid past the end = %d runs, %d cells, total %d; want 0, 0, 4", len(g.Runs), len(g.Cells), g.TotalRuns)
	}
	g, err = e.s.Grid(e.ctx, store.GridQuery{DAGID: "missing", RunLimit: 10, TaskIDs: []string{"a"}})
	if err != nil || len(g.Runs) != 0 || g.TotalRuns != 0 {
		t.Errorf("Grid of an unknown DAG = %v, %d, %v; want no runs", runIDs(g.Runs), g.TotalRuns, err)
	}
	if _, err := e.s.Grid(e.ctx, store.GridQuery{DAGID: "gd", RunLimit: -1}); err == nil {
		t.Errorf("Grid accepted a negative limit")
	}
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

// testGridCalls: a callable's call instances in a run are one cell with
// their count, how many are in each state and the summary state, next to
// the static tasks' cells; a callable not called has no cell; asking for
// some tasks leaves the calls of the others out.
func testGridCalls(t *testing.T, e *env) {
	e.started(callsSpec("gc"), "run")
	a := e.claimOne("a")
	st := e.call(a, 100, nc("f", "1"), nc("f", "2"), nc("f", "3"), nc("f", "4"), nc("g", "1"))
	e.finish(deferred(a, store.Deferral{Calls: true}))
	// Two calls claimed: the first succeeds, the second stays running.
	cs := e.claim(2)
	if len(cs) != 2 {
		t.Fatalf("claimed %d calls, want 2", len(cs))
	}
	e.finish(result(cs[0], state.Success))
	want := map[string]map[state.TaskState]int{"f": {state.Queued: 4}, "g": {state.Queued: 1}}
	task := map[int64]string{st[4].ID: "g"}
	for _, c := range st[:4] {
		task[c.ID] = "f"
	}
	for i, c := range cs {
		k := task[c.ID]
		want[k][state.Queued]--
		want[k][map[bool]state.TaskState{true: state.Success, false: state.Running}[i == 0]]++
	}

	g, err := e.s.Grid(e.ctx, store.GridQuery{DAGID: "gc", RunLimit: 10, AllTasks: true})
	must(t, "Grid", err)
	cells := map[string]store.GridCell{}
	for _, c := range g.Cells {
		if _, dup := cells[c.TaskID]; dup {
			t.Fatalf("Grid: two cells of %s in one run: %+v", c.TaskID, g.Cells)
		}
		cells[c.TaskID] = c
	}
	if len(cells) != 3 || cells["a"].State != state.Deferred || cells["a"].Calls != 0 {
		t.Fatalf("Grid cells %+v, want a (deferred, no calls), f and g", g.Cells)
	}
	if _, ok := cells["r"]; ok {
		t.Errorf("Grid has a cell of r, never called")
	}
	for k, n := range map[string]int{"f": 4, "g": 1} {
		c := cells[k]
		got := map[state.TaskState]int{}
		for s, m := range c.CallStates {
			if m != 0 {
				got[s] = m
			}
		}
		for s, m := range want[k] {
			if m == 0 {
				delete(want[k], s)
			}
		}
		if c.Calls != n || fmt.Sprint(got) != fmt.Sprint(want[k]) || c.State != state.Summary(want[k]) {
			t.Errorf("Grid cell of %s = %d calls %v state %s; want %d calls %v state %s",
				k, c.Calls, c.CallStates, c.State, n, want[k], state.Summary(want[k]))
		}
		if c.TryNumber != map[bool]int{true: 1, false: 0}[want[k][state.Running]+want[k][state.Success] > 0] {
			t.Errorf("Grid cell of %s: try %d", k, c.TryNumber)
		}
	}
	if cells["f"].State != state.Running && cells["g"].State != state.Running {
		t.Errorf("Grid: neither f (%s) nor g (%s) shows the running call", cells["f"].State, cells["g"].State)
	}

	g, err = e.s.Grid(e.ctx, store.GridQuery{DAGID: "gc", RunLimit: 10, TaskIDs: []string{"f", "r"}})
	must(t, "Grid of f", err)
	if len(g.Cells) != 1 || g.Cells[0].TaskID != "f" || g.Cells[0].Calls != 4 {
		t.Errorf("Grid of f and r = %+v, want one cell of f with 4 calls", g.Cells)
	}
}
