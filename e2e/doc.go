// Package e2e holds Trellis's end-to-end tests: they build the trellis
// binary, run `trellis serve` and `trellis api` as real processes on
// PostgreSQL and on SQLite, and drive them over HTTP the way users and
// Airflow clients do, validating every response against Airflow's
// specification. TestMultiHost (Linux, root) runs a scheduler, the API and
// two worker hosts in network namespaces of its own around one PostgreSQL,
// and cuts and crashes them mid-run. The package has no code besides its
// tests.
package e2e
