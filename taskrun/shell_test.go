package taskrun_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

func shellTask(cmd string, opts ...dag.TaskOption) *dag.Task {
	return dag.New("d").Shell("sh", cmd, opts...)
}

func TestShellOutputAndExitCodes(t *testing.T) {
	cases := []struct {
		cmd   string
		state state.TaskState
		err   string
	}{
		{"echo to-stdout; echo to-stderr >&2", state.Success, ""},
		{"echo skipping; exit 99", state.Skipped, "exited with code 99"},
		{"echo failing >&2; exit 3", state.Failed, "exited with code 3"},
		{"exit 1", state.Failed, "exited with code 1"},
		{"kill -KILL $$", state.Failed, "killed by signal killed"},
		{"no-such-command-xyz", state.Failed, "exited with code 127"},
	}
	for _, c := range cases {
		var log bytes.Buffer
		out := taskrun.Run(context.Background(), taskrun.Try{Task: shellTask(c.cmd), Info: info("sh"), Log: &log})
		if out.State != c.state || out.TimedOut || out.Permanent {
			t.Errorf("%q: outcome %+v, want %s", c.cmd, out, c.state)
			continue
		}
		if c.err == "" && out.Err != nil || c.err != "" && (out.Err == nil || !strings.Contains(out.Err.Error(), c.err)) {
			t.Errorf("%q: Err %v, want %q", c.cmd, out.Err, c.err)
		}
		if c.state == state.Skipped {
			if _, ok := dag.IsSkip(out.Err); !ok {
				t.Errorf("%q: skipped with Err %v, want a dag.Skip error", c.cmd, out.Err)
			}
		}
		if out.Output != nil {
			t.Errorf("%q: shell output %s, want none", c.cmd, out.Output)
		}
	}
	var log bytes.Buffer
	taskrun.Run(context.Background(), taskrun.Try{Task: shellTask("echo to-stdout; echo to-stderr >&2; printf no-newline"),
		Info: info("sh"), Log: &log})
	if !strings.HasPrefix(log.String(), "to-stdout\nto-stderr\nno-newline") {
		t.Errorf("log %q: want stdout then stderr, in order, first", log.String())
	}
}

func TestShellStreamsOutputAsWritten(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "go-on")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The command prints a line, then blocks until the test opens the
	// FIFO: the line must reach the log while the command still runs.
	log := &syncBuffer{}
	ch := runAsync(context.Background(), taskrun.Try{Task: shellTask("echo first; read x < " + fifo + "; echo second"),
		Info: info("sh"), Log: log})
	within(t, log.seen("first\n"), 10*time.Second, "first line in the log while the command runs")
	if strings.Contains(log.String(), "second") {
		t.Fatal("second line before the command was released")
	}
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("x\n")
	f.Close()
	out := await(t, ch, 10*time.Second)
	if out.State != state.Success || !strings.Contains(log.String(), "first\nsecond\n") {
		t.Errorf("outcome %+v, log %q", out, log)
	}
}

func TestShellEnvironment(t *testing.T) {
	// Only the safe base and what the task inherits reach it.
	t.Setenv("TEST_INHERITED", "inherited-value")
	t.Setenv("TEST_WITHHELD", "withheld-value")
	t.Setenv("TRELLIS_TASK_ID", "stale-value-from-the-parent")
	in := info("env_task")
	in.TryNumber = 3
	var log bytes.Buffer
	cmd := `echo "dag=$TRELLIS_DAG_ID run=$TRELLIS_RUN_ID task=$TRELLIS_TASK_ID try=$TRELLIS_TRY_NUMBER ` +
		`ld=$TRELLIS_LOGICAL_DATE start=$TRELLIS_DATA_INTERVAL_START end=$TRELLIS_DATA_INTERVAL_END ` +
		`inherited=$TEST_INHERITED withheld=$TEST_WITHHELD"`
	d := dag.New("d")
	task := d.Shell("env_task", cmd, dag.InheritEnv("TEST_INHERITED"))
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: in, Log: &log})
	if out.State != state.Success {
		t.Fatalf("outcome %+v", out)
	}
	want := "dag=d run=manual__2026-01-02T03:04:05Z task=env_task try=3 ld=2026-01-02T03:04:05Z " +
		"start=2026-01-02T03:04:05Z end=2026-01-02T04:04:05Z inherited=inherited-value withheld=\n"
	if !strings.HasPrefix(log.String(), want) {
		t.Errorf("environment line\n got %q\nwant %q", log.String(), want)
	}
}

