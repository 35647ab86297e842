package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/api/openapi"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/postgres"
	"github.com/trellis-dag/trellis/store/sqlite"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// backends are the stores every API test runs against.
var backends = []string{"sqlite", "postgres"}

// openStore opens and migrates a fresh store of the given backend, closed
// when the test ends.
func openStore(t testing.TB, backend string) store.Store {
	t.Helper()
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	var st store.Store
	switch backend {
	case "sqlite":
		path := strings.TrimPrefix(testdb.SQLite(t), "sqlite:")
		s, err := sqlite.Open(ctx, path, sqlite.Options{Logger: quiet})
		if err != nil {
			t.Fatalf("open sqlite: %v", err)
		}
		st = s
	case "postgres":
		s, err := postgres.Open(ctx, testdb.Postgres(t), postgres.Options{Logger: quiet})
		if err != nil {
			t.Fatalf("open postgres: %v", err)
		}
		st = s
	default:
		t.Fatalf("unknown backend %q", backend)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate %s: %v", backend, err)
	}
	return st
}

// validatingTransport checks every response against Airflow's
// specification: responses of implemented endpoints must match the
// operation's schema for their status, and every error response, of any
// path, must be an RFC 7807 problem body matching the spec's Error schema
// with the response's status. Failures are reported on t.
type validatingTransport struct {
	t    testing.TB
	base http.RoundTripper
	// calls counts the responses validated against an operation.
	mu     sync.Mutex
	calls  map[string]int
	failed int
}

func (vt *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := vt.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(data))
	if problems := validateResponse(req, resp.StatusCode, resp.Header, data, vt.count); len(problems) > 0 {
		vt.mu.Lock()
		vt.failed++
		vt.mu.Unlock()
		vt.t.Errorf("%s %s → %d: response does not follow Airflow's specification:\n  %s\n  body: %.600s",
			req.Method, req.URL.RequestURI(), resp.StatusCode, strings.Join(problems, "\n  "), data)
	}
	return resp, nil
}

func (vt *validatingTransport) count(op string) {
	vt.mu.Lock()
	defer vt.mu.Unlock()
	if vt.calls == nil {
		vt.calls = map[string]int{}
	}
	vt.calls[op]++
}

// validateResponse returns what is wrong with a response to req (see
// openapi.ValidateResponse); validated, when not nil, is called with the
// operation id of each response checked against an operation.
func validateResponse(req *http.Request, status int, header http.Header, body []byte, validated func(string)) []string {
	op, problems := openapi.ValidateResponse(req, status, header, body)
	if op != "" && validated != nil {
		validated(op)
	}
	return problems
}

// env is an API server on a real store, with a client whose every
// response is validated against Airflow's specification.
type env struct {
	t       testing.TB
	backend string
	store   store.Store
	reg     *dag.Registry
	metrics *Metrics
	srv     *httptest.Server
	client  *http.Client
	vt      *validatingTransport
	token   string
	worker  store.Worker
	// outputs are the outputs work records for the tasks named.
	outputs map[string]json.RawMessage
}

// newEnv starts the API on a fresh store of backend with the fixture DAGs
// synced. configure may change the Config before the handler is built.
func newEnv(t testing.TB, backend string, configure ...func(*Config)) *env {
	t.Helper()
	st := openStore(t, backend)
	reg := fixtureRegistry()
	var specs []store.DAGSpec
	for _, d := range reg.DAGs() {
		specs = append(specs, store.SpecFromDAG(d))
	}
	if err := st.SyncDAGs(context.Background(), specs); err != nil {
		t.Fatalf("sync DAGs: %v", err)
	}
	e := &env{t: t, backend: backend, store: st, reg: reg, metrics: NewMetrics(nil)}
	cfg := Config{Store: st, Registry: reg, Metrics: e.metrics, Version: "1.2.3-test",
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for _, c := range configure {
		c(&cfg)
	}
	e.token = cfg.Token
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	e.vt = &validatingTransport{t: t, base: e.srv.Client().Transport}
	e.client = &http.Client{Transport: e.vt}
	e.worker = store.Worker{ID: "test-worker", Hostname: "testhost", PID: 4242, Slots: 1000,
		StartedAt: time.Now(), HeartbeatAt: time.Now()}
	if err := st.RegisterWorker(context.Background(), e.worker); err != nil {
		t.Fatalf("register worker: %v", err)
	}
	return e
}

// withHandler returns an env on the same store and worker serving h.
func (e *env) withHandler(h http.Handler) *env {
	e2 := *e
	e2.srv = httptest.NewServer(h)
	e.t.Cleanup(e2.srv.Close)
	e2.vt = &validatingTransport{t: e.t, base: e2.srv.Client().Transport}
	e2.client = &http.Client{Transport: e2.vt}
	return &e2
}

// testWriter writes log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// forBackends runs fn as a subtest on every backend.
func forBackends(t *testing.T, fn func(t *testing.T, backend string)) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) { fn(t, b) })
	}
}

