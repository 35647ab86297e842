package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// callTx is one Call transaction, in named phases.
type callTx struct {
	s   *Store
	tx  pgx.Tx
	b   store.CallBatch
	out []store.CallState

	// The caller.
	runID, versionID int64
	dagID            string
	priority         int
	isCall           bool // the caller is a call instance (it may be in a cycle)

	keys    []callKey          // distinct (callable, key), in first-call order
	firstAt map[callKey]int    // index of the first call of each key
	found   map[callKey]callee // existing and created call instances
	created int
	refused map[callKey]string // calls not made, with why
	cycles  map[callKey]bool
	closed  bool // a call from outside into a finished run: no new instance
}

type callKey struct{ task, key string }

type callee struct {
	id       int64
	mapIndex int
	state    state.TaskState
	output   []byte
	err      string
}

// Call records the calls of a running try (store.Caller).
func (s *Store) Call(ctx context.Context, b store.CallBatch) ([]store.CallState, error) {
	if len(b.Calls) == 0 {
		return []store.CallState{}, nil
	}
	if err := checkCalls(b); err != nil {
		return nil, err
	}
	op := fmt.Sprintf("record %d calls of task instance %d try %d", len(b.Calls), b.Caller.ID, b.Caller.TryNumber)
	var out []store.CallState
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		c := &callTx{s: s, tx: tx, b: b}
		if err := c.run(ctx); err != nil {
			return err
		}
		out = c.out
		return nil
	})
	return out, err
}

// checkCalls validates a batch before anything is written.
func checkCalls(b store.CallBatch) error {
	for i, c := range b.Calls {
		switch {
		case c.TaskID == "":
			return fmt.Errorf("record calls: call %d has no callable task id", i)
		case c.Key == "":
			return fmt.Errorf("record calls: call %d of %s has an empty key", i, c.TaskID)
		case !json.Valid(c.Arguments):
			return fmt.Errorf("record calls: call %d of %s: the arguments are not valid JSON", i, c.TaskID)
		}
	}
	return nil
}

func (c *callTx) run(ctx context.Context) error {
	for _, phase := range []func(context.Context) error{c.readCaller, c.findExisting, c.create,
		c.refuseCycles, c.finish} {
		if err := phase(ctx); err != nil {
			return err
		}
	}
	c.answer()
	return nil
}

// readCaller checks the caller runs that try. Its row is not locked: the
// finishing transactions of its callees lock callee rows, then callers,
// then runs, and so does this one (the caller is not written).
func (c *callTx) readCaller(ctx context.Context) error {
	if c.b.Caller.ID == 0 {
		var st state.RunState
		err := c.tx.QueryRow(ctx, `SELECT id, version_id, dag_id, state,
				pg_advisory_xact_lock(hashtextextended('trellis_calls', id)) IS NULL
			FROM dag_runs WHERE id = $1`, c.b.RunID).
			Scan(&c.runID, &c.versionID, &c.dagID, &st, new(bool))
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf("%w: no run %d", store.ErrNotFound, c.b.RunID)
		}
		c.closed = err == nil && st.Terminal()
		return err
	}
	var st state.TaskState
	var try, mapIndex int
	// The calls of one run are serialised (map indexes, the cap) by a
	// transaction-scoped advisory lock, taken before any row lock.
	err := c.tx.QueryRow(ctx, `SELECT t.run_id, r.version_id, t.dag_id, t.priority, t.map_index, t.state, t.try_number,
			pg_advisory_xact_lock(hashtextextended('trellis_calls', t.run_id)) IS NULL
		FROM task_instances t JOIN dag_runs r ON r.id = t.run_id WHERE t.id = $1`, c.b.Caller.ID).
		Scan(&c.runID, &c.versionID, &c.dagID, &c.priority, &mapIndex, &st, &try, new(bool))
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && (st != state.Running || try != c.b.Caller.TryNumber)) {
		return errorf("%w: task instance %d is not running try %d", store.ErrStale, c.b.Caller.ID, c.b.Caller.TryNumber)
	}
	c.isCall = mapIndex >= 0
	return err
}

