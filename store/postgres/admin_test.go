package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store/postgres"
)

func TestCreateAndDropDatabase(t *testing.T) {
	ctx := context.Background()
	server := strings.Split(testdb.Postgres(t), "?")[0] // the server, without the test schema
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_admin_" + hex.EncodeToString(b[:])

	dbURL, err := postgres.CreateDatabase(ctx, server, name)
	if err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	if !strings.HasSuffix(dbURL, "/"+name) {
		t.Errorf("CreateDatabase URL = %s, want one ending in /%s", dbURL, name)
	}
	s, err := postgres.Open(ctx, dbURL, postgres.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open the new database: %v", err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate the new database: %v", err)
	}
	// Dropping closes the connections still open (the store's pool).
	if err := postgres.DropDatabase(ctx, server, name); err != nil {
		t.Fatalf("DropDatabase: %v", err)
	}
	_ = s.Close()
	if _, err := postgres.Open(ctx, dbURL, postgres.Options{Logger: testLogger(t), ConnectTimeout: 1}); err == nil {
		t.Fatalf("Open after DropDatabase succeeded; the database should be gone")
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
