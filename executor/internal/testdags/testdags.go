// Package testdags defines the DAGs the executor's process tests and
// benchmarks run. The test binary (executor/internal/testbin) and the
// tests both build them, so the structure the tests record in the store is
// the one the worker processes execute.
//
// Tasks that leave traces write files into the directory named by the
// environment variable EnvDir, which the tests set on the processes they
// start.
package testdags

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// EnvDir names the directory tasks write their traces to.
const EnvDir = "TESTDAGS_DIR"

// EnvTag names the variable the process tests mark every process they
// start with, to find processes left behind.
const EnvTag = "EXECUTOR_TEST_TAG"

// newDAG is dag.New with the test variables passed on to every task (a
// task's environment holds only what it inherits).
func newDAG(id string, opts ...dag.Option) *dag.DAG {
	return dag.New(id, append([]dag.Option{dag.DefaultTaskOptions(dag.InheritEnv(EnvDir, EnvTag))}, opts...)...)
}

// DAG ids.
const (
	Isolation  = "isolation"
	Orphans    = "orphans"
	Chaos      = "chaos"
	Spread     = "spread"
	Graceful   = "graceful"
	FuncChain  = "func_chain"
	ShellChain = "shell_chain"
	ShellFan   = "shell_fan"
	Environ    = "environ"
	Outcomes   = "outcomes"
	Crash      = "crash"
	Hog        = "hog"
	ShellStop  = "shell_stop"
)

// Sizes of the generated DAGs.
const (
	ChaosLayers      = 10
	ChaosWidth       = 20
	SpreadTasks      = 40
	FuncChainLength  = 200
	ShellChainLength = 100
	ShellFanTasks    = 1000
	OutcomesTasks    = 1000
)

// IsolationOK lists the isolation DAG's tasks that must succeed.
var IsolationOK = []string{"ok_1", "ok_2", "ok_3", "ok_4", "ok_5", "ok_6", "after"}

// IsolationFailing lists the isolation DAG's tasks that must fail.
var IsolationFailing = []string{"exit3", "panics", "hang", "shell_bg"}

// Registry returns a registry with every test DAG.
func Registry() *dag.Registry {
	r := dag.NewRegistry()
	for _, d := range []*dag.DAG{isolation(), orphans(), chaos(), spread(), graceful(), funcChain(), shellChain(), shellFan(), environ(), outcomes(), crash(), hog(), shellStop()} {
		r.Register(d)
	}
	for _, d := range limitDAGs() {
		r.Register(d)
	}
	if n, err := strconv.Atoi(os.Getenv(EnvBig)); err == nil && n > 0 {
		r.Register(BigDAG(n))
	}
	return r
}

// Dir returns the trace directory, or "" when EnvDir is unset.
func Dir() string { return os.Getenv(EnvDir) }

// touch creates an empty trace file name in Dir.
func touch(name string) error { return write(name, "") }

// write creates the trace file name in Dir with content.
func write(name, content string) error {
	dir := Dir()
	if dir == "" {
		return errors.New(EnvDir + " is not set")
	}
	return os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
}

// MarkerName is the trace file a chaos task writes when a try completes:
// when its function started and ended, in Unix nanoseconds.
func MarkerName(taskID string, try int) string {
	return taskID + ".done." + strconv.Itoa(try)
}

// StartedName is the trace file the graceful DAG's task writes when a try
// starts.
func StartedName(try int) string { return "long.started." + strconv.Itoa(try) }

// TimesName is the file where a func_chain task records when its
// function started.
func TimesName(taskID, runID string) string { return runID + "." + taskID + ".times" }

// ReleaseName is the file that makes the graceful DAG's task finish at
// once.
const ReleaseName = "release"

// BackgroundPIDName is where the isolation DAG's shell_bg task writes the
// pid of the background process it starts.
const BackgroundPIDName = "bg.pid"

