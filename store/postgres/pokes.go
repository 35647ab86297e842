package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// claimPokesSQL leases ($3 until, under a new lease) up to $2 poke rows
// due at $1, through the due index, skipping rows another claim holds.
// A due row whose instance is no longer deferred on its try (continued,
// cleared, marked, deleted) is deleted instead. The claimed pokes come
// back as one row of arrays in instance id order (instance, try, lease,
// run, task id, deadline), then the arrays of their runs' columns (id,
// DAG, run id, dates, conf), each run once: one row of a few arrays to
// read in Go instead of a row of twelve values per poke. The instance's
// columns come from the due scan, which reads each instance through its
// key already (a second join would hash the whole table when it is
// small).
const claimPokesSQL = `
	WITH due AS MATERIALIZED (
		SELECT p.ti_id, coalesce(t.state = 'deferred' AND t.try_number = p.try_number, false) AS live,
			t.run_id, t.task_id, t.trigger_timeout
		FROM sensor_pokes p LEFT JOIN task_instances t ON t.id = p.ti_id
		WHERE p.due_at <= $1
		ORDER BY p.due_at
		LIMIT $2
		FOR UPDATE OF p SKIP LOCKED),
	gone AS (DELETE FROM sensor_pokes p USING due WHERE p.ti_id = due.ti_id AND NOT due.live),
	u AS (
		UPDATE sensor_pokes p SET due_at = $3, lease = p.lease + 1 FROM due
		WHERE p.ti_id = due.ti_id AND due.live
		RETURNING p.ti_id, p.try_number, p.lease),
	c AS MATERIALIZED (
		SELECT u.ti_id, u.try_number, u.lease, d.run_id, d.task_id, d.trigger_timeout
		FROM u JOIN due d ON d.ti_id = u.ti_id JOIN dag_runs r ON r.id = d.run_id
		ORDER BY u.ti_id)
	SELECT p.*, r.*
	FROM (SELECT array_agg(ti_id), array_agg(try_number), array_agg(lease), array_agg(run_id),
			array_agg(task_id), array_agg(trigger_timeout) FROM c) p,
		(SELECT array_agg(id), array_agg(dag_id), array_agg(run_id), array_agg(logical_date),
			array_agg(interval_start), array_agg(interval_end), array_agg(conf::text)
		FROM dag_runs WHERE id IN (SELECT run_id FROM c)) r`

// nextPokeSQL is the earliest due time of the poke rows (leases
// included: a lease that runs out is due again).
const nextPokeSQL = `SELECT min(due_at) FROM sensor_pokes`

// ClaimPokes leases due pokes to worker w (claimPokesSQL) and reads when
// the next is due, in one round trip (one implicit transaction).
func (s *Store) ClaimPokes(ctx context.Context, w store.Worker, max int, now, leaseUntil time.Time) ([]store.Poke, time.Time, error) {
	out, next, _, err := s.claimPokes(ctx, w, nil, max, now, leaseUntil)
	return out, next, err
}

// ClaimPokesAfter records the "not yet" results notYet (pokesAgainSQL)
// and claims (claimPokesSQL, nextPokeSQL) in one round trip: the three
// statements go in one batch, which PostgreSQL runs as one implicit
// transaction.
func (s *Store) ClaimPokesAfter(ctx context.Context, w store.Worker, notYet []store.PokeResult, max int, now, leaseUntil time.Time) ([]store.Poke, time.Time, []store.FinishOutcome, error) {
	if err := store.CheckNotYet(notYet); err != nil {
		return nil, time.Time{}, nil, err
	}
	return s.claimPokes(ctx, w, notYet, max, now, leaseUntil)
}

