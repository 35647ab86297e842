package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// taskStates validates task-instance state filter values; "none" and
// "null" select instances without state.
func taskStates(values []string, name string) ([]state.TaskState, error) {
	var out []state.TaskState
	for _, v := range values {
		if v == "null" {
			v = string(state.None)
		}
		s := state.TaskState(v)
		if !s.Valid() {
			return nil, badRequest("%s: unknown task instance state %q", name, v)
		}
		out = append(out, s)
	}
	return out, nil
}

// taskFilter is a task instance list request: what the store filters (q)
// and what it does not.
type taskFilter struct {
	q        store.TaskQuery
	updated  timeRange
	duration struct{ gte, lte *float64 }
	// none is true when a queue or executor filter excludes the only
	// values Trellis has (default, null), or the pool filter is empty.
	none bool
	// pools, when not nil, are the pools wanted.
	pools []string
}

// setStatic applies the pool, queue and executor filters: pools are
// filtered while reading (residual); every task instance is in queue
// default and has the null (default) executor, which no executor filter
// matches.
func (f *taskFilter) setStatic(pools, queues, executors []string) {
	f.pools = pools
	if (pools != nil && len(pools) == 0) ||
		(queues != nil && !slices.Contains(queues, defaultQueue)) ||
		executors != nil {
		f.none = true
	}
}

// residual returns the filter of what the store does not filter, or nil.
func (f taskFilter) residual() func(store.TaskInstance) bool {
	if !f.updated.set() && f.duration.gte == nil && f.duration.lte == nil && f.pools == nil {
		return nil
	}
	return func(ti store.TaskInstance) bool {
		if f.pools != nil && !slices.Contains(f.pools, poolOf(ti)) {
			return false
		}
		if f.updated.set() {
			var queued time.Time
			if ti.QueuedAt != nil {
				queued = *ti.QueuedAt
			}
			if !f.updated.contains(updatedAt(queued, ti.StartedAt, ti.EndedAt)) {
				return false
			}
		}
		if f.duration.gte != nil || f.duration.lte != nil {
			if ti.StartedAt == nil || ti.EndedAt == nil {
				return false
			}
			d := ti.Duration().Seconds()
			if (f.duration.gte != nil && d < *f.duration.gte) || (f.duration.lte != nil && d > *f.duration.lte) {
				return false
			}
		}
		return true
	}
}

// tiContext renders task instances, caching the DAGs of the binary for
// one request.
type tiContext struct {
	a    *api
	ctx  context.Context
	dags map[string]*dag.DAG
	// callers names the callers of call instances (by the caller's
	// task instance id) for the caller field of lists (loadCallers).
	callers map[int64]callRefJSON
}

