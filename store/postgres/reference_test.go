package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store/postgres"
)

// TestMeasureReference measures a real server briefly: the updates commit,
// every round trip is timed, and the reference table is gone afterwards.
func TestMeasureReference(t *testing.T) {
	ctx := context.Background()
	url := testdb.Postgres(t)
	ref, err := postgres.MeasureReference(ctx, url, 2, 300*time.Millisecond, 5)
	if err != nil {
		t.Fatalf("MeasureReference: %v", err)
	}
	if ref.Updates < 1 || ref.UpdateTPS <= 0 || len(ref.RoundTrips) != 5 {
		t.Errorf("reference = %d updates, %v/s, %d round trips; want some of each and 5 round trips", ref.Updates, ref.UpdateTPS, len(ref.RoundTrips))
	}
	for i, d := range ref.RoundTrips {
		if d <= 0 || d > 10*time.Second {
			t.Errorf("round trip %d took %v", i, d)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var left *string
	if err := conn.QueryRow(ctx, "SELECT to_regclass('trellis_reference')::text").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != nil {
		t.Errorf("table %s is still there", *left)
	}
	if _, err := postgres.MeasureReference(ctx, url, 0, time.Second, 1); err == nil || !strings.Contains(err.Error(), "at least one client") {
		t.Errorf("MeasureReference with no client: %v", err)
	}
}

// TestTableActivity counts the updates and the HOT ones of a table whose
// updates change no indexed column, and names a missing table.
func TestTableActivity(t *testing.T) {
	ctx := context.Background()
	url := testdb.Postgres(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE TABLE activity_probe (id int PRIMARY KEY, n int) WITH (fillfactor = 50)",
		"INSERT INTO activity_probe SELECT g, 0 FROM generate_series(1, 10) g",
		"UPDATE activity_probe SET n = n + 1",
		"SELECT pg_stat_force_next_flush()",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	var w postgres.TableWrites
	for time.Now().Before(deadline) {
		if w, err = postgres.TableActivity(ctx, url, "activity_probe"); err != nil {
			t.Fatal(err)
		}
		if w.Updates >= 10 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if w.Updates != 10 || w.HOTUpdates != 10 || w.DeadRows < 1 {
		t.Errorf("activity = %+v, want 10 updates, all HOT, dead rows", w)
	}
	if _, err := postgres.TableActivity(ctx, url, "no_such_table"); err == nil || !strings.Contains(err.Error(), "no such table") {
		t.Errorf("TableActivity of a missing table: %v", err)
	}
}
