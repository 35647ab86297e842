// Package api serves Trellis's REST API and its Prometheus metrics.
//
// The API lives under /api/v1 and follows Apache Airflow's stable REST API
// (the specification is embedded in package api/openapi): the same paths,
// methods, field names, status codes and RFC 7807 problem bodies, for the
// subset of endpoints listed in docs/api.md, plus the extension
// GET /api/v1/dags/{dag_id}/graph. GET /metrics serves the registry of a
// Metrics in Prometheus's text format.
//
// New builds the http.Handler; NewServer runs it with timeouts and the
// listen-address safety check.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// Defaults of Config.
const (
	DefaultPageLimit                = 100
	DefaultMaxPageLimit             = 1000
	DefaultSchedulerHealthThreshold = 30 * time.Second
)

// SchedulerHeartbeats tells when a scheduler last showed it was alive.
// GET /api/v1/health reports it. A store that records scheduler
// heartbeats durably implements it, so an API process started apart from
// the scheduler sees them; *Metrics implements it from the heartbeats of
// the scheduler in its own process.
type SchedulerHeartbeats interface {
	// LatestSchedulerHeartbeat returns the newest scheduler heartbeat;
	// ok is false when there was none.
	LatestSchedulerHeartbeat(ctx context.Context) (t time.Time, ok bool, err error)
}

// Pauser pauses and unpauses DAGs. store.Store implements it; so does the
// scheduler, which also admits the queued runs of a DAG it unpauses.
type Pauser interface {
	SetPaused(ctx context.Context, dagID string, paused bool) error
}

// Config configures the API handler built by New.
type Config struct {
	// Store is the durable state the API reads and changes. Required.
	Store store.Store
	// Registry holds the DAGs compiled into the binary: their tasks and
	// graph are served from it. nil means an empty registry.
	Registry *dag.Registry
	// Triggerer creates the runs of POST …/dagRuns; nil means a
	// StoreTriggerer on Store.
	Triggerer Triggerer
	// Pauser pauses and unpauses DAGs for PATCH /dags/{dag_id}; nil means
	// Store.
	Pauser Pauser
	// Heartbeats reports the scheduler's latest heartbeat for /health; nil
	// means the newer of Store's (durable, written by every scheduler) and
	// Metrics' (a scheduler in this process).
	Heartbeats SchedulerHeartbeats
	// Logger receives request errors; nil discards them.
	Logger *slog.Logger
	// Token, when not empty, is the bearer token every request but
	// GET /api/v1/health must carry.
	Token string
	// Metrics is served at GET /metrics and counts API requests; nil
	// serves a fresh registry with only the runtime collectors.
	Metrics *Metrics
	// Version is reported by GET /api/v1/version.
	Version string
	// Clock tells the time of manual changes; nil means the wall clock.
	Clock clock.Clock
	// DefaultPageLimit is the page size when a list request sets none
	// (default 100, as in Airflow); MaxPageLimit is the largest accepted
	// (default 1000). A larger limit is a 400.
	DefaultPageLimit, MaxPageLimit int
	// SchedulerHealthThreshold is how old the latest scheduler heartbeat
	// may be for the scheduler to be reported healthy (default 30s, as in
	// Airflow).
	SchedulerHealthThreshold time.Duration
	// CacheTTL is how long the task instances of a finished run are
	// served from memory once read (default DefaultCacheTTL; negative
	// turns the cache off). Changes made through this API are seen at
	// once; clears and marks made by other processes within the TTL. See
	// runCache.
	CacheTTL time.Duration
	// EventRetention is how long POST /api/v1/events keeps an event for
	// tasks that defer waiting on it later (default
	// store.DefaultEventRetention).
	EventRetention time.Duration
}

// api holds what the handlers share.
type api struct {
	store      store.Store
	registry   *dag.Registry
	triggerer  Triggerer
	pauser     Pauser
	heartbeats SchedulerHeartbeats
	log        *slog.Logger
	token      [sha256.Size]byte
	hasToken   bool
	sessions   *Sessions // the UI's session cookies; nil without a token
	metrics    *Metrics
	version    string
	gitVersion *string
	clock      clock.Clock
	defLimit   int
	maxLimit   int
	healthAge  time.Duration
	cache      *runCache // nil: off
	runTIs     flights   // GET …/dagRuns/{run}/taskInstances reads in progress
	grids      recentReads
	eventKeep  time.Duration
}

