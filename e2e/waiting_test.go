//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/internal/testdb"
)

func TestWaitingSQLite(t *testing.T) {
	t.Parallel()
	testWaiting(t, testdb.SQLite(t))
}

func TestWaitingPostgres(t *testing.T) {
	t.Parallel()
	testWaiting(t, testdb.Postgres(t))
}

// testWaiting runs the resumable_backup example through `trellis serve`:
// its Shell step starts a background job and defers; the job, detached,
// posts its event back to the server's API when the archive is ready,
// which continues the step (same try, with the event's payload); the
// Resumable transfer polls its copy without holding a worker. The event
// shows in the metrics; continuing a finished step is a 409.
func testWaiting(t *testing.T, dbURL string) {
	addr := freeAddr(t)
	events := "http://" + addr + "/api/v1/events"
	args := append([]string{}, serveArgs...)
	for i, a := range args {
		if a == "127.0.0.1:0" {
			args[i] = addr
		}
	}
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + dbURL, "BACKUP_EVENTS_URL=" + events}, args...)
	c := newClient(t, srv.url, "")

	c.ok(http.StatusOK, "POST", "/api/v1/dags/resumable_backup/dagRuns", map[string]any{"dag_run_id": "e2e_wait"})
	waitRun(t, c, "resumable_backup", "e2e_wait", "success")
	tis := taskStates(t, c, "resumable_backup", "e2e_wait")
	for _, task := range []string{"backup_generation", "backup_transfer", "process_completion_notification"} {
		if tis[task].state != "success" || tis[task].try != 1 {
			t.Errorf("%s = %+v, want success on try 1 (a deferral uses no try)", task, tis[task])
		}
	}
	base := "/api/v1/dags/resumable_backup/dagRuns/e2e_wait/taskInstances/"
	// One try, two steps: the start that deferred and the continue the
	// event's payload reached.
	waitLog(t, c, base+"backup_generation/logs/1", "text/plain",
		"waiting for backup-generated:e2e_wait", "task deferred",
		`backup generation completed: sha256 `, `event payload {"sha256":`)
	waitLog(t, c, base+"backup_transfer/logs/1", "text/plain", "copy started", "backup transferred")
	if r := c.do("POST", base+"backup_generation/continue", map[string]any{}); r.status != http.StatusConflict {
		t.Errorf("continue a finished step → %d %s, want 409", r.status, r.body)
	}
	// The detached jobs dropped the pool's mark: the supervisor, which
	// kills what tasks leave behind, left them to finish.
	if strings.Contains(srv.stderr.String(), "killed processes left behind") {
		t.Errorf("the supervisor killed a detached job of the example:\n%s", srv.stderr)
	}
	eventually(t, 10*time.Second, "the event in the metrics", func() (bool, string) {
		m := c.scrape()
		v, ok := m.get("trellis_events_total", "outcome", "recorded")
		return ok && v >= 1, fmt.Sprint(v)
	})
}

// freeAddr returns a loopback address with a port free a moment ago, for
// a server whose URL its own environment must name.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}
