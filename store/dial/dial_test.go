package dial_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

func TestMain(m *testing.M) { testdb.Main(m) }

func TestParseURL(t *testing.T) {
	tests := []struct {
		url             string
		backend, target string
		errHas          string // "" = no error
	}{
		{url: "postgres://postgres@127.0.0.1:5432/test", backend: dial.Postgres, target: "postgres://postgres@127.0.0.1:5432/test"},
		{url: "postgresql://u:p@db.example:6543/trellis?sslmode=disable", backend: dial.Postgres,
			target: "postgresql://u:p@db.example:6543/trellis?sslmode=disable"},
		{url: "  postgres:///trellis  ", backend: dial.Postgres, target: "postgres:///trellis"},
		{url: "POSTGRES://h/db", backend: dial.Postgres, target: "POSTGRES://h/db"},
		{url: "sqlite:trellis.db", backend: dial.SQLite, target: "trellis.db"},
		{url: "sqlite:/var/lib/trellis/trellis.db", backend: dial.SQLite, target: "/var/lib/trellis/trellis.db"},
		{url: "sqlite://trellis.db", backend: dial.SQLite, target: "trellis.db"},
		{url: "sqlite:///var/lib/trellis.db", backend: dial.SQLite, target: "/var/lib/trellis.db"},
		{url: "sqlite:dir with spaces/t.db", backend: dial.SQLite, target: "dir with spaces/t.db"},
		{url: "sqlite::memory:", errHas: "in-memory SQLite is not accepted"},
		{url: "sqlite://:memory:", errHas: "several processes"},
		{url: "sqlite:file::memory:?cache=shared", errHas: "in-memory"},
		{url: "sqlite:file:trellis.db", errHas: "not a file: URI"},
		{url: "sqlite:trellis.db?mode=ro", errHas: "without query parameters"},
		{url: "sqlite:", errHas: "no file path"},
		{url: "sqlite://", errHas: "no file path"},
		{url: "", errHas: "empty database URL"},
		{url: "mysql://root@localhost/trellis", errHas: "unknown database URL"},
		{url: "trellis.db", errHas: "accepted forms"},
		{url: "postgres:db", errHas: "unknown database URL"},
		{url: "postgres://u:secret@host:notaport/db", errHas: "malformed database URL"},
		{url: "postgres://u:secret@[::1/db", errHas: "malformed database URL"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			backend, target, err := dial.ParseURL(tc.url)
			if tc.errHas != "" {
				if err == nil {
					t.Fatalf("ParseURL(%q) = %q, %q; want an error", tc.url, backend, target)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("ParseURL(%q) error %q, want it to contain %q", tc.url, err, tc.errHas)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("ParseURL(%q) error shows the password: %q", tc.url, err)
				}
				if !strings.Contains(err.Error(), "sqlite:PATH") {
					t.Errorf("ParseURL(%q) error %q does not name the accepted forms", tc.url, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", tc.url, err)
			}
			if backend != tc.backend || target != tc.target {
				t.Errorf("ParseURL(%q) = %q, %q; want %q, %q", tc.url, backend, target, tc.backend, tc.target)
			}
		})
	}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestOpenSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trellis.db")
	for _, u := range []string{"sqlite:" + path, "sqlite://" + path} {
		s, err := dial.Open(t.Context(), u, dial.Options{Logger: quiet(), Migrate: true})
		if err != nil {
			t.Fatalf("Open(%s): %v", u, err)
		}
		if b := s.Backend(); b != "sqlite" {
			t.Errorf("Open(%s).Backend() = %q", u, b)
		}
		// Migrated: the schema is there.
		if _, _, err := s.ListDAGs(t.Context(), false, 0, 0); err != nil {
			t.Errorf("ListDAGs after Open with Migrate: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	// Without Migrate the schema is not created.
	fresh := filepath.Join(t.TempDir(), "fresh.db")
	s, err := dial.Open(t.Context(), "sqlite:"+fresh, dial.Options{Logger: quiet()})
	if err != nil {
		t.Fatalf("Open without Migrate: %v", err)
	}
	defer s.Close()
	if _, _, err := s.ListDAGs(t.Context(), false, 0, 0); err == nil {
		t.Errorf("ListDAGs on an unmigrated database succeeded")
	}
}

func TestOpenSQLiteMissingFolder(t *testing.T) {
	u := "sqlite:" + filepath.Join(t.TempDir(), "no", "such", "dir", "t.db")
	_, err := dial.Open(t.Context(), u, dial.Options{Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "no/such/dir") {
		t.Fatalf("Open in a missing folder: %v, want an error naming the folder", err)
	}
}

func TestOpenBadURL(t *testing.T) {
	_, err := dial.Open(t.Context(), "redis://localhost", dial.Options{Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "postgres://") || !strings.Contains(err.Error(), "sqlite:PATH") {
		t.Fatalf("Open(redis://…) = %v, want an error naming the accepted forms", err)
	}
}

func TestOpenPostgres(t *testing.T) {
	u := testdb.Postgres(t)
	s, err := dial.Open(t.Context(), u, dial.Options{Logger: quiet(), Migrate: true, ConnectTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("Open(postgres): %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if b := s.Backend(); b != "postgres" {
		t.Errorf("Backend() = %q", b)
	}
	if err := s.SyncDAGs(t.Context(), []store.DAGSpec{{DAGID: "d", Fingerprint: "f"}}); err != nil {
		t.Fatalf("SyncDAGs after Open with Migrate: %v", err)
	}
	if _, err := s.GetDAG(t.Context(), "d"); err != nil {
		t.Errorf("GetDAG: %v", err)
	}
}

// freePort returns a local TCP port nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestOpenPostgresUnreachable(t *testing.T) {
	addr := freePort(t)
	const timeout = 1500 * time.Millisecond
	var logs bytes.Buffer
	start := time.Now()
	_, err := dial.Open(context.Background(), "postgres://postgres@"+addr+"/postgres?connect_timeout=1",
		dial.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), ConnectTimeout: timeout})
	elapsed := time.Since(start)
	if err == nil {
		t.Fatalf("Open of an unreachable server succeeded")
	}
	if !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), "gave up") {
		t.Errorf("error %q does not say the database was unreachable and Open gave up", err)
	}
	if elapsed < timeout {
		t.Errorf("gave up after %v, before ConnectTimeout %v", elapsed, timeout)
	}
	// Each retry was logged, naming the database.
	if n := strings.Count(logs.String(), "unreachable"); n < 2 || !strings.Contains(logs.String(), addr) {
		t.Errorf("%d log lines about the unreachable database at %s, want several:\n%s", n, addr, logs.String())
	}
}

func TestOpenPostgresUnreachableCancelled(t *testing.T) {
	addr := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := dial.Open(ctx, "postgres://postgres@"+addr+"/postgres", dial.Options{Logger: quiet(), ConnectTimeout: time.Hour})
		done <- err
	}()
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Open cancelled while retrying: %v, want context.Canceled", err)
	}
}
