package dag

import (
	"fmt"
	"slices"
	"strings"

	"gonum.org/v1/gonum/graph"
	"gonum.org/v1/gonum/graph/iterator"
	"gonum.org/v1/gonum/graph/simple"
	"gonum.org/v1/gonum/graph/topo"
)

// CycleError is returned by TopologicalOrder when the DAG has a cycle.
type CycleError struct {
	DAGID string
	// Cycle names the tasks on one cycle in edge order; the first id is
	// repeated at the end, e.g. [a b c a].
	Cycle []string
}

func (e *CycleError) Error() string {
	return fmt.Sprintf("DAG %q has a cycle: %s", e.DAGID, strings.Join(e.Cycle, " -> "))
}

// TopologicalOrder returns every task (duplicates included) so that each
// task comes after all its upstream tasks. Ties are broken by insertion
// order: among the tasks whose upstream tasks are all placed, the one added
// first comes next, so a DAG whose tasks were added in dependency order
// comes back unchanged. When the DAG has a cycle there is no such order,
// and it returns a *CycleError naming one cycle.
func (d *DAG) TopologicalOrder() ([]*Task, error) {
	n := len(d.tasks)
	indeg := make([]int32, n)
	for _, t := range d.tasks {
		for _, p := range t.downstream {
			indeg[p]++
		}
	}
	var ready minHeap
	for i, k := range indeg {
		if k == 0 {
			ready = append(ready, int32(i)) // ascending, so already a heap
		}
	}
	order := make([]*Task, 0, n)
	for len(ready) > 0 {
		t := d.tasks[ready.pop()]
		order = append(order, t)
		for _, p := range t.downstream {
			if indeg[p]--; indeg[p] == 0 {
				ready.push(p)
			}
		}
	}
	if len(order) < n {
		err := &CycleError{DAGID: d.id}
		if cs := d.cycles(); len(cs) > 0 {
			err.Cycle = cycleIDs(cs[0])
		}
		return nil, err
	}
	return order, nil
}

// minHeap is a binary min-heap of task indexes.
type minHeap []int32