// claimPokes is ClaimPokes, recording notYet (checked) first in the same
// batch when there are any.
func (s *Store) claimPokes(ctx context.Context, w store.Worker, notYet []store.PokeResult, max int, now, leaseUntil time.Time) ([]store.Poke, time.Time, []store.FinishOutcome, error) {
	if max <= 0 {
		return nil, time.Time{}, nil, fmt.Errorf("claim pokes for worker %q: max is %d, want at least 1", w.ID, max)
	}
	var (
		out    []store.Poke
		next   *time.Time
		missed map[int64]bool
	)
	var again [3]string
	if len(notYet) > 0 {
		again = pokesAgainArgs(notYet)
	}
	cols := pokeColumnsKept.get()
	defer pokeColumnsKept.put(cols)
	err := s.retry(ctx, fmt.Sprintf("claim pokes for worker %q", w.ID), func() error {
		b := &pgx.Batch{}
		if len(notYet) > 0 {
			b.Queue(pokesAgainSQL, again[0], again[1], again[2])
		}
		b.Queue(claimPokesSQL, now, max, leaseUntil)
		b.Queue(nextPokeSQL)
		br := s.pool.SendBatch(ctx, b)
		defer br.Close()
		if len(notYet) > 0 {
			var err error
			if missed, err = collectIDs(br.Query()); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		if !rows.Next() {
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			return fmt.Errorf("claim of pokes returned no row")
		}
		err = cols.read(rows)
		rows.Close()
		if err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if err := br.QueryRow().Scan(&next); err != nil {
			return err
		}
		return br.Close()
	})
	if err != nil {
		return nil, time.Time{}, nil, err
	}
	if out, err = cols.pokes(); err != nil {
		return nil, time.Time{}, nil, err
	}
	s.vacuumPokes(ctx, len(out))
	var outcomes []store.FinishOutcome
	if len(notYet) > 0 {
		outcomes = notYetOutcomes(notYet, missed)
	}
	if next == nil {
		return out, time.Time{}, outcomes, nil
	}
	return out, next.UTC(), outcomes, nil
}

// pokesStartSQL moves the instances whose poke ended their wait from
// deferred to running under the poking worker, each a compare-and-set on
// (deferred, try number, the poke's lease): $1 instances, $2 tries, $3
// leases, $4 now, $5 worker, $6 host, $7 pid. The finish then ends the
// try as any other.
const pokesStartSQL = `
	UPDATE task_instances t SET state = 'running', heartbeat_at = $4, worker_id = $5, hostname = $6, pid = $7,
		next_check_at = NULL, wait_event = NULL
	FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS u(id, try, lease)
	WHERE t.id = u.id AND t.id = ANY($1) AND t.try_number = u.try AND t.state = 'deferred'
		AND EXISTS (SELECT 1 FROM sensor_pokes p WHERE p.ti_id = u.id AND p.lease = u.lease)
	RETURNING t.id`

// pokesEndSQL deletes the poke rows of instances ($1) whose lease is
// still $2, returning them.
const pokesEndSQL = `
	DELETE FROM sensor_pokes p USING unnest($1::bigint[], $2::bigint[]) AS u(id, lease)
	WHERE p.ti_id = u.id AND p.lease = u.lease
	RETURNING p.ti_id`

// pokesAgainSQL moves the next check of "not yet" pokes ($1 instances,
// $2 leases, $3 next checks in microseconds since 1970) under their
// lease, and returns the instances whose lease had changed (not moved;
// usually none: no row to send and read per poke). The arrays come as
// text (int8Array): one string per batch instead of an encoded value per
// element, for the statement every poke of every sensor goes through.
const pokesAgainSQL = `
	WITH moved AS (
		UPDATE sensor_pokes p SET due_at = 'epoch'::timestamptz + u.due * interval '1 microsecond'
		FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::bigint[]) AS u(id, lease, due)
		WHERE p.ti_id = u.id AND p.lease = u.lease
		RETURNING p.ti_id)
	SELECT id FROM unnest($1::text::bigint[]) AS id WHERE id NOT IN (SELECT ti_id FROM moved)`

// int8Array writes vs as the text of a PostgreSQL bigint[].
func int8Array(vs []int64) string {
	var a int8ArrayText
	a.grow(len(vs), 12)
	for _, v := range vs {
		a.add(v)
	}
	return a.text()
}

// int8ArrayText builds the text of a PostgreSQL bigint[] in one buffer
// that becomes the string (strings.Builder: no copy at the end).
type int8ArrayText struct {
	b strings.Builder
}

// grow makes room for n values of about digits characters each.
func (a *int8ArrayText) grow(n, digits int) { a.b.Grow(2 + n*(digits+1)) }

func (a *int8ArrayText) add(v int64) {
	if a.b.Len() == 0 {
		a.b.WriteByte('{')
	} else {
		a.b.WriteByte(',')
	}
	var d [20]byte
	a.b.Write(strconv.AppendInt(d[:0], v, 10))
}

func (a *int8ArrayText) text() string {
	if a.b.Len() == 0 {
		return "{}"
	}
	a.b.WriteByte('}')
	return a.b.String()
}

// FinishPokes records poke results in one transaction: the final ones
// start and finish their tries (pokesStartSQL, then the finish), the
// requeued ones go to the task queue, and the "not yet" ones get their
// next check (pokesAgainSQL), in that order (instances before poke rows,
// as a deferral locks them). A batch of "not yet" only — most batches —
// is the one statement, without BEGIN and COMMIT.
func (s *Store) FinishPokes(ctx context.Context, w store.Worker, results []store.PokeResult, now time.Time) ([]store.FinishOutcome, error) {
	if len(results) == 0 {
		return []store.FinishOutcome{}, nil
	}
	if err := store.CheckPokeResults(results); err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(results, func(r store.PokeResult) bool { return r.Requeue || r.Result.State != state.Deferred }) {
		return s.pokesAgain(ctx, w, results)
	}
	order := make([]int, len(results))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(results[a].ID, results[b].ID) })
	var out []store.FinishOutcome
	err := s.inTx(ctx, fmt.Sprintf("record %d pokes of worker %q", len(results), w.ID), func(tx pgx.Tx) error {
		out = make([]store.FinishOutcome, len(results))
		for i, r := range results {
			out[i] = store.FinishOutcome{Try: r.Try}
		}
		var (
			fin                  pokeArrays
			finIdx               []int
			back, again          pokeArrays
			backIdx, againIdx    []int
			againDue             []int64
			finishing            []store.Result
			finishingIdx         []int
			startedIDs, requeued map[int64]bool
			againMissed          map[int64]bool
			err                  error
		)
		for _, i := range order {
			r := results[i]
			switch {
			case r.Requeue:
				back.add(r)
				backIdx = append(backIdx, i)
			case r.Result.State == state.Deferred:
				again.add(r)
				againIdx = append(againIdx, i)
				againDue = append(againDue, r.Result.Deferral.NextCheckAt.UnixMicro())
			default:
				fin.add(r)
				finIdx = append(finIdx, i)
			}
		}
		if len(fin.ids) > 0 {
			if startedIDs, err = collectIDs(tx.Query(ctx, pokesStartSQL, fin.ids, fin.tries, fin.leases, now, w.ID, w.Hostname, w.PID)); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, pokesEndSQL, fin.ids, fin.leases); err != nil {
				return err
			}
			for _, i := range finIdx {
				if startedIDs[results[i].ID] {
					res := results[i].Result
					res.Try = results[i].Try
					finishing, finishingIdx = append(finishing, res), append(finishingIdx, i)
				}
			}
			if len(finishing) > 0 {
				done, err := s.finishIn(ctx, tx, finishing)
				if err != nil {
					return err
				}
				for k, i := range finishingIdx {
					out[i] = done[k]
				}
			}
		}
		if len(back.ids) > 0 {
			if requeued, err = collectIDs(tx.Query(ctx, pokesEndSQL, back.ids, back.leases)); err != nil {
				return err
			}
			var ids []int64
			for _, id := range back.ids {
				if requeued[id] {
					ids = append(ids, id)
				}
			}
			if _, err := requeueDeferredTries(ctx, tx, ids, back, now); err != nil {
				return err
			}
			for _, i := range backIdx {
				if requeued[results[i].ID] {
					out[i].Applied, out[i].State = true, state.Queued
				}
			}
		}
		if len(again.ids) > 0 {
			if againMissed, err = collectIDs(tx.Query(ctx, pokesAgainSQL, int8Array(again.ids), int8Array(again.leases), int8Array(againDue))); err != nil {
				return err
			}
			for _, i := range againIdx {
				if !againMissed[results[i].ID] {
					out[i].Applied, out[i].State = true, state.Deferred
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// pokesAgain records a batch of "not yet" results alone: pokesAgainSQL,
// one statement (its own transaction), the rows in id order as in
// FinishPokes's transaction.
func (s *Store) pokesAgain(ctx context.Context, w store.Worker, results []store.PokeResult) ([]store.FinishOutcome, error) {
	args := pokesAgainArgs(results)
	var missed map[int64]bool
	err := s.retry(ctx, fmt.Sprintf("record %d pokes of worker %q", len(results), w.ID), func() error {
		var err error
		missed, err = collectIDs(s.pool.Query(ctx, pokesAgainSQL, args[0], args[1], args[2]))
		return err
	})
	if err != nil {
		return nil, err
	}
	return notYetOutcomes(results, missed), nil
}

// notYetOutcomes are the outcomes of "not yet" results recorded by
// pokesAgainSQL, which returned the instances missed (lease changed).
func notYetOutcomes(results []store.PokeResult, missed map[int64]bool) []store.FinishOutcome {
	out := make([]store.FinishOutcome, len(results))
	for i, r := range results {
		out[i].Try = r.Try
		if !missed[r.ID] {
			out[i].Applied, out[i].State = true, state.Deferred
		}
	}
	return out
}

// pokesAgainArgs are pokesAgainSQL's arguments for "not yet" results:
// instances, leases and next checks, in instance id order (the order
// FinishPokes's transaction locks rows in).
func pokesAgainArgs(results []store.PokeResult) [3]string {
	// Claims come in id order (claimPokesSQL), so results usually do:
	// the three arrays are written straight from them.
	var ids, leases, due int8ArrayText
	ids.grow(len(results), 8)
	leases.grow(len(results), 2)
	due.grow(len(results), 16)
	add := func(r *store.PokeResult) {
		ids.add(r.ID)
		leases.add(r.Lease)
		due.add(r.Result.Deferral.NextCheckAt.UnixMicro())
	}
	if slices.IsSortedFunc(results, func(a, b store.PokeResult) int { return cmp.Compare(a.ID, b.ID) }) {
		for i := range results {
			add(&results[i])
		}
	} else {
		order := make([]int, len(results))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int { return cmp.Compare(results[a].ID, results[b].ID) })
		for _, i := range order {
			add(&results[i])
		}
	}
	return [3]string{ids.text(), leases.text(), due.text()}
}

// requeueDeferredTries queues again, resumed, the instances ids that are
// deferred on the try back names for them.
func requeueDeferredTries(ctx context.Context, tx dbtx, ids []int64, back pokeArrays, now time.Time) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	tag, err := tx.Exec(ctx, `
		UPDATE task_instances t SET state = 'queued', try_number = t.try_number - 1, queued_at = $4,
			resumed = true, next_check_at = NULL, wait_event = NULL
		FROM unnest($1::bigint[], $2::int[]) AS u(id, try)
		WHERE t.id = u.id AND t.id = ANY($3) AND t.try_number = u.try AND t.state = 'deferred'`,
		back.ids, back.tries, ids, now)
	if err != nil {
		return 0, err
	}
	n := int(tag.RowsAffected())
	if n > 0 {
		return n, notify(ctx, tx, store.TopicTasksReady)
	}
	return n, nil
}

// pokeArrays are the columns of poke results as statement arguments.
type pokeArrays struct {
	ids    []int64
	tries  []int32
	leases []int64
}

func (a *pokeArrays) add(r store.PokeResult) {
	a.ids, a.tries, a.leases = append(a.ids, r.ID), append(a.tries, int32(r.TryNumber)), append(a.leases, r.Lease)
}

// collectIDs reads a column of instance ids.
func collectIDs(rows pgx.Rows, err error) (map[int64]bool, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out map[int64]bool // nil while empty (usually): no map per call
	var id int64
	for rows.Next() {
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		if out == nil {
			out = map[int64]bool{}
		}
		out[id] = true
	}
	return out, rows.Err()
}

// vacuumPokes counts n claimed pokes and, every QueueVacuumEvery of
// them, vacuums sensor_pokes, as vacuumQueue does the queue: each poke
// writes a row twice with a new due time, and the dead index entries,
// oldest due first, would otherwise lie in front of every claim's scan.
func (s *Store) vacuumPokes(ctx context.Context, n int) {
	if s.vacuumEvery <= 0 || n == 0 || s.poked.Add(int64(n)) < s.vacuumEvery {
		return
	}
	s.poked.Store(0)
	if _, err := s.pool.Exec(ctx, "VACUUM (SKIP_LOCKED) sensor_pokes"); err != nil {
		s.log.Warn("vacuum of sensor_pokes failed; poke claims slow down until it succeeds", "err", errText(err))
	}
}
