package storetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func testSetRunState(t *testing.T, e *env) {
	sp := newSpec("sr", tk("a"), tk("b"), tk("c", up("a")), tk("d", up("c")))
	e.started(sp, "run")
	a := e.claimNamed("sr", "a")
	b := e.claimNamed("sr", "b")
	e.finish(result(b, state.Success))
	now := t0.Add(time.Hour)
	r, err := e.s.SetRunState(e.ctx, "sr", "run", state.RunFailed, now)
	must(t, "SetRunState failed", err)
	if r.State != state.RunFailed || r.EndedAt == nil || !r.EndedAt.Equal(now) {
		t.Errorf("run after cancel: %+v", r)
	}
	e.wantStates("sr", "run", map[string]state.TaskState{"a": state.Failed, "b": state.Success,
		"c": state.Skipped, "d": state.Skipped})
	// The worker of a learns it at its heartbeat; its late report changes nothing.
	lost, err := e.s.HeartbeatTasks(e.ctx, "w1", []store.Try{att(a)}, now)
	must(t, "HeartbeatTasks", err)
	if len(lost) != 1 {
		t.Errorf("cancelled try not reported lost: %v", lost)
	}
	if o := e.finish(result(a, state.Success)); o[0].Applied {
		t.Errorf("report after cancel applied")
	}
	// Same state again: no change. Failed → running is not a transition.
	r2, err := e.s.SetRunState(e.ctx, "sr", "run", state.RunFailed, now.Add(time.Hour))
	must(t, "SetRunState same", err)
	if !r2.EndedAt.Equal(now) {
		t.Errorf("setting the same state moved the end time to %v", r2.EndedAt)
	}
	_, err = e.s.SetRunState(e.ctx, "sr", "run", state.RunRunning, now)
	wantErr(t, "SetRunState failed→running", err, store.ErrConflict)
	_, err = e.s.SetRunState(e.ctx, "sr", "nope", state.RunFailed, now)
	wantErr(t, "SetRunState unknown run", err, store.ErrNotFound)
	if _, err := e.s.SetRunState(e.ctx, "sr", "run", "paused", now); err == nil {
		t.Errorf("SetRunState accepted an unknown state")
	}

	// success marks every unfinished instance success.
	e.newRun(sp, "run2", t0.Add(24*time.Hour))
	e.start("sr")
	r, err = e.s.SetRunState(e.ctx, "sr", "run2", state.RunSuccess, now)
	must(t, "SetRunState success", err)
	if r.State != state.RunSuccess {
		t.Errorf("run2 state %s", r.State)
	}
	e.wantStates("sr", "run2", map[string]state.TaskState{"a": state.Success, "b": state.Success,
		"c": state.Success, "d": state.Success})
	// queued puts it back in line.
	r, err = e.s.SetRunState(e.ctx, "sr", "run2", state.RunQueued, now)
	must(t, "SetRunState queued", err)
	if r.State != state.RunQueued || r.EndedAt != nil {
		t.Errorf("run2 after queued: %+v", r)
	}
}

func testClear(t *testing.T, e *env) {
	sp := newSpec("cl", tk("a", retries(1, time.Second, 0)), tk("b", up("a")), tk("c", up("b")))
	e.started(sp, "run")
	e.drive(1, succeed)
	e.wantRunState("cl", "run", state.RunSuccess)

	// Clear b and downstream: b queued again at once (a succeeded), c waits.
	now := t0.Add(time.Hour)
	cleared, err := e.s.ClearTasks(e.ctx, "cl", "run", []string{"b"}, true, now)
	must(t, "ClearTasks", err)
	got := map[string]state.TaskState{}
	for _, ti := range cleared {
		got[ti.TaskID] = ti.State
	}
	if len(got) != 2 || got["b"] != state.Queued || got["c"] != state.None {
		t.Errorf("cleared %v, want b queued and c none", got)
	}
	r := e.wantRunState("cl", "run", state.RunRunning)
	if r.EndedAt != nil {
		t.Errorf("cleared run still has an end time")
	}
	e.wantStates("cl", "run", map[string]state.TaskState{"a": state.Success})
	b := e.claimOne("b")
	if b.TryNumber != 2 || b.MaxTries != 2 {
		t.Errorf("b after clear: try %d of %d, want 2 of 2", b.TryNumber, b.MaxTries)
	}
	e.finish(result(b, state.Success))
	c := e.claimOne("c")
	e.finish(result(c, state.Success))
	e.wantRunState("cl", "run", state.RunSuccess)

	// Clear a alone: it reruns (with its retry back), b and c do not.
	cleared, err = e.s.ClearTasks(e.ctx, "cl", "run", []string{"a"}, false, now)
	must(t, "ClearTasks a", err)
	if len(cleared) != 1 || cleared[0].State != state.Queued || cleared[0].MaxTries != 3 {
		t.Errorf("cleared %+v, want a queued with max tries 3", cleared)
	}
	a := e.claimOne("a")
	e.finish(store.Result{Try: att(a), State: state.Failed, EndedAt: now})
	if ti := e.ti("cl", "run", "a"); ti.State != state.UpForRetry {
		t.Errorf("cleared a failed to %s, want up_for_retry (retries restored)", ti.State)
	}
	_, err = e.s.RequeueRetries(e.ctx, now.Add(time.Hour))
	must(t, "RequeueRetries", err)
	a = e.claimOne("a")
	e.finish(result(a, state.Success))
	if cs := e.claim(5); len(cs) != 0 {
		t.Errorf("clearing a alone reran %v", taskIDs(cs))
	}
	e.wantRunState("cl", "run", state.RunSuccess)

	// Clear a task whose upstream failed: decided at once again.
	sp2 := newSpec("cl2", tk("a"), tk("b", up("a")))
	e.started(sp2, "run")
	a2 := e.claimOne("a")
	e.finish(store.Result{Try: att(a2), State: state.Failed, EndedAt: now})
	cleared, err = e.s.ClearTasks(e.ctx, "cl2", "run", []string{"b"}, false, now)
	must(t, "ClearTasks b", err)
	if len(cleared) != 1 || cleared[0].State != state.UpstreamFailed {
		t.Errorf("cleared b = %+v, want upstream_failed again", cleared)
	}
	e.wantRunState("cl2", "run", state.RunFailed)

	_, err = e.s.ClearTasks(e.ctx, "cl", "run", []string{"nope"}, false, now)
	wantErr(t, "ClearTasks unknown task", err, store.ErrNotFound)
	_, err = e.s.ClearTasks(e.ctx, "cl", "nope", []string{"a"}, false, now)
	wantErr(t, "ClearTasks unknown run", err, store.ErrNotFound)
}

