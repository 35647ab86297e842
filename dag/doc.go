// Package dag is how Trellis users define workflows: directed acyclic
// graphs of tasks with a schedule, in plain Go.
//
// # Defining a DAG
//
// A DAG file in package dags builds its DAGs with New and records them with
// Register from init():
//
//	func init() {
//		d := dag.New("etl",
//			dag.Schedule("0 3 * * *"),
//			dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
//			dag.DefaultTaskOptions(dag.Retries(2), dag.RetryDelay(30*time.Second)),
//		)
//		extract := d.Func("extract", func(c *dag.Context) error { return c.SetOutput([]int{1, 2, 3}) })
//		load := d.Shell("load", "echo loading")
//		extract.SetDownstream(load)
//		dag.Register(d)
//	}
//
// Four kinds of tasks exist: Func runs a Go function in a worker, Shell runs
// a command with /bin/sh -c, HTTP sends a request, and Branch runs a Go
// function that picks which direct downstream tasks to follow. Task options
// (Retries, RetryDelay, ExponentialBackoff, Timeout, Trigger, Priority) tune
// each task; DefaultTaskOptions sets them for every task of a DAG. Trigger
// rules (AllSuccess, AllDone, OneFailed, ...) have Airflow's names and
// meanings. A task ends with success (nil), skipped (Skip), failed for good
// (Permanent) or failed and retried while tries remain (any other error).
// Tasks talk to Trellis through *Context: run identity, logical date, data
// interval, params, a logger and small JSON outputs for downstream tasks.
//
// # Schedules
//
// Schedule takes a cron expression with five fields or six with leading
// seconds, a descriptor (@daily, @hourly, ...), or "@every <duration>",
// optionally prefixed by "CRON_TZ=<IANA zone> "; the default zone is UTC.
// ParseSchedule turns an expression into a *Timetable whose Next method
// gives activation times. Following Airflow, the run for the interval
// [start, end) is created at end and its logical date is start.
//
// # Building never panics; Validate reports
//
// Mistakes made while building (a bad id, a duplicate task, a nil
// function, an edge to a task of another DAG, a cycle) never panic. They
// are kept, and Validate (or Registry.Validate) reports every problem of
// every DAG in one pass as a list of Problem values, each naming the DAG
// and the task; cycles print as "a -> b -> c -> a". Validation builds on
// gonum's graph algorithms (strongly connected components).
//
// # Looking at a DAG
//
// TopologicalOrder gives a stable dependency order, Fingerprint a hash of
// the structure that changes whenever the structure does, and WriteDOT,
// WriteJSON and WriteText render a DAG for Graphviz, programs and people.
package dag
