package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	dotparser "gonum.org/v1/gonum/graph/formats/dot"
	"gonum.org/v1/gonum/graph/formats/dot/ast"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	_ "github.com/trellis-dag/trellis/dags" // the example DAGs, in dag.Default() as in cmd/trellis
)

// testNow is the fake "now" of every in-process command run.
var testNow = time.Date(2026, 3, 10, 12, 30, 15, 0, time.UTC)

var startDate = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of task
// logs and progress lines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs the trellis command line args in-process against reg, with
// the environment env and the clock at testNow.
func runCLI(t *testing.T, reg *dag.Registry, env map[string]string, args ...string) cliResult {
	t.Helper()
	var stdout, stderr syncBuffer
	a := &app{
		registry: reg,
		stdout:   &stdout,
		stderr:   &stderr,
		lookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
		clock: clock.NewFake(testNow),
	}
	code := a.execute(context.Background(), args)
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func (r cliResult) String() string {
	return "exit " + strconv.Itoa(r.code) + "\n--- stdout:\n" + r.stdout + "--- stderr:\n" + r.stderr
}

func wantCode(t *testing.T, r cliResult, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got:\n%s", code, r)
	}
}

func wantContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}

func noop(*dag.Context) error { return nil }

// chain adds Func tasks named ids to d, each downstream of the previous.
func chain(d *dag.DAG, ids ...string) []*dag.Task {
	var ts []*dag.Task
	for i, id := range ids {
		t := d.Func(id, noop)
		if i > 0 {
			ts[i-1].SetDownstream(t)
		}
		ts = append(ts, t)
	}
	return ts
}

// cycleRegistry holds one DAG whose tasks form the cycle a -> b -> c -> a.
func cycleRegistry() *dag.Registry {
	reg := dag.NewRegistry()
	d := dag.New("cyclic")
	ts := chain(d, "a", "b", "c")
	ts[2].SetDownstream(ts[0])
	reg.Register(d)
	return reg
}

// mixedRegistry holds a good DAG and three bad ones, each with a different
// problem.
func mixedRegistry() *dag.Registry {
	reg := dag.NewRegistry()

	good := dag.New("good", dag.Schedule("@hourly"), dag.StartDate(startDate))
	chain(good, "first", "second")
	reg.Register(good)

	cyc := dag.New("cyclic")
	ts := chain(cyc, "a", "b", "c")
	ts[2].SetDownstream(ts[0])
	reg.Register(cyc)

	sched := dag.New("bad_schedule", dag.Schedule("61 * * * *"), dag.StartDate(startDate))
	chain(sched, "only")
	reg.Register(sched)

	dup := dag.New("dup_tasks")
	dup.Func("same", noop)
	dup.Func("same", noop)
	reg.Register(dup)
	return reg
}

func TestValidateCycle(t *testing.T) {
	r := runCLI(t, cycleRegistry(), nil, "dags", "validate")
	wantCode(t, r, 1)
	wantContains(t, "stdout", r.stdout, "a -> b -> c -> a", `dag "cyclic"`)
}

func TestValidateListsProblemsOfEveryDAG(t *testing.T) {
	r := runCLI(t, mixedRegistry(), nil, "dags", "validate")
	wantCode(t, r, 1)
	wantContains(t, "stdout", r.stdout,
		`dag "cyclic"`, "a -> b -> c -> a",
		`dag "bad_schedule"`, `"61 * * * *"`,
		`dag "dup_tasks": task "same"`, "duplicate task id",
		"3 problems in 3 DAGs of 4")
	if strings.Contains(r.stdout, `dag "good"`) {
		t.Errorf("the good DAG is reported:\n%s", r.stdout)
	}
}

func TestValidateClean(t *testing.T) {
	r := runCLI(t, dag.Default(), nil, "dags", "validate")
	wantCode(t, r, 0)
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 1 {
		t.Fatalf("want a one-line summary, got:\n%s", r.stdout)
	}
	n := len(dag.Default().DAGs())
	wantContains(t, "stdout", r.stdout, strconv.Itoa(n)+" DAGs with ", "no problems found")
}