func testClearRunning(t *testing.T, e *env) {
	sp := newSpec("cr", tk("a"), tk("b", up("a")))
	e.started(sp, "run")
	a := e.claimOne("a")
	now := t0.Add(time.Hour)
	cleared, err := e.s.ClearTasks(e.ctx, "cr", "run", []string{"a"}, false, now)
	must(t, "ClearTasks", err)
	if len(cleared) != 1 || cleared[0].State != state.Restarting {
		t.Fatalf("cleared running a = %+v, want restarting", cleared)
	}
	// Not claimable while its try runs; the worker must stop it.
	if cs := e.claim(5); len(cs) != 0 {
		t.Errorf("claimed %v while a restarts", taskIDs(cs))
	}
	lost, err := e.s.HeartbeatTasks(e.ctx, "w1", []store.Try{att(a)}, now)
	must(t, "HeartbeatTasks", err)
	if len(lost) != 1 {
		t.Errorf("restarting try not reported lost")
	}
	// Its end (whatever the outcome) sends it around again; b is not released.
	out := e.finish(result(a, state.Success))
	if !out[0].Applied || out[0].State != state.Queued {
		t.Errorf("end of the cleared try = %+v, want applied, queued", out[0])
	}
	e.wantStates("cr", "run", map[string]state.TaskState{"a": state.Queued, "b": state.None})
	a2 := e.claimOne("a")
	if a2.TryNumber != 2 {
		t.Errorf("restarted try %d, want 2", a2.TryNumber)
	}
	e.finish(result(a2, state.Success))
	b := e.claimOne("b")
	e.finish(result(b, state.Success))
	e.wantRunState("cr", "run", state.RunSuccess)

	// A restarting try whose worker died comes back too.
	sp2 := newSpec("cr2", tk("a"))
	e.started(sp2, "run")
	x := e.claimOne("a")
	_, err = e.s.ClearTasks(e.ctx, "cr2", "run", []string{"a"}, false, now)
	must(t, "ClearTasks", err)
	taken, err := e.s.FailWorkerTasks(e.ctx, "w1", now)
	must(t, "FailWorkerTasks", err)
	if !sameTries(taken, []store.Try{att(x)}) {
		t.Errorf("FailWorkerTasks took %v", taken)
	}
	if ti := e.ti("cr2", "run", "a"); ti.State != state.Queued {
		t.Errorf("restarting instance of a dead worker is %s, want queued", ti.State)
	}
}

func testSetTaskState(t *testing.T, e *env) {
	sp := newSpec("st", tk("a"), tk("b", up("a")), tk("c", up("b"), rule(dag.AllDone)))
	e.started(sp, "run")
	a := e.claimOne("a")
	now := t0.Add(time.Hour)
	ti, err := e.s.SetTaskState(e.ctx, "st", "run", "a", state.Success, now)
	must(t, "SetTaskState", err)
	if ti.State != state.Success || ti.EndedAt == nil || !ti.EndedAt.Equal(now) {
		t.Errorf("marked a: %+v", ti)
	}
	e.wantStates("st", "run", map[string]state.TaskState{"b": state.Queued})
	if o := e.finish(result(a, state.Failed)); o[0].Applied {
		t.Errorf("worker report after marking applied")
	}
	b := e.claimOne("b")
	e.finish(store.Result{Try: att(b), State: state.Failed, EndedAt: now})
	// Marking a failed task success fixes the counters of its downstream.
	_, err = e.s.SetTaskState(e.ctx, "st", "run", "b", state.Success, now)
	must(t, "SetTaskState b", err)
	c := e.claimOne("c")
	e.finish(result(c, state.Success))
	e.wantRunState("st", "run", state.RunSuccess)
	if _, err := e.s.SetTaskState(e.ctx, "st", "run", "a", state.Running, now); err == nil {
		t.Errorf("SetTaskState accepted running")
	}
	_, err = e.s.SetTaskState(e.ctx, "st", "run", "nope", state.Success, now)
	wantErr(t, "SetTaskState unknown", err, store.ErrNotFound)

	// Skipping a waiting task by hand propagates like a skip.
	sp2 := newSpec("st2", tk("a"), tk("b", up("a")), tk("c", up("b")))
	e.started(sp2, "run")
	_, err = e.s.SetTaskState(e.ctx, "st2", "run", "b", state.Skipped, now)
	must(t, "SetTaskState skipped", err)
	e.wantStates("st2", "run", map[string]state.TaskState{"a": state.Queued, "b": state.Skipped, "c": state.Skipped})
}

