package postgres

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestFinishSendsNoLoneSettings finishes a fan-out root → a, b, c → join
// through both finish paths (no claim: the pipelined one; a claim: the
// fused one) and checks that no finish sends hotOff or setsOn as a
// statement of its own (hotOff rides in the planner settings statement,
// and setsOn is left out when only the runs' settling follows), while
// the task sets still follow the states. It fails if either statement
// comes back, or if the set trigger is left off for a statement that
// needs it (an instance queued or claimed without its set row).
func TestFinishSendsNoLoneSettings(t *testing.T) {
	var lone, plans atomic.Int64
	tr := &stmtTracer{stmt: func(sql string) {
		switch sql {
		case hotOff.sql, setsOn.sql:
			lone.Add(1)
		case hotPlanGeneric + `, ` + hotOffCalls:
			plans.Add(1)
		}
	}}
	sp := store.DAGSpec{DAGID: "fan", Fingerprint: "fan-1", MaxActiveRuns: 1,
		Tasks: []store.TaskSpec{lightTask("root"), lightTask("a", "root"), lightTask("b", "root"), lightTask("c", "root"),
			lightTask("join", "a", "b", "c")}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := tracedRun(t, tr, sp, t0)
	ctx := context.Background()
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	claim := func(max int, want ...string) map[string]store.Claimed {
		t.Helper()
		cs, err := s.ClaimTasks(ctx, w, max, t0)
		if err != nil {
			t.Fatal(err)
		}
		return claimedIDs(t, cs, want)
	}
	finish := func(c store.Claimed, max int, want ...string) map[string]store.Claimed {
		t.Helper()
		lone0, plans0 := lone.Load(), plans.Load()
		r := store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0}
		out, next, err := s.FinishAndClaim(ctx, []store.Result{r}, w, max, t0)
		if err != nil || len(out) != 1 || !out[0].Applied || out[0].State != state.Success {
			t.Fatalf("FinishAndClaim(%s) = %+v, %v; want applied success", c.TaskID, out, err)
		}
		if n := lone.Load() - lone0; n != 0 {
			t.Errorf("finishing %s sent hotOff or setsOn alone %d times, want 0", c.TaskID, n)
		}
		if n := plans.Load() - plans0; n != 1 {
			t.Errorf("finishing %s sent the planner settings with hotOff's %d times, want 1", c.TaskID, n)
		}
		checkSetsFollow(t, s, c.TaskID)
		return claimedIDs(t, next, want)
	}
	root := claim(1, "root")["root"]
	finish(root, 0) // pipelined: a, b, c queued
	abc := claim(3, "a", "b", "c")
	finish(abc["a"], 0)
	finish(abc["b"], 2)                         // fused, nothing to claim yet
	join := finish(abc["c"], 2, "join")["join"] // fused: join queued and claimed
	finish(join, 0)
}

// claimedIDs checks that cs are the instances of the tasks want (any
// order) and returns them by task.
func claimedIDs(t *testing.T, cs []store.Claimed, want []string) map[string]store.Claimed {
	t.Helper()
	got := map[string]store.Claimed{}
	var ids []string
	for _, c := range cs {
		got[c.TaskID] = c
		ids = append(ids, c.TaskID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, want) && len(ids)+len(want) > 0 {
		t.Fatalf("claimed %v, want %v", ids, want)
	}
	return got
}

// checkSetsFollow fails t when task_queue or task_running differs from
// the states of task_instances.
func checkSetsFollow(t *testing.T, s *Store, after string) {
	t.Helper()
	var queue, running int
	if err := s.pool.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM task_instances t FULL JOIN task_queue q ON q.ti_id = t.id
			WHERE (t.state = 'queued') IS DISTINCT FROM (q.ti_id IS NOT NULL)),
		(SELECT count(*) FROM task_instances t FULL JOIN task_running r ON r.ti_id = t.id
			WHERE (t.state IN ('running', 'restarting')) IS DISTINCT FROM (r.ti_id IS NOT NULL))`).Scan(&queue, &running); err != nil {
		t.Fatal(err)
	}
	if queue != 0 || running != 0 {
		t.Errorf("after finishing %s: %d instances out of step with task_queue, %d with task_running", after, queue, running)
	}
}

// TestPipeSettingsPlacement checks where pipeTx puts the settings it
// folds or defers: hotOff's calls join the planner settings only while
// nothing else was queued, placed or sent; setsOn, once left off, goes
// ahead of the next statement queued, sent or placed before COMMIT, but
// not ahead of one that writes no task_instances row.
func TestPipeSettingsPlacement(t *testing.T) {
	fresh := func() *pipeTx {
		p := &pipeTx{}
		p.queue("BEGIN")
		p.queue(hotPlanGeneric)
		p.preamble = len(p.queued)
		return p
	}
	p := fresh()
	if !p.foldIntoPreamble(hotOffCalls) || p.queued[1].sql != hotPlanGeneric+`, `+hotOffCalls {
		t.Errorf("fold into a fresh preamble: %q", p.queued[1].sql)
	}
	p = fresh()
	p.queue("SELECT 1")
	if p.foldIntoPreamble(hotOffCalls) || p.queued[1].sql != hotPlanGeneric {
		t.Error("folded after a statement was queued")
	}
	p = fresh()
	p.beforeCommit("SELECT 1", nil, ignoreRows)
	if p.foldIntoPreamble(hotOffCalls) {
		t.Error("folded after a statement was placed before COMMIT")
	}
	p = fresh()
	p.begun = true
	if p.foldIntoPreamble(hotOffCalls) {
		t.Error("folded after the preamble was sent")
	}
	p = &pipeTx{}
	p.queue("BEGIN")
	p.queue("SELECT 1")
	p.preamble = 2
	if p.foldIntoPreamble(hotOffCalls) {
		t.Error("folded into a preamble that is not planner settings")
	}

	p = fresh()
	p.setsOffLeft = true
	p.beforeCommitNoTasks("SETTLE", nil, ignoreRows)
	if len(p.finals) != 1 || len(p.queued) != 2 {
		t.Errorf("setsOn placed ahead of a statement that writes no task: queued %v, finals %d", p.queued, len(p.finals))
	}
	p.queue("RELEASE")
	if n := len(p.queued); n != 4 || p.queued[2].sql != setsOn.sql || p.queued[3].sql != "RELEASE" {
		t.Errorf("queued %v, want setsOn ahead of RELEASE", p.queued)
	}
	p.queue("MORE")
	if n := len(p.queued); n != 5 {
		t.Errorf("setsOn placed twice: queued %v", p.queued)
	}
	p = fresh()
	p.setsOffLeft = true
	p.beforeCommit("CLAIM", nil, ignoreRows)
	if len(p.finals) != 2 || p.finals[0].sql != setsOn.sql || p.finals[1].sql != "CLAIM" {
		t.Errorf("finals %v, want setsOn ahead of CLAIM", p.finals)
	}
}