func TestListTable(t *testing.T) {
	reg := dag.NewRegistry()
	hourly := dag.New("hourly", dag.Schedule("@hourly"), dag.StartDate(startDate), dag.Tags("a", "b"))
	chain(hourly, "x", "y", "z")
	reg.Register(hourly)
	manual := dag.New("manual_only")
	chain(manual, "x")
	reg.Register(manual)

	r := runCLI(t, reg, nil, "dags", "list")
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows, got:\n%s", r.stdout)
	}
	wantContains(t, "header", lines[0], "DAG ID", "SCHEDULE", "NEXT RUN", "TASKS", "TAGS")
	// testNow is 12:30:15, so the next hourly run is created at 13:00.
	if f := strings.Fields(lines[1]); len(f) != 5 || f[0] != "hourly" || f[1] != "@hourly" ||
		f[2] != "2026-03-10T13:00:00Z" || f[3] != "3" || f[4] != "a,b" {
		t.Errorf("hourly row = %q", lines[1])
	}
	if f := strings.Fields(lines[2]); len(f) != 5 || f[0] != "manual_only" || f[1] != "manual" || f[2] != "-" || f[3] != "1" {
		t.Errorf("manual row = %q", lines[2])
	}
}

func TestListJSONAndProblems(t *testing.T) {
	r := runCLI(t, mixedRegistry(), nil, "dags", "list", "--format", "json")
	wantCode(t, r, 1) // the registry has problems
	var rows []dagListing
	if err := jsonUnmarshal(r.stdout, &rows); err != nil {
		t.Fatalf("stdout is not a JSON list: %v\n%s", err, r)
	}
	if len(rows) != 4 {
		t.Fatalf("want 4 DAGs, got %d", len(rows))
	}
	// Sorted by id.
	ids := []string{rows[0].DAGID, rows[1].DAGID, rows[2].DAGID, rows[3].DAGID}
	if strings.Join(ids, " ") != "bad_schedule cyclic dup_tasks good" {
		t.Errorf("ids = %v", ids)
	}
	if rows[0].Error == "" || rows[0].NextRun != nil {
		t.Errorf("bad_schedule row = %+v, want a schedule error and no next run", rows[0])
	}
	if rows[3].NextRun == nil || !rows[3].NextRun.Equal(time.Date(2026, 3, 10, 13, 0, 0, 0, time.UTC)) {
		t.Errorf("good next run = %v", rows[3].NextRun)
	}
	wantContains(t, "stderr", r.stderr, "3 problems", "a -> b -> c -> a")
}

func TestShowDOTRenders(t *testing.T) {
	r := runCLI(t, dag.Default(), nil, "dags", "show", "test", "--format", "dot")
	wantCode(t, r, 0)

	f, err := dotparser.ParseString(r.stdout)
	if err != nil {
		t.Fatalf("DOT output does not parse: %v\n%s", err, r.stdout)
	}
	if len(f.Graphs) != 1 || !f.Graphs[0].Directed {
		t.Fatalf("want one digraph, got %d graphs", len(f.Graphs))
	}
	var edges []string
	for _, st := range f.Graphs[0].Stmts {
		if e, ok := st.(*ast.EdgeStmt); ok {
			edges = append(edges, dotID(e.From)+" -> "+dotID(e.To.Vertex))
		}
	}
	if len(edges) != 1 || edges[0] != "print_test1 -> print_test2" {
		t.Errorf("edges = %v, want [print_test1 -> print_test2]", edges)
	}
}

// TestShowDOTGraphviz renders the DOT output with Graphviz itself when it
// is installed. It is optional: TestShowDOTRenders checks the output with
// gonum's DOT parser on every machine.
func TestShowDOTGraphviz(t *testing.T) {
	dotBin, err := exec.LookPath("dot")
	if err != nil {
		t.Skipf("Graphviz is not installed (apt-get install -y graphviz), so the DOT output is only checked by the parser: %v", err)
	}
	r := runCLI(t, dag.Default(), nil, "dags", "show", "test", "--format", "dot")
	wantCode(t, r, 0)
	cmd := exec.Command(dotBin, "-Tsvg")
	cmd.Stdin = strings.NewReader(r.stdout)
	var svg, dotErr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &svg, &dotErr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dot -Tsvg failed: %v\n%s", err, dotErr.String())
	}
	wantContains(t, "SVG", svg.String(), "<svg", "print_test1", "print_test2")
}

func dotID(v ast.Vertex) string {
	n, ok := v.(*ast.Node)
	if !ok {
		return "?"
	}
	if s, err := strconv.Unquote(n.ID); err == nil {
		return s
	}
	return n.ID
}

