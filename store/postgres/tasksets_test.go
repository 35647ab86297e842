package postgres_test

import (
	"context"
	"regexp"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
	"github.com/trellis-dag/trellis/store/storetest"
)

// TestConformanceKeepsTaskSets runs the conformance suite and checks after
// every test that task_queue and task_running (migration 00008) hold
// exactly the queued and the running instances, whatever the test did to
// them: created, released, claimed, finished, retried, cleared, marked,
// purged.
func TestConformanceKeepsTaskSets(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		url := testdb.Postgres(t)
		s := openURL(t, url, postgres.Options{Logger: testLogger(t)})
		t.Cleanup(func() { checkTaskSets(t, url) }) // before the store closes
		return s
	})
}

// checkTaskSets fails t when the queue or the running set differs from the
// states of task_instances.
func checkTaskSets(t *testing.T, url string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Errorf("check task sets: %v", err)
		return
	}
	defer conn.Close(ctx)
	var queue, running int
	err = conn.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM task_instances t FULL JOIN task_queue q ON q.ti_id = t.id
			WHERE (t.state = 'queued') IS DISTINCT FROM (q.ti_id IS NOT NULL)
				OR q.ti_id IS NOT NULL AND (t.priority, t.queued_at, t.dag_id) IS DISTINCT FROM (q.priority, q.queued_at, q.dag_id)),
		(SELECT count(*) FROM task_instances t FULL JOIN task_running r ON r.ti_id = t.id
			WHERE (t.state IN ('running', 'restarting')) IS DISTINCT FROM (r.ti_id IS NOT NULL)
				OR r.ti_id IS NOT NULL AND t.dag_id IS DISTINCT FROM r.dag_id)`).Scan(&queue, &running)
	if err != nil {
		t.Errorf("check task sets: %v", err)
		return
	}
	if queue != 0 || running != 0 {
		t.Errorf("task_queue differs from the queued instances in %d rows, task_running from the running ones in %d", queue, running)
	}
}

// hotColumns are the columns of task_instances that claiming, finishing,
// releasing and heartbeats change: an index naming one (as a key or in
// its predicate) makes those updates non-HOT, a new entry in every index
// of the table for each.
var hotColumns = regexp.MustCompile(`\b(state|try_number|up_[a-z_]+|queued_at|started_at|ended_at|worker_id|hostname|pid|heartbeat_at|output|error)\b`)

func TestNoIndexOnHotPathColumns(t *testing.T) {
	ctx := context.Background()
	url := testdb.Postgres(t)
	openURL(t, url, postgres.Options{Logger: testLogger(t)})
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'task_instances'::regclass`)
	if err != nil {
		t.Fatal(err)
	}
	defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(defs) < 2 {
		t.Fatalf("indexes of task_instances: %q, want the primary key and the unique key at least", defs)
	}
	for _, d := range defs {
		if c := hotColumns.FindString(d); c != "" {
			t.Errorf("index %s names %s, which the hot path changes", d, c)
		}
	}
}
