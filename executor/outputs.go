package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// storeOutputs is the dag.OutputIO a worker hands to taskrun: Output
// reads an upstream task's output of the same run from the store, so it
// works whichever worker ran that task. taskrun keeps a try's own
// SetOutput value and returns it in the Outcome, which the worker reports
// with the try's result (one commit for state and output).
type storeOutputs struct {
	st    store.Store
	ctx   context.Context
	runID int64 // store.Run.ID
}

// SetOutput is not used by taskrun, which keeps a try's own output; it
// reports that plainly instead of storing anything.
func (o storeOutputs) SetOutput([]byte) error {
	return errors.New("set output: outputs are reported with the try's result, not written directly")
}

// Output returns the output of taskID in this run, or an error wrapping
// dag.ErrNoOutput when it has none.
func (o storeOutputs) Output(taskID string) ([]byte, error) {
	b, err := o.st.GetOutput(o.ctx, o.runID, taskID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && b == nil) {
		return nil, fmt.Errorf("task %q: %w", taskID, dag.ErrNoOutput)
	}
	if err != nil {
		return nil, fmt.Errorf("read output of task %q: %w", taskID, err)
	}
	return b, nil
}

// runParams returns a run's params: the DAG's defaults overlaid by the
// run's conf, read by dag.ParseConf (a JSON object, or empty/null for none).
func runParams(defaults map[string]any, conf json.RawMessage) (map[string]any, error) {
	params := maps.Clone(defaults)
	if params == nil {
		params = map[string]any{}
	}
	if emptyConf(conf) {
		return params, nil // most runs': nothing to decode
	}
	overlay, err := dag.ParseConf(conf)
	if err != nil {
		return nil, fmt.Errorf("run conf: %w", err)
	}
	maps.Copy(params, overlay)
	return params, nil
}

// emptyConf reports whether conf overlays nothing: empty, JSON null or
// an empty object.
func emptyConf(conf json.RawMessage) bool {
	switch string(bytes.TrimSpace(conf)) {
	case "", "null", "{}":
		return true
	}
	return false
}
