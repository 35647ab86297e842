package postgres_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
)

func TestOpenRejectsMalformedURLs(t *testing.T) {
	for _, u := range []string{"sqlite:trellis.db", "mysql://root@localhost/db", "just words", "",
		"postgres://user@host:notaport/db"} {
		_, err := postgres.Open(context.Background(), u, postgres.Options{ConnectTimeout: time.Second})
		if err == nil {
			t.Errorf("Open(%q) succeeded", u)
			continue
		}
		if !strings.Contains(err.Error(), "accepted forms") || !strings.Contains(err.Error(), "postgres://") {
			t.Errorf("Open(%q) error %q does not name the accepted forms", u, err)
		}
	}
	// The password does not leak into the message.
	_, err := postgres.Open(context.Background(), "mysql://me:secret@host/db", postgres.Options{})
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("error %v shows the password", err)
	}
}

// closedPort returns a local port nothing listens on.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// signalHandler is a slog handler that records messages and signals the
// first one containing want.
type signalHandler struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	fmt.Fprintf(&h.buf, "%s %s\n", r.Level, r.Message)
	h.mu.Unlock()
	if strings.Contains(r.Message, h.want) {
		h.once.Do(func() { close(h.seen) })
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }
func (h *signalHandler) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}

func TestOpenGivesUpOnUnreachableDatabase(t *testing.T) {
	h := &signalHandler{want: "retrying", seen: make(chan struct{})}
	u := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?connect_timeout=1", closedPort(t))
	start := time.Now()
	_, err := postgres.Open(context.Background(), u, postgres.Options{Logger: slog.New(h), ConnectTimeout: 1500 * time.Millisecond})
	if err == nil {
		t.Fatalf("Open of a closed port succeeded")
	}
	if !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), "gave up") {
		t.Errorf("error %q does not say the database is unreachable and Open gave up", err)
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("gave up after %v, before the 1.5s connect timeout", d)
	}
	select {
	case <-h.seen:
	default:
		t.Errorf("no retry logged; log:\n%s", h)
	}
}

// proxy forwards connections from a listener to target until closed.
func proxy(t *testing.T, l net.Listener, target string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(up, c); up.Close() })
			wg.Go(func() { _, _ = io.Copy(c, up); c.Close() })
		}
	})
}