// isolation runs, side by side, tasks that misbehave in every way a
// worker process must survive, and ordinary tasks that must succeed. hang
// goes first so that its worker process recycles for the abandoned
// goroutine before exit3 kills a worker process; ok_4..ok_6 run next to
// exit3 and may have to be retried.
func isolation() *dag.DAG {
	d := newDAG(Isolation)
	retry := []dag.TaskOption{dag.Retries(3), dag.RetryDelay(10 * time.Millisecond)}
	ok := func(c *dag.Context) error {
		select {
		case <-time.After(150 * time.Millisecond):
			return nil
		case <-c.Done():
			return c.Err()
		}
	}
	hang := d.Func("hang", func(c *dag.Context) error {
		time.Sleep(time.Hour) // ignores its context on purpose
		return nil
	}, dag.Timeout(300*time.Millisecond))
	panics := d.Func("panics", func(c *dag.Context) error { panic("boom from the panics task") })
	bg := d.Shell("shell_bg", `sleep 300 & echo $! > "$`+EnvDir+`/`+BackgroundPIDName+`"; sleep 300`,
		dag.Timeout(500*time.Millisecond))
	exit3 := d.Func("exit3", func(c *dag.Context) error {
		time.Sleep(100 * time.Millisecond) // let ok_4..ok_6 start first
		os.Exit(3)
		return nil
	}, dag.Trigger(dag.AllDone))
	exit3.SetUpstream(hang)
	after := d.Func("after", func(c *dag.Context) error { return nil }, append(retry, dag.Trigger(dag.AllDone))...)
	after.SetUpstream(exit3, panics, hang, bg)
	for i := 1; i <= 6; i++ {
		if i <= 3 {
			after.SetUpstream(d.Func(fmt.Sprintf("ok_%d", i), ok, retry...))
			continue
		}
		t := d.Func(fmt.Sprintf("ok_%d", i), ok, append(retry, dag.Trigger(dag.AllDone))...)
		after.SetUpstream(t.SetUpstream(hang))
	}
	return d
}

// Trace files of the orphans DAG.
const (
	DaemonPIDName  = "daemon.pid"
	StuckBGPIDName = "stuck_bg.pid"
	StuckPIDName   = "stuck.pid"
)

