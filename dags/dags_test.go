package dags

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

var logicalDate = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// sleeps records the retry waits of a run instead of sleeping.
type sleeps struct {
	mu sync.Mutex
	ds []time.Duration
}

func (s *sleeps) sleep(_ context.Context, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ds = append(s.ds, d)
	return nil
}

// lockedBuffer collects a run's logs.
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

// runDAG runs the registered DAG id to completion with a recording Sleep.
func runDAG(t *testing.T, id string, conf map[string]any) (*taskrun.DAGResult, *sleeps, string) {
	t.Helper()
	d := dag.Default().Lookup(id)
	if d == nil {
		t.Fatalf("DAG %q is not registered", id)
	}
	var logs lockedBuffer
	sl := &sleeps{}
	res, err := taskrun.RunDAG(context.Background(), d, taskrun.DAGOptions{
		Conf:        conf,
		LogicalDate: logicalDate,
		RunID:       "test_run_1",
		Log:         &logs,
		Sleep:       sl.sleep,
		Parallelism: 2,
	})
	if err != nil {
		t.Fatalf("run %s: %v\nlogs:\n%s", id, err, logs.String())
	}
	return res, sl, logs.String()
}

func wantTasks(t *testing.T, res *taskrun.DAGResult, logs string, want map[string]state.TaskState) {
	t.Helper()
	if len(res.Tasks) != len(want) {
		t.Errorf("run has %d tasks, want %d: %v", len(res.Tasks), len(want), res.Order)
	}
	for id, s := range want {
		if got := res.Tasks[id]; got.State != s {
			t.Errorf("task %s: state %s (%s), want %s", id, got.State, got.Err, s)
		}
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs)
	}
}

func TestExampleDAGsValidate(t *testing.T) {
	reg := dag.Default()
	if problems := reg.Validate(); len(problems) > 0 {
		for _, p := range problems {
			t.Error(p.String())
		}
	}
	for _, id := range []string{"test", "backup_automation", "etl_example"} {
		if reg.Lookup(id) == nil {
			t.Errorf("example DAG %q is not registered", id)
		}
	}
}

func TestTestDAG(t *testing.T) {
	d := dag.Default().Lookup("test")
	if d.ScheduleExpr() != "0 0 * * * *" || d.StartDate().IsZero() {
		t.Errorf("schedule %q, start %v", d.ScheduleExpr(), d.StartDate())
	}
	if up := d.Task("print_test2").UpstreamIDs(); len(up) != 1 || up[0] != "print_test1" {
		t.Errorf("print_test2 upstream = %v, want [print_test1]", up)
	}
	res, _, logs := runDAG(t, "test", nil)
	if res.State != state.RunSuccess {
		t.Errorf("run state %s", res.State)
	}
	wantTasks(t, res, logs, map[string]state.TaskState{"print_test1": state.Success, "print_test2": state.Success})
	i1, i2 := strings.Index(logs, "msg=test1"), strings.Index(logs, "msg=test2")
	if i1 < 0 || i2 < 0 || i1 > i2 {
		t.Errorf("want test1 logged before test2:\n%s", logs)
	}
}

