// Package ui serves Trellis's web UI: server-rendered pages (html/template)
// whose live parts — the DAG list, the grid, the graph, task instances and
// logs — a small script fills from the REST API under /api/v1. Every
// asset is embedded, so the UI works offline and needs nothing installed.
//
// With an API token the UI asks for it once (/login) and keeps it in the
// API's session cookie (api.Sessions: HttpOnly, SameSite=Strict, a CSRF
// token in every page for the changes the script asks); without a token
// the API's loopback-only rule applies to the UI too.
package ui

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
)

//go:embed static templates
var files embed.FS

// Config configures the UI handler.
type Config struct {
	// Registry holds the DAGs compiled into the binary: the DAG pages'
	// details (tasks, rules, schedule) come from it.
	Registry *dag.Registry
	// Token is the API token (TRELLIS_API_TOKEN); empty means no login.
	Token string
	// Clock tells the next fire times of schedules; nil means the wall clock.
	Clock clock.Clock
	// Logger receives template errors; nil discards them.
	Logger *slog.Logger
}

// ui is the handler's state.
type ui struct {
	reg      *dag.Registry
	sessions *api.Sessions // nil without a token
	token    [sha256.Size]byte
	clock    clock.Clock
	log      *slog.Logger
	pages    map[string]*template.Template
	assets   map[string]asset
}

// asset is an embedded static file with its ETag.
type asset struct {
	data []byte
	etag string
}

// New returns the UI's handler. Mount it with Mount next to the API's.
func New(cfg Config) (http.Handler, error) {
	u := &ui{reg: cfg.Registry, clock: cfg.Clock, log: cfg.Logger, pages: map[string]*template.Template{},
		assets: map[string]asset{}}
	if u.reg == nil {
		u.reg = dag.NewRegistry()
	}
	if u.clock == nil {
		u.clock = clock.Real{}
	}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Token != "" {
		u.sessions = api.NewSessions(cfg.Token)
		u.token = sha256.Sum256([]byte(cfg.Token))
	}
	err := fs.WalkDir(files, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		u.assets[strings.TrimPrefix(p, "static/")] = asset{data: data, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ui: read assets: %w", err)
	}
	funcs := template.FuncMap{"asset": u.assetURL}
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("ui: parse layout: %w", err)
	}
	for _, name := range []string{"dags", "dag", "run", "task", "trigger", "login", "notfound"} {
		t, err := template.Must(base.Clone()).ParseFS(files, "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("ui: parse page %s: %w", name, err)
		}
		u.pages[name] = t
	}
	return u.routes(), nil
}

// assetURL is the address of a static file, with its content hash so
// browsers may keep it as long as it does not change.
func (u *ui) assetURL(name string) string {
	a, ok := u.assets[name]
	if !ok {
		return "/static/" + name
	}
	return "/static/" + name + "?v=" + strings.Trim(a.etag, `"`)
}

// Mount returns a handler that sends /api/ and /metrics to apiHandler and
// everything else to uiHandler.
func Mount(apiHandler, uiHandler http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/api/", apiHandler)
	mux.Handle("/metrics", apiHandler)
	mux.Handle("/", uiHandler)
	return mux
}

func (u *ui) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(securityHeaders, middleware.GetHead)
	r.Get("/static/*", u.static)
	r.Get("/favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, u.assetURL("favicon.svg"), http.StatusFound)
	})
	r.Get("/login", u.getLogin)
	r.Post("/login", u.postLogin)
	r.Post("/logout", u.postLogout)
	r.Group(func(r chi.Router) {
		r.Use(u.requireSession)
		r.Get("/", u.page("dags", func(*http.Request) (map[string]any, error) { return map[string]any{}, nil }))
		r.Get("/dags/{dag_id}", u.page("dag", u.dagData))
		r.Get("/dags/{dag_id}/trigger", u.page("trigger", u.triggerData))
		r.Get("/dags/{dag_id}/runs/{run_id}", u.page("run", u.runData))
		r.Get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", u.page("task", u.taskData))
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		u.render(w, r, http.StatusNotFound, "notfound", map[string]any{"Title": "Not found", "Path": r.URL.Path})
	})
	return r
}

// securityHeaders keeps pages out of frames and scripts to this origin.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

