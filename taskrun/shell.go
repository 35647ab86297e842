package taskrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// ShellSkipExitCode is the exit code with which a Shell task ends skipped.
const ShellSkipExitCode = 99

// EnvOutput names the file a Shell command may write its output to, as
// JSON; MaxShellOutput caps its size.
const (
	EnvOutput      = "TRELLIS_OUTPUT"
	MaxShellOutput = 1 << 20
)

// runShell runs a Shell task:
//
//   - `/bin/sh -c <command>` in its own process group, in the worker's
//     working directory, stdin from /dev/null;
//   - environment: TaskEnv — the safe base of the worker's environment,
//     the variables the task inherits or sets, and TRELLIS_DAG_ID,
//     TRELLIS_RUN_ID, TRELLIS_TASK_ID, TRELLIS_TRY_NUMBER,
//     TRELLIS_LOGICAL_DATE and TRELLIS_DATA_INTERVAL_START/END (RFC 3339);
//     never the rest of the worker's environment;
//   - stdout and stderr share one pipe that is copied into the log as the
//     command writes (never buffered whole);
//   - exit 0 is success, 99 skipped, 100 (dag.ShellDeferExitCode)
//     deferred, anything else (or death by a signal) failed; a deferring
//     command may write a ShellWait as JSON to the file $TRELLIS_DEFER
//     names (without one it runs again after its PokeInterval); a try
//     that continues a deferral gets TRELLIS_RESUMED=1,
//     TRELLIS_DEFERRED_STATE and TRELLIS_EVENT_PAYLOAD;
//   - TRELLIS_OUTPUT names an empty file; JSON the command writes there
//     (up to MaxShellOutput bytes) is the output of a successful try,
//     and invalid JSON fails it. Nothing written means no output;
//   - on the task's timeout or the cancellation of ctx the whole group gets
//     SIGTERM, then SIGKILL after the grace period;
//   - when the shell has exited, whatever is left of its process group
//     (background children) is killed, so no process outlives its task.
//     The shell is only reaped after that, so its group id cannot be
//     reused by an unrelated process in between. A process that left the
//     group (setsid) and keeps the pipe open delays Run by at most the
//     grace period, after which the pipe is closed.
func runShell(tctx context.Context, t Try, logw io.Writer, logger *slog.Logger, grace time.Duration) Outcome {
	outFile, err := os.CreateTemp("", "trellis-output-*.json")
	if err != nil {
		return failed(fmt.Errorf("shell: create the output file: %w", err), false)
	}
	outPath := outFile.Name()
	outFile.Close()
	defer os.Remove(outPath)
	deferFile, err := os.CreateTemp("", "trellis-defer-*.json")
	if err != nil {
		return failed(fmt.Errorf("shell: create the defer file: %w", err), false)
	}
	deferPath := deferFile.Name()
	deferFile.Close()
	defer os.Remove(deferPath)

	cmd := exec.Command("/bin/sh", "-c", t.Task.Command())
	cmd.Env = append(TaskEnv(t, nil, nil), EnvOutput+"="+outPath, EnvDefer+"="+deferPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return failed(fmt.Errorf("shell: create output pipe: %w", err), false)
	}
	// Giving exec an *os.File means no copying goroutine of its own, so
	// Wait returns when the shell exits even if a child holds the pipe.
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return failed(fmt.Errorf("shell: start /bin/sh: %w", err), false)
	}
	pw.Close() // the children hold their own copies
	pid := cmd.Process.Pid

	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(logw, pr)
	}()
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitExited(pid)
	}()

	var stopErr error
	stoppedByTimeout := false
	select {
	case <-exited:
	case <-tctx.Done():
		stopErr, stoppedByTimeout = stopCause(tctx)
		logger.Warn("stopping the command's process group", "signal", "SIGTERM", "reason", stopErr.Error())
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		timer := time.NewTimer(grace)
		select {
		case <-exited:
		case <-timer.C:
			logger.Warn("the command ignored SIGTERM", "signal", "SIGKILL", "grace", grace.String())
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-exited
		}
		timer.Stop()
	}
	// The shell has exited but is not reaped yet: its pid, and so the
	// group id, cannot have been reused. Kill whatever is left of it.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	waitErr := cmd.Wait()

	drain := time.NewTimer(grace)
	select {
	case <-copied:
	case <-drain.C:
		logger.Warn("a process outside the task's process group keeps its output open; closing it")
	}
	drain.Stop()
	pr.Close()
	<-copied

	if stopErr != nil {
		return Outcome{State: state.Failed, TimedOut: stoppedByTimeout, Err: stopErr}
	}
	code := cmd.ProcessState.ExitCode()
	switch {
	case code == 0:
		out, err := readShellOutput(outPath)
		if err != nil {
			return failed(err, false)
		}
		return Outcome{State: state.Success, Output: out}
	case code == ShellSkipExitCode:
		return Outcome{State: state.Skipped, Err: dag.Skip(fmt.Sprintf("command exited with code %d", code))}
	case code == dag.ShellDeferExitCode:
		d, err := readShellWait(deferPath)
		if err != nil {
			return failed(err, true)
		}
		return Outcome{State: state.Deferred, Deferral: d}
	case code > 0:
		return failed(fmt.Errorf("command exited with code %d", code), false)
	}
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			o := failed(fmt.Errorf("command killed by signal %v", ws.Signal()), false)
			o.Signaled = ws.Signal()
			return o
		}
	}
	return failed(fmt.Errorf("command did not exit normally: %v", waitErr), false)
}

// readShellOutput returns the JSON a command wrote to its $TRELLIS_OUTPUT
// file, compacted; nil when it wrote nothing but white space.
func readShellOutput(path string) (json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("shell: read $%s: %w", EnvOutput, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxShellOutput+1))
	if err != nil {
		return nil, fmt.Errorf("shell: read $%s: %w", EnvOutput, err)
	}
	if len(data) > MaxShellOutput {
		return nil, fmt.Errorf("shell: the output written to $%s is over %d bytes", EnvOutput, MaxShellOutput)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		return nil, fmt.Errorf("shell: the output written to $%s is not JSON: %v (starts %q)", EnvOutput, err, head(data, 80))
	}
	return buf.Bytes(), nil
}

// head returns at most n bytes of b as a string.
func head(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

// waitExited blocks until process pid has exited, without reaping it.
func waitExited(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
}
