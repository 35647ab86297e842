package sqlite_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/sqlite"
)

// Environment of the child processes of this package's multi-process
// tests (this test binary run again; see TestMain).
const (
	envRole = "TRELLIS_SQLITE_TEST_ROLE"
	envPath = "TRELLIS_SQLITE_TEST_PATH"
	envOut  = "TRELLIS_SQLITE_TEST_OUT"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		if err := runChild(role, os.Getenv(envPath), os.Getenv(envOut)); err != nil {
			fmt.Fprintf(os.Stderr, "child %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is a running child process of a test.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *strings.Builder
}

// startChild runs this test binary as a child in role on the database
// at path and waits for its "ready" line.
func startChild(t *testing.T, role, path, out string) *child {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role, envPath+"="+path, envOut+"="+out)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 100), stderr: &strings.Builder{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	c.expect(t, "ready")
	return c
}

// expect waits for the child's next line and checks it.
func (c *child) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case line, ok := <-c.lines:
		if !ok {
			_ = c.cmd.Wait()
			t.Fatalf("child ended before %q: %s", want, c.stderr.String())
		}
		if line != want {
			t.Fatalf("child said %q, want %q (stderr: %s)", line, want, c.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("child did not say %q within 30s (stderr: %s)", want, c.stderr.String())
	}
}

func (c *child) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		t.Fatalf("write to child: %v", err)
	}
}

func (c *child) wait(t *testing.T) {
	t.Helper()
	_ = c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child failed: %v\n%s", err, c.stderr.String())
	}
}

