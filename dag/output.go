package dag

import (
	"encoding/json"
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