func testOutputs(t *testing.T, e *env) {
	sp := newSpec("out", tk("a"), tk("b", up("a")))
	r := e.started(sp, "run")
	_, err := e.s.GetOutput(e.ctx, r.ID, "a")
	wantErr(t, "GetOutput before finish", err, store.ErrNotFound)
	a := e.claimOne("a")
	res := result(a, state.Success)
	res.Output = json.RawMessage(`{"rows": 42, "names": ["x", "y"]}`)
	e.finish(res)
	got, err := e.s.GetOutput(e.ctx, r.ID, "a")
	must(t, "GetOutput", err)
	jsonEqual(t, "output", got, res.Output)
	_, err = e.s.GetOutput(e.ctx, r.ID, "nope")
	wantErr(t, "GetOutput unknown task", err, store.ErrNotFound)
	b := e.claimOne("b")
	e.finish(result(b, state.Success))
	_, err = e.s.GetOutput(e.ctx, r.ID, "b")
	wantErr(t, "GetOutput without output", err, store.ErrNotFound)
	if _, err := e.s.FinishTasks(e.ctx, []store.Result{{Try: att(b), State: state.Success, Output: json.RawMessage(`{"a":`)}}); err == nil {
		t.Errorf("FinishTasks accepted invalid output JSON")
	}
}

func testLogs(t *testing.T, e *env) {
	e.started(newSpec("lg", tk("a", retries(1, time.Second, 0)), tk("b")), "run")
	a := e.claimNamed("lg", "a")
	for _, chunk := range []string{"line 1\n", "line 2\n", "", "line 3\n"} {
		must(t, "AppendLog", e.s.AppendLog(e.ctx, att(a), []byte(chunk)))
	}
	got, err := e.s.ReadLog(e.ctx, "lg", "run", "a", 1)
	must(t, "ReadLog", err)
	if string(got) != "line 1\nline 2\nline 3\n" {
		t.Errorf("log = %q", got)
	}
	_, err = e.s.ReadLog(e.ctx, "lg", "run", "a", 2)
	wantErr(t, "ReadLog of a try not started", err, store.ErrNotFound)
	_, err = e.s.ReadLog(e.ctx, "lg", "run", "nope", 1)
	wantErr(t, "ReadLog unknown task", err, store.ErrNotFound)
	e.finish(result(a, state.Failed))
	_, err = e.s.RequeueRetries(e.ctx, t0.Add(time.Hour))
	must(t, "RequeueRetries", err)
	a2 := e.claimNamed("lg", "a")
	got, err = e.s.ReadLog(e.ctx, "lg", "run", "a", 2)
	if err != nil || len(got) != 0 {
		t.Errorf("log of a started try without output = %q, %v; want empty", got, err)
	}
	// The cap: 1.5 MiB appended in 64 KiB chunks keeps the first 1 MiB and
	// says the rest was dropped.
	var all bytes.Buffer
	for i := 0; all.Len() < LogCap+LogCap/2; i++ {
		chunk := bytes.Repeat([]byte{byte('a' + i%26)}, 64<<10)
		all.Write(chunk)
		must(t, "AppendLog big", e.s.AppendLog(e.ctx, att(a2), chunk))
	}
	got, err = e.s.ReadLog(e.ctx, "lg", "run", "a", 2)
	must(t, "ReadLog big", err)
	if len(got) < LogCap || !bytes.Equal(got[:LogCap], all.Bytes()[:LogCap]) {
		t.Fatalf("capped log does not start with the first %d bytes (got %d bytes)", LogCap, len(got))
	}
	tail := string(got[LogCap:])
	if !strings.Contains(tail, "truncated") || len(tail) > 200 {
		t.Errorf("capped log ends with %q, want a short truncation marker", tail)
	}
	// Try 1's log is untouched.
	got, err = e.s.ReadLog(e.ctx, "lg", "run", "a", 1)
	if err != nil || string(got) != "line 1\nline 2\nline 3\n" {
		t.Errorf("try 1 log after try 2 wrote: %q %v", got, err)
	}
	if err := e.s.AppendLog(e.ctx, store.Try{ID: 1 << 40, TryNumber: 1}, []byte("x")); err == nil {
		t.Errorf("AppendLog to an unknown instance succeeded")
	}
}