func TestShowFormats(t *testing.T) {
	r := runCLI(t, dag.Default(), nil, "dags", "show", "etl_example")
	wantCode(t, r, 0)
	wantContains(t, "text", r.stdout, "etl_example", "extract", "choose_load", "cleanup")

	r = runCLI(t, dag.Default(), nil, "dags", "show", "etl_example", "-f", "json")
	wantCode(t, r, 0)
	var g dag.JSONDAG
	if err := jsonUnmarshal(r.stdout, &g); err != nil {
		t.Fatalf("JSON output: %v\n%s", err, r.stdout)
	}
	if g.DAGID != "etl_example" || len(g.Tasks) != 7 || len(g.Edges) != 8 {
		t.Errorf("JSON: dag %q, %d tasks, %d edges; want etl_example, 7, 8", g.DAGID, len(g.Tasks), len(g.Edges))
	}
}

func TestShowPolicyOnInvalidRegistry(t *testing.T) {
	// A good DAG is shown; the other DAGs' problems are warnings.
	r := runCLI(t, mixedRegistry(), nil, "dags", "show", "good")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "first", "second")
	wantContains(t, "stderr", r.stderr, "warning", "a -> b -> c -> a")

	// A DAG with problems of its own is refused, with its problems.
	r = runCLI(t, mixedRegistry(), nil, "dags", "show", "cyclic")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, `DAG "cyclic" is invalid`, "a -> b -> c -> a")
	if r.stdout != "" {
		t.Errorf("an invalid DAG was shown:\n%s", r.stdout)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"dags", "list", "--bogus"}, []string{"unknown flag: --bogus", "trellis dags list --help"}},
		{[]string{"--workers", "many", "dags", "list"}, []string{"--workers"}},
		{[]string{"dagz"}, []string{`unknown command "dagz"`, `did you mean dags`}},
		{[]string{"dags", "lst"}, []string{`unknown command "lst" for "trellis dags"`, "list"}},
		{[]string{"dags", "show"}, []string{"takes 1 argument", "show DAG_ID"}},
		{[]string{"dags", "show", "test", "extra"}, []string{"takes 1 argument"}},
		{[]string{"dags", "show", "test", "--format", "png"}, []string{`--format "png"`, "text, dot or json"}},
		{[]string{"dags", "list", "--format", "yaml"}, []string{`--format "yaml"`}},
		{[]string{"dags", "show", "nope"}, []string{`unknown DAG "nope"`, "trellis dags list"}},
		{[]string{"dags", "show", "etl_exampel"}, []string{`unknown DAG "etl_exampel"`, `did you mean "etl_example"`}},
		{[]string{"tasks", "test", "test", "nope"}, []string{`DAG "test" has no task "nope"`, "print_test1, print_test2"}},
		{[]string{"tasks", "test", "test", "print_test1", "--conf", "{bad"}, []string{"--conf is not valid JSON"}},
		{[]string{"tasks", "test", "test", "print_test1", "--conf", "[1]"}, []string{"--conf must be a JSON object", "not an array"}},
		{[]string{"tasks", "test", "test", "print_test1", "--logical-date", "yesterday"}, []string{`--logical-date "yesterday"`, "RFC 3339"}},
		{[]string{"tasks", "test", "test", "print_test1", "--try-number", "0"}, []string{"--try-number must be at least 1"}},
		{[]string{"tasks", "test", "etl_example", "transform", "--output", "extract={"}, []string{"not valid JSON"}},
		{[]string{"tasks", "test", "etl_example", "transform", "--output", "nope=1"}, []string{`has no task "nope"`}},
		{[]string{"version", "now"}, []string{"takes 0 argument"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runCLI(t, dag.Default(), nil, tc.args...)
			wantCode(t, r, 2)
			wantContains(t, "stderr", r.stderr, tc.want...)
			wantContains(t, "stderr", r.stderr, "--help' for usage")
		})
	}
}

func TestGroupWithoutSubcommandPrintsHelp(t *testing.T) {
	r := runCLI(t, dag.Default(), nil, "dags")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "Available Commands:", "validate", "list", "show")
}

func TestVersion(t *testing.T) {
	r := runCLI(t, dag.Default(), nil, "version")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "trellis ", runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)

	r = runCLI(t, dag.Default(), nil, "version", "--json")
	wantCode(t, r, 0)
	var bi buildInfo
	if err := jsonUnmarshal(r.stdout, &bi); err != nil {
		t.Fatalf("version --json: %v\n%s", err, r.stdout)
	}
	if bi.GoVersion != runtime.Version() || bi.Version == "" {
		t.Errorf("version --json = %+v", bi)
	}
}

