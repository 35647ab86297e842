// Package executor runs task tries in a supervised pool of worker
// processes.
//
// # Process model
//
// A Pool is the supervisor. It starts N child processes by re-executing its
// own binary in a hidden worker-child role (for the trellis binary,
// `trellis worker --child`), so the Go functions of the compiled-in DAGs
// are there. Each child runs one Worker: it registers itself in the store,
// claims queued task instances in batches of up to its free slots, runs
// every claimed try in its own goroutine with package taskrun, and reports
// the results in batches. A child that dies (a task called os.Exit, the
// kernel killed it, it crashed) is restarted with capped exponential
// backoff, and the supervisor at once hands the tries it was running to
// Store.RecoverWorkerTasks: they go back to queued keeping their try
// number, since merely being on a worker that died is not their fault. A
// try that was running when two workers died in a row under the same try
// number is failed (retried while tries remain), its error giving the exit
// status and its last log lines (poison detection).
//
// A worker never busy-polls: it wakes on the store's TopicTasksReady
// notifications, on its own finished results (a finish may release
// downstream tasks), when a slot frees while more work may be queued, and
// on a slow safety poll (PollInterval, 1 s by default).
//
// # Supervision channel, secrets and events
//
// Each child inherits one end of a Unix socket pair as file descriptor 3
// (EnvChannelFD). The pool sends the database URL and its PG* client
// variables there (LoadChild reads them), so they are in neither the
// child's environment, which holds none of Trellis's TRELLIS_*
// configuration, nor its argv: tasks cannot read them, and Shell tasks get
// a clean environment of their own (taskrun.TaskEnv). Back on the socket
// the child reports the finishes its Worker recorded (the Events hook),
// batched, with how many tries it runs; it queues a bounded number while
// the pool does not read and counts what it drops, never blocking a try.
//
// # Heartbeats and lost tries
//
// Every HeartbeatInterval a worker refreshes its own heartbeat and those of
// the tries it runs. The store answers with the tries that are no longer
// running under that try number — declared zombies, their run cancelled, or
// cleared by hand — and the worker cancels them and drops their results.
// Results carry the try number, so a late report changes nothing
// (compare-and-set in the store).
//
// # Task logs and outputs
//
// A try's output (Shell stdout and stderr, Context.Logger lines, panic
// traces) is buffered and appended to the store in chunks: when
// LogFlushBytes are buffered, every LogFlushInterval, and when the try
// ends. The last chunk is sent alongside the result rather than before it,
// to keep a store round trip off the path from one task's end to the next
// one's start, so a log is complete a moment after its try's state
// changes. At most two sends are in flight per worker, leaving store
// connections to claims and finishes. Outputs (SetOutput) travel with the
// result, in the same commit as the try's state; Context.Output reads
// upstream outputs from the store.
//
// # Graceful shutdown
//
// Worker.Stop stops claiming, lets running tries finish within Grace, then
// cancels the rest (shell process groups get SIGTERM, then SIGKILL after
// KillGrace) and puts them back to queued with Store.RequeueTries, which
// does not use up a try. Worker.Halt skips what is left of the grace
// period. A worker child does this on its first SIGTERM or SIGINT and halts
// on the second. A Shell command killed by a SIGTERM taskrun did not send
// while the worker begins to stop (a signal to the whole control group of
// a service) is put back the same way instead of failed. Pool.Stop sends
// SIGTERM to every child, waits for them,
// and SIGKILLs any still alive after Grace+KillGrace plus a margin.
//
// # Leaked goroutines
//
// Go cannot kill a goroutine. A Func or Branch task that ignores its
// context past its timeout is abandoned by taskrun: its try is failed
// (retried while tries remain) and its slot freed, but its goroutine keeps
// running inside the worker process. After MaxLeaks such abandoned
// goroutines (3 by default) the worker drains — it stops claiming and lets
// its other tries finish within Grace — and the child exits with
// ExitRecycle; the supervisor replaces it at once, without backoff. The
// leaked goroutines die with the process.
//
// # Processes left behind
//
// Shell tasks run in their own process group, killed as a whole on timeout
// or cancellation. When a child dies with shell tasks running, their
// processes are orphaned; on Linux the supervisor makes itself a child
// subreaper (PR_SET_CHILD_SUBREAPER), so such orphans — and daemons that
// tasks started and left behind — become its children, and it kills their
// process groups and reaps them (after a child dies, every ReapInterval,
// and on Stop). Children are started with Pdeathsig=SIGTERM: if the
// supervisor itself is SIGKILLed, each child halts at once (cancelling and
// requeueing its tries, killing their shell process groups) and exits.
//
// # Remote workers
//
// `trellis worker` is a Pool without a scheduler: started on another host
// against the same PostgreSQL database it takes its share of the queued
// work. With SQLite, workers must run on the host that holds the database
// file (SQLite locking is not safe over network file systems); the store
// package refuses nothing there, so this is a deployment rule.
package executor
