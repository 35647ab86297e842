package executor

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/executor/internal/testdags"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// buildTestbin builds executor/internal/testbin into a temporary folder.
func buildTestbin(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "testbin")
	cmd := exec.Command("go", "build", "-o", bin, "./internal/testbin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build testbin: %v\n%s", err, out)
	}
	return bin
}

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// procEnv is the environment a process test gives everything it starts:
// the trace folder of package testdags and a tag that marks every
// descendant, to find processes left behind.
type procEnv struct {
	dir, tag string
}

func newProcEnv(t testing.TB) procEnv {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return procEnv{dir: t.TempDir(), tag: testdags.EnvTag + "=" + hex.EncodeToString(b[:])}
}

func (e procEnv) vars() []string { return []string{testdags.EnvDir + "=" + e.dir, e.tag} }

// tagged lists the live processes carrying the tag (zombies, whose
// environment is gone, are not listed).
func (e procEnv) tagged() []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if processEnvironHas(pid, e.tag) {
			out = append(out, pid)
		}
	}
	return out
}

// assertNothingLeft fails if a tagged process is still alive (after a
// short wait for processes being killed right now).
func (e procEnv) assertNothingLeft(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := e.tagged()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var desc []string
			for _, pid := range left {
				cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				desc = append(desc, fmt.Sprintf("%d:%s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
			}
			t.Fatalf("processes left behind: %v", desc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newTestPool starts an in-process Pool of testbin children.
func newTestPool(t testing.TB, bin, url string, st store.Store, env procEnv, logs *syncBuffer, tweak func(*PoolConfig)) *Pool {
	t.Helper()
	cfg := PoolConfig{
		Store: st, DatabaseURL: url,
		Logger:     slog.New(slog.NewTextHandler(logs, nil)),
		Executable: bin, Args: []string{"child"}, Env: env.vars(),
		Stdout: logs, Stderr: logs,
		Processes: 2, Slots: 4,
		HeartbeatInterval: 100 * time.Millisecond, Grace: 2 * time.Second, KillGrace: 300 * time.Millisecond,
		RestartBackoff: 20 * time.Millisecond, ReapInterval: 200 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatalf("new pool: %v", err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatalf("start pool: %v", err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("pool and worker logs:\n%s", logs.String())
		}
	})
	return p
}

// poolProcess is a separately started testbin process (`testbin pool`,
// or `testbin scheduler`).
type poolProcess struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startPoolProcess(t testing.TB, bin, url string, env procEnv, args ...string) *poolProcess {
	t.Helper()
	return startTestbin(t, bin, url, env, "pool", args...)
}

// startTestbin starts testbin in role with args; it is stopped (SIGTERM,
// then SIGKILL) when the test ends.
func startTestbin(t testing.TB, bin, url string, env procEnv, role string, args ...string) *poolProcess {
	t.Helper()
	pp := &poolProcess{out: &syncBuffer{}, done: make(chan struct{})}
	pp.cmd = exec.Command(bin, append([]string{role}, args...)...)
	pp.cmd.Env = append(append(os.Environ(), env.vars()...), EnvDatabaseURL+"="+url)
	pp.cmd.Stdout, pp.cmd.Stderr = pp.out, pp.out
	if err := pp.cmd.Start(); err != nil {
		t.Fatalf("start testbin %s: %v", role, err)
	}
	go func() { pp.err = pp.cmd.Wait(); close(pp.done) }()
	t.Cleanup(func() {
		select {
		case <-pp.done:
		default:
			_ = pp.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-pp.done:
			case <-time.After(20 * time.Second):
				_ = pp.cmd.Process.Kill()
				<-pp.done
			}
		}
		if t.Failed() {
			t.Logf("testbin %v output:\n%s", pp.cmd.Args, pp.out.String())
		}
	})
	return pp
}

func (pp *poolProcess) stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := pp.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal pool process: %v", err)
	}
	waitFor(t, pp.done, 30*time.Second, "the pool process to exit")
}

// markerTimes reads the start and end a chaos task recorded for try.
func markerTimes(dir, taskID string, try int) (start, end int64, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, testdags.MarkerName(taskID, try)))
	if err != nil {
		return 0, 0, false
	}
	_, err = fmt.Sscanf(string(b), "%d %d", &start, &end)
	return start, end, err == nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	p, err := parseStat(b)
	return err == nil && p.State != 'Z'
}