func testWorkers(t *testing.T, e *env) {
	w2 := store.Worker{ID: "w2", Hostname: "h2", PID: 2, Slots: 4, StartedAt: t0, HeartbeatAt: t0}
	must(t, "RegisterWorker", e.s.RegisterWorker(e.ctx, e.w))
	must(t, "RegisterWorker", e.s.RegisterWorker(e.ctx, w2))
	must(t, "HeartbeatWorker", e.s.HeartbeatWorker(e.ctx, "w2", t0.Add(time.Minute)))
	ws, err := e.s.ListWorkers(e.ctx)
	must(t, "ListWorkers", err)
	if len(ws) != 2 || ws[0].ID != "w1" || ws[1].ID != "w2" || ws[1].Slots != 4 || ws[1].Hostname != "h2" ||
		ws[1].PID != 2 || !ws[1].HeartbeatAt.Equal(t0.Add(time.Minute)) || !ws[1].StartedAt.Equal(t0) {
		t.Errorf("ListWorkers = %+v", ws)
	}
	wantErr(t, "HeartbeatWorker unknown", e.s.HeartbeatWorker(e.ctx, "nope", t0), store.ErrNotFound)
	must(t, "DeregisterWorker", e.s.DeregisterWorker(e.ctx, "w1"))
	ws, err = e.s.ListWorkers(e.ctx)
	must(t, "ListWorkers", err)
	if len(ws) != 1 || ws[0].ID != "w2" {
		t.Errorf("after deregister: %+v", ws)
	}
	// Re-registering updates.
	w2.Slots = 9
	must(t, "RegisterWorker again", e.s.RegisterWorker(e.ctx, w2))
	ws, _ = e.s.ListWorkers(e.ctx)
	if len(ws) != 1 || ws[0].Slots != 9 {
		t.Errorf("after re-register: %+v", ws)
	}
}

func testListRuns(t *testing.T, e *env) {
	a, b := newSpec("la", tk("x")), newSpec("lb", tk("x"))
	e.sync(a, b)
	for i := range 5 {
		e.newRun(a, fmt.Sprintf("a%d", i), t0.Add(time.Duration(i)*24*time.Hour))
	}
	e.newRun(b, "b0", t0)
	e.start("la") // all five start (limit 16)
	// Finish a0 and a1.
	for _, id := range []string{"a0", "a1"} {
		_, err := e.s.SetRunState(e.ctx, "la", id, state.RunSuccess, t0.Add(time.Hour))
		must(t, "SetRunState", err)
	}
	runs, total, err := e.s.ListRuns(e.ctx, store.RunQuery{})
	must(t, "ListRuns", err)
	if total != 6 || len(runs) != 6 || runs[0].RunID != "a4" {
		t.Errorf("ListRuns() = %v (total %d), want 6 newest first", runIDs(runs), total)
	}
	runs, total, err = e.s.ListRuns(e.ctx, store.RunQuery{DAGIDs: []string{"la"}, OrderBy: "logical_date", Limit: 2, Offset: 1})
	must(t, "ListRuns page", err)
	if total != 5 || !equalIDs(runs, "a1", "a2") {
		t.Errorf("ListRuns page = %v (total %d), want [a1 a2] of 5", runIDs(runs), total)
	}
	runs, total, err = e.s.ListRuns(e.ctx, store.RunQuery{States: []state.RunState{state.RunSuccess}, OrderBy: "run_id"})
	must(t, "ListRuns by state", err)
	if total != 2 || !equalIDs(runs, "a0", "a1") {
		t.Errorf("ListRuns(success) = %v", runIDs(runs))
	}
	runs, _, err = e.s.ListRuns(e.ctx, store.RunQuery{States: []state.RunState{state.RunQueued}})
	must(t, "ListRuns queued", err)
	if !equalIDs(runs, "b0") {
		t.Errorf("ListRuns(queued) = %v", runIDs(runs))
	}
	runs, _, err = e.s.ListRuns(e.ctx, store.RunQuery{DAGIDs: []string{"la"},
		LogicalDateGTE: ptr(t0.Add(24 * time.Hour)), LogicalDateLTE: ptr(t0.Add(72 * time.Hour)), OrderBy: "-logical_date"})
	must(t, "ListRuns by date", err)
	if !equalIDs(runs, "a3", "a2", "a1") {
		t.Errorf("ListRuns(date range) = %v", runIDs(runs))
	}
	runs, _, err = e.s.ListRuns(e.ctx, store.RunQuery{EndDateLTE: ptr(t0.Add(2 * time.Hour)), OrderBy: "run_id"})
	must(t, "ListRuns by end", err)
	if !equalIDs(runs, "a0", "a1") {
		t.Errorf("ListRuns(end ≤) = %v", runIDs(runs))
	}
	runs, _, err = e.s.ListRuns(e.ctx, store.RunQuery{StartDateGTE: ptr(t0), OrderBy: "run_id"})
	must(t, "ListRuns by start", err)
	if len(runs) != 5 {
		t.Errorf("ListRuns(started) = %v, want the 5 started runs", runIDs(runs))
	}
	if _, _, err := e.s.ListRuns(e.ctx, store.RunQuery{OrderBy: "1; DROP TABLE dag_runs"}); err == nil {
		t.Errorf("ListRuns accepted an unknown order")
	}
	runs, total, err = e.s.ListRuns(e.ctx, store.RunQuery{Offset: 100})
	if err != nil || len(runs) != 0 || total != 6 {
		t.Errorf("ListRuns past the end = %v, %d, %v", runIDs(runs), total, err)
	}
}

