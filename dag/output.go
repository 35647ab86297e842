package dag

import (
	"encoding/json"
	"errors"
	"fmt"
)

func marshalOutput(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("set output: value is not JSON-encodable: %w", err)
	}
	return b, nil
}

func unmarshalOutput(taskID string, b []byte, into any) error {
	if err := json.Unmarshal(b, into); err != nil {
		return fmt.Errorf("read output of task %q: %w", taskID, err)
	}
	return nil
}

// OutputOf decodes the output of task t in this run as a T:
//
//	fetch := d.Func("fetch", func(c *dag.Context) error { return c.SetOutput(Rows{...}) })
//	d.Func("load", func(c *dag.Context) error {
//		rows, err := dag.OutputOf[Rows](c, fetch)
//		...
//	}).SetUpstream(fetch)
//
// Naming the task by its handle, not its id, lets the compiler check that
// it exists. t must be a task of the DAG that c runs; the error wraps
// ErrNoOutput when t recorded no output (it has not succeeded, or set
// none). A Shell task's output is the JSON it wrote to $TRELLIS_OUTPUT, an
// HTTP task's its response body.
func OutputOf[T any](c *Context, t *Task) (T, error) {
	var v T
	switch {
	case t == nil:
		return v, errors.New("read output: nil task")
	case t.dag == nil || t.dag.id != c.DAGID():
		return v, fmt.Errorf("read output of task %q: it is not a task of DAG %q", t.id, c.DAGID())
	}
	err := c.Output(t.id, &v)
	return v, err
}
