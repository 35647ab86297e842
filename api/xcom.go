package api

import (
	"encoding/json"
	"net/http"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// returnValueKey is the XCom key of a task's output, as Airflow names the
// value a task returns. A Trellis task has at most this one entry.
const returnValueKey = "return_value"

// xcomEntryJSON is Airflow's XComCollectionItem; Value is set only when
// one entry is read (XCom).
type xcomEntryJSON struct {
	Key           string   `json:"key"`
	Timestamp     *apiTime `json:"timestamp"`
	ExecutionDate *apiTime `json:"execution_date"`
	MapIndex      int      `json:"map_index"`
	TaskID        string   `json:"task_id"`
	DAGID         string   `json:"dag_id"`
	Value         any      `json:"value,omitempty"`
}

type xcomCollectionJSON struct {
	Entries []xcomEntryJSON `json:"xcom_entries"`
	Total   int             `json:"total_entries"`
}

// toXComEntry is the entry of ti's output; date is its run's logical date.
func toXComEntry(ti store.TaskInstance, date time.Time) xcomEntryJSON {
	stamp := ti.EndedAt
	if stamp == nil {
		stamp = ti.StartedAt
	}
	return xcomEntryJSON{Key: returnValueKey, Timestamp: timePtr(stamp), ExecutionDate: timeVal(date),
		MapIndex: -1, TaskID: ti.TaskID, DAGID: ti.DAGID}
}

// getXComEntries lists the outputs of task instances:
// GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries.
// As in Airflow, each of the three may be ~ (any), and the path is a
// filter: a task instance that does not exist, or has no output, lists
// nothing.
func (a *api) getXComEntries(w http.ResponseWriter, r *http.Request) error {
	q := query{r.URL.Query()}
	p, err := pageParams(q, a.defLimit, a.maxLimit)
	if err != nil {
		return err
	}
	mapIndex, err := q.integer("map_index")
	if err != nil {
		return err
	}
	key, _, err := q.one("xcom_key")
	if err != nil {
		return err
	}
	dagID, runID, taskID, ok, err := xcomFilter(r)
	if err != nil {
		return err
	}
	out := xcomCollectionJSON{Entries: []xcomEntryJSON{}}
	if !ok || (mapIndex != nil && *mapIndex != -1) || (key != "" && key != returnValueKey) {
		return writeJSON(w, http.StatusOK, out)
	}
	var tq store.TaskQuery
	if dagID != "~" {
		tq.DAGIDs = []string{dagID}
	}
	if runID != "~" {
		tq.DAGRunIDs = []string{runID}
	}
	if taskID != "~" {
		tq.TaskIDs = []string{taskID}
	}
	tq.Limit = scanBatch
	for tq.Offset = 0; ; tq.Offset += scanBatch {
		tis, _, err := a.store.ListRunTaskInstances(r.Context(), tq)
		if err != nil {
			return err
		}
		for _, ti := range tis {
			if ti.Output == nil {
				continue
			}
			if out.Total >= p.offset && len(out.Entries) < p.limit {
				out.Entries = append(out.Entries, toXComEntry(ti.TaskInstance, ti.LogicalDate))
			}
			out.Total++
		}
		if len(tis) < scanBatch {
			return writeJSON(w, http.StatusOK, out)
		}
	}
}

// xcomFilter reads the path of an xcomEntries list. ok is false when an
// id cannot exist (nothing matches).
func xcomFilter(r *http.Request) (dagID, runID, taskID string, ok bool, err error) {
	if dagID, runID, err = runParams(r); err != nil {
		return "", "", "", false, err
	}
	taskID = chi.URLParam(r, "task_id")
	if r.URL.RawPath != "" {
		if taskID, err = url.PathUnescape(taskID); err != nil {
			return "", "", "", false, badRequest("path parameter task_id: bad percent-encoding")
		}
	}
	return dagID, runID, taskID, taskID == "~" || dag.ValidID(taskID), nil
}

// getXComEntry returns the output of one task instance:
// GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}.
// The value is the output's JSON text (stringify=true, the default) or
// the JSON value itself (stringify=false).
func (a *api) getXComEntry(w http.ResponseWriter, r *http.Request) error {
	q := query{r.URL.Query()}
	stringify, err := q.boolean("stringify")
	if err != nil {
		return err
	}
	if _, err := q.boolean("deserialize"); err != nil {
		return err
	}
	mapIndex, err := q.integer("map_index")
	if err != nil {
		return err
	}
	dagID, runID, taskID, err := tiParams(r)
	if err != nil {
		return err
	}
	key, err := pathParam(r, "xcom_key")
	if err != nil {
		return err
	}
	ti, run, err := a.getStoredTI(r.Context(), dagID, runID, taskID)
	if err != nil {
		return err
	}
	if key != returnValueKey || ti.Output == nil || (mapIndex != nil && *mapIndex != -1) {
		return notFound("XCom entry not found", "XCom entry with key: `%s` not found (task %q of run %q has %s)",
			key, taskID, runID, xcomHas(ti))
	}
	e := toXComEntry(ti, run.LogicalDate)
	if stringify == nil || *stringify {
		e.Value = string(ti.Output)
	} else {
		e.Value = json.RawMessage(ti.Output)
	}
	return writeJSON(w, http.StatusOK, e)
}

// xcomHas says which XCom entries ti has, for a not-found message.
func xcomHas(ti store.TaskInstance) string {
	if ti.Output == nil {
		return "no output"
	}
	return "only the key " + returnValueKey
}
