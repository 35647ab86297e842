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
		out, err = newFireTx(s, tx, fires, now).run(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// fireTx is one FireRuns transaction. Its phases run in the order of run;
// a fire that fails a check is left out of the later ones.
type fireTx struct {
	s     *Store
	tx    pgx.Tx
	fires []store.Fire
	now   time.Time

	out       []store.FireResult
	byID      map[string]int // index in fires of each DAG id
	maxActive map[string]int32
	versions  map[versionKey]versionRec

	// The runs inserted, for their task instances.
	runIDs, versionIDs []int64
	runDAGs            []string
	wantTasks          int
}

func newFireTx(s *Store, tx pgx.Tx, fires []store.Fire, now time.Time) *fireTx {
	return &fireTx{s: s, tx: tx, fires: fires, now: now,
		out: make([]store.FireResult, len(fires)), byID: make(map[string]int, len(fires))}
}

func (f *fireTx) run(ctx context.Context) ([]store.FireResult, error) {
	for _, phase := range []func(context.Context) error{f.lockDAGs, f.readVersions, f.checkRunIDs, f.insertRuns, f.insertInstances} {
		if err := phase(ctx); err != nil {
			return nil, err
		}
	}
	fired, err := f.advanceSchedules(ctx)
	if err != nil {
		return nil, err
	}
	if len(fired) == 0 {
		return f.out, nil
	}
	if err := f.admit(ctx, fired); err != nil {
		return nil, err
	}
	if err := notify(ctx, f.tx, store.TopicRunsChanged); err != nil {
		return nil, err
	}
	return f.out, nil
}

// live reports whether fire i passed its checks so far (DAG found, not
// paused, schedule not moved, structures known, run ids free).
func (f *fireTx) live(i int) bool { return f.out[i].Err == nil && !f.out[i].Paused }

// lockDAGs locks the DAG rows in id order (the lock StartRuns takes) and
// checks each schedule's compare-and-set under that lock.
func (f *fireTx) lockDAGs(ctx context.Context) error {
	ids := make([]string, len(f.fires))
	for i, fi := range f.fires {
		f.out[i] = store.FireResult{DAGID: fi.DAGID}
		ids[i] = fi.DAGID
		f.byID[fi.DAGID] = i
	}
	slices.Sort(ids)
	rows, err := f.tx.Query(ctx, `SELECT dag_id, last_interval_end, is_paused, is_active, max_active_runs FROM dags
		WHERE dag_id = ANY($1) ORDER BY dag_id FOR NO KEY UPDATE`, ids)
	if err != nil {
		return err
	}
	found := make(map[string]bool, len(f.fires))
	f.maxActive = make(map[string]int32, len(f.fires))
	for rows.Next() {
		var id string
		var last *time.Time
		var paused, active bool
		var limit int32
		if err := rows.Scan(&id, &last, &paused, &active, &limit); err != nil {
			rows.Close()
			return err
		}
		found[id] = true
		f.maxActive[id] = limit
		i := f.byID[id]
		r := &f.out[i]
		r.LastIntervalEnd = utcp(last)
		switch {
		case paused || !active:
			r.Paused = true
		case !sameTime(last, f.fires[i].Prev):
			r.Err = fmt.Errorf("fire DAG %q: %w: another scheduler moved its schedule first", id, store.ErrStale)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for i, fi := range f.fires {
		if !found[fi.DAGID] {
			f.out[i].Err = fmt.Errorf("fire DAG %q: %w: no such DAG", fi.DAGID, store.ErrNotFound)
		}
	}
	return nil
}

// readVersions reads the stored structures of the runs to create.
func (f *fireTx) readVersions(ctx context.Context) error {
	var vDAGs, vFPs []string
	seenV := map[versionKey]bool{}
	for i, fi := range f.fires {
		if !f.live(i) {
			continue
		}
		for _, nr := range fi.Runs {
			k := versionKey{fi.DAGID, nr.Fingerprint}
			if !seenV[k] {
				seenV[k] = true
				vDAGs, vFPs = append(vDAGs, k.dagID), append(vFPs, k.fingerprint)
			}
		}
	}
	f.versions = map[versionKey]versionRec{}
	if len(vDAGs) == 0 {
		return nil
	}
	rows, err := f.tx.Query(ctx, `SELECT v.dag_id, v.fingerprint, v.id, v.n_tasks FROM dag_versions v
		JOIN unnest($1::text[], $2::text[]) AS x(dag_id, fingerprint)
			ON v.dag_id = x.dag_id AND v.fingerprint = x.fingerprint`, vDAGs, vFPs)
	if err != nil {
		return err
	}
	for rows.Next() {
		var k versionKey
		var v versionRec
		if err := rows.Scan(&k.dagID, &k.fingerprint, &v.id, &v.nTasks); err != nil {
			rows.Close()
			return err
		}
		f.versions[k] = v
	}
	rows.Close()
	return rows.Err()
}

// checkRunIDs fails a fire whose structure is unknown, or whose run id is
// taken by a run for another logical date (the same run again is fine).
func (f *fireTx) checkRunIDs(ctx context.Context) error {
	var eDAGs, eRuns []string
	for i, fi := range f.fires {
		if !f.live(i) {
			continue
		}
		for _, nr := range fi.Runs {
			if _, has := f.versions[versionKey{fi.DAGID, nr.Fingerprint}]; !has {
				f.out[i].Err = fmt.Errorf("fire DAG %q: %w: no structure with fingerprint %s (SyncDAGs records it)",
					fi.DAGID, store.ErrNotFound, nr.Fingerprint)
				break
			}
			eDAGs, eRuns = append(eDAGs, fi.DAGID), append(eRuns, nr.RunID)
		}
	}
	if len(eDAGs) == 0 {
		return nil
	}
	rows, err := f.tx.Query(ctx, `SELECT r.dag_id, r.run_id, r.logical_date FROM dag_runs r
		JOIN unnest($1::text[], $2::text[]) AS x(dag_id, run_id) ON r.dag_id = x.dag_id AND r.run_id = x.run_id`,
		eDAGs, eRuns)
	if err != nil {
		return err
	}
	existing := map[[2]string]time.Time{}
	for rows.Next() {
		var d, r string
		var ld time.Time
		if err := rows.Scan(&d, &r, &ld); err != nil {
			rows.Close()
			return err
		}
		existing[[2]string{d, r}] = ld
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for i, fi := range f.fires {
		if !f.live(i) {
			continue
		}
		for _, nr := range fi.Runs {
			if ld, has := existing[[2]string{fi.DAGID, nr.RunID}]; has && !ld.Equal(nr.LogicalDate.Truncate(time.Microsecond)) {
				f.out[i].Err = fmt.Errorf("fire DAG %q: %w: run id %q is taken by the run for logical date %s",
					fi.DAGID, store.ErrConflict, nr.RunID, utc(ld).Format(time.RFC3339Nano))
				break
			}
		}
	}
	return nil
}

// insertRuns inserts the runs of the live fires in one statement (those
// that exist already are skipped) and records them in out.
func (f *fireTx) insertRuns(ctx context.Context) error {
	var (
		cDAG, cRun, cType, cNote []string
		cLogical, cStart, cEnd   []time.Time
		cQueued                  []time.Time
		cConf                    []string
		cVersion                 []int64
		cFP                      []string
		cTasks                   []int32
	)
	for i, fi := range f.fires {
		if !f.live(i) {
			continue
		}
		for _, nr := range fi.Runs {
			v := f.versions[versionKey{fi.DAGID, nr.Fingerprint}]
			conf := "{}"
			if nr.Conf != nil {
				conf = string(nr.Conf)
			}
			queued := nr.QueuedAt
			if queued.IsZero() {
				queued = f.now
			}
			cDAG, cRun, cType, cNote = append(cDAG, fi.DAGID), append(cRun, nr.RunID), append(cType, string(nr.RunType)), append(cNote, nr.Note)
			cLogical, cStart, cEnd = append(cLogical, nr.LogicalDate), append(cStart, nr.IntervalStart), append(cEnd, nr.IntervalEnd)
			cQueued, cConf, cVersion = append(cQueued, queued), append(cConf, conf), append(cVersion, v.id)
			cFP, cTasks = append(cFP, nr.Fingerprint), append(cTasks, int32(v.nTasks))
		}
	}
	if len(cDAG) == 0 {
		return nil
	}
	rows, err := f.tx.Query(ctx, `
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
		return err
	}
	for rows.Next() {
		var r store.Run
		var conf []byte
		var versionID int64
		var n int
		if err := rows.Scan(&r.ID, &r.DAGID, &r.RunID, &r.RunType, &r.LogicalDate, &r.IntervalStart, &r.IntervalEnd,
			&r.State, &conf, &r.Fingerprint, &r.Note, &r.QueuedAt, &r.StartedAt, &r.EndedAt, &versionID, &n); err != nil {
			rows.Close()
			return err
		}
		r.Conf = conf
		r.LogicalDate, r.IntervalStart, r.IntervalEnd, r.QueuedAt = utc(r.LogicalDate), utc(r.IntervalStart), utc(r.IntervalEnd), utc(r.QueuedAt)
		i := f.byID[r.DAGID]
		f.out[i].Created = append(f.out[i].Created, r)
		f.runIDs, f.versionIDs, f.runDAGs = append(f.runIDs, r.ID), append(f.versionIDs, versionID), append(f.runDAGs, r.DAGID)
		f.wantTasks += n
	}
	rows.Close()
	return rows.Err()
}

// insertInstances inserts the task instances of the runs insertRuns
// created, in one statement, and checks their number against the
// structures'.
func (f *fireTx) insertInstances(ctx context.Context) error {
	if len(f.runIDs) == 0 {
		return nil
	}
	tag, err := f.tx.Exec(ctx, `
		INSERT INTO task_instances (run_id, dag_id, task_id, max_tries, retries, priority, trigger_rule,
			retry_delay_ns, max_backoff_ns, timeout_ns, n_upstream`+limitCols+`)
		SELECT x.run_id, x.dag_id, t.task_id, t.retries + 1, t.retries, t.priority, t.trigger_rule,
			t.retry_delay_ns, t.max_backoff_ns, t.timeout_ns, t.n_upstream`+limitVals("x.dag_id")+`
		FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS x(run_id, dag_id, version_id)
		JOIN dag_version_tasks t ON t.version_id = x.version_id AND t.kind <> 'callable'
		ORDER BY x.run_id, t.ord`, f.runIDs, f.runDAGs, f.versionIDs)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != int64(f.wantTasks) {
		return fmt.Errorf("stored structures hold %d tasks for %d new runs, %d expected",
			tag.RowsAffected(), len(f.runIDs), f.wantTasks)
	}
	if err := limitInstances(ctx, f.tx, f.runIDs, false, f.s.log); err != nil {
		return err
	}
	return f.s.fault(FaultCreateRunInserted)
}

// advanceSchedules moves the schedules of the live fires and returns
// their DAG ids (none: nothing more to do).
func (f *fireTx) advanceSchedules(ctx context.Context) ([]string, error) {
	var aIDs []string
	var aLast []time.Time
	var aNext []*time.Time
	for i, fi := range f.fires {
		if !f.live(i) {
			continue
		}
		aIDs, aLast, aNext = append(aIDs, fi.DAGID), append(aLast, fi.Last), append(aNext, fi.NextDue)
		last := fi.Last.Truncate(time.Microsecond).UTC()
		f.out[i].LastIntervalEnd = &last
	}
	if len(aIDs) == 0 {
		return nil, nil
	}
	if _, err := f.tx.Exec(ctx, `UPDATE dags d SET last_interval_end = x.last, next_due_at = x.next, updated_at = $4
		FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS x(dag_id, last, next)
		WHERE d.dag_id = x.dag_id`, aIDs, aLast, aNext, f.s.clock.Now()); err != nil {
		return nil, err
	}
	return aIDs, nil
}

// admit starts queued runs of the fired DAGs as StartRuns does, for all at
// once, with the limits read under lockDAGs' locks (running runs counted
// only for DAGs with a limit), and queues the started runs' roots.
func (f *fireTx) admit(ctx context.Context, fired []string) error {
	limits := make([]int32, len(fired))
	var limited []string
	for k, id := range fired {
		limits[k] = f.maxActive[id]
		if limits[k] > 0 {
			limited = append(limited, id)
		}
	}
	rows, err := f.tx.Query(ctx, `
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
		RETURNING `+runCols, fired, limits, limited, f.now)
	if err != nil {
		return err
	}
	started, err := collectRuns(rows)
	if err != nil {
		return err
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
		i := f.byID[r.DAGID]
		f.out[i].Started = append(f.out[i].Started, r)
	}
	if len(startedIDs) == 0 {
		return nil
	}
	slices.Sort(startedIDs)
	return f.s.activate(ctx, f.tx, startedIDs, f.now)
}
