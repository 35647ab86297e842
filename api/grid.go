package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// Limits of GET /dags/{dag_id}/grid.
const (
	// DefaultGridRuns and MaxGridRuns: runs per grid page.
	DefaultGridRuns = 25
	MaxGridRuns     = 100
	// DefaultGridTasks and MaxGridTasks: tasks (rows) per grid page.
	DefaultGridTasks = 1000
	MaxGridTasks     = 5000
	// gridFresh is how long a grid body is served again to identical
	// requests: clients polling one DAG page cost one read per gridFresh,
	// however many they are.
	gridFresh = time.Second
	// gridKeptBytes bounds the memory of the recent grid bodies kept.
	gridKeptBytes = 32 << 20
)

// gridJSON is the compact grid: runs as columns (newest first) and one row
// per task whose arrays are aligned with runs.
type gridJSON struct {
	DAGID      string        `json:"dag_id"`
	TotalRuns  int           `json:"total_runs"`
	TotalTasks int           `json:"total_tasks"`
	Offset     int           `json:"offset"`
	TaskOffset int           `json:"task_offset"`
	Runs       []gridRunJSON `json:"runs"`
	Tasks      []gridRowJSON `json:"tasks"`
}

type gridRunJSON struct {
	DAGRunID    string   `json:"dag_run_id"`
	RunType     string   `json:"run_type"`
	State       string   `json:"state"`
	LogicalDate apiTime  `json:"logical_date"`
	StartDate   *apiTime `json:"start_date"`
	EndDate     *apiTime `json:"end_date"`
}

// gridRowJSON is one task's instances across the runs: state (null when
// the run has no instance of the task), try number, and start and end as
// Unix milliseconds (null when unset). A callable's row has its call
// instances in each run grouped: calls counts them and call_states tells
// how many are in each state (null when the run made no call); states
// holds the summary (failed if any failed, running if any runs, …), and
// tries, start_ms and end_ms the highest try, first start and last end.
type gridRowJSON struct {
	TaskID     string           `json:"task_id"`
	States     []*string        `json:"states"`
	Tries      []int            `json:"tries"`
	Start      []*int64         `json:"start_ms"`
	End        []*int64         `json:"end_ms"`
	Calls      []int            `json:"calls,omitempty"`
	CallStates []map[string]int `json:"call_states,omitempty"`
}

// getGrid answers GET /api/v1/dags/{dag_id}/grid (a Trellis extension):
// a page of runs (limit, offset; newest first) × a page of the DAG's
// tasks in topological order (task_limit, task_offset), read with one
// store.Grid call. Identical requests within gridFresh share one read.
func (a *api) getGrid(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	q := query{r.URL.Query()}
	runs, err := pageParams(q, DefaultGridRuns, MaxGridRuns)
	if err != nil {
		return err
	}
	// task_limit follows limit's rules: 0 is the default, above the
	// maximum is the maximum, negative is an error.
	tasks := page{limit: DefaultGridTasks}
	if l, err := q.integer("task_limit"); err != nil {
		return err
	} else if l != nil && *l < 0 {
		return badRequest("task_limit must not be negative, got %d", *l)
	} else if l != nil && *l > 0 {
		tasks.limit = min(*l, MaxGridTasks)
	}
	if o, err := q.integer("task_offset"); err != nil {
		return err
	} else if o != nil {
		tasks.offset = *o
	}
	if err := checkPage(tasks, "task_limit", "task_offset", MaxGridTasks); err != nil {
		return err
	}
	d, err := a.binaryDAG(dagID)
	if err != nil {
		return err
	}
	key := fmt.Sprintf("%s?%d,%d,%d,%d", dagID, runs.limit, runs.offset, tasks.limit, tasks.offset)
	body, err := a.grids.get(r.Context(), key, func(ctx context.Context) ([]byte, error) {
		return a.readGrid(ctx, d, runs, tasks)
	})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
	return nil
}