// response is an answer read in full.
type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into a generic value.
func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, r.body)
	}
	return v
}

// do sends a request; body is sent as is when it is a string, else
// encoded as JSON. headers are name, value pairs. The token, when set, is
// sent unless headers set Authorization.
func (e *env) do(method, path string, body any, headers ...string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			e.t.Fatalf("encode body: %v", err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatalf("new request: %v", err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("read body: %v", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// ok sends a request and fails the test unless it answers want.
func (e *env) ok(want int, method, path string, body any, headers ...string) map[string]any {
	e.t.Helper()
	r := e.do(method, path, body, headers...)
	if r.status != want {
		e.t.Fatalf("%s %s: status %d, want %d\n%s", method, path, r.status, want, r.body)
	}
	if want == http.StatusNoContent || len(r.body) == 0 {
		return nil
	}
	return r.json(e.t)
}

// fixtureRegistry returns the DAGs the API tests use:
//   - etl: extract -> transform -> load, @daily, tags prod and etl;
//   - fan: start -> a, b; a -> join, b -> join (join all_done), hourly cron;
//   - solo: one Shell task, manual only, paused by some tests.
func fixtureRegistry() *dag.Registry {
	reg := dag.NewRegistry()
	noop := func(*dag.Context) error { return nil }
	etl := dag.New("etl", dag.Schedule("@daily"), dag.Tags("prod", "etl"),
		dag.Description("extract, transform, load"),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), dag.MaxActiveRuns(16))
	ex := etl.Func("extract", noop, dag.Retries(2), dag.RetryDelay(90*time.Second))
	tr := etl.Func("transform", noop, dag.Timeout(time.Hour), dag.Priority(5))
	ld := etl.Shell("load", "echo load")
	ex.SetDownstream(tr)
	tr.SetDownstream(ld)
	reg.Register(etl)

	fan := dag.New("fan", dag.Schedule("0 * * * *"), dag.Tags("dev"),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)))
	st := fan.Func("start", noop)
	a := fan.Shell("a", "true")
	b := fan.HTTP("b", dag.HTTPRequest{Method: "GET", URL: "http://127.0.0.1:9/"})
	join := fan.Func("join", noop, dag.Trigger(dag.AllDone))
	st.SetDownstream(a, b)
	join.SetUpstream(a, b)
	reg.Register(fan)

	solo := dag.New("solo", dag.Description("manual only"))
	solo.Shell("only", "echo solo")
	reg.Register(solo)
	return reg
}

// trigger creates a manual run through the API and returns it.
func (e *env) trigger(dagID string, body map[string]any) map[string]any {
	e.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	return e.ok(http.StatusOK, "POST", "/api/v1/dags/"+dagID+"/dagRuns", body)
}

// work plays a worker: it claims every queued task instance, writes a log
// line for it and finishes it with outcome(taskID) (success when nil or
// ""), until nothing is queued. It returns how many tries it ran.
func (e *env) work(outcome func(taskID string) state.TaskState) int {
	e.t.Helper()
	ctx := context.Background()
	n := 0
	for {
		claimed, err := e.store.ClaimTasks(ctx, e.worker, 1000, time.Now())
		if err != nil {
			e.t.Fatalf("claim: %v", err)
		}
		if len(claimed) == 0 {
			return n
		}
		var results []store.Result
		for _, c := range claimed {
			a := store.Try{ID: c.ID, TryNumber: c.TryNumber}
			line := fmt.Sprintf("running %s of %s try %d\n", c.TaskID, c.DAGRunID, c.TryNumber)
			if err := e.store.AppendLog(ctx, a, []byte(line)); err != nil {
				e.t.Fatalf("append log: %v", err)
			}
			s := state.Success
			if outcome != nil {
				if o := outcome(c.TaskID); o != "" {
					s = o
				}
			}
			var out json.RawMessage
			if s == state.Success {
				out = e.outputs[c.TaskID]
			}
			results = append(results, store.Result{Try: a, State: s, Output: out, EndedAt: time.Now()})
			n++
		}
		if _, err := e.store.FinishTasks(ctx, results); err != nil {
			e.t.Fatalf("finish: %v", err)
		}
	}
}

// str returns m[key] as a string ("" when absent or not a string).
func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// items returns m[key] as a list of objects.
func items(t testing.TB, m map[string]any, key string) []map[string]any {
	t.Helper()
	raw, ok := m[key].([]any)
	if !ok {
		t.Fatalf("%q is not a list in %v", key, m)
	}
	out := make([]map[string]any, len(raw))
	for i, x := range raw {
		out[i], _ = x.(map[string]any)
	}
	return out
}

// num returns m[key] as an int.
func num(m map[string]any, key string) int {
	f, _ := m[key].(float64)
	return int(f)
}
