package executor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/executor/internal/testdags"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// limitSet is what the running instances may not exceed: slots per pool,
// instances per task ("dag.task") and per rendered concurrency key.
type limitSet struct {
	pools, tasks, keys map[string]int
}

// exceeded returns the first limit the instances exceed, or "".
func (l limitSet) exceeded(running []store.TaskInstance) string {
	pools, tasks, keys := map[string]int{}, map[string]int{}, map[string]int{}
	for _, ti := range running {
		pools[ti.Pool] += ti.PoolSlots
		tasks[ti.DAGID+"."+ti.TaskID]++
		if ti.ConcurrencyKey != "" {
			keys[ti.ConcurrencyKey]++
		}
	}
	for _, c := range []struct {
		what      string
		used, lim map[string]int
	}{{"pool", pools, l.pools}, {"task", tasks, l.tasks}, {"key", keys, l.keys}} {
		for name, n := range c.used {
			if lim, ok := c.lim[name]; ok && n > lim {
				return fmt.Sprintf("%s %s holds %d, limit %d", c.what, name, n, lim)
			}
		}
	}
	return ""
}

// limitSampler reads the running instances from the store throughout a
// test and checks them against a limitSet (which the test may change,
// for a resized pool, through set).
type limitSampler struct {
	mu      sync.Mutex
	lim     limitSet
	bad     string
	samples int
	peak    map[string]int // most slots of a pool seen at once
	stop    chan struct{}
	done    chan struct{}
}

func startLimitSampler(t *testing.T, st store.Store, lim limitSet) *limitSampler {
	s := &limitSampler{lim: lim, peak: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			tis, _, err := st.ListTaskInstances(context.Background(), store.TaskQuery{
				States: []state.TaskState{state.Running, state.Restarting}, Limit: 1000})
			if err != nil {
				s.mu.Lock()
				s.bad = fmt.Sprintf("list running instances: %v", err)
				s.mu.Unlock()
				return
			}
			pools := map[string]int{}
			for _, ti := range tis {
				pools[ti.Pool] += ti.PoolSlots
			}
			s.mu.Lock()
			s.samples++
			for p, n := range pools {
				s.peak[p] = max(s.peak[p], n)
			}
			if bad := s.lim.exceeded(tis); bad != "" && s.bad == "" {
				s.bad = fmt.Sprintf("sampled from the store: %s (running: %s)", bad, describeRunning(tis))
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.finish)
	return s
}

func describeRunning(tis []store.TaskInstance) string {
	var out []string
	for _, ti := range tis {
		out = append(out, fmt.Sprintf("%s/%s/%s@%s", ti.DAGID, ti.DAGRunID, ti.TaskID, ti.Hostname))
	}
	return strings.Join(out, " ")
}

// setPool changes a pool's limit (a resize the test made).
func (s *limitSampler) setPool(name string, slots int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lim.pools[name] = slots
}

func (s *limitSampler) finish() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// check stops the sampler and fails the test if a sample exceeded a
// limit or none was taken.
func (s *limitSampler) check(t *testing.T) {
	t.Helper()
	s.finish()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bad != "" {
		t.Error(s.bad)
	}
	if s.samples == 0 {
		t.Error("the sampler read the store no time")
	}
	t.Logf("%d samples of the running instances; most pool slots in use at once: %v", s.samples, s.peak)
}

// recordedTry is one try of a limit DAG's task as its function recorded
// it (testdags.LimitStartName, LimitEndName).
type recordedTry struct {
	dagID, runID, taskID string
	try                  int
	start, end           int64 // Unix ns; end 0 = the try never returned
}

// readTries reads every try the limit DAGs' tasks recorded in dir.
func readTries(t *testing.T, dir string) []recordedTry {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]*recordedTry{}
	for _, e := range entries {
		dagID, runID, taskID, try, end, ok := testdags.ParseLimitName(e.Name())
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		k := fmt.Sprintf("%s/%s/%s/%d", dagID, runID, taskID, try)
		r := byKey[k]
		if r == nil {
			r = &recordedTry{dagID: dagID, runID: runID, taskID: taskID, try: try}
			byKey[k] = r
		}
		if end {
			if _, err := fmt.Sscanf(string(b), "%d %d", &r.start, &r.end); err != nil {
				t.Fatalf("%s: %q: %v", e.Name(), b, err)
			}
		} else if r.end == 0 {
			if _, err := fmt.Sscanf(string(b), "%d", &r.start); err != nil {
				t.Fatalf("%s: %q: %v", e.Name(), b, err)
			}
		}
	}
	out := make([]recordedTry, 0, len(byKey))
	for _, r := range byKey {
		out = append(out, *r)
	}
	return out
}