// runChild is the body of a child process.
func runChild(role, path, out string) error {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path, sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer s.Close()
	in := bufio.NewReader(os.Stdin)
	switch role {
	case "work":
		// Migrate at the same time as the parent, then work.
		if err := s.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		fmt.Println("ready")
		if line, _ := in.ReadString('\n'); strings.TrimSpace(line) != "go" {
			return fmt.Errorf("no go signal: %q", line)
		}
		ids, err := work(ctx, s, "child", 4)
		if err != nil {
			return err
		}
		b, err := json.Marshal(ids)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, 0o600)
	case "listen":
		sub, err := s.Listen(ctx, store.TopicTasksReady, store.TopicRunsChanged)
		if err != nil {
			return err
		}
		defer sub.Close()
		fmt.Println("ready")
		// Report every topic once, in the order they arrive.
		seen := map[store.Topic]bool{}
		timeout := time.After(30 * time.Second)
		for len(seen) < 2 {
			select {
			case tp := <-sub.C():
				if !seen[tp] {
					seen[tp] = true
					fmt.Println("woke " + string(tp))
				}
			case <-timeout:
				return fmt.Errorf("woken only for %v within 30s", seen)
			}
		}
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

// work claims and finishes (success) with goroutines, 8 instances at a
// time, until nothing is queued and no run is running; it returns the ids
// it claimed.
func work(ctx context.Context, s store.Store, worker string, goroutines int) ([]int64, error) {
	var (
		mu    sync.Mutex
		ids   []int64
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	fail := func(err error) {
		errMu.Lock()
		if first == nil {
			first = err
		}
		errMu.Unlock()
	}
	w := store.Worker{ID: worker, Hostname: "h", PID: os.Getpid()}
	sub, err := s.Listen(ctx, store.TopicTasksReady, store.TopicRunsChanged)
	if err != nil {
		return nil, err
	}
	defer sub.Close()
	for range goroutines {
		wg.Go(func() {
			for {
				now := time.Now()
				cs, err := s.ClaimTasks(ctx, w, 8, now)
				if err != nil {
					fail(err)
					return
				}
				if len(cs) == 0 {
					runs, _, err := s.ListRuns(ctx, store.RunQuery{States: []state.RunState{state.RunRunning}})
					if err != nil {
						fail(err)
						return
					}
					if len(runs) == 0 {
						return
					}
					// Another worker holds the last instances: wait for
					// the wake-up their finish sends.
					select {
					case <-sub.C():
					case <-time.After(time.Second):
					}
					continue
				}
				rs := make([]store.Result, len(cs))
				for i, c := range cs {
					rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: now}
				}
				out, err := s.FinishTasks(ctx, rs)
				if err != nil {
					fail(err)
					return
				}
				for i, o := range out {
					if !o.Applied {
						fail(fmt.Errorf("finish of %s try %d not applied", cs[i].TaskID, cs[i].TryNumber))
						return
					}
				}
				mu.Lock()
				for _, c := range cs {
					ids = append(ids, c.ID)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return ids, first
}

// TestTwoProcessesWork: two processes migrate one fresh file at the same
// time, then claim and finish the instances of layered runs concurrently,
// 4 goroutines each, releasing downstream instances as they go. Every
// instance is run exactly once, by one process, and every run succeeds.
func TestTwoProcessesWork(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shared.db")
	out := filepath.Join(dir, "child.json")
	s, err := sqlite.Open(t.Context(), path, sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	migrated := make(chan error, 1)
	go func() { migrated <- s.Migrate(t.Context()) }()
	c := startChild(t, "work", path, out)
	if err := <-migrated; err != nil {
		t.Fatalf("Migrate next to the child: %v", err)
	}

	// 4 runs of a DAG in layers: 10 roots → 20 mids (each after two
	// roots) → 10 joins (each after four mids) → 1 end.
	sp := layered()
	if err := s.SyncDAGs(t.Context(), []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const runs = 4
	for i := range runs {
		ld := t0.Add(time.Duration(i) * time.Hour)
		if _, _, err := s.CreateRun(t.Context(), store.NewRun{DAGID: sp.DAGID, RunID: fmt.Sprintf("r%d", i),
			RunType: store.RunManual, LogicalDate: ld, Fingerprint: sp.Fingerprint}); err != nil {
			t.Fatal(err)
		}
	}
	if started, err := s.StartRuns(t.Context(), sp.DAGID, t0); err != nil || len(started) != runs {
		t.Fatalf("StartRuns: %d started, %v", len(started), err)
	}
	c.send(t, "go")
	mine, err := work(t.Context(), s, "parent", 4)
	if err != nil {
		t.Fatalf("parent worker: %v", err)
	}
	c.wait(t)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var theirs []int64
	if err := json.Unmarshal(b, &theirs); err != nil {
		t.Fatal(err)
	}
	if len(mine) == 0 || len(theirs) == 0 {
		t.Errorf("parent ran %d instances, child %d: want both to work", len(mine), len(theirs))
	}
	seen := map[int64]int{}
	for _, id := range append(mine, theirs...) {
		seen[id]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("instance %d ran %d times", id, n)
		}
	}
	want := runs * len(sp.Tasks)
	if len(seen) != want {
		t.Errorf("%d instances ran, want %d", len(seen), want)
	}
	tis, total, err := s.ListTaskInstances(t.Context(), store.TaskQuery{DAGIDs: []string{sp.DAGID}})
	if err != nil || total != want {
		t.Fatalf("ListTaskInstances: %d, %v", total, err)
	}
	for _, ti := range tis {
		if ti.State != state.Success || ti.TryNumber != 1 {
			t.Errorf("%s/%s: %s try %d, want success try 1", ti.DAGRunID, ti.TaskID, ti.State, ti.TryNumber)
		}
	}
	rs, _, err := s.ListRuns(t.Context(), store.RunQuery{DAGIDs: []string{sp.DAGID}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.State != state.RunSuccess {
			t.Errorf("run %s is %s, want success", r.RunID, r.State)
		}
	}
}

func layered() store.DAGSpec {
	sp := store.DAGSpec{DAGID: "layers", Fingerprint: "layers-1", MaxActiveRuns: 16}
	var roots, mids, joins []string
	for i := range 10 {
		roots = append(roots, fmt.Sprintf("root%02d", i))
		sp.Tasks = append(sp.Tasks, task(roots[i]))
	}
	for i := range 20 {
		mids = append(mids, fmt.Sprintf("mid%02d", i))
		sp.Tasks = append(sp.Tasks, task(mids[i], roots[i%10], roots[(i+1)%10]))
	}
	for i := range 10 {
		joins = append(joins, fmt.Sprintf("join%02d", i))
		sp.Tasks = append(sp.Tasks, task(joins[i], mids[i], mids[i+10], mids[(i+1)%20], mids[(i+5)%20]))
	}
	sp.Tasks = append(sp.Tasks, task("end", joins...))
	return sp
}

// TestListenAcrossProcesses: a child process subscribed to both topics is
// woken by this process's writes (through its PRAGMA data_version poll).
func TestListenAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	s, err := sqlite.Open(t.Context(), path, sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	sp := store.DAGSpec{DAGID: "l", Fingerprint: "l1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{task("a")}}
	if err := s.SyncDAGs(t.Context(), []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "listen", path, "")
	// A run created here wakes the child for runs changed ...
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, _, err := s.CreateRun(t.Context(), store.NewRun{DAGID: "l", RunID: "r", RunType: store.RunManual, LogicalDate: t0}); err != nil {
		t.Fatal(err)
	}
	c.expect(t, "woke "+string(store.TopicRunsChanged))
	// ... and starting it (a root task queued) for tasks ready.
	if _, err := s.StartRuns(t.Context(), "l", t0); err != nil {
		t.Fatal(err)
	}
	c.expect(t, "woke "+string(store.TopicTasksReady))
	c.wait(t)
}