// TestPool runs the process tests: real worker processes of testbin
// (built once here) against PostgreSQL.
func TestPool(t *testing.T) {
	bin := buildTestbin(t)
	t.Run("Isolation", func(t *testing.T) { testPoolIsolation(t, bin) })
	t.Run("Orphans", func(t *testing.T) { testPoolOrphans(t, bin) })
	t.Run("DeathPutsBackAndPoison", func(t *testing.T) { testPoolDeathPutsBack(t, bin) })
	t.Run("MemoryLimit", func(t *testing.T) { testPoolMemoryLimit(t, bin) })
	t.Run("Chaos", func(t *testing.T) { testPoolChaos(t, bin) })
	t.Run("ChaosSchedulerKilled", func(t *testing.T) { testPoolChaosScheduler(t, bin) })
	t.Run("RemoteWorkerTakesShare", func(t *testing.T) { testPoolRemoteWorkerTakesShare(t, bin) })
	t.Run("GracefulShutdownRequeues", func(t *testing.T) { testPoolGracefulShutdownRequeues(t, bin) })
	t.Run("SecondSignalHalts", func(t *testing.T) { testPoolSecondSignalHalts(t, bin) })
	t.Run("ControlGroupSIGTERM", func(t *testing.T) { testPoolControlGroupSIGTERM(t, bin) })
	t.Run("SupervisorKilled", func(t *testing.T) { testPoolSupervisorKilled(t, bin) })
}

func testPoolIsolation(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	logs := &syncBuffer{}
	p := newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) { c.MaxLeaks = 1 })
	defer retrier(t, st)()

	d := testdags.Registry().Lookup(testdags.Isolation)
	startRun(t, st, d, "r1", nil)
	waitRun(t, st, d.ID(), "r1", 60*time.Second)
	tis := tasksOf(t, st, d.ID(), "r1")
	for _, id := range testdags.IsolationOK {
		if ti := tis[id]; ti.State != state.Success {
			t.Errorf("%s = %s (try %d, error %q), want success", id, ti.State, ti.TryNumber, ti.Error)
		}
	}
	for _, id := range testdags.IsolationFailing {
		if ti := tis[id]; ti.State != state.Failed {
			t.Errorf("%s = %s (try %d, error %q), want failed", id, ti.State, ti.TryNumber, ti.Error)
		}
	}
	waitLog(t, st, d.ID(), "r1", "panics", 1, "panic: boom from the panics task", "goroutine ") // with its stack trace
	if e := tis["hang"].Error; !strings.Contains(e, "abandoned") {
		t.Errorf("hang error = %q, want the abandoned function reported", e)
	}
	if e := tis["exit3"].Error; e == "" {
		t.Error("exit3 has no error; want its dead worker reported")
	}
	// The background process of shell_bg died with its task.
	b, err := os.ReadFile(filepath.Join(env.dir, testdags.BackgroundPIDName))
	if err != nil {
		t.Fatalf("shell_bg did not record its background pid: %v", err)
	}
	bgPID, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitCond(t, 5*time.Second, fmt.Sprintf("background process %d to be gone", bgPID), func() bool { return !alive(bgPID) })

	// One child was recycled for the abandoned goroutine, one died of
	// os.Exit(3); both were replaced.
	waitCond(t, 10*time.Second, "two restarts", func() bool { return p.Restarts() >= 2 })
	for _, want := range []string{"worker process recycled after abandoning task goroutines", "worker process died"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("pool log lacks %q", want)
		}
	}
	waitCond(t, 10*time.Second, "two live worker processes (the replacements)", func() bool { return p.Workers() == 2 })
	p.Stop()
	env.assertNothingLeft(t)
	if ws, err := st.ListWorkers(context.Background()); err != nil || len(ws) != 0 {
		t.Errorf("workers registered after Stop: %v (err %v), want none", ws, err)
	}
}