// New returns the handler of the REST API (under /api/v1) and of
// GET /metrics. It returns an error when cfg.Store is nil.
func New(cfg Config) (http.Handler, error) {
	if cfg.Store == nil {
		return nil, errors.New("api: Config.Store is required")
	}
	a := &api{
		store:     cfg.Store,
		registry:  cfg.Registry,
		log:       cfg.Logger,
		metrics:   cfg.Metrics,
		version:   cfg.Version,
		clock:     cfg.Clock,
		defLimit:  cfg.DefaultPageLimit,
		maxLimit:  cfg.MaxPageLimit,
		healthAge: cfg.SchedulerHealthThreshold,
	}
	if a.registry == nil {
		a.registry = dag.NewRegistry()
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.metrics == nil {
		a.metrics = NewMetrics(cfg.Clock)
	}
	if a.clock == nil {
		a.clock = clock.Real{}
	}
	if a.defLimit <= 0 {
		a.defLimit = DefaultPageLimit
	}
	if a.maxLimit <= 0 {
		a.maxLimit = DefaultMaxPageLimit
	}
	a.eventKeep = cfg.EventRetention
	if a.eventKeep <= 0 {
		a.eventKeep = store.DefaultEventRetention
	}
	if a.healthAge <= 0 {
		a.healthAge = DefaultSchedulerHealthThreshold
	}
	if err := CheckToken(cfg.Token); err != nil {
		return nil, err
	}
	if cfg.Token != "" {
		a.token = sha256.Sum256([]byte(cfg.Token))
		a.hasToken = true
		a.sessions = NewSessions(cfg.Token)
	}
	a.triggerer = cfg.Triggerer
	if a.triggerer == nil {
		a.triggerer = &StoreTriggerer{Store: cfg.Store, Clock: a.clock, Logger: a.log}
	}
	a.pauser = cfg.Pauser
	if a.pauser == nil {
		a.pauser = cfg.Store
	}
	a.heartbeats = cfg.Heartbeats
	if a.heartbeats == nil {
		a.heartbeats = newestHeartbeat{cfg.Store, a.metrics}
	}
	if a.version == "" {
		a.version = "dev"
	}
	a.gitVersion = gitRevision()
	a.grids.now = a.clock.Now
	if cfg.CacheTTL >= 0 {
		ttl := cfg.CacheTTL
		if ttl == 0 {
			ttl = DefaultCacheTTL
		}
		a.cache = newRunCache(ttl, a.clock.Now)
	}
	return a.routes(), nil
}

// gitRevision returns the VCS revision the binary was built from, if known.
func gitRevision() *string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			v := s.Value
			return &v
		}
	}
	return nil
}

// handlerFunc is a handler that returns its error for writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (a *api) h(fn handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			a.writeError(w, r, err)
		}
	}
}

func (a *api) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.RequestID, a.instrument, a.recoverer, limitBody, checkQuery, middleware.GetHead)
	// Without the token, a client learns nothing of the paths that exist:
	// 404 and 405 come after authentication (but for /health, public).
	r.NotFound(a.authenticateUnlessHealth(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "", "no endpoint at "+r.URL.Path)
	}))
	r.MethodNotAllowed(a.authenticateUnlessHealth(a.methodNotAllowed))

	r.With(a.authenticate).Get("/metrics", a.metrics.Handler().ServeHTTP)

	r.Route("/api/v1", func(r chi.Router) {
		r.Get("/health", a.h(a.getHealth))
		r.Group(func(r chi.Router) {
			r.Use(a.authenticate)
			r.Get("/version", a.h(a.getVersion))

			r.Get("/dags", a.h(a.getDAGs))
			r.Get("/dags/{dag_id}", a.h(a.getDAG))
			r.Patch("/dags/{dag_id}", a.h(a.patchDAG))
			r.Get("/dags/{dag_id}/details", a.h(a.getDAGDetails))
			r.Get("/dags/{dag_id}/tasks", a.h(a.getTasks))
			r.Get("/dags/{dag_id}/tasks/{task_id}", a.h(a.getTask))
			r.Get("/dags/{dag_id}/graph", a.h(a.getGraph))
			r.With(middleware.Compress(5)).Get("/dags/{dag_id}/grid", a.h(a.getGrid))
			r.Post("/dags/{dag_id}/clearTaskInstances", a.h(a.postClearTaskInstances))
			r.Post("/dags/{dag_id}/updateTaskInstancesState", a.h(a.postUpdateTaskInstancesState))

			r.Post("/dags/~/dagRuns/list", a.h(a.postListRuns))
			r.Get("/dags/{dag_id}/dagRuns", a.h(a.getRuns))
			r.Post("/dags/{dag_id}/dagRuns", a.h(a.postRun))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}", a.h(a.getRun))
			r.Patch("/dags/{dag_id}/dagRuns/{dag_run_id}", a.h(a.patchRun))
			r.Delete("/dags/{dag_id}/dagRuns/{dag_run_id}", a.h(a.deleteRun))

			r.Post("/events", a.h(a.postEvent))

			r.Post("/dags/~/dagRuns/~/taskInstances/list", a.h(a.postListTaskInstances))
			r.Post("/dagRuns/purge", a.h(a.postPurge))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances", a.h(a.getTaskInstances))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}", a.h(a.getTaskInstance))
			r.Post("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/continue", a.h(a.postContinue))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{task_try_number}", a.h(a.getLog))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/listMapped", a.h(a.getMappedTaskInstances))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}", a.h(a.getMappedTaskInstance))
			r.Post("/dags/{dag_id}/calls/{task_id}", a.h(a.postCall))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries", a.h(a.getXComEntries))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}", a.h(a.getXComEntry))
			r.Get("/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/dependencies", a.h(a.getDependencies))
			r.Get("/pools", a.h(a.getPools))
			r.Post("/pools", a.h(a.postPool))
			r.Get("/pools/{pool_name}", a.h(a.getPool))
			r.Patch("/pools/{pool_name}", a.h(a.patchPool))
			r.Delete("/pools/{pool_name}", a.h(a.deletePool))
		})
	})
	return r
}

