package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/store"
)

// checkFires validates the fires of one FireRuns call.
func checkFires(fires []store.Fire) error {
	seen := make(map[string]bool, len(fires))
	for i, f := range fires {
		if f.DAGID == "" {
			return fmt.Errorf("fire %d: empty DAG id", i)
		}
		if seen[f.DAGID] {
			return fmt.Errorf("fire %d: DAG %q appears twice", i, f.DAGID)
		}
		seen[f.DAGID] = true
		for j, nr := range f.Runs {
			switch {
			case nr.DAGID != f.DAGID:
				return fmt.Errorf("fire %d (DAG %q) run %d: DAG id %q differs", i, f.DAGID, j, nr.DAGID)
			case nr.RunID == "":
				return fmt.Errorf("fire %d (DAG %q) run %d: empty run id", i, f.DAGID, j)
			case nr.RunType != store.RunScheduled && nr.RunType != store.RunManual && nr.RunType != store.RunBackfill:
				return fmt.Errorf("fire %d (DAG %q) run %q: unknown run type %q (want scheduled, manual or backfill)", i, f.DAGID, nr.RunID, nr.RunType)
			case nr.Fingerprint == "":
				return fmt.Errorf("fire %d (DAG %q) run %q: empty fingerprint", i, f.DAGID, nr.RunID)
			}
			if err := validConf(nr.Conf); err != nil {
				return fmt.Errorf("fire %d (DAG %q) run %q: %w", i, f.DAGID, nr.RunID, err)
			}
		}
	}
	return nil
}

// sameTime compares two optional instants at the database's precision.
func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

type versionKey struct{ dagID, fingerprint string }

type versionRec struct {
	id     int64
	nTasks int
}