// testPoolDeathPutsBack: a task that kills its worker process does not
// cost the tasks beside it a try — they are put back and succeed on their
// first try — and is itself failed once the second worker running it
// died, its error naming the exit status and quoting its last log lines.
func testPoolDeathPutsBack(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	logs := &syncBuffer{}
	newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) { c.Processes, c.Slots = 1, 16 })

	d := testdags.Registry().Lookup(testdags.Crash)
	startRun(t, st, d, "r1", nil)
	waitRun(t, st, d.ID(), "r1", 60*time.Second)
	tis := tasksOf(t, st, d.ID(), "r1")
	for i := range testdags.CrashBystanders {
		id := fmt.Sprintf("by_%d", i)
		if ti := tis[id]; ti.State != state.Success || ti.TryNumber != 1 {
			t.Errorf("%s = %s on try %d (%q), want success on try 1: its worker's death is not its fault", id, ti.State, ti.TryNumber, ti.Error)
		}
	}
	c := tis["crasher"]
	if c.State != state.Failed || c.TryNumber != 1 {
		t.Errorf("crasher = %s on try %d, want failed on try 1", c.State, c.TryNumber)
	}
	for _, want := range []string{"exit status 3", "died twice", testdags.CrashLastWords} {
		if !strings.Contains(c.Error, want) {
			t.Errorf("crasher error %q lacks %q", c.Error, want)
		}
	}
}

// testPoolMemoryLimit: a task allocating more than the worker memory
// limit kills its worker process (twice: it is put back once), and is
// then failed; the same task succeeds without the limit.
func testPoolMemoryLimit(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	logs := &syncBuffer{}
	p := newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) { c.Processes, c.MemoryLimit = 1, 256<<20 })
	d := testdags.Registry().Lookup(testdags.Hog)
	startRun(t, st, d, "r1", nil)
	waitRun(t, st, d.ID(), "r1", 60*time.Second)
	if ti := tasksOf(t, st, d.ID(), "r1")["hog"]; ti.State != state.Failed || !strings.Contains(ti.Error, "died twice") {
		t.Errorf("hog under a 256 MiB limit = %s (%q), want failed after killing two workers", ti.State, ti.Error)
	}
	waitCond(t, 60*time.Second, "two worker restarts", func() bool { return p.Restarts() >= 2 })
	p.Stop()

	newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) { c.Processes = 1 })
	startRun(t, st, d, "r2", nil)
	if run := waitRun(t, st, d.ID(), "r2", 60*time.Second); run.State != state.RunSuccess {
		t.Errorf("hog without a limit: run %s, want success", run.State)
	}
}

// readPID reads a pid a task wrote into the trace folder.
func readPID(t *testing.T, dir, name string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s = %q: %v", name, b, err)
	}
	return pid
}

func testPoolOrphans(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	logs := &syncBuffer{}
	p := newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) { c.Processes = 1 })

	d := testdags.Registry().Lookup(testdags.Orphans)
	startRun(t, st, d, "r1", nil)
	waitRun(t, st, d.ID(), "r1", 60*time.Second)
	tis := tasksOf(t, st, d.ID(), "r1")
	for id, want := range map[string]state.TaskState{"daemon": state.Success, "stuck_shell": state.Failed, "crash": state.Failed} {
		if ti := tis[id]; ti.State != want {
			t.Errorf("%s = %s (%q), want %s", id, ti.State, ti.Error, want)
		}
	}
	// The shell of stuck_shell and its background child were orphaned
	// when crash killed their worker process; the daemon left its task's
	// process group. The supervisor killed them all.
	for _, name := range []string{testdags.StuckPIDName, testdags.StuckBGPIDName, testdags.DaemonPIDName} {
		pid := readPID(t, env.dir, name)
		waitCond(t, 10*time.Second, fmt.Sprintf("process %d (%s) to be killed", pid, name), func() bool { return !alive(pid) })
	}
	waitCond(t, 10*time.Second, "the pool to log the processes it killed", func() bool {
		return strings.Contains(logs.String(), "killed processes left behind")
	})
	waitCond(t, 10*time.Second, "the crashed worker process to be replaced", func() bool { return p.Restarts() >= 1 })
	p.Stop()
	env.assertNothingLeft(t)
}

func testPoolChaos(t *testing.T, bin string) {
	c := startChaos(t, bin)
	st, env, p, d := c.st, c.env, c.pool, c.dag
	defer retrier(t, st)()
	startRun(t, st, d, "r1", nil)
	for k := range 3 {
		time.Sleep(time.Duration(100+mrand.IntN(200)) * time.Millisecond) // a random moment, on purpose
		run, err := st.GetRun(context.Background(), d.ID(), "r1")
		if err != nil {
			t.Fatal(err)
		}
		if run.State.Terminal() {
			t.Fatalf("the run ended before kill %d; the chaos DAG is too short", k+1)
		}
		pids := p.PIDs()
		if len(pids) == 0 {
			t.Fatalf("kill %d: no live worker process", k+1)
		}
		victim := pids[mrand.IntN(len(pids))]
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", k+1, err)
		}
		t.Logf("kill %d: SIGKILLed worker process %d", k+1, victim)
	}
	retried := checkChaosRun(t, st, env, d, "r1")
	waitCond(t, 10*time.Second, "three restarts (one per kill)", func() bool { return p.Restarts() >= 3 })
	t.Logf("%d tasks needed more than one try; %d restarts", retried, p.Restarts())
	p.Stop()
	env.assertNothingLeft(t)
}

