package api

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestQueryStringRefused: a parameter Go's url.Values would drop (after a
// ';', or with a bad escape) is a 400 naming it, not silently ignored.
func TestQueryStringRefused(t *testing.T) {
	e := newEnv(t, "sqlite")
	for _, c := range []struct{ path, detail string }{
		{"/api/v1/dags?limit=1;offset=2", `query parameter "limit" contains ';'`},
		{"/api/v1/dags?only_active=true&limit=1;offset=2", `query parameter "limit" contains ';'`},
		{"/api/v1/dags/etl/dagRuns?state=success;order_by=-id", `query parameter "state" contains ';'`},
		{"/api/v1/dags?limit=%zz", `query parameter "limit" is not valid URL encoding`},
	} {
		r := e.do("GET", c.path, nil)
		var p Problem
		if r.status != 400 || json.Unmarshal(r.body, &p) != nil || !strings.Contains(p.Detail, c.detail) {
			t.Errorf("GET %s: %d %s, want 400 with %q", c.path, r.status, r.body, c.detail)
		}
	}
	// A ';' escaped in a value is a plain character.
	if r := e.do("GET", "/api/v1/dags?dag_id_pattern=a%3Bb", nil); r.status != 200 {
		t.Errorf("escaped ';': %d %s", r.status, r.body)
	}
}

// TestNotFoundNeedsToken: with a token set, unknown paths and methods
// answer 401 to a request without it, and problem bodies with it; /health
// stays public.
func TestNotFoundNeedsToken(t *testing.T) {
	const token = "0123456789abcdef-token"
	e := newEnv(t, "sqlite", func(c *Config) { c.Token = token })
	e.token = ""
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/api/v1/nowhere", 404},
		{"GET", "/secret-admin", 404},
		{"PUT", "/api/v1/dags/etl", 405},
		{"DELETE", "/api/v1/dags", 405},
		{"POST", "/metrics", 405},
	} {
		if r := e.do(c.method, c.path, nil); r.status != 401 || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s without the token: %d %s, want 401 with a problem", c.method, c.path, r.status, r.body)
		}
		r := e.do(c.method, c.path, nil, "Authorization", "Bearer "+token)
		var p Problem
		if r.status != c.status || json.Unmarshal(r.body, &p) != nil || p.Status != c.status {
			t.Errorf("%s %s with the token: %d %s, want %d with a problem body", c.method, c.path, r.status, r.body, c.status)
		}
	}
	if r := e.do("POST", "/api/v1/health", nil); r.status != 405 {
		t.Errorf("POST /health without a token: %d, want 405 (health is public)", r.status)
	}
}

// TestShortTokenRefused: a token shorter than MinTokenLength is refused
// when the API is built.
func TestShortTokenRefused(t *testing.T) {
	st := openStore(t, "sqlite")
	for _, tok := range []string{"x", "s3cret", strings.Repeat("a", MinTokenLength-1)} {
		if _, err := New(Config{Store: st, Token: tok}); err == nil || !strings.Contains(err.Error(), "at least 16") {
			t.Errorf("token %q: %v, want an error asking for at least 16 characters", tok, err)
		}
	}
	if _, err := New(Config{Store: st, Token: strings.Repeat("a", MinTokenLength)}); err != nil {
		t.Errorf("token of %d characters: %v", MinTokenLength, err)
	}
}

// TestServerErrorsAreProblems: the answers net/http writes itself (431
// for headers too large, 400 for a malformed request) carry problem
// bodies.
func TestServerErrorsAreProblems(t *testing.T) {
	e := newEnv(t, "sqlite")
	s, err := NewServer("127.0.0.1:0", e.srv.Config.Handler, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	for _, c := range []struct {
		name, request string
		status        int
		detail        string
	}{
		{"headers too large", "GET /api/v1/dags HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 80<<10) + "\r\n\r\n",
			431, "exceed 64 KiB"},
		{"malformed request", "GET /api/v1/dags HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "malformed"},
	} {
		conn, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() { _, _ = io.WriteString(conn, c.request) }()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		conn.Close()
		var p Problem
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/json" ||
			json.Unmarshal(body, &p) != nil || p.Status != c.status || !strings.Contains(p.Detail, c.detail) {
			t.Errorf("%s: %d %q %s, want %d with a problem naming %q", c.name, resp.StatusCode,
				resp.Header.Get("Content-Type"), body, c.status, c.detail)
		}
	}
}
