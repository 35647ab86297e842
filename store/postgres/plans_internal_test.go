package postgres

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// recorder is a pgx tracer that keeps each distinct statement sent while
// on is set.
type recorder struct {
	on   atomic.Bool
	mu   sync.Mutex
	seen map[string]bool
	sqls []string
}

func (r *recorder) add(sql string) {
	if !r.on.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.seen[sql] {
		r.seen[sql] = true
		r.sqls = append(r.sqls, sql)
	}
}

// bigTables are the tables that grow with the work done.
var bigTables = []string{"task_instances", "task_logs", "task_log_chunks", "dag_runs", "dag_version_tasks"}

// Not big: task_queue and task_running hold the instances queued and
// running now (migration 00008), bounded by the work in progress.

// TestHotPlans runs the workers' hot path (claims, finishes of every
// kind of outcome with releases, log appends, zombies, requeues) and
// checks the generic plan of every statement it sent, under the planner
// settings of hotPlanGeneric, on an empty schema, the worst case for plans
// made before the tables are analysed: no sequential scan of a table that
// grows and no hash or merge join. A plan that scans would make every
// finish cost more as the tables grow (seen once: a log append whose
// cached plan read all of task_logs).
func TestHotPlans(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{seen: map[string]bool{}}
	s := tracedStore(t, &stmtTracer{stmt: rec.add})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	task := func(id string, up ...string) store.TaskSpec {
		return store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, Retries: 1, RetryDelay: time.Second, Upstream: up}
	}
	br := task("br", "a")
	br.Kind = dag.KindBranch
	cleanup := task("cleanup", "x", "y")
	cleanup.TriggerRule = dag.AllDone
	waits := store.DAGSpec{DAGID: "waits", Fingerprint: "w1", MaxActiveRuns: 4,
		Tasks: []store.TaskSpec{task("p"), task("q")}}
	sp := store.DAGSpec{DAGID: "hot", Fingerprint: "f1", MaxActiveRuns: 4, Tasks: []store.TaskSpec{
		task("a"), br, task("x", "br"), task("y", "br"), cleanup, task("z", "a"), task("w", "z")}}
	capped := store.DAGSpec{DAGID: "capped", Fingerprint: "c1", MaxActiveRuns: 4, MaxActiveTasks: 1,
		Tasks: []store.TaskSpec{task("c1"), task("c2")}}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp, capped, waits}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []store.DAGSpec{sp, capped, waits} {
		if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: d.DAGID, RunID: "r", RunType: store.RunManual,
			LogicalDate: t0, IntervalStart: t0, IntervalEnd: t0, Fingerprint: d.Fingerprint, QueuedAt: t0}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.StartRuns(ctx, d.DAGID, t0); err != nil {
			t.Fatal(err)
		}
	}
	w := store.Worker{ID: "w", Hostname: "h", PID: 1}
	rec.on.Store(true)
	by := func(cs []store.Claimed) map[string]store.Claimed {
		m := map[string]store.Claimed{}
		for _, c := range cs {
			m[c.TaskID] = c
		}
		return m
	}
	res := func(c store.Claimed, st state.TaskState) store.Result {
		return store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: st, EndedAt: t0,
			StartedAt: t0, Log: []byte("line\n"), Output: json.RawMessage(`{"k": 1}`)}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Deferrals: on an event (one kept already continues it at once), on
	// time; the event, the due sweep and the continue call.
	_, err := s.RecordEvent(ctx, store.NewEvent{Key: "early", At: t0})
	must(err)
	cs, err := s.ClaimTasks(ctx, w, 20, t0)
	must(err)
	got := by(cs)
	first := got
	dp, dq := res(got["p"], state.Deferred), res(got["q"], state.Deferred)
	dp.Output, dq.Output = nil, nil
	dp.Deferral = store.Deferral{Event: "k", State: json.RawMessage(`{"s":1}`)}
	dq.Deferral = store.Deferral{Event: "early", NextCheckAt: t0}
	_, err = s.FinishTasks(ctx, []store.Result{dp, dq})
	must(err)
	_, err = s.RecordEvent(ctx, store.NewEvent{Key: "k", At: t0, Payload: json.RawMessage(`1`)})
	must(err)
	cs, err = s.ClaimTasks(ctx, w, 2, t0)
	must(err)
	if len(cs) != 2 {
		t.Fatalf("resumed %d, want p and q", len(cs))
	}
	got = by(cs)
	dp, dq = res(got["p"], state.Deferred), res(got["q"], state.Deferred)
	dp.Output, dq.Output = nil, nil
	dq.Deferral = store.Deferral{NextCheckAt: t0}
	_, err = s.FinishTasks(ctx, []store.Result{dp, dq})
	must(err)
	_, err = s.ContinueDeferred(ctx, "waits", "r", "p", json.RawMessage(`2`), t0)
	must(err)
	_, err = s.RequeueRetries(ctx, t0)
	must(err)

	got = first
	must(s.AppendLog(ctx, store.Try{ID: got["a"].ID, TryNumber: 1}, []byte("early\n")))
	_, cs, err = s.FinishAndClaim(ctx, []store.Result{res(got["a"], state.Success), res(got["c1"], state.Failed)}, w, 10, t0)
	must(err)
	got = by(cs)
	b := res(got["br"], state.Success)
	b.Follow = []string{"x"}
	_, cs, err = s.FinishAndClaim(ctx, []store.Result{b, res(got["z"], state.Skipped)}, w, 10, t0)
	must(err)
	got = by(cs)
	_, err = s.FinishTasks(ctx, []store.Result{res(got["x"], state.Failed)})
	must(err)
	_, err = s.RequeueRetries(ctx, t0.Add(time.Hour))
	must(err)
	_, _, err = s.NextRetryAt(ctx)
	must(err)
	cs, err = s.ClaimTasks(ctx, w, 10, t0)
	must(err)
	must(s.RequeueTries(ctx, []store.Try{{ID: cs[0].ID, TryNumber: cs[0].TryNumber}}))
	_, err = s.ClaimTasks(ctx, w, 10, t0)
	must(err)
	_, err = s.FailZombies(ctx, t0.Add(time.Hour), t0.Add(time.Hour))
	must(err)
	_, err = s.FailWorkerTasks(ctx, w.ID, t0.Add(time.Hour))
	must(err)
	rec.on.Store(false)

	checked := checkGenericPlans(t, rec.sqls, nil)
	if checked < 15 {
		t.Errorf("checked the plans of %d hot statements; the workload should send at least 15", checked)
	}
	t.Logf("checked %d hot statements", checked)
}

