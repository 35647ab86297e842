// Package bench is the end-to-end benchmark behind `trellis bench`: it
// runs scenarios (wide, chain, shell, cron, big) through the real
// scheduler, store and worker processes, measures them from the times the
// store recorded, and reports rows of {scenario, store, metric, value,
// unit} as a table and as JSON (CONTRACT §4).
//
// Every scenario gets a fresh database (a new PostgreSQL database, or a
// new SQLite file), a scheduler and a worker pool of its own. The pool
// re-executes the trellis binary as worker children, so the benchmark
// DAGs must exist there too: the pool passes their description in
// EnvDAGs, and a worker child registers them with RegisterFromEnv. The
// DAGs use reserved ids starting with IDPrefix and are never registered
// outside worker children, so they never appear in `trellis dags list`.
//
// Measurements:
//   - throughput is tasks / (run ended − run queued), the run's stored
//     times, so it covers run creation, every claim, execution, finish and
//     release, and the run's settling;
//   - edge latency is a downstream task's stored start minus its upstream
//     task's stored end;
//   - fire lag is a scheduled run's stored queued time minus the end of
//     its data interval;
//   - peak memory is the largest sum of the resident set sizes of the
//     benchmark process and all its descendants (worker children and the
//     processes of shell tasks), sampled from /proc.
package bench
