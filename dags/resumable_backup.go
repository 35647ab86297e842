package dags

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// The process-orchestrator seed's pipeline with its steps as it describes
// them: each starts work (on_start), stops without holding a worker, and
// is continued (on_continue) when the work is done.
//
//   - backup_generation (Shell) starts the archive in a background job and
//     defers (exit 100) waiting for the event backup-generated:<run>,
//     which the job posts to POST /api/v1/events when the archive is
//     ready ($BACKUP_EVENTS_URL, default http://127.0.0.1:8080/api/v1/events,
//     with $BACKUP_EVENTS_TOKEN as bearer token when set).
//   - backup_transfer (Resumable) starts a detached copy to secure storage
//     and checks it every second until its SHA-256 matches.
//   - process_completion_notification (Shell) writes the notification.
//
// Try it without a server: trellis dags test resumable_backup --run-id demo
// --event 'backup-generated:demo={}'.

// resumableJobSh is the background job of backup_generation: the
// generation of backup_automation, then the event. It runs detached
// (setsid) and without the worker pool's mark (env -u
// TRELLIS_WORKER_POOL), so it outlives the try that started it: the
// supervisor kills every marked process a task leaves behind.
const resumableJobSh = `printf '%s\n' "$$" > "$1" # detached: the task may end now
` + backupGenerationSh + `key="backup-generated:$run_dir"
sha=$(cat "$work/staging/backup.tar.gz.sha256")
url="${BACKUP_EVENTS_URL:-http://127.0.0.1:8080/api/v1/events}"
body=$(printf '{"key": "%s", "dedupe_key": "%s", "payload": {"sha256": "%s"}}' "$key" "$key" "$sha")
if [ -n "${BACKUP_EVENTS_TOKEN:-}" ]; then
	curl -fsS -X POST -H 'Content-Type: application/json' -H "Authorization: Bearer $BACKUP_EVENTS_TOKEN" --data "$body" "$url"
else
	curl -fsS -X POST -H 'Content-Type: application/json' --data "$body" "$url"
fi
echo
echo "posted $key"
`

// resumableGenerationSh starts the job (on_start) or checks its result
// (on_continue, TRELLIS_RESUMED=1).
const resumableGenerationSh = backupDirSh + `job="$work.job.sh"
if [ "${TRELLIS_RESUMED:-}" = 1 ]; then
	if [ ! -f "$work/staging/backup.tar.gz.sha256" ]; then
		echo "continued but the archive is not there yet; checking again in 1s"
		echo '{"after": "1s", "timeout": "30m"}' > "$TRELLIS_DEFER"
		exit 100
	fi
	echo "backup generation completed: sha256 $(cat "$work/staging/backup.tar.gz.sha256"), event payload ${TRELLIS_EVENT_PAYLOAD:-none}"
	exit 0
fi
mkdir -p "$(dirname "$work")"
cat > "$job" <<'JOB'
` + resumableJobSh + `JOB
rm -f "$work.job.pid"
env -u TRELLIS_WORKER_POOL setsid sh "$job" "$work.job.pid" > "$work.job.log" 2>&1 < /dev/null &
# Once the job has left this task's process group, the end of the task
# no longer kills it.
i=0
while [ ! -s "$work.job.pid" ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || { echo "the background job did not start" >&2; exit 1; }
	sleep 0.1
done
echo "backup generation started in the background (log $work.job.log); waiting for backup-generated:$run_dir"
printf '{"event": "backup-generated:%s", "timeout": "30m"}' "$run_dir" > "$TRELLIS_DEFER"
exit 100
`

// transfer is what backup_transfer saves between its steps.
type transfer struct {
	Src, Part, Dst string
	SHA256         string
}

// startTransfer is backup_transfer's on_start: it starts a detached copy
// of the archive and defers, checking every second.
func startTransfer(c *dag.Context) error {
	work := backupWork(c)
	src := filepath.Join(work, "staging", "backup.tar.gz")
	want, err := os.ReadFile(src + ".sha256")
	if err != nil {
		return fmt.Errorf("no backup to transfer: %w", err)
	}
	dir := filepath.Join(work, "secure-storage")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := transfer{Src: src, Part: filepath.Join(dir, "backup.tar.gz.part"), Dst: filepath.Join(dir, "backup.tar.gz"),
		SHA256: strings.TrimSpace(string(want))}
	// The shell exits at once; the copy, detached, outlives the try.
	cp := exec.CommandContext(c, "/bin/sh", "-c", `env -u TRELLIS_WORKER_POOL setsid cp "$1" "$2" < /dev/null > /dev/null 2>&1 &`, "sh", tr.Src, tr.Part)
	if err := cp.Run(); err != nil {
		return fmt.Errorf("start the copy: %w", err)
	}
	c.Logger().Info("copy started", "to", tr.Part)
	return c.Defer(dag.Wait{State: tr, After: time.Second, Timeout: 10 * time.Minute})
}

// continueTransfer is backup_transfer's on_continue: done once the copy's
// SHA-256 matches, otherwise it checks again in a second.
func continueTransfer(c *dag.Context) error {
	var tr transfer
	if err := c.DeferredState(&tr); err != nil {
		return dag.Permanent(err)
	}
	got, err := fileSHA256(tr.Part)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if got != tr.SHA256 {
		c.Logger().Info("copy not complete yet", "sha256", got)
		return c.Defer(dag.Wait{State: tr, After: time.Second, Timeout: 10 * time.Minute})
	}
	if err := os.Rename(tr.Part, tr.Dst); err != nil {
		return err
	}
	if err := os.WriteFile(tr.Dst+".sha256", []byte(got+"\n"), 0o644); err != nil {
		return err
	}
	c.Logger().Info("backup transferred", "to", tr.Dst, "sha256", got)
	return c.SetOutput(map[string]string{"archive": tr.Dst, "sha256": got})
}

// backupWork is the run's working directory, as backupDirSh computes it.
func backupWork(c *dag.Context) string {
	safe := strings.Map(func(r rune) rune {
		if r == '_' || r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return '_'
	}, c.RunID())
	tmp := c.Getenv("TMPDIR")
	if tmp == "" {
		tmp = "/tmp"
	}
	return filepath.Join(tmp, "trellis-backup", safe)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func init() {
	d := dag.New("resumable_backup",
		dag.Description("The backup pipeline with steps that start work, wait without a worker, and continue: an event from a background job, then a polled copy."),
		dag.Tags("example", "waiting"),
	)
	gen := d.Shell("backup_generation", resumableGenerationSh,
		dag.InheritEnv("BACKUP_EVENTS_URL", "BACKUP_EVENTS_TOKEN"), dag.Timeout(time.Minute))
	tr := d.Resumable("backup_transfer", dag.Steps{Start: startTransfer, Continue: continueTransfer},
		dag.Timeout(time.Minute))
	notify := d.Shell("process_completion_notification", processCompletionNotificationSh)
	gen.SetDownstream(tr)
	tr.SetDownstream(notify)
	dag.Register(d)
}