func (u *ui) static(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/static/")
	a, ok := u.assets[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", a.etag)
	if r.URL.Query().Get("v") != "" {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, path.Base(name), time.Time{}, bytes.NewReader(a.data))
}

// requireSession sends a browser without a valid session to the login
// page when a token is configured.
func (u *ui) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u.sessions != nil {
			if _, ok := u.sessions.Check(r); !ok {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// page renders a page with the data of fn, which may answer a 404.
func (u *ui) page(name string, fn func(r *http.Request) (map[string]any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		data, err := fn(r)
		if err != nil {
			u.render(w, r, http.StatusNotFound, "notfound", map[string]any{"Title": "Not found", "Path": r.URL.Path, "Detail": err.Error()})
			return
		}
		u.render(w, r, http.StatusOK, name, data)
	}
}

// render executes a page into a buffer first, so a template error is a
// clean 500 and not half a page.
func (u *ui) render(w http.ResponseWriter, r *http.Request, status int, name string, data map[string]any) {
	data["Page"] = name
	data["AuthOn"] = u.sessions != nil
	if u.sessions != nil {
		if csrf, ok := u.sessions.Check(r); ok {
			data["CSRF"] = csrf
			data["LoggedIn"] = true
		}
	}
	var buf bytes.Buffer
	if err := u.pages[name].ExecuteTemplate(&buf, "layout.html", data); err != nil {
		u.log.Error("ui: render page", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (u *ui) getLogin(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.URL.Query().Get("next"))
	if u.sessions == nil {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	u.render(w, r, http.StatusOK, "login", map[string]any{"Title": "Log in", "Next": next})
}

// postLogin checks the token of the form and sets the session cookie.
func (u *ui) postLogin(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.FormValue("next"))
	if u.sessions == nil {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	got := sha256.Sum256([]byte(r.FormValue("token")))
	if subtle.ConstantTimeCompare(got[:], u.token[:]) != 1 {
		u.render(w, r, http.StatusUnauthorized, "login", map[string]any{"Title": "Log in", "Next": next,
			"Error": "That token is not the server's API token (TRELLIS_API_TOKEN)."})
		return
	}
	http.SetCookie(w, u.sessions.New(r))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (u *ui) postLogout(w http.ResponseWriter, r *http.Request) {
	if u.sessions != nil {
		http.SetCookie(w, u.sessions.Expired(r))
	}
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// safeNext keeps a redirect target on this site.
func safeNext(next string) string {
	if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

// lookup returns the DAG of the path's dag_id.
func (u *ui) lookup(r *http.Request) (*dag.DAG, error) {
	id := param(r, "dag_id")
	d := u.reg.Lookup(id)
	if d == nil {
		return nil, fmt.Errorf("this server has no DAG %q", id)
	}
	return d, nil
}

// taskRow is a task of the DAG page's details.
type taskRow struct {
	ID, Kind, TriggerRule string
	Retries               int
	RetryDelay, Timeout   string
	Priority              int
	Upstream              string
}

func (u *ui) dagData(r *http.Request) (map[string]any, error) {
	d, err := u.lookup(r)
	if err != nil {
		return nil, err
	}
	order, err := d.TopologicalOrder()
	if err != nil {
		order = d.Tasks()
	}
	rows := make([]taskRow, len(order))
	for i, t := range order {
		rows[i] = taskRow{ID: t.ID(), Kind: string(t.Kind()), TriggerRule: string(t.TriggerRule()), Retries: t.Retries(),
			RetryDelay: duration(t.RetryDelay()), Timeout: duration(t.Timeout()), Priority: t.Priority(),
			Upstream: strings.Join(t.UpstreamIDs(), ", ")}
	}
	data := map[string]any{"Title": d.ID(), "DAG": d.ID(), "Description": d.Description(), "Tags": d.Tags(),
		"Schedule": d.ScheduleExpr(), "Tasks": rows, "MaxActiveRuns": d.MaxActiveRuns(), "Catchup": d.Catchup()}
	if !d.StartDate().IsZero() {
		data["StartDate"] = d.StartDate().UTC().Format(time.RFC3339)
	}
	if tt, err := d.ParsedSchedule(); err == nil && tt != nil {
		var next []string
		t := u.clock.Now()
		for range 5 {
			t = tt.Next(t)
			if t.IsZero() || (!d.EndDate().IsZero() && t.After(d.EndDate())) {
				break
			}
			next = append(next, t.UTC().Format(time.RFC3339))
		}
		data["NextFires"] = next
	}
	return data, nil
}

func duration(d time.Duration) string {
	if d == 0 {
		return "—"
	}
	return d.String()
}

func (u *ui) triggerData(r *http.Request) (map[string]any, error) {
	d, err := u.lookup(r)
	if err != nil {
		return nil, err
	}
	params := d.Params()
	if params == nil {
		params = map[string]any{}
	}
	conf, err := json.MarshalIndent(params, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("the params of DAG %q are not JSON: %w", d.ID(), err)
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return map[string]any{"Title": "Trigger " + d.ID(), "DAG": d.ID(), "Conf": string(conf), "Params": keys}, nil
}

// runData and taskData serve runs of DAGs the binary no longer has too:
// their history is in the store, and the page reads it from the API.
func (u *ui) runData(r *http.Request) (map[string]any, error) {
	dagID, run := param(r, "dag_id"), param(r, "run_id")
	return map[string]any{"Title": run + " · " + dagID, "DAG": dagID, "Run": run}, nil
}

func (u *ui) taskData(r *http.Request) (map[string]any, error) {
	dagID, run, task := param(r, "dag_id"), param(r, "run_id"), param(r, "task_id")
	data := map[string]any{"Title": task + " · " + run, "DAG": dagID, "Run": run, "Task": task}
	// ?map_index=n shows one call instance of a callable; a callable's
	// page without it lists the run's calls of it.
	if v := r.URL.Query().Get("map_index"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("map_index %q is not a call's map index (0, 1, 2, …)", v)
		}
		data["MapIndex"], data["Title"] = strconv.Itoa(n), fmt.Sprintf("%s[%d] · %s", task, n, run)
	}
	if d := u.reg.Lookup(dagID); d != nil {
		if t := d.Task(task); t != nil {
			data["Kind"] = string(t.Kind())
			data["TriggerRule"] = string(t.TriggerRule())
			data["Retries"] = t.Retries()
			if t.Kind() == dag.KindCallable && data["MapIndex"] == nil {
				data["Calls"] = true
			}
		}
	}
	return data, nil
}

// param returns a path parameter, percent-decoded: chi routes on the
// escaped path when there is one (run ids hold ':' and '+').
func param(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if r.URL.RawPath != "" {
		if u, err := url.PathUnescape(v); err == nil {
			return u
		}
	}
	return v
}
