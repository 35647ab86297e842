// Package storetest is the conformance suite every store.Store backend
// passes: each operation and state transition, trigger rules released
// through real finishes, compare-and-set rejections, retries, zombies,
// purges, exact round trips of awkward values, wake-ups, concurrent
// claims from goroutines and from two processes, and the atomicity of
// finish-and-release under injected failures.
//
// A backend's test calls Run:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store {
//			s, err := postgres.Open(ctx, testdb.Postgres(t), postgres.Options{})
//			…; t.Cleanup(func() { s.Close() }); s.Migrate(ctx); return s
//		})
//	}
//
// open must return a migrated store on a fresh, empty database created
// with internal/testdb (the multi-process test hands the same database to
// a second process through testdb.URL and testdb.EnvChildURL), opened
// with default options (a 1 MiB log cap), and register its Close with
// t.Cleanup. The store must implement FaultInjector.
package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// FaultInjector is implemented by backends so the suite can fail a write
// transaction part-way: hook is called at the Fault* points inside
// FinishTasks (and others), and an error it returns aborts and rolls back
// the transaction there. nil removes the hook.
type FaultInjector interface {
	SetFaultHook(hook func(point string) error)
}

// Failure-injection points every backend's FinishTasks passes, in order.
const (
	// FaultFinishRecorded: the outcomes are written, downstream tasks not
	// yet released.
	FaultFinishRecorded = "finish:recorded"
	// FaultFinishReleased: downstream tasks released, runs not yet settled.
	FaultFinishReleased = "finish:released"
	// FaultFinishSettled: runs settled, not yet committed.
	FaultFinishSettled = "finish:settled"
)

// LogCap is the log cap the suite expects (the backends' default).
const LogCap = 1 << 20

// Environment variables of the multi-process tests.
const (
	envChild = "TRELLIS_STORETEST_CHILD"
	envOut   = "TRELLIS_STORETEST_OUT"
)

