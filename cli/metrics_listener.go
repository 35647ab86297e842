package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/trellis-dag/trellis/api"
)

// envMetricsAddr is the environment variable of --metrics-addr.
const envMetricsAddr = "TRELLIS_METRICS_ADDR"

// metricsFlags are the metrics listener flags of `trellis worker` and
// `trellis scheduler`, which serve GET /metrics on an address of their
// own (off by default: several may run on one host).
type metricsFlags struct {
	addr           string
	insecureNoAuth bool
}

func (f *metricsFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.addr, "metrics-addr", "", "host:port to serve Prometheus metrics on at /metrics; empty = none (env "+envMetricsAddr+")")
	fs.BoolVar(&f.insecureNoAuth, "insecure-no-auth", false,
		"serve /metrics without a token on a non-loopback --metrics-addr")
}

// resolve takes --metrics-addr from the environment when not given and
// checks it: without a token it must be a loopback address unless
// --insecure-no-auth is given, as for the API.
func (f *metricsFlags) resolve(cmd *cobra.Command, a *app) error {
	if !cmd.Flags().Changed("metrics-addr") && a.lookupEnv != nil {
		if v, ok := a.lookupEnv(envMetricsAddr); ok {
			f.addr = v
		}
	}
	if f.addr == "" || a.config.APIToken != "" || f.insecureNoAuth {
		return nil
	}
	loopback, err := api.IsLoopback(f.addr)
	if err != nil {
		return usagef("--metrics-addr: %v", err)
	}
	if !loopback {
		return usagef("refusing to serve /metrics without a token on the non-loopback address %s: "+
			"set a token (--api-token or TRELLIS_API_TOKEN), use a loopback address such as 127.0.0.1:9101, "+
			"or pass --insecure-no-auth", f.addr)
	}
	return nil
}

// startMetrics serves m on --metrics-addr until Stop; nil when no
// address is set.
func (a *app) startMetrics(ctx context.Context, f metricsFlags, m *api.Metrics) (*api.Server, error) {
	if f.addr == "" {
		return nil, nil
	}
	srv, err := api.NewServer(f.addr, m.MetricsOnlyHandler(a.config.APIToken), api.ServerOptions{
		Authenticated: a.config.APIToken != "", InsecureNoAuth: f.insecureNoAuth, Logger: a.logger,
	})
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	if err := srv.Start(ctx); err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	a.logger.Info("serving metrics", "url", srv.URL()+"/metrics")
	return srv, nil
}