// orphans leaves processes behind in both ways a supervisor must clean
// up: daemon starts a process in a new session and succeeds (the process
// escapes its task's process group); then crash kills its worker process
// while stuck_shell, in the same process (the test runs one), has a shell
// and a background child running.
func orphans() *dag.DAG {
	d := newDAG(Orphans)
	daemon := d.Shell("daemon", `setsid sleep 300 & echo $! > "$`+EnvDir+`/`+DaemonPIDName+`"`)
	d.Shell("stuck_shell", `echo $$ > "$`+EnvDir+`/`+StuckPIDName+`"; sleep 300 & echo $! > "$`+EnvDir+`/`+StuckBGPIDName+`"; sleep 300`,
		dag.Timeout(time.Minute))
	d.Func("crash", func(c *dag.Context) error {
		for {
			if _, err := os.Stat(filepath.Join(Dir(), StuckBGPIDName)); err == nil {
				os.Exit(4)
			}
			select {
			case <-c.Done():
				return c.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}, dag.Timeout(30*time.Second)).SetUpstream(daemon)
	return d
}

// chaos is ChaosLayers layers of ChaosWidth tasks; each task depends on
// two tasks of the previous layer. Every task works 50-150 ms and leaves a
// marker per completed try (see MarkerName).
func chaos() *dag.DAG {
	d := newDAG(Chaos)
	var prev []*dag.Task
	for l := range ChaosLayers {
		layer := make([]*dag.Task, ChaosWidth)
		for i := range ChaosWidth {
			id := fmt.Sprintf("t%02d_%02d", l, i)
			layer[i] = d.Func(id, func(c *dag.Context) error {
				start := time.Now()
				select {
				case <-time.After(time.Duration(50+rand.IntN(100)) * time.Millisecond):
				case <-c.Done():
					return c.Err()
				}
				return write(MarkerName(c.TaskID(), c.TryNumber()), fmt.Sprintf("%d %d", start.UnixNano(), time.Now().UnixNano()))
			}, dag.Retries(10), dag.RetryDelay(10*time.Millisecond))
			if prev != nil {
				layer[i].SetUpstream(prev[i], prev[(i+1)%ChaosWidth])
			}
		}
		prev = layer
	}
	return d
}

// spread is SpreadTasks independent tasks of 100 ms each.
func spread() *dag.DAG {
	d := newDAG(Spread)
	for i := range SpreadTasks {
		d.Func(fmt.Sprintf("s%02d", i), func(c *dag.Context) error {
			select {
			case <-time.After(100 * time.Millisecond):
				return nil
			case <-c.Done():
				return c.Err()
			}
		})
	}
	return d
}

// graceful has one long task that records each try's start and runs until
// cancelled, unless the release file exists.
func graceful() *dag.DAG {
	d := newDAG(Graceful)
	d.Func("long", func(c *dag.Context) error {
		if _, err := os.Stat(filepath.Join(Dir(), ReleaseName)); err == nil {
			return nil
		}
		if err := touch(StartedName(c.TryNumber())); err != nil {
			return err
		}
		select {
		case <-time.After(time.Minute):
			return nil
		case <-c.Done():
			return c.Err()
		}
	})
	return d
}

// funcChain is a chain of Func tasks; with EnvDir set, each records when
// its function started (Unix nanoseconds) in TimesName(task, run). When
// it ended is the end the worker records in the store once the function
// has returned (writing the file is part of the task).
func funcChain() *dag.DAG {
	d := newDAG(FuncChain)
	var prev *dag.Task
	for i := range FuncChainLength {
		t := d.Func(fmt.Sprintf("f%03d", i), func(c *dag.Context) error {
			start := time.Now()
			dir := Dir()
			if dir == "" {
				return nil
			}
			line := strconv.FormatInt(start.UnixNano(), 10)
			return os.WriteFile(filepath.Join(dir, TimesName(c.TaskID(), c.RunID())), []byte(line), 0o644)
		})
		if prev != nil {
			t.SetUpstream(prev)
		}
		prev = t
	}
	return d
}

func shellChain() *dag.DAG {
	d := newDAG(ShellChain)
	var prev *dag.Task
	for i := range ShellChainLength {
		t := d.Shell(fmt.Sprintf("s%03d", i), "true")
		if prev != nil {
			t.SetUpstream(prev)
		}
		prev = t
	}
	return d
}

func shellFan() *dag.DAG {
	d := newDAG(ShellFan)
	for i := range ShellFanTasks {
		d.Shell(fmt.Sprintf("s%04d", i), "true")
	}
	return d
}

// Names of the environ DAG: the variable its tasks inherit, and the trace
// files of its Func task (os.Environ and /proc/self/environ of the worker
// process, one variable a line; what Context.Getenv answered).
const (
	InheritedVar    = "TESTDAGS_INHERITED"
	FuncEnvironName = "func_env.environ"
	FuncProcName    = "func_env.proc"
	FuncGetenvName  = "func_env.getenv"
)

// environ shows what tasks see of their environment: shell_env prints its
// own and its worker process's initial one (/proc/$PPID/environ) into its
// log; func_env writes the worker process's os.Environ and
// /proc/self/environ, and what Context.Getenv says, to trace files.
func environ() *dag.DAG {
	d := newDAG(Environ, dag.DefaultTaskOptions(
		dag.Env(map[string]string{"FROM_DAG": "dag-value", "SHARED": "dag-value"}),
		dag.InheritEnv(InheritedVar),
	))
	d.Shell("shell_env", `echo "--- env"; env; echo "--- parent"; tr '\0' '\n' < /proc/$PPID/environ; echo "--- end"`,
		dag.Env(map[string]string{"SHARED": "task-value"}))
	d.Func("func_env", func(c *dag.Context) error {
		var lines []byte
		for _, kv := range os.Environ() {
			lines = append(lines, kv+"\n"...)
		}
		if err := write(FuncEnvironName, string(lines)); err != nil {
			return err
		}
		proc, err := os.ReadFile("/proc/self/environ")
		if err != nil {
			return err
		}
		for i, b := range proc {
			if b == 0 {
				proc[i] = '\n'
			}
		}
		if err := write(FuncProcName, string(proc)); err != nil {
			return err
		}
		return write(FuncGetenvName, fmt.Sprintf("FROM_DAG=%s\nSHARED=%s\n%s=%s\nTRELLIS_TASK_ID=%s\n",
			c.Getenv("FROM_DAG"), c.Getenv("SHARED"), InheritedVar, c.Getenv(InheritedVar), c.Getenv("TRELLIS_TASK_ID")))
	}, dag.Env(map[string]string{"SHARED": "func-value"}))
	return d
}

// OutcomeOf is the state task i of the outcomes DAG ends in (its first
// try; failing tasks are retried once): every 10th is skipped, every 25th
// fails for good, every 40th fails once and then succeeds.
func OutcomeOf(i int) (first, final string) {
	switch {
	case i%25 == 0:
		return "up_for_retry", "failed"
	case i%10 == 0:
		return "skipped", "skipped"
	case i%40 == 1:
		return "up_for_retry", "success"
	}
	return "success", "success"
}

// outcomes is a wide DAG of quick Func tasks ending in every outcome (see
// OutcomeOf), for counting finishes.
func outcomes() *dag.DAG {
	d := newDAG(Outcomes, dag.MaxActiveRuns(64))
	for i := range OutcomesTasks {
		d.Func(fmt.Sprintf("t%04d", i), func(c *dag.Context) error {
			_, final := OutcomeOf(i)
			switch {
			case final == "skipped":
				return dag.Skip("skipped on purpose")
			case final == "failed":
				return errors.New("fails on purpose")
			case c.TryNumber() == 1 && i%40 == 1:
				return errors.New("fails on the first try")
			}
			return nil
		}, dag.Retries(1), dag.RetryDelay(time.Millisecond))
	}
	return d
}

// EnvBig, when set to a number, adds BigDAG of that size to Registry
// (for the processes of a benchmark; the tests' own registry has it only
// when they build it).
const EnvBig = "TESTDAGS_BIG"

// Big is the id of BigDAG.
const Big = "big"

// BigDAG is n no-op Func tasks without edges.
func BigDAG(n int) *dag.DAG {
	d := newDAG(Big)
	noop := func(*dag.Context) error { return nil }
	for i := range n {
		d.Func(fmt.Sprintf("t%06d", i), noop)
	}
	return d
}

// CrashBystanders is how many tasks of the crash DAG run beside the task
// that kills its worker process.
const CrashBystanders = 6

// CrashLastWords is what the crash DAG's crasher logs before its second
// exit.
const CrashLastWords = "crasher: exiting again"

// crash is CrashBystanders tasks without retries and "crasher", which
// kills its worker process (os.Exit(3)) once they all run; when it runs
// again it waits for them to finish first, logs CrashLastWords and kills
// that worker too. Run it on one worker process.
func crash() *dag.DAG {
	d := newDAG(Crash)
	for i := range CrashBystanders {
		id := fmt.Sprintf("by_%d", i)
		d.Func(id, func(c *dag.Context) error {
			if err := touch(id + ".started"); err != nil {
				return err
			}
			time.Sleep(time.Second)
			return touch(id + ".done")
		})
	}
	d.Func("crasher", func(c *dag.Context) error {
		_, err := os.Stat(filepath.Join(Dir(), "crasher.ran"))
		again := err == nil
		if err := touch("crasher.ran"); err != nil {
			return err
		}
		want := ".started"
		if again {
			want = ".done"
		}
		for i := 0; i < CrashBystanders; {
			if _, err := os.Stat(filepath.Join(Dir(), fmt.Sprintf("by_%d%s", i, want))); err == nil {
				i++
				continue
			}
			time.Sleep(10 * time.Millisecond)
		}
		if again {
			c.Logger().Info(CrashLastWords)
		}
		time.Sleep(500 * time.Millisecond) // the log reaches the store
		os.Exit(3)
		return nil
	})
	return d
}

// HogBytes is how much memory the hog DAG's task allocates and touches.
const HogBytes = 512 << 20

// hog is one task that allocates and touches HogBytes, holding them a
// moment; a worker memory limit below that kills its worker process.
func hog() *dag.DAG {
	d := newDAG(Hog)
	d.Func("hog", func(c *dag.Context) error {
		b := make([]byte, HogBytes)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		time.Sleep(100 * time.Millisecond)
		c.Logger().Info("hog: allocated", "bytes", len(b), "last", b[len(b)-4096])
		return nil
	})
	return d
}

// ShellStartedName is the trace file the shell_stop DAG's task writes
// when it starts (it then sleeps until ReleaseName exists).
const ShellStartedName = "long_sh.started"

// shellStop is one Shell task that runs until ReleaseName exists in Dir.
func shellStop() *dag.DAG {
	d := newDAG(ShellStop)
	d.Shell("long_sh", `cd "$`+EnvDir+`" && [ -e `+ReleaseName+` ] && exit 0; touch `+ShellStartedName+`; sleep 60`)
	return d
}
