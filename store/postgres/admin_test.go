package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store/postgres"
)

func TestCreateAndDropDatabase(t *testing.T) {
	ctx := context.Background()
	server := testdb.Postgres(t) // its search_path names a schema the new database lacks
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_admin_" + hex.EncodeToString(b[:])

	dbURL, err := postgres.CreateDatabase(ctx, server, name)
	if err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	if !strings.Contains(dbURL, "/"+name) || strings.Contains(dbURL, "search_path") {
		t.Errorf("CreateDatabase URL = %s, want one naming database %s, without search_path", dbURL, name)
	}
	s, err := postgres.Open(ctx, dbURL, postgres.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open the new database: %v", err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate the new database: %v", err)
	}
	a, err := postgres.DatabaseActivity(ctx, server, name)
	if err != nil {
		t.Fatalf("DatabaseActivity: %v", err)
	}
	if a.Backends < 1 {
		t.Errorf("activity of a database with an open store = %+v, want a backend", a)
	}
	// Once every backend has exited, their counts are in.
	_ = s.Close()
	deadline := time.Now().Add(10 * time.Second)
	for a.Backends > 0 && time.Now().Before(deadline) {
		if a, err = postgres.DatabaseActivity(ctx, server, name); err != nil {
			t.Fatal(err)
		}
	}
	if a.Backends != 0 || a.Commits < 10 || a.RowsWritten < 1 {
		t.Errorf("activity after migrating and closing = %+v, want no backend and the migrations' commits and rows", a)
	}
	s, err = postgres.Open(ctx, dbURL, postgres.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Dropping closes the connections still open (the store's pool).
	if err := postgres.DropDatabase(ctx, server, name); err != nil {
		t.Fatalf("DropDatabase: %v", err)
	}
	_ = s.Close()
	if _, err := postgres.Open(ctx, dbURL, postgres.Options{Logger: testLogger(t), ConnectTimeout: 1}); err == nil {
		t.Fatalf("Open after DropDatabase succeeded; the database should be gone")
	}
	if _, err := postgres.DatabaseActivity(ctx, server, name); err == nil {
		t.Errorf("DatabaseActivity of a dropped database succeeded")
	}
	if err := postgres.DropDatabase(ctx, server, name); err != nil {
		t.Errorf("DropDatabase of a missing database = %v, want nil", err)
	}

	for _, bad := range []string{"", "Upper", "semi;colon", "1starts_with_digit", strings.Repeat("x", 64)} {
		if _, err := postgres.CreateDatabase(ctx, server, bad); err == nil || !strings.Contains(err.Error(), "want a name") {
			t.Errorf("CreateDatabase(%q) = %v, want a name error", bad, err)
		}
	}
	if _, err := postgres.CreateDatabase(ctx, "host=localhost user=postgres", "x"); err == nil {
		t.Errorf("CreateDatabase with a key=value string succeeded, want an error asking for a URL")
	}
}
