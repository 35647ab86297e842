package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// dagFields are the members of Airflow's DAG object; a PATCH body may
// carry any of them (as in GET-modify-PATCH), but only is_paused changes.
var dagFields = []string{
	"dag_id", "dag_display_name", "is_paused", "is_active", "last_parsed_time", "last_pickled",
	"last_expired", "scheduler_lock", "pickle_id", "default_view", "fileloc", "file_token", "owners",
	"description", "schedule_interval", "timetable_description", "tags", "max_active_tasks",
	"max_active_runs", "has_task_concurrency_limits", "has_import_errors", "next_dagrun",
	"next_dagrun_data_interval_start", "next_dagrun_data_interval_end", "next_dagrun_create_after",
	"max_consecutive_failed_dag_runs",
}

// dagScanBatch is how many DAG records a filtered DAG list reads at a time.
const dagScanBatch = 500

// dagFilter is the part of GET /dags the store does not filter.
type dagFilter struct {
	tags    []string
	paused  *bool
	pattern string
}

func (f dagFilter) empty() bool { return len(f.tags) == 0 && f.paused == nil && f.pattern == "" }

func (f dagFilter) match(d store.DAG) bool {
	if f.paused != nil && d.Paused != *f.paused {
		return false
	}
	if f.pattern != "" && !lowerContains(d.DAGID, f.pattern) {
		return false
	}
	if len(f.tags) > 0 && !slices.ContainsFunc(d.Tags, func(t string) bool { return slices.Contains(f.tags, t) }) {
		return false
	}
	return true
}

// getDAGs lists DAGs: GET /api/v1/dags.
func (a *api) getDAGs(w http.ResponseWriter, r *http.Request) error {
	q := query{r.URL.Query()}
	p, err := pageParams(q, a.defLimit, a.maxLimit)
	if err != nil {
		return err
	}
	desc := false
	if ob, ok, err := q.one("order_by"); err != nil {
		return err
	} else if ok {
		switch ob {
		case "dag_id":
		case "-dag_id":
			desc = true
		default:
			return badRequest("ordering with %q is not supported; use dag_id or -dag_id", ob)
		}
	}
	onlyActive := true
	if b, err := q.boolean("only_active"); err != nil {
		return err
	} else if b != nil {
		onlyActive = *b
	}
	f := dagFilter{tags: q.list("tags")}
	if f.paused, err = q.boolean("paused"); err != nil {
		return err
	}
	if f.pattern, _, err = q.one("dag_id_pattern"); err != nil {
		return err
	}
	fields, err := returnFields(q, dagFields)
	if err != nil {
		return err
	}
	dags, total, err := a.listDAGs(r.Context(), onlyActive, f, desc, p)
	if err != nil {
		return err
	}
	items := make([]any, len(dags))
	for i, d := range dags {
		if items[i], err = project(toDAG(d), fields); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"dags": items, "total_entries": total})
}

// listDAGs returns one page of DAGs ordered by id and the number of DAGs
// matching. Filters the store cannot apply are applied while reading the
// DAGs in batches, never holding more than a batch and the page.
func (a *api) listDAGs(ctx context.Context, onlyActive bool, f dagFilter, desc bool, p page) ([]store.DAG, int, error) {
	if f.empty() {
		if !desc {
			return a.store.ListDAGs(ctx, onlyActive, p.limit, p.offset)
		}
		_, total, err := a.store.ListDAGs(ctx, onlyActive, 1, 0)
		if err != nil {
			return nil, 0, err
		}
		lo, hi := reverseWindow(total, p)
		if hi <= lo {
			return []store.DAG{}, total, nil
		}
		dags, total, err := a.store.ListDAGs(ctx, onlyActive, hi-lo, lo)
		slices.Reverse(dags)
		return dags, total, err
	}
	total := 0
	if err := a.scanDAGs(ctx, onlyActive, func(d store.DAG) {
		if f.match(d) {
			total++
		}
	}); err != nil {
		return nil, 0, err
	}
	lo, hi := p.offset, p.offset+p.limit
	if desc {
		lo, hi = reverseWindow(total, p)
	}
	out := []store.DAG{}
	i := 0
	if err := a.scanDAGs(ctx, onlyActive, func(d store.DAG) {
		if !f.match(d) {
			return
		}
		if i >= lo && i < hi {
			out = append(out, d)
		}
		i++
	}); err != nil {
		return nil, 0, err
	}
	if desc {
		slices.Reverse(out)
	}
	return out, total, nil
}

// reverseWindow returns the ascending index range [lo, hi) holding the
// page p of a list of total items ordered backwards.
func reverseWindow(total int, p page) (lo, hi int) {
	hi = max(total-p.offset, 0)
	lo = max(hi-p.limit, 0)
	return lo, hi
}

// scanDAGs calls fn for every DAG in id order, reading them in batches.
func (a *api) scanDAGs(ctx context.Context, onlyActive bool, fn func(store.DAG)) error {
	for offset := 0; ; offset += dagScanBatch {
		dags, _, err := a.store.ListDAGs(ctx, onlyActive, dagScanBatch, offset)
		if err != nil {
			return err
		}
		for _, d := range dags {
			fn(d)
		}
		if len(dags) < dagScanBatch {
			return nil
		}
	}
}

// dagNotFound is the 404 for an unknown DAG id.
func dagNotFound(dagID string) error {
	return notFound("DAG not found", "DAG with dag_id: '%s' not found", dagID)
}

