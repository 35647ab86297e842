package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// FireRuns creates the runs of many DAGs, advances their schedules (a
// compare-and-set on each DAG's last interval end) and admits queued runs
// as StartRuns does, all in one write transaction. A DAG whose runs cannot
// be created (a run id taken by another logical date, an unknown
// structure) is rolled back to a savepoint and reported in its result;
// the other DAGs of the call go on.
func (s *Store) FireRuns(ctx context.Context, fires []store.Fire, now time.Time) ([]store.FireResult, error) {
	confs := make([][]string, len(fires))
	seen := make(map[string]bool, len(fires))
	for i, f := range fires {
		if f.DAGID == "" {
			return nil, fmt.Errorf("fire runs: fire %d: empty DAG id", i)
		}
		if seen[f.DAGID] {
			return nil, fmt.Errorf("fire runs: fire %d: DAG %q appears twice", i, f.DAGID)
		}
		seen[f.DAGID] = true
		confs[i] = make([]string, len(f.Runs))
		for j, nr := range f.Runs {
			switch {
			case nr.DAGID != f.DAGID:
				return nil, fmt.Errorf("fire runs: fire %d (DAG %q) run %d: DAG id %q differs", i, f.DAGID, j, nr.DAGID)
			case nr.RunID == "":
				return nil, fmt.Errorf("fire runs: fire %d (DAG %q) run %d: empty run id", i, f.DAGID, j)
			case !validRunType(nr.RunType):
				return nil, fmt.Errorf("fire runs: fire %d (DAG %q) run %q: unknown run type %q (want scheduled, manual or backfill)",
					i, f.DAGID, nr.RunID, nr.RunType)
			}
			conf, err := checkConf(nr.Conf)
			if err != nil {
				return nil, fmt.Errorf("fire runs: fire %d (DAG %q) run %q: %w", i, f.DAGID, nr.RunID, err)
			}
			confs[i][j] = conf
		}
	}
	if len(fires) == 0 {
		return []store.FireResult{}, nil
	}
	var out []store.FireResult
	err := s.write(ctx, fmt.Sprintf("fire runs of %d DAGs", len(fires)), func(w *txn) error {
		out = make([]store.FireResult, len(fires))
		for i, f := range fires {
			res, err := fireOne(w, f, confs[i], now)
			if err != nil {
				return err
			}
			out[i] = res
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// fireOne does one Fire of FireRuns inside w.
func fireOne(w *txn, f store.Fire, confs []string, now time.Time) (store.FireResult, error) {
	res := store.FireResult{DAGID: f.DAGID}
	var last sql.NullInt64
	var paused, active bool
	err := w.queryRow(`SELECT last_interval_end, is_paused, is_active FROM dags WHERE dag_id = ?`, f.DAGID).
		Scan(&last, &paused, &active)
	if errors.Is(err, sql.ErrNoRows) {
		res.Err = fmt.Errorf("fire DAG %q: %w: no such DAG", f.DAGID, store.ErrNotFound)
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("read DAG %q: %w", f.DAGID, err)
	}
	res.LastIntervalEnd = ptrUS(last)
	if paused || !active {
		res.Paused = true
		return res, nil
	}
	if last.Valid != (f.Prev != nil) || (f.Prev != nil && last.Int64 != us(*f.Prev)) {
		res.Err = fmt.Errorf("fire DAG %q: %w: last interval end is %s, not %s", f.DAGID, store.ErrStale,
			fmtTime(res.LastIntervalEnd), fmtTime(f.Prev))
		return res, nil
	}
	if _, err := w.exec(`SAVEPOINT fire_dag`); err != nil {
		return res, err
	}
	for j, nr := range f.Runs {
		queuedAt := nr.QueuedAt
		if queuedAt.IsZero() {
			queuedAt = now
		}
		run, created, err := createRunTx(w, nr, confs[j], queuedAt)
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			if _, rerr := w.exec(`ROLLBACK TO fire_dag`); rerr != nil {
				return res, rerr
			}
			if _, rerr := w.exec(`RELEASE fire_dag`); rerr != nil {
				return res, rerr
			}
			return store.FireResult{DAGID: f.DAGID, LastIntervalEnd: res.LastIntervalEnd,
				Err: fmt.Errorf("fire DAG %q: run %q: %w", f.DAGID, nr.RunID, err)}, nil
		}
		if err != nil {
			return res, fmt.Errorf("create run %q of dag %q: %w", nr.RunID, f.DAGID, err)
		}
		if created {
			res.Created = append(res.Created, run)
		}
	}
	if _, err := w.exec(`RELEASE fire_dag`); err != nil {
		return res, err
	}
	if _, err := w.exec(`UPDATE dags SET last_interval_end = ?, next_due_at = ?, updated_at = ? WHERE dag_id = ?`,
		us(f.Last), nullUS(f.NextDue), us(w.s.clk.Now()), f.DAGID); err != nil {
		return res, fmt.Errorf("advance schedule of dag %q: %w", f.DAGID, err)
	}
	l := fromUS(us(f.Last))
	res.LastIntervalEnd = &l
	started, err := startRunsTx(w, f.DAGID, now)
	if err != nil {
		return res, fmt.Errorf("start runs of dag %q: %w", f.DAGID, err)
	}
	res.Started = started
	w.wake(store.TopicRunsChanged)
	return res, nil
}