func TestOpenWaitsForTheDatabase(t *testing.T) {
	real, err := url.Parse(testdb.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	target := real.Host
	port := closedPort(t)
	via := *real
	via.Host = fmt.Sprintf("127.0.0.1:%d", port)
	h := &signalHandler{want: "retrying", seen: make(chan struct{})}
	type opened struct {
		s   *postgres.Store
		err error
	}
	done := make(chan opened, 1)
	go func() {
		s, err := postgres.Open(context.Background(), via.String(), postgres.Options{Logger: slog.New(h), ConnectTimeout: time.Minute})
		done <- opened{s, err}
	}()
	// The database "comes up" once Open has failed and said it retries.
	select {
	case <-h.seen:
	case o := <-done:
		t.Fatalf("Open returned before the database was reachable: %v", o.err)
	}
	l, err := net.Listen("tcp", via.Host)
	if err != nil {
		t.Fatalf("listen on %s: %v", via.Host, err)
	}
	proxy(t, l, target)
	o := <-done
	if o.err != nil {
		t.Fatalf("Open after the database came up: %v\nlog:\n%s", o.err, h)
	}
	t.Cleanup(func() { o.s.Close() })
	if err := o.s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if err := o.s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if !strings.Contains(h.String(), "database reachable") {
		t.Errorf("no log line saying the database became reachable:\n%s", h)
	}
}

// appName returns a URL for a fresh schema whose connections carry a
// unique application_name, and that name.
func appName(t *testing.T) (string, string) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "trellis-test-" + hex.EncodeToString(b[:])
	u, err := url.Parse(testdb.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String(), name
}

// admin is a separate connection to terminate backends with.
func admin(t *testing.T) *pgx.Conn {
	u, _ := testdb.URL(t)
	c, err := pgx.Connect(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func TestConnectionKilledMidFinish(t *testing.T) {
	ctx := context.Background()
	u, name := appName(t)
	s := openURL(t, u, postgres.Options{Logger: testLogger(t)})
	const n = 200
	sp := store.DAGSpec{DAGID: "kill", Fingerprint: "kill-v1", MaxActiveRuns: 1}
	for i := range n {
		root, down := fmt.Sprintf("r%03d", i), fmt.Sprintf("d%03d", i)
		sp.Tasks = append(sp.Tasks,
			store.TaskSpec{TaskID: root, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess},
			store.TaskSpec{TaskID: down, Kind: dag.KindFunc, TriggerRule: dag.AllSuccess, Upstream: []string{root}})
	}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{sp}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRun(ctx, store.NewRun{DAGID: "kill", RunID: "r", RunType: store.RunManual,
		LogicalDate: bt0, IntervalStart: bt0, IntervalEnd: bt0, Fingerprint: sp.Fingerprint, QueuedAt: bt0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRuns(ctx, "kill", bt0); err != nil {
		t.Fatal(err)
	}
	cs, err := s.ClaimTasks(ctx, store.Worker{ID: "w"}, 1000, bt0)
	if err != nil || len(cs) != n {
		t.Fatalf("claimed %d, %v", len(cs), err)
	}
	results := make([]store.Result, n)
	for i, c := range cs {
		results[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Success, EndedAt: bt0}
	}

	// The finish (which also claims 50 of what it releases) stops after
	// releasing the downstream tasks; its backend is terminated from
	// another connection; then it goes on.
	w2 := store.Worker{ID: "w2", Hostname: "h", PID: 2}
	const claimN = 50
	reached, release := make(chan struct{}), make(chan struct{})
	s.SetFaultHook(func(point string) error {
		if point == postgres.FaultFinishReleased {
			close(reached)
			<-release
		}
		return nil
	})
	errc := make(chan error, 1)
	go func() {
		_, _, err := s.FinishAndClaim(ctx, results, w2, claimN, bt0)
		errc <- err
	}()
	select {
	case <-reached:
	case err := <-errc:
		t.Fatalf("FinishAndClaim ended before the fault point: %v", err)
	}
	var killed int
	err = admin(t).QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = $1 AND state = 'idle in transaction') k`, name).Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminated %d backends (%v), want the one in the finish transaction", killed, err)
	}
	close(release)
	err = <-errc
	s.SetFaultHook(nil)
	if err == nil {
		t.Fatalf("FinishAndClaim succeeded although its connection was killed")
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		t.Errorf("error exposes a driver type: %#v", pe)
	}
	if !strings.Contains(err.Error(), "finish tasks") {
		t.Errorf("error %q does not say what failed", err)
	}
	// Nothing of the finish, nor of its claim, is visible.
	tis, _, err := s.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{"kill"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range tis {
		want := state.Running
		if strings.HasPrefix(ti.TaskID, "d") {
			want = state.None
		}
		if ti.State != want {
			t.Fatalf("after the killed finish %s is %s, want %s", ti.TaskID, ti.State, want)
		}
	}
	// The pool reconnects and the caller's retry applies everything.
	out, claimed, err := s.FinishAndClaim(ctx, results, w2, claimN, bt0)
	if err != nil {
		t.Fatalf("retried FinishAndClaim: %v", err)
	}
	for _, o := range out {
		if !o.Applied {
			t.Fatalf("retried finish not applied: %+v", o)
		}
	}
	if len(claimed) != claimN {
		t.Errorf("retried finish claimed %d, want %d", len(claimed), claimN)
	}
	queued, total, err := s.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{"kill"}, States: []state.TaskState{state.Queued}})
	if err != nil || total != n-claimN {
		t.Fatalf("%d queued after the retry (%v), want %d", total, err, n-claimN)
	}
	for _, ti := range queued {
		if !strings.HasPrefix(ti.TaskID, "d") {
			t.Errorf("queued %s", ti.TaskID)
		}
	}
	for _, c := range claimed {
		if !strings.HasPrefix(c.TaskID, "d") || c.WorkerID != w2.ID || c.TryNumber != 1 {
			t.Errorf("claimed %+v", c.TaskInstance)
		}
	}
}

func TestListenReconnects(t *testing.T) {
	ctx := context.Background()
	u, name := appName(t)
	s := openURL(t, u, postgres.Options{Logger: testLogger(t)})
	sub, err := s.Listen(ctx, store.TopicRunsChanged)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var pid int
	if err := admin(t).QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'`,
		name).Scan(&pid); err != nil {
		t.Fatalf("find the listening backend: %v", err)
	}
	if _, err := admin(t).Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	// After reconnecting the subscription wakes its receiver (it may have
	// missed notifications), and later notifications arrive again.
	wait := func(what string) {
		t.Helper()
		select {
		case tp, ok := <-sub.C():
			if !ok || tp != store.TopicRunsChanged {
				t.Fatalf("%s: got %q (open %v)", what, tp, ok)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: no wake-up", what)
		}
	}
	wait("after reconnect")
	// The terminated backend may still be listed while it exits, and a
	// notification of another test on the same database may have woken
	// the receiver before the reconnect: wait for another listening one.
	var newPid int
	for deadline := time.Now().Add(20 * time.Second); ; {
		err := admin(t).QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%' AND pid <> $2`,
			name, pid).Scan(&newPid)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) || time.Now().After(deadline) {
			t.Fatalf("no new listening backend (the old one was %d): %v", pid, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.SyncDAGs(ctx, []store.DAGSpec{{DAGID: "l", Fingerprint: "l1", MaxActiveRuns: 1}}); err != nil {
		t.Fatal(err)
	}
	wait("after a change")
}

func TestMigrateFromSeveralProcessesAtOnce(t *testing.T) {
	ctx := context.Background()
	u := testdb.Postgres(t)
	// Separate pools stand for separate processes: separate sessions
	// racing for goose's advisory lock on the same fresh schema.
	stores := make([]*postgres.Store, 4)
	for i := range stores {
		s, err := postgres.Open(ctx, u, postgres.Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	var wg sync.WaitGroup
	errs := make([]error, len(stores))
	for i, s := range stores {
		wg.Go(func() { errs[i] = s.Migrate(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate #%d: %v", i, err)
		}
	}
	c := admin(t)
	var applied int
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	schema := pu.Query().Get("search_path")
	if err := c.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "trellis_schema_version"}.Sanitize()+
		" WHERE version_id = 1").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != 1 {
		t.Errorf("migration 1 recorded %d times, want 1", applied)
	}
	if err := stores[0].SyncDAGs(ctx, []store.DAGSpec{{DAGID: "m", Fingerprint: "m1"}}); err != nil {
		t.Errorf("schema not usable after concurrent migrations: %v", err)
	}
}

func TestMigrateWithoutSchema(t *testing.T) {
	base, _ := url.Parse(testdb.Postgres(t))
	q := base.Query()
	q.Set("search_path", "no_such_schema_here")
	base.RawQuery = q.Encode()
	s, err := postgres.Open(context.Background(), base.String(), postgres.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Migrate(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no current schema") {
		t.Errorf("Migrate into a missing schema: %v, want an error saying there is no current schema", err)
	}
}
