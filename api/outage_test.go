package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store/postgres"
)

// TestPostgresOutageAnswers503: while PostgreSQL cannot be reached the API
// answers 503 with a problem body and /health reports the metadatabase
// unhealthy; once it is back, and right after the server terminated every
// backend, /health reports it healthy.
func TestPostgresOutageAnswers503(t *testing.T) {
	var direct string
	e := newEnv(t, "postgres", func(c *Config) {
		direct, _ = testdb.URL(t)
	})
	proxy := testdb.ProxyTo(t, direct)
	u, err := url.Parse(proxy.ProxiedURL(t, direct))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", "trellis-outage-test")
	u.RawQuery = q.Encode()
	st, err := postgres.Open(context.Background(), u.String(), postgres.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("open through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	h, err := New(Config{Store: st, Registry: e.reg, Metrics: NewMetrics(nil), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	e = e.withHandler(h)
	metadatabase := func() string {
		t.Helper()
		return e.ok(200, "GET", "/api/v1/health", nil)["metadatabase"].(map[string]any)["status"].(string)
	}

	proxy.Cut()
	resp := e.do("GET", "/api/v1/dags", nil)
	var p Problem
	if err := json.Unmarshal(resp.body, &p); err != nil || resp.status != http.StatusServiceUnavailable || p.Status != http.StatusServiceUnavailable {
		t.Errorf("GET /dags during the outage = %d %s (%v), want a 503 problem", resp.status, resp.body, err)
	}
	if got := metadatabase(); got != unhealthy {
		t.Errorf("metadatabase during the outage = %s, want unhealthy", got)
	}

	proxy.Restore()
	if got := metadatabase(); got != healthy {
		t.Errorf("metadatabase after the outage = %s, want healthy", got)
	}
	e.ok(200, "GET", "/api/v1/dags", nil)

	conn, err := pgx.Connect(context.Background(), direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(),
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'trellis-outage-test'`); err != nil {
		t.Fatalf("terminate backends: %v", err)
	}
	if got := metadatabase(); got != healthy {
		t.Errorf("metadatabase right after the backends were terminated = %s, want healthy", got)
	}
}