func TestTasksTest(t *testing.T) {
	r := runCLI(t, dag.Default(), nil, "tasks", "test", "test", "print_test1")
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "msg=test1", "outcome:  success")

	// extract fails on its first try by design, and succeeds on the second.
	r = runCLI(t, dag.Default(), nil, "tasks", "test", "etl_example", "extract")
	wantCode(t, r, 1)
	wantContains(t, "stdout", r.stdout, "outcome:  failed", "simulated transient failure")

	r = runCLI(t, dag.Default(), nil, "tasks", "test", "etl_example", "extract", "--try-number", "2", "--conf", `{"rows": 3}`)
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "outcome:  success", `output:   [{"id":1,`, `{"id":3,`)

	// The branch reads the given upstream output.
	r = runCLI(t, dag.Default(), nil, "tasks", "test", "etl_example", "choose_load", "--output", `transform={"rows": 0}`)
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "follows:  skip_load")

	// Without the upstream output the task fails and says how to give it.
	r = runCLI(t, dag.Default(), nil, "tasks", "test", "etl_example", "choose_load")
	wantCode(t, r, 1)
	wantContains(t, "stdout", r.stdout, "--output transform=JSON")
}

func TestConfigFromFlagsAndEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(Config) bool
		wantErr string
	}{
		{name: "defaults", check: func(c Config) bool {
			return c.DatabaseURL == "sqlite:trellis.db" && c.Addr == "127.0.0.1:8080" &&
				c.Workers == runtime.NumCPU() && c.APIToken == "" && c.LogFormat == "text"
		}},
		{name: "env", env: map[string]string{
			"TRELLIS_DATABASE_URL": "postgres://u:p@db/trellis", "TRELLIS_ADDR": "0.0.0.0:9000",
			"TRELLIS_WORKERS": "3", "TRELLIS_API_TOKEN": "s3cret-s3cret-s3cret", "TRELLIS_LOG_LEVEL": "debug", "TRELLIS_LOG_FORMAT": "json",
		}, check: func(c Config) bool {
			return c.DatabaseURL == "postgres://u:p@db/trellis" && c.Addr == "0.0.0.0:9000" && c.Workers == 3 &&
				c.APIToken == "s3cret-s3cret-s3cret" && c.LogLevel.String() == "DEBUG" && c.LogFormat == "json"
		}},
		{name: "flag wins over env", args: []string{"--addr", "127.0.0.1:1", "--workers", "5"},
			env:   map[string]string{"TRELLIS_ADDR": "0.0.0.0:9000", "TRELLIS_WORKERS": "3"},
			check: func(c Config) bool { return c.Addr == "127.0.0.1:1" && c.Workers == 5 }},
		{name: "empty env is unset", env: map[string]string{"TRELLIS_ADDR": ""},
			check: func(c Config) bool { return c.Addr == defaultAddr }},
		{name: "bad workers env", env: map[string]string{"TRELLIS_WORKERS": "lots"}, wantErr: `environment variable TRELLIS_WORKERS="lots"`},
		{name: "zero workers", args: []string{"--workers", "0"}, wantErr: "--workers must be at least 1"},
		{name: "zero workers env", env: map[string]string{"TRELLIS_WORKERS": "0"}, wantErr: "environment variable TRELLIS_WORKERS must be at least 1"},
		{name: "bad level", args: []string{"--log-level", "loud"}, wantErr: `"loud" is not a log level`},
		{name: "bad format env", env: map[string]string{"TRELLIS_LOG_FORMAT": "xml"}, wantErr: `TRELLIS_LOG_FORMAT: "xml" is not a log format`},
		{name: "empty database", args: []string{"--database-url", ""}, wantErr: "--database-url is empty"},
		{name: "secrets from files (flags)", args: []string{"--database-url-file", secretFile(t, "postgres://u:filepw@db/x\n"), "--api-token-file", secretFile(t, "  tok-from-file-0123456789 \n")},
			env: map[string]string{"TRELLIS_DATABASE_URL": "sqlite:ignored.db", "TRELLIS_API_TOKEN": "ignored"},
			check: func(c Config) bool {
				return c.DatabaseURL == "postgres://u:filepw@db/x" && c.APIToken == "tok-from-file-0123456789"
			}},
		{name: "secrets from files (env)", env: map[string]string{"TRELLIS_DATABASE_URL_FILE": secretFile(t, "postgres://u:envpw@db/x"), "TRELLIS_API_TOKEN_FILE": secretFile(t, "tok2-from-env-file-0123")},
			check: func(c Config) bool {
				return c.DatabaseURL == "postgres://u:envpw@db/x" && c.APIToken == "tok2-from-env-file-0123"
			}},
		{name: "flag beats env file", args: []string{"--api-token", "flag-token-0123456789"}, env: map[string]string{"TRELLIS_API_TOKEN_FILE": "/nonexistent"},
			check: func(c Config) bool { return c.APIToken == "flag-token-0123456789" }},
		{name: "value and file flags", args: []string{"--api-token", "a", "--api-token-file", "/x"}, wantErr: "give --api-token or --api-token-file, not both"},
		{name: "value and file env", env: map[string]string{"TRELLIS_DATABASE_URL": "sqlite:a.db", "TRELLIS_DATABASE_URL_FILE": "/x"},
			wantErr: "set environment variable TRELLIS_DATABASE_URL or TRELLIS_DATABASE_URL_FILE, not both"},
		{name: "missing file", args: []string{"--database-url-file", "/nonexistent/db-url"}, wantErr: "--database-url-file: open /nonexistent/db-url"},
		{name: "empty file", env: map[string]string{"TRELLIS_API_TOKEN_FILE": secretFile(t, "\n")}, wantErr: "environment variable TRELLIS_API_TOKEN_FILE: file"},
		{name: "short token", env: map[string]string{"TRELLIS_API_TOKEN": "x"},
			wantErr: "environment variable TRELLIS_API_TOKEN: the API token is 1 characters long; it must have at least 16"},
		{name: "short token flag", args: []string{"--api-token", "s3cret"}, wantErr: "--api-token: the API token is 6 characters long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			addConfigFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := resolveConfig(fs, func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if tc.wantErr != "" {
				var ue *usageError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(cfg) {
				t.Errorf("config = %+v", cfg)
			}
		})
	}
}

