package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/trellis-dag/trellis/dag"
)

// How commands treat an invalid registry:
//
//   - `dags validate` and `dags list` work on every DAG: they print every
//     problem and exit 1 (list still prints its table first, so one sees
//     what is there).
//   - Commands that act on one DAG (`dags show`, `dags test`, `tasks test`)
//     refuse that DAG when it has problems of its own (printing them, exit
//     1), and otherwise go on, printing the problems of the other DAGs as
//     warnings on stderr: a broken DAG elsewhere in the binary should not
//     stop one from looking at or testing a good one.

// lookupDAG returns the DAG a single-DAG command acts on, after validating
// the registry as described above. An unknown id is a usage error that
// suggests close ids and `trellis dags list`.
func (a *app) lookupDAG(id string) (*dag.DAG, error) {
	var own, other []dag.Problem
	for _, p := range a.registry.Validate() {
		if p.DAGID == id {
			own = append(own, p)
		} else {
			other = append(other, p)
		}
	}
	d := a.registry.Lookup(id)
	if d == nil {
		return nil, a.unknownDAG(id)
	}
	if len(other) > 0 {
		fmt.Fprintf(a.stderr, "warning: other DAGs have %s (run \"trellis dags validate\"):\n", plural(len(other), "problem"))
		writeProblems(a.stderr, other, "  ")
	}
	if len(own) > 0 {
		fmt.Fprintf(a.stderr, "DAG %q is invalid:\n", id)
		writeProblems(a.stderr, own, "  ")
		return nil, &exitError{code: 1, err: fmt.Errorf("DAG %q has %s; fix it and rebuild", id, plural(len(own), "problem"))}
	}
	return d, nil
}

// unknownDAG is the usage error for a DAG id that is not registered.
func (a *app) unknownDAG(id string) error {
	var ids []string
	for _, d := range a.registry.DAGs() {
		ids = append(ids, d.ID())
	}
	msg := fmt.Sprintf("unknown DAG %q", id)
	if s := suggest(id, ids); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", quoteJoin(s))
	}
	return usagef("%s; run \"trellis dags list\" to see the DAGs", msg)
}

// lookupTask returns the task taskID of d, or a usage error listing d's
// tasks.
func lookupTask(d *dag.DAG, taskID string) (*dag.Task, error) {
	if t := d.Task(taskID); t != nil {
		return t, nil
	}
	var ids []string
	for _, t := range d.Tasks() {
		ids = append(ids, t.ID())
	}
	msg := fmt.Sprintf("DAG %q has no task %q", d.ID(), taskID)
	if s := suggest(taskID, ids); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", quoteJoin(s))
	}
	return nil, usagef("%s; its tasks: %s", msg, strings.Join(ids, ", "))
}

func writeProblems(w io.Writer, problems []dag.Problem, indent string) {
	for _, p := range problems {
		fmt.Fprintf(w, "%s%s\n", indent, p.String())
	}
}

// suggest returns the candidates that are close to s: within edit distance
// 2, or having s as a prefix or substring (case-insensitively).
func suggest(s string, candidates []string) []string {
	var out []string
	ls := strings.ToLower(s)
	for _, c := range candidates {
		lc := strings.ToLower(c)
		if c == s || slices.Contains(out, c) {
			continue
		}
		if levenshtein(ls, lc) <= 2 || (len(ls) >= 3 && strings.Contains(lc, ls)) {
			out = append(out, c)
		}
	}
	return out
}

// levenshtein returns the edit distance between a and b.
func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

func quoteJoin(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, " or ")
}

// plural returns "1 problem", "2 problems".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
