package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// TriggerOptions describe a run triggered by hand. Zero fields take the
// defaults.
type TriggerOptions struct {
	// RunID defaults to "manual__<logical date, RFC 3339>".
	RunID string
	// LogicalDate defaults to now.
	LogicalDate *time.Time
	// Conf is a JSON object overlaid on the DAG's Params (nil = {}).
	Conf json.RawMessage
	// Note is a free-form note stored with the run.
	Note string
	// DataInterval, when set, is the run's data interval; nil infers it
	// from the schedule and the logical date (ManualInterval).
	DataInterval *Interval
}

// runIDPattern is what a run id given by a caller must match (Airflow's).
var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.~:+-]{1,250}$`)

// TriggerRun creates a manual run of dagID and admits it at once unless the
// DAG is paused or at its MaxActiveRuns (it then waits in state queued). It
// returns the run as stored after admission. An unknown DAG is an error
// wrapping store.ErrNotFound; a taken run id or logical date one wrapping
// store.ErrConflict; a conf that is not a JSON object is an error saying
// so. The scheduler need not be started.
func (s *Scheduler) TriggerRun(ctx context.Context, dagID string, opts TriggerOptions) (store.Run, error) {
	fail := func(err error) (store.Run, error) {
		return store.Run{}, fmt.Errorf("trigger DAG %q: %w", dagID, err)
	}
	info, err := s.lookup(dagID)
	if err != nil {
		return fail(err)
	}
	conf, err := NormalizeConf(opts.Conf)
	if err != nil {
		return fail(err)
	}
	now := s.clk.Now().Truncate(time.Microsecond) // the databases keep microseconds
	logical := now
	if opts.LogicalDate != nil {
		if opts.LogicalDate.IsZero() {
			return fail(errors.New("logical date is the zero time"))
		}
		logical = opts.LogicalDate.Truncate(time.Microsecond)
	}
	runID := opts.RunID
	if runID == "" {
		runID = RunID(store.RunManual, logical)
	} else if !runIDPattern.MatchString(runID) {
		return fail(fmt.Errorf("run id %q must match %s", runID, runIDPattern))
	}
	if err := s.ensureSynced(ctx, info); err != nil {
		return fail(err)
	}
	iv := ManualInterval(info.timetable(), info.policy, logical)
	if opts.DataInterval != nil {
		if opts.DataInterval.End.Before(opts.DataInterval.Start) {
			return fail(fmt.Errorf("data interval end %s is before its start %s",
				opts.DataInterval.End.UTC().Format(time.RFC3339Nano), opts.DataInterval.Start.UTC().Format(time.RFC3339Nano)))
		}
		iv = Interval{Start: opts.DataInterval.Start.Truncate(time.Microsecond), End: opts.DataInterval.End.Truncate(time.Microsecond)}
	}
	run, created, err := s.st.CreateRun(ctx, store.NewRun{
		DAGID:         info.id,
		RunID:         runID,
		RunType:       store.RunManual,
		LogicalDate:   logical,
		IntervalStart: iv.Start,
		IntervalEnd:   iv.End,
		Conf:          conf,
		Fingerprint:   info.fingerprint,
		Note:          opts.Note,
		QueuedAt:      now,
	})
	if err != nil {
		return fail(err)
	}
	if !created {
		if run.RunID == runID {
			return fail(fmt.Errorf("%w: run %q exists already", store.ErrConflict, runID))
		}
		return fail(fmt.Errorf("%w: logical date %s is taken by run %q", store.ErrConflict,
			logical.UTC().Format(time.RFC3339Nano), run.RunID))
	}
	if _, err := s.admit(ctx, info.id); err != nil {
		return fail(err)
	}
	run, err = s.st.GetRun(ctx, info.id, run.RunID)
	if err != nil {
		return fail(err)
	}
	s.log.Info("scheduler: triggered run", "dag_id", info.id, "run_id", run.RunID, "state", run.State)
	return run, nil
}

// Backfill creates a backfill run (run id "backfill__<logical date>") for
// every interval of dagID's schedule whose start lies in [from, to], oldest
// first, skipping intervals that have a run already, and admits them as
// MaxActiveRuns allows (the others, and all of them while the DAG is
// paused, wait in state queued; a running scheduler starts them later). It
// returns the
// runs it created, as stored after admission. The range may hold at most
// Config.MaxBackfillRuns intervals. The scheduler need not be started.
func (s *Scheduler) Backfill(ctx context.Context, dagID string, from, to time.Time) ([]store.Run, error) {
	fail := func(err error) ([]store.Run, error) {
		return nil, fmt.Errorf("backfill DAG %q: %w", dagID, err)
	}
	info, err := s.lookup(dagID)
	if err != nil {
		return fail(err)
	}
	if info.tt == nil {
		return fail(errors.New("the DAG has no schedule, so it has no intervals to backfill; trigger runs by hand instead"))
	}
	if from.IsZero() || to.IsZero() {
		return fail(errors.New("both ends of the range are needed"))
	}
	if to.Before(from) {
		return fail(fmt.Errorf("the range ends (%s) before it starts (%s)",
			to.UTC().Format(time.RFC3339), from.UTC().Format(time.RFC3339)))
	}
	ivs, more := Intervals(info.tt, info.policy, from, to, s.cfg.MaxBackfillRuns)
	if more {
		return fail(fmt.Errorf("the range holds more than %d intervals of schedule %q; backfill it in parts",
			s.cfg.MaxBackfillRuns, info.tt.Expr()))
	}
	if len(ivs) == 0 {
		return nil, nil
	}
	if err := s.ensureSynced(ctx, info); err != nil {
		return fail(err)
	}
	now := s.clk.Now()
	var runs []store.Run
	for _, iv := range ivs {
		run, created, err := s.st.CreateRun(ctx, store.NewRun{
			DAGID:         info.id,
			RunID:         RunID(store.RunBackfill, iv.Start),
			RunType:       store.RunBackfill,
			LogicalDate:   iv.Start,
			IntervalStart: iv.Start,
			IntervalEnd:   iv.End,
			Fingerprint:   info.fingerprint,
			QueuedAt:      now,
		})
		if err != nil {
			return fail(err)
		}
		if created {
			runs = append(runs, run)
			if s.cfg.Metrics != nil {
				s.cfg.Metrics.RunCreated(info.id, string(store.RunBackfill))
			}
		}
	}
	started, err := s.admit(ctx, info.id)
	if err != nil {
		return fail(err)
	}
	byID := make(map[int64]store.Run, len(started))
	for _, r := range started {
		byID[r.ID] = r
	}
	for i, r := range runs {
		if st, ok := byID[r.ID]; ok {
			runs[i] = st
		}
	}
	s.log.Info("scheduler: backfill", "dag_id", info.id, "intervals", len(ivs), "created", len(runs), "started", len(started))
	return runs, nil
}

// SetPaused pauses or unpauses dagID. A paused DAG creates no runs and
// starts no queued ones; its running runs finish. Unpausing applies the
// catchup rules to the intervals missed meanwhile and admits queued runs.
// An unknown DAG is an error wrapping store.ErrNotFound. The scheduler need
// not be started.
func (s *Scheduler) SetPaused(ctx context.Context, dagID string, paused bool) error {
	verb := "pause"
	if !paused {
		verb = "unpause"
	}
	err := s.st.SetPaused(ctx, dagID, paused)
	if errors.Is(err, store.ErrNotFound) {
		// Known to the binary but not recorded yet: record it and retry.
		info, lerr := s.lookup(dagID)
		if lerr != nil {
			return fmt.Errorf("%s DAG %q: %w", verb, dagID, lerr)
		}
		if err = s.ensureSynced(ctx, info); err == nil {
			err = s.st.SetPaused(ctx, dagID, paused)
		}
	}
	if err != nil {
		return fmt.Errorf("%s DAG %q: %w", verb, dagID, err)
	}
	if !paused {
		if _, err := s.admit(ctx, dagID); err != nil {
			return fmt.Errorf("%s DAG %q: %w", verb, dagID, err)
		}
	}
	if s.running() {
		select {
		case s.pokeRefresh <- struct{}{}:
		default:
		}
	}
	s.log.Info("scheduler: "+verb+"d DAG", "dag_id", dagID)
	return nil
}

// admit starts queued runs of dagID unless it is paused. The runs it
// starts may include scheduled ones (a fire's runs admitted here first):
// their schedule delay is reported as the loop's would be.
func (s *Scheduler) admit(ctx context.Context, dagID string) ([]store.Run, error) {
	row, err := s.st.GetDAG(ctx, dagID)
	if err != nil {
		return nil, err
	}
	if row.Paused {
		return nil, nil
	}
	started, err := s.st.StartRuns(ctx, dagID, s.clk.Now())
	s.runsStarted(started)
	return started, err
}

// lookup returns the DAG dagID of the registry, checked. After Start it
// returns what Start derived from the same DAG, as the scheduled runs use:
// validating and fingerprinting a DAG of 100,000 tasks on every trigger
// allocated ~18 MiB (docs/benchmarks.md, "Session 8: scale").
func (s *Scheduler) lookup(dagID string) (*dagInfo, error) {
	d := s.reg.Lookup(dagID)
	if d == nil {
		return nil, fmt.Errorf("%w: no DAG %q in this binary", store.ErrNotFound, dagID)
	}
	s.mu.Lock()
	info := s.infos[dagID]
	s.mu.Unlock()
	if info != nil && info.d == d {
		return info, nil
	}
	if problems := d.Validate(); len(problems) > 0 {
		return nil, &InvalidDAGsError{Problems: problems}
	}
	return newDAGInfo(d)
}

// ensureSynced makes sure the store knows the DAG's current structure,
// recording the registry's DAGs (as Start does) when it does not: a run
// can only be created for a structure the store has recorded.
func (s *Scheduler) ensureSynced(ctx context.Context, info *dagInfo) error {
	row, err := s.st.GetDAG(ctx, info.id)
	if err == nil && row.Active && row.Fingerprint == info.fingerprint {
		return nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	dags := s.reg.DAGs()
	if problems := dag.Validate(dags); len(problems) > 0 {
		return fmt.Errorf("the store has not recorded this version of the DAG yet, and the other DAGs of the binary "+
			"cannot be recorded with it: %w", &InvalidDAGsError{Problems: problems})
	}
	specs := make([]store.DAGSpec, len(dags))
	for i, d := range dags {
		specs[i] = store.SpecFromDAG(d)
	}
	if err := s.st.SyncDAGs(ctx, specs); err != nil {
		return fmt.Errorf("sync DAGs: %w", err)
	}
	return nil
}

// timetable returns the DAG's timetable as a Timetable, nil (an untyped
// nil interface) for a DAG without schedule.
func (i *dagInfo) timetable() Timetable {
	if i.tt == nil {
		return nil
	}
	return i.tt
}

// NormalizeConf checks that conf is empty, JSON null or a JSON object that
// dag.ParseConf accepts (every number fits a float64, or the error names
// it) and returns it compacted (nil for empty or null), its numbers kept as
// written. The error says what is wrong without repeating the value.
func NormalizeConf(conf json.RawMessage) (json.RawMessage, error) {
	params, err := dag.ParseConf(conf)
	if err != nil || params == nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := json.Compact(&b, bytes.TrimSpace(conf)); err != nil {
		return nil, fmt.Errorf("conf is not valid JSON: %v", err)
	}
	return b.Bytes(), nil
}

// RunParams returns a run's params: the DAG's defaults overlaid, key by
// key, by the run's conf (a JSON object, or empty) as dag.ParseConf reads
// it.
func RunParams(defaults map[string]any, conf json.RawMessage) (map[string]any, error) {
	out := maps.Clone(defaults)
	if out == nil {
		out = map[string]any{}
	}
	over, err := dag.ParseConf(conf)
	if err != nil {
		return nil, err
	}
	maps.Copy(out, over)
	return out, nil
}
