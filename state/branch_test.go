package state

import (
	"slices"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/dag"
)

func TestBranchSkips(t *testing.T) {
	d := dag.New("b")
	noop := func(*dag.Context) error { return nil }
	br := d.Branch("branch", func(*dag.Context) ([]string, error) { return nil, nil })
	a := d.Func("a", noop)
	b := d.Func("b", noop)
	c := d.Func("c", noop)
	join := d.Func("join", noop, dag.Trigger(dag.NoneFailedMinOneSuccess))
	deep := d.Func("deep", noop)
	br.SetDownstream(a, b, c, join)
	a.SetDownstream(deep)
	deep.SetDownstream(join) // join is reachable from a, two hops away
	b.SetDownstream(join)
	d.Func("other", noop) // in the DAG, not downstream of branch

	cases := []struct {
		follow []string
		want   []string
	}{
		{[]string{"a"}, []string{"b", "c"}},           // join is kept: downstream of a (via deep)
		{[]string{"b"}, []string{"a", "c"}},           // join kept: downstream of b
		{[]string{"c"}, []string{"a", "b", "join"}},   // nothing leads from c to join
		{[]string{"join"}, []string{"a", "b", "c"}},   // following the join directly
		{nil, []string{"a", "b", "c", "join"}},        // follow nothing: skip every direct task
		{[]string{"a", "c", "a"}, []string{"b"}},      // duplicates are harmless
		{[]string{"a", "b", "c", "join"}, []string{}}, // follow everything
	}
	for _, c := range cases {
		got, err := BranchSkips(br, c.follow)
		if err != nil {
			t.Fatalf("follow %v: %v", c.follow, err)
		}
		if !slices.Equal(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
			t.Errorf("follow %v: skips %v, want %v", c.follow, got, c.want)
		}
	}

	for _, bad := range [][]string{{"deep"}, {"other"}, {"a", "nope"}, {"branch"}} {
		_, err := BranchSkips(br, bad)
		if err == nil {
			t.Errorf("follow %v: want an error", bad)
			continue
		}
		last := bad[len(bad)-1]
		if !strings.Contains(err.Error(), `"`+last+`"`) || !strings.Contains(err.Error(), `"branch"`) {
			t.Errorf("follow %v: error %q does not name the bad id and the branch", bad, err)
		}
	}
	if _, err := BranchSkips(nil, nil); err == nil {
		t.Error("nil branch: want an error")
	}
}
