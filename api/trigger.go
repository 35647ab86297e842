package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/store"
)

// TriggerRequest is what POST /api/v1/dags/{dag_id}/dagRuns asks for.
type TriggerRequest struct {
	// RunID is the run id to use; "" lets the triggerer name the run
	// ("manual__<logical date, RFC 3339>").
	RunID string
	// LogicalDate is the run's logical date; nil means now.
	LogicalDate *time.Time
	// Conf is the run's configuration, a JSON object; nil means {}.
	Conf json.RawMessage
	// Note is the user's note on the run.
	Note string
	// IntervalStart and IntervalEnd, both set or both nil, are the run's
	// data interval; nil lets the triggerer infer it.
	IntervalStart, IntervalEnd *time.Time
}

// Triggerer creates manual runs. In a server it is the scheduler's
// TriggerRun, adapted with TriggerFunc:
//
//	api.TriggerFunc(func(ctx context.Context, dagID string, r api.TriggerRequest) (store.Run, error) {
//		return sched.TriggerRun(ctx, dagID, scheduler.TriggerOptions{
//			RunID: r.RunID, LogicalDate: r.LogicalDate, Conf: r.Conf, Note: r.Note,
//			DataInterval: ...from r.IntervalStart and r.IntervalEnd})
//	})
type Triggerer interface {
	// TriggerRun creates a manual run of dagID and returns it. A run id or
	// logical date taken already is an error wrapping store.ErrConflict;
	// an unknown DAG one wrapping store.ErrNotFound.
	TriggerRun(ctx context.Context, dagID string, req TriggerRequest) (store.Run, error)
}

// TriggerFunc adapts a function to Triggerer.
type TriggerFunc func(ctx context.Context, dagID string, req TriggerRequest) (store.Run, error)

// TriggerRun calls f.
func (f TriggerFunc) TriggerRun(ctx context.Context, dagID string, req TriggerRequest) (store.Run, error) {
	return f(ctx, dagID, req)
}

// StoreTriggerer creates manual runs with the store alone, for an API
// without a scheduler to ask: CreateRun with the DAG's recorded structure,
// then StartRuns so the run starts at once when the DAG has room (the
// scheduler does the same on its next wake-up otherwise). A paused DAG's
// run stays queued, as in Airflow. Its data interval is its logical date
// alone unless the request gives one (the scheduler's TriggerRun infers it
// from the schedule).
type StoreTriggerer struct {
	Store store.Store
	// Clock gives "now"; nil means the wall clock.
	Clock clock.Clock
	// Logger receives failures to start a created run; nil discards them.
	Logger *slog.Logger
}

// TriggerRun implements Triggerer.
func (t *StoreTriggerer) TriggerRun(ctx context.Context, dagID string, req TriggerRequest) (store.Run, error) {
	clk := t.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	fail := func(err error) (store.Run, error) {
		return store.Run{}, fmt.Errorf("trigger DAG %q: %w", dagID, err)
	}
	d, err := t.Store.GetDAG(ctx, dagID)
	if err != nil {
		return fail(err)
	}
	now := clk.Now().UTC().Truncate(time.Microsecond)
	logical := now
	if req.LogicalDate != nil {
		logical = req.LogicalDate.UTC().Truncate(time.Microsecond)
	}
	runID := req.RunID
	if runID == "" {
		runID = string(store.RunManual) + "__" + logical.Format(time.RFC3339Nano)
	}
	start, end := logical, logical
	if req.IntervalStart != nil && req.IntervalEnd != nil {
		start, end = req.IntervalStart.UTC().Truncate(time.Microsecond), req.IntervalEnd.UTC().Truncate(time.Microsecond)
	}
	run, created, err := t.Store.CreateRun(ctx, store.NewRun{
		DAGID:         dagID,
		RunID:         runID,
		RunType:       store.RunManual,
		LogicalDate:   logical,
		IntervalStart: start,
		IntervalEnd:   end,
		Conf:          req.Conf,
		Fingerprint:   d.Fingerprint,
		Note:          req.Note,
		QueuedAt:      now,
	})
	if err != nil {
		return fail(err)
	}
	if !created {
		return fail(fmt.Errorf("%w: run %q (logical date %s) exists already", store.ErrConflict,
			run.RunID, logical.Format(time.RFC3339Nano)))
	}
	if d.Paused {
		return run, nil
	}
	started, err := t.Store.StartRuns(ctx, dagID, now)
	if err != nil {
		// The run exists and is queued; the scheduler starts it later.
		if t.Logger != nil {
			t.Logger.Warn("start triggered run", slog.String("dag_id", dagID),
				slog.String("run_id", run.RunID), slog.Any("error", err))
		}
		return run, nil
	}
	for _, s := range started {
		if s.ID == run.ID {
			return s, nil
		}
	}
	return run, nil
}
