package testdb

import (
	"bufio"
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/store"
)

func TestMain(m *testing.M) { Main(m) }

func connect(t *testing.T, u string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), u)
	if err != nil {
		t.Fatalf("connect %s: %v", store.RedactURL(u), err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func schemaExists(t *testing.T, name string) bool {
	t.Helper()
	var ok bool
	if err := connect(t, base(t)).QueryRow(context.Background(),
		"SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestPostgresGivesEachTestItsOwnSchema(t *testing.T) {
	ctx := context.Background()
	var schemas [2]string
	for i := range schemas {
		t.Run("sub", func(t *testing.T) {
			u := Postgres(t)
			if got, ok := URL(t); !ok || got != u {
				t.Errorf("URL(t) = %q, %v; want %q", got, ok, u)
			}
			p, err := url.Parse(u)
			if err != nil || p.Scheme != "postgres" {
				t.Fatalf("Postgres returned %q (%v)", u, err)
			}
			schemas[i] = p.Query().Get("search_path")
			c := connect(t, u)
			var current string
			if err := c.QueryRow(ctx, "SELECT current_schema()").Scan(&current); err != nil || current != schemas[i] {
				t.Fatalf("current_schema() = %q (%v), want %q", current, err, schemas[i])
			}
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").Scan(&n); err != nil || n != 0 {
				t.Fatalf("fresh schema has %d tables (%v)", n, err)
			}
			if _, err := c.Exec(ctx, "CREATE TABLE mine (x int)"); err != nil {
				t.Fatal(err)
			}
		})
		if schemaExists(t, schemas[i]) {
			t.Errorf("schema %s still exists after its test ended", schemas[i])
		}
	}
	if schemas[0] == schemas[1] || schemas[0] == "" {
		t.Errorf("two tests got schemas %q and %q", schemas[0], schemas[1])
	}
}

func TestSQLite(t *testing.T) {
	u := SQLite(t)
	path, ok := strings.CutPrefix(u, "sqlite:")
	if !ok || filepath.Base(path) != "trellis.db" {
		t.Fatalf("SQLite(t) = %q", u)
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
		t.Errorf("folder of %s: %v", path, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the database file exists before anyone opened it: %v", err)
	}
	if got, _ := URL(t); got != u {
		t.Errorf("URL(t) = %q, want %q", got, u)
	}
}

func TestChildURLIsReused(t *testing.T) {
	t.Setenv(EnvChildURL, "sqlite:/some/where.db")
	if got := SQLite(t); got != "sqlite:/some/where.db" {
		t.Errorf("SQLite in a child = %q", got)
	}
	if got := Postgres(t); got != "sqlite:/some/where.db" {
		t.Errorf("Postgres in a child = %q", got)
	}
}

func TestWithSearchPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u@h:5/db", "postgres://u@h:5/db?search_path=s1"},
		{"postgresql://u@h/db?sslmode=disable", "postgresql://u@h/db?search_path=s1&sslmode=disable"},
		{"host=h user=u", "host=h user=u search_path=s1"},
	} {
		got, err := WithSearchPath(tc.in, "s1")
		if err != nil || got != tc.want {
			t.Errorf("WithSearchPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := WithSearchPath("nonsense", "s1"); err == nil {
		t.Errorf("WithSearchPath accepted a malformed URL")
	}
}

func TestSchemaName(t *testing.T) {
	a, b := schemaName("TestX/Sub Test#1"), schemaName("TestX/Sub Test#1")
	if a == b {
		t.Errorf("two calls gave the same name %q", a)
	}
	if !strings.HasPrefix(a, "t_testx_sub_test_1_") {
		t.Errorf("schemaName = %q", a)
	}
	long := schemaName(strings.Repeat("VeryLongTestName", 10))
	if len(long) > 63 {
		t.Errorf("schema name of %d bytes exceeds PostgreSQL's 63", len(long))
	}
}

func TestFindBinaries(t *testing.T) {
	dir := t.TempDir()
	mk := func(d string, names ...string) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(d, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, v := range []string{"9.6", "15", "16"} {
		mk(filepath.Join(dir, "lib", v, "bin"), "initdb", "pg_ctl", "postgres")
	}
	mk(filepath.Join(dir, "lib", "17", "bin"), "initdb") // incomplete: skipped
	got, err := findBinaries("", filepath.Join(dir, "lib", "*", "bin"))
	if err != nil || got != filepath.Join(dir, "lib", "16", "bin") {
		t.Errorf("findBinaries picked %q (%v), want the newest complete version 16", got, err)
	}
	mk(filepath.Join(dir, "path"), "initdb", "pg_ctl", "postgres")
	got, err = findBinaries(filepath.Join(dir, "path"), filepath.Join(dir, "lib", "*", "bin"))
	if err != nil || got != filepath.Join(dir, "path") {
		t.Errorf("findBinaries picked %q (%v), want the folder on PATH", got, err)
	}
	if _, err := findBinaries("", filepath.Join(dir, "none", "*")); err == nil {
		t.Errorf("findBinaries found something in an empty folder")
	}
}

func TestNoServerSaysHowToInstall(t *testing.T) {
	_, err := findServer(context.Background(), searchConfig{forceCluster: true, path: "", libGlob: "/nonexistent/*/bin"})
	if !errors.Is(err, errNoServer) {
		t.Fatalf("findServer without binaries: %v", err)
	}
	for _, want := range []string{"apt-get install postgresql", EnvURL, "127.0.0.1:5432"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not mention %q", err, want)
		}
	}
}

func TestEnvURLMustAnswer(t *testing.T) {
	l := mustClosedPort(t)
	u := "postgres://postgres@127.0.0.1:" + strconv.Itoa(l) + "/postgres"
	_, err := findServer(context.Background(), searchConfig{envURL: u, envWait: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), EnvURL) || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("findServer with a dead %s: %v", EnvURL, err)
	}
}

func mustClosedPort(t *testing.T) int {
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestThrowawayCluster starts a real cluster with the installed server
// binaries, uses it and stops it.
func TestThrowawayCluster(t *testing.T) {
	ctx := context.Background()
	srv, err := findServer(ctx, searchConfig{forceCluster: true, path: os.Getenv("PATH"), libGlob: debianLibGlob})
	if err != nil {
		t.Fatalf("start throwaway cluster: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = srv.stop()
		}
	})
	p, _ := url.Parse(srv.url)
	if p.Port() == "5432" || srv.dir == "" {
		t.Errorf("cluster at %s in %q: want a free port and a temporary folder", srv.url, srv.dir)
	}
	c, err := pgx.Connect(ctx, srv.url)
	if err != nil {
		t.Fatalf("connect to the cluster: %v", err)
	}
	var pid int
	var dataDir string
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('data_directory')").Scan(&pid, &dataDir); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(dataDir, srv.dir) {
		t.Errorf("data directory %s is not under %s", dataDir, srv.dir)
	}
	if os.Geteuid() == 0 {
		nobody, err := user.Lookup("nobody")
		if err != nil {
			t.Fatal(err)
		}
		if uid := procUID(t, pid); uid != nobody.Uid {
			t.Errorf("the server runs as uid %s, want nobody (%s)", uid, nobody.Uid)
		}
	}
	c.Close(ctx)
	if err := srv.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	stopped = true
	if err := ping(ctx, srv.url); err == nil {
		t.Errorf("the cluster still answers after stop")
	}
	if _, err := os.Stat(srv.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster folder %s left behind: %v", srv.dir, err)
	}
}

// procUID reads the real uid of a process.
func procUID(t *testing.T, pid int) string {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			return strings.Fields(rest)[0]
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return ""
}

const envSelfTest = "TRELLIS_TESTDB_SELFTEST"

// TestMainStartsAClusterWhenForced runs this test binary again with
// TRELLIS_TEST_FORCE_CLUSTER=1: its Main must start a cluster (not use
// the default server), hand it to the tests, and stop it at the end.
func TestMainStartsAClusterWhenForced(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestServerInUse$", "-test.count=1", "-test.v")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvURL+"=") && !strings.HasPrefix(kv, EnvChildURL+"=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, EnvForceCluster+"=1", envSelfTest+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child test binary failed: %v\n%s", err, out)
	}
	var used string
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "SERVER "); ok {
			used = rest
		}
	}
	if used == "" {
		t.Fatalf("child did not report its server:\n%s", out)
	}
	if p, err := url.Parse(used); err != nil || p.Port() == "5432" {
		t.Fatalf("forced child used %s, want a throwaway cluster on another port", used)
	}
	if err := ping(context.Background(), used); err == nil {
		t.Errorf("the child's cluster %s still answers after the child exited", used)
	}
}

