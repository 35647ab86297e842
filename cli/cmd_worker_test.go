package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// lockedBuffer is a bytes.Buffer safe for a process's output goroutine
// and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWorkerCommand builds the trellis binary, triggers the "test" DAG of
// package dags and runs `trellis worker` (two processes that re-execute
// the binary as `worker --child`) until the run succeeds; SIGTERM then
// stops it with exit 0.
func TestWorkerCommand(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "trellis")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/trellis").CombinedOutput(); err != nil {
		t.Fatalf("build trellis: %v\n%s", err, out)
	}
	u := "sqlite:" + filepath.Join(t.TempDir(), "trellis.db")
	env := append(os.Environ(), "TRELLIS_DATABASE_URL="+u, "TRELLIS_LOG_FORMAT=json")

	trigger := exec.Command(bin, "dags", "trigger", "test", "--run-id", "r1")
	trigger.Env = env
	if out, err := trigger.CombinedOutput(); err != nil {
		t.Fatalf("trellis dags trigger: %v\n%s", err, out)
	}

	var out lockedBuffer
	metricsAddr := freeAddr(t)
	worker := exec.Command(bin, "worker", "--processes", "2", "--slots", "2", "--grace", "2s")
	worker.Env = append(env, "TRELLIS_METRICS_ADDR="+metricsAddr)
	worker.Stdout, worker.Stderr = &out, &out
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- worker.Wait() }()
	defer func() {
		if worker.ProcessState == nil {
			_ = worker.Process.Kill()
		}
		if t.Failed() {
			t.Logf("trellis worker output:\n%s", out.String())
		}
	}()

	st := openURL(t, u)
	deadline := time.Now().Add(60 * time.Second)
	for {
		run, err := st.GetRun(context.Background(), "test", "r1")
		if err != nil {
			t.Fatal(err)
		}
		if run.State.Terminal() {
			if run.State != state.RunSuccess {
				t.Fatalf("run = %s, want success", run.State)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("run still %s after 60s", run.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ti, err := st.GetTaskInstance(context.Background(), "test", "r1", "print_test2")
	if err != nil || ti.State != state.Success || ti.WorkerID == "" {
		t.Fatalf("print_test2 = %+v, %v; want success by a worker", ti, err)
	}
	if b, err := st.ReadLog(context.Background(), "test", "r1", "print_test1", 1); err != nil || !strings.Contains(string(b), "test1") {
		t.Errorf("print_test1 log = %q, %v; want its logger line", b, err)
	}

	// Its /metrics counts every try the store recorded as succeeded (the
	// test DAG has a series per task: dag.TaskMetrics); the reports may lag
	// the commit.
	tis, _, err := st.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{"test"}, DAGRunIDs: []string{"r1"}, Limit: 100})
	if err != nil || len(tis) == 0 {
		t.Fatalf("task instances of test/r1: %v, %v", tis, err)
	}
	var series []string
	for _, ti := range tis {
		series = append(series, fmt.Sprintf(`trellis_task_instances_finished_total{dag_id="test",state="success",task_id=%q} 1`, ti.TaskID))
	}
	series = append(series, "trellis_executor_workers 2")
	waitScrape(t, "http://"+metricsAddr+"/metrics", series...)

	if err := worker.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("trellis worker exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("trellis worker did not exit after SIGTERM")
	}
	for _, want := range []string{`"msg":"worker pool started"`, `"msg":"worker started"`, `"msg":"worker pool stopped"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("worker output lacks %s", want)
		}
	}
	if ws, err := st.ListWorkers(context.Background()); err != nil || len(ws) != 0 {
		t.Errorf("workers still registered after stop: %v %v", ws, err)
	}
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitScrape scrapes url until its body contains every want, failing
// after 10 s.
func waitScrape(t *testing.T, url string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		body, missing := "", ""
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			for _, w := range want {
				if !strings.Contains(body, w) {
					missing = w
					break
				}
			}
		}
		if err == nil && missing == "" {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("scrape %s: %v; missing %q in:\n%s", url, err, missing, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWorkerCommandUsage(t *testing.T) {
	env, _ := sqliteEnv(t)
	for _, args := range [][]string{
		{"worker", "--processes", "0"},
		{"worker", "--slots", "-1"},
		{"worker", "--heartbeat-interval", "0s"},
		{"worker", "extra"},
	} {
		r := runCLI(t, runsRegistry(), env, args...)
		wantCode(t, r, 2)
	}
	r := runCLI(t, runsRegistry(), env, "worker", "--metrics-addr", "0.0.0.0:9101")
	wantCode(t, r, 2)
	wantContains(t, "stderr", r.stderr, "refusing to serve /metrics without a token")
	env["TRELLIS_WORKER_SLOTS"] = "lots"
	wantCode(t, runCLI(t, runsRegistry(), env, "worker"), 2)
	r = runCLI(t, runsRegistry(), env, "worker", "--child")
	wantCode(t, r, 2)
	wantContains(t, "stderr", r.stderr, "TRELLIS_WORKER_CHILD is not set")
}

func TestCheckWorkerDatabase(t *testing.T) {
	local := filepath.Join(t.TempDir(), "trellis.db")
	if fs := networkFilesystem(local); fs != "" {
		t.Fatalf("networkFilesystem(%s) = %q; a temporary folder is local", local, fs)
	}
	for _, u := range []string{"sqlite:" + local, "postgres://u@db.example.com:5432/trellis"} {
		if err := checkWorkerDatabase(u); err != nil {
			t.Errorf("checkWorkerDatabase(%s) = %v, want nil", u, err)
		}
	}
}
