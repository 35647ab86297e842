package postgres_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
	"github.com/trellis-dag/trellis/store/storetest"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// openURL opens and migrates a store on url, closed at cleanup.
func openURL(t testing.TB, url string, opts postgres.Options) *postgres.Store {
	t.Helper()
	ctx := context.Background()
	s, err := postgres.Open(ctx, url, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return s
}

// open opens a store on a fresh schema.
func open(t testing.TB) *postgres.Store {
	t.Helper()
	return openURL(t, testdb.Postgres(t), postgres.Options{Logger: testLogger(t)})
}

// testLogger writes to the test's output (shown on failure or with -v).
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t) })
}

func TestFaultPointsMatchSuite(t *testing.T) {
	for _, p := range [][2]string{
		{postgres.FaultFinishRecorded, storetest.FaultFinishRecorded},
		{postgres.FaultFinishReleased, storetest.FaultFinishReleased},
		{postgres.FaultFinishSettled, storetest.FaultFinishSettled},
	} {
		if p[0] != p[1] {
			t.Errorf("fault point %q here, %q in the suite", p[0], p[1])
		}
	}
	if postgres.DefaultLogCap != storetest.LogCap {
		t.Errorf("default log cap %d, suite expects %d", postgres.DefaultLogCap, storetest.LogCap)
	}
}
