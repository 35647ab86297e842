package sqlite_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/sqlite"
	"github.com/trellis-dag/trellis/store/storetest"
)

// openTest opens a migrated store on a fresh file from testdb (or, in a
// child process of a multi-process test, on the parent's file).
func openTest(t *testing.T) *sqlite.Store {
	t.Helper()
	u := testdb.SQLite(t)
	path, ok := strings.CutPrefix(u, "sqlite:")
	if !ok {
		t.Fatalf("testdb.SQLite returned %q, not a sqlite: URL", u)
	}
	s, err := sqlite.Open(t.Context(), path, sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t) })
}
