package taskrun

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

func TestTaskEnv(t *testing.T) {
	worker := map[string]string{
		"PATH": "/opt/bin:/usr/bin", "HOME": "/home/w", "LANG": "C.UTF-8", "LC_TIME": "de_DE", "TZ": "UTC",
		"TRELLIS_DATABASE_URL": "postgres://u:pw@db/x", "TRELLIS_API_TOKEN": "tok", "PGPASSWORD": "pw",
		"AWS_PROFILE": "prod", "AWS_SECRET_ACCESS_KEY": "key", "TRELLIS_WORKER_SLOTS": "4",
	}
	var environ []string
	for k, v := range worker {
		environ = append(environ, k+"="+v)
	}
	lookup := func(k string) (string, bool) { v, ok := worker[k]; return v, ok }
	d := dag.New("d", dag.DefaultTaskOptions(dag.Env(map[string]string{"A": "dag", "B": "dag"}), dag.InheritEnv("AWS_PROFILE")))
	plain := d.Shell("plain", "env", dag.Env(map[string]string{"B": "task", "PATH": "/task/bin"}))
	inherit := d.Shell("inherit", "env", dag.InheritEnv("MISSING", "TRELLIS_API_TOKEN"), dag.Env(map[string]string{"TRELLIS_TASK_ID": "forged"}))
	info := dag.RunInfo{DAGID: "d", RunID: "r", TaskID: "plain", TryNumber: 2,
		LogicalDate:   time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		IntervalStart: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), IntervalEnd: time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)}

	cases := []struct {
		name      string
		try       Try
		want      []string
		forbidden []string
	}{
		{"dag default overridden by the task", Try{Task: plain, Info: info, Env: []string{"TRELLIS_WORKER_POOL=p1"}},
			[]string{"A=dag", "B=task", "PATH=/task/bin", "HOME=/home/w", "LANG=C.UTF-8", "LC_TIME=de_DE", "TZ=UTC",
				"AWS_PROFILE=prod", "TRELLIS_WORKER_POOL=p1", "TRELLIS_DAG_ID=d", "TRELLIS_RUN_ID=r", "TRELLIS_TASK_ID=plain",
				"TRELLIS_TRY_NUMBER=2", "TRELLIS_LOGICAL_DATE=2026-01-02T03:04:05Z",
				"TRELLIS_DATA_INTERVAL_START=2026-01-02T00:00:00Z", "TRELLIS_DATA_INTERVAL_END=2026-01-03T00:00:00Z"},
			[]string{"TRELLIS_DATABASE_URL", "TRELLIS_API_TOKEN", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "TRELLIS_WORKER_SLOTS", "MISSING"}},
		{"reserved names are neither inherited nor set", Try{Task: inherit, Info: dag.RunInfo{DAGID: "d", TaskID: "inherit"}},
			[]string{"TRELLIS_TASK_ID=inherit", "PATH=/opt/bin:/usr/bin", "AWS_PROFILE=prod", "A=dag", "B=dag"},
			[]string{"TRELLIS_API_TOKEN", "forged", "MISSING", "TRELLIS_DATA_INTERVAL_START"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := TaskEnv(tc.try, lookup, environ)
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Errorf("missing %q in %q", w, got)
				}
			}
			joined := strings.Join(got, "\n")
			for _, f := range tc.forbidden {
				if strings.Contains(joined, f) {
					t.Errorf("%q leaked into %q", f, got)
				}
			}
			names := map[string]bool{}
			for _, kv := range got {
				k, _, _ := strings.Cut(kv, "=")
				if names[k] {
					t.Errorf("%s set twice in %q", k, got)
				}
				names[k] = true
			}
		})
	}
	// Without PATH in the worker a task still finds the usual programs.
	got := TaskEnv(Try{Task: inherit}, func(string) (string, bool) { return "", false }, []string{})
	if !slices.Contains(got, "PATH="+defaultPath) {
		t.Errorf("no default PATH: %q", got)
	}
}
