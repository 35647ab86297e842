// Package e2e holds Trellis's end-to-end tests: they build the trellis
// binary, run `trellis serve` and `trellis api` as real processes on
// PostgreSQL and on SQLite, and drive them over HTTP the way users and
// Airflow clients do, validating every response against Airflow's
// specification. TestMultiHost (Linux, root) runs a scheduler, the API and
// two worker hosts in network namespaces of its own around one PostgreSQL,
// and cuts and crashes them mid-run. The TestUI tests drive the web UI in
// headless Chromium (chromedp) against `trellis serve` and `trellis api`;
// they skip without Chromium unless TRELLIS_TEST_REQUIRE_CHROMIUM is set,
// and save screenshots to $TRELLIS_UI_SCREENSHOTS (make screenshots).
// BenchmarkUI times the UI's pages on a large DAG and a 10,000-task run.
// The package has no code besides its tests.
package e2e