func (a *api) getStoredDAG(ctx context.Context, dagID string) (store.DAG, error) {
	d, err := a.store.GetDAG(ctx, dagID)
	if err != nil {
		if isNotFound(err) {
			return d, dagNotFound(dagID)
		}
		return d, err
	}
	return d, nil
}

// getDAG returns one DAG: GET /api/v1/dags/{dag_id}.
func (a *api) getDAG(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	fields, err := returnFields(query{r.URL.Query()}, dagFields)
	if err != nil {
		return err
	}
	d, err := a.getStoredDAG(r.Context(), dagID)
	if err != nil {
		return err
	}
	out, err := project(toDAG(d), fields)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// patchDAG pauses or unpauses a DAG: PATCH /api/v1/dags/{dag_id}. The
// body is a DAG object; only is_paused can change, and update_mask, when
// given, must name only it.
func (a *api) patchDAG(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	mask := query{r.URL.Query()}.list("update_mask")
	if len(mask) > 0 && (len(mask) != 1 || mask[0] != "is_paused") {
		return badRequest("only the is_paused field can be updated; update_mask was %s", quoteList(mask))
	}
	b, err := decodeBody(r, dagFields, nil)
	if err != nil {
		return err
	}
	m, ok := b["is_paused"]
	if !ok {
		return badRequest("field \"is_paused\" is required")
	}
	var paused bool
	if isNull(m) || json.Unmarshal(m, &paused) != nil {
		return badRequest("field %q must be a boolean, got %s", "is_paused", jsonKind(m))
	}
	ctx := r.Context()
	if _, err := a.getStoredDAG(ctx, dagID); err != nil {
		return err
	}
	if err := a.pauser.SetPaused(ctx, dagID, paused); err != nil {
		if isNotFound(err) {
			return dagNotFound(dagID)
		}
		return err
	}
	d, err := a.getStoredDAG(ctx, dagID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, toDAG(d))
}

// binaryDAG returns the DAG of the binary with id dagID, or a 404.
func (a *api) binaryDAG(dagID string) (*dag.DAG, error) {
	d := a.registry.Lookup(dagID)
	if d == nil {
		return nil, dagNotFound(dagID)
	}
	return d, nil
}

// taskOrder are the order_by values of GET /dags/{dag_id}/tasks.
var taskOrder = map[string]func(a, b *dag.Task) int{
	"task_id":         func(a, b *dag.Task) int { return strings.Compare(a.ID(), b.ID()) },
	"priority_weight": func(a, b *dag.Task) int { return a.Priority() - b.Priority() },
	"retries":         func(a, b *dag.Task) int { return a.Retries() - b.Retries() },
	"trigger_rule": func(a, b *dag.Task) int {
		return strings.Compare(string(a.TriggerRule()), string(b.TriggerRule()))
	},
}

// getTasks lists the tasks of a DAG: GET /api/v1/dags/{dag_id}/tasks.
func (a *api) getTasks(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	orderBy, _, err := query{r.URL.Query()}.one("order_by")
	if err != nil {
		return err
	}
	if orderBy == "" {
		orderBy = "task_id"
	}
	field, desc := strings.CutPrefix(orderBy, "-")
	cmp, ok := taskOrder[field]
	if !ok {
		return badRequest("ordering with %q is not supported; use one of task_id, priority_weight, retries, trigger_rule (with - for descending)", orderBy)
	}
	d, err := a.binaryDAG(dagID)
	if err != nil {
		return err
	}
	tasks := d.Tasks()
	slices.SortStableFunc(tasks, func(x, y *dag.Task) int {
		if desc {
			return cmp(y, x)
		}
		return cmp(x, y)
	})
	out := make([]taskJSON, len(tasks))
	for i, t := range tasks {
		out[i] = toTask(t)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"tasks": out, "total_entries": len(out)})
}

// getTask returns one task of a DAG: GET /api/v1/dags/{dag_id}/tasks/{task_id}.
func (a *api) getTask(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	taskID, err := pathParam(r, "task_id")
	if err != nil {
		return err
	}
	d, err := a.binaryDAG(dagID)
	if err != nil {
		return err
	}
	t := d.Task(taskID)
	if t == nil {
		return notFound("Task not found", "Task with task_id: '%s' not found in DAG '%s'", taskID, dagID)
	}
	return writeJSON(w, http.StatusOK, toTask(t))
}

// getGraph renders a DAG's graph: GET /api/v1/dags/{dag_id}/graph, a
// Trellis extension; format=json (default) or dot (Graphviz).
func (a *api) getGraph(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	format, _, err := query{r.URL.Query()}.one("format")
	if err != nil {
		return err
	}
	var (
		write       func(*bytes.Buffer, *dag.DAG) error
		contentType string
	)
	switch format {
	case "", "json":
		write = func(b *bytes.Buffer, d *dag.DAG) error { return dag.WriteJSON(b, d) }
		contentType = "application/json"
	case "dot":
		write = func(b *bytes.Buffer, d *dag.DAG) error { return dag.WriteDOT(b, d) }
		contentType = "text/vnd.graphviz; charset=utf-8"
	default:
		return badRequest("query parameter \"format\" must be json or dot, got %q", format)
	}
	d, err := a.binaryDAG(dagID)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := write(&buf, d); err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	_, _ = w.Write(buf.Bytes())
	return nil
}