func equalIDs(runs []store.Run, ids ...string) bool {
	got := runIDs(runs)
	if len(got) != len(ids) {
		return false
	}
	for i := range ids {
		if got[i] != ids[i] {
			return false
		}
	}
	return true
}

func testListTIs(t *testing.T, e *env) {
	sp := newSpec("lt", tk("a"), tk("b"), tk("c", up("a")))
	e.started(sp, "r1")
	e.newRun(sp, "r2", t0.Add(24*time.Hour))
	e.start("lt")
	a := e.claimNamed("lt", "a")
	e.finish(result(a, state.Success))
	tis, total, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"lt"}})
	must(t, "ListTaskInstances", err)
	if total != 6 || len(tis) != 6 {
		t.Errorf("all instances: %d (total %d), want 6", len(tis), total)
	}
	tis, total, err = e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGRunIDs: []string{"r1"}, OrderBy: "-task_id"})
	must(t, "ListTaskInstances r1", err)
	if total != 3 || len(tis) != 3 || tis[0].TaskID != "c" || tis[2].TaskID != "a" || tis[0].DAGRunID != "r1" {
		t.Errorf("r1 by -task_id: %v", tis)
	}
	tis, total, err = e.s.ListTaskInstances(e.ctx, store.TaskQuery{States: []state.TaskState{state.Queued}, OrderBy: "dag_run_id"})
	must(t, "ListTaskInstances queued", err)
	if total != 4 || len(tis) != 4 || tis[0].DAGRunID != "r1" || tis[1].DAGRunID != "r1" || tis[3].DAGRunID != "r2" {
		t.Errorf("queued instances by run: %v (total %d), want r1's b, c then r2's a, b", tis, total)
	}
	tis, total, err = e.s.ListTaskInstances(e.ctx, store.TaskQuery{TaskIDs: []string{"a"}, EndDateGTE: ptr(t0)})
	must(t, "ListTaskInstances ended", err)
	if total != 1 || len(tis) != 1 || tis[0].DAGRunID != "r1" {
		t.Errorf("ended a: %v", tis)
	}
	tis, total, err = e.s.ListTaskInstances(e.ctx, store.TaskQuery{Limit: 2, Offset: 1, OrderBy: "id"})
	must(t, "ListTaskInstances page", err)
	if total != 6 || len(tis) != 2 {
		t.Errorf("page: %d of %d", len(tis), total)
	}
	// Within runs: pages, the count with them, and a page past the end.
	for _, c := range []struct {
		q         store.TaskQuery
		n, total  int
		firstTask string
	}{
		{store.TaskQuery{DAGIDs: []string{"lt"}, DAGRunIDs: []string{"r1", "r2"}, Limit: 2, Offset: 3, OrderBy: "id"}, 2, 6, "a"},
		{store.TaskQuery{DAGRunIDs: []string{"r2"}, States: []state.TaskState{state.Queued}, Limit: 1}, 1, 2, "a"},
		{store.TaskQuery{DAGRunIDs: []string{"r1"}, Limit: 2, Offset: 50}, 0, 3, ""},
		{store.TaskQuery{DAGRunIDs: []string{"nope"}}, 0, 0, ""},
	} {
		tis, total, err := e.s.ListTaskInstances(e.ctx, c.q)
		must(t, "ListTaskInstances in runs", err)
		if len(tis) != c.n || total != c.total || (c.n > 0 && tis[0].TaskID != c.firstTask) {
			t.Errorf("%+v: %d instances (first %v) of %d; want %d (first %s) of %d", c.q, len(tis), taskIDsTI(tis), total,
				c.n, c.firstTask, c.total)
		}
	}
	if _, _, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{OrderBy: "nope"}); err == nil {
		t.Errorf("ListTaskInstances accepted an unknown order")
	}
}

