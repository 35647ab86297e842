package postgres_test

import (
	"context"
	"fmt"
	"maps"
	"math"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
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
	queue, running, err := taskSetDiff(ctx, conn)
	if err != nil {
		t.Errorf("check task sets: %v", err)
		return
	}
	if queue != 0 || running != 0 {
		t.Errorf("task_queue differs from the queued instances in %d rows, task_running from the running ones in %d", queue, running)
	}
}

// taskSetDiff counts the rows where task_queue differs from the queued
// instances and task_running from the running ones.
func taskSetDiff(ctx context.Context, conn *pgx.Conn) (queue, running int, err error) {
	err = conn.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM task_instances t FULL JOIN task_queue q ON q.ti_id = t.id
			WHERE (t.state = 'queued') IS DISTINCT FROM (q.ti_id IS NOT NULL)
				OR q.ti_id IS NOT NULL AND (t.priority, t.queued_at, t.dag_id) IS DISTINCT FROM (q.priority, q.queued_at, q.dag_id)),
		(SELECT count(*) FROM task_instances t FULL JOIN task_running r ON r.ti_id = t.id
			WHERE (t.state IN ('running', 'restarting')) IS DISTINCT FROM (r.ti_id IS NOT NULL)
				OR r.ti_id IS NOT NULL AND t.dag_id IS DISTINCT FROM r.dag_id)`).Scan(&queue, &running)
	return queue, running, err
}

// TestTaskSetsFollowStates writes task_instances directly, as any writer
// may, and checks that the triggers move the rows between the sets in the
// same statement, and that taskSetDiff sees a set out of step.
func TestTaskSetsFollowStates(t *testing.T) {
	ctx := context.Background()
	url := testdb.Postgres(t)
	openURL(t, url, postgres.Options{Logger: testLogger(t)})
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	sets := func(step string) (queued, running []int64) {
		t.Helper()
		for _, q := range []struct {
			sql string
			dst *[]int64
		}{{"SELECT ti_id FROM task_queue ORDER BY 1", &queued}, {"SELECT ti_id FROM task_running ORDER BY 1", &running}} {
			rows, err := conn.Query(ctx, q.sql)
			if err != nil {
				t.Fatal(err)
			}
			if *q.dst, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
				t.Fatal(err)
			}
		}
		if dq, dr, err := taskSetDiff(ctx, conn); err != nil || dq != 0 || dr != 0 {
			t.Errorf("%s: sets out of step: queue %d, running %d rows (%v)", step, dq, dr, err)
		}
		return queued, running
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO task_instances (run_id, dag_id, task_id, state, queued_at, max_tries, retries, priority, trigger_rule,
			retry_delay_ns, max_backoff_ns, timeout_ns, n_upstream)
		SELECT 1, 'd', 't' || g, CASE WHEN g <= 2 THEN 'queued' ELSE 'none' END, CASE WHEN g <= 2 THEN now() END,
			1, 0, 1, 'all_success', 0, 0, 0, 0
		FROM generate_series(1, 4) g`)
	q, r := sets("insert")
	if len(q) != 2 || len(r) != 0 {
		t.Errorf("after inserting 2 queued of 4: queue %v, running %v", q, r)
	}
	exec(`UPDATE task_instances SET state = 'running' WHERE task_id = 't1'`)
	exec(`UPDATE task_instances SET state = 'queued', queued_at = now() WHERE task_id = 't3'`)
	exec(`UPDATE task_instances SET priority = 5 WHERE task_id = 't2'`)
	exec(`UPDATE task_instances SET heartbeat_at = now() WHERE task_id = 't1'`)
	if q, r = sets("updates"); len(q) != 2 || len(r) != 1 {
		t.Errorf("after a claim, a release and a reprioritisation: queue %v, running %v", q, r)
	}
	exec(`UPDATE task_instances SET state = 'success' WHERE task_id = 't1'`)
	exec(`DELETE FROM task_instances WHERE task_id = 't3'`)
	if q, r = sets("finish and delete"); len(q) != 1 || len(r) != 0 {
		t.Errorf("after a finish and a delete: queue %v, running %v", q, r)
	}
	// The check sees a set out of step.
	exec(`DELETE FROM task_queue`)
	if dq, _, err := taskSetDiff(ctx, conn); err != nil || dq != 1 {
		t.Errorf("taskSetDiff with the queue emptied behind the triggers' back = %d, %v; want 1", dq, err)
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

// TestClaimsVacuumTheQueue claims with a store that vacuums the queue
// tables after every claimed instance: PostgreSQL counts the vacuum.
func TestClaimsVacuumTheQueue(t *testing.T) {
	ctx := context.Background()
	url := testdb.Postgres(t)
	s := openURL(t, url, postgres.Options{Logger: testLogger(t), QueueVacuumEvery: 1})
	sp := store.DAGSpec{DAGID: "wide", Fingerprint: "wide-3", MaxActiveRuns: 1}
	for i := range 3 {
		sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: fmt.Sprintf("t%d", i), Kind: dag.KindFunc,
			TriggerRule: dag.AllSuccess, RetryDelay: time.Second})
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: sp.DAGID, RunID: "r", RunType: store.RunManual,
		LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0, Fingerprint: sp.Fingerprint, QueuedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, sp.DAGID, t0); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	vacuums := func() (n int64) {
		t.Helper()
		if err := conn.QueryRow(ctx, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'task_queue'::regclass").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := vacuums()
	cs, err := s.ClaimTasks(ctx, store.Worker{ID: "w", Hostname: "h", PID: 1}, 10, t0)
	if err != nil || len(cs) != 3 {
		t.Fatalf("ClaimTasks = %d claimed, %v; want 3", len(cs), err)
	}
	if after := vacuums(); after <= before {
		t.Errorf("task_queue vacuumed %d times after the claim, %d before: want one more", after, before)
	}
}

// TestHotPathFiresNoTrigger claims and finishes instances, limited and
// not, with one released downstream, the way workers do (ClaimTasks,
// then FinishAndClaim), and checks from PostgreSQL's function counts
// that neither the set trigger nor the counter trigger ran, nor the
// functions of their WHEN clauses (migrations 00019, 00020 and 00045: the
// statements keep the sets and counters themselves), that the sets and the pool's counter are right after, and
// that a write outside the hot path still fires the set trigger.
func TestHotPathFiresNoTrigger(t *testing.T) {
	ctx := context.Background()
	url, _ := appName(t) // closed connections are told apart by their application_name
	url += "&track_functions=pl"
	s := openURL(t, url, postgres.Options{Logger: testLogger(t)})
	if _, err := s.CreatePool(ctx, store.PoolSpec{Name: "p", Slots: 2}); err != nil {
		t.Fatal(err)
	}
	sp := store.DAGSpec{DAGID: "hot", Fingerprint: "hot-1", MaxActiveRuns: 1}
	for i := range 4 {
		ts := store.TaskSpec{TaskID: fmt.Sprintf("t%d", i), Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second}
		if i%2 == 1 {
			ts.Pool, ts.PoolSlots = "p", 1
		}
		sp.Tasks = append(sp.Tasks, ts)
	}
	sp.Tasks = append(sp.Tasks, store.TaskSpec{TaskID: "join", Kind: dag.KindFunc, TriggerRule: dag.AllSuccess,
		RetryDelay: time.Second, Upstream: []string{"t0", "t1", "t2", "t3"}})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "hot", RunID: "r", RunType: store.RunManual, LogicalDate: t0,
		IntervalStart: t0, IntervalEnd: t0, Fingerprint: sp.Fingerprint, QueuedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "hot", t0); err != nil {
		t.Fatal(err)
	}
	_ = s.Close() // its connections report their function counts as they end
	before := hotPathCalls(t, url)
	s = openURL(t, url, postgres.Options{Logger: testLogger(t)})
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	cs, err := s.ClaimTasks(ctx, w, 10, t0)
	if err != nil || len(cs) != 4 {
		t.Fatalf("ClaimTasks = %d instances, %v; want the 4 roots", len(cs), err)
	}
	rs := make([]store.Result, len(cs))
	for i, c := range cs {
		rs[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: t0}
	}
	_, next, err := s.FinishAndClaim(ctx, rs, w, 10, t0.Add(time.Second))
	if err != nil || len(next) != 1 || next[0].TaskID != "join" {
		t.Fatalf("FinishAndClaim claimed %v, %v; want the join", next, err)
	}
	_ = s.Close()
	after := hotPathCalls(t, url)
	for f, n := range after {
		if n != before[f] {
			t.Errorf("%s ran %d times on the hot path, want none", f, n-before[f])
		}
	}
	// The join, claimed, put back to queued by a plain UPDATE: the set
	// trigger keeps the sets, and is counted.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "UPDATE task_instances SET state = 'queued' WHERE task_id = 'join'"); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close(ctx)
	if n := hotPathCalls(t, url)["task_set_update"] - after["task_set_update"]; n != 1 {
		t.Errorf("task_set_update ran %d times for a write outside the hot path, want 1", n)
	}
}

