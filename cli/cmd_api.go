package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
	"github.com/trellis-dag/trellis/ui"
)

func init() { addCommand("", newAPICmd) }

// Defaults of the flags shared by `trellis serve` and `trellis api`.
const (
	defaultConnectTimeout  = 30 * time.Second
	defaultShutdownTimeout = 10 * time.Second
)

// apiFlags are the flags of the commands that serve the REST API.
type apiFlags struct {
	insecureNoAuth  bool
	connectTimeout  time.Duration
	shutdownTimeout time.Duration
	eventRetention  time.Duration
}

func (f *apiFlags) add(fs *pflag.FlagSet) {
	fs.BoolVar(&f.insecureNoAuth, "insecure-no-auth", false,
		"serve the API without a token on a non-loopback --addr (anyone who can reach it can trigger, clear and delete runs)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", defaultConnectTimeout,
		"how long an unreachable PostgreSQL server is retried at start-up before giving up")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", defaultShutdownTimeout,
		"on shutdown, how long API requests in flight may take to finish")
	fs.DurationVar(&f.eventRetention, "event-retention", store.DefaultEventRetention,
		"how long an event posted to /api/v1/events is kept for tasks that defer waiting on it after it arrived")
}

// check validates the flags and the listen address of cfg: without a
// token the API may only listen on a loopback address unless
// --insecure-no-auth is given (CONTRACT §5). It runs before anything is
// opened, so a refused address costs nothing.
func (f *apiFlags) check(cfg Config) error {
	if f.connectTimeout <= 0 {
		return usagef("--connect-timeout must be positive, got %v", f.connectTimeout)
	}
	if f.shutdownTimeout <= 0 {
		return usagef("--shutdown-timeout must be positive, got %v", f.shutdownTimeout)
	}
	if f.eventRetention < 0 {
		return usagef("--event-retention must not be negative, got %v (0 means the default, %v)", f.eventRetention, store.DefaultEventRetention)
	}
	if cfg.APIToken != "" || f.insecureNoAuth {
		return nil
	}
	loopback, err := api.IsLoopback(cfg.Addr)
	if err != nil {
		return usagef("--addr: %v", err)
	}
	if !loopback {
		return usagef("refusing to serve the API without a token on the non-loopback address %s: "+
			"set a token (--api-token or TRELLIS_API_TOKEN), listen on a loopback address such as 127.0.0.1:8080, "+
			"or pass --insecure-no-auth to serve it unauthenticated", cfg.Addr)
	}
	return nil
}

func newAPICmd(a *app) *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Serve the REST API and the Prometheus metrics alone",
		Long: `Api serves the Airflow-compatible REST API under /api/v1, the web UI at /
and the Prometheus metrics at /metrics, against the database of --database-url (applying
pending migrations first), without a scheduler or workers: run it next to
"trellis scheduler" and "trellis worker" to scale the parts apart, or use
"trellis serve" to run everything in one process.

Runs triggered through this API are created in the database and started at
once when their DAG has room; the scheduler admits the others as runs
finish. /metrics serves the API's own request metrics and the Go runtime
and process collectors; the scheduler and task metrics are exported by
"trellis serve" (see docs/metrics.md).

With a token (--api-token, TRELLIS_API_TOKEN) every request but
GET /api/v1/health needs "Authorization: Bearer <token>". Without one the API
only listens on a loopback address, unless --insecure-no-auth is given.

It runs until SIGTERM or SIGINT, then lets requests in flight finish within
--shutdown-timeout.`,
		Example: `  trellis api --database-url postgres://trellis@db:5432/trellis --addr 0.0.0.0:8080 --api-token "$TOKEN"
  TRELLIS_DATABASE_URL=sqlite:trellis.db trellis api`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(a.config); err != nil {
				return err
			}
			return a.runAPI(cmd.Context(), f)
		},
	}
	f.add(cmd.Flags())
	return cmd
}

// runAPI serves the API until ctx ends (the signal).
func (a *app) runAPI(ctx context.Context, f apiFlags) error {
	st, err := a.openServingStore(ctx, f)
	if err != nil {
		return err
	}
	defer st.Close()
	metrics := api.NewMetrics(a.clock)
	srv, err := a.newAPIServer(st, metrics, nil, nil, f)
	if err != nil {
		return err
	}
	if err := srv.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("api: %w", err)
	}
	fmt.Fprintf(a.stdout, "trellis: API serving on %s (store %s)\n", srv.URL(), store.RedactURL(a.config.DatabaseURL))
	a.printEndpoints(srv.URL())
	<-ctx.Done()
	a.logger.Info("api: shutting down", "reason", context.Cause(ctx))
	srv.Stop()
	a.logger.Info("api: stopped")
	return nil
}

// openServingStore opens the configured database for a serving command,
// applying pending migrations and retrying an unreachable PostgreSQL
// server for --connect-timeout.
func (a *app) openServingStore(ctx context.Context, f apiFlags) (store.Store, error) {
	st, err := dial.Open(ctx, a.config.DatabaseURL, dial.Options{
		Logger: a.logger, Migrate: true, ConnectTimeout: f.connectTimeout})
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", store.RedactURL(a.config.DatabaseURL), err)
	}
	return st, nil
}

// newAPIServer builds the REST API handler on st and the HTTP server on
// the configured address. triggerer and pauser are the scheduler's when
// one runs in this process; nil means the store's.
func (a *app) newAPIServer(st store.Store, metrics *api.Metrics, triggerer api.Triggerer, pauser api.Pauser, f apiFlags) (*api.Server, error) {
	cfg := api.Config{
		Store:     st,
		Registry:  a.registry,
		Triggerer: triggerer,
		Pauser:    pauser,
		Logger:    a.logger,
		Token:     a.config.APIToken,
		Metrics:   metrics,
		Version:   readBuildInfo().Version,
		Clock:     a.clock,

		EventRetention: f.eventRetention,
	}
	if triggerer != nil {
		// The scheduler of this process reports its heartbeats to metrics.
		cfg.Heartbeats = metrics
	}
	apiHandler, err := api.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	uiHandler, err := ui.New(ui.Config{Registry: a.registry, Token: a.config.APIToken, Clock: a.clock, Logger: a.logger})
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	h := ui.Mount(apiHandler, uiHandler)
	srv, err := api.NewServer(a.config.Addr, h, api.ServerOptions{
		Authenticated:   a.config.APIToken != "",
		InsecureNoAuth:  f.insecureNoAuth,
		Logger:          a.logger,
		ShutdownTimeout: f.shutdownTimeout,
	})
	if errors.Is(err, api.ErrInsecureAddress) {
		return nil, usagef("%v", err)
	}
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	return srv, nil
}

// printEndpoints tells where the API and the metrics are.
func (a *app) printEndpoints(base string) {
	auth := ""
	if a.config.APIToken != "" {
		auth = " (with Authorization: Bearer <token>)"
	}
	fmt.Fprintf(a.stdout, "trellis: web UI %s/, REST API %s/api/v1, metrics %s/metrics%s; stop with Ctrl-C or SIGTERM\n", base, base, base, auth)
}