// testListRunTIs: instances come with their run's logical date, and the
// run's logical date filters across runs and within them.
func testListRunTIs(t *testing.T, e *env) {
	sp := newSpec("lr", tk("a"), tk("b", up("a")))
	e.sync(sp)
	days := []string{"d0", "d1", "d2", "d3"}
	for i, id := range days {
		e.newRun(sp, id, t0.Add(time.Duration(i)*24*time.Hour))
	}
	other := newSpec("lr2", tk("x"))
	e.sync(other)
	e.newRun(other, "o1", t0.Add(48*time.Hour))
	rtis, total, err := e.s.ListRunTaskInstances(e.ctx, store.TaskQuery{OrderBy: "id"})
	must(t, "ListRunTaskInstances", err)
	if total != 9 || len(rtis) != 9 {
		t.Fatalf("all: %d of %d, want 9", len(rtis), total)
	}
	for _, ti := range rtis {
		want := t0
		switch ti.DAGRunID {
		case "d1":
			want = t0.Add(24 * time.Hour)
		case "d2", "o1":
			want = t0.Add(48 * time.Hour)
		case "d3":
			want = t0.Add(72 * time.Hour)
		}
		if !ti.LogicalDate.Equal(want) || ti.LogicalDate.Location() != time.UTC {
			t.Errorf("%s/%s/%s: logical date %v, want %v in UTC", ti.DAGID, ti.DAGRunID, ti.TaskID, ti.LogicalDate, want)
		}
	}
	plain, _, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{OrderBy: "id"})
	must(t, "ListTaskInstances", err)
	for i := range plain {
		if i >= len(rtis) || !equalJSON(t, plain[i], rtis[i].TaskInstance) {
			t.Errorf("instance %d: ListTaskInstances %+v, ListRunTaskInstances %+v", i, plain[i], rtis[i].TaskInstance)
		}
	}
	for _, c := range []struct {
		name     string
		q        store.TaskQuery
		n, total int
		first    string // run id of the first
	}{
		{"from d1", store.TaskQuery{LogicalDateGTE: ptr(t0.Add(24 * time.Hour)), OrderBy: "id"}, 7, 7, "d1"},
		{"up to d1", store.TaskQuery{LogicalDateLTE: ptr(t0.Add(24 * time.Hour)), OrderBy: "id"}, 4, 4, "d0"},
		{"d2 of lr, paged", store.TaskQuery{DAGIDs: []string{"lr"}, LogicalDateGTE: ptr(t0.Add(47 * time.Hour)),
			LogicalDateLTE: ptr(t0.Add(49 * time.Hour)), Limit: 1, Offset: 1, OrderBy: "id"}, 1, 2, "d2"},
		{"within runs", store.TaskQuery{DAGRunIDs: []string{"d0", "d3"}, LogicalDateGTE: ptr(t0.Add(time.Hour)), Limit: 1}, 1, 2, "d3"},
		{"none", store.TaskQuery{LogicalDateGTE: ptr(t0.Add(1000 * time.Hour)), Limit: 1}, 0, 0, ""},
	} {
		rtis, total, err := e.s.ListRunTaskInstances(e.ctx, c.q)
		must(t, "ListRunTaskInstances "+c.name, err)
		if len(rtis) != c.n || total != c.total || (c.n > 0 && rtis[0].DAGRunID != c.first) {
			t.Errorf("%s: %d instances of %d (first %v); want %d of %d (first %s)", c.name, len(rtis), total,
				rtis, c.n, c.total, c.first)
		}
		tis, ptotal, err := e.s.ListTaskInstances(e.ctx, c.q)
		must(t, "ListTaskInstances "+c.name, err)
		if len(tis) != c.n || ptotal != c.total {
			t.Errorf("%s: ListTaskInstances %d of %d; want %d of %d", c.name, len(tis), ptotal, c.n, c.total)
		}
	}
}

// equalJSON compares two values by their JSON.
func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	must(t, "marshal", err)
	jb, err := json.Marshal(b)
	must(t, "marshal", err)
	return string(ja) == string(jb)
}

func taskIDsTI(tis []store.TaskInstance) []string {
	out := make([]string, len(tis))
	for i, ti := range tis {
		out[i] = ti.TaskID
	}
	return out
}

func testDeleteRun(t *testing.T, e *env) {
	sp := newSpec("del", tk("a"))
	e.started(sp, "run")
	wantErr(t, "DeleteRun running", e.s.DeleteRun(e.ctx, "del", "run"), store.ErrConflict)
	a := e.claimOne("a")
	must(t, "AppendLog", e.s.AppendLog(e.ctx, att(a), []byte("log")))
	e.finish(result(a, state.Success))
	must(t, "DeleteRun", e.s.DeleteRun(e.ctx, "del", "run"))
	_, err := e.s.GetRun(e.ctx, "del", "run")
	wantErr(t, "GetRun deleted", err, store.ErrNotFound)
	_, err = e.s.GetTaskInstance(e.ctx, "del", "run", "a")
	wantErr(t, "GetTaskInstance deleted", err, store.ErrNotFound)
	wantErr(t, "DeleteRun again", e.s.DeleteRun(e.ctx, "del", "run"), store.ErrNotFound)
	// The logical date is free again.
	e.newRun(sp, "run", t0)
}