// checkRecordedTries replays the recorded tries in time order (a try that
// never returned ends at openEnd) and fails at the first moment the
// functions running at once exceed a limit. The pool, slots and key of
// each try are its instance's, read from the store. It returns the most
// slots of each pool in use at once.
func checkRecordedTries(t *testing.T, st store.Store, lim limitSet, tries []recordedTry, openEnd int64) map[string]int {
	t.Helper()
	tis := map[string]store.TaskInstance{}
	dagIDs := map[string]bool{}
	for _, r := range tries {
		dagIDs[r.dagID] = true
	}
	for id := range dagIDs {
		list, _, err := st.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{id}, Limit: 100000})
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range list {
			tis[ti.DAGID+"/"+ti.DAGRunID+"/"+ti.TaskID] = ti
		}
	}
	type event struct {
		at    int64
		start bool
		key   string
	}
	var evs []event
	for i, r := range tries {
		end := r.end
		if end == 0 {
			end = openEnd
		}
		if end < r.start {
			t.Fatalf("try %+v ends before it starts", r)
		}
		k := fmt.Sprintf("%s/%s/%s", r.dagID, r.runID, r.taskID)
		if _, ok := tis[k]; !ok {
			t.Fatalf("recorded try of %s, which the store does not know", k)
		}
		evs = append(evs, event{r.start, true, fmt.Sprintf("%s#%d", k, i)}, event{end, false, fmt.Sprintf("%s#%d", k, i)})
	}
	// Ends first at equal times: a try that ended when another started
	// did not run beside it.
	slices.SortFunc(evs, func(a, b event) int {
		if a.at != b.at {
			return int(min(max(a.at-b.at, -1), 1))
		}
		if a.start == b.start {
			return 0
		}
		if a.start {
			return 1
		}
		return -1
	})
	running := map[string]store.TaskInstance{}
	peak := map[string]int{}
	for _, e := range evs {
		if !e.start {
			delete(running, e.key)
			continue
		}
		running[e.key] = tis[e.key[:strings.LastIndex(e.key, "#")]]
		list := make([]store.TaskInstance, 0, len(running))
		slots := map[string]int{}
		for _, ti := range running {
			list = append(list, ti)
			slots[ti.Pool] += ti.PoolSlots
		}
		for p, n := range slots {
			peak[p] = max(peak[p], n)
		}
		if bad := lim.exceeded(list); bad != "" {
			t.Fatalf("recorded tries at %s: %s (running: %s)", time.Unix(0, e.at).Format(time.RFC3339Nano), bad, describeRunning(list))
		}
	}
	return peak
}

// limitsSetup is a fresh store with the test DAGs and a pool of worker
// processes.
type limitsSetup struct {
	url  string
	st   store.Store
	env  procEnv
	logs *syncBuffer
	reg  *dag.Registry
}

func newLimitsSetup(t *testing.T, url string) limitsSetup {
	st := openStore(t, url)
	reg := testdags.Registry()
	syncDAGs(t, st, reg.DAGs()...)
	return limitsSetup{url: url, st: st, env: newProcEnv(t), logs: &syncBuffer{}, reg: reg}
}

func (s limitsSetup) createPool(t *testing.T, name string, slots int) {
	t.Helper()
	if _, err := s.st.CreatePool(context.Background(), store.PoolSpec{Name: name, Slots: slots}); err != nil {
		t.Fatalf("create pool %s: %v", name, err)
	}
}

func (s limitsSetup) wantSuccess(t *testing.T, dagID, runID string, timeout time.Duration) {
	t.Helper()
	if run := waitRun(t, s.st, dagID, runID, timeout); run.State != state.RunSuccess {
		t.Fatalf("run %s/%s = %s, want success; tasks: %s", dagID, runID, run.State, describeTasks(t, s.st, dagID, runID))
	}
}

