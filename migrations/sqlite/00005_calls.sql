-- Deferral and calls (tasks that call tasks).
--
-- A deferred instance (state 'deferred') is a try suspended without a
-- worker slot; it goes back to 'queued' in a transaction that already
-- exists (see docs/architecture.md, "Deferral"). What it waits for is data
-- on the row: for calls, waiting_on counts the calls it made that have
-- not finished; the finishing transaction of a callee decrements it and
-- queues the waiter at zero.
--
-- Calls are task instances of a callable's task id, told apart by
-- call_key (a hash of the canonical arguments, or a caller-scoped key
-- without deduplication) and numbered by map_index (Airflow's; -1 for the
-- instances of static tasks). task_calls holds the caller → callee edges:
-- results are answered, cycles found and waiters woken through it.

-- +goose Up
ALTER TABLE task_instances ADD COLUMN map_index INTEGER NOT NULL DEFAULT -1;
ALTER TABLE task_instances ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;
-- Call instances of a callable in a run, in map_index order.
CREATE INDEX task_instances_calls ON task_instances (run_id, task_id, map_index) WHERE map_index >= 0;

CREATE TABLE task_calls (
    caller_id INTEGER NOT NULL,
    callee_id INTEGER NOT NULL,
    run_id    INTEGER NOT NULL REFERENCES dag_runs (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL, -- position of the call among the caller's calls
    PRIMARY KEY (caller_id, callee_id)
) STRICT;
CREATE INDEX task_calls_callee ON task_calls (callee_id);
CREATE INDEX task_calls_run ON task_calls (run_id);

-- Call instances created in the run so far (dag.MaxCalls caps it).
ALTER TABLE dag_runs ADD COLUMN n_calls INTEGER NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE dag_runs DROP COLUMN n_calls;
DROP TABLE task_calls;
DROP INDEX task_instances_calls;
ALTER TABLE task_instances DROP COLUMN waiting_on;
ALTER TABLE task_instances DROP COLUMN map_index;