// secretFile writes content to a new file and returns its path.
func secretFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigStringHidesSecrets(t *testing.T) {
	c := Config{DatabaseURL: "postgres://user:hunter2@db:5432/trellis", Addr: defaultAddr, Workers: 2, APIToken: "tok3n", LogFormat: "text"}
	s := c.String()
	if strings.Contains(s, "hunter2") || strings.Contains(s, "tok3n") {
		t.Errorf("String leaks a secret: %s", s)
	}
	wantContains(t, "String", s, "postgres://user:xxxxx@db:5432/trellis", "api-token=set", "workers=2")
}

func TestBadEnvironmentIsAUsageError(t *testing.T) {
	r := runCLI(t, dag.Default(), map[string]string{"TRELLIS_LOG_FORMAT": "xml"}, "dags", "validate")
	wantCode(t, r, 2)
	wantContains(t, "stderr", r.stderr, "TRELLIS_LOG_FORMAT")
}

// TestCommandTree checks that every registered command is attached and has
// complete help, and that --help works for each.
func TestCommandTree(t *testing.T) {
	a := &app{registry: dag.Default(), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, clock: clock.NewFake(testNow)}
	root, err := newRoot(a, commandDefs)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden {
				continue
			}
			paths = append(paths, sub.CommandPath())
			if sub.Short == "" || sub.Long == "" {
				t.Errorf("%s: Short and Long help must be set", sub.CommandPath())
			}
			if !sub.HasSubCommands() && sub.Example == "" {
				t.Errorf("%s: no Example", sub.CommandPath())
			}
			walk(sub)
		}
	}
	walk(root)
	for _, want := range []string{"trellis dags list", "trellis dags show", "trellis dags validate",
		"trellis dags test", "trellis tasks test", "trellis version"} {
		found := false
		for _, p := range paths {
			found = found || p == want
		}
		if !found {
			t.Errorf("command %q is not registered (have %v)", want, paths)
		}
	}
	for _, p := range paths {
		args := append(strings.Fields(p)[1:], "--help")
		r := runCLI(t, dag.Default(), nil, args...)
		wantCode(t, r, 0)
		wantContains(t, p+" --help", r.stdout, "Usage:", p)
	}
}