func TestBackupAutomation(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	res, _, logs := runDAG(t, "backup_automation", nil)
	if res.State != state.RunSuccess {
		t.Errorf("run state %s", res.State)
	}
	wantTasks(t, res, logs, map[string]state.TaskState{
		"backup_generation": state.Success, "backup_transfer": state.Success,
		"process_completion_notification": state.Success,
	})

	work := filepath.Join(tmp, "trellis-backup", "test_run_1")
	staged, err := os.ReadFile(filepath.Join(work, "staging", "backup.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	stored, err := os.ReadFile(filepath.Join(work, "secure-storage", "backup.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(staged, stored) || len(stored) == 0 {
		t.Errorf("secure copy differs from the backup (%d vs %d bytes)", len(stored), len(staged))
	}
	note, err := os.ReadFile(filepath.Join(work, "notification.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Backup completed", "run: test_run_1", "logical date: 2026-03-01T00:00:00Z", "files: 4", "sha256: "} {
		if !strings.Contains(string(note), want) {
			t.Errorf("notification lacks %q:\n%s", want, note)
		}
	}
}

// TestBackupTransferVerifiesChecksum corrupts the recorded checksum of a
// generated backup and checks that the transfer fails.
func TestBackupTransferVerifiesChecksum(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	d := dag.Default().Lookup("backup_automation")
	info := dag.RunInfo{DAGID: d.ID(), RunID: "../../evil run", TryNumber: 1, LogicalDate: logicalDate}
	try := func(taskID string) (taskrun.Outcome, string) {
		var log bytes.Buffer
		info.TaskID = taskID
		out := taskrun.Run(context.Background(), taskrun.Try{Task: d.Task(taskID), Info: info, Log: &log})
		return out, log.String()
	}
	if out, log := try("backup_generation"); out.State != state.Success {
		t.Fatalf("generation: %s %v\n%s", out.State, out.Err, log)
	}
	// The run id is one path element inside the work area, whatever it holds.
	work := filepath.Join(tmp, "trellis-backup", "______evil_run")
	sumFile := filepath.Join(work, "staging", "backup.tar.gz.sha256")
	if err := os.WriteFile(sumFile, []byte(strings.Repeat("0", 64)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, log := try("backup_transfer")
	if out.State != state.Failed || !strings.Contains(log, "checksum mismatch") {
		t.Fatalf("transfer with a bad checksum: %s %v\n%s", out.State, out.Err, log)
	}
	// Nothing unverified is left in secure storage.
	for _, name := range []string{"backup.tar.gz", "backup.tar.gz.part"} {
		if _, err := os.Stat(filepath.Join(work, "secure-storage", name)); !os.IsNotExist(err) {
			t.Errorf("secure storage holds %s after a failed verification (stat: %v)", name, err)
		}
	}
	if out, log := try("process_completion_notification"); out.State != state.Failed {
		t.Fatalf("notification without a stored backup: %s\n%s", out.State, log)
	}
}

func TestETLExample(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	res, sl, logs := runDAG(t, "etl_example", nil)
	if res.State != state.RunSuccess {
		t.Errorf("run state %s", res.State)
	}
	wantTasks(t, res, logs, map[string]state.TaskState{
		"extract": state.Success, "transform": state.Success, "choose_load": state.Success,
		"load": state.Success, "skip_load": state.Skipped, "report": state.Success, "cleanup": state.Success,
	})
	if !strings.Contains(logs, "daily sales loaded") {
		t.Errorf("report did not see load's output:\n%s", logs)
	}
	if n := res.Tasks["extract"].TryNumber; n != 2 {
		t.Errorf("extract took %d tries, want 2 (fails on the first)", n)
	}
	if len(sl.ds) != 1 || sl.ds[0] != 200*time.Millisecond {
		t.Errorf("retry waits = %v, want one of 200ms", sl.ds)
	}

	b, err := os.ReadFile(filepath.Join(tmp, "trellis-etl", "warehouse", "daily_sales_2026-03-01.json"))
	if err != nil {
		t.Fatalf("warehouse file: %v", err)
	}
	var s salesSummary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Day != "2026-03-01" || s.Rows+s.Rejected != 20 || s.Rows == 0 || len(s.Customers) == 0 {
		t.Errorf("summary = %+v, want 20 orders of 2026-03-01", s)
	}
	total := 0
	for _, c := range s.Customers {
		total += c.Orders
	}
	if total != s.Rows {
		t.Errorf("customer orders add up to %d, want %d", total, s.Rows)
	}
	if _, err := os.Stat(filepath.Join(tmp, "trellis-etl", "staging", "test_run_1")); !os.IsNotExist(err) {
		t.Errorf("cleanup left the staging directory: %v", err)
	}
}

func TestETLExampleSkipsLoadWithoutRows(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	res, _, logs := runDAG(t, "etl_example", map[string]any{"rows": float64(0)})
	if res.State != state.RunSuccess {
		t.Errorf("run state %s", res.State)
	}
	wantTasks(t, res, logs, map[string]state.TaskState{
		"extract": state.Success, "transform": state.Success, "choose_load": state.Success,
		"load": state.Skipped, "skip_load": state.Success, "report": state.Success, "cleanup": state.Success,
	})
	if !strings.Contains(logs, "nothing was loaded") {
		t.Errorf("report did not notice the skipped load:\n%s", logs)
	}
	if _, err := os.Stat(filepath.Join(tmp, "trellis-etl", "warehouse")); !os.IsNotExist(err) {
		t.Errorf("load wrote the warehouse although it was skipped: %v", err)
	}
}

func TestETLExampleBadParamFailsWithoutRetry(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	res, sl, logs := runDAG(t, "etl_example", map[string]any{"rows": "many"})
	if res.State != state.RunFailed {
		t.Errorf("run state %s, want failed", res.State)
	}
	if r := res.Tasks["extract"]; r.State != state.Failed || r.TryNumber != 1 || !strings.Contains(r.Err, `param "rows"`) {
		t.Errorf("extract = %+v, want failed on try 1 naming the param", r)
	}
	if len(sl.ds) != 0 {
		t.Errorf("a permanent failure was retried: waits %v", sl.ds)
	}
	// cleanup runs whatever happened upstream; report is upstream_failed,
	// which fails the run.
	wantTasks(t, res, logs, map[string]state.TaskState{
		"extract": state.Failed, "transform": state.UpstreamFailed, "choose_load": state.UpstreamFailed,
		"load": state.UpstreamFailed, "skip_load": state.UpstreamFailed, "report": state.UpstreamFailed,
		"cleanup": state.Success,
	})
}

func TestIntParam(t *testing.T) {
	for _, tc := range []struct {
		v       any
		want    int
		wantErr bool
	}{
		{nil, 20, false}, {7, 7, false}, {int64(8), 8, false}, {float64(9), 9, false},
		{json.Number("10"), 10, false}, {-1, 0, true}, {1.5, 0, true}, {"3", 0, true},
		{float64(2_000_000), 0, true},
	} {
		got, err := intParam(map[string]any{"rows": tc.v}, "rows", 20)
		if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
			t.Errorf("intParam(%#v) = %d, %v", tc.v, got, err)
		}
	}
}

func TestPathSafe(t *testing.T) {
	for in, want := range map[string]string{
		"manual__2026-03-01T00:00:00+00:00": "manual__2026-03-01T00_00_00_00_00",
		"../x":                              "___x",
		"ok_id-1":                           "ok_id-1",
	} {
		if got := pathSafe(in); got != want {
			t.Errorf("pathSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestResumableBackup runs the resumable pipeline in-process: the
// generation defers on its event (given here, as `dags test --event`
// does) and continues once its background job has written the archive;
// the transfer polls its detached copy; every step on its first try.
func TestResumableBackup(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	d := dag.Default().Lookup("resumable_backup")
	var logs lockedBuffer
	res, err := taskrun.RunDAG(context.Background(), d, taskrun.DAGOptions{
		LogicalDate: logicalDate, RunID: "test_run_1", Log: &logs, Parallelism: 2,
		Events: map[string]json.RawMessage{"backup-generated:test_run_1": json.RawMessage(`{"sha256": "given"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantTasks(t, res, logs.String(), map[string]state.TaskState{"backup_generation": state.Success,
		"backup_transfer": state.Success, "process_completion_notification": state.Success})
	for _, r := range res.Tasks {
		if r.TryNumber != 1 {
			t.Errorf("%s took %d tries, want 1", r.TaskID, r.TryNumber)
		}
	}
	for _, want := range []string{"deferred: event \"backup-generated:test_run_1\"", "copy started", "backup transferred", "Backup completed"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

// TestFibonacci runs the seed's recursive fibonacci in-process: fib(25)
// with dedup makes 26 calls.
func TestFibonacci(t *testing.T) {
	res, _, logs := runDAG(t, "fibonacci", map[string]any{"n": 25})
	if res.State != state.RunSuccess {
		t.Fatalf("run %s: %+v\n%s", res.State, res.Tasks, logs)
	}
	if len(res.Calls) != 26 {
		t.Errorf("%d calls, want 26", len(res.Calls))
	}
	if !strings.Contains(logs, "fibonacci=75025") {
		t.Errorf("logs lack the result 75025:\n%s", logs)
	}
}