// hotPathCalls checks that the sets and the counter of pool p are right,
// and returns how often the set and counter triggers have run (with
// track_functions on) in the schema of url, as its closed connections
// reported.
func hotPathCalls(t *testing.T, url string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// A closed connection's backend reports its counts as it exits, after
	// the client has gone: wait until no other backend of url's
	// application_name is left and the counts have stopped moving.
	var last map[string]int64
	for deadline, stable := time.Now().Add(20*time.Second), 0; stable < 3; {
		var others int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = current_setting('application_name') AND pid <> pg_backend_pid()`).Scan(&others); err != nil {
			t.Fatal(err)
		}
		now := triggerCalls(t, conn)
		if others == 0 && maps.Equal(now, last) {
			stable++
		} else {
			stable = 0
		}
		last = now
		if time.Now().After(deadline) {
			t.Fatalf("the trigger counts did not settle in 20 s (%d other backends left)", others)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if dq, dr, err := taskSetDiff(ctx, conn); err != nil || dq != 0 || dr != 0 {
		t.Errorf("sets out of step: queue %d, running %d rows (%v)", dq, dr, err)
	}
	var running int
	if err := conn.QueryRow(ctx, `SELECT p.running - coalesce((SELECT count(*) FROM task_running r
			JOIN task_instances t ON t.id = r.ti_id WHERE t.pool = p.name AND t.limited), 0)
		FROM pools p WHERE name = 'p'`).Scan(&running); err != nil || running != 0 {
		t.Errorf("pool p counts %d more running than run (%v), want 0", running, err)
	}
	return last
}

// triggerCalls reads how often the set and counter triggers and the
// functions of their WHEN clauses have run in conn's schema, as backends
// have reported it.
func triggerCalls(t *testing.T, conn *pgx.Conn) map[string]int64 {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT funcname, calls FROM pg_stat_user_functions
		WHERE schemaname = current_schema()
			AND funcname IN ('task_set_update', 'trellis_count_limits', 'trellis_set_moves', 'trellis_limits_move')`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{"task_set_update": 0, "trellis_count_limits": 0, "trellis_set_moves": 0, "trellis_limits_move": 0}
	for rows.Next() {
		var f string
		var n int64
		if err := rows.Scan(&f, &n); err != nil {
			t.Fatal(err)
		}
		out[f] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLightClaimLeavesNothingBehind claims on a fresh store, which sends
// the claim without the limited part (lightClaimSQL) until it has seen a
// limited instance queued: with a limited instance ranking between two
// unlimited ones, one ClaimTasks must still take all three in claim
// order (the light claim stops above the limited one, fastClaimSQL takes
// the rest); and once no limited instance is queued, the light claim
// must take an instance of the lowest priority there is.
func TestLightClaimLeavesNothingBehind(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	if _, err := s.CreatePool(ctx, store.PoolSpec{Name: "p", Slots: 5}); err != nil {
		t.Fatal(err)
	}
	task := func(id string, priority int, pool string) store.TaskSpec {
		return store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, RetryDelay: time.Second,
			Priority: priority, Pool: pool}
	}
	sp := store.DAGSpec{DAGID: "light", Fingerprint: "light-1", MaxActiveRuns: 1, Tasks: []store.TaskSpec{
		task("a", 20, ""), task("b", 10, "p"), task("c", 1, ""), task("d", math.MinInt32, "")}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "light", RunID: "r", RunType: store.RunManual, LogicalDate: t0,
		IntervalStart: t0, IntervalEnd: t0, Fingerprint: sp.Fingerprint, QueuedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "light", t0); err != nil {
		t.Fatal(err)
	}
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	ids := func(cs []store.Claimed) []string {
		out := []string{}
		for _, c := range cs {
			out = append(out, c.TaskID)
		}
		return out
	}
	cs, err := s.ClaimTasks(ctx, w, 3, t0)
	if got := fmt.Sprint(ids(cs)); err != nil || got != "[a b c]" {
		t.Fatalf("first ClaimTasks(3) = %s, %v; want [a b c]", got, err)
	}
	cs, err = s.ClaimTasks(ctx, w, 3, t0)
	if got := fmt.Sprint(ids(cs)); err != nil || got != "[d]" {
		t.Fatalf("second ClaimTasks(3) = %s, %v; want [d]", got, err)
	}
}