// testPoolChaosScheduler: the chaos DAG on 3 worker processes with the
// scheduler in a process of its own, SIGKILLed three times at random
// moments and restarted; each time a worker process is killed too while
// the scheduler is down: its tries are put back by the pool, without the
// scheduler, and retries (of tries killed twice) wait for the next one. The run ends success, no task is lost or succeeds twice.
func testPoolChaosScheduler(t *testing.T, bin string) {
	c := startChaos(t, bin)
	st, env, p, d, url := c.st, c.env, c.pool, c.dag, c.url
	sched := startTestbin(t, bin, url, env, "scheduler", "--zombie-threshold", "2s", "--zombie-interval", "200ms")
	startRun(t, st, d, "r1", nil)
	for k := range 3 {
		time.Sleep(time.Duration(100+mrand.IntN(200)) * time.Millisecond) // a random moment, on purpose
		if run, err := st.GetRun(context.Background(), d.ID(), "r1"); err != nil || run.State.Terminal() {
			t.Fatalf("before kill %d: run %+v, %v; the chaos DAG is too short", k+1, run, err)
		}
		if err := sched.cmd.Process.Kill(); err != nil {
			t.Fatalf("kill %d: scheduler: %v", k+1, err)
		}
		waitFor(t, sched.done, 10*time.Second, "the killed scheduler to exit")
		pids := p.PIDs()
		if len(pids) == 0 {
			t.Fatalf("kill %d: no live worker process", k+1)
		}
		victim := pids[mrand.IntN(len(pids))]
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: worker: %v", k+1, err)
		}
		t.Logf("kill %d: SIGKILLed the scheduler and worker process %d", k+1, victim)
		time.Sleep(time.Duration(100+mrand.IntN(200)) * time.Millisecond) // retries pile up meanwhile, on purpose
		sched = startTestbin(t, bin, url, env, "scheduler", "--zombie-threshold", "2s", "--zombie-interval", "200ms")
	}
	retried := checkChaosRun(t, st, env, d, "r1")
	if !strings.Contains(c.logs.String(), "put back the tries of a dead worker") {
		t.Errorf("no try was put back; the kills did not hit running tries")
	}
	t.Logf("%d tasks needed more than one try; %d worker restarts", retried, p.Restarts())
	sched.stop(t, syscall.SIGTERM)
	p.Stop()
	env.assertNothingLeft(t)
}

// chaosSetup is what the chaos tests run on.
type chaosSetup struct {
	url  string
	st   store.Store
	env  procEnv
	pool *Pool
	dag  *dag.DAG
	logs *syncBuffer
}

// startChaos starts a pool of 3 worker processes on a fresh PostgreSQL
// schema holding the test DAGs.
func startChaos(t *testing.T, bin string) chaosSetup {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	logs := &syncBuffer{}
	p := newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) { c.Processes = 3 })
	return chaosSetup{url: url, st: st, env: env, pool: p, dag: testdags.Registry().Lookup(testdags.Chaos), logs: logs}
}

