-- Sensor pokes without a try (issue 14).
--
-- A Sensor that answered "not yet" stays deferred: its next check lives
-- here, not in task_instances, and a worker's poke loop claims the due
-- rows in batches, calls the check functions in-process and moves
-- due_at on with one statement per batch. Each poke so writes one narrow
-- row twice (the claim's lease, then the next check) and never the wide
-- task_instances row, its indexes or its state; only the poke that ends
-- the wait (true, an error, the deadline) goes through a finish.
--
-- A row is the schedule of the deferral of try try_number of instance
-- ti_id: it counts only while that instance is deferred on that try.
-- Whatever takes the instance out of deferred (a continue, a clear, a
-- mark, a cancelled run) leaves the row behind, and the next claim that
-- finds it due deletes it. lease is raised by every claim and every new
-- deferral: a poke's result is recorded only under the lease it was
-- claimed with, so a late or duplicate result changes nothing.
-- task_instances.next_check_at stays NULL for these deferrals: the
-- scheduler's due sweep never sees them, and reads of an instance take
-- its next check from here.

-- +goose Up
CREATE TABLE sensor_pokes (
    ti_id      bigint      PRIMARY KEY REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number integer     NOT NULL,
    due_at     timestamptz NOT NULL,
    lease      bigint      NOT NULL DEFAULT 0
);
CREATE INDEX sensor_pokes_due ON sensor_pokes (due_at);

-- +goose Down
DROP TABLE sensor_pokes;
