package sqlite

import (
	"slices"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/dag"
)

// A diamond a → (b, c) → d with a callable f beside it: edges, leaves and
// callables come back by id from the numbered form.
func TestBuildStructure(t *testing.T) {
	rows := []structureRow{
		{id: "a", kind: "func", upstream: `[]`, downstream: `["b","c"]`},
		{id: "b", kind: "func", upstream: `["a"]`, downstream: `["d"]`},
		{id: "c", kind: "shell", upstream: `["a"]`, downstream: `["d"]`},
		{id: "d", kind: "func", upstream: `["b","c"]`, downstream: `[]`, isLeaf: true},
		{id: "f", kind: string(dag.KindCallable), upstream: `[]`, downstream: `[]`, isLeaf: true,
			def: callableDef{priority: 3, retries: 2, keyTemplate: "{{.user}}", keyLimit: 1}},
	}
	st, err := buildStructure(7, rows)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.ids, []string{"a", "b", "c", "d", "f"}) {
		t.Errorf("ids = %q, want spec order", st.ids)
	}
	for _, c := range []struct {
		id         string
		down, up   []string
		known      bool
		isCallable bool
	}{
		{"a", []string{"b", "c"}, nil, true, false},
		{"b", []string{"d"}, []string{"a"}, true, false},
		{"d", nil, []string{"b", "c"}, true, false},
		{"f", nil, nil, true, true},
		{"zz", nil, nil, false, false},
	} {
		if got := st.downstream(c.id); !slices.Equal(got, c.down) {
			t.Errorf("downstream(%q) = %q, want %q", c.id, got, c.down)
		}
		if got := st.upstream(c.id); !slices.Equal(got, c.up) {
			t.Errorf("upstream(%q) = %q, want %q", c.id, got, c.up)
		}
		if st.has(c.id) != c.known {
			t.Errorf("has(%q) = %v, want %v", c.id, !c.known, c.known)
		}
		if (st.callables[c.id] != nil) != c.isCallable {
			t.Errorf("callables[%q] = %v, want callable %v", c.id, st.callables[c.id], c.isCallable)
		}
	}
	if def := st.callables["f"]; def == nil || def.priority != 3 || def.retries != 2 || def.keyTemplate != "{{.user}}" || def.keyLimit != 1 {
		t.Errorf("callable f = %+v, want its stored definition", def)
	}
	if got := st.leafIDs(); !slices.Equal(got, []string{"d", "f"}) {
		t.Errorf("leaves = %q, want [d f]", got)
	}
	got := st.downstreamClosure([]string{"b"})
	slices.Sort(got)
	if !slices.Equal(got, []string{"b", "d"}) {
		t.Errorf("downstream closure of b = %q, want [b d]", got)
	}
	got = st.downstreamClosure([]string{"a", "c"})
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Errorf("downstream closure of a, c = %q, want every task of the diamond once", got)
	}
}

// A stored edge to a task the version lacks, or a list that is not JSON,
// is an error naming the task, never a panic or a silently dropped edge.
func TestBuildStructureBadRows(t *testing.T) {
	for name, c := range map[string]struct {
		rows []structureRow
		want string
	}{
		"unknown downstream": {[]structureRow{{id: "a", upstream: `[]`, downstream: `["ghost"]`}}, `task "a": downstream task "ghost" is not in the version`},
		"unknown upstream":   {[]structureRow{{id: "a", upstream: `["ghost"]`, downstream: `[]`}}, `task "a": upstream task "ghost"`},
		"not JSON":           {[]structureRow{{id: "a", upstream: `[]`, downstream: `{`}}, `task "a": downstream`},
	} {
		t.Run(name, func(t *testing.T) {
			st, err := buildStructure(9, c.rows)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "version 9") {
				t.Fatalf("buildStructure = %v, %v; want an error containing %q and the version", st, err, c.want)
			}
		})
	}
}