// loadCallers reads, in one store read, the callers of the call instances
// among tis that c does not know yet.
func (c *tiContext) loadCallers(tis []store.TaskInstance) error {
	var ids []int64
	for _, ti := range tis {
		if ti.CallerID == 0 {
			continue
		}
		if _, ok := c.callers[ti.CallerID]; !ok && !slices.Contains(ids, ti.CallerID) {
			ids = append(ids, ti.CallerID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	callers, err := c.a.store.TaskInstancesByID(c.ctx, ids)
	if err != nil {
		return err
	}
	if c.callers == nil {
		c.callers = map[int64]callRefJSON{}
	}
	for _, x := range callers {
		c.callers[x.ID] = callRefJSON{TaskID: x.TaskID, MapIndex: x.MapIndex}
	}
	return nil
}

// appendTI appends the JSON of one listed task instance: that of
// appendTaskInstance, with the caller of a call instance (loadCallers).
func (c *tiContext) appendTI(b []byte, ti store.TaskInstance, logicalDate time.Time) []byte {
	b = appendTaskInstance(b, ti, logicalDate, c.kind(ti.DAGID, ti.TaskID))
	ref, ok := c.callers[ti.CallerID]
	if ti.CallerID == 0 || !ok {
		return b
	}
	b = append(b[:len(b)-1], `,"caller":{"task_id":`...)
	b = appendString(b, ref.TaskID)
	b = append(b, `,"map_index":`...)
	b = strconv.AppendInt(b, int64(ref.MapIndex), 10)
	return append(b, "}}"...)
}

func (a *api) newTIContext(ctx context.Context) *tiContext {
	return &tiContext{a: a, ctx: ctx, dags: map[string]*dag.DAG{}}
}

func (c *tiContext) kind(dagID, taskID string) dag.Kind {
	d, ok := c.dags[dagID]
	if !ok {
		d = c.a.registry.Lookup(dagID)
		c.dags[dagID] = d
	}
	if d == nil {
		return ""
	}
	if t := d.Task(taskID); t != nil {
		return t.Kind()
	}
	return ""
}

// listTaskInstances returns one page of the task instances matching f,
// each with its run's logical date, and the number of matches, applying
// what the store cannot filter while reading the matches in batches.
func (a *api) listTaskInstances(c *tiContext, f taskFilter, p page) ([]store.RunTaskInstance, int, error) {
	if f.none {
		return []store.RunTaskInstance{}, 0, nil
	}
	residual := f.residual()
	q := f.q
	if residual == nil {
		q.Limit, q.Offset = p.limit, p.offset
		tis, total, err := a.store.ListRunTaskInstances(c.ctx, q)
		if tis == nil {
			tis = []store.RunTaskInstance{}
		}
		return tis, total, err
	}
	out := []store.RunTaskInstance{}
	total := 0
	q.Limit = scanBatch
	for q.Offset = 0; ; q.Offset += scanBatch {
		tis, _, err := a.store.ListRunTaskInstances(c.ctx, q)
		if err != nil {
			return nil, 0, err
		}
		for _, ti := range tis {
			if !residual(ti.TaskInstance) {
				continue
			}
			if total >= p.offset && len(out) < p.limit {
				out = append(out, ti)
			}
			total++
		}
		if len(tis) < scanBatch {
			return out, total, nil
		}
	}
}

func (c *tiContext) write(w http.ResponseWriter, tis []store.RunTaskInstance, total int) error {
	if err := c.loadRunCallers(tis); err != nil {
		return err
	}
	buf := getBuffer()
	defer putBuffer(buf)
	*buf = c.render(*buf, tis, total)
	return writeBody(w, *buf)
}

// loadRunCallers is loadCallers for instances listed with their runs.
func (c *tiContext) loadRunCallers(tis []store.RunTaskInstance) error {
	plain := make([]store.TaskInstance, 0, len(tis))
	for _, ti := range tis {
		if ti.CallerID != 0 {
			plain = append(plain, ti.TaskInstance)
		}
	}
	return c.loadCallers(plain)
}

// render appends to b[:0] the body listing tis of total matches; the
// callers of call instances among them are loaded (loadRunCallers).
func (c *tiContext) render(b []byte, tis []store.RunTaskInstance, total int) []byte {
	if need := len(tis)*tiJSONEstimate + 64; cap(b) < need {
		b = make([]byte, 0, need)
	}
	b = append(b[:0], `{"task_instances":[`...)
	for i, ti := range tis {
		if i > 0 {
			b = append(b, ',')
		}
		b = c.appendTI(b, ti.TaskInstance, ti.LogicalDate)
	}
	return appendTotal(b, total)
}

// tiJSONEstimate is about the size of one task instance's JSON (a little
// more: most fit without growing the buffer).
const tiJSONEstimate = 700

// bodyBuffers recycles the buffers task instance lists are written into.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func getBuffer() *[]byte { return bodyBuffers.Get().(*[]byte) }

// putBuffer returns a buffer to the pool unless it grew very large.
func putBuffer(b *[]byte) {
	if cap(*b) <= 4<<20 {
		bodyBuffers.Put(b)
	}
}

// appendTotal ends a task instance collection opened with
// {"task_instances":[ .
func appendTotal(b []byte, total int) []byte {
	b = append(b, `],"total_entries":`...)
	b = strconv.AppendInt(b, int64(total), 10)
	return append(b, "}\n"...)
}

// writeBody answers 200 with a JSON body.
func writeBody(w http.ResponseWriter, b []byte) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	// With the length known, net/http writes the body in one go instead
	// of chunk by chunk.
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return nil
}

// getTaskInstances lists the task instances of a run; ~ as dag_id or
// dag_run_id selects all:
// GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances.
func (a *api) getTaskInstances(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, err := runParams(r)
	if err != nil {
		return err
	}
	q := query{r.URL.Query()}
	p, err := pageParams(q, a.defLimit, a.maxLimit)
	if err != nil {
		return err
	}
	var f taskFilter
	var start, end, logical timeRange
	if logical, err = queryRange(q, "execution_date"); err != nil {
		return err
	}
	f.q.LogicalDateGTE, f.q.LogicalDateLTE = logical.gte, logical.lte
	if start, err = queryRange(q, "start_date"); err != nil {
		return err
	}
	if end, err = queryRange(q, "end_date"); err != nil {
		return err
	}
	if f.updated, err = queryRange(q, "updated_at"); err != nil {
		return err
	}
	if f.duration.gte, err = q.number("duration_gte"); err != nil {
		return err
	}
	if f.duration.lte, err = q.number("duration_lte"); err != nil {
		return err
	}
	f.q.StartDateGTE, f.q.StartDateLTE = start.gte, start.lte
	f.q.EndDateGTE, f.q.EndDateLTE = end.gte, end.lte
	if f.q.States, err = taskStates(q.list("state"), "query parameter \"state\""); err != nil {
		return err
	}
	f.setStatic(nilIfAbsent(q, "pool"), nilIfAbsent(q, "queue"), nilIfAbsent(q, "executor"))

	if dagID != "~" && runID != "~" {
		// Clients polling one run ask the same question at once: they
		// share one read (see flights).
		body, err := a.runTIs.do(r.Context(), r.URL.Path+"?"+r.URL.RawQuery, func(ctx context.Context) ([]byte, error) {
			return a.runTaskInstancesBody(ctx, dagID, runID, f, p)
		})
		if err != nil {
			return err
		}
		return writeBody(w, body)
	}
	c := a.newTIContext(r.Context())
	if dagID != "~" {
		if _, err := a.getStoredDAG(r.Context(), dagID); err != nil {
			return err
		}
		f.q.DAGIDs = []string{dagID}
	}
	if runID != "~" {
		f.q.DAGRunIDs = []string{runID}
	}
	tis, total, err := a.listTaskInstances(c, f, p)
	if err != nil {
		return err
	}
	return c.write(w, tis, total)
}

// runTaskInstancesBody renders the body answering one page of the task
// instances of one run that match f: from the finished-run cache, or
// read from the store.
func (a *api) runTaskInstancesBody(ctx context.Context, dagID, runID string, f taskFilter, p page) ([]byte, error) {
	c := a.newTIContext(ctx)
	run, err := a.getStoredRun(ctx, dagID, runID)
	if err != nil {
		return nil, err
	}
	if !(timeRange{f.q.LogicalDateGTE, f.q.LogicalDateLTE}).contains(&run.LogicalDate) {
		f.none = true
	}
	f.q.LogicalDateGTE, f.q.LogicalDateLTE = nil, nil // decided for the one run
	if !f.none {
		e, err := a.cachedTaskInstances(c, run)
		if err != nil {
			return nil, err
		}
		if e != nil {
			return c.renderCached(nil, e, f, p)
		}
	}
	f.q.DAGIDs, f.q.DAGRunIDs = []string{dagID}, []string{runID}
	tis, total, err := a.listTaskInstances(c, f, p)
	if err != nil {
		return nil, err
	}
	if err := c.loadRunCallers(tis); err != nil {
		return nil, err
	}
	return c.render(nil, tis, total), nil
}

// nilIfAbsent returns the values of an array parameter, nil when it is
// not given at all.
func nilIfAbsent(q query, name string) []string {
	if !q.has(name) {
		return nil
	}
	v := q.list(name)
	if v == nil {
		v = []string{}
	}
	return v
}

// listTaskInstancesForm are the members of Airflow's ListTaskInstanceForm,
// plus page_limit and page_offset (a Trellis extension, so that the list
// is paginated like the others).
var listTaskInstancesForm = []string{
	"dag_ids", "dag_run_ids", "task_ids", "execution_date_gte", "execution_date_lte",
	"start_date_gte", "start_date_lte", "end_date_gte", "end_date_lte", "duration_gte",
	"duration_lte", "state", "pool", "queue", "executor", "page_limit", "page_offset",
}

// postListTaskInstances lists task instances across DAGs and runs:
// POST /api/v1/dags/~/dagRuns/~/taskInstances/list.
func (a *api) postListTaskInstances(w http.ResponseWriter, r *http.Request) error {
	b, err := decodeBody(r, listTaskInstancesForm, nil)
	if err != nil {
		return err
	}
	p, err := a.bodyPage(b)
	if err != nil {
		return err
	}
	var f taskFilter
	if f.q.DAGIDs, err = b.idsField("dag_ids", "DAG id", validDAGID); err != nil {
		return err
	}
	if f.q.DAGRunIDs, err = b.idsField("dag_run_ids", "DAG run id", validRunID); err != nil {
		return err
	}
	if f.q.TaskIDs, err = b.idsField("task_ids", "task id", validDAGID); err != nil {
		return err
	}
	if (f.q.DAGIDs != nil && len(f.q.DAGIDs) == 0) || (f.q.DAGRunIDs != nil && len(f.q.DAGRunIDs) == 0) ||
		(f.q.TaskIDs != nil && len(f.q.TaskIDs) == 0) {
		f.none = true // an empty list selects nothing
	}
	var start, end, logical timeRange
	if logical, err = bodyRange(b, "execution_date"); err != nil {
		return err
	}
	f.q.LogicalDateGTE, f.q.LogicalDateLTE = logical.gte, logical.lte
	if start, err = bodyRange(b, "start_date"); err != nil {
		return err
	}
	if end, err = bodyRange(b, "end_date"); err != nil {
		return err
	}
	f.q.StartDateGTE, f.q.StartDateLTE = start.gte, start.lte
	f.q.EndDateGTE, f.q.EndDateLTE = end.gte, end.lte
	if f.duration.gte, err = b.numberField("duration_gte"); err != nil {
		return err
	}
	if f.duration.lte, err = b.numberField("duration_lte"); err != nil {
		return err
	}
	if m, ok := b["state"]; ok {
		var states []*string
		if isNull(m) || json.Unmarshal(m, &states) != nil {
			return badRequest("field \"state\" must be an array of task instance states, got %s", jsonKind(m))
		}
		names := make([]string, len(states))
		for i, s := range states {
			names[i] = "null"
			if s != nil {
				names[i] = *s
			}
		}
		if f.q.States, err = taskStates(names, "field \"state\""); err != nil {
			return err
		}
		if len(states) == 0 {
			f.none = true
		}
	}
	var static [3][]string
	for i, name := range []string{"pool", "queue", "executor"} {
		if static[i], err = b.stringsField(name); err != nil {
			return err
		}
		if _, ok := b[name]; ok && static[i] == nil {
			static[i] = []string{}
		}
	}
	f.setStatic(static[0], static[1], static[2])
	c := a.newTIContext(r.Context())
	tis, total, err := a.listTaskInstances(c, f, p)
	if err != nil {
		return err
	}
	return c.write(w, tis, total)
}

// tiParams reads dag_id, dag_run_id and task_id.
func tiParams(r *http.Request) (dagID, runID, taskID string, err error) {
	if dagID, runID, err = runParams(r); err != nil {
		return
	}
	taskID, err = pathParam(r, "task_id")
	return
}

func taskInstanceNotFound(dagID, runID, taskID string) error {
	return notFound("Task instance not found",
		"Task instance with task_id: '%s' not found in DAGRun '%s' of DAG '%s'", taskID, runID, dagID)
}

// getStoredTI returns a task instance and the logical date of its run.
func (a *api) getStoredTI(ctx context.Context, dagID, runID, taskID string) (store.TaskInstance, store.Run, error) {
	run, err := a.getStoredRun(ctx, dagID, runID)
	if err != nil {
		return store.TaskInstance{}, run, err
	}
	ti, err := a.store.GetTaskInstance(ctx, dagID, runID, taskID)
	if err != nil {
		if isNotFound(err) {
			return ti, run, taskInstanceNotFound(dagID, runID, taskID)
		}
		return ti, run, err
	}
	return ti, run, nil
}

// getTaskInstance returns one task instance:
// GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}.
func (a *api) getTaskInstance(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, taskID, err := tiParams(r)
	if err != nil {
		return err
	}
	ti, run, err := a.getStoredTI(r.Context(), dagID, runID, taskID)
	if err != nil {
		return err
	}
	c := a.newTIContext(r.Context())
	return writeJSON(w, http.StatusOK, toTaskInstance(ti, run.LogicalDate, c.kind(dagID, taskID)))
}

// logToken is the continuation token of a log read: where the next read
// starts. It carries no secret, so it is plain base64url JSON.
type logToken struct {
	LogPos   int  `json:"log_pos"`
	EndOfLog bool `json:"end_of_log"`
}

func (t logToken) encode() string {
	data, _ := json.Marshal(t) // two plain fields: cannot fail
	return base64.RawURLEncoding.EncodeToString(data)
}

func decodeLogToken(s string) (logToken, error) {
	var t logToken
	data, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil || json.Unmarshal(data, &t) != nil || t.LogPos < 0 {
		return t, badRequest("query parameter \"token\" is not a continuation token returned by this API")
	}
	return t, nil
}

// getLog returns the log of one try, as text/plain or as JSON
// {continuation_token, content} by the Accept header (JSON when it has
// none, as Airflow does):
// GET …/taskInstances/{task_id}/logs/{task_try_number}.
func (a *api) getLog(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, taskID, err := tiParams(r)
	if err != nil {
		return err
	}
	tryText, err := pathParam(r, "task_try_number")
	if err != nil {
		return err
	}
	try, perr := strconv.Atoi(tryText)
	if perr != nil || try < 1 {
		return badRequest("task_try_number must be a positive integer, got %q", tryText)
	}
	q := query{r.URL.Query()}
	if _, err := q.boolean("full_content"); err != nil {
		return err
	}
	mapIndex := -1
	if mi, err := q.integer("map_index"); err != nil {
		return err
	} else if mi != nil {
		mapIndex = *mi
	}
	pos := 0
	if tok, ok, err := q.one("token"); err != nil {
		return err
	} else if ok {
		t, err := decodeLogToken(tok)
		if err != nil {
			return err
		}
		pos = t.LogPos
	}
	ctx := r.Context()
	ti, _, err := a.getStoredTI(ctx, dagID, runID, taskID)
	if mapIndex >= 0 {
		if _, err = a.getStoredRun(ctx, dagID, runID); err == nil {
			ti, err = a.store.GetCallInstance(ctx, dagID, runID, taskID, mapIndex)
			if isNotFound(err) {
				err = taskInstanceNotFound(dagID, runID, taskID+"["+strconv.Itoa(mapIndex)+"]")
			}
		}
	}
	if err != nil {
		return err
	}
	if try > ti.TryNumber {
		return notFound("Log not found", "task instance '%s' of DAGRun '%s' of DAG '%s' has started %d tries; there is no try %d",
			taskID, runID, dagID, ti.TryNumber, try)
	}
	content, err := a.store.ReadCallLog(ctx, dagID, runID, taskID, mapIndex, try)
	if err != nil && !isNotFound(err) {
		return err
	}
	// A try that wrote nothing has an empty log.
	content = content[min(pos, len(content)):]
	if wantsText(r.Header.Get("Accept")) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(content)
		return nil
	}
	// The log is complete once its try has ended.
	end := try < ti.TryNumber || ti.State.Terminal() || ti.State == state.UpForRetry
	tok := logToken{LogPos: pos + len(content), EndOfLog: end}
	return writeJSON(w, http.StatusOK, map[string]string{
		"continuation_token": tok.encode(),
		"content":            string(content),
	})
}

// wantsText reports whether an Accept header prefers text/plain to
// application/json. Like Airflow, no Accept header means JSON and a tie
// (e.g. */*) means text/plain; when neither is acceptable the answer is
// JSON.
func wantsText(accept string) bool {
	if strings.TrimSpace(accept) == "" {
		return false
	}
	text, js := acceptQuality(accept, "text", "plain"), acceptQuality(accept, "application", "json")
	if text == 0 && js == 0 {
		return false
	}
	return text >= js
}

// acceptQuality returns the quality an Accept header gives the media type
// typ/sub: that of the most specific range matching it (RFC 9110 12.5.1),
// 0 when none does.
func acceptQuality(accept, typ, sub string) float64 {
	bestSpec, q := 0, 0.0
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		t, s, _ := strings.Cut(mt, "/")
		spec := 0
		switch {
		case t == typ && s == sub:
			spec = 3
		case t == typ && s == "*":
			spec = 2
		case t == "*" && s == "*":
			spec = 1
		}
		if spec <= bestSpec {
			continue
		}
		qv := 1.0
		if v, ok := params["q"]; ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 1 {
				continue
			}
			qv = f
		}
		bestSpec, q = spec, qv
	}
	return q
}