func testPurge(t *testing.T, e *env) {
	sp := newSpec("pg", tk("a"), tk("b", up("a")))
	other := newSpec("po", tk("x"))
	e.sync(sp)
	e.sync(other)
	for i := range 4 {
		e.newRun(sp, fmt.Sprintf("r%d", i), t0.Add(time.Duration(i)*24*time.Hour))
	}
	e.newRun(other, "o0", t0)
	e.start("pg")
	e.start("po")
	// Every root task runs one try that writes a log.
	claimed, err := e.s.ClaimTasks(e.ctx, e.w, 100, t0)
	must(t, "ClaimTasks", err)
	if len(claimed) != 5 {
		t.Fatalf("claimed %d, want the 5 roots", len(claimed))
	}
	for _, c := range claimed {
		must(t, "AppendLog", e.s.AppendLog(e.ctx, att(c), []byte("log of "+c.DAGRunID)))
	}
	// r0 and o0 end at day 1, r1 at day 2, r2 at day 10; r3 still runs.
	ends := map[string]time.Time{"r0": t0.Add(24 * time.Hour), "r1": t0.Add(48 * time.Hour), "r2": t0.Add(240 * time.Hour)}
	for id, end := range ends {
		_, err := e.s.SetRunState(e.ctx, "pg", id, state.RunSuccess, end)
		must(t, "SetRunState", err)
	}
	_, err = e.s.SetRunState(e.ctx, "po", "o0", state.RunFailed, t0.Add(24*time.Hour))
	must(t, "SetRunState", err)
	day3 := t0.Add(72 * time.Hour)

	// Dry runs count and delete nothing.
	for _, c := range []struct {
		name string
		q    store.PurgeQuery
		want store.Purged
	}{
		{"all before day 3", store.PurgeQuery{Before: day3}, store.Purged{Runs: 3, TaskInstances: 5, Logs: 3}},
		{"pg", store.PurgeQuery{Before: day3, DAGID: "pg"}, store.Purged{Runs: 2, TaskInstances: 4, Logs: 2}},
		{"except pg", store.PurgeQuery{Before: day3, ExceptDAGIDs: []string{"pg"}}, store.Purged{Runs: 1, TaskInstances: 1, Logs: 1}},
		{"limit 1", store.PurgeQuery{Before: day3, DAGID: "pg", Limit: 1}, store.Purged{Runs: 1, TaskInstances: 2, Logs: 1}},
		{"after day 5", store.PurgeQuery{Before: t0.Add(1000 * time.Hour), After: t0.Add(120 * time.Hour)}, store.Purged{Runs: 1, TaskInstances: 2, Logs: 1}},
		{"nothing", store.PurgeQuery{Before: t0}, store.Purged{}},
	} {
		c.q.DryRun = true
		got, err := e.s.PurgeRuns(e.ctx, c.q)
		must(t, "PurgeRuns dry "+c.name, err)
		if got != c.want {
			t.Errorf("dry PurgeRuns %s = %+v, want %+v", c.name, got, c.want)
		}
		logs, err := e.s.PurgeLogs(e.ctx, c.q)
		must(t, "PurgeLogs dry "+c.name, err)
		if logs != c.want.Logs {
			t.Errorf("dry PurgeLogs %s = %d, want %d", c.name, logs, c.want.Logs)
		}
	}
	if _, total, _ := e.s.ListRuns(e.ctx, store.RunQuery{}); total != 5 {
		t.Fatalf("%d runs after dry runs, want 5", total)
	}

	// Logs first, in batches: runs and instances stay.
	for i, want := range []int{1, 1, 0} {
		n, err := e.s.PurgeLogs(e.ctx, store.PurgeQuery{Before: day3, DAGID: "pg", Limit: 1})
		must(t, "PurgeLogs", err)
		if n != want {
			t.Errorf("PurgeLogs batch %d = %d, want %d", i, n, want)
		}
	}
	for _, id := range []string{"r0", "r1"} {
		if b, err := e.s.ReadLog(e.ctx, "pg", id, "a", 1); err == nil && len(b) > 0 {
			t.Errorf("log of pg/%s/a after PurgeLogs: %q", id, b)
		}
		if _, err := e.s.GetTaskInstance(e.ctx, "pg", id, "a"); err != nil {
			t.Errorf("instance pg/%s/a after PurgeLogs: %v", id, err)
		}
	}
	if b, err := e.s.ReadLog(e.ctx, "pg", "r2", "a", 1); err != nil || string(b) != "log of r2" {
		t.Errorf("log of r2 (ended after the cut) = %q, %v", b, err)
	}

	// Runs in batches, oldest first; a DAG's runs alone, or all but a DAG's.
	got, err := e.s.PurgeRuns(e.ctx, store.PurgeQuery{Before: day3, DAGID: "pg", Limit: 1})
	must(t, "PurgeRuns", err)
	if got != (store.Purged{Runs: 1, TaskInstances: 2}) {
		t.Errorf("PurgeRuns pg limit 1 = %+v, want 1 run, 2 instances, no logs (purged before)", got)
	}
	if _, err := e.s.GetRun(e.ctx, "pg", "r0"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("r0 (the oldest) after the purge: %v, want not found", err)
	}
	got, err = e.s.PurgeRuns(e.ctx, store.PurgeQuery{Before: day3, ExceptDAGIDs: []string{"pg"}})
	must(t, "PurgeRuns except", err)
	if got != (store.Purged{Runs: 1, TaskInstances: 1, Logs: 1}) {
		t.Errorf("PurgeRuns except pg = %+v, want o0", got)
	}
	got, err = e.s.PurgeRuns(e.ctx, store.PurgeQuery{Before: t0.Add(1000 * time.Hour)})
	must(t, "PurgeRuns all", err)
	if got != (store.Purged{Runs: 2, TaskInstances: 4, Logs: 1}) {
		t.Errorf("PurgeRuns of the rest = %+v, want r1 and r2 (the running r3 stays)", got)
	}
	runs, _, err := e.s.ListRuns(e.ctx, store.RunQuery{OrderBy: "run_id"})
	must(t, "ListRuns", err)
	if !equalIDs(runs, "r3") {
		t.Errorf("left %v, want r3", runIDs(runs))
	}
	tis, total, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{})
	must(t, "ListTaskInstances", err)
	if total != 2 {
		t.Errorf("%d instances left (%v), want r3's 2", total, tis)
	}
	if b, err := e.s.ReadLog(e.ctx, "pg", "r3", "a", 1); err != nil || string(b) != "log of r3" {
		t.Errorf("log of the running r3 = %q, %v", b, err)
	}
	if _, err := e.s.PurgeRuns(e.ctx, store.PurgeQuery{}); err == nil {
		t.Error("PurgeRuns without Before succeeded")
	}
	if _, err := e.s.PurgeLogs(e.ctx, store.PurgeQuery{Before: day3, Limit: -1}); err == nil {
		t.Error("PurgeLogs with a negative limit succeeded")
	}
}

