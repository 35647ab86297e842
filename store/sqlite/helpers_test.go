package sqlite_test

import (
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// task is a func task with rule all_success after upstream.
func task(id string, upstream ...string) store.TaskSpec {
	return store.TaskSpec{TaskID: id, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, Upstream: upstream}
}
