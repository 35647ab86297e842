package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/internal/testdb"
)

// childExitBound is how soon a signalled worker child must exit: far
// below the pool's kill timeout (grace 30 s + kill grace 5 s + margin).
const childExitBound = 5 * time.Second

// TestWorkerChildInProcess runs `worker --child` in this process until its
// context ends as the first signal would end it: it stops gracefully with
// exit 0, and every log line names the worker once.
func TestWorkerChildInProcess(t *testing.T) {
	u := testdb.SQLite(t)
	openURL(t, u) // migrated: the child does not migrate
	pool, child, err := executor.NewChannelPair(u)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// The child role takes the descriptor over (and closes it): give it
	// a copy of its own.
	fd, err := syscall.Dup(int(child.Fd()))
	_ = child.Close()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		executor.EnvChannelFD: strconv.Itoa(fd),
		executor.EnvChild:     "child-7",
		executor.EnvGrace:     "20s",
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var stdout, stderr syncBuffer
	started := make(chan struct{})
	a := &app{
		registry:  runsRegistry(),
		stdout:    &stdout,
		stderr:    notifyWriter{w: &stderr, pattern: regexp.MustCompile(`worker started`), seen: started},
		lookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		clock:     clock.Real{},
	}
	done := make(chan int, 1)
	go func() { done <- a.execute(ctx, []string{"worker", "--child"}) }()
	select {
	case <-started:
	case code := <-done:
		t.Fatalf("worker --child ended with %d before starting:\n%s", code, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("worker --child did not start:\n%s", stderr.String())
	}
	cancel(errors.New("terminated signal received"))
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
	case <-time.After(childExitBound):
		t.Fatalf("worker --child did not stop within %v of its context ending:\n%s", childExitBound, stderr.String())
	}
	out := stderr.String()
	wantContains(t, "stderr", out, "stop requested; stopping gracefully", "worker stopped")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if n := strings.Count(line, "worker="); n != 1 || !strings.Contains(line, "worker=child-7") {
			t.Errorf("log line has worker= %d times, want once as worker=child-7: %s", n, line)
		}
	}
}

// TestWorkerChildEarlySIGTERM builds the binary and SIGTERMs `worker
// --child` processes before their signal handler can be installed: one at
// once after it started, one while it is still opening an unreachable
// database. Both exit promptly (the second with 0: a stop before the
// start), not after the pool's kill timeout.
func TestWorkerChildEarlySIGTERM(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "trellis")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/trellis").CombinedOutput(); err != nil {
		t.Fatalf("build trellis: %v\n%s", err, out)
	}
	u := testdb.SQLite(t)
	openURL(t, u)

	start := func(dbURL string, out *watchBuffer) (*exec.Cmd, <-chan error) {
		t.Helper()
		pool, child, err := executor.NewChannelPair(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = pool.Close() })
		cmd := exec.Command(bin, "worker", "--child")
		cmd.Env = append(os.Environ(), executor.EnvChannelFD+"=3", executor.EnvChild+"=early", executor.EnvGrace+"=30s")
		cmd.ExtraFiles = []*os.File{child}
		cmd.Stdout, cmd.Stderr = out, out
		err = cmd.Start()
		_ = child.Close()
		if err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				<-exited
			}
		})
		return cmd, exited
	}
	waitExited := func(exited <-chan error, out *watchBuffer) error {
		t.Helper()
		select {
		case err := <-exited:
			return err
		case <-time.After(childExitBound):
			t.Fatalf("worker --child did not exit within %v of SIGTERM:\n%s", childExitBound, out.String())
			return nil
		}
	}

	t.Run("at once", func(t *testing.T) {
		var out watchBuffer
		cmd, exited := start(u, &out)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// Exit 0 when main had installed its handler, death by SIGTERM
		// when the signal came even earlier: either way, promptly.
		err := waitExited(exited, &out)
		var ee *exec.ExitError
		if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != -1) {
			t.Errorf("worker --child: %v, want exit 0 or killed by the signal\n%s", err, out.String())
		}
	})

	t.Run("while opening the database", func(t *testing.T) {
		var out watchBuffer
		retrying := make(chan struct{})
		out.onWrite = func(s string) {
			if strings.Contains(s, "database unreachable, retrying") {
				select {
				case <-retrying:
				default:
					close(retrying)
				}
			}
		}
		cmd, exited := start("postgres://postgres@127.0.0.1:1/none?sslmode=disable", &out)
		select {
		case <-retrying:
		case err := <-exited:
			t.Fatalf("worker --child exited (%v) before retrying the database:\n%s", err, out.String())
		case <-time.After(30 * time.Second):
			t.Fatalf("worker --child never retried the database:\n%s", out.String())
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := waitExited(exited, &out); err != nil {
			t.Errorf("worker --child: %v, want exit 0\n%s", err, out.String())
		}
		wantContains(t, "output", out.String(), "worker process stopped before it started")
	})
}

// watchBuffer collects a process's output and calls onWrite, when set,
// with everything written so far.
type watchBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	onWrite func(all string)
}

func (w *watchBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.b.Write(p)
	if w.onWrite != nil {
		w.onWrite(w.b.String())
	}
	return n, err
}

func (w *watchBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