func testRoundTrip(t *testing.T, e *env) {
	weird := []string{`it's "quoted"; DROP TABLE dags;--`, "ünïcødé ✓ 日本語 🚀", `back\slash ' " ; $1 %s`}
	big := strings.Repeat("x", 1<<20)
	for i, id := range weird {
		dagID := fmt.Sprintf("%s#%d", id, i)
		sp := newSpec(dagID, tk(id+"-task"))
		sp.Description, sp.Tags = id, []string{id, "plain"}
		sp = fingerprint(sp)
		e.sync(sp)
		d, err := e.s.GetDAG(e.ctx, dagID)
		must(t, "GetDAG", err)
		if d.Description != id || len(d.Tags) != 2 || d.Tags[0] != id {
			t.Errorf("DAG %q read back as %+v", dagID, d)
		}
		conf, _ := json.Marshal(map[string]any{"s": id, "big": big, "nested": map[string]any{id: []any{id, 1.5, true, nil}}})
		r, _, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: dagID, RunID: id, RunType: store.RunManual,
			LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0, Conf: conf, Fingerprint: sp.Fingerprint, Note: id, QueuedAt: t0})
		must(t, "CreateRun", err)
		got := e.run(dagID, id)
		if got.RunID != id || got.Note != id || got.ID != r.ID {
			t.Errorf("run %q read back as %+v", id, got)
		}
		jsonEqual(t, "conf of "+id, got.Conf, conf)
		e.start(dagID)
		c := e.claimOne(id + "-task")
		jsonEqual(t, "claimed conf of "+id, c.Conf, conf)
		out, _ := json.Marshal(map[string]string{"v": id, "big": big})
		res := result(c, state.Success)
		res.Output, res.Error = out, id
		e.finish(res)
		gotOut, err := e.s.GetOutput(e.ctx, r.ID, id+"-task")
		must(t, "GetOutput", err)
		jsonEqual(t, "output of "+id, gotOut, out)
		ti := e.ti(dagID, id, id+"-task")
		if ti.Error != id || ti.DAGID != dagID || ti.DAGRunID != id {
			t.Errorf("instance read back as %+v", ti)
		}
		must(t, "AppendLog", e.s.AppendLog(e.ctx, att(c), []byte(id)))
		lg, err := e.s.ReadLog(e.ctx, dagID, id, id+"-task", 1)
		if err != nil || string(lg) != id {
			t.Errorf("log read back as %q, %v", lg, err)
		}
		tis, _, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{dagID}, DAGRunIDs: []string{id}, TaskIDs: []string{id + "-task"}})
		if err != nil || len(tis) != 1 {
			t.Errorf("filtering by %q found %d, %v", id, len(tis), err)
		}
	}
}

func testListen(t *testing.T, e *env) {
	sub, err := e.s.Listen(e.ctx, store.TopicTasksReady, store.TopicRunsChanged)
	must(t, "Listen", err)
	sp := newSpec("ls", tk("a"))
	e.sync(sp)
	waitTopic(t, sub, store.TopicRunsChanged)
	e.newRun(sp, "r", t0)
	waitTopic(t, sub, store.TopicRunsChanged)
	e.start("ls")
	waitTopic(t, sub, store.TopicTasksReady)
	must(t, "Close", sub.Close())
	select {
	case _, open := <-sub.C():
		for open {
			_, open = <-sub.C()
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("subscription channel not closed after Close")
	}

	// A try going up_for_retry wakes the scheduler (TopicRunsChanged) so it
	// can arm its retry timer, although no run settled.
	rs := newSpec("lr", tk("a", retries(1, time.Minute, 0)))
	e.started(rs, "r")
	a := e.claimNamed("lr", "a")
	sub2, err := e.s.Listen(e.ctx, store.TopicRunsChanged)
	must(t, "Listen", err)
	defer sub2.Close()
	if out := e.finish(result(a, state.Failed)); out[0].State != state.UpForRetry {
		t.Fatalf("failed try with a retry left = %s, want up_for_retry", out[0].State)
	}
	waitTopic(t, sub2, store.TopicRunsChanged)

	// A finish (with a claim) that ends a run wakes the scheduler, which
	// may start the next run.
	es := newSpec("le", tk("a"))
	e.started(es, "r")
	a = e.claimNamed("le", "a")
	sub3, err := e.s.Listen(e.ctx, store.TopicRunsChanged)
	must(t, "Listen", err)
	defer sub3.Close()
	e.finishClaim(4, result(a, state.Success))
	e.wantRunState("le", "r", state.RunSuccess)
	waitTopic(t, sub3, store.TopicRunsChanged)
}

// waitTopic waits for topic on sub, ignoring others.
func waitTopic(t *testing.T, sub store.Subscription, topic store.Topic) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got, ok := <-sub.C():
			if !ok {
				t.Fatalf("subscription closed while waiting for %s", topic)
			}
			if got == topic {
				return
			}
		case <-deadline:
			t.Fatalf("no %s wake-up within 10s", topic)
		}
	}
}
