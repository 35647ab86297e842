package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/store"
)

// Environment variables of the retention flags.
const (
	envRetention    = "TRELLIS_RETENTION"
	envLogRetention = "TRELLIS_LOG_RETENTION"
)

// retentionFlags are the retention settings of `serve` and `scheduler`.
type retentionFlags struct {
	runsText, logsText string
	runs, logs         time.Duration
}

func (r *retentionFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&r.runsText, "retention", "",
		"delete finished runs (with their task instances and logs) this long after they end, e.g. 30d; "+
			"empty keeps them; a DAG's dag.Retention overrides it (env "+envRetention+")")
	fs.StringVar(&r.logsText, "log-retention", "",
		"delete the logs of finished runs this long after they end, e.g. 7d (usually shorter than --retention); "+
			"empty keeps them as long as their runs (env "+envLogRetention+")")
}

// resolve reads the environment for flags not given and parses both.
func (r *retentionFlags) resolve(cmd *cobra.Command, a *app) error {
	for _, f := range []struct {
		name, env string
		text      *string
		d         *time.Duration
	}{{"retention", envRetention, &r.runsText, &r.runs}, {"log-retention", envLogRetention, &r.logsText, &r.logs}} {
		source := "--" + f.name
		if !cmd.Flags().Changed(f.name) && a.lookupEnv != nil {
			if v, ok := a.lookupEnv(f.env); ok && v != "" {
				*f.text, source = v, "environment variable "+f.env
			}
		}
		if *f.text == "" {
			continue
		}
		d, err := clock.ParseDuration(*f.text)
		if err != nil {
			return usagef("%s: %v", source, err)
		}
		if d <= 0 {
			return usagef("%s must be positive (or empty to keep everything), got %q", source, *f.text)
		}
		*f.d = d
	}
	return nil
}

// newPurger returns the purger of the retention policy, nil when there is
// nothing to purge (no retention set and no DAG with its own).
func (a *app) newPurger(st store.Store, r retentionFlags, metrics scheduler.PurgeMetrics) *scheduler.Purger {
	p := scheduler.NewPurger(scheduler.RetentionConfig{Store: st, Registry: a.registry, Runs: r.runs, Logs: r.logs,
		Clock: a.clock, Logger: a.logger, Metrics: metrics})
	if !p.Enabled() {
		return nil
	}
	return p
}

func init() { addCommand("db", newDBCleanCmd) }

func newDBCleanCmd(a *app) *cobra.Command {
	var before, dagID string
	var dry bool
	cmd := &cobra.Command{
		Use:   "clean --before TIME|AGE [--dag ID] [--dry-run]",
		Short: "Delete finished runs that ended before a time, with their task instances and logs",
		Long: `Clean deletes the finished runs (success or failed) that ended before --before,
with their task instances and logs, oldest first, in transactions of 100
runs, so that a running server is never held up for long. Queued and running
runs are never touched. --before is a date-time (2026-01-02T00:00:00Z, or a
date) or an age counted back from now (30d, 12h, 1w). It prints what it
deleted, or with --dry-run what it would delete.

On SQLite the space the rows used goes back to the file system as they are
deleted. To delete old runs continuously, give "trellis serve" or "trellis
scheduler" --retention (and --log-retention).`,
		Example: `  trellis db clean --before 90d --dry-run
  trellis db clean --before 2026-01-01T00:00:00Z --dag etl`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if before == "" {
				return usagef("--before is required: a date-time (2026-01-02T00:00:00Z) or an age (30d, 12h)")
			}
			t, err := cleanBefore(before, a.clock.Now())
			if err != nil {
				return err
			}
			st, err := a.openStore(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer st.Close()
			if dagID != "" {
				if _, err := st.GetDAG(cmd.Context(), dagID); err != nil {
					return usagef("--dag %q: the database has no such DAG", dagID)
				}
			}
			q := store.PurgeQuery{Before: t, DAGID: dagID, DryRun: dry}
			p, err := store.PurgeAll(cmd.Context(), st, q, nil)
			what := "deleted"
			if dry {
				what = "would delete"
			}
			scope := "every DAG"
			if dagID != "" {
				scope = "DAG " + dagID
			}
			fmt.Fprintf(a.stdout, "%s %s, %s and the logs of %d tries: the finished runs of %s that ended before %s\n",
				what, plural(p.Runs, "run"), plural(p.TaskInstances, "task instance"), p.Logs,
				scope, t.UTC().Format(time.RFC3339))
			if err != nil {
				return fmt.Errorf("clean stopped part-way: %w", err)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&before, "before", "", "delete runs that ended before this date-time or age (e.g. 2026-01-01T00:00:00Z, 30d)")
	fs.StringVar(&dagID, "dag", "", "only the runs of this DAG")
	fs.BoolVar(&dry, "dry-run", false, "only print what would be deleted")
	return cmd
}

// cleanBefore reads --before: a date-time or date, or an age before now.
func cleanBefore(s string, now time.Time) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	age, err := clock.ParseDuration(s)
	if err != nil {
		return time.Time{}, usagef("--before %q is neither a date-time (2026-01-02T00:00:00Z) nor an age (30d, 12h)", s)
	}
	return now.Add(-age), nil
}
