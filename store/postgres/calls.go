package postgres

import (
	"cmp"
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

// callTx records the calls of the tries of one run (or one call from
// outside) in one transaction, in named phases: each phase handles every
// caller at once, so a transaction costs the same round trips for one
// caller or many. The transaction is pipelined (pipeTx): the writes are
// queued and travel with the next read or with COMMIT, so a batch that
// checks no cycle costs four round trips (the callers, the existing
// calls, the run's lock with the numbers, and the writes with COMMIT),
// and the run's lock is held for the last two only.
type callTx struct {
	s  *Store
	tx *pipeTx

	runID, versionID int64
	dagID            string
	runName          string
	closed           bool // a call from outside into a finished run: no new instance
	callers          []*caller

	keys    []callKey                 // distinct (callable, key), in first-call order
	first   map[callKey]store.NewCall // the first call of each key
	owner   map[callKey]*caller       // the caller of a key's first call
	prio    map[callKey]int           // the highest priority among a key's callers
	found   map[callKey]callee        // existing and created call instances
	created int
	made    []callKey // the keys of the created instances, read back before COMMIT
	// pre are the existing instances of the calls of callers in this run,
	// read with the callers (prefound); findExisting reads them otherwise.
	pre      map[callKey]callee
	prefound bool

	// Read under the run's lock for the calls to create (readNumbers).
	next    map[string]int     // the next map index of each callable
	keyed   map[string]keyOf   // the callables with a concurrency key
	nCalls  int                // the run's count of calls
	refused map[callKey]string // calls not made, with why (for every caller)
}

// caller is one batch of a callTx: the try making the calls.
type caller struct {
	b        store.CallBatch
	out      *store.CallAnswer
	priority int
	isCall   bool      // a call instance (it may be in a cycle)
	keys     []callKey // its distinct calls, in the order made
	cycles   map[callKey]string
}

type callKey struct{ task, key string }

type callee struct {
	id       int64
	mapIndex int
	state    state.TaskState
	output   []byte
	err      string
	// fresh: created by this transaction, so it calls nothing yet and
	// cannot close a cycle.
	fresh bool
}

// Call records the calls of a running try (store.Caller).
func (s *Store) Call(ctx context.Context, b store.CallBatch) ([]store.CallState, error) {
	if len(b.Calls) == 0 {
		return []store.CallState{}, nil
	}
	if err := checkCalls(b); err != nil {
		return nil, err
	}
	out, err := s.callMany(ctx, fmt.Sprintf("record %d calls of task instance %d try %d", len(b.Calls), b.Caller.ID, b.Caller.TryNumber),
		[]store.CallBatch{b})
	if err != nil {
		return nil, err
	}
	return out[0].States, out[0].Err
}

// CallMany records the calls of several running tries in one transaction
// (store.Caller).
func (s *Store) CallMany(ctx context.Context, batches []store.CallBatch) ([]store.CallAnswer, error) {
	return s.callMany(ctx, fmt.Sprintf("record the calls of %d tries", len(batches)), batches)
}

func (s *Store) callMany(ctx context.Context, op string, batches []store.CallBatch) ([]store.CallAnswer, error) {
	out := make([]store.CallAnswer, len(batches))
	var todo []int
	for i, b := range batches {
		switch err := checkCalls(b); {
		case err != nil:
			out[i].Err = err
		case len(b.Calls) == 0:
			out[i].States = []store.CallState{}
		default:
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return out, nil
	}
	n := 0
	for _, i := range todo {
		n += len(batches[i].Calls)
	}
	var txs []*callTx
	err := s.inPipe(ctx, op, hotPlan(n), func(p *pipeTx) error {
		for _, i := range todo {
			out[i] = store.CallAnswer{}
		}
		var err error
		txs, err = readCallers(ctx, s, p, batches, todo, out)
		if err != nil {
			return err
		}
		return runCalls(ctx, p, txs)
	})
	if err != nil {
		return nil, err
	}
	// The created instances are read with COMMIT: answered once committed.
	for _, c := range txs {
		c.answer()
	}
	return out, nil
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

// readCallers reads the callers of batches todo and, in the same round
// trip, the existing instances of their calls; answers those not running
// their try (ErrStale) in out, and groups the others by run (a call from
// outside is a group of its own), sorted by run (lockAndNumber locks the
// runs in that order). Callers are not locked: the finishing transactions
// of callees lock callee rows, then callers, then runs, and a call
// transaction writes callers not at all.
func readCallers(ctx context.Context, s *Store, tx *pipeTx, batches []store.CallBatch, todo []int, out []store.CallAnswer) ([]*callTx, error) {
	var ids []int64
	for _, i := range todo {
		if batches[i].Caller.ID != 0 {
			ids = append(ids, batches[i].Caller.ID)
		}
	}
	type row struct {
		runID, versionID int64
		dagID, runName   string
		priority, mi     int
		st               state.TaskState
		try              int
	}
	rows := map[int64]row{}
	// The calls' existing instances are looked for in the same round trip,
	// in each caller's run (findExisting uses them).
	pre := map[int64]map[callKey]callee{}
	if len(ids) > 0 {
		var callers []int64
		var tasks, keys []string
		for _, i := range todo {
			b := batches[i]
			if b.Caller.ID == 0 {
				continue
			}
			for _, call := range b.Calls {
				callers, tasks, keys = append(callers, b.Caller.ID), append(tasks, call.TaskID), append(keys, call.Key)
			}
		}
		err := tx.queryAll(ctx, finalQuery{
			sql: `SELECT t.id, t.run_id, r.version_id, t.dag_id, r.run_id, t.priority, t.map_index, t.state, t.try_number
				FROM task_instances t JOIN dag_runs r ON r.id = t.run_id WHERE t.id = ANY($1)`,
			args: []any{ids},
			read: func(rs pgx.Rows) error {
				for rs.Next() {
					var id int64
					var r row
					if err := rs.Scan(&id, &r.runID, &r.versionID, &r.dagID, &r.runName, &r.priority, &r.mi, &r.st, &r.try); err != nil {
						return err
					}
					rows[id] = r
				}
				return nil
			},
		}, finalQuery{
			sql: findByCallersSQL, args: []any{callers, tasks, keys},
			read: func(rs pgx.Rows) error {
				for rs.Next() {
					var run int64
					var k callKey
					var x callee
					if err := rs.Scan(&run, &x.id, &k.task, &k.key, &x.mapIndex, &x.state, &x.output, &x.err); err != nil {
						return err
					}
					if pre[run] == nil {
						pre[run] = map[callKey]callee{}
					}
					pre[run][k] = x
				}
				return nil
			},
		})
		if err != nil {
			return nil, err
		}
	}
	var txs []*callTx
	byRun := map[int64]*callTx{}
	for _, i := range todo {
		b := batches[i]
		if b.Caller.ID == 0 {
			txs = append(txs, &callTx{s: s, tx: tx, runID: b.RunID, callers: []*caller{{b: b, out: &out[i]}}})
			continue
		}
		r, ok := rows[b.Caller.ID]
		if !ok || r.st != state.Running || r.try != b.Caller.TryNumber {
			out[i].Err = errorf("%w: task instance %d is not running try %d", store.ErrStale, b.Caller.ID, b.Caller.TryNumber)
			continue
		}
		c := byRun[r.runID]
		if c == nil {
			c = &callTx{s: s, tx: tx, runID: r.runID, versionID: r.versionID, dagID: r.dagID, runName: r.runName,
				pre: pre[r.runID], prefound: true}
			byRun[r.runID] = c
			txs = append(txs, c)
		}
		c.callers = append(c.callers, &caller{b: b, out: &out[i], priority: r.priority, isCall: r.mi >= 0})
	}
	slices.SortStableFunc(txs, func(a, b *callTx) int { return cmp.Compare(a.runID, b.runID) })
	return txs, nil
}

// runCalls runs the phases of txs (sorted by run). Finding the existing
// calls takes no lock, so that the calls of one run only found (a caller
// run again finding its calls final, calls already linked) run in
// parallel. The runs whose calls create instances (map indexes, the cap)
// or may close a cycle are then locked together, in run order, and what
// was missing is looked for again under the lock (another transaction may
// have created it meanwhile), with the callables' next map indexes, in
// the same round trip.
func runCalls(ctx context.Context, tx *pipeTx, txs []*callTx) error {
	for _, c := range txs {
		if err := c.readRun(ctx); err != nil {
			return err
		}
		if err := c.findExisting(ctx); err != nil {
			return err
		}
	}
	if err := lockAndNumber(ctx, tx, txs); err != nil {
		return err
	}
	for _, c := range txs {
		for _, phase := range []func(context.Context) error{c.create, c.linkAndCheck, c.finish} {
			if err := phase(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// missing returns the keys of c not found, with their callables.
func (c *callTx) missing() (keys []callKey, tasks []string) {
	for _, k := range c.keys {
		if _, ok := c.found[k]; !ok {
			keys, tasks = append(keys, k), append(tasks, k.task)
		}
	}
	return keys, tasks
}

// needsLock reports whether the calls of c must hold the run's lock:
// they create instances, come from outside, or some caller that is a call
// instance found an unfinished callee (a possible cycle, checked against
// the edges committed before).
func (c *callTx) needsLock() bool {
	if len(c.callers) > 0 && c.callers[0].b.Caller.ID == 0 {
		return true
	}
	if m, _ := c.missing(); len(m) > 0 {
		return true
	}
	for _, cl := range c.callers {
		if !cl.isCall {
			continue
		}
		for _, k := range cl.keys {
			if x, ok := c.found[k]; ok && x.unfinished() {
				return true
			}
		}
	}
	return false
}

// lockAndNumber locks the runs of txs that need it (needsLock), finds
// again their missing calls and reads, for those, the run's count of
// calls and the next map index of each callable, in one round trip.
func lockAndNumber(ctx context.Context, tx *pipeTx, txs []*callTx) error {
	var runs []int64
	var locked []*callTx
	for _, c := range txs {
		if !c.needsLock() {
			continue
		}
		locked = append(locked, c)
		if len(runs) == 0 || runs[len(runs)-1] != c.runID {
			runs = append(runs, c.runID)
		}
	}
	if len(runs) == 0 {
		return nil
	}
	qs := []finalQuery{{sql: `SELECT pg_advisory_xact_lock(hashtextextended('trellis_calls', id))
		FROM (SELECT id FROM unnest($1::bigint[]) AS id ORDER BY id) AS x`, args: []any{runs},
		read: func(pgx.Rows) error { return nil }}}
	for _, c := range locked {
		keys, names := c.missing()
		if len(keys) == 0 {
			continue
		}
		tasks, ks := make([]string, len(keys)), make([]string, len(keys))
		for i, k := range keys {
			tasks[i], ks[i] = k.task, k.key
		}
		qs = append(qs,
			finalQuery{sql: findCalleesSQL, args: []any{c.runID, tasks, ks},
				read: func(rows pgx.Rows) error { return c.readCallees(rows, false) }},
			finalQuery{sql: nextIndexesSQL, args: []any{c.runID, c.versionID, names}, read: c.readNumbers})
	}
	return tx.queryAll(ctx, qs...)
}

// readRun reads the run of a call from outside (locked by lockAndNumber
// before anything is created in it).
func (c *callTx) readRun(ctx context.Context) error {
	if c.callers[0].b.Caller.ID != 0 {
		return nil
	}
	var st state.RunState
	rows, err := c.tx.Query(ctx, `SELECT version_id, dag_id, run_id, state FROM dag_runs WHERE id = $1`, c.runID)
	if err != nil {
		return err
	}
	_, err = pgx.CollectExactlyOneRow(rows, func(r pgx.CollectableRow) (struct{}, error) {
		return struct{}{}, r.Scan(&c.versionID, &c.dagID, &c.runName, &st)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return errorf("%w: no run %d", store.ErrNotFound, c.runID)
	}
	c.closed = err == nil && st.Terminal()
	return err
}

// findExisting reads the call instances the batches name that exist. They
// are not locked: a callee read unfinished may finish at once, which the
// caller's deferral (waitingCounts) sees.
func (c *callTx) findExisting(ctx context.Context) error {
	c.first, c.owner, c.prio, c.found = map[callKey]store.NewCall{}, map[callKey]*caller{}, map[callKey]int{}, map[callKey]callee{}
	var tasks, keys []string
	for _, cl := range c.callers {
		mine := map[callKey]bool{}
		for _, call := range cl.b.Calls {
			k := callKey{call.TaskID, call.Key}
			if !mine[k] {
				mine[k] = true
				cl.keys = append(cl.keys, k)
			}
			if p, ok := c.prio[k]; !ok || cl.priority > p {
				c.prio[k] = cl.priority
			}
			if _, ok := c.first[k]; ok {
				continue
			}
			c.first[k], c.owner[k] = call, cl
			c.keys = append(c.keys, k)
			tasks, keys = append(tasks, k.task), append(keys, k.key)
		}
	}
	if c.prefound {
		for _, k := range c.keys {
			if x, ok := c.pre[k]; ok {
				c.found[k] = x
			}
		}
		return nil
	}
	rows, err := c.tx.Query(ctx, findCalleesSQL, c.runID, tasks, keys)
	if err != nil {
		return err
	}
	return c.readCallees(rows, false)
}

func (c *callTx) readCallees(rows pgx.Rows, fresh bool) error {
	defer rows.Close()
	for rows.Next() {
		var k callKey
		var x callee
		if err := rows.Scan(&x.id, &k.task, &k.key, &x.mapIndex, &x.state, &x.output, &x.err); err != nil {
			return err
		}
		x.fresh = fresh
		c.found[k] = x
	}
	return rows.Err()
}

// findCalleesSQL reads the call instances of run $1 named by the
// (callable, key) pairs $2, $3: one unique-index probe per pair. (A plain
// join let the generic plan, made while a fresh run's table was nearly
// empty, scan all the run's instances for every batch: 10 ms a batch at
// 16,000 instances.)
const findCalleesSQL = `SELECT t.id, t.task_id, t.call_key, t.map_index, t.state, t.output, t.error
	FROM unnest($2::text[], $3::text[]) AS u(task_id, call_key)
	CROSS JOIN LATERAL (SELECT * FROM task_instances t
		WHERE t.run_id = $1 AND t.task_id = u.task_id AND t.call_key = u.call_key LIMIT 1) AS t`

// findByCallersSQL reads the call instances named by the (callable, key)
// pairs $2, $3 in the run of the caller $1 of each: probes by id, then by
// key.
const findByCallersSQL = `SELECT c.run_id, t.id, t.task_id, t.call_key, t.map_index, t.state, t.output, t.error
	FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(caller, task_id, call_key)
	CROSS JOIN LATERAL (SELECT c.run_id FROM task_instances c WHERE c.id = u.caller LIMIT 1) AS c
	CROSS JOIN LATERAL (SELECT * FROM task_instances t
		WHERE t.run_id = c.run_id AND t.task_id = u.task_id AND t.call_key = u.call_key LIMIT 1) AS t`

// nextIndexesSQL reads the run $1's count of calls, and the next map
// index and key template of each callable $3 of version $2.
const nextIndexesSQL = `SELECT v.task_id, coalesce((SELECT max(t.map_index) FROM task_instances t
		WHERE t.run_id = $1 AND t.task_id = v.task_id AND t.map_index >= 0), -1),
		(SELECT n_calls FROM dag_runs WHERE id = $1), v.key_template, v.key_limit
	FROM dag_version_tasks v WHERE v.version_id = $2 AND v.kind = 'callable' AND v.task_id = ANY($3)`

type keyOf struct {
	template string
	limit    int
}

// readNumbers reads the rows of nextIndexesSQL.
func (c *callTx) readNumbers(rows pgx.Rows) error {
	defer rows.Close()
	c.next, c.keyed = map[string]int{}, map[string]keyOf{}
	for rows.Next() {
		var task string
		var last int
		var k keyOf
		if err := rows.Scan(&task, &last, &c.nCalls, &k.template, &k.limit); err != nil {
			return err
		}
		c.next[task] = last + 1
		if k.template != "" {
			c.keyed[task] = k
		}
	}
	return rows.Err()
}

// create inserts the call instances that do not exist yet, within the
// run's cap, with the callable's retry policy and timeout, the highest
// priority of their callers and the next map indexes of their callable.
func (c *callTx) create(ctx context.Context) error {
	c.refused = map[callKey]string{}
	missing, _ := c.missing()
	if len(missing) == 0 {
		return nil
	}
	next, keyed, nCalls := c.next, c.keyed, c.nCalls
	var tasks, keys, args []string
	var idx, prios []int32
	var ckeys []*string
	var parents []int64
	counters, queued := map[string]int{}, map[string]int{}
	for _, k := range missing {
		n, ok := next[k.task]
		owner := c.owner[k]
		if c.closed {
			c.refused[k] = "the run has finished: a call into it can only find a call it made"
			continue
		}
		if !ok {
			c.refused[k] = fmt.Sprintf("no callable %q in the DAG %q of the run", k.task, c.dagID)
			continue
		}
		if nCalls+len(tasks) >= owner.b.MaxCalls {
			c.refused[k] = fmt.Sprintf("the run has reached its cap of %d calls (dag.MaxCalls)", owner.b.MaxCalls)
			continue
		}
		arg := c.first[k].Arguments
		var ckey *string
		if kd, ok := keyed[k.task]; ok {
			name, err := store.RenderCallKey(kd.template, c.dagID, k.task, c.runName, arg)
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
		idx, prios = append(idx, int32(n)), append(prios, int32(c.prio[k]))
		ckeys = append(ckeys, ckey)
		parents = append(parents, owner.b.Caller.ID)
	}
	if len(tasks) == 0 {
		return nil
	}
	if err := c.countKeys(ctx, counters, queued); err != nil {
		return err
	}
	c.tx.queue(`
		INSERT INTO task_instances (run_id, dag_id, task_id, call_key, parent_ti_id, arguments, state, queued_at,
			map_index, max_tries, retries, priority, trigger_rule, retry_delay_ns, max_backoff_ns, timeout_ns, n_upstream,
			concurrency_key, limited)
		SELECT $1, $2, u.task_id, u.call_key, nullif(u.parent, 0), u.args::jsonb, 'queued', $3,
			u.map_index, v.retries + 1, v.retries, greatest(v.priority, u.prio), v.trigger_rule, v.retry_delay_ns,
			v.max_backoff_ns, v.timeout_ns, 0, u.ckey, u.ckey IS NOT NULL
		FROM unnest($4::text[], $5::text[], $6::text[], $7::int[], $8::text[], $9::int[], $10::bigint[])
			WITH ORDINALITY AS u(task_id, call_key, args, map_index, ckey, prio, parent, ord)
		JOIN dag_version_tasks v ON v.version_id = $11 AND v.task_id = u.task_id
		ORDER BY u.ord`,
		c.runID, c.dagID, c.callers[0].b.Now, tasks, keys, args, idx, ckeys, prios, parents, c.versionID)
	c.created = len(tasks)
	for i := range tasks {
		c.made = append(c.made, callKey{tasks[i], keys[i]})
	}
	// Read back with COMMIT (the answer needs their ids).
	c.tx.beforeCommit(findCalleesSQL, []any{c.runID, tasks, keys},
		func(rows pgx.Rows) error { return c.readCallees(rows, true) })
	return nil
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
	c.tx.queue(`INSERT INTO concurrency_keys (key, lim, queued)
		SELECT * FROM unnest($1::text[], $2::int[], $3::int[]) ORDER BY 1
		ON CONFLICT (key) DO UPDATE SET lim = excluded.lim, queued = concurrency_keys.queued + excluded.queued`,
		names, lims, qs)
	return nil
}

// unfinished reports whether a call instance is not final.
func (x callee) unfinished() bool { return !x.state.Terminal() }

// edges returns the calls caller cl links to: its calls made and not
// refused (found, or created in this transaction), in first-call order.
func (c *callTx) edges(cl *caller) []callKey {
	var ks []callKey
	for _, k := range cl.keys {
		if _, ok := cl.cycles[k]; ok {
			continue
		}
		if _, ok := c.refused[k]; ok {
			continue
		}
		ks = append(ks, k)
	}
	return ks
}

// linkAndCheck records the caller → callee edges of the calls made (an
// edge recorded by an earlier try is kept as it is), refusing as cycles
// the existing unfinished calls that would make a caller wait on itself or
// on one of its callers (a callee that reaches the caller through
// unfinished calls). Only a call instance can be in a cycle: nothing calls
// a static task. A callee a caller is linked to already was checked when
// the edge was made, and a call instance created here calls nothing yet:
// the callers calling neither are linked at once, the others one after
// the other, each checked against the edges of those before it.
func (c *callTx) linkAndCheck(ctx context.Context) error {
	if c.callers[0].b.Caller.ID == 0 {
		return nil
	}
	var pairCaller, pairCallee []int64
	for _, cl := range c.callers {
		cl.cycles = map[callKey]string{}
		if !cl.isCall {
			continue
		}
		for _, k := range cl.keys {
			x, ok := c.found[k]
			if !ok || !x.unfinished() || x.fresh {
				continue
			}
			if x.id == cl.b.Caller.ID {
				path, err := c.cyclePath(ctx, cl.b.Caller.ID, x.id)
				if err != nil {
					return err
				}
				cl.cycles[k] = path
				continue
			}
			pairCaller, pairCallee = append(pairCaller, cl.b.Caller.ID), append(pairCallee, x.id)
		}
	}
	starts := map[int64][]int64{}
	if len(pairCaller) > 0 {
		rows, err := c.tx.Query(ctx, `SELECT u.caller, u.callee FROM unnest($1::bigint[], $2::bigint[]) AS u(caller, callee)
			WHERE NOT EXISTS (SELECT 1 FROM task_calls k WHERE k.caller_id = u.caller AND k.callee_id = u.callee)`,
			pairCaller, pairCallee)
		if err != nil {
			return err
		}
		for rows.Next() {
			var a, b int64
			if err := rows.Scan(&a, &b); err != nil {
				rows.Close()
				return err
			}
			starts[a] = append(starts[a], b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	var at, later []*caller
	for _, cl := range c.callers {
		if len(starts[cl.b.Caller.ID]) > 0 {
			later = append(later, cl)
		} else {
			at = append(at, cl)
		}
	}
	c.link(at)
	for _, cl := range later {
		// Sent with the queued edges of the callers before it.
		if err := c.refuseCycles(ctx, cl, starts[cl.b.Caller.ID]); err != nil {
			return err
		}
		c.link([]*caller{cl})
	}
	return nil
}

// refuseCycles refuses the calls of cl whose callees among starts reach
// cl through unfinished calls.
func (c *callTx) refuseCycles(ctx context.Context, cl *caller, starts []int64) error {
	rows, err := c.tx.Query(ctx, `
		WITH RECURSIVE r(start, id) AS (
			SELECT s, s FROM unnest($1::bigint[]) AS s
			UNION
			SELECT r.start, k.callee_id FROM r JOIN task_calls k ON k.caller_id = r.id
			CROSS JOIN LATERAL (SELECT 1 FROM task_instances t
				WHERE t.id = k.callee_id AND t.state IN `+unfinishedList+` LIMIT 1) AS t
			WHERE r.id <> $2
		)
		SELECT DISTINCT start FROM r WHERE id = $2`, starts, cl.b.Caller.ID)
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	for _, id := range ids {
		for _, k := range cl.keys {
			if x, ok := c.found[k]; ok && x.id == id {
				path, err := c.cyclePath(ctx, cl.b.Caller.ID, id)
				if err != nil {
					return err
				}
				cl.cycles[k] = path
			}
		}
	}
	return nil
}

// link queues the statement recording the edges of callers cls. Callees
// are named by callable and key, found by the statement (those created in
// this transaction have no id in Go yet).
func (c *callTx) link(cls []*caller) {
	var callers, distinct []int64
	var tasks, keys []string
	var ords []int32
	for _, cl := range cls {
		for i, k := range c.edges(cl) {
			callers, ords = append(callers, cl.b.Caller.ID), append(ords, int32(i+1))
			tasks, keys = append(tasks, k.task), append(keys, k.key)
		}
		distinct = append(distinct, cl.b.Caller.ID)
	}
	if len(callers) == 0 {
		return
	}
	// Positions continue after the edges each caller has: counted once per
	// caller (a subquery per edge costs seconds for 10,000 calls).
	c.tx.queue(`
		INSERT INTO task_calls (caller_id, callee_id, run_id, seq)
		SELECT u.caller, t.id, $1, coalesce(n.n, 0) + u.ord
		FROM unnest($2::bigint[], $3::text[], $4::text[], $5::int[]) AS u(caller, task_id, call_key, ord)
		CROSS JOIN LATERAL (SELECT t.id FROM task_instances t
			WHERE t.run_id = $1 AND t.task_id = u.task_id AND t.call_key = u.call_key LIMIT 1) AS t
		LEFT JOIN (SELECT caller_id, count(*) AS n FROM task_calls WHERE caller_id = ANY($6) GROUP BY caller_id) AS n
			ON n.caller_id = u.caller
		ON CONFLICT DO NOTHING`, c.runID, callers, tasks, keys, ords, distinct)
}

// cyclePath names the cycle a call of instance from by caller would
// close: from, through unfinished calls, to the caller, and back to from.
func (c *callTx) cyclePath(ctx context.Context, caller, from int64) (string, error) {
	path := []int64{from}
	if from != caller {
		rows, err := c.tx.Query(ctx, `
			WITH RECURSIVE r(id) AS (
				SELECT $1::bigint
				UNION
				SELECT k.callee_id FROM r JOIN task_calls k ON k.caller_id = r.id
				CROSS JOIN LATERAL (SELECT 1 FROM task_instances t
					WHERE t.id = k.callee_id AND t.state IN `+unfinishedList+` LIMIT 1) AS t
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

// finish queues the statements raising the priorities of unfinished
// callees and counting the created instances (sent with COMMIT), and the
// wake-up of the workers when instances were created.
func (c *callTx) finish(ctx context.Context) error {
	b := &pgx.Batch{}
	c.inherit(b)
	c.count(b)
	if err := runBatch(ctx, c.tx, b); err != nil {
		return err
	}
	if c.created > 0 {
		return notify(ctx, c.tx, store.TopicTasksReady)
	}
	return nil
}

// inherit raises the priority of the unfinished callees to their
// callers', so that the calls others wait on are claimed before new work
// of lower priority. Only the rows whose priority is lower are locked.
func (c *callTx) inherit(b *pgx.Batch) {
	var ids []int64
	var prios []int32
	for _, k := range c.keys {
		if x, ok := c.found[k]; ok && x.unfinished() && !x.fresh {
			ids, prios = append(ids, x.id), append(prios, int32(c.prio[k]))
		}
	}
	if len(ids) == 0 || c.callers[0].b.Caller.ID == 0 {
		return
	}
	b.Queue(`UPDATE task_instances t SET priority = u.prio
		FROM unnest($1::bigint[], $2::int[]) AS u(id, prio)
		WHERE t.id = u.id AND t.priority < u.prio AND t.state IN `+unfinishedList, ids, prios)
}

// count adds the created call instances to the run's counters (locked
// last, after every instance, as the finishing transactions do).
func (c *callTx) count(b *pgx.Batch) {
	if c.created == 0 {
		return
	}
	b.Queue(`UPDATE dag_runs SET n_calls = n_calls + $2, unfinished = unfinished + $2
		WHERE id = $1`, c.runID, c.created)
}

// answer answers each caller, one state per call.
func (c *callTx) answer() {
	for _, cl := range c.callers {
		states := make([]store.CallState, len(cl.b.Calls))
		for i, call := range cl.b.Calls {
			k := callKey{call.TaskID, call.Key}
			if path, ok := cl.cycles[k]; ok {
				states[i] = store.CallState{Refused: path, Cycle: true}
				continue
			}
			if why, ok := c.refused[k]; ok {
				states[i] = store.CallState{Refused: why}
				continue
			}
			x := c.found[k]
			states[i] = store.CallState{ID: x.id, MapIndex: x.mapIndex, State: x.state, Error: x.err}
			if x.output != nil && x.state == state.Success {
				states[i].Output = json.RawMessage(x.output)
			}
		}
		*cl.out = store.CallAnswer{States: states}
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
// claim gives it back). Callers are locked in id order, after the callees,
// each by a primary-key probe (a join's generic plan walked the table).
const wakeWaitersSQL = `
	WITH c AS MATERIALIZED (
		SELECT caller_id, count(*)::int AS n FROM task_calls WHERE callee_id = ANY($1) GROUP BY caller_id ORDER BY caller_id
	), w AS MATERIALIZED (
		SELECT t.id, c.n FROM c CROSS JOIN LATERAL (SELECT t.id FROM task_instances t
			WHERE t.id = c.caller_id AND t.state = 'deferred' LIMIT 1 FOR NO KEY UPDATE) AS t
	)
	UPDATE task_instances t SET
		waiting_on = greatest(t.waiting_on - w.n, 0),
		state = CASE WHEN t.waiting_on <= w.n THEN 'queued' ELSE 'deferred' END,
		try_number = CASE WHEN t.waiting_on <= w.n THEN t.try_number - 1 ELSE t.try_number END,
		queued_at = CASE WHEN t.waiting_on <= w.n THEN $2 ELSE t.queued_at END
	FROM w WHERE t.id = w.id AND t.id = ANY(ARRAY(SELECT id FROM w)) AND t.state = 'deferred'
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
	// One primary-key probe per callee, in callee id order (a join's
	// generic plan, made while the table was nearly empty, walked the
	// whole table in id order).
	rows, err := tx.Query(ctx, `
		WITH k AS MATERIALIZED (SELECT caller_id, callee_id FROM task_calls WHERE caller_id = ANY($1) ORDER BY callee_id)
		SELECT k.caller_id FROM k CROSS JOIN LATERAL (SELECT y.id FROM task_instances y
			WHERE y.id = k.callee_id AND y.state IN `+unfinishedList+` LIMIT 1 FOR SHARE) AS y`, ids)
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

// rerunFailedCallsSQL queues again the call instances that failed among
// those the instances $1 called, and among those these called in turn
// while failed ($2 now): clearing a caller re-runs the calls it would
// find failed, and reuses those that succeeded. Each gets its retries
// back, as a cleared task does.
const rerunFailedCallsSQL = `
	WITH RECURSIVE f(id) AS (
		SELECT k.callee_id FROM task_calls k JOIN task_instances t ON t.id = k.callee_id
		WHERE k.caller_id = ANY($1) AND t.state IN ('failed', 'upstream_failed')
		UNION
		SELECT k.callee_id FROM f JOIN task_calls k ON k.caller_id = f.id
		JOIN task_instances t ON t.id = k.callee_id AND t.state IN ('failed', 'upstream_failed')
	), x AS MATERIALIZED (
		SELECT t.id FROM task_instances t JOIN f ON f.id = t.id ORDER BY t.id FOR NO KEY UPDATE OF t
	)
	UPDATE task_instances t SET state = 'queued', queued_at = $2, max_tries = t.try_number + t.retries + 1,
		started_at = NULL, ended_at = NULL, next_retry_at = NULL, heartbeat_at = NULL, worker_id = '', hostname = '',
		pid = 0, output = NULL, error = '', resumed = false, deferred_state = NULL, event_payload = NULL,
		wait_event = NULL, next_check_at = NULL, trigger_timeout = NULL, waiting_on = 0
	FROM x WHERE t.id = x.id AND t.state IN ('failed', 'upstream_failed')`

// rerunFailedCalls applies rerunFailedCallsSQL for the cleared instances
// ids and returns how many call instances it queued, waking the workers.
func rerunFailedCalls(ctx context.Context, tx dbtx, ids []int64, now time.Time) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	tag, err := tx.Exec(ctx, rerunFailedCallsSQL, ids, now)
	if err != nil {
		return 0, err
	}
	n := int(tag.RowsAffected())
	if n > 0 {
		return n, notify(ctx, tx, store.TopicTasksReady)
	}
	return 0, nil
}