// TestServerInUse checks the server Main chose answers; run as a child
// by TestMainStartsAClusterWhenForced it also reports it.
func TestServerInUse(t *testing.T) {
	u := base(t)
	var one int
	if err := connect(t, u).QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("server %s: %v", store.RedactURL(u), err)
	}
	if os.Getenv(envSelfTest) == "1" {
		t.Logf("forced cluster in use")
		os.Stdout.WriteString("SERVER " + u + "\n")
	}
}

// TestStartClusterListensAndTrusts starts a cluster listening on an
// address of its choice with a trusted network: it answers over its
// socket (URL) and over TCP (TCPURL), and a network that is not a CIDR is
// refused before the server starts.
func TestStartClusterListensAndTrusts(t *testing.T) {
	ctx := context.Background()
	started := false
	cl, err := StartCluster(ctx, ClusterOptions{
		Listen:    "127.0.0.1",
		TrustNets: []string{"127.0.0.0/8"},
		Start:     func(start func() error) error { started = true; return start() },
	})
	if err != nil {
		t.Fatalf("StartCluster: %v", err)
	}
	t.Cleanup(func() { _ = cl.Stop() })
	if !started {
		t.Error("StartCluster did not start the server through ClusterOptions.Start")
	}
	if !strings.Contains(cl.URL, "host=%2F") {
		t.Errorf("URL %s does not reach the socket", cl.URL)
	}
	for _, u := range []string{cl.URL, cl.TCPURL("127.0.0.1")} {
		if err := ping(ctx, u); err != nil {
			t.Errorf("ping %s: %v", u, err)
		}
	}
	var hba string
	if err := connect(t, cl.URL).QueryRow(ctx,
		"SELECT string_agg(address || '/' || netmask, ',') FROM pg_hba_file_rules WHERE auth_method = 'trust' AND type = 'host'").Scan(&hba); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(hba, "127.0.0.0/255.0.0.0") {
		t.Errorf("trusted host rules %q lack 127.0.0.0/8", hba)
	}
	if err := cl.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	if _, err := StartCluster(ctx, ClusterOptions{Listen: "127.0.0.1", TrustNets: []string{"10.0.0.300/8"}}); err == nil || !strings.Contains(err.Error(), "10.0.0.300/8") {
		t.Errorf("StartCluster with a bad network: %v, want an error naming it", err)
	}
}
