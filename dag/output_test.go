package dag_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/dag"
)

// mapOutputs is an OutputIO over a map, as the `dags test` runner keeps
// outputs in memory.
type mapOutputs map[string][]byte

func (m mapOutputs) SetOutput([]byte) error { return errors.New("not used") }
func (m mapOutputs) Output(taskID string) ([]byte, error) {
	if b, ok := m[taskID]; ok {
		return b, nil
	}
	return nil, dag.ErrNoOutput
}

func TestOutputOf(t *testing.T) {
	type rows struct {
		N    int    `json:"n"`
		Name string `json:"name"`
	}
	d := dag.New("d")
	fetch := d.Func("fetch", func(*dag.Context) error { return nil })
	silent := d.Shell("silent", "true")
	other := dag.New("other").Func("fetch", func(*dag.Context) error { return nil })
	c := dag.NewContext(context.Background(), dag.RunInfo{DAGID: "d", RunID: "r", TaskID: "load"}, nil,
		mapOutputs{"fetch": []byte(`{"n":3,"name":"x"}`)})

	got, err := dag.OutputOf[rows](c, fetch)
	if err != nil || got != (rows{3, "x"}) {
		t.Errorf("OutputOf[rows](fetch) = %+v, %v; want {3 x}", got, err)
	}
	if n, err := dag.OutputOf[int](c, fetch); err == nil || !strings.Contains(err.Error(), `output of task "fetch"`) {
		t.Errorf("OutputOf[int] of an object = %d, %v; want a decoding error naming the task", n, err)
	}
	if _, err := dag.OutputOf[rows](c, silent); !errors.Is(err, dag.ErrNoOutput) {
		t.Errorf("OutputOf of a task without output: %v, want ErrNoOutput", err)
	}
	if _, err := dag.OutputOf[rows](c, other); err == nil || !strings.Contains(err.Error(), `not a task of DAG "d"`) {
		t.Errorf("OutputOf of another DAG's task: %v, want an error naming the DAG", err)
	}
	if _, err := dag.OutputOf[rows](c, nil); err == nil {
		t.Error("OutputOf(nil task): no error")
	}
	noStore := dag.NewContext(context.Background(), dag.RunInfo{DAGID: "d"}, nil, nil)
	if _, err := dag.OutputOf[rows](noStore, fetch); err == nil {
		t.Error("OutputOf without an output store: no error")
	}
}
