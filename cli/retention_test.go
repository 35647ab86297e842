package cli

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestDBClean: `trellis db clean` prints what it would delete (dry run)
// or deletes it: finished runs that ended before a time or an age.
func TestDBClean(t *testing.T) {
	env, u := sqliteEnv(t)
	reg := runsRegistry()
	for _, ld := range []string{"2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"} {
		wantCode(t, runCLI(t, reg, env, "dags", "trigger", "manual_dag", "--logical-date", ld, "--run-id", "m"+ld[5:10]), 0)
	}
	st := openURL(t, u)
	ctx := context.Background()
	// m01-01 ended 40 days before the CLI's now, m03-01 a day before;
	// m03-02 still runs.
	for id, ago := range map[string]time.Duration{"m01-01": 40 * 24 * time.Hour, "m03-01": 24 * time.Hour} {
		if _, err := st.SetRunState(ctx, "manual_dag", id, state.RunSuccess, testNow.Add(-ago)); err != nil {
			t.Fatal(err)
		}
	}
	r := runCLI(t, reg, env, "db", "clean", "--before", "30d", "--dry-run")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "would delete 1 run, 1 task instance and the logs of 0 tries: the finished runs of every DAG that ended before 2026-02-08T12:30:15Z")
	r = runCLI(t, reg, env, "db", "clean", "--before", "30d", "--dag", "hourly")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "deleted 0 runs", "of DAG hourly")
	if _, err := st.GetRun(ctx, "manual_dag", "m01-01"); err != nil {
		t.Fatalf("m01-01 after a dry run and a clean of another DAG: %v", err)
	}
	r = runCLI(t, reg, env, "db", "clean", "--before", "2026-03-10T00:00:00Z")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "deleted 2 runs, 2 task instances")
	for id, gone := range map[string]bool{"m01-01": true, "m03-01": true, "m03-02": false} {
		_, err := st.GetRun(ctx, "manual_dag", id)
		if gone != errors.Is(err, store.ErrNotFound) {
			t.Errorf("run %s after the clean: %v (want gone: %v)", id, err, gone)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"db", "clean"}, "--before is required"},
		{[]string{"db", "clean", "--before", "soon"}, `--before "soon" is neither a date-time`},
		{[]string{"db", "clean", "--before", "1d", "--dag", "nope"}, `--dag "nope": the database has no such DAG`},
		{[]string{"scheduler", "--retention", "30x"}, `--retention: invalid duration "30x"`},
		{[]string{"scheduler", "--log-retention", "0d"}, "--log-retention must be positive"},
		{[]string{"serve", "--retention", "-1d"}, "--retention: invalid duration"},
	} {
		r := runCLI(t, reg, env, c.args...)
		wantCode(t, r, 2)
		wantContains(t, c.args[1], r.stderr, c.want)
	}
	bad := map[string]string{"TRELLIS_DATABASE_URL": env["TRELLIS_DATABASE_URL"], "TRELLIS_RETENTION": "month"}
	r = runCLI(t, reg, bad, "scheduler")
	wantCode(t, r, 2)
	wantContains(t, "stderr", r.stderr, `environment variable TRELLIS_RETENTION: invalid duration "month"`)
}

// TestSchedulerRetention: `trellis scheduler --retention` deletes old
// finished runs while it runs.
func TestSchedulerRetention(t *testing.T) {
	env, u := sqliteEnv(t)
	reg := runsRegistry()
	wantCode(t, runCLI(t, reg, env, "dags", "trigger", "manual_dag", "--run-id", "old"), 0)
	st := openURL(t, u)
	ctx := context.Background()
	if _, err := st.SetRunState(ctx, "manual_dag", "old", state.RunSuccess, time.Now().Add(-40*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr syncBuffer
	a := &app{registry: reg, stdout: &stdout, stderr: &stderr, clock: clock.Real{},
		lookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		done <- a.execute(runCtx, []string{"scheduler", "--retention", "30d", "--log-retention", "7d"})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := st.GetRun(ctx, "manual_dag", "old")
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("the 40-day-old run is still there after 20 s (%v):\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("scheduler exited %d:\n%s", code, stderr.String())
	}
}
