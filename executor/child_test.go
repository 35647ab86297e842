package executor

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
)

// lineLog is a log destination that signals when a line containing want
// has been written.
type lineLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	want  map[string]chan struct{}
	fired map[string]bool
}

func newLineLog(wants ...string) *lineLog {
	l := &lineLog{want: map[string]chan struct{}{}, fired: map[string]bool{}}
	for _, w := range wants {
		l.want[w] = make(chan struct{})
	}
	return l
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for w, ch := range l.want {
		if !l.fired[w] && bytes.Contains(p, []byte(w)) {
			l.fired[w] = true
			close(ch)
		}
	}
	return len(p), nil
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wantOneWorkerLabel checks that every line of log carries worker=id
// exactly once.
func wantOneWorkerLabel(t *testing.T, log, id string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(log), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatal("no log lines")
	}
	for _, line := range lines {
		if n := strings.Count(line, "worker="); n != 1 || !strings.Contains(line, "worker="+id) {
			t.Errorf("log line has worker= %d times, want once as worker=%s: %s", n, id, line)
		}
	}
}

// runChild runs RunChild on ctx in a goroutine and returns its exit code
// channel.
func runChild(ctx context.Context, opts ChildOptions) <-chan int {
	done := make(chan int, 1)
	go func() { done <- RunChild(ctx, opts) }()
	return done
}

// waitExit waits for RunChild to return, far sooner than its grace.
func waitExit(t *testing.T, done <-chan int, within time.Duration) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(within):
		t.Fatalf("RunChild did not return within %v", within)
		return -1
	}
}

// TestRunChildContextEndedBeforeStart: a signal taken by the command's
// context before RunChild installed its handler (the context is already
// cancelled when RunChild starts) stops the child gracefully at once, and
// the log lines carry the worker id once.
func TestRunChildContextEndedBeforeStart(t *testing.T) {
	st := openStore(t, testdb.SQLite(t))
	log := newLineLog()
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("terminated signal received"))
	done := runChild(ctx, ChildOptions{
		Config:   ChildConfig{WorkerID: "child-1", Grace: 20 * time.Second, KillGrace: time.Second},
		Store:    st,
		Registry: dag.NewRegistry(),
		Logger:   slog.New(slog.NewTextHandler(log, nil)),
	})
	if code := waitExit(t, done, 10*time.Second); code != ExitOK {
		t.Errorf("exit code %d, want %d", code, ExitOK)
	}
	out := log.String()
	for _, want := range []string{"worker started", "stop requested; stopping gracefully", "terminated signal received"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	wantOneWorkerLabel(t, out, "child-1")
}

// TestRunChildSignalAfterContextEndHalts: the context ending is the first
// signal (a graceful stop waits for the running task), so the next real
// SIGTERM halts the child instead of waiting for the grace period.
func TestRunChildSignalAfterContextEndHalts(t *testing.T) {
	st := openStore(t, testdb.SQLite(t))
	started := make(chan struct{})
	var once sync.Once
	d := dag.New("hold")
	d.Func("wait", func(c *dag.Context) error {
		once.Do(func() { close(started) })
		<-c.Done()
		return c.Err()
	})
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, st, d)
	startRun(t, st, d, "r1", nil)

	log := newLineLog("stop requested; stopping gracefully", "second signal; halting")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := runChild(ctx, ChildOptions{
		Config:   ChildConfig{WorkerID: "child-2", Grace: 60 * time.Second, KillGrace: 200 * time.Millisecond},
		Store:    st,
		Registry: reg,
		Logger:   slog.New(slog.NewTextHandler(log, nil)),
	})
	waitFor(t, started, 10*time.Second, "the task to start")
	cancel(errors.New("terminated signal received"))
	waitFor(t, log.want["stop requested; stopping gracefully"], 10*time.Second, "the graceful stop")
	// RunChild's handler is installed (it logged), so this SIGTERM goes to
	// it, not to the default action.
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, log.want["second signal; halting"], 10*time.Second, "the halt")
	if code := waitExit(t, done, 10*time.Second); code != ExitOK {
		t.Errorf("exit code %d, want %d", code, ExitOK)
	}
	wantOneWorkerLabel(t, log.String(), "child-2")
}
