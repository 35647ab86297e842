package storetest

import (
	"testing"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func callable(id string, opts ...taskOpt) store.TaskSpec {
	ts := tk(id, opts...)
	ts.Kind = dag.KindCallable
	return ts
}

// testCallableSpec: a callable of a structure has no instance in a run
// (calls create them), is not a leaf and does not hold its run open.
func testCallableSpec(t *testing.T, e *env) {
	sp := newSpec("cs", tk("a"), callable("k"))
	e.started(sp, "run")
	tis, n, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"cs"}})
	must(t, "ListTaskInstances", err)
	if n != 1 || len(tis) != 1 || tis[0].TaskID != "a" {
		t.Fatalf("instances %v, want only a", tis)
	}
	e.finish(result(e.claimOne("a"), state.Success))
	e.wantRunState("cs", "run", state.RunSuccess)
}