// findExisting locks the call instances the batch names that exist.
func (c *callTx) findExisting(ctx context.Context) error {
	c.firstAt, c.found = map[callKey]int{}, map[callKey]callee{}
	var tasks, keys []string
	for i, call := range c.b.Calls {
		k := callKey{call.TaskID, call.Key}
		if _, ok := c.firstAt[k]; ok {
			continue
		}
		c.firstAt[k] = i
		c.keys = append(c.keys, k)
		tasks, keys = append(tasks, k.task), append(keys, k.key)
	}
	rows, err := c.tx.Query(ctx, `SELECT t.id, t.task_id, t.call_key, t.map_index, t.state, t.output, t.error
		FROM task_instances t JOIN unnest($2::text[], $3::text[]) AS u(task_id, call_key)
			ON t.run_id = $1 AND t.task_id = u.task_id AND t.call_key = u.call_key
		ORDER BY t.id FOR NO KEY UPDATE OF t`, c.runID, tasks, keys)
	if err != nil {
		return err
	}
	return c.readCallees(rows)
}

func (c *callTx) readCallees(rows pgx.Rows) error {
	defer rows.Close()
	for rows.Next() {
		var k callKey
		var x callee
		if err := rows.Scan(&x.id, &k.task, &k.key, &x.mapIndex, &x.state, &x.output, &x.err); err != nil {
			return err
		}
		c.found[k] = x
	}
	return rows.Err()
}

