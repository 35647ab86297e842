package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestAuth(t *testing.T) {
	const token = "s3cret-token-0123456"
	e := newEnv(t, "sqlite", func(c *Config) { c.Token = token })
	e.token = "" // send headers by hand
	protected := []struct{ method, path, body string }{
		{"GET", "/api/v1/version", ""},
		{"GET", "/api/v1/dags", ""},
		{"GET", "/api/v1/dags/etl", ""},
		{"PATCH", "/api/v1/dags/etl", `{"is_paused": true}`},
		{"GET", "/api/v1/dags/etl/tasks", ""},
		{"GET", "/api/v1/dags/etl/tasks/extract", ""},
		{"GET", "/api/v1/dags/etl/graph", ""},
		{"GET", "/api/v1/dags/etl/dagRuns", ""},
		{"POST", "/api/v1/dags/etl/dagRuns", `{}`},
		{"POST", "/api/v1/dags/~/dagRuns/list", `{}`},
		{"GET", "/api/v1/dags/etl/dagRuns/r", ""},
		{"PATCH", "/api/v1/dags/etl/dagRuns/r", `{"state": "failed"}`},
		{"DELETE", "/api/v1/dags/etl/dagRuns/r", ""},
		{"GET", "/api/v1/dags/etl/dagRuns/r/taskInstances", ""},
		{"GET", "/api/v1/dags/etl/dagRuns/r/taskInstances/extract", ""},
		{"GET", "/api/v1/dags/etl/dagRuns/r/taskInstances/extract/logs/1", ""},
		{"POST", "/api/v1/dags/etl/clearTaskInstances", `{}`},
		{"POST", "/api/v1/dags/etl/updateTaskInstancesState", `{}`},
		{"POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{}`},
		{"POST", "/api/v1/dagRuns/purge", `{"before": "2000-01-01T00:00:00Z", "dry_run": false}`},
		{"GET", "/metrics", ""},
	}
	for _, p := range protected {
		for _, hdr := range []string{"", "Bearer wrong-token", "Bearer " + token + "x", "Basic " + token, "Bearer", token} {
			r := e.do(p.method, p.path, nilIfEmpty(p.body), "Authorization", hdr)
			if r.status != http.StatusUnauthorized {
				t.Errorf("%s %s with Authorization %q: status %d, want 401", p.method, p.path, hdr, r.status)
				continue
			}
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s: 401 without WWW-Authenticate: Bearer", p.method, p.path)
			}
		}
	}
	// Nothing was changed by the refused requests.
	if d, err := e.store.GetDAG(context.Background(), "etl"); err != nil || d.Paused {
		t.Errorf("etl after refused PATCH: paused=%v err=%v", d.Paused, err)
	}
	// The right token passes, with the scheme in any case.
	for _, hdr := range []string{"Bearer " + token, "bearer " + token, "BEARER  " + token + " "} {
		if r := e.do("GET", "/api/v1/dags", nil, "Authorization", hdr); r.status != 200 {
			t.Errorf("GET /dags with %q: %d", hdr, r.status)
		}
	}
	if r := e.do("GET", "/metrics", nil, "Authorization", "Bearer "+token); r.status != 200 {
		t.Errorf("GET /metrics with the token: %d", r.status)
	}
	// /health needs no token.
	if r := e.do("GET", "/api/v1/health", nil); r.status != 200 {
		t.Errorf("GET /health without a token: %d", r.status)
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func TestNoTokenNoAuth(t *testing.T) {
	e := newEnv(t, "sqlite")
	if r := e.do("GET", "/api/v1/dags", nil, "Authorization", "Bearer anything"); r.status != 200 {
		t.Errorf("without a configured token any request passes; got %d", r.status)
	}
}

func TestBearerToken(t *testing.T) {
	for h, want := range map[string]string{
		"Bearer abc": "abc", "bearer abc": "abc", "Bearer  abc ": "abc", "Basic abc": "", "Bearer": "", "": "", "abc": "",
	} {
		got, ok := bearerToken(h)
		if got != want || ok != (want != "") {
			t.Errorf("bearerToken(%q) = %q, %v; want %q", h, got, ok, want)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "127.5.6.7:1": true, "[::1]:8080": true, "localhost:8080": true,
		"0.0.0.0:8080": false, ":8080": false, "[::]:8080": false, "10.1.2.3:80": false, "192.168.0.1:0": false,
	} {
		got, err := IsLoopback(addr)
		if err != nil || got != want {
			t.Errorf("IsLoopback(%q) = %v, %v; want %v", addr, got, err, want)
		}
	}
	if _, err := IsLoopback("8080"); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("IsLoopback(8080) error = %v, want one naming host:port", err)
	}
}

func TestNewServerRefusesInsecureAddress(t *testing.T) {
	h := http.NotFoundHandler()
	for _, addr := range []string{"0.0.0.0:0", ":0", "10.0.0.1:8080"} {
		_, err := NewServer(addr, h, ServerOptions{})
		if !errors.Is(err, ErrInsecureAddress) || !strings.Contains(err.Error(), "--insecure-no-auth") {
			t.Errorf("NewServer(%q) without a token: %v, want ErrInsecureAddress", addr, err)
		}
		if _, err := NewServer(addr, h, ServerOptions{Authenticated: true}); err != nil {
			t.Errorf("NewServer(%q) with a token: %v", addr, err)
		}
		if _, err := NewServer(addr, h, ServerOptions{InsecureNoAuth: true}); err != nil {
			t.Errorf("NewServer(%q) with InsecureNoAuth: %v", addr, err)
		}
	}
	if _, err := NewServer("127.0.0.1:0", h, ServerOptions{}); err != nil {
		t.Errorf("loopback without a token: %v", err)
	}
}

func TestServerStartStop(t *testing.T) {
	e := newEnv(t, "sqlite")
	h := e.srv.Config.Handler
	s, err := NewServer("127.0.0.1:0", h, ServerOptions{ReadHeaderTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if s.srv.ReadHeaderTimeout != time.Second || s.srv.ReadTimeout != DefaultReadTimeout ||
		s.srv.WriteTimeout != DefaultWriteTimeout || s.srv.IdleTimeout != DefaultIdleTimeout {
		t.Errorf("timeouts: %v %v %v %v", s.srv.ReadHeaderTimeout, s.srv.ReadTimeout, s.srv.WriteTimeout, s.srv.IdleTimeout)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	resp, err := http.Get(s.URL() + "/api/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "metadatabase") {
		t.Errorf("health through the server: %d %s", resp.StatusCode, body)
	}
	s.Stop()
	s.Stop() // twice is fine
	if _, err := http.Get(s.URL() + "/api/v1/health"); err == nil {
		t.Error("server still answers after Stop")
	}

	// Cancelling Start's context stops it too; Stop then returns at once.
	s2, _ := NewServer("127.0.0.1:0", h, ServerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	if err := s2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	s2.Stop()
	if _, err := http.Get(s2.URL() + "/api/v1/health"); err == nil {
		t.Error("server still answers after its context was cancelled")
	}

	// A taken port is a Start error.
	s3, _ := NewServer(s.Addr().String(), h, ServerOptions{})
	ln := e.srv.Listener.Addr().String()
	s3.addr = ln
	if err := s3.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "listen on") {
		t.Errorf("Start on a taken port: %v", err)
	}
	s3.Stop()
}
