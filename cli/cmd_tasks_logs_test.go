package cli

import (
	"context"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestTasksLogs reads, through the command, logs the store wrote with
// AppendLog: the latest try by default, an earlier one with --try, and
// clear errors for what does not exist.
func TestTasksLogs(t *testing.T) {
	u := testdb.SQLite(t)
	env := map[string]string{"TRELLIS_DATABASE_URL": u}
	reg := dag.NewRegistry()
	d := dag.New("logged")
	first := d.Func("first", noop, dag.Retries(2))
	first.SetDownstream(d.Func("second", noop))
	reg.Register(d)

	st := openURL(t, u)
	ctx := context.Background()
	trigger(t, st, reg, "logged", "r1")
	w := testWorker(t, st)
	try1 := claimOne(t, st, w)
	if try1.TaskID != "first" || try1.TryNumber != 1 {
		t.Fatalf("claimed %s try %d, want first try 1", try1.TaskID, try1.TryNumber)
	}
	appendLog(t, st, try1, "try one: starting\n", "try one: failed\n")
	if _, err := st.FinishTasks(ctx, []store.Result{{Try: tryOf(try1), State: state.Failed, Error: "boom", EndedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RequeueRetries(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	try2 := claimOne(t, st, w)
	if try2.TaskID != "first" || try2.TryNumber != 2 {
		t.Fatalf("claimed %s try %d, want first try 2", try2.TaskID, try2.TryNumber)
	}
	appendLog(t, st, try2, "try two: ", "running\n")

	r := runCLI(t, reg, env, "tasks", "logs", "logged", "r1", "first")
	wantCode(t, r, 0)
	if r.stdout != "try two: running\n" {
		t.Errorf("latest log = %q, want try 2's", r.stdout)
	}
	r = runCLI(t, reg, env, "tasks", "logs", "logged", "r1", "first", "--try", "1")
	wantCode(t, r, 0)
	if r.stdout != "try one: starting\ntry one: failed\n" {
		t.Errorf("try 1 log = %q", r.stdout)
	}

	// A DAG gone from the binary still has its logs in the database.
	r = runCLI(t, dag.NewRegistry(), env, "tasks", "logs", "logged", "r1", "first", "--try", "2")
	wantCode(t, r, 0)
	if r.stdout != "try two: running\n" {
		t.Errorf("log with the DAG not in the binary = %q", r.stdout)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown DAG", []string{"nodag", "r1", "first"}, 1, `unknown DAG "nodag"`},
		{"unknown run", []string{"logged", "r9", "first"}, 1, `DAG "logged" has no run "r9"`},
		{"unknown task", []string{"logged", "r1", "third"}, 1, `run "r1" of DAG "logged" has no task "third"`},
		{"try not made", []string{"logged", "r1", "first", "--try", "3"}, 1, `has no try 3: it has had 2 tries`},
		{"not started", []string{"logged", "r1", "second"}, 1, `task "second" of run "r1" of DAG "logged" has not started a try yet (state none)`},
		{"try zero", []string{"logged", "r1", "first", "--try", "0"}, 2, "--try must be at least 1, got 0"},
		{"missing argument", []string{"logged", "r1"}, 2, "takes 3 argument(s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, reg, env, append([]string{"tasks", "logs"}, tc.args...)...)
			wantCode(t, r, tc.code)
			wantContains(t, "stderr", r.stderr, tc.want)
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
		})
	}
}

func tryOf(c store.Claimed) store.Try { return store.Try{ID: c.ID, TryNumber: c.TryNumber} }

// appendLog appends chunks to the log of the try c.
func appendLog(t *testing.T, st store.Store, c store.Claimed, chunks ...string) {
	t.Helper()
	for _, chunk := range chunks {
		if err := st.AppendLog(context.Background(), tryOf(c), []byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
}