// create inserts the call instances that do not exist yet, within the
// run's cap, with the callable's retry policy and timeout and the next
// map indexes of their callable.
func (c *callTx) create(ctx context.Context) error {
	var missing []callKey
	for _, k := range c.keys {
		if _, ok := c.found[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var names []string
	for _, k := range missing {
		names = append(names, k.task)
	}
	// The run's count of calls, and the next map index of each callable.
	rows, err := c.tx.Query(ctx, `SELECT v.task_id, coalesce((SELECT max(t.map_index) FROM task_instances t
			WHERE t.run_id = $1 AND t.task_id = v.task_id AND t.map_index >= 0), -1),
			(SELECT n_calls FROM dag_runs WHERE id = $1), v.key_template, v.key_limit,
			(SELECT run_id FROM dag_runs WHERE id = $1)
		FROM dag_version_tasks v WHERE v.version_id = $2 AND v.kind = 'callable' AND v.task_id = ANY($3)`,
		c.runID, c.versionID, names)
	if err != nil {
		return err
	}
	next := map[string]int{}
	type keyOf struct {
		template string
		limit    int
	}
	keyed := map[string]keyOf{}
	nCalls := 0
	var runName string
	for rows.Next() {
		var task string
		var last int
		var k keyOf
		if err := rows.Scan(&task, &last, &nCalls, &k.template, &k.limit, &runName); err != nil {
			rows.Close()
			return err
		}
		next[task] = last + 1
		if k.template != "" {
			keyed[task] = k
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var tasks, keys, args []string
	var idx []int32
	var ckeys []*string
	counters, queued := map[string]int{}, map[string]int{}
	c.refused = map[callKey]string{}
	for _, k := range missing {
		n, ok := next[k.task]
		if c.closed {
			c.refused[k] = "the run has finished: a call into it can only find a call it made"
			continue
		}
		if !ok {
			c.refused[k] = fmt.Sprintf("no callable %q in the DAG %q of the run", k.task, c.dagID)
			continue
		}
		if nCalls+len(tasks) >= c.b.MaxCalls {
			c.refused[k] = fmt.Sprintf("the run has reached its cap of %d calls (dag.MaxCalls)", c.b.MaxCalls)
			continue
		}
		arg := c.b.Calls[c.firstAt[k]].Arguments
		var ckey *string
		if kd, ok := keyed[k.task]; ok {
			name, err := store.RenderCallKey(kd.template, c.dagID, k.task, runName, arg)
			if err != nil {
				c.refused[k] = err.Error()
				continue
			}
			ckey = &name
			counters[name] = kd.limit
			queued[name]++
		}
		next[k.task] = n + 1
		tasks, keys = append(tasks, k.task), append(keys, k.key)
		args = append(args, string(arg))
		idx = append(idx, int32(n))
		ckeys = append(ckeys, ckey)
	}
	if len(tasks) == 0 {
		return nil
	}
	if err := c.countKeys(ctx, counters, queued); err != nil {
		return err
	}
	rows, err = c.tx.Query(ctx, `
		INSERT INTO task_instances (run_id, dag_id, task_id, call_key, parent_ti_id, arguments, state, queued_at,
			map_index, max_tries, retries, priority, trigger_rule, retry_delay_ns, max_backoff_ns, timeout_ns, n_upstream,
			concurrency_key, limited)
		SELECT $1, $2, u.task_id, u.call_key, nullif($3, 0), u.args::jsonb, 'queued', $4,
			u.map_index, v.retries + 1, v.retries, greatest(v.priority, $5), v.trigger_rule, v.retry_delay_ns,
			v.max_backoff_ns, v.timeout_ns, 0, u.ckey, u.ckey IS NOT NULL
		FROM unnest($6::text[], $7::text[], $8::text[], $9::int[], $11::text[])
			WITH ORDINALITY AS u(task_id, call_key, args, map_index, ckey, ord)
		JOIN dag_version_tasks v ON v.version_id = $10 AND v.task_id = u.task_id
		ORDER BY u.ord
		RETURNING id, task_id, call_key, map_index, state, output, error`,
		c.runID, c.dagID, c.b.Caller.ID, c.b.Now, c.priority, tasks, keys, args, idx, c.versionID, ckeys)
	if err != nil {
		return err
	}
	c.created = len(tasks)
	return c.readCallees(rows)
}

// countKeys makes sure the counters of the concurrency keys of new call
// instances exist with their limits and counts those instances as queued
// under them (they are inserted queued), locking the counters in key
// order as the claim does.
func (c *callTx) countKeys(ctx context.Context, limits, queued map[string]int) error {
	if len(limits) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Keys(limits))
	lims, qs := make([]int32, len(names)), make([]int32, len(names))
	for i, n := range names {
		lims[i], qs[i] = int32(limits[n]), int32(queued[n])
	}
	_, err := c.tx.Exec(ctx, `INSERT INTO concurrency_keys (key, lim, queued)
		SELECT * FROM unnest($1::text[], $2::int[], $3::int[]) ORDER BY 1
		ON CONFLICT (key) DO UPDATE SET lim = excluded.lim, queued = concurrency_keys.queued + excluded.queued`,
		names, lims, qs)
	return err
}

// unfinished reports whether a call instance is not final.
func (x callee) unfinished() bool { return !x.state.Terminal() }

// refuseCycles drops, as cycles, the existing unfinished calls that would
// make the caller wait on itself or on one of its callers (a callee that
// reaches the caller through unfinished calls). Only a call instance can
// be in a cycle: nothing calls a static task.
func (c *callTx) refuseCycles(ctx context.Context) error {
	if !c.isCall {
		return nil
	}
	var cands []int64
	for _, k := range c.keys {
		if x, ok := c.found[k]; ok && x.unfinished() && x.id != c.b.Caller.ID {
			cands = append(cands, x.id)
		}
	}
	// A callee the caller is linked to already was checked when the edge
	// was made (by an earlier execution of the try): no new cycle.
	var starts []int64
	if len(cands) > 0 {
		rows, err := c.tx.Query(ctx, `SELECT u.id FROM unnest($2::bigint[]) AS u(id)
			WHERE NOT EXISTS (SELECT 1 FROM task_calls k WHERE k.caller_id = $1 AND k.callee_id = u.id)`,
			c.b.Caller.ID, cands)
		if err != nil {
			return err
		}
		if starts, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return err
		}
	}
	cyclic := map[int64]bool{}
	for _, k := range c.keys {
		if x, ok := c.found[k]; ok && x.id == c.b.Caller.ID {
			cyclic[x.id] = true
		}
	}
	if len(starts) > 0 {
		rows, err := c.tx.Query(ctx, `
			WITH RECURSIVE r(start, id) AS (
				SELECT s, s FROM unnest($1::bigint[]) AS s
				UNION
				SELECT r.start, k.callee_id FROM r JOIN task_calls k ON k.caller_id = r.id
				JOIN task_instances t ON t.id = k.callee_id AND t.state IN `+unfinishedList+`
				WHERE r.id <> $2
			)
			SELECT DISTINCT start FROM r WHERE id = $2`, starts, c.b.Caller.ID)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		for _, id := range ids {
			cyclic[id] = true
		}
	}
	if len(cyclic) == 0 {
		return nil
	}
	if c.refused == nil {
		c.refused = map[callKey]string{}
	}
	c.cycles = map[callKey]bool{}
	for _, k := range c.keys {
		x, ok := c.found[k]
		if !ok || !cyclic[x.id] {
			continue
		}
		path, err := c.cyclePath(ctx, x.id)
		if err != nil {
			return err
		}
		c.refused[k], c.cycles[k] = path, true
		delete(c.found, k)
	}
	return nil
}

// cyclePath names the cycle a call of instance from would close: from,
// through unfinished calls, to the caller, and back to from.
func (c *callTx) cyclePath(ctx context.Context, from int64) (string, error) {
	caller := c.b.Caller.ID
	path := []int64{from}
	if from != caller {
		rows, err := c.tx.Query(ctx, `
			WITH RECURSIVE r(id) AS (
				SELECT $1::bigint
				UNION
				SELECT k.callee_id FROM r JOIN task_calls k ON k.caller_id = r.id
				JOIN task_instances t ON t.id = k.callee_id AND t.state IN `+unfinishedList+`
				WHERE r.id <> $2
			)
			SELECT k.caller_id, k.callee_id FROM task_calls k
			WHERE k.caller_id IN (SELECT id FROM r) AND k.callee_id IN (SELECT id FROM r)
			ORDER BY k.caller_id, k.seq`, from, caller)
		if err != nil {
			return "", err
		}
		next := map[int64][]int64{}
		for rows.Next() {
			var a, b int64
			if err := rows.Scan(&a, &b); err != nil {
				rows.Close()
				return "", err
			}
			next[a] = append(next[a], b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return "", err
		}
		path = bfsPath(next, from, caller)
	}
	path = append(path, from)
	rows, err := c.tx.Query(ctx, `SELECT id, task_id, arguments::text FROM task_instances WHERE id = ANY($1)`, path)
	if err != nil {
		return "", err
	}
	labels := map[int64]string{}
	for rows.Next() {
		var id int64
		var task string
		var args *string
		if err := rows.Scan(&id, &task, &args); err != nil {
			rows.Close()
			return "", err
		}
		labels[id] = task
		if args != nil {
			labels[id] = dag.CallLabel(task, json.RawMessage(*args))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	names := make([]string, len(path))
	for i, id := range path {
		names[i] = labels[id]
	}
	return strings.Join(names, " -> "), nil
}

// bfsPath returns a shortest path from a to b in the graph next (a and b
// included), or [a, b] when there is none (the cycle is then named by its
// ends).
func bfsPath(next map[int64][]int64, a, b int64) []int64 {
	prev := map[int64]int64{a: a}
	queue := []int64{a}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		if x == b {
			var path []int64
			for y := b; y != a; y = prev[y] {
				path = append([]int64{y}, path...)
			}
			return append([]int64{a}, path...)
		}
		for _, y := range next[x] {
			if _, seen := prev[y]; !seen {
				prev[y] = x
				queue = append(queue, y)
			}
		}
	}
	return []int64{a, b}
}

// finish sends link, inherit and count in one round trip.
func (c *callTx) finish(ctx context.Context) error {
	b := &pgx.Batch{}
	c.link(b)
	c.inherit(b)
	c.count(b)
	if b.Len() == 0 {
		return nil
	}
	if err := runBatch(ctx, c.tx, b); err != nil {
		return err
	}
	if c.created > 0 {
		return notify(ctx, c.tx, store.TopicTasksReady)
	}
	return nil
}

// link records the caller → callee edges of the calls made (again: an
// edge recorded by an earlier try is kept as it is).
func (c *callTx) link(b *pgx.Batch) {
	if c.b.Caller.ID == 0 {
		return
	}
	var ids []int64
	for _, k := range c.keys {
		if x, ok := c.found[k]; ok {
			ids = append(ids, x.id)
		}
	}
	if len(ids) == 0 {
		return
	}
	b.Queue(`
		INSERT INTO task_calls (caller_id, callee_id, run_id, seq)
		SELECT $1, u.callee, $2, (SELECT count(*) FROM task_calls WHERE caller_id = $1) + u.ord
		FROM unnest($3::bigint[]) WITH ORDINALITY AS u(callee, ord)
		ON CONFLICT DO NOTHING`, c.b.Caller.ID, c.runID, ids)
}

// inherit raises the priority of the unfinished callees to the caller's,
// so that the calls others wait on are claimed before new work of lower
// priority.
func (c *callTx) inherit(b *pgx.Batch) {
	var ids []int64
	for _, k := range c.keys {
		if x, ok := c.found[k]; ok && x.unfinished() {
			ids = append(ids, x.id)
		}
	}
	if len(ids) == 0 {
		return
	}
	b.Queue(`UPDATE task_instances SET priority = $2
		WHERE id = ANY($1) AND priority < $2 AND state IN `+unfinishedList, ids, c.priority)
}

// count adds the created call instances to the run's counters (locked
// last, after every instance, as the finishing transactions do) and wakes
// the workers.
func (c *callTx) count(b *pgx.Batch) {
	if c.created == 0 {
		return
	}
	b.Queue(`UPDATE dag_runs SET n_calls = n_calls + $2, unfinished = unfinished + $2
		WHERE id = $1`, c.runID, c.created)
}

// answer fills out, one state per call of the batch.
func (c *callTx) answer() {
	c.out = make([]store.CallState, len(c.b.Calls))
	for i, call := range c.b.Calls {
		k := callKey{call.TaskID, call.Key}
		if why, ok := c.refused[k]; ok {
			c.out[i] = store.CallState{Refused: why, Cycle: c.cycles[k]}
			continue
		}
		x := c.found[k]
		c.out[i] = store.CallState{ID: x.id, MapIndex: x.mapIndex, State: x.state, Error: x.err}
		if x.output != nil && x.state == state.Success {
			c.out[i].Output = json.RawMessage(x.output)
		}
	}
}

// CallResults returns the states of call instances, in the order of ids.
func (s *Store) CallResults(ctx context.Context, ids []int64) ([]store.CallState, error) {
	out := make([]store.CallState, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT id, map_index, state, output, error FROM task_instances WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, mapErr("read call results", err)
	}
	got := map[int64]store.CallState{}
	for rows.Next() {
		var cs store.CallState
		var output []byte
		if err := rows.Scan(&cs.ID, &cs.MapIndex, &cs.State, &output, &cs.Error); err != nil {
			rows.Close()
			return nil, mapErr("read call results", err)
		}
		if output != nil && cs.State == state.Success {
			cs.Output = json.RawMessage(output)
		}
		got[cs.ID] = cs
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr("read call results", err)
	}
	for i, id := range ids {
		cs, ok := got[id]
		if !ok {
			return nil, fmt.Errorf("read call results: %w: no task instance %d", store.ErrNotFound, id)
		}
		out[i] = cs
	}
	return out, nil
}

// Callees returns the calls instance id made, in the order made.
func (s *Store) Callees(ctx context.Context, id int64) ([]store.TaskInstance, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tiCols+` FROM task_calls k
		JOIN task_instances t ON t.id = k.callee_id JOIN dag_runs r ON r.id = t.run_id
		WHERE k.caller_id = $1 ORDER BY k.seq, t.id`, id)
	if err != nil {
		return nil, mapErr(fmt.Sprintf("read the calls of task instance %d", id), err)
	}
	tis, err := collectTIs(rows)
	if err != nil {
		return nil, mapErr(fmt.Sprintf("read the calls of task instance %d", id), err)
	}
	return tis, nil
}

// wakeWaitersSQL counts the call instances $1 that just became final off
// the deferred callers waiting on them, and queues again those left
// waiting on none ($2 now), their try number lowered by one (the resuming
// claim gives it back). Callers are locked in id order, after the callees.
const wakeWaitersSQL = `
	WITH c AS (
		SELECT caller_id, count(*)::int AS n FROM task_calls WHERE callee_id = ANY($1) GROUP BY caller_id
	), w AS MATERIALIZED (
		SELECT t.id, c.n FROM task_instances t JOIN c ON c.caller_id = t.id
		WHERE t.state = 'deferred' ORDER BY t.id FOR NO KEY UPDATE OF t
	)
	UPDATE task_instances t SET
		waiting_on = greatest(t.waiting_on - w.n, 0),
		state = CASE WHEN t.waiting_on <= w.n THEN 'queued' ELSE 'deferred' END,
		try_number = CASE WHEN t.waiting_on <= w.n THEN t.try_number - 1 ELSE t.try_number END,
		queued_at = CASE WHEN t.waiting_on <= w.n THEN $2 ELSE t.queued_at END
	FROM w WHERE t.id = w.id AND t.state = 'deferred'
	RETURNING t.state`

// wakeWaiters applies wakeWaitersSQL for the call instances ids that
// became final in tx, and wakes the workers when it queued a caller.
func wakeWaiters(ctx context.Context, tx dbtx, ids []int64, now time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, wakeWaitersSQL, ids, now)
	if err != nil {
		return err
	}
	queued := false
	for rows.Next() {
		var st state.TaskState
		if err := rows.Scan(&st); err != nil {
			rows.Close()
			return err
		}
		queued = queued || st == state.Queued
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if queued {
		return notify(ctx, tx, store.TopicTasksReady)
	}
	return nil
}

// waitingCounts counts, for the callers ids deferring on their calls, the
// calls they made that are not final, locking those callees (FOR SHARE)
// first: a callee finishing concurrently is then seen final, or finds its
// caller deferred when it counts its waiters off.
func waitingCounts(ctx context.Context, tx dbtx, ids []int64) (map[int64]int, error) {
	out := map[int64]int{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := tx.Query(ctx, `SELECT k.caller_id FROM task_calls k JOIN task_instances y ON y.id = k.callee_id
		WHERE k.caller_id = ANY($1) AND y.state IN `+unfinishedList+` ORDER BY y.id FOR SHARE OF y`, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id]++
	}
	return out, rows.Err()
}

// GetCallInstance returns the call instance mapIndex of callable taskID.
func (s *Store) GetCallInstance(ctx context.Context, dagID, runID, taskID string, mapIndex int) (store.TaskInstance, error) {
	op := fmt.Sprintf("get call %s[%d] of run %q of dag %q", taskID, mapIndex, runID, dagID)
	ti, err := scanTI(s.pool.QueryRow(ctx, "SELECT "+tiCols+` FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
		WHERE r.dag_id = $1 AND r.run_id = $2 AND t.task_id = $3 AND t.map_index = $4`, dagID, runID, taskID, mapIndex))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.TaskInstance{}, fmt.Errorf("%s: %w", op, store.ErrNotFound)
	}
	if err != nil {
		return store.TaskInstance{}, mapErr(op, err)
	}
	return ti, nil
}

// TaskInstancesByID returns the task instances ids that exist.
func (s *Store) TaskInstancesByID(ctx context.Context, ids []int64) ([]store.TaskInstance, error) {
	if len(ids) == 0 {
		return []store.TaskInstance{}, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT "+tiCols+` FROM task_instances t JOIN dag_runs r ON r.id = t.run_id
		WHERE t.id = ANY($1)`, ids)
	if err != nil {
		return nil, mapErr("get task instances by id", err)
	}
	tis, err := collectTIs(rows)
	if err != nil {
		return nil, mapErr("get task instances by id", err)
	}
	return tis, nil
}