// Run runs the conformance suite, each test on a fresh store from open.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	if role := os.Getenv(envChild); role != "" {
		runChild(t, role, open)
		return
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"Migrate", testMigrate},
		{"SyncDAGs", testSyncDAGs},
		{"SyncDAGsRejectsBadSpecs", testSyncDAGsBad},
		{"PauseAndSchedule", testPauseAndSchedule},
		{"CreateRun", testCreateRun},
		{"CreateRunConcurrent", testCreateRunConcurrent},
		{"CreateRunEmptyDAG", testCreateRunEmpty},
		{"StartRunsMaxActive", testStartRuns},
		{"StartRunsConcurrent", testStartRunsConcurrent},
		{"FireRuns", testFireRuns}, {"FireRunsRejects", testFireRunsRejects}, {"FireRunsConcurrent", testFireRunsConcurrent},
		{"ClaimOrder", testClaimOrder},
		{"ClaimConcurrentGoroutines", testClaimConcurrent},
		{"MaxActiveTasks", testMaxActiveTasks},
		{"ClaimAcrossProcesses", testClaimProcesses},
		{"FinishAndClaim", testFinishAndClaim},
		{"FinishAndClaimCapped", testFinishAndClaimCapped},
		{"FinishAndClaimConcurrent", testFinishAndClaimConcurrent},
		{"ChainRelease", testChain},
		{"TriggerRules", testTriggerRules},
		{"EarlyDecisions", testEarlyDecisions},
		{"Branch", testBranch},
		{"BranchKeepsReachable", testBranchReachable},
		{"SkipsPropagate", testSkipsPropagate},
		{"UpstreamFailedAndCleanup", testUpstreamFailed},
		{"JoinFinishedConcurrently", testJoinConcurrent},
		{"Retries", testRetries},
		{"ExponentialBackoff", testBackoff},
		{"PermanentFailure", testPermanent},
		{"CompareAndSet", testCAS},
		{"Heartbeats", testHeartbeats},
		{"Zombies", testZombies},
		{"ZombiesSpareLiveWorkers", testZombiesLiveWorker},
		{"FailWorkerTasks", testFailWorker},
		{"RecoverWorkerTasks", testRecoverWorker},
		{"RequeueTries", testRequeue},
		{"Deferral", testDeferral},
		{"DeferralOnCalls", testDeferralOnCalls},
		{"DeferralCleared", testDeferralCleared},
		{"CallableSpec", testCallableSpec},
		{"CallsDedup", testCallsDedup},
		{"CallsRefused", testCallsRefused},
		{"CallsCycle", testCallsCycle},
		{"CallsWake", testCallsWake},
		{"CallsFailure", testCallsFailure},
		{"CallsCrash", testCallsCrash},
		{"CallsFromOutside", testCallsFromOutside},
		{"CallsConcurrent", testCallsConcurrent},
		{"CallsMany", testCallsMany},
		{"CallsClearRerun", testCallsClearRerun},
		{"SetRunState", testSetRunState},
		{"ClearTasks", testClear},
		{"ClearRunning", testClearRunning},
		{"SetTaskState", testSetTaskState},
		{"Outputs", testOutputs},
		{"Logs", testLogs},
		{"FinishLog", testFinishLog},
		{"Workers", testWorkers},
		{"SchedulerHeartbeats", testSchedulerHeartbeats},
		{"ListRuns", testListRuns},
		{"ListTaskInstances", testListTIs},
		{"Grid", testGrid},
		{"GridCalls", testGridCalls},
		{"ListRunTaskInstances", testListRunTIs},
		{"DeleteRun", testDeleteRun},
		{"PurgeRuns", testPurge},
		{"RoundTrip", testRoundTrip},
		{"Listen", testListen},
		{"FinishIsAtomic", testAtomic},
		{"Events", testEvents},
		{"ScheduleOnEvent", testScheduleOnEvent},
		{"DeferUntilDue", testDeferUntilDue},
		{"DeferOnEvent", testDeferOnEvent},
		{"ContinueDeferred", testContinueDeferred},
		{"DeferredSweepConcurrent", testDeferredSweepConcurrent},
		{"EventRacesDeferral", testEventRacesDeferral},
		{"Pokes", testPokes}, {"PokesLeftBehind", testPokesLeftBehind}, {"PokesConcurrent", testPokesConcurrent},
		{"PokesRuns", testPokesRuns}, {"PokesAfter", testPokesAfter},
		{"WaitFieldsCleared", testWaitFieldsCleared},
		{"PoolLimit", testPoolLimit},
		{"TaskAndKeyLimits", testTaskAndKeyLimits},
		{"KeyNoHeadOfLine", testKeyNoHeadOfLine},
		{"PoolResize", testPoolResize},
		{"LimitsSurviveDeadWorker", testLimitsSurviveDeadWorker},
		{"LimitsBadInput", testLimitsBadInput},
		{"LimitsProperty", testLimitsProperty},
		{"KeyCountersPurged", testKeyCountersPurged},
		{"KeyCountersPurgeRace", testKeyCountersPurgeRace},
		{"DeleteRunKeepsCounters", testDeleteRunKeepsCounters},
		{"FreedSlotWakes", testFreedSlotWakes},
		{"CallConcurrency", testCallConcurrency},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newEnv(t, open))
		})
	}
}

// t0 is the suite's reference time.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// env is one test's store with helpers that fail the test on errors.
type env struct {
	t    *testing.T
	s    store.Store
	ctx  context.Context
	open func(t *testing.T) store.Store
	w    store.Worker
}

func newEnv(t *testing.T, open func(t *testing.T) store.Store) *env {
	s := open(t)
	return &env{t: t, s: s, ctx: t.Context(), open: open,
		w: store.Worker{ID: "w1", Hostname: "host-1", PID: 101, Slots: 8, StartedAt: t0, HeartbeatAt: t0}}
}

// taskOpt changes a task spec.
type taskOpt func(*store.TaskSpec)

