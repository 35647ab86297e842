package dags

import (
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// backupDirSh sets $work to this run's working directory,
// ${TMPDIR:-/tmp}/trellis-backup/<run id>, with every character of the run
// id outside [A-Za-z0-9_-] replaced by "_" so that it is one safe path
// element (a run id such as "manual__2026-01-01T00:00:00+00:00" contains
// ":" and "+"; ".." must not climb out). The three tasks share it, so they
// must run on the same host.
const backupDirSh = `set -eu
run_dir=$(printf '%s' "${TRELLIS_RUN_ID:?TRELLIS_RUN_ID is not set}" | tr -c 'A-Za-z0-9_-' '_')
work="${TMPDIR:-/tmp}/trellis-backup/$run_dir"
`

// backupGenerationSh creates sample data in $work/source, archives it to
// $work/staging/backup.tar.gz and records the archive's SHA-256 next to it.
// It starts from an empty directory, so a retry redoes the whole step.
const backupGenerationSh = backupDirSh + `rm -rf "$work"
mkdir -p "$work/source/db" "$work/source/uploads" "$work/staging"
for table in customers orders invoices; do
	i=1
	while [ "$i" -le 50 ]; do
		printf '%s,%d,run=%s,logical_date=%s\n' "$table" "$i" "$TRELLIS_RUN_ID" "$TRELLIS_LOGICAL_DATE"
		i=$((i + 1))
	done > "$work/source/db/$table.csv"
done
printf 'uploaded by %s\n' "$TRELLIS_DAG_ID" > "$work/source/uploads/readme.txt"
tar -czf "$work/staging/backup.tar.gz" -C "$work" source
sha256sum "$work/staging/backup.tar.gz" | cut -d ' ' -f 1 > "$work/staging/backup.tar.gz.sha256"
echo "backup created: $work/staging/backup.tar.gz ($(wc -c < "$work/staging/backup.tar.gz") bytes, sha256 $(cat "$work/staging/backup.tar.gz.sha256"))"
`

// backupTransferSh copies the archive into $work/secure-storage. The copy
// lands under a temporary name and only takes its final name, with its
// checksum next to it, once its SHA-256 matches the one recorded at
// generation and it reads as a gzip'd tar; otherwise it is removed and the
// task fails.
const backupTransferSh = backupDirSh + `src="$work/staging/backup.tar.gz"
dst_dir="$work/secure-storage"
part="$dst_dir/backup.tar.gz.part"
[ -f "$src" ] || { echo "no backup to transfer at $src" >&2; exit 1; }
mkdir -p "$dst_dir"
cp "$src" "$part"
expected=$(cat "$src.sha256")
actual=$(sha256sum "$part" | cut -d ' ' -f 1)
if [ "$expected" != "$actual" ]; then
	rm -f "$part"
	echo "checksum mismatch: expected $expected, secure copy has $actual" >&2
	exit 1
fi
if ! tar -tzf "$part" > /dev/null; then
	rm -f "$part"
	echo "the secure copy is not a readable tar.gz archive" >&2
	exit 1
fi
mv "$part" "$dst_dir/backup.tar.gz"
printf '%s\n' "$actual" > "$dst_dir/backup.tar.gz.sha256"
echo "backup transferred to $dst_dir/backup.tar.gz, sha256 verified ($actual)"
`

// processCompletionNotificationSh writes $work/notification.txt describing
// the verified backup and prints it.
const processCompletionNotificationSh = backupDirSh + `archive="$work/secure-storage/backup.tar.gz"
[ -f "$archive" ] || { echo "no backup in secure storage at $archive" >&2; exit 1; }
[ -f "$archive.sha256" ] || { echo "the backup at $archive was never verified" >&2; exit 1; }
files=$(tar -tzf "$archive" | grep -c -v '/$' || true)
{
	echo "Backup completed"
	echo "dag: $TRELLIS_DAG_ID"
	echo "run: $TRELLIS_RUN_ID"
	echo "logical date: $TRELLIS_LOGICAL_DATE"
	echo "archive: $archive"
	echo "files: $files"
	echo "sha256: $(cat "$archive.sha256")"
	echo "notified at: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$work/notification.txt"
cat "$work/notification.txt"
`

// The backup automation pipeline of the process-orchestrator seed: backup
// generation, transfer to secure storage, completion notification. Each
// step is a Shell task doing real work with POSIX sh, coreutils and tar.
func init() {
	d := dag.New("backup_automation",
		dag.Description("Archive a folder, copy it to secure storage verifying its SHA-256, and write a completion notification."),
		dag.Schedule("@daily"),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		dag.Tags("example", "shell"),
		dag.DefaultTaskOptions(dag.Retries(1), dag.RetryDelay(5*time.Second), dag.Timeout(5*time.Minute)),
	)
	gen := d.Shell("backup_generation", backupGenerationSh)
	transfer := d.Shell("backup_transfer", backupTransferSh)
	notify := d.Shell("process_completion_notification", processCompletionNotificationSh)
	gen.SetDownstream(transfer)
	transfer.SetDownstream(notify)
	dag.Register(d)
}
