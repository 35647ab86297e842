package sqlite

import (
	"context"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/migrations"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// Migration 00036 rebuilds the log tables WITHOUT ROWID: the logs written
// before it read the same after it, and after migrating back down.
func TestMigrationLogsWithoutRowidKeepsLogs(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "t.db"), Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fsys, err := fs.Sub(migrations.SQLite, "sqlite")
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, s.wdb, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 35); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sp := store.DAGSpec{DAGID: "d", Fingerprint: "f", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		{TaskID: "a", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
		{TaskID: "b", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess}}}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "d", RunID: "r", RunType: store.RunManual, LogicalDate: t0, Fingerprint: "f"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "d", t0); err != nil {
		t.Fatal(err)
	}
	cs, err := s.ClaimTasks(ctx, store.Worker{ID: "w"}, 2, t0)
	if err != nil || len(cs) != 2 {
		t.Fatal(cs, err)
	}
	want := map[string]string{}
	for i, c := range cs {
		try := store.Try{ID: c.ID, TryNumber: c.TryNumber}
		first := c.TaskID + " first\n"
		if err := s.AppendLog(ctx, try, []byte(first)); err != nil {
			t.Fatal(err)
		}
		last := strings.Repeat(c.TaskID, i+1) + " last\n"
		if _, err := s.FinishTasks(ctx, []store.Result{{Try: try, State: state.Success, EndedAt: t0, Log: []byte(last)}}); err != nil {
			t.Fatal(err)
		}
		want[c.TaskID] = first + last
	}
	check := func(when string) {
		t.Helper()
		for id, w := range want {
			got, err := s.ReadLog(ctx, "d", "r", id, 1)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != w {
				t.Errorf("%s: log of %s = %q, want %q", when, id, got, w)
			}
		}
	}
	withoutRowid := func() int {
		t.Helper()
		var n int
		if err := s.wdb.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master
			WHERE name IN ('task_logs', 'task_log_chunks') AND sql LIKE '%WITHOUT ROWID%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	check("at 00035")
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if n := withoutRowid(); n != 2 {
		t.Fatalf("%d of the log tables are WITHOUT ROWID after 00036, want 2", n)
	}
	check("after 00036")
	if _, err := p.DownTo(ctx, 35); err != nil {
		t.Fatal(err)
	}
	if n := withoutRowid(); n != 0 {
		t.Fatalf("%d of the log tables are WITHOUT ROWID after migrating down, want 0", n)
	}
	check("after migrating down")
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	check("after migrating up again")
	// Deleting the run still cascades to its logs.
	if err := s.DeleteRun(ctx, "d", "r"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.wdb.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM task_logs) + (SELECT count(*) FROM task_log_chunks)`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d log rows left after the run was deleted", n)
	}
}
