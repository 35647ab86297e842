package state

import (
	"fmt"
	"slices"

	"github.com/trellis-dag/trellis/dag"
)

// BranchSkips decides what a Branch task's choice does: follow holds the
// ids the branch function returned, and the result lists the ids of the
// direct downstream tasks of branch to mark skipped, in the order they
// were added to the DAG.
//
// Every id in follow must be a direct downstream task of branch; the first
// one that is not is reported in the error (and nothing is skipped). As in
// Airflow's SkipMixin.skip_all_except, a direct downstream task that is
// also downstream, directly or not, of a followed task is not skipped: in
//
//	branch ──────► join
//	   └──► task1 ──┘
//
// following task1 keeps join too, so an "empty" branch path works.
func BranchSkips(branch *dag.Task, follow []string) ([]string, error) {
	if branch == nil {
		return nil, fmt.Errorf("branch skips: no branch task")
	}
	direct := branch.Downstream()
	byID := make(map[string]*dag.Task, len(direct))
	for _, t := range direct {
		byID[t.ID()] = t
	}
	keep := make(map[*dag.Task]bool)
	var stack []*dag.Task
	for _, id := range follow {
		t, ok := byID[id]
		if !ok {
			return nil, fmt.Errorf("branch %q chose %q, which is not one of its direct downstream tasks %q",
				branch.ID(), id, branch.DownstreamIDs())
		}
		if !keep[t] {
			keep[t] = true
			stack = append(stack, t)
		}
	}
	// Everything downstream of a followed task is kept as well.
	for len(stack) > 0 {
		t := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, d := range t.Downstream() {
			if !keep[d] {
				keep[d] = true
				stack = append(stack, d)
			}
		}
	}
	var skip []string
	for _, t := range direct {
		if !keep[t] && !slices.Contains(skip, t.ID()) {
			skip = append(skip, t.ID())
		}
	}
	return skip, nil
}
