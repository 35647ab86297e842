package sqlite_test

import (
	"bytes"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/trellis-dag/trellis/migrations"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/sqlite"
)

// TestPurgeShrinksFile: the file is in auto_vacuum=INCREMENTAL mode after
// migrating, and purging runs with large logs gives the space back to the
// file system.
func TestPurgeShrinksFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shrink.db")
	s := open(t, path, sqlite.Options{})
	sp := store.DAGSpec{DAGID: "big", Fingerprint: "f1", MaxActiveRuns: 1000, Tasks: []store.TaskSpec{task("a")}}
	w := store.Worker{ID: "w", Hostname: "h", PID: 1, Slots: 1000, StartedAt: t0, HeartbeatAt: t0}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.RegisterWorker(t.Context(), w))
	const runs = 100
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	for i := range runs {
		syncRun(t, s, sp, fmt.Sprintf("r%03d", i), t0.Add(time.Duration(i)*time.Hour))
	}
	claimed, err := s.ClaimTasks(t.Context(), w, runs, t0)
	must(err)
	if len(claimed) != runs {
		t.Fatalf("claimed %d, want %d", len(claimed), runs)
	}
	var results []store.Result
	for _, c := range claimed {
		a := store.Try{ID: c.ID, TryNumber: c.TryNumber}
		must(s.AppendLog(t.Context(), a, chunk))
		results = append(results, store.Result{Try: a, State: state.Success, StartedAt: t0, EndedAt: t0.Add(time.Minute)})
	}
	_, err = s.FinishTasks(t.Context(), results)
	must(err)
	must(s.Close())
	full := fileSize(t, path)
	if full < runs*64<<10 {
		t.Fatalf("file of %d bytes holds less than the logs written", full)
	}

	s = open(t, path, sqlite.Options{})
	var purged store.Purged
	for {
		p, err := s.PurgeRuns(t.Context(), store.PurgeQuery{Before: time.Now().Add(time.Hour), Limit: 10})
		must(err)
		if p.Runs == 0 {
			break
		}
		purged.Runs += p.Runs
		purged.Logs += p.Logs
	}
	if purged.Runs != runs || purged.Logs != runs {
		t.Fatalf("purged %+v, want %d runs and logs", purged, runs)
	}
	must(s.Close())
	if after := fileSize(t, path); after > full/4 {
		t.Errorf("file is %d bytes after purging everything, was %d: the space was not given back", after, full)
	}

	db, err := sql.Open("sqlite", "file:"+path)
	must(err)
	defer db.Close()
	var mode int
	must(db.QueryRow("PRAGMA auto_vacuum").Scan(&mode))
	if mode != 2 {
		t.Errorf("auto_vacuum = %d, want 2 (incremental)", mode)
	}
}

// fileSize returns the size of the database file (its WAL checkpointed:
// the store is closed).
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-wal"); err == nil {
		if wal, _ := os.Stat(path + "-wal"); wal.Size() > 0 {
			t.Logf("WAL of %d bytes left after close", wal.Size())
		}
	}
	return fi.Size()
}

// TestMigrateSwitchesAutoVacuum: a file made before migration 00004 (no
// auto_vacuum), with data, is switched to incremental auto_vacuum by
// Migrate, keeping its data.
func TestMigrateSwitchesAutoVacuum(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := fs.Sub(migrations.SQLite, "sqlite")
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(t.Context(), 2); err != nil {
		t.Fatal(err)
	}
	var mode int
	if err := db.QueryRow("PRAGMA auto_vacuum").Scan(&mode); err != nil || mode != 0 {
		t.Fatalf("old file: auto_vacuum %d, %v; want 0", mode, err)
	}
	// Data written at version 2 (by SQL: today's store writes columns of
	// later migrations), then the migration.
	for _, q := range []string{
		`INSERT INTO dags (dag_id, fingerprint, updated_at) VALUES ('d', 'f1', 0)`,
		`INSERT INTO dag_versions (dag_id, fingerprint, n_tasks, created_at) VALUES ('d', 'f1', 0, 0)`,
		`INSERT INTO dag_runs (dag_id, run_id, run_type, logical_date, interval_start, interval_end, state, version_id,
			fingerprint, queued_at) SELECT 'd', 'r', 'manual', 0, 0, 0, 'queued', id, 'f1', 0 FROM dag_versions`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	s, err := sqlite.Open(t.Context(), path, sqlite.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	s.Close()
	db, err = sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var runs int
	if err := db.QueryRow("PRAGMA auto_vacuum").Scan(&mode); err != nil || mode != 2 {
		t.Errorf("after Migrate: auto_vacuum %d, %v; want 2 (incremental)", mode, err)
	}
	if err := db.QueryRow("SELECT count(*) FROM dag_runs").Scan(&runs); err != nil || runs != 1 {
		t.Errorf("runs after the migration: %d, %v", runs, err)
	}
}