// wantPoolIdle checks a pool's counters once nothing runs or waits in it.
func (s limitsSetup) wantPoolIdle(t *testing.T, name string, slots int) {
	t.Helper()
	p, err := s.st.GetPool(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if p.RunningSlots != 0 || p.QueuedSlots != 0 || p.OpenSlots() != slots {
		t.Errorf("pool %s after the runs: %+v (open %d), want nothing running or queued and %d open", name, p, p.OpenSlots(), slots)
	}
}

// running lists the running instances of a DAG.
func (s limitsSetup) running(t *testing.T, dagID string) []store.TaskInstance {
	t.Helper()
	tis, _, err := s.st.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{dagID},
		States: []state.TaskState{state.Running}, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return tis
}

func (s limitsSetup) release(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.env.dir, testdags.ReleaseName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

var holdConf = json.RawMessage(`{"hold": true}`)

// TestLimitsRealWorkers runs the concurrency limits on real worker
// processes (testbin children, as `trellis serve` runs them) on both
// stores. The limits are checked twice: by sampling the running
// instances from the store throughout, and afterwards by replaying the
// start and end times the tasks' functions recorded.
func TestLimitsRealWorkers(t *testing.T) {
	bin := buildTestbin(t)
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			t.Run("PoolTaskAndKey", func(t *testing.T) { testLimitsPoolTaskAndKey(t, bin, be.url(t)) })
			t.Run("SaturatedKeyAndResize", func(t *testing.T) { testLimitsSaturatedKeyAndResize(t, bin, be.url(t)) })
			t.Run("WorkerSIGKILL", func(t *testing.T) { testLimitsWorkerSIGKILL(t, bin, be.url(t)) })
		})
	}
}

// testLimitsPoolTaskAndKey: 3 worker processes × 16 slots; 200 queued
// tasks in a pool of 3, a task with MaxActive 2 in 12 runs and 24 tasks
// under two concurrency keys of limit 1, all at once: never above a
// limit, every task succeeds, the pool's counters end at zero.
func testLimitsPoolTaskAndKey(t *testing.T, bin, url string) {
	s := newLimitsSetup(t, url)
	s.createPool(t, testdags.LimitPoolName, 3)
	lim := limitSet{
		pools: map[string]int{testdags.LimitPoolName: 3},
		tasks: map[string]int{testdags.LimitCap + ".capped": testdags.LimitCapMax},
		keys:  map[string]int{"cust:a": 1, "cust:b": 1},
	}
	sampler := startLimitSampler(t, s.st, lim)
	newTestPool(t, bin, s.url, s.st, s.env, s.logs, func(c *PoolConfig) { c.Processes, c.Slots = 3, 16 })
	pool, capped, keys := s.reg.Lookup(testdags.LimitPool), s.reg.Lookup(testdags.LimitCap), s.reg.Lookup(testdags.LimitKeys)
	startRun(t, s.st, pool, "r1", nil)
	for i := range 12 {
		startRun(t, s.st, capped, fmt.Sprintf("c%02d", i), nil)
	}
	for i, c := range []string{"a", "a", "b"} {
		startRun(t, s.st, keys, fmt.Sprintf("k%d", i), json.RawMessage(fmt.Sprintf(`{"customer": %q}`, c)))
	}
	s.wantSuccess(t, pool.ID(), "r1", 3*time.Minute)
	for i := range 12 {
		s.wantSuccess(t, capped.ID(), fmt.Sprintf("c%02d", i), time.Minute)
	}
	for i := range 3 {
		s.wantSuccess(t, keys.ID(), fmt.Sprintf("k%d", i), time.Minute)
	}
	sampler.check(t)
	tries := readTries(t, s.env.dir)
	if want := testdags.LimitPoolTasks + 12 + 3*testdags.LimitKeyTasks; len(tries) != want {
		t.Fatalf("%d tries recorded, want %d (one per task)", len(tries), want)
	}
	peak := checkRecordedTries(t, s.st, lim, tries, 0)
	t.Logf("most pool slots the recorded tries held at once: %v", peak)
	s.wantPoolIdle(t, testdags.LimitPoolName, 3)
}