func (h *minHeap) push(x int32) {
	a := append(*h, x)
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if a[p] <= a[i] {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
	*h = a
}

func (h *minHeap) pop() int32 {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	a = a[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(a) && a[l] < a[m] {
			m = l
		}
		if r < len(a) && a[r] < a[m] {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}

// acyclic reports, in linear time and with two allocations, whether the
// DAG has no cycle (self-loops included): Kahn's algorithm places every
// task exactly when there is none.
func (d *DAG) acyclic() bool {
	n := len(d.tasks)
	indeg := make([]int32, n)
	for _, t := range d.tasks {
		for _, p := range t.downstream {
			indeg[p]++
		}
	}
	stack := make([]int32, 0, n)
	for i, k := range indeg {
		if k == 0 {
			stack = append(stack, int32(i))
		}
	}
	placed := 0
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		placed++
		for _, p := range d.tasks[i].downstream {
			if indeg[p]--; indeg[p] == 0 {
				stack = append(stack, p)
			}
		}
	}
	return placed == n
}

// cycleIDs formats a cycle of tasks as ids with the first repeated last.
func cycleIDs(c []*Task) []string {
	out := make([]string, 0, len(c)+1)
	for _, t := range c {
		out = append(out, t.id)
	}
	return append(out, c[0].id)
}

// cycles returns one cycle per self-loop and one per strongly connected
// component of two or more tasks, each starting at its earliest-added task
// and following edges in the order they were added, sorted by that task.
// A self-loop comes before a larger cycle through the same task.
//
// The components come from gonum's Tarjan implementation. It keeps maps
// per node, so an acyclic DAG (the common case) is settled first by the
// linear check of acyclic.
func (d *DAG) cycles() [][]*Task {
	if d.acyclic() {
		return nil
	}
	var out [][]*Task
	for _, t := range d.tasks {
		for _, p := range t.downstream {
			if p == t.index {
				out = append(out, []*Task{t})
			}
		}
	}

	g := newTaskGraph(d)
	var comps [][]graph.Node
	for _, scc := range topo.TarjanSCC(g) {
		if len(scc) > 1 {
			comps = append(comps, scc)
		}
	}
	if len(comps) > 0 {
		n := len(d.tasks)
		comp := make([]int32, n)
		for i := range comp {
			comp[i] = -1
		}
		for c, scc := range comps {
			for _, v := range scc {
				comp[v.ID()] = int32(c)
			}
		}
		parent := make([]int32, n)
		seen := make([]int32, n) // holds c+1 once visited by the search of comps[c]
		for c, scc := range comps {
			start := scc[0].ID()
			for _, v := range scc[1:] {
				start = min(start, v.ID())
			}
			out = append(out, d.shortestCycle(int(start), int32(c), comp, parent, seen))
		}
	}
	// Stable, so self-loops (listed first) stay ahead of larger cycles
	// through the same task.
	slices.SortStableFunc(out, func(a, b []*Task) int { return int(a[0].index) - int(b[0].index) })
	return out
}

// shortestCycle finds, by breadth-first search inside component c, the
// shortest cycle through the task at index start.
func (d *DAG) shortestCycle(start int, c int32, comp, parent, seen []int32) []*Task {
	mark := c + 1
	seen[start] = mark
	queue := []int{start}
	for len(queue) > 0 {
		u := queue[0]
		queue = queue[1:]
		for _, p := range d.tasks[u].downstream {
			w := int(p)
			if w == u || comp[w] != c {
				continue // self-loop (reported apart) or other component
			}
			if w == start {
				var rev []*Task
				for x := u; x != start; x = int(parent[x]) {
					rev = append(rev, d.tasks[x])
				}
				rev = append(rev, d.tasks[start])
				for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
					rev[i], rev[j] = rev[j], rev[i]
				}
				return rev
			}
			if seen[w] != mark {
				seen[w] = mark
				parent[w] = int32(u)
				queue = append(queue, w)
			}
		}
	}
	// Unreachable: every task of a strongly connected component lies on a
	// cycle through any other. Name the component rather than nothing.
	return []*Task{d.tasks[start]}
}

// taskGraph is a read-only gonum graph.Directed view of one DAG. Node ids
// are task indexes; edges to the task itself and to tasks of other DAGs
// are left out (self-loops are found separately).
type taskGraph struct {
	d     *DAG
	nodes []graph.Node // nodes[i] is task i, boxed once
}

func newTaskGraph(d *DAG) taskGraph {
	nodes := make([]graph.Node, len(d.tasks))
	for i := range nodes {
		nodes[i] = simple.Node(i)
	}
	return taskGraph{d: d, nodes: nodes}
}

func (g taskGraph) valid(id int64) bool { return id >= 0 && id < int64(len(g.nodes)) }

// Node returns the node with the given id, or nil.
func (g taskGraph) Node(id int64) graph.Node {
	if !g.valid(id) {
		return nil
	}
	return g.nodes[id]
}

// Nodes returns every task's node, in insertion order. The slice is a
// copy: gonum may reorder what an iterator hands out.
func (g taskGraph) Nodes() graph.Nodes { return iterator.NewOrderedNodes(slices.Clone(g.nodes)) }

func (g taskGraph) neighbours(ps []int32, self int64) graph.Nodes {
	if len(ps) == 0 {
		return graph.Empty
	}
	nodes := make([]graph.Node, 0, len(ps))
	for _, p := range ps {
		if int64(p) != self {
			nodes = append(nodes, g.nodes[p])
		}
	}
	return iterator.NewOrderedNodes(nodes)
}

// From returns the direct downstream tasks of id.
func (g taskGraph) From(id int64) graph.Nodes {
	if !g.valid(id) {
		return graph.Empty
	}
	return g.neighbours(g.d.tasks[id].downstream, id)
}

// To returns the direct upstream tasks of id.
func (g taskGraph) To(id int64) graph.Nodes {
	if !g.valid(id) {
		return graph.Empty
	}
	return g.neighbours(g.d.tasks[id].upstream, id)
}

// HasEdgeFromTo reports whether uid -> vid is an edge.
func (g taskGraph) HasEdgeFromTo(uid, vid int64) bool {
	if !g.valid(uid) || !g.valid(vid) || uid == vid {
		return false
	}
	return slices.Contains(g.d.tasks[uid].downstream, int32(vid))
}

// HasEdgeBetween reports whether there is an edge either way.
func (g taskGraph) HasEdgeBetween(xid, yid int64) bool {
	return g.HasEdgeFromTo(xid, yid) || g.HasEdgeFromTo(yid, xid)
}

// Edge returns the edge uid -> vid, or nil.
func (g taskGraph) Edge(uid, vid int64) graph.Edge {
	if !g.HasEdgeFromTo(uid, vid) {
		return nil
	}
	return simple.Edge{F: g.nodes[uid], T: g.nodes[vid]}
}
