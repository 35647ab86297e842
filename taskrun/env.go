package taskrun

import (
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-dag/trellis/dag"
)

// BaseEnv names the variables of the worker's environment every task
// gets: what programs need to behave (search path, home, user, locale,
// time zone, temporary folder). Every other variable of the worker is
// withheld unless the task inherits it with dag.InheritEnv. Variables
// whose name starts with LC_ are passed on too.
var BaseEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"}

// defaultPath is the PATH of a task when the worker has none.
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

// TaskEnv returns the environment of a try's process, as NAME=value:
// from lookupEnv (the worker's environment, os.LookupEnv when nil) the
// BaseEnv and LC_* variables and those the task inherits
// (dag.InheritEnv); then extra (the executor's pool mark); then the
// variables the task sets (dag.Env); then the TRELLIS_* variables that
// describe the try, which nothing overrides. environ lists the worker's
// variable names (os.Environ when nil), to find the LC_* ones.
func TaskEnv(t Try, lookupEnv func(string) (string, bool), environ []string) []string {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	if environ == nil {
		environ = os.Environ()
	}
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	inherit := func(k string) {
		if v, ok := lookupEnv(k); ok {
			set(k, v)
		}
	}
	for _, k := range BaseEnv {
		inherit(k)
	}
	if _, ok := vars["PATH"]; !ok {
		set("PATH", defaultPath)
	}
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "LC_") {
			inherit(k)
		}
	}
	var own map[string]string
	if t.Task != nil {
		for _, k := range t.Task.InheritEnv() {
			if !strings.HasPrefix(k, dag.ReservedEnvPrefix) {
				inherit(k)
			}
		}
		own = t.Task.Env()
	}
	for _, kv := range t.Env {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	for _, k := range slices.Sorted(maps.Keys(own)) {
		if !strings.HasPrefix(k, dag.ReservedEnvPrefix) {
			set(k, own[k])
		}
	}
	for _, kv := range tryEnv(t.Info) {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// tryEnv returns the TRELLIS_* variables that describe the try.
func tryEnv(info dag.RunInfo) []string {
	env := []string{
		"TRELLIS_DAG_ID=" + info.DAGID,
		"TRELLIS_RUN_ID=" + info.RunID,
		"TRELLIS_TASK_ID=" + info.TaskID,
		"TRELLIS_TRY_NUMBER=" + strconv.Itoa(info.TryNumber),
		"TRELLIS_LOGICAL_DATE=" + rfc3339(info.LogicalDate),
	}
	if !info.IntervalStart.IsZero() || !info.IntervalEnd.IsZero() {
		env = append(env,
			"TRELLIS_DATA_INTERVAL_START="+rfc3339(info.IntervalStart),
			"TRELLIS_DATA_INTERVAL_END="+rfc3339(info.IntervalEnd))
	}
	return append(env, waitEnv(info)...)
}