// hangingShell spawns a background sleep, records its pids and hangs.
func hangingShell(dir, extra string) string {
	return extra + "echo $$ > " + dir + "/shell; sleep 300 & echo $! > " + dir + "/child; echo ready; wait"
}

func TestShellTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	log := &syncBuffer{}
	ch := runAsync(context.Background(), taskrun.Try{
		Task: shellTask(hangingShell(dir, ""), dag.Timeout(300*time.Millisecond)),
		Info: info("sh"), Log: log, KillGrace: 5 * time.Second})
	out := await(t, ch, 30*time.Second)
	if out.State != state.Failed || !out.TimedOut || !errors.Is(out.Err, taskrun.ErrTimeout) {
		t.Fatalf("outcome %+v, want failed by timeout", out)
	}
	shell, child := readPID(t, dir+"/shell"), readPID(t, dir+"/child")
	if !exits(child, 10*time.Second) || !exits(shell, 10*time.Second) {
		t.Errorf("shell %d alive %v, background child %d alive %v after Run returned",
			shell, procAlive(shell), child, procAlive(child))
	}
	if m := groupMembers(t, shell); len(m) > 0 {
		t.Errorf("process group %d still has members %v", shell, m)
	}
	if !strings.Contains(log.String(), "SIGTERM") {
		t.Errorf("log does not mention SIGTERM:\n%s", log)
	}
}

func TestShellIgnoringSIGTERMIsKilled(t *testing.T) {
	dir := t.TempDir()
	log := &syncBuffer{}
	// trap '' TERM makes the shell and its children ignore SIGTERM.
	ch := runAsync(context.Background(), taskrun.Try{
		Task: shellTask(hangingShell(dir, "trap '' TERM; "), dag.Timeout(200*time.Millisecond)),
		Info: info("sh"), Log: log, KillGrace: 200 * time.Millisecond})
	out := await(t, ch, 30*time.Second)
	if out.State != state.Failed || !out.TimedOut {
		t.Fatalf("outcome %+v, want failed by timeout", out)
	}
	if !strings.Contains(log.String(), "ignored SIGTERM") {
		t.Errorf("log does not record the SIGKILL escalation:\n%s", log)
	}
	shell, child := readPID(t, dir+"/shell"), readPID(t, dir+"/child")
	if !exits(child, 10*time.Second) || !exits(shell, 10*time.Second) || len(groupMembers(t, shell)) > 0 {
		t.Errorf("processes of the group %d survived SIGKILL", shell)
	}
}

func TestShellCancelled(t *testing.T) {
	dir := t.TempDir()
	log := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ch := runAsync(ctx, taskrun.Try{Task: shellTask(hangingShell(dir, "")), Info: info("sh"), Log: log})
	within(t, log.seen("ready"), 10*time.Second, "command started")
	cancel()
	out := await(t, ch, 30*time.Second)
	if out.State != state.Failed || out.TimedOut || !errors.Is(out.Err, context.Canceled) {
		t.Fatalf("outcome %+v, want failed by cancellation", out)
	}
	if child := readPID(t, dir+"/child"); !exits(child, 10*time.Second) {
		t.Errorf("background child %d survived the cancellation", child)
	}
}

func TestShellExitLeavingBackgroundChild(t *testing.T) {
	dir := t.TempDir()
	// The shell exits at once; its background child keeps stdout open.
	// Run must neither wait for the child nor leave it behind.
	cmd := "sleep 300 & echo $! > " + dir + "/child; echo done"
	log := &syncBuffer{}
	out := await(t, runAsync(context.Background(), taskrun.Try{Task: shellTask(cmd), Info: info("sh"), Log: log,
		KillGrace: time.Minute}), 30*time.Second)
	if out.State != state.Success {
		t.Fatalf("outcome %+v, want success", out)
	}
	if child := readPID(t, dir+"/child"); !exits(child, 10*time.Second) {
		t.Errorf("background child %d outlived its task", child)
	}
	if !strings.Contains(log.String(), "done\n") {
		t.Errorf("log %q lacks the output", log)
	}
}

