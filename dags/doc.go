// Package dags holds the DAGs this Trellis binary runs. Every file
// registers its DAGs with dag.Register from an init function; the trellis
// command imports the package for that side effect, so adding a DAG means
// adding a file here and rebuilding.
//
// The DAGs shipped here are examples that reproduce the project's seeds:
//
//   - test: two Func tasks, print_test1 -> print_test2, every hour.
//   - backup_automation: archive a folder, copy it to a "secure storage"
//     folder and verify its checksum, write a completion notification (Shell
//     tasks).
//   - etl_example: extract -> transform -> branch -> load or skip_load ->
//     cleanup, passing data between tasks as outputs, with a retried task.
package dags