// readGrid reads and renders one grid page.
func (a *api) readGrid(ctx context.Context, d *dag.DAG, runs, tasks page) ([]byte, error) {
	order, err := d.TopologicalOrder()
	if err != nil {
		order = d.Tasks()
	}
	out := gridJSON{DAGID: d.ID(), TotalTasks: len(order), Offset: runs.offset, TaskOffset: tasks.offset,
		Runs: []gridRunJSON{}, Tasks: []gridRowJSON{}}
	lo, hi := min(tasks.offset, len(order)), min(tasks.offset+tasks.limit, len(order))
	ids := make([]string, 0, hi-lo)
	for _, t := range order[lo:hi] {
		ids = append(ids, t.ID())
	}
	// A page of every task reads every cell: cheaper than naming them.
	all := lo == 0 && hi == len(order)
	g, err := a.store.Grid(ctx, store.GridQuery{DAGID: d.ID(), RunLimit: runs.limit, RunOffset: runs.offset, TaskIDs: ids, AllTasks: all})
	if err != nil {
		return nil, err
	}
	out.TotalRuns = g.TotalRuns
	col := make(map[int64]int, len(g.Runs))
	for i, run := range g.Runs {
		col[run.ID] = i
		out.Runs = append(out.Runs, gridRunJSON{DAGRunID: run.RunID, RunType: string(run.RunType), State: string(run.State),
			LogicalDate: apiTime(run.LogicalDate), StartDate: optTime(run.StartedAt), EndDate: optTime(run.EndedAt)})
	}
	row := make(map[string]int, len(ids))
	for i, id := range ids {
		row[id] = i
		n := len(g.Runs)
		out.Tasks = append(out.Tasks, gridRowJSON{TaskID: id, States: make([]*string, n), Tries: make([]int, n),
			Start: make([]*int64, n), End: make([]*int64, n)})
		if t := d.Task(id); t != nil && t.Kind() == dag.KindCallable {
			out.Tasks[i].Calls, out.Tasks[i].CallStates = make([]int, n), make([]map[string]int, n)
		}
	}
	for _, c := range g.Cells {
		i, ok := row[c.TaskID]
		j, ok2 := col[c.RunID]
		if !ok || !ok2 {
			continue
		}
		t := &out.Tasks[i]
		s := string(c.State)
		t.States[j], t.Tries[j], t.Start[j], t.End[j] = &s, c.TryNumber, unixMilli(c.StartedAt), unixMilli(c.EndedAt)
		if c.Calls > 0 && t.Calls != nil {
			t.Calls[j], t.CallStates[j] = c.Calls, make(map[string]int, len(c.CallStates))
			for st, n := range c.CallStates {
				if n > 0 {
					t.CallStates[j][string(st)] = n
				}
			}
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func optTime(t *time.Time) *apiTime {
	if t == nil {
		return nil
	}
	v := apiTime(*t)
	return &v
}

func unixMilli(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := t.UnixMilli()
	return &v
}

// recentReads serves a body read less than gridFresh ago again, and
// coalesces the reads of one key in progress (flights). Bounded: bodies
// older than gridFresh are dropped, and at most gridKeptBytes are kept;
// forget drops them all.
type recentReads struct {
	reads flights
	now   func() time.Time

	mu     sync.Mutex
	gen    uint64
	bytes  int
	bodies map[string]recentBody
}

type recentBody struct {
	body []byte
	at   time.Time
	gen  uint64
}

func (c *recentReads) get(ctx context.Context, key string, read func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if b, ok := c.bodies[key]; ok && b.gen == c.gen && c.now().Sub(b.at) < gridFresh {
		c.mu.Unlock()
		return b.body, nil
	}
	gen := c.gen
	c.mu.Unlock()
	body, err := c.reads.do(ctx, key, read)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return body, nil
	}
	now := c.now()
	for k, b := range c.bodies {
		if now.Sub(b.at) >= gridFresh || k == key {
			c.drop(k)
		}
	}
	if c.bytes+len(body) > gridKeptBytes {
		return body, nil // served, not kept: the window is full of fresh bodies
	}
	if c.bodies == nil {
		c.bodies = map[string]recentBody{}
	}
	c.bodies[key] = recentBody{body: body, at: now, gen: gen}
	c.bytes += len(body)
	return body, nil
}

func (c *recentReads) drop(key string) {
	c.bytes -= len(c.bodies[key].body)
	delete(c.bodies, key)
}

// forget drops the kept bodies and makes later requests read anew.
func (c *recentReads) forget() {
	c.mu.Lock()
	c.gen++
	c.bodies, c.bytes = nil, 0
	c.mu.Unlock()
	c.reads.forget()
}