func TestShellEscapedProcessCannotHangRun(t *testing.T) {
	dir := t.TempDir()
	// setsid moves the child out of the task's process group, out of reach
	// of the group kill; it holds the output pipe open. Run must return
	// after the grace period anyway.
	cmd := "setsid sh -c 'echo $$ > " + dir + "/child; exec sleep 300' & " +
		"while [ ! -s " + dir + "/child ]; do :; done; echo done"
	log := &syncBuffer{}
	out := await(t, runAsync(context.Background(), taskrun.Try{Task: shellTask(cmd), Info: info("sh"), Log: log,
		KillGrace: 200 * time.Millisecond}), 30*time.Second)
	child := readPID(t, dir+"/child")
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	if !procAlive(child) {
		t.Fatalf("the escaped process %d is not running: the test proves nothing", child)
	}
	if out.State != state.Success {
		t.Fatalf("outcome %+v, want success", out)
	}
	if !strings.Contains(log.String(), "keeps its output open") {
		t.Errorf("log does not explain the closed pipe:\n%s", log)
	}
}

// TestShellOutputFile checks the output a Shell command writes to
// $TRELLIS_OUTPUT: JSON becomes the output of a successful try (compacted),
// nothing written means none, invalid or oversized JSON fails the try, the
// output of a skipped or failed try is dropped, and the file is removed.
func TestShellOutputFile(t *testing.T) {
	big := taskrun.MaxShellOutput + 10
	cases := []struct {
		cmd    string
		state  state.TaskState
		output string
		err    string
	}{
		{`printf '{"rows": 3,\n "name": "x"}\n' > "$TRELLIS_OUTPUT"`, state.Success, `{"rows":3,"name":"x"}`, ""},
		{`echo 42 > "$TRELLIS_OUTPUT"`, state.Success, `42`, ""},
		{`echo '"text"' >> "$TRELLIS_OUTPUT"`, state.Success, `"text"`, ""},
		{`echo "   " > "$TRELLIS_OUTPUT"`, state.Success, ``, ""},
		{`true`, state.Success, ``, ""},
		{`echo 'not json' > "$TRELLIS_OUTPUT"`, state.Failed, ``, "$TRELLIS_OUTPUT is not JSON"},
		{`head -c ` + strconv.Itoa(big) + ` /dev/zero | tr '\0' 1 > "$TRELLIS_OUTPUT"`, state.Failed, ``, "is over 1048576 bytes"},
		{`echo 1 > "$TRELLIS_OUTPUT"; exit 99`, state.Skipped, ``, "exited with code 99"},
		{`echo 1 > "$TRELLIS_OUTPUT"; exit 2`, state.Failed, ``, "exited with code 2"},
	}
	for _, c := range cases {
		var log bytes.Buffer
		cmd := c.cmd + `; echo "$TRELLIS_OUTPUT" > ` + filepath.Join(t.TempDir(), "path")
		pathFile := cmd[strings.LastIndex(cmd, " ")+1:]
		out := taskrun.Run(context.Background(), taskrun.Try{Task: shellTask(cmd), Info: info("sh"), Log: &log})
		if out.State != c.state || string(out.Output) != c.output {
			t.Errorf("%q: state %s output %s (err %v), want %s output %s", c.cmd, out.State, out.Output, out.Err, c.state, c.output)
		}
		if c.err == "" && out.Err != nil || c.err != "" && (out.Err == nil || !strings.Contains(out.Err.Error(), c.err)) {
			t.Errorf("%q: Err %v, want %q", c.cmd, out.Err, c.err)
		}
		if p, err := os.ReadFile(pathFile); err == nil {
			if _, err := os.Stat(strings.TrimSpace(string(p))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%q: the output file %s is left behind (%v)", c.cmd, p, err)
			}
		}
	}
}
