package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/trellis-dag/trellis/dag"
)

// runFlags are the flags shared by the commands that run tasks locally
// (`dags test`, `tasks test`): the run's conf, logical date and id.
type runFlags struct {
	conf        string
	logicalDate string
	runID       string
}

func (f *runFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.conf, "conf", "", `run configuration, a JSON object overlaying the DAG's params, e.g. '{"rows": 0}'`)
	fs.StringVar(&f.logicalDate, "logical-date", "", "logical date of the run, RFC 3339 (default now, to the second, UTC)")
	fs.StringVar(&f.runID, "run-id", "", `run id (default "manual__<logical date>")`)
}

// localRun is what runFlags resolve to for one DAG.
type localRun struct {
	conf        map[string]any // the --conf object (nil when not given)
	params      map[string]any // the DAG's params overlaid by conf
	logicalDate time.Time
	runID       string
}

// resolve checks the flags and computes the run's parameters for d at now.
// Errors are usage errors naming the flag.
func (f *runFlags) resolve(d *dag.DAG, now time.Time) (localRun, error) {
	var r localRun
	if strings.TrimSpace(f.conf) != "" {
		conf, err := parseConf(f.conf)
		if err != nil {
			return localRun{}, err
		}
		r.conf = conf
	}
	r.params = d.Params()
	if r.params == nil {
		r.params = map[string]any{}
	}
	maps.Copy(r.params, r.conf)

	r.logicalDate = now.UTC().Truncate(time.Second)
	if f.logicalDate != "" {
		t, err := time.Parse(time.RFC3339Nano, f.logicalDate)
		if err != nil {
			return localRun{}, usagef("--logical-date %q: want an RFC 3339 time such as 2026-03-01T00:00:00Z", f.logicalDate)
		}
		r.logicalDate = t
	}
	r.runID = strings.TrimSpace(f.runID)
	if r.runID == "" {
		r.runID = "manual__" + r.logicalDate.Format(time.RFC3339)
	}
	return r, nil
}

// parseConf parses a --conf value: one JSON object.
func parseConf(s string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, usagef("--conf is not valid JSON: %v (want an object, e.g. '{\"rows\": 0}')", err)
	}
	if dec.More() {
		return nil, usagef("--conf has data after its JSON object (want one object, e.g. '{\"rows\": 0}')")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, usagef("--conf must be a JSON object, e.g. '{\"rows\": 0}', not %s", jsonKind(v))
	}
	return obj, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

// dataInterval returns the data interval of a run of d at logical date
// ld: [ld, the schedule's next activation after ld) for a scheduled DAG,
// [ld, ld] for a manual-only one.
func dataInterval(d *dag.DAG, ld time.Time) (start, end time.Time) {
	tt, err := d.ParsedSchedule()
	if err != nil || tt == nil {
		return ld, ld
	}
	if next := tt.Next(ld); !next.IsZero() {
		return ld, next
	}
	return ld, ld
}

// memOutputs is an in-memory dag.OutputIO for `tasks test`: the outputs
// given with --output, read-only.
type memOutputs map[string]json.RawMessage

// SetOutput is not used: taskrun returns a try's own output in its
// Outcome.
func (m memOutputs) SetOutput([]byte) error { return nil }

// Output returns the output given for taskID, or dag.ErrNoOutput.
func (m memOutputs) Output(taskID string) ([]byte, error) {
	b, ok := m[taskID]
	if !ok {
		return nil, fmt.Errorf("task %q: %w (give it with --output %s=JSON)", taskID, dag.ErrNoOutput, taskID)
	}
	return bytes.Clone(b), nil
}