// checkChaosRun waits for run runID of the chaos DAG and checks it
// succeeded with every task recorded once: the recorded success is the
// last try that ran, and no downstream try started before its upstream
// ended. It returns how many tasks needed more than one try.
func checkChaosRun(t *testing.T, st store.Store, env procEnv, d *dag.DAG, runID string) int {
	t.Helper()
	run := waitRun(t, st, d.ID(), runID, 120*time.Second)
	if run.State != state.RunSuccess {
		t.Errorf("run = %s, want success", run.State)
	}
	tis := tasksOf(t, st, d.ID(), runID)
	if len(tis) != testdags.ChaosLayers*testdags.ChaosWidth {
		t.Fatalf("run has %d task instances, want %d", len(tis), testdags.ChaosLayers*testdags.ChaosWidth)
	}
	retried := 0
	for id, ti := range tis {
		if ti.State != state.Success {
			t.Errorf("%s = %s, want success (no task lost)", id, ti.State)
			continue
		}
		if ti.TryNumber > 1 {
			retried++
		}
		// The recorded success is the last try that ran: its marker is
		// there and no later try ever started.
		if _, _, ok := markerTimes(env.dir, id, ti.TryNumber); !ok {
			t.Errorf("%s: recorded success of try %d, but that try never completed", id, ti.TryNumber)
		}
		for try := ti.TryNumber + 1; try <= ti.TryNumber+10; try++ {
			if fileExists(filepath.Join(env.dir, testdags.MarkerName(id, try))) {
				t.Errorf("%s: try %d ran after the recorded success of try %d (succeeded twice)", id, try, ti.TryNumber)
			}
		}
	}
	// Downstream never started before its upstream ended (by the tasks'
	// own clock readings).
	for id, ti := range tis {
		start, _, ok := markerTimes(env.dir, id, ti.TryNumber)
		for _, up := range d.Task(id).UpstreamIDs() {
			_, upEnd, upOK := markerTimes(env.dir, up, tis[up].TryNumber)
			if ok && upOK && start < upEnd {
				t.Errorf("%s started %v before its upstream %s ended", id, time.Duration(upEnd-start), up)
			}
		}
	}
	return retried
}

func testPoolRemoteWorkerTakesShare(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	logs := &syncBuffer{}
	newTestPool(t, bin, url, st, env, logs, func(c *PoolConfig) { c.Processes, c.Slots, c.Hostname = 1, 2, "host-a" })
	remote := startPoolProcess(t, bin, url, env, "--processes", "1", "--slots", "2", "--hostname", "host-b")

	d := testdags.Registry().Lookup(testdags.Spread)
	startRun(t, st, d, "r1", nil)
	if run := waitRun(t, st, d.ID(), "r1", 60*time.Second); run.State != state.RunSuccess {
		t.Fatalf("run = %s, want success", run.State)
	}
	byHost := map[string]int{}
	for _, ti := range tasksOf(t, st, d.ID(), "r1") {
		byHost[ti.Hostname]++
	}
	t.Logf("tasks by host: %v", byHost)
	if byHost["host-a"] < 5 || byHost["host-b"] < 5 {
		t.Errorf("tasks by host = %v; want both hosts to take a share (at least 5 of %d each)", byHost, testdags.SpreadTasks)
	}
	remote.stop(t, syscall.SIGTERM)
	if remote.err != nil {
		t.Errorf("remote pool exited with %v, want 0", remote.err)
	}
}

