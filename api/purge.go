package api

import (
	"net/http"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/store"
)

// purgeFields are the members of a purge request.
var purgeFields = []string{"before", "dag_id", "dry_run"}

// purgeAnswer is the body answering a purge.
type purgeAnswer struct {
	DryRun        bool    `json:"dry_run"`
	Before        string  `json:"before"`
	DAGID         *string `json:"dag_id"`
	DAGRuns       int     `json:"dag_runs"`
	TaskInstances int     `json:"task_instances"`
	Logs          int     `json:"logs"`
}

// postPurge deletes finished runs that ended before a time, with their
// task instances and logs, in small transactions (a Trellis extension;
// Airflow has no such endpoint): POST /api/v1/dagRuns/purge with
// {"before": date-time or age such as "30d", "dag_id": optional,
// "dry_run": default true}.
func (a *api) postPurge(w http.ResponseWriter, r *http.Request) error {
	b, err := decodeBody(r, purgeFields, nil)
	if err != nil {
		return err
	}
	text, ok, err := b.stringField("before", false)
	if err != nil {
		return err
	}
	if !ok {
		return badRequest("field \"before\" is required: a date-time (2026-01-02T00:00:00Z) or an age (30d, 12h)")
	}
	before, err := purgeBefore(text, a.clock.Now())
	if err != nil {
		return err
	}
	dry, err := b.boolField("dry_run", true)
	if err != nil {
		return err
	}
	q := store.PurgeQuery{Before: before, DryRun: dry}
	out := purgeAnswer{DryRun: dry, Before: formatTime(before)}
	dagID, ok, err := b.stringField("dag_id", true)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if ok {
		if _, err := a.getStoredDAG(ctx, dagID); err != nil {
			return err
		}
		q.DAGID, out.DAGID = dagID, &dagID
	}
	p, err := store.PurgeAll(ctx, a.store, q, func(p store.Purged) error {
		a.metrics.Purged("runs", p.Runs)
		a.metrics.Purged("task_instances", p.TaskInstances)
		a.metrics.Purged("logs", p.Logs)
		return nil
	})
	if !dry {
		a.changed()
	}
	if err != nil {
		return err
	}
	out.DAGRuns, out.TaskInstances, out.Logs = p.Runs, p.TaskInstances, p.Logs
	return writeJSON(w, http.StatusOK, out)
}

// purgeBefore reads the "before" of a purge: a date-time, or an age
// counted back from now.
func purgeBefore(s string, now time.Time) (time.Time, error) {
	if t, err := parseTime(s); err == nil {
		return t, nil
	}
	age, err := clock.ParseDuration(s)
	if err != nil {
		return time.Time{}, badRequest("field \"before\" %q is neither a date-time (2026-01-02T00:00:00Z) nor an age (30d, 12h)", s)
	}
	return now.Add(-age).UTC().Truncate(time.Microsecond), nil
}
