package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/dag"
)

func registry() *dag.Registry {
	reg := dag.NewRegistry()
	d := dag.New("etl", dag.Schedule("0 6 * * *"), dag.Tags("prod"), dag.Params(map[string]any{"rows": 10}),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)))
	a := d.Func("extract", func(*dag.Context) error { return nil }, dag.Retries(2))
	b := d.Shell("load", "true", dag.Trigger(dag.AllDone))
	a.SetDownstream(b)
	dag.NewCallable(d, "sq", func(_ *dag.Context, n int) (int, error) { return n * n, nil })
	reg.Register(d)
	return reg
}

// server serves the UI next to a stand-in for the API (the UI's own tests
// need no store: its pages read the API from the browser).
func server(t *testing.T, token string) *httptest.Server {
	t.Helper()
	h, err := New(Config{Registry: registry(), Token: token})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	apiStub := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api "+r.URL.Path) })
	srv := httptest.NewServer(Mount(apiStub, h))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func TestPages(t *testing.T) {
	srv := server(t, "")
	for _, tc := range []struct {
		path   string
		status int
		want   []string
	}{
		{"/", 200, []string{`data-page="dags"`, "dag-rows", "/static/app.js?v="}},
		{"/dags/etl", 200, []string{`data-dag="etl"`, "<code>0 6 * * *</code>", "all_done", "extract", "Next fire times", "dagre.min.js"}},
		{"/dags/etl/trigger", 200, []string{`&#34;rows&#34;: 10`, "<code>rows</code>"}},
		{"/dags/etl/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00", 200, []string{`data-run="manual__2026-01-01T00:00:00&#43;00:00"`}},
		{"/dags/etl/runs/r1/tasks/extract", 200, []string{`data-task="extract"`, "func"}},
		{"/dags/etl/runs/r1/tasks/sq", 200, []string{`id="calls"`, "Calls of", "callable"}},
		{"/dags/etl/runs/r1/tasks/sq?map_index=3", 200, []string{`data-map-index="3"`, "sq[3]", `id="log"`}},
		{"/dags/etl/runs/r1/tasks/sq?map_index=-1", 404, []string{"map_index"}},
		{"/dags/etl/runs/r1/tasks/sq?map_index=x", 404, []string{"map_index"}},
		{"/dags/nope", 404, []string{"no DAG", "nope"}},
		{"/dags/gone/runs/r1", 200, []string{`data-dag="gone"`, `data-run="r1"`}}, // history of a DAG the binary lost
		{"/elsewhere", 404, []string{"Not found"}},
		{"/api/v1/dags", 200, []string{"api /api/v1/dags"}},
		{"/metrics", 200, []string{"api /metrics"}},
	} {
		resp, body := get(t, http.DefaultClient, srv.URL+tc.path)
		if resp.StatusCode != tc.status {
			t.Errorf("GET %s: %d, want %d", tc.path, resp.StatusCode, tc.status)
		}
		for _, w := range tc.want {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s: the page lacks %q", tc.path, w)
			}
		}
		if tc.status == 200 && !strings.HasPrefix(tc.path, "/api") && tc.path != "/metrics" &&
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("GET %s: no Content-Security-Policy", tc.path)
		}
	}
}

func TestStatic(t *testing.T) {
	srv := server(t, "")
	resp, body := get(t, http.DefaultClient, srv.URL+"/static/app.js")
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || etag == "" || !strings.Contains(body, "use strict") {
		t.Fatalf("GET /static/app.js: %d, ETag %q", resp.StatusCode, etag)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/static/app.js", nil)
	req.Header.Set("If-None-Match", etag)
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusNotModified {
		t.Errorf("GET with the ETag: %d, want 304", r2.StatusCode)
	}
	for _, p := range []string{"/static/vendor/dagre.min.js", "/static/vendor/dagre.LICENSE", "/static/app.css", "/static/favicon.svg"} {
		if resp, _ := get(t, http.DefaultClient, srv.URL+p); resp.StatusCode != 200 {
			t.Errorf("GET %s: %d", p, resp.StatusCode)
		}
	}
	if resp, err := http.Head(srv.URL + "/"); err != nil || resp.StatusCode != 200 {
		t.Errorf("HEAD /: %v %v", resp, err)
	}
	if resp, _ := get(t, http.DefaultClient, srv.URL+"/static/nope.js"); resp.StatusCode != 404 {
		t.Errorf("GET a missing asset: %d", resp.StatusCode)
	}
}

func TestLogin(t *testing.T) {
	const token = "tok-123-of-the-ui-test"
	srv := server(t, token)
	resp, _ := get(t, noRedirect, srv.URL+"/dags/etl?x=1")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login?next="+url.QueryEscape("/dags/etl?x=1") {
		t.Fatalf("a page without a session: %d to %q, want 303 to the login page", resp.StatusCode, resp.Header.Get("Location"))
	}
	post := func(tok, next string) *http.Response {
		resp, err := noRedirect.PostForm(srv.URL+"/login", url.Values{"token": {tok}, "next": {next}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := post("wrong", "/"); r.StatusCode != http.StatusUnauthorized || len(r.Cookies()) != 0 {
		t.Errorf("login with a wrong token: %d with cookies %v, want 401 and none", r.StatusCode, r.Cookies())
	}
	r := post(token, "//evil.example/")
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/" {
		t.Errorf("login with next=//evil.example/: %d to %q, want a redirect to /", r.StatusCode, r.Header.Get("Location"))
	}
	var session *http.Cookie
	for _, c := range r.Cookies() {
		if c.Name == api.SessionCookie {
			session = c
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login: session cookie %+v, want HttpOnly SameSite=Strict", session)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/dags/etl", nil)
	req.AddCookie(session)
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	check, _ := http.NewRequest("GET", "/", nil)
	check.AddCookie(session)
	csrf, _ := api.NewSessions(token).Check(check)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `<meta name="trellis-csrf" content="`+csrf+`">`) {
		t.Errorf("a page with the session: %d, CSRF meta present: %v", resp.StatusCode, strings.Contains(string(body), csrf))
	}
	for _, next := range []string{"", "https://evil.example", "//x", "/\\x", "/dags/etl"} {
		want := next
		if next != "/dags/etl" {
			want = "/"
		}
		if got := safeNext(next); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", next, got, want)
		}
	}
}