// checkGenericPlans checks the generic plan of every statement of sqls
// under the planner settings of hotPlanGeneric, on an empty schema (the
// worst case for plans made before the tables are analysed): no
// unbounded scan of a growing table (unboundedScans), nor what extra
// finds wrong in a plan (EXPLAIN lines). It returns how many it checked.
func checkGenericPlans(t *testing.T, sqls []string, extra func(plan []string) []string) int {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	empty, err := Open(ctx, testdb.Postgres(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = empty.Close() })
	must(empty.Migrate(ctx))
	conn, err := empty.pool.Acquire(ctx)
	must(err)
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	must(err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, hotPlanGeneric)
	must(err)
	// The leading column of every index: a bounded index scan constrains
	// it.
	rows, err := tx.Query(ctx, `SELECT i.relname, a.attname FROM pg_index x
		JOIN pg_class i ON i.oid = x.indexrelid
		JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
		WHERE i.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())`)
	must(err)
	leading := map[string]string{}
	for rows.Next() {
		var idx, col string
		must(rows.Scan(&idx, &col))
		leading[idx] = col
	}
	must(rows.Err())
	plannable := regexp.MustCompile(`(?is)^\s*(SELECT|WITH|UPDATE|INSERT|DELETE)\b`)
	checked := 0
	for _, sql := range sqls {
		if !plannable.MatchString(sql) || strings.Contains(sql, "set_config(") {
			continue
		}
		sd, err := tx.Conn().Prepare(ctx, "", sql)
		if err != nil {
			t.Fatalf("prepare %s: %v", sql, err)
		}
		types := make([]string, len(sd.ParamOIDs))
		nulls := make([]string, len(sd.ParamOIDs))
		for i, oid := range sd.ParamOIDs {
			must(tx.QueryRow(ctx, "SELECT format_type($1, NULL)", oid).Scan(&types[i]))
			nulls[i] = "NULL"
		}
		decl := ""
		if len(types) > 0 {
			decl = "(" + strings.Join(types, ", ") + ")"
		}
		if _, err := tx.Exec(ctx, "PREPARE hot_check"+decl+" AS "+sql); err != nil {
			t.Fatalf("PREPARE %s: %v", sql, err)
		}
		call := "hot_check"
		if len(nulls) > 0 {
			call += "(" + strings.Join(nulls, ", ") + ")"
		}
		rows, err := tx.Query(ctx, "EXPLAIN EXECUTE "+call)
		must(err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		must(err)
		_, err = tx.Exec(ctx, "DEALLOCATE hot_check")
		must(err)
		bad := unboundedScans(sql, lines, leading)
		if extra != nil {
			bad = append(bad, extra(lines)...)
		}
		if len(bad) > 0 {
			t.Errorf("generic plan of a hot statement reads a growing table without a bound:\n%s\n%s\n%s",
				strings.Join(bad, "\n"), sql, strings.Join(lines, "\n"))
		} else if os.Getenv("TRELLIS_SHOW_PLANS") != "" {
			t.Logf("%s\n%s", sql, strings.Join(lines, "\n"))
		}
		checked++
	}
	return checked
}

var (
	scanNode  = regexp.MustCompile(`(Seq Scan|Index Only Scan|Index Scan|Bitmap Index Scan)( Backward)?( using (\S+))?( on (\S+))?`)
	boundCond = regexp.MustCompile(`\$\d|\b[a-z_][a-z_0-9]*\.[a-z_]+`)
)

// boundedIndexes are partial indexes that hold only rows in a transient
// state (running, up for retry): reading one whole is bounded by the work
// in progress, not by the history.
var boundedIndexes = map[string]bool{"task_instances_retry": true,
	// Deferred instances only; NextRetryAt reads its first entry (min).
	"task_instances_deferred_due": true}

// unboundedScans lists the scan nodes of plan (EXPLAIN lines) that read a
// table of bigTables without an index condition binding the index's
// leading column (leading, by index name) to a parameter or to a row of
// another relation: sequential scans, and index scans that walk a whole
// index. (The claim walks task_queue_claim, whose table holds only the
// queued instances.)
func unboundedScans(sql string, plan []string, leading map[string]string) []string {
	var bad []string
	for i, l := range plan {
		m := scanNode.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		index, table := m[4], m[6]
		if m[1] == "Bitmap Index Scan" {
			index = strings.TrimPrefix(l[strings.Index(l, "Bitmap Index Scan on ")+len("Bitmap Index Scan on "):], "")
			index = strings.Fields(index)[0]
		}
		isBig := false
		for _, b := range bigTables {
			if table == b || strings.HasPrefix(index, b+"_") {
				isBig = true
			}
		}
		if !isBig || boundedIndexes[index] {
			continue
		}
		if m[1] == "Seq Scan" {
			bad = append(bad, strings.TrimSpace(l))
			continue
		}
		// The node's own lines: deeper than it, up to the next node.
		indent := len(l) - len(strings.TrimLeft(l, " "))
		bounded := false
		for _, d := range plan[i+1:] {
			if len(d)-len(strings.TrimLeft(d, " ")) <= indent || strings.Contains(d, "->") {
				break
			}
			c := strings.TrimSpace(d)
			if !strings.HasPrefix(c, "Index Cond:") {
				continue
			}
			for _, term := range strings.Split(c, " AND ") {
				if strings.Contains(term, "("+leading[index]+" ") && boundCond.MatchString(term) {
					bounded = true
				}
			}
		}
		if !bounded {
			bad = append(bad, strings.TrimSpace(l))
		}
	}
	return bad
}
