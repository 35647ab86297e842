package executor

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// TestWorkerTypedAndShellOutputs runs, on both stores, a Shell task that
// writes its output to $TRELLIS_OUTPUT, a Func that reads it typed with
// dag.OutputOf and records its own, and a Shell task that writes invalid
// JSON: the outputs are stored with the tries, and the bad one fails with
// a message naming the file.
func TestWorkerTypedAndShellOutputs(t *testing.T) {
	type counts struct {
		Rows int    `json:"rows"`
		Name string `json:"name"`
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			d := dag.New("outputs")
			emit := d.Shell("emit", `printf '{"rows": %d, "name": "%s"}' 3 "$TRELLIS_TASK_ID" > "$TRELLIS_OUTPUT"`)
			typed := d.Func("typed", func(c *dag.Context) error {
				in, err := dag.OutputOf[counts](c, emit)
				if err != nil {
					return err
				}
				return c.SetOutput(counts{Rows: in.Rows * 2, Name: in.Name + "+typed"})
			})
			emit.SetDownstream(typed)
			d.Shell("quiet", "echo nothing for the output")
			d.Shell("bad", `echo '{oops' > "$TRELLIS_OUTPUT"`)
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			newTestWorker(t, st, reg, nil)
			startRun(t, st, d, "r1", nil)
			waitRun(t, st, d.ID(), "r1", 30*time.Second)

			tis := tasksOf(t, st, d.ID(), "r1")
			for _, c := range []struct {
				task   string
				state  state.TaskState
				output string
			}{
				{"emit", state.Success, `{"rows":3,"name":"emit"}`},
				{"typed", state.Success, `{"rows":6,"name":"emit+typed"}`},
				{"quiet", state.Success, ``},
				{"bad", state.Failed, ``},
			} {
				ti := tis[c.task]
				if ti.State != c.state || !sameJSON(ti.Output, c.output) {
					t.Errorf("%s: state %s output %s (error %q), want %s output %s", c.task, ti.State, ti.Output, ti.Error, c.state, c.output)
				}
			}
			if e := tis["bad"].Error; !strings.Contains(e, "$TRELLIS_OUTPUT is not JSON") {
				t.Errorf("bad: error %q, want it to say the output file is not JSON", e)
			}
			out, err := st.GetOutput(t.Context(), tis["typed"].RunID, "typed")
			if err != nil || !sameJSON(out, `{"rows":6,"name":"emit+typed"}`) {
				t.Errorf("GetOutput(typed) = %s, %v", out, err)
			}
		})
	}
}

// sameJSON reports whether got is the JSON value want ("" = no output);
// PostgreSQL's jsonb reorders keys and spaces them.
func sameJSON(got json.RawMessage, want string) bool {
	if want == "" || got == nil {
		return want == "" && got == nil
	}
	var g, w any
	return json.Unmarshal(got, &g) == nil && json.Unmarshal([]byte(want), &w) == nil && reflect.DeepEqual(g, w)
}
