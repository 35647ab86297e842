package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// taskDef is one task of a stored structure.
type taskDef struct {
	id         string
	ord        int
	kind       dag.Kind
	rule       dag.TriggerRule
	priority   int
	retries    int
	retryDelay time.Duration
	maxBackoff time.Duration
	timeout    time.Duration
	upstream   []string
	downstream []string
	isLeaf     bool
	// keyTemplate and keyLimit: the concurrency key of the task's
	// instances ("" = none); call instances render theirs when created.
	keyTemplate string
	keyLimit    int
}

// structure is the task graph of one DAG version. Versions never change
// once written, so structures are cached for the life of the Store.
type structure struct {
	versionID int64
	tasks     map[string]*taskDef
	order     []string // task ids in spec order
	leaves    []string
}

// downstreamClosure returns ids and every task downstream of them.
func (st *structure) downstreamClosure(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	stack := append([]string{}, ids...)
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, id)
		if t := st.tasks[id]; t != nil {
			stack = append(stack, t.downstream...)
		}
	}
	return out
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
	rows, err := q.QueryContext(ctx, `SELECT task_id, ord, kind, trigger_rule, priority, retries, retry_delay_ns,
			max_backoff_ns, timeout_ns, upstream, downstream, is_leaf, key_template, key_limit
		FROM dag_version_tasks WHERE version_id = ? ORDER BY ord`, id)
	if err != nil {
		return nil, fmt.Errorf("load structure of version %d: %w", id, err)
	}
	defer rows.Close()
	st = &structure{versionID: id, tasks: map[string]*taskDef{}}
	for rows.Next() {
		var (
			t              taskDef
			kind, rule     string
			rd, mb, to     int64
			upJSON, dsJSON string
		)
		if err := rows.Scan(&t.id, &t.ord, &kind, &rule, &t.priority, &t.retries, &rd, &mb, &to,
			&upJSON, &dsJSON, &t.isLeaf, &t.keyTemplate, &t.keyLimit); err != nil {
			return nil, fmt.Errorf("load structure of version %d: %w", id, err)
		}
		t.kind, t.rule = dag.Kind(kind), dag.TriggerRule(rule)
		t.retryDelay, t.maxBackoff, t.timeout = time.Duration(rd), time.Duration(mb), time.Duration(to)
		if err := json.Unmarshal([]byte(upJSON), &t.upstream); err != nil {
			return nil, fmt.Errorf("load structure of version %d: task %q: upstream: %w", id, t.id, err)
		}
		if err := json.Unmarshal([]byte(dsJSON), &t.downstream); err != nil {
			return nil, fmt.Errorf("load structure of version %d: task %q: downstream: %w", id, t.id, err)
		}
		st.tasks[t.id] = &t
		st.order = append(st.order, t.id)
		if t.isLeaf {
			st.leaves = append(st.leaves, t.id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load structure of version %d: %w", id, err)
	}
	c.mu.Lock()
	c.m[id] = st
	c.mu.Unlock()
	return st, nil
}