func TestCommandRegistrationErrors(t *testing.T) {
	a := &app{registry: dag.Default(), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, clock: clock.NewFake(testNow)}
	leaf := func(*app) *cobra.Command { return &cobra.Command{Use: "extra", Short: "s", Long: "l"} }

	_, err := newRoot(a, append(append([]commandDef(nil), commandDefs...), commandDef{parent: "nosuch", build: leaf}))
	if err == nil || !strings.Contains(err.Error(), `no command "nosuch"`) {
		t.Errorf("unknown parent: err = %v", err)
	}
	_, err = newRoot(a, append(append([]commandDef(nil), commandDefs...), commandDef{parent: "dags", build: newDAGsListCmd}))
	if err == nil || !strings.Contains(err.Error(), `"list" registered twice`) {
		t.Errorf("duplicate: err = %v", err)
	}
	// A group and its child registered in any order: the child waits for
	// its parent.
	group := func(*app) *cobra.Command { return groupCommand("extras", "s", "l") }
	root, err := newRoot(a, append([]commandDef{{parent: "extras", build: leaf}}, commandDef{parent: "", build: group}))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := findCommand(root, "extras extra"); err != nil || c.Name() != "extra" {
		t.Errorf("extras extra: %v, %v", c, err)
	}
}

func TestNextRun(t *testing.T) {
	at := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	now := at("2026-03-10T12:30:15Z")
	for _, tc := range []struct {
		name, expr, start, end string
		want                   string // "" = none
	}{
		{name: "hourly, started long ago", expr: "@hourly", start: "2026-01-01T00:00:00Z", want: "2026-03-10T13:00:00Z"},
		{name: "seconds field", expr: "*/10 * * * * *", start: "2026-01-01T00:00:00Z", want: "2026-03-10T12:30:20Z"},
		{name: "no start date", expr: "@daily", want: "2026-03-11T00:00:00Z"},
		// First interval [start, next) is created at its end.
		{name: "start in the future", expr: "@daily", start: "2026-04-01T00:00:00Z", want: "2026-04-02T00:00:00Z"},
		{name: "start between activations", expr: "@daily", start: "2026-04-01T06:00:00Z", want: "2026-04-03T00:00:00Z"},
		// The interval [00:00, 00:00+1d) started at or after a start of
		// today 00:00 ends tomorrow.
		{name: "start earlier today", expr: "@daily", start: "2026-03-10T00:00:00Z", want: "2026-03-11T00:00:00Z"},
		// No activation since start: the first interval starts tomorrow.
		{name: "start earlier today after activation", expr: "@daily", start: "2026-03-10T06:00:00Z", want: "2026-03-12T00:00:00Z"},
		{name: "end in the future", expr: "@hourly", start: "2026-01-01T00:00:00Z", end: "2026-12-31T00:00:00Z", want: "2026-03-10T13:00:00Z"},
		// The interval [12:00, 13:00) starts before end 12:10: it runs.
		{name: "end inside the current interval", expr: "@hourly", start: "2026-01-01T00:00:00Z", end: "2026-03-10T12:10:00Z", want: "2026-03-10T13:00:00Z"},
		{name: "end passed", expr: "@hourly", start: "2026-01-01T00:00:00Z", end: "2026-03-10T11:10:00Z"},
		{name: "future start after end", expr: "@daily", start: "2026-04-01T06:00:00Z", end: "2026-04-01T12:00:00Z"},
		{name: "zone", expr: "CRON_TZ=Asia/Tokyo 0 9 * * *", start: "2026-01-01T00:00:00Z", want: "2026-03-11T00:00:00Z"},
		{name: "every, aligned on start", expr: "@every 45m", start: "2026-03-10T10:00:00Z", want: "2026-03-10T13:00:00Z"},
		{name: "every, start in the future", expr: "@every 1h", start: "2026-03-11T00:00:00Z", want: "2026-03-11T01:00:00Z"},
		{name: "every, no start", expr: "@every 1h", want: "2026-03-10T13:30:15Z"},
		{name: "every, end passed", expr: "@every 1h", start: "2026-03-01T00:00:00Z", end: "2026-03-05T00:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tt, err := dag.ParseSchedule(tc.expr)
			if err != nil {
				t.Fatal(err)
			}
			var start, end time.Time
			if tc.start != "" {
				start = at(tc.start)
			}
			if tc.end != "" {
				end = at(tc.end)
			}
			got, ok := nextRun(tt, start, end, now)
			if tc.want == "" {
				if ok {
					t.Fatalf("want no next run, got %v", got)
				}
				return
			}
			if !ok || !got.Equal(at(tc.want)) {
				t.Fatalf("next run = %v (ok %v), want %s", got.UTC(), ok, tc.want)
			}
		})
	}
}

