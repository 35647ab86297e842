package dag

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// ReservedEnvPrefix starts the names of the variables Trellis sets for a
// task (TRELLIS_DAG_ID, …) and of its own configuration; Env and
// InheritEnv may not use it.
const ReservedEnvPrefix = "TRELLIS_"

// Env sets environment variables of the task's process (Shell tasks, and
// what they start); later calls add to and override earlier ones. Use it
// in DefaultTaskOptions for a DAG-wide default that a task's own Env
// overrides key by key. Func and Branch tasks read them with
// Context.Getenv.
func Env(vars map[string]string) TaskOption {
	return func(t *Task) {
		if len(vars) == 0 {
			return
		}
		m := t.setM()
		if m.env == nil {
			m.env = make(map[string]string, len(vars))
		}
		maps.Copy(m.env, vars)
	}
}

// InheritEnv passes the named variables of the worker's environment on to
// the task (when they are set there). Every other variable of the worker
// is withheld, except the small safe base documented in writing-dags.md.
// Calls add up.
func InheritEnv(names ...string) TaskOption {
	return func(t *Task) {
		for _, n := range names {
			if m := t.setM(); !slices.Contains(m.inherit, n) {
				m.inherit = append(m.inherit, n)
			}
		}
	}
}

// TaskMetrics gives the DAG per-task series in the task metrics
// (trellis_task_duration_seconds and
// trellis_task_instances_finished_total), capped at a fixed number of
// task ids per DAG; without it a DAG's tasks share one series per DAG.
func TaskMetrics() Option { return func(d *DAG) { d.taskMetrics = true } }

// TaskMetrics reports whether the DAG asked for per-task metric series.
func (d *DAG) TaskMetrics() bool { return d.taskMetrics }

// Env returns a copy of the variables set with Env (nil when none).
func (t *Task) Env() map[string]string { return maps.Clone(t.m().env) }

// InheritEnv returns the names of the worker's variables passed on to the
// task, in the order given.
func (t *Task) InheritEnv() []string { return slices.Clone(t.m().inherit) }

// envNameProblem says what is wrong with a variable name, "" if nothing.
func envNameProblem(name string) string {
	switch {
	case name == "":
		return "an empty variable name"
	case strings.ContainsAny(name, "=\x00"):
		return fmt.Sprintf("variable name %q contains '=' or a NUL byte", name)
	case strings.HasPrefix(name, ReservedEnvPrefix):
		return fmt.Sprintf("variable name %q starts with %s, which is reserved for the variables Trellis sets and for its own configuration", name, ReservedEnvPrefix)
	}
	return ""
}

// validateEnv reports the problems of the task's Env and InheritEnv.
func (t *Task) validateEnv(problem func(format string, args ...any)) {
	for _, k := range slices.Sorted(maps.Keys(t.m().env)) {
		if p := envNameProblem(k); p != "" {
			problem("Env: %s", p)
		} else if strings.IndexByte(t.m().env[k], 0) >= 0 {
			problem("Env: the value of %s contains a NUL byte", k)
		}
	}
	for _, n := range t.m().inherit {
		if p := envNameProblem(n); p != "" {
			problem("InheritEnv: %s", p)
		}
	}
}