// testLimitsSaturatedKeyAndResize: with the claim loop's safety poll
// turned off (an hour), so that only wake-ups make workers claim:
//   - a key saturated by a task that holds it does not delay the tasks of
//     other keys, though its own queued instances come first by priority;
//   - a pool of 1 with 6 queued tasks that hold their slot runs one;
//     resized to 4 it runs 4, without any task finishing: the resize
//     woke the workers.
func testLimitsSaturatedKeyAndResize(t *testing.T, bin, url string) {
	s := newLimitsSetup(t, url)
	s.createPool(t, testdags.LimitGrowPool, 1)
	lim := limitSet{pools: map[string]int{testdags.LimitGrowPool: 1}, keys: map[string]int{"hot": 1}}
	for i := range testdags.LimitColdTasks {
		lim.keys[fmt.Sprintf("cold:c%02d", i)] = 1
	}
	sampler := startLimitSampler(t, s.st, lim)
	newTestPool(t, bin, s.url, s.st, s.env, s.logs, func(c *PoolConfig) {
		c.Processes, c.Slots, c.PollInterval = 2, 8, time.Hour
	})
	hot, cold, grow := s.reg.Lookup(testdags.LimitHot), s.reg.Lookup(testdags.LimitCold), s.reg.Lookup(testdags.LimitGrow)

	startRun(t, s.st, hot, "r1", holdConf)
	waitCond(t, time.Minute, "a hot task to run", func() bool { return len(s.running(t, hot.ID())) == 1 })
	startRun(t, s.st, cold, "r1", nil)
	s.wantSuccess(t, cold.ID(), "r1", time.Minute)
	if n := len(s.running(t, hot.ID())); n != 1 {
		t.Fatalf("%d hot tasks running after the cold run, want 1 (still held, its key saturated)", n)
	}

	startRun(t, s.st, grow, "r1", holdConf)
	waitCond(t, time.Minute, "a task of the pool of 1 to run", func() bool { return len(s.running(t, grow.ID())) == 1 })
	sampler.setPool(testdags.LimitGrowPool, 4)
	if _, err := s.st.UpdatePool(context.Background(), testdags.LimitGrowPool, store.PoolPatch{Slots: ptrTo(4)}); err != nil {
		t.Fatal(err)
	}
	waitCond(t, time.Minute, "4 tasks of the resized pool to run", func() bool { return len(s.running(t, grow.ID())) == 4 })
	for _, id := range []string{hot.ID(), grow.ID()} {
		for _, ti := range tasksOf(t, s.st, id, "r1") {
			if ti.State == state.Success {
				t.Fatalf("%s/%s succeeded before the release: the test did not hold the limits full", id, ti.TaskID)
			}
		}
	}
	s.release(t)
	s.wantSuccess(t, hot.ID(), "r1", time.Minute)
	s.wantSuccess(t, grow.ID(), "r1", time.Minute)
	sampler.check(t)
	lim.pools[testdags.LimitGrowPool] = 4
	checkRecordedTries(t, s.st, lim, readTries(t, s.env.dir), 0)
	s.wantPoolIdle(t, testdags.LimitGrowPool, 4)
}

func ptrTo[T any](v T) *T { return &v }