func TestSuggest(t *testing.T) {
	ids := []string{"etl_example", "test", "backup_automation"}
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"etl_exampel", "etl_example"},
		{"tset", "test"},
		{"backup", "backup_automation"},
		{"zzz", ""},
	} {
		if got := strings.Join(suggest(tc.in, ids), ","); got != tc.want {
			t.Errorf("suggest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if d := levenshtein("kitten", "sitting"); d != 3 {
		t.Errorf("levenshtein(kitten, sitting) = %d, want 3", d)
	}
}

// jsonUnmarshal decodes s, which must hold exactly one JSON value, into v,
// rejecting unknown fields.
func jsonUnmarshal(s string, v any) error {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}

func TestDAGsTestETLExample(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir()) // the example writes its warehouse file there
	r := runCLI(t, dag.Default(), nil, "dags", "test", "etl_example", "--logical-date", "2026-03-01T00:00:00Z")
	wantCode(t, r, 0)
	// One progress line per task, then the summary table.
	for _, id := range []string{"extract", "transform", "choose_load", "load", "skip_load", "report", "cleanup"} {
		if n := strings.Count(r.stdout, "] "+id+" "); n != 1 {
			t.Errorf("want 1 progress line for %s, got %d:\n%s", id, n, r.stdout)
		}
	}
	wantContains(t, "stdout", r.stdout, "SUCCESS", "6 success, 1 skipped", "TASK", "STATE", "TRIES")
	summary := r.stdout[strings.Index(r.stdout, "TASK "):]
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(summary), "\n")[1:] {
		f := strings.Fields(line)
		rows[f[0]] = f
	}
	for id, want := range map[string][2]string{
		"extract": {"success", "2"}, "transform": {"success", "1"}, "choose_load": {"success", "1"},
		"load": {"success", "1"}, "skip_load": {"skipped", "0"}, "report": {"success", "1"}, "cleanup": {"success", "1"},
	} {
		if f := rows[id]; len(f) < 3 || f[1] != want[0] || f[2] != want[1] {
			t.Errorf("summary row of %s = %v, want state %s, tries %s", id, f, want[0], want[1])
		}
	}
	// Task logs go to stderr, prefixed by task and try.
	wantContains(t, "stderr", r.stderr, "[extract try=1]", "simulated transient failure", "[load try=1]", "loaded daily sales")
}

func TestDAGsTestJSON(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	r := runCLI(t, dag.Default(), nil, "dags", "test", "etl_example", "--json", "--conf", `{"rows": 0}`)
	wantCode(t, r, 0)
	// CONTRACT §4: {"dag_id", "state", "tasks": {"<id>": {"state", "try_number"}}}.
	var got struct {
		DAGID string `json:"dag_id"`
		RunID string `json:"run_id"`
		State string `json:"state"`
		Tasks map[string]struct {
			State     string `json:"state"`
			TryNumber *int   `json:"try_number"`
			Error     string `json:"error"`
		} `json:"tasks"`
	}
	if err := jsonUnmarshal(r.stdout, &got); err != nil {
		t.Fatalf("stdout is not one JSON object of the contract's form: %v\n%s", err, r)
	}
	if got.DAGID != "etl_example" || got.State != "success" || len(got.Tasks) != 7 {
		t.Fatalf("result = %+v", got)
	}
	for id, want := range map[string]struct {
		state string
		try   int
	}{
		"extract": {"success", 2}, "transform": {"success", 1}, "choose_load": {"success", 1},
		"load": {"skipped", 0}, "skip_load": {"success", 1}, "report": {"success", 1}, "cleanup": {"success", 1},
	} {
		ti := got.Tasks[id]
		if ti.State != want.state || ti.TryNumber == nil || *ti.TryNumber != want.try {
			t.Errorf("task %s = %+v, want state %s try_number %d", id, ti, want.state, want.try)
		}
	}
	// Progress lines went to stderr, not into the JSON.
	wantContains(t, "stderr", r.stderr, "] extract ")
}

// failingRegistry holds a DAG whose second task fails, so its third is
// upstream_failed.
func failingRegistry() *dag.Registry {
	reg := dag.NewRegistry()
	d := dag.New("failing")
	ok := d.Func("ok", noop)
	boom := d.Func("boom", func(*dag.Context) error { return errors.New("disk on fire") }, dag.Retries(1), dag.RetryDelay(time.Millisecond))
	after := d.Shell("after", "echo never")
	ok.SetDownstream(boom)
	boom.SetDownstream(after)
	reg.Register(d)
	return reg
}

