package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// pokedInstances fills the instance columns of the claimed pokes (sorted
// by id) with one statement for the batch, not one a poke.
func pokedInstances(w *txn, pokes []store.Poke) error {
	if len(pokes) == 0 {
		return nil
	}
	ids := make([]int64, len(pokes))
	for i, p := range pokes {
		ids[i] = p.ID
	}
	rows, err := w.query(`SELECT id, run_id, dag_id, task_id, trigger_timeout FROM task_instances
		WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id`, idList(ids))
	if err != nil {
		return err
	}
	k := 0
	for rows.Next() {
		var id int64
		var deadline sql.NullInt64
		var p store.Poke
		if err := rows.Scan(&id, &p.RunID, &p.DAGID, &p.TaskID, &deadline); err != nil {
			rows.Close()
			return err
		}
		for k < len(pokes) && pokes[k].ID < id {
			k++
		}
		if k == len(pokes) || pokes[k].ID != id {
			continue
		}
		q := &pokes[k]
		q.RunID, q.DAGID, q.TaskID = p.RunID, p.DAGID, p.TaskID
		if deadline.Valid {
			q.TriggerTimeout = fromUS(deadline.Int64)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return err
	}
	for _, p := range pokes {
		if p.DAGID == "" {
			return fmt.Errorf("claimed poke of instance %d has no instance", p.ID)
		}
	}
	return nil
}

// ClaimPokes leases due pokes to worker w in one write transaction: the
// due rows whose instance is no longer deferred on their try are deleted,
// the others get a new lease and leaseUntil as their due time. It reads
// when the next is due in the same transaction.
func (s *Store) ClaimPokes(ctx context.Context, wk store.Worker, max int, now, leaseUntil time.Time) ([]store.Poke, time.Time, error) {
	if max <= 0 {
		return nil, time.Time{}, fmt.Errorf("claim pokes for worker %q: max is %d, want at least 1", wk.ID, max)
	}
	var (
		out  []store.Poke
		next sql.NullInt64
	)
	err := s.write(ctx, fmt.Sprintf("claim pokes for worker %q", wk.ID), func(w *txn) error {
		out, next = nil, sql.NullInt64{}
		if _, err := w.exec(`DELETE FROM sensor_pokes WHERE ti_id IN (
				SELECT p.ti_id FROM sensor_pokes p LEFT JOIN task_instances t ON t.id = p.ti_id
				WHERE p.due_at <= ?1 AND NOT coalesce(t.state = 'deferred' AND t.try_number = p.try_number, 0)
				ORDER BY p.due_at LIMIT ?2 + 0)`, us(now), max); err != nil {
			return err
		}
		rows, err := w.query(`UPDATE sensor_pokes SET due_at = ?3, lease = lease + 1
			WHERE ti_id IN (SELECT ti_id FROM sensor_pokes WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2 + 0)
			RETURNING ti_id, try_number, lease`, us(now), max, us(leaseUntil))
		if err != nil {
			return err
		}
		for rows.Next() {
			var p store.Poke
			if err := rows.Scan(&p.ID, &p.TryNumber, &p.Lease); err != nil {
				rows.Close()
				return err
			}
			out = append(out, p)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		slices.SortFunc(out, func(a, b store.Poke) int { return cmp.Compare(a.ID, b.ID) })
		if err := pokedInstances(w, out); err != nil {
			return err
		}
		runs := map[int64]runRec{}
		for i := range out {
			p := &out[i]
			r, ok := runs[p.RunID]
			if !ok {
				var err error
				if r, err = getRunByID(w.ctx, w, p.RunID); err != nil {
					return err
				}
				runs[p.RunID] = r
				p.Conf = r.Conf
			}
			p.DAGRunID = r.RunID
			p.LogicalDate, p.IntervalStart, p.IntervalEnd = r.LogicalDate, r.IntervalStart, r.IntervalEnd
		}
		return w.queryRow(`SELECT min(due_at) FROM sensor_pokes`).Scan(&next)
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	if !next.Valid {
		return out, time.Time{}, nil
	}
	return out, fromUS(next.Int64), nil
}

// FinishPokes records poke results in one write transaction: the final
// ones move from deferred to running under worker wk and finish as
// FinishTasks would, the requeued ones are queued, resumed, and the "not
// yet" ones get their next check; each under its poke's lease.
func (s *Store) FinishPokes(ctx context.Context, wk store.Worker, results []store.PokeResult, now time.Time) ([]store.FinishOutcome, error) {
	if len(results) == 0 {
		return []store.FinishOutcome{}, nil
	}
	if err := store.CheckPokeResults(results); err != nil {
		return nil, err
	}
	var out []store.FinishOutcome
	err := s.write(ctx, fmt.Sprintf("record %d pokes of worker %q", len(results), wk.ID), func(w *txn) error {
		out = make([]store.FinishOutcome, len(results))
		var finishing []store.Result
		var finishingIdx []int
		for i, r := range results {
			out[i] = store.FinishOutcome{Try: r.Try}
			switch {
			case r.Result.State == state.Deferred && !r.Requeue:
				res, err := w.exec(`UPDATE sensor_pokes SET due_at = ? WHERE ti_id = ? AND lease = ?`,
					us(r.Result.Deferral.NextCheckAt), r.ID, r.Lease)
				if err != nil {
					return err
				}
				if n, _ := res.RowsAffected(); n == 1 {
					out[i].Applied, out[i].State = true, state.Deferred
				}
				continue
			}
			res, err := w.exec(`DELETE FROM sensor_pokes WHERE ti_id = ? AND lease = ?`, r.ID, r.Lease)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n != 1 {
				continue // another claim holds it now
			}
			if r.Requeue {
				res, err := w.exec(`UPDATE task_instances SET state = 'queued', try_number = try_number - 1, queued_at = ?,
						resumed = 1, next_check_at = NULL, wait_event = NULL
					WHERE id = ? AND try_number = ? AND state = 'deferred'`, us(now), r.ID, r.TryNumber)
				if err != nil {
					return err
				}
				if n, _ := res.RowsAffected(); n == 1 {
					out[i].Applied, out[i].State = true, state.Queued
					w.wake(store.TopicTasksReady)
				}
				continue
			}
			res, err = w.exec(`UPDATE task_instances SET state = 'running', heartbeat_at = ?, worker_id = ?, hostname = ?, pid = ?,
					next_check_at = NULL, wait_event = NULL
				WHERE id = ? AND try_number = ? AND state = 'deferred'`, us(now), wk.ID, wk.Hostname, wk.PID, r.ID, r.TryNumber)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 1 {
				f := r.Result
				f.Try = r.Try
				finishing, finishingIdx = append(finishing, f), append(finishingIdx, i)
			}
		}
		if len(finishing) == 0 {
			return nil
		}
		done, err := newEngine(w, time.Time{}).finishBatch(finishing)
		if err != nil {
			return err
		}
		for k, i := range finishingIdx {
			out[i] = done[k]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ClaimPokesAfter records the "not yet" results notYet (FinishPokes),
// then claims (ClaimPokes): two write transactions, the database being
// in this process (no round trip to save).
func (s *Store) ClaimPokesAfter(ctx context.Context, wk store.Worker, notYet []store.PokeResult, max int, now, leaseUntil time.Time) ([]store.Poke, time.Time, []store.FinishOutcome, error) {
	if err := store.CheckNotYet(notYet); err != nil {
		return nil, time.Time{}, nil, err
	}
	var outcomes []store.FinishOutcome
	if len(notYet) > 0 {
		var err error
		if outcomes, err = s.FinishPokes(ctx, wk, notYet, now); err != nil {
			return nil, time.Time{}, nil, err
		}
	}
	ps, next, err := s.ClaimPokes(ctx, wk, max, now, leaseUntil)
	if err != nil {
		return nil, time.Time{}, nil, err
	}
	return ps, next, outcomes, nil
}
