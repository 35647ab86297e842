package store

import (
	"encoding/json"

	"github.com/trellis-dag/trellis/dag"
)

// StaticTasks is how many tasks of sp have an instance in every run: all
// but callables, whose instances are created by calls.
func (sp DAGSpec) StaticTasks() int {
	n := 0
	for _, t := range sp.Tasks {
		if t.Kind != dag.KindCallable {
			n++
		}
	}
	return n
}

// SpecFromDAG turns a DAG of the binary into the spec SyncDAGs records.
func SpecFromDAG(d *dag.DAG) DAGSpec {
	s := DAGSpec{
		DAGID:          d.ID(),
		Fingerprint:    d.Fingerprint(),
		Schedule:       d.ScheduleExpr(),
		Description:    d.Description(),
		Tags:           d.Tags(),
		MaxActiveRuns:  d.MaxActiveRuns(),
		MaxActiveTasks: d.MaxActiveTasks(),
		EventKey:       d.EventKey(),
	}
	if p := d.Params(); len(p) > 0 {
		// Validate checks the params encode.
		s.Params, _ = json.Marshal(p)
	}
	for _, t := range d.Tasks() {
		tpl, limit := t.ConcurrencyKey()
		s.Tasks = append(s.Tasks, TaskSpec{
			TaskID:      t.ID(),
			Kind:        t.Kind(),
			TriggerRule: t.TriggerRule(),
			Priority:    t.Priority(),
			Retries:     t.Retries(),
			RetryDelay:  t.RetryDelay(),
			MaxBackoff:  t.MaxBackoff(),
			Timeout:     t.Timeout(),
			Upstream:    t.UpstreamIDs(),
			Pool:        t.Pool(),
			PoolSlots:   t.PoolSlots(),
			MaxActive:   t.MaxActive(),
			KeyTemplate: tpl,
			KeyLimit:    limit,
		})
	}
	return s
}