func TestDAGsTestFailingDAGExits1(t *testing.T) {
	r := runCLI(t, failingRegistry(), nil, "dags", "test", "failing")
	wantCode(t, r, 1)
	wantContains(t, "stdout", r.stdout, "FAILED", "disk on fire", "upstream_failed")
	summary := r.stdout[strings.Index(r.stdout, "TASK "):]
	for _, line := range strings.Split(summary, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "boom" && (f[1] != "failed" || f[2] != "2") {
			t.Errorf("boom row = %q, want failed after 2 tries", line)
		}
	}

	r = runCLI(t, failingRegistry(), nil, "dags", "test", "failing", "--json")
	wantCode(t, r, 1)
	var got struct {
		State string `json:"state"`
		Tasks map[string]struct {
			State string `json:"state"`
		} `json:"tasks"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("--json of a failed run: %v\n%s", err, r)
	}
	if got.State != "failed" || got.Tasks["boom"].State != "failed" || got.Tasks["after"].State != "upstream_failed" {
		t.Errorf("failed run = %+v", got)
	}
}

func TestDAGsTestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dags", "test", "nope"}, `unknown DAG "nope"; run "trellis dags list"`},
		{[]string{"dags", "test", "etl_example", "--conf", `{"rows": 0`}, "--conf is not valid JSON"},
		{[]string{"dags", "test", "etl_example", "--conf", `"rows"`}, "--conf must be a JSON object"},
		{[]string{"dags", "test", "etl_example", "--conf", `{} {}`}, "--conf has data after its JSON object"},
		{[]string{"dags", "test", "etl_example", "--logical-date", "2026-03-01"}, "--logical-date"},
		{[]string{"dags", "test", "etl_example", "--parallelism", "0"}, "--parallelism must be at least 1"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runCLI(t, dag.Default(), nil, tc.args...)
			wantCode(t, r, 2)
			wantContains(t, "stderr", r.stderr, tc.want)
			if strings.Contains(r.stdout, "running DAG") {
				t.Errorf("the DAG ran despite the usage error:\n%s", r.stdout)
			}
		})
	}
}

func TestDAGsTestRefusesInvalidDAG(t *testing.T) {
	r := runCLI(t, mixedRegistry(), nil, "dags", "test", "cyclic")
	wantCode(t, r, 1)
	wantContains(t, "stderr", r.stderr, "a -> b -> c -> a")
	if strings.Contains(r.stdout, "running DAG") {
		t.Errorf("an invalid DAG ran:\n%s", r.stdout)
	}
	// A valid DAG of the same registry runs, with warnings.
	r = runCLI(t, mixedRegistry(), nil, "dags", "test", "good")
	wantCode(t, r, 0)
	wantContains(t, "stderr", r.stderr, "warning: other DAGs have 3 problems")
}

func TestDAGsTestLogDir(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	dir := t.TempDir()
	r := runCLI(t, dag.Default(), nil, "dags", "test", "etl_example", "--log-dir", dir, "--run-id", "r1")
	wantCode(t, r, 0)
	if strings.Contains(r.stderr, "[extract") {
		t.Errorf("task logs went to stderr despite --log-dir:\n%s", r.stderr)
	}
	for file, want := range map[string]string{
		"extract/1.log": "simulated transient failure",
		"extract/2.log": "extracted orders",
		"load/1.log":    "loaded daily sales",
	} {
		b, err := os.ReadFile(filepath.Join(dir, "etl_example", "r1", file))
		if err != nil {
			t.Fatalf("log file: %v", err)
		}
		if !strings.Contains(string(b), want) || strings.Contains(string(b), "[extract") || strings.Contains(string(b), "[load") {
			t.Errorf("%s = %q, want %q without the task prefix", file, b, want)
		}
	}
}

func TestParseLogPrefix(t *testing.T) {
	for _, tc := range []struct {
		line            string
		task, try, body string
		ok              bool
	}{
		{"[extract try=2] hello\n", "extract", "2", "hello\n", true},
		{"[a.b-c try=10] x] y\n", "a.b-c", "10", "x] y\n", true},
		{"no prefix\n", "", "", "", false},
		{"[extract try=x] hello\n", "", "", "", false},
		{"[extract] hello\n", "", "", "", false},
	} {
		task, try, body, ok := parseLogPrefix([]byte(tc.line))
		if ok != tc.ok || task != tc.task || try != tc.try || string(body) != tc.body {
			t.Errorf("parseLogPrefix(%q) = %q %q %q %v", tc.line, task, try, body, ok)
		}
	}
	for in, want := range map[string]string{"manual__2026-01-01T00:00:00+00:00": "manual__2026-01-01T00_00_00_00_00", "..": "___", "": "_", "a/b": "a_b"} {
		if got := pathElem(in); got != want {
			t.Errorf("pathElem(%q) = %q, want %q", in, got, want)
		}
	}
}