func up(ids ...string) taskOpt {
	return func(ts *store.TaskSpec) { ts.Upstream = append(ts.Upstream, ids...) }
}

func rule(r dag.TriggerRule) taskOpt { return func(ts *store.TaskSpec) { ts.TriggerRule = r } }

func prio(p int) taskOpt { return func(ts *store.TaskSpec) { ts.Priority = p } }

func branch() taskOpt { return func(ts *store.TaskSpec) { ts.Kind = dag.KindBranch } }

func timeout(d time.Duration) taskOpt { return func(ts *store.TaskSpec) { ts.Timeout = d } }

func retries(n int, delay, maxBackoff time.Duration) taskOpt {
	return func(ts *store.TaskSpec) { ts.Retries, ts.RetryDelay, ts.MaxBackoff = n, delay, maxBackoff }
}

// tk is a task spec: a func task with rule all_success by default.
func tk(id string, opts ...taskOpt) store.TaskSpec {
	ts := store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: 10 * time.Second}
	for _, o := range opts {
		o(&ts)
	}
	return ts
}

// newSpec is a DAG spec with a fingerprint computed from its content.
func newSpec(dagID string, tasks ...store.TaskSpec) store.DAGSpec {
	sp := store.DAGSpec{DAGID: dagID, Schedule: "@daily", Description: "dag " + dagID, Tags: []string{"suite"},
		MaxActiveRuns: 16, MaxActiveTasks: 0, Tasks: tasks}
	return fingerprint(sp)
}

func fingerprint(sp store.DAGSpec) store.DAGSpec {
	sp.Fingerprint = ""
	b, err := json.Marshal(sp)
	if err != nil {
		panic(err) // plain data: cannot fail
	}
	sum := sha256.Sum256(b)
	sp.Fingerprint = hex.EncodeToString(sum[:16])
	return sp
}

func (e *env) sync(specs ...store.DAGSpec) {
	e.t.Helper()
	if err := e.s.SyncDAGs(e.ctx, specs); err != nil {
		e.t.Fatalf("SyncDAGs: %v", err)
	}
}

// newRun creates a manual run of sp for logical date ld.
func (e *env) newRun(sp store.DAGSpec, runID string, ld time.Time) store.Run {
	e.t.Helper()
	r, created, err := e.s.CreateRun(e.ctx, store.NewRun{DAGID: sp.DAGID, RunID: runID, RunType: store.RunManual,
		LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld.Add(24 * time.Hour), Fingerprint: sp.Fingerprint,
		QueuedAt: ld})
	if err != nil {
		e.t.Fatalf("CreateRun %s/%s: %v", sp.DAGID, runID, err)
	}
	if !created {
		e.t.Fatalf("CreateRun %s/%s: created=false for a new run", sp.DAGID, runID)
	}
	return r
}

// started syncs sp, creates one run and starts it.
func (e *env) started(sp store.DAGSpec, runID string) store.Run {
	e.t.Helper()
	e.sync(sp)
	r := e.newRun(sp, runID, t0)
	runs := e.start(sp.DAGID)
	if len(runs) != 1 || runs[0].ID != r.ID {
		e.t.Fatalf("StartRuns(%s) = %v, want run %d", sp.DAGID, runs, r.ID)
	}
	return runs[0]
}

func (e *env) start(dagID string) []store.Run {
	e.t.Helper()
	runs, err := e.s.StartRuns(e.ctx, dagID, t0.Add(time.Minute))
	if err != nil {
		e.t.Fatalf("StartRuns(%s): %v", dagID, err)
	}
	return runs
}

func (e *env) claim(n int) []store.Claimed {
	e.t.Helper()
	return e.claimAt(n, t0.Add(2*time.Minute))
}

func (e *env) claimAt(n int, now time.Time) []store.Claimed {
	e.t.Helper()
	cs, err := e.s.ClaimTasks(e.ctx, e.w, n, now)
	if err != nil {
		e.t.Fatalf("ClaimTasks: %v", err)
	}
	return cs
}