// testLimitsWorkerSIGKILL: a remote worker host (a pool process and its
// worker child) holds all 3 slots of a pool when both processes are
// SIGKILLed at once, so nobody puts its tries back; a second pool waits
// meanwhile. The scheduler's dead-worker sweep (WorkerDeadAfter) puts the
// tries back, the slots come back, the run succeeds, and the limit held
// throughout: the killed tries count as running until the sweep, both in
// the store's samples and in the replay (which ends them at the kill).
func testLimitsWorkerSIGKILL(t *testing.T, bin, url string) {
	s := newLimitsSetup(t, url)
	s.createPool(t, testdags.LimitPoolName, 3)
	lim := limitSet{pools: map[string]int{testdags.LimitPoolName: 3}}
	sampler := startLimitSampler(t, s.st, lim)
	sched := scheduler.New(scheduler.Config{Store: s.st, Registry: s.reg, Logger: testLogger(t),
		ZombieCheckInterval: 200 * time.Millisecond, WorkerDeadAfter: 5 * time.Second})
	if err := sched.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer sched.Stop()
	pool := s.reg.Lookup(testdags.LimitPool)
	startRun(t, s.st, pool, "r1", holdConf)

	remote := startPoolProcess(t, bin, s.url, s.env, "--processes", "1", "--slots", "16", "--hostname", "host-b",
		"--heartbeat", "200ms")
	var held []store.TaskInstance
	waitCond(t, time.Minute, "the remote worker to run 3 tasks of the pool of 3", func() bool {
		held = s.running(t, pool.ID())
		return len(held) == 3
	})
	for _, ti := range held {
		if ti.Hostname != "host-b" {
			t.Fatalf("%s runs on %q, want host-b (the only worker)", ti.TaskID, ti.Hostname)
		}
		name := testdags.LimitStartName(pool.ID(), "r1", ti.TaskID, ti.TryNumber)
		waitCond(t, time.Minute, name, func() bool { return fileExists(filepath.Join(s.env.dir, name)) })
	}
	local := newTestPool(t, bin, s.url, s.st, s.env, s.logs, func(c *PoolConfig) {
		c.Processes, c.Slots, c.Hostname = 2, 16, "host-a"
	})

	// The whole host dies at once: stop both processes, then kill them,
	// so that neither sees the other die. kill(2) returns before a
	// process has stopped (its threads stop as each next enters the
	// kernel): wait for every thread to be stopped, or the pool process
	// may still see its child die and put the tries back itself.
	tree := processTree(t, remote.cmd.Process.Pid)
	for _, pid := range tree {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	for _, pid := range tree {
		waitCond(t, 30*time.Second, fmt.Sprintf("every thread of process %d to stop", pid), func() bool {
			return allThreadsStopped(t, pid)
		})
	}
	for _, pid := range slices.Backward(tree) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	waitFor(t, remote.done, 30*time.Second, "the killed pool process to exit")
	waitCond(t, 30*time.Second, "the killed worker child to be gone", func() bool {
		for _, pid := range tree {
			if alive(pid) {
				return false
			}
		}
		return true
	})
	killed := time.Now().UnixNano()
	// The killed tries end at the kill. They are put back keeping their
	// try numbers, so their trace files are overwritten when they run
	// again: read them now.
	dead := readTries(t, s.env.dir)
	if len(dead) != 3 {
		t.Fatalf("%d tries recorded before the release, want the 3 killed", len(dead))
	}
	for i := range dead {
		if dead[i].end != 0 {
			t.Fatalf("try %+v ended though it holds until the release", dead[i])
		}
		dead[i].end = killed
	}
	s.release(t)

	s.wantSuccess(t, pool.ID(), "r1", 3*time.Minute)
	sampler.check(t)
	if strings.Contains(remote.out.String(), "put back the tries of a dead worker") {
		t.Errorf("the killed pool process put its worker's tries back before it died, so the host did not die at once; its output:\n%s", remote.out.String())
	}
	tis := tasksOf(t, s.st, pool.ID(), "r1")
	for _, h := range held {
		ti := tis[h.TaskID]
		if ti.Hostname != "host-a" {
			t.Errorf("%s (held by the killed worker) ended on %q, want host-a after the sweep put it back", h.TaskID, ti.Hostname)
		}
	}
	checkRecordedTries(t, s.st, lim, append(readTries(t, s.env.dir), dead...), 0)
	s.wantPoolIdle(t, testdags.LimitPoolName, 3)
	local.Stop()
	s.env.assertNothingLeft(t)
}

// allThreadsStopped reports whether every thread of process pid is
// stopped (state T, or t when traced).
func allThreadsStopped(t *testing.T, pid int) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("list threads of %d: %v", pid, err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			return false // a thread exiting: look again
		}
		p, err := parseStat(b)
		if err != nil {
			t.Fatal(err)
		}
		if p.State != 'T' && p.State != 't' {
			return false
		}
	}
	return len(entries) > 0
}
