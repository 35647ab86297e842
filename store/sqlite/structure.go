package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// callableDef is what creating an instance of a callable needs from its
// stored task (static tasks' instances are copied from the stored tasks
// by SQL).
type callableDef struct {
	rule       dag.TriggerRule
	priority   int
	retries    int
	retryDelay time.Duration
	maxBackoff time.Duration
	timeout    time.Duration
	// keyTemplate and keyLimit: the concurrency key of the task's
	// instances ("" = none); call instances render theirs when created.
	keyTemplate string
	keyLimit    int
}

// structure is the task graph of one DAG version. Versions never change
// once written, so structures are cached for the life of the Store.
//
// Every process of a deployment holds the structures of the runs it
// works on, so they are compact: tasks are numbered in spec order, the
// edges are lists of numbers (one shared array per direction), and the
// ids share one string. A 100,000-task wide DAG takes ~6 MB instead of
// the ~40 MB of a map of task records with lists of names.
type structure struct {
	versionID int64
	ids       []string         // task ids in spec order
	index     map[string]int32 // task id → its number
	down, up  adjacency
	leaves    []int32
	callables map[string]*callableDef
}

// adjacency lists the edges of every task: task i's are
// to[start[i]:start[i+1]].
type adjacency struct {
	start []int32
	to    []int32
}

func (a *adjacency) of(i int32) []int32 { return a.to[a.start[i]:a.start[i+1]] }

// has reports whether the version has task id.
func (st *structure) has(id string) bool {
	_, ok := st.index[id]
	return ok
}

// names returns the ids of task numbers.
func (st *structure) names(nums []int32) []string {
	if len(nums) == 0 {
		return nil
	}
	out := make([]string, len(nums))
	for k, n := range nums {
		out[k] = st.ids[n]
	}
	return out
}

// downstream returns the direct downstream task ids of id (nil for an
// unknown id).
func (st *structure) downstream(id string) []string {
	i, ok := st.index[id]
	if !ok {
		return nil
	}
	return st.names(st.down.of(i))
}

// soleDownstream returns the number of the only direct downstream task
// of id; false when id has none, several, or is unknown.
func (st *structure) soleDownstream(id string) (int32, bool) {
	i, ok := st.index[id]
	if !ok {
		return 0, false
	}
	if d := st.down.of(i); len(d) == 1 {
		return d[0], true
	}
	return 0, false
}

// upstream returns the direct upstream task ids of id.
func (st *structure) upstream(id string) []string {
	i, ok := st.index[id]
	if !ok {
		return nil
	}
	return st.names(st.up.of(i))
}

// leafIDs returns the ids of the tasks nothing depends on.
func (st *structure) leafIDs() []string { return st.names(st.leaves) }

// downstreamClosure returns ids and every task downstream of them.
func (st *structure) downstreamClosure(ids []string) []string {
	seen := make([]bool, len(st.ids))
	var out []string
	var stack []int32
	for _, id := range ids {
		if i, ok := st.index[id]; ok {
			stack = append(stack, i)
		} else if !contains(out, id) {
			out = append(out, id) // unknown ids are the caller's to report
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[i] {
			continue
		}
		seen[i] = true
		out = append(out, st.ids[i])
		stack = append(stack, st.down.of(i)...)
	}
	return out
}

// structureRow is one stored task as loadStructure reads it.
type structureRow struct {
	id, kind, upstream, downstream string
	isLeaf                         bool
	def                            callableDef
}

// buildStructure makes the structure of version id from its stored tasks
// in spec order, whose upstream and downstream are JSON arrays of ids.
func buildStructure(id int64, rows []structureRow) (*structure, error) {
	n := len(rows)
	st := &structure{versionID: id, ids: make([]string, n), index: make(map[string]int32, n)}
	var all strings.Builder
	for _, r := range rows {
		all.WriteString(r.id)
	}
	joined, pos := all.String(), 0
	for k, r := range rows {
		st.ids[k] = joined[pos : pos+len(r.id)]
		pos += len(r.id)
		st.index[st.ids[k]] = int32(k)
	}
	var names []string
	edges := func(list func(structureRow) string, what string) (adjacency, error) {
		a := adjacency{start: make([]int32, n+1)}
		for k, r := range rows {
			names = names[:0]
			if err := json.Unmarshal([]byte(list(r)), &names); err != nil {
				return a, fmt.Errorf("load structure of version %d: task %q: %s: %w", id, r.id, what, err)
			}
			for _, name := range names {
				to, ok := st.index[name]
				if !ok {
					return a, fmt.Errorf("load structure of version %d: task %q: %s task %q is not in the version", id, r.id, what, name)
				}
				a.to = append(a.to, to)
			}
			a.start[k+1] = int32(len(a.to))
		}
		a.to = a.to[:len(a.to):len(a.to)]
		return a, nil
	}
	var err error
	if st.down, err = edges(func(r structureRow) string { return r.downstream }, "downstream"); err != nil {
		return nil, err
	}
	if st.up, err = edges(func(r structureRow) string { return r.upstream }, "upstream"); err != nil {
		return nil, err
	}
	for k, r := range rows {
		if r.isLeaf {
			st.leaves = append(st.leaves, int32(k))
		}
		if dag.Kind(r.kind) == dag.KindCallable {
			if st.callables == nil {
				st.callables = map[string]*callableDef{}
			}
			def := r.def
			st.callables[st.ids[k]] = &def
		}
	}
	return st, nil
}

type structCache struct {
	mu sync.Mutex
	m  map[int64]*structure
}

func (c *structCache) init() { c.m = map[int64]*structure{} }

// load returns the structure of version id, reading it with q on a miss.
func (c *structCache) load(ctx context.Context, q querier, id int64) (*structure, error) {
	c.mu.Lock()
	st, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return st, nil
	}
	rows, err := q.QueryContext(ctx, `SELECT task_id, kind, trigger_rule, priority, retries, retry_delay_ns,
			max_backoff_ns, timeout_ns, upstream, downstream, is_leaf, key_template, key_limit
		FROM dag_version_tasks WHERE version_id = ? ORDER BY ord`, id)
	if err != nil {
		return nil, fmt.Errorf("load structure of version %d: %w", id, err)
	}
	defer rows.Close()
	var recs []structureRow
	for rows.Next() {
		var (
			r          structureRow
			rule       string
			rd, mb, to int64
		)
		if err := rows.Scan(&r.id, &r.kind, &rule, &r.def.priority, &r.def.retries, &rd, &mb, &to,
			&r.upstream, &r.downstream, &r.isLeaf, &r.def.keyTemplate, &r.def.keyLimit); err != nil {
			return nil, fmt.Errorf("load structure of version %d: %w", id, err)
		}
		r.def.rule = dag.TriggerRule(rule)
		r.def.retryDelay, r.def.maxBackoff, r.def.timeout = time.Duration(rd), time.Duration(mb), time.Duration(to)
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load structure of version %d: %w", id, err)
	}
	if st, err = buildStructure(id, recs); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.m[id] = st
	c.mu.Unlock()
	return st, nil
}