// claimOne claims exactly one instance and checks its task id.
func (e *env) claimOne(task string) store.Claimed {
	e.t.Helper()
	cs := e.claim(1)
	if len(cs) != 1 || cs[0].TaskID != task {
		e.t.Fatalf("claimed %v, want task %s", taskIDs(cs), task)
	}
	return cs[0]
}

func (e *env) finish(rs ...store.Result) []store.FinishOutcome {
	e.t.Helper()
	out, err := e.s.FinishTasks(e.ctx, rs)
	if err != nil {
		e.t.Fatalf("FinishTasks: %v", err)
	}
	if len(out) != len(rs) {
		e.t.Fatalf("FinishTasks returned %d outcomes for %d results", len(out), len(rs))
	}
	return out
}

// result is the outcome st of claimed instance c, ended at t0+3m.
func result(c store.Claimed, st state.TaskState) store.Result {
	return store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: st, EndedAt: t0.Add(3 * time.Minute)}
}

func (e *env) ti(dagID, runID, task string) store.TaskInstance {
	e.t.Helper()
	ti, err := e.s.GetTaskInstance(e.ctx, dagID, runID, task)
	if err != nil {
		e.t.Fatalf("GetTaskInstance(%s, %s, %s): %v", dagID, runID, task, err)
	}
	return ti
}

func (e *env) run(dagID, runID string) store.Run {
	e.t.Helper()
	r, err := e.s.GetRun(e.ctx, dagID, runID)
	if err != nil {
		e.t.Fatalf("GetRun(%s, %s): %v", dagID, runID, err)
	}
	return r
}

// states returns task id → state of a run.
func (e *env) states(dagID, runID string) map[string]state.TaskState {
	e.t.Helper()
	tis, _, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{dagID}, DAGRunIDs: []string{runID}})
	if err != nil {
		e.t.Fatalf("ListTaskInstances: %v", err)
	}
	m := map[string]state.TaskState{}
	for _, ti := range tis {
		m[ti.TaskID] = ti.State
	}
	return m
}

// wantStates checks the states of the named tasks of a run.
func (e *env) wantStates(dagID, runID string, want map[string]state.TaskState) {
	e.t.Helper()
	got := e.states(dagID, runID)
	for task, st := range want {
		if got[task] != st {
			e.t.Errorf("%s/%s task %s: state %q, want %q (all: %v)", dagID, runID, task, got[task], st, got)
		}
	}
}

func (e *env) wantRunState(dagID, runID string, want state.RunState) store.Run {
	e.t.Helper()
	r := e.run(dagID, runID)
	if r.State != want {
		e.t.Errorf("run %s/%s: state %q, want %q", dagID, runID, r.State, want)
	}
	return r
}

// drive claims and finishes until nothing is queued, batch instances at a
// time, with the outcomes outcome gives.
func (e *env) drive(batch int, outcome func(c store.Claimed) store.Result) int {
	e.t.Helper()
	n := 0
	for i := 0; i < 100000; i++ {
		cs := e.claim(batch)
		if len(cs) == 0 {
			return n
		}
		rs := make([]store.Result, len(cs))
		for i, c := range cs {
			rs[i] = outcome(c)
		}
		for i, o := range e.finish(rs...) {
			if !o.Applied {
				e.t.Fatalf("finish of %s try %d not applied", cs[i].TaskID, cs[i].TryNumber)
			}
		}
		n += len(cs)
	}
	e.t.Fatalf("drive: still tasks after 100000 rounds")
	return n
}

// att is the try of a claimed instance.
func att(c store.Claimed) store.Try { return store.Try{ID: c.ID, TryNumber: c.TryNumber} }

func succeed(c store.Claimed) store.Result { return result(c, state.Success) }

func taskIDs(cs []store.Claimed) []string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.TaskID
	}
	return ids
}

// wantErr checks err wraps target.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want %v", what, err, target)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func ptr[T any](v T) *T { return &v }

func names(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return out
}
