package executor

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/executor/internal/testdags"
	"github.com/trellis-dag/trellis/state"
)

// TestTaskEnvironmentHoldsNoSecrets runs a Shell task printing its
// environment (and its worker process's initial one) and a Func task
// reading os.Environ and /proc/self/environ in real worker processes,
// started by a pool whose own environment holds the database URL, the
// API token and PostgreSQL client variables: none of them reaches a
// task, while the DAG's Env, its inherited variable and the try's
// TRELLIS_* variables do.
func TestTaskEnvironmentHoldsNoSecrets(t *testing.T) {
	bin := buildTestbin(t)
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			base := b.url(t)
			dbURL := base
			secrets := []string{"api-token-5ecr3t", "pg-passw0rd-5ecr3t", "NOT_INHERITED", "TRELLIS_API_TOKEN", "TRELLIS_DATABASE_URL", "PGPASSWORD", "PGAPPNAME"}
			if b.name == "postgres" {
				// Trust authentication ignores the password; it only has
				// to stay secret.
				u, err := url.Parse(base)
				if err != nil {
					t.Fatal(err)
				}
				u.User = url.UserPassword(u.User.Username(), "url-passw0rd-5ecr3t")
				dbURL = u.String()
				secrets = append(secrets, "url-passw0rd-5ecr3t", base)
			} else {
				secrets = append(secrets, strings.TrimPrefix(base, "sqlite:"))
			}
			t.Setenv("TRELLIS_DATABASE_URL", dbURL)
			t.Setenv("TRELLIS_API_TOKEN", "api-token-5ecr3t")
			t.Setenv("PGPASSWORD", "pg-passw0rd-5ecr3t")
			t.Setenv("PGAPPNAME", "trellis-env-test") // reaches the store's connection, not the tasks
			t.Setenv(testdags.InheritedVar, "inherited-value")
			t.Setenv("NOT_INHERITED", "hidden-value")

			st := openStore(t, base)
			syncDAGs(t, st, testdags.Registry().DAGs()...)
			env := newProcEnv(t)
			logs := &syncBuffer{}
			newTestPool(t, bin, dbURL, st, env, logs, func(c *PoolConfig) { c.Processes = 1 })
			d := testdags.Registry().Lookup(testdags.Environ)
			startRun(t, st, d, "r1", nil)
			if r := waitRun(t, st, d.ID(), "r1", 60*time.Second); r.State != state.RunSuccess {
				t.Fatalf("run %s; tasks: %s", r.State, describeTasks(t, st, d.ID(), "r1"))
			}

			shell := waitLog(t, st, d.ID(), "r1", "shell_env", 1, "--- end")
			own, parent, _ := strings.Cut(shell[strings.Index(shell, "--- env"):], "--- parent")
			read := func(name string) string {
				b, err := os.ReadFile(filepath.Join(env.dir, name))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			seen := map[string]string{
				"the shell task's environment":                     own,
				"the worker process's initial environment (/proc)": parent,
				"os.Environ in a Func task":                        read(testdags.FuncEnvironName),
				"/proc/self/environ in a Func task":                read(testdags.FuncProcName),
			}
			for where, text := range seen {
				for _, s := range secrets {
					if strings.Contains(text, s) && !(s == "NOT_INHERITED" && where != "the shell task's environment") {
						t.Errorf("%s contains %q:\n%s", where, s, text)
					}
				}
			}
			for _, want := range []string{"FROM_DAG=dag-value\n", "SHARED=task-value\n", testdags.InheritedVar + "=inherited-value\n",
				"TRELLIS_TASK_ID=shell_env\n", "TRELLIS_DAG_ID=environ\n", "TRELLIS_RUN_ID=r1\n", "TRELLIS_TRY_NUMBER=1\n", "PATH="} {
				if !strings.Contains(own, want) {
					t.Errorf("the shell task's environment lacks %q:\n%s", want, own)
				}
			}
			if strings.Contains(own, "hidden-value") {
				t.Errorf("the shell task got a variable it did not inherit:\n%s", own)
			}
			getenv := read(testdags.FuncGetenvName)
			want := "FROM_DAG=dag-value\nSHARED=func-value\n" + testdags.InheritedVar + "=inherited-value\nTRELLIS_TASK_ID=func_env\n"
			if getenv != want {
				t.Errorf("Context.Getenv in the Func task:\n%s\nwant\n%s", getenv, want)
			}
		})
	}
}