// methodNotAllowed answers 405 with the Allow header listing the methods
// the path has.
func (a *api) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	if rctx := chi.RouteContext(r.Context()); rctx != nil && rctx.Routes != nil {
		path := r.URL.RawPath
		if path == "" {
			path = r.URL.Path
		}
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if rctx.Routes.Match(chi.NewRouteContext(), m, path) {
				allowed = append(allowed, m)
			}
		}
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
	}
	writeProblem(w, http.StatusMethodNotAllowed, "",
		fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
}

// authenticate requires "Authorization: Bearer <token>" when a token is
// configured, comparing in constant time, or the UI's session cookie
// (Sessions.Allows: with the CSRF header for changes). Changes asked by a
// page of another site are refused, token or not.
func (a *api) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if crossSite(r) {
			writeProblem(w, http.StatusForbidden, "", "a page of another site may not change anything here")
			return
		}
		if a.hasToken {
			got, ok := bearerToken(r.Header.Get("Authorization"))
			if !ok && a.sessions.Allows(r) {
				next.ServeHTTP(w, r)
				return
			}
			sum := sha256.Sum256([]byte(got))
			if !ok || subtle.ConstantTimeCompare(sum[:], a.token[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
				detail := "the request needs the header Authorization: Bearer <token>"
				switch {
				case ok:
					detail = "the bearer token is not valid"
				case a.sessions.valid(r):
					detail = "a change made with the web UI's session cookie needs its CSRF token in the header " + CSRFHeader
				}
				writeProblem(w, http.StatusUnauthorized, "", detail)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// healthPath is the one path served without the token.
const healthPath = "/api/v1/health"

// authenticateUnlessHealth wraps h with authenticate except on healthPath.
func (a *api) authenticateUnlessHealth(h http.HandlerFunc) http.HandlerFunc {
	auth := a.authenticate(h)
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == healthPath {
			h(w, r)
			return
		}
		auth.ServeHTTP(w, r)
	}
}

// MinTokenLength is the shortest API token New accepts: a token is the
// only credential of the API, so it must not be guessable.
const MinTokenLength = 16

// CheckToken returns an error when token is set but shorter than
// MinTokenLength characters.
func CheckToken(token string) error {
	if n := utf8.RuneCountInString(token); token != "" && n < MinTokenLength {
		return fmt.Errorf("the API token is %d characters long; it must have at least %d "+
			"(make one with: openssl rand -hex 32)", n, MinTokenLength)
	}
	return nil
}

// checkQuery refuses a query string Go would read only in part (a ';'
// separator, a bad %-escape): url.Values drops such parameters silently.
func checkQuery(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
			writeProblem(w, http.StatusBadRequest, "", queryProblem(r.URL.RawQuery))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// queryProblem names the first parameter of a raw query that
// url.ParseQuery refuses, and why.
func queryProblem(raw string) string {
	for _, part := range strings.Split(raw, "&") {
		name, _, _ := strings.Cut(part, "=")
		shown := name
		if n, err := url.QueryUnescape(name); err == nil {
			shown = n
		}
		if len(shown) > 100 {
			shown = shown[:100] + "…"
		}
		if strings.Contains(part, ";") {
			return fmt.Sprintf("query parameter %q contains ';': separate parameters with '&' and write a ';' in a value as %%3B", shown)
		}
		if _, err := url.ParseQuery(part); err != nil {
			return fmt.Sprintf("query parameter %q is not valid URL encoding (a '%%' must start an escape such as %%25)", shown)
		}
	}
	return "the query string is not valid URL encoding"
}

// bearerToken extracts the token of a Bearer Authorization header; the
// scheme is case-insensitive (RFC 7235).
func bearerToken(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// limitBody refuses bodies over MaxBodyBytes: at once when the length is
// declared, else when the handler reads past it.
func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > MaxBodyBytes {
			writeProblem(w, http.StatusRequestEntityTooLarge, "", tooLarge().(*apiError).detail)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		next.ServeHTTP(w, r)
	})
}

// recoverer turns a panic in a handler into a logged 500 problem.
func (a *api) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				a.log.Error("panic in API handler", slog.String("method", r.Method),
					slog.String("path", r.URL.Path), slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
				a.writeError(w, r, fmt.Errorf("panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// instrument counts requests by route pattern, method and status.
func (a *api) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rctx := chi.RouteContext(r.Context()); rctx != nil {
			if p := rctx.RoutePattern(); p != "" {
				route = p
			}
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		a.metrics.apiRequest(route, r.Method, status, time.Since(start))
	})
}