func testPoolGracefulShutdownRequeues(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	d := testdags.Registry().Lookup(testdags.Graceful)
	startRun(t, st, d, "r1", nil)

	pp := startPoolProcess(t, bin, url, env, "--processes", "1", "--grace", "300ms", "--kill-grace", "300ms")
	waitCond(t, 30*time.Second, "the long task to start", func() bool {
		return fileExists(filepath.Join(env.dir, testdags.StartedName(1)))
	})
	pp.stop(t, syscall.SIGTERM)
	if pp.err != nil {
		t.Fatalf("pool exited with %v after SIGTERM, want 0", pp.err)
	}
	env.assertNothingLeft(t)
	ti := tasksOf(t, st, d.ID(), "r1")["long"]
	if ti.State != state.Queued || ti.TryNumber != 0 {
		t.Fatalf("long = %s try %d after SIGTERM, want queued try 0 (requeued without using a try)", ti.State, ti.TryNumber)
	}

	// Another pool picks it up; its first try is still try 1.
	if err := os.WriteFile(filepath.Join(env.dir, testdags.ReleaseName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pp2 := startPoolProcess(t, bin, url, env, "--processes", "1")
	if run := waitRun(t, st, d.ID(), "r1", 30*time.Second); run.State != state.RunSuccess {
		t.Fatalf("run = %s, want success", run.State)
	}
	if ti := tasksOf(t, st, d.ID(), "r1")["long"]; ti.TryNumber != 1 {
		t.Errorf("long succeeded on try %d, want 1", ti.TryNumber)
	}
	pp2.stop(t, syscall.SIGTERM)
	env.assertNothingLeft(t)
}

// processTree lists pid and all its descendants.
func processTree(t *testing.T, pid int) []int {
	t.Helper()
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		kids, err := childrenOf(out[i])
		if err != nil {
			t.Fatalf("list children of %d: %v", out[i], err)
		}
		for _, k := range kids {
			out = append(out, k.PID)
		}
	}
	return out
}

// testPoolControlGroupSIGTERM: SIGTERM sent at once to every process of a
// pool (systemd's KillMode=control-group) kills a running Shell command,
// yet its try is put back without using a try rather than failed, and
// runs again as try 1 on the next pool.
func testPoolControlGroupSIGTERM(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	d := testdags.Registry().Lookup(testdags.ShellStop)
	startRun(t, st, d, "r1", nil)

	pp := startPoolProcess(t, bin, url, env, "--processes", "1", "--grace", "5s", "--kill-grace", "300ms")
	waitCond(t, 30*time.Second, "the shell task to start", func() bool {
		return fileExists(filepath.Join(env.dir, testdags.ShellStartedName))
	})
	pids := processTree(t, pp.cmd.Process.Pid)
	if len(pids) < 4 { // pool, worker, sh, sleep
		t.Fatalf("pool process tree %v, want the pool, its worker and the task's shell and sleep", pids)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	waitFor(t, pp.done, 30*time.Second, "the pool process to exit")
	env.assertNothingLeft(t)
	ti := tasksOf(t, st, d.ID(), "r1")["long_sh"]
	if ti.State != state.Queued || ti.TryNumber != 0 {
		t.Fatalf("long_sh = %s try %d (%q) after the group SIGTERM, want queued try 0 (put back without using a try)", ti.State, ti.TryNumber, ti.Error)
	}
	if err := os.WriteFile(filepath.Join(env.dir, testdags.ReleaseName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pp2 := startPoolProcess(t, bin, url, env, "--processes", "1")
	if run := waitRun(t, st, d.ID(), "r1", 30*time.Second); run.State != state.RunSuccess {
		t.Fatalf("run = %s, want success", run.State)
	}
	if ti := tasksOf(t, st, d.ID(), "r1")["long_sh"]; ti.TryNumber != 1 {
		t.Errorf("long_sh succeeded on try %d, want 1", ti.TryNumber)
	}
	pp2.stop(t, syscall.SIGTERM)
	env.assertNothingLeft(t)
}

func testPoolSecondSignalHalts(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	d := testdags.Registry().Lookup(testdags.Graceful)
	startRun(t, st, d, "r1", nil)
	pp := startPoolProcess(t, bin, url, env, "--processes", "1", "--grace", "1h", "--kill-grace", "300ms")
	waitCond(t, 30*time.Second, "the long task to start", func() bool {
		return fileExists(filepath.Join(env.dir, testdags.StartedName(1)))
	})
	if err := pp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Wait until the worker has stopped claiming, then send the second
	// signal: the hour of grace is skipped.
	waitCond(t, 10*time.Second, "the worker to begin stopping", func() bool {
		return strings.Contains(pp.out.String(), "worker stopping")
	})
	pp.stop(t, syscall.SIGTERM)
	env.assertNothingLeft(t)
	if ti := tasksOf(t, st, d.ID(), "r1")["long"]; ti.State != state.Queued || ti.TryNumber != 0 {
		t.Errorf("long = %s try %d, want queued try 0", ti.State, ti.TryNumber)
	}
}

func testPoolSupervisorKilled(t *testing.T, bin string) {
	url := backends[0].url(t)
	st := openStore(t, url)
	syncDAGs(t, st, testdags.Registry().DAGs()...)
	env := newProcEnv(t)
	d := testdags.Registry().Lookup(testdags.Graceful)
	startRun(t, st, d, "r1", nil)
	pp := startPoolProcess(t, bin, url, env, "--processes", "2", "--grace", "1h", "--kill-grace", "300ms")
	waitCond(t, 30*time.Second, "the long task to start", func() bool {
		return fileExists(filepath.Join(env.dir, testdags.StartedName(1)))
	})
	// SIGKILL the supervisor: Pdeathsig makes each child halt, requeue
	// its tries and exit.
	pp.stop(t, syscall.SIGKILL)
	env.assertNothingLeft(t)
	if ti := tasksOf(t, st, d.ID(), "r1")["long"]; ti.State != state.Queued || ti.TryNumber != 0 {
		t.Errorf("long = %s try %d, want queued try 0 (the orphaned child requeued it)", ti.State, ti.TryNumber)
	}
}
