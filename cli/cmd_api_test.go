package cli

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
)

func TestAPIFlagsCheck(t *testing.T) {
	ok := apiFlags{connectTimeout: time.Second, shutdownTimeout: time.Second}
	insecure := ok
	insecure.insecureNoAuth = true
	for _, tc := range []struct {
		name  string
		addr  string
		token string
		flags apiFlags
		want  string // substring of the usage error; "" = accepted
	}{
		{"loopback", "127.0.0.1:8080", "", ok, ""},
		{"loopback range", "127.3.2.1:0", "", ok, ""},
		{"ipv6 loopback", "[::1]:8080", "", ok, ""},
		{"localhost", "localhost:8080", "", ok, ""},
		{"all interfaces", "0.0.0.0:8080", "", ok, "refusing to serve the API without a token on the non-loopback address 0.0.0.0:8080"},
		{"empty host", ":8080", "", ok, "--insecure-no-auth"},
		{"lan address", "10.1.2.3:80", "", ok, "TRELLIS_API_TOKEN"},
		{"token", "0.0.0.0:8080", "s3cret", ok, ""},
		{"insecure", "0.0.0.0:8080", "", insecure, ""},
		{"no port", "127.0.0.1", "", ok, "--addr"},
		{"connect timeout", "127.0.0.1:8080", "", apiFlags{shutdownTimeout: time.Second}, "--connect-timeout must be positive"},
		{"shutdown timeout", "127.0.0.1:8080", "", apiFlags{connectTimeout: time.Second, shutdownTimeout: -1}, "--shutdown-timeout must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.flags.check(Config{Addr: tc.addr, APIToken: tc.token})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("check = %v, want nil", err)
				}
				return
			}
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check = %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
}

func TestAPICommandUsage(t *testing.T) {
	env, u := sqliteEnv(t)
	wantCode(t, runCLI(t, runsRegistry(), env, "api", "extra"), 2)
	r := runCLI(t, runsRegistry(), env, "api", "--addr", "192.0.2.1:8080")
	wantCode(t, r, 2)
	wantContains(t, "stderr", r.stderr, "non-loopback address 192.0.2.1:8080", "--insecure-no-auth")
	if _, err := os.Stat(strings.TrimPrefix(u, "sqlite:")); !os.IsNotExist(err) {
		t.Errorf("a refused api command opened the database (stat: %v)", err)
	}
}

// serving is a trellis command running in this process until stop.
type serving struct {
	url    string
	cancel context.CancelFunc
	done   chan cliResult
	stdout *syncBuffer
}

var servingURL = regexp.MustCompile(`serving on (http://\S+)`)

// serveInProcess runs a serving command (api) in-process with the real
// clock and waits until it prints its URL.
func serveInProcess(t *testing.T, reg *dag.Registry, env map[string]string, args ...string) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	printed := make(chan struct{})
	a := &app{
		registry: reg,
		stdout:   notifyWriter{w: &stdout, pattern: servingURL, seen: printed},
		stderr:   &stderr,
		lookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
		clock: clock.Real{},
	}
	s := &serving{cancel: cancel, done: make(chan cliResult, 1), stdout: &stdout}
	go func() {
		code := a.execute(ctx, args)
		s.done <- cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}()
	select {
	case <-printed:
	case r := <-s.done:
		cancel()
		t.Fatalf("trellis %s ended before serving:\n%s", strings.Join(args, " "), r)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("trellis %s did not serve within 30s:\nstdout: %s\nstderr: %s", strings.Join(args, " "), stdout.String(), stderr.String())
	}
	s.url = servingURL.FindStringSubmatch(stdout.String())[1]
	t.Cleanup(func() { s.stop() })
	return s
}

// stop ends the command as a signal would and returns its result.
func (s *serving) stop() cliResult {
	s.cancel()
	r, ok := <-s.done
	if ok {
		close(s.done)
	}
	return r
}

// notifyWriter closes seen once what was written matches pattern.
type notifyWriter struct {
	w       *syncBuffer
	pattern *regexp.Regexp
	seen    chan struct{}
}

func (n notifyWriter) Write(p []byte) (int, error) {
	k, err := n.w.Write(p)
	if n.pattern.MatchString(n.w.String()) {
		select {
		case <-n.seen:
		default:
			close(n.seen)
		}
	}
	return k, err
}

// TestAPICommandServes runs `trellis api` in this process on a SQLite
// database: it migrates the database, serves the API and the metrics
// with the token, and stops when its context ends.
func TestAPICommandServes(t *testing.T) {
	env, u := sqliteEnv(t)
	env["TRELLIS_API_TOKEN"] = "tok-0123456789abcdef"
	s := serveInProcess(t, runsRegistry(), env, "api", "--addr", "127.0.0.1:0")
	wantContains(t, "stdout", s.stdout.String(), "trellis: API serving on http://127.0.0.1:", "(store "+u+")")

	get := func(path, token string) int {
		req, err := http.NewRequest("GET", s.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if c := get("/api/v1/health", ""); c != http.StatusOK {
		t.Errorf("health → %d, want 200", c)
	}
	if c := get("/api/v1/dags", ""); c != http.StatusUnauthorized {
		t.Errorf("dags without the token → %d, want 401", c)
	}
	if c := get("/api/v1/dags", "tok-0123456789abcdef"); c != http.StatusOK {
		t.Errorf("dags with the token → %d, want 200", c)
	}
	if c := get("/metrics", "tok-0123456789abcdef"); c != http.StatusOK {
		t.Errorf("metrics with the token → %d, want 200", c)
	}
	// The web UI is served at / too: with a token, a page without a
	// session sends the browser to the login page, which is served.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if resp, err := noRedirect.Get(s.url + "/"); err != nil {
		t.Fatal(err)
	} else {
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login") {
			t.Errorf("GET / → %d to %q, want 303 to the login page", resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	if c := get("/login", ""); c != http.StatusOK {
		t.Errorf("the UI's login page → %d, want 200", c)
	}
	if _, err := os.Stat(filepath.Clean(strings.TrimPrefix(u, "sqlite:"))); err != nil {
		t.Errorf("the database was not created: %v", err)
	}
	r := s.stop()
	wantCode(t, r, 0)
	wantContains(t, "stdout", r.stdout, "REST API "+s.url+"/api/v1, metrics "+s.url+"/metrics (with Authorization: Bearer <token>)")
	wantContains(t, "stderr", r.stderr, "api: stopped")
	if c, err := http.Get(s.url + "/api/v1/health"); err == nil {
		_ = c.Body.Close()
		t.Errorf("the API still answers after the command ended")
	}
}