// FireRuns creates the runs of many DAGs, advances their schedules and
// admits queued runs, in one transaction with one notification. The DAG
// rows are locked in id order first (the lock StartRuns takes), so
// concurrent callers neither deadlock nor exceed MaxActiveRuns; the
// schedule compare-and-set is checked under that lock. Runs and task
// instances are inserted with one statement each for the whole batch.
func (s *Store) FireRuns(ctx context.Context, fires []store.Fire, now time.Time) ([]store.FireResult, error) {
	if err := checkFires(fires); err != nil {
		return nil, fmt.Errorf("fire runs: %w", err)
	}
	if len(fires) == 0 {
		return []store.FireResult{}, nil
	}
	op := fmt.Sprintf("fire runs of %d DAGs", len(fires))
	var out []store.FireResult
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		var err error
		out, err = s.fireTx(ctx, tx, fires, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Store) fireTx(ctx context.Context, tx pgx.Tx, fires []store.Fire, now time.Time) ([]store.FireResult, error) {
	out := make([]store.FireResult, len(fires))
	ids := make([]string, len(fires))
	byID := make(map[string]int, len(fires))
	for i, f := range fires {
		out[i] = store.FireResult{DAGID: f.DAGID}
		ids[i] = f.DAGID
		byID[f.DAGID] = i
	}
	slices.Sort(ids)

	// Lock the DAG rows in a consistent order and check each schedule.
	rows, err := tx.Query(ctx, `SELECT dag_id, last_interval_end, is_paused, is_active, max_active_runs FROM dags
		WHERE dag_id = ANY($1) ORDER BY dag_id FOR NO KEY UPDATE`, ids)
	if err != nil {
		return nil, err
	}
	found := make(map[string]bool, len(fires))
	maxActive := make(map[string]int32, len(fires))
	for rows.Next() {
		var id string
		var last *time.Time
		var paused, active bool
		var limit int32
		if err := rows.Scan(&id, &last, &paused, &active, &limit); err != nil {
			rows.Close()
			return nil, err
		}
		found[id] = true
		maxActive[id] = limit
		i := byID[id]
		r := &out[i]
		r.LastIntervalEnd = utcp(last)
		switch {
		case paused || !active:
			r.Paused = true
		case !sameTime(last, fires[i].Prev):
			r.Err = fmt.Errorf("fire DAG %q: %w: another scheduler moved its schedule first", id, store.ErrStale)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i, f := range fires {
		if !found[f.DAGID] {
			out[i].Err = fmt.Errorf("fire DAG %q: %w: no such DAG", f.DAGID, store.ErrNotFound)
		}
	}
	ok := func(i int) bool { return out[i].Err == nil && !out[i].Paused }

	// Structures of the runs to create.
	var vDAGs, vFPs []string
	seenV := map[versionKey]bool{}
	for i, f := range fires {
		if !ok(i) {
			continue
		}
		for _, nr := range f.Runs {
			k := versionKey{f.DAGID, nr.Fingerprint}
			if !seenV[k] {
				seenV[k] = true
				vDAGs, vFPs = append(vDAGs, k.dagID), append(vFPs, k.fingerprint)
			}
		}
	}
	versions := map[versionKey]versionRec{}
	if len(vDAGs) > 0 {
		rows, err := tx.Query(ctx, `SELECT v.dag_id, v.fingerprint, v.id, v.n_tasks FROM dag_versions v
			JOIN unnest($1::text[], $2::text[]) AS x(dag_id, fingerprint)
				ON v.dag_id = x.dag_id AND v.fingerprint = x.fingerprint`, vDAGs, vFPs)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var k versionKey
			var v versionRec
			if err := rows.Scan(&k.dagID, &k.fingerprint, &v.id, &v.nTasks); err != nil {
				rows.Close()
				return nil, err
			}
			versions[k] = v
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	// Existing runs with the same run ids: the same run again, or a
	// conflict when the logical date differs.
	var eDAGs, eRuns []string
	for i, f := range fires {
		if !ok(i) {
			continue
		}
		for _, nr := range f.Runs {
			if _, has := versions[versionKey{f.DAGID, nr.Fingerprint}]; !has {
				out[i].Err = fmt.Errorf("fire DAG %q: %w: no structure with fingerprint %s (SyncDAGs records it)",
					f.DAGID, store.ErrNotFound, nr.Fingerprint)
				break
			}
			eDAGs, eRuns = append(eDAGs, f.DAGID), append(eRuns, nr.RunID)
		}
	}
	if len(eDAGs) > 0 {
		rows, err := tx.Query(ctx, `SELECT r.dag_id, r.run_id, r.logical_date FROM dag_runs r
			JOIN unnest($1::text[], $2::text[]) AS x(dag_id, run_id) ON r.dag_id = x.dag_id AND r.run_id = x.run_id`,
			eDAGs, eRuns)
		if err != nil {
			return nil, err
		}
		existing := map[[2]string]time.Time{}
		for rows.Next() {
			var d, r string
			var ld time.Time
			if err := rows.Scan(&d, &r, &ld); err != nil {
				rows.Close()
				return nil, err
			}
			existing[[2]string{d, r}] = ld
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		for i, f := range fires {
			if !ok(i) {
				continue
			}
			for _, nr := range f.Runs {
				if ld, has := existing[[2]string{f.DAGID, nr.RunID}]; has && !ld.Equal(nr.LogicalDate.Truncate(time.Microsecond)) {
					out[i].Err = fmt.Errorf("fire DAG %q: %w: run id %q is taken by the run for logical date %s",
						f.DAGID, store.ErrConflict, nr.RunID, utc(ld).Format(time.RFC3339Nano))
					break
				}
			}
		}
	}

	// Insert the runs, then their task instances, one statement each.
	var (
		cDAG, cRun, cType, cNote []string
		cLogical, cStart, cEnd   []time.Time
		cQueued                  []time.Time
		cConf                    []string
		cVersion                 []int64
		cFP                      []string
		cTasks                   []int32
	)
	for i, f := range fires {
		if !ok(i) {
			continue
		}
		for _, nr := range f.Runs {
			v := versions[versionKey{f.DAGID, nr.Fingerprint}]
			conf := "{}"
			if nr.Conf != nil {
				conf = string(nr.Conf)
			}
			queued := nr.QueuedAt
			if queued.IsZero() {
				queued = now
			}
			cDAG, cRun, cType, cNote = append(cDAG, f.DAGID), append(cRun, nr.RunID), append(cType, string(nr.RunType)), append(cNote, nr.Note)
			cLogical, cStart, cEnd = append(cLogical, nr.LogicalDate), append(cStart, nr.IntervalStart), append(cEnd, nr.IntervalEnd)
			cQueued, cConf, cVersion = append(cQueued, queued), append(cConf, conf), append(cVersion, v.id)
			cFP, cTasks = append(cFP, nr.Fingerprint), append(cTasks, int32(v.nTasks))
		}
	}
	if len(cDAG) > 0 {
		rows, err := tx.Query(ctx, `
			INSERT INTO dag_runs AS r (dag_id, run_id, run_type, logical_date, interval_start, interval_end,
				state, conf, version_id, fingerprint, note, queued_at, unfinished)
			SELECT x.dag_id, x.run_id, x.run_type, x.logical_date, x.interval_start, x.interval_end,
				'queued', x.conf::jsonb, x.version_id, x.fingerprint, x.note, x.queued_at, x.n_tasks
			FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[],
				$7::text[], $8::bigint[], $9::text[], $10::text[], $11::timestamptz[], $12::int[])
				WITH ORDINALITY AS x(dag_id, run_id, run_type, logical_date, interval_start, interval_end,
					conf, version_id, fingerprint, note, queued_at, n_tasks, ord)
			ORDER BY x.ord
			ON CONFLICT DO NOTHING
			RETURNING `+runCols+`, r.version_id, r.unfinished`,
			cDAG, cRun, cType, cLogical, cStart, cEnd, cConf, cVersion, cFP, cNote, cQueued, cTasks)
		if err != nil {
			return nil, err
		}
		var runIDs, versionIDs []int64
		var runDAGs []string
		want := 0
		for rows.Next() {
			var r store.Run
			var conf []byte
			var versionID int64
			var n int
			if err := rows.Scan(&r.ID, &r.DAGID, &r.RunID, &r.RunType, &r.LogicalDate, &r.IntervalStart, &r.IntervalEnd,
				&r.State, &conf, &r.Fingerprint, &r.Note, &r.QueuedAt, &r.StartedAt, &r.EndedAt, &versionID, &n); err != nil {
				rows.Close()
				return nil, err
			}
			r.Conf = conf
			r.LogicalDate, r.IntervalStart, r.IntervalEnd, r.QueuedAt = utc(r.LogicalDate), utc(r.IntervalStart), utc(r.IntervalEnd), utc(r.QueuedAt)
			i := byID[r.DAGID]
			out[i].Created = append(out[i].Created, r)
			runIDs, versionIDs, runDAGs = append(runIDs, r.ID), append(versionIDs, versionID), append(runDAGs, r.DAGID)
			want += n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(runIDs) > 0 {
			tag, err := tx.Exec(ctx, `
				INSERT INTO task_instances (run_id, dag_id, task_id, max_tries, retries, priority, trigger_rule,
					retry_delay_ns, max_backoff_ns, timeout_ns, n_upstream)
				SELECT x.run_id, x.dag_id, t.task_id, t.retries + 1, t.retries, t.priority, t.trigger_rule,
					t.retry_delay_ns, t.max_backoff_ns, t.timeout_ns, t.n_upstream
				FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS x(run_id, dag_id, version_id)
				JOIN dag_version_tasks t ON t.version_id = x.version_id AND t.kind <> 'callable'
				ORDER BY x.run_id, t.ord`, runIDs, runDAGs, versionIDs)
			if err != nil {
				return nil, err
			}
			if tag.RowsAffected() != int64(want) {
				return nil, fmt.Errorf("stored structures hold %d tasks for %d new runs, %d expected",
					tag.RowsAffected(), len(runIDs), want)
			}
			if err := s.fault(FaultCreateRunInserted); err != nil {
				return nil, err
			}
		}
	}

	// Advance the schedules and admit queued runs of the fired DAGs.
	var aIDs []string
	var aLast []time.Time
	var aNext []*time.Time
	for i, f := range fires {
		if !ok(i) {
			continue
		}
		aIDs, aLast, aNext = append(aIDs, f.DAGID), append(aLast, f.Last), append(aNext, f.NextDue)
		last := f.Last.Truncate(time.Microsecond).UTC()
		out[i].LastIntervalEnd = &last
	}
	if len(aIDs) == 0 {
		return out, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE dags d SET last_interval_end = x.last, next_due_at = x.next, updated_at = $4
		FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS x(dag_id, last, next)
		WHERE d.dag_id = x.dag_id`, aIDs, aLast, aNext, s.clock.Now()); err != nil {
		return nil, err
	}
	// Admission as StartRuns, for all fired DAGs at once, with the limits
	// read under the locks above. Running runs are counted only for DAGs
	// with a limit.
	limits := make([]int32, len(aIDs))
	var limited []string
	for k, id := range aIDs {
		limits[k] = maxActive[id]
		if limits[k] > 0 {
			limited = append(limited, id)
		}
	}
	rows, err = tx.Query(ctx, `
		WITH lim AS (
			SELECT * FROM unnest($1::text[], $2::int[]) AS l(dag_id, max_active)
		), running AS (
			SELECT dag_id, count(*) AS n FROM dag_runs WHERE dag_id = ANY($3) AND state = 'running' GROUP BY dag_id
		), cand AS (
			SELECT q.id, q.dag_id,
				row_number() OVER (PARTITION BY q.dag_id ORDER BY q.logical_date, q.id) AS rn
			FROM dag_runs q WHERE q.dag_id = ANY($1) AND q.state = 'queued'
		), pick AS (
			SELECT cand.id FROM cand
			JOIN lim ON lim.dag_id = cand.dag_id
			LEFT JOIN running ON running.dag_id = cand.dag_id
			WHERE lim.max_active <= 0 OR cand.rn <= lim.max_active - coalesce(running.n, 0)
		)
		UPDATE dag_runs r SET state = 'running', started_at = $4, ended_at = NULL
		FROM pick WHERE r.id = pick.id
		RETURNING `+runCols, aIDs, limits, limited, now)
	if err != nil {
		return nil, err
	}
	started, err := collectRuns(rows)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(started, func(a, b store.Run) int {
		if c := a.LogicalDate.Compare(b.LogicalDate); c != 0 {
			return c
		}
		return int(a.ID - b.ID)
	})
	startedIDs := make([]int64, len(started))
	for j, r := range started {
		startedIDs[j] = r.ID
		i := byID[r.DAGID]
		out[i].Started = append(out[i].Started, r)
	}
	if len(startedIDs) > 0 {
		slices.Sort(startedIDs)
		if err := s.activate(ctx, tx, startedIDs, now); err != nil {
			return nil, err
		}
	}
	if err := notify(ctx, tx, store.TopicRunsChanged); err != nil {
		return nil, err
	}
	return out, nil
}
