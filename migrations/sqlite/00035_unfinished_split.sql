-- Settling a run asks whether it still has an unfinished instance.
-- task_instances_unfinished (run_id) over every unfinished state was
-- written at each step of a task's life (queued, claimed, finished: its
-- WHERE reads state). The waiting instances get an index of their own,
-- which a task leaves once, when it is queued; the queued and running
-- ones are found through the indexes their steps write anyway, given
-- run_id: the queued instances by DAG and the running ones by worker.
-- See docs/benchmarks.md, "Session 7: sqlite".

-- +goose Up
CREATE INDEX task_instances_waiting ON task_instances (run_id)
    WHERE state IN ('none', 'scheduled', 'up_for_retry', 'deferred');
DROP INDEX task_instances_unfinished;
DROP INDEX task_instances_dag_queued;
CREATE INDEX task_instances_dag_queued ON task_instances (dag_id, run_id) WHERE state = 'queued';
DROP INDEX task_instances_running;
CREATE INDEX task_instances_running ON task_instances (worker_id, run_id)
    WHERE state IN ('running', 'restarting');

-- +goose Down
CREATE INDEX task_instances_unfinished ON task_instances (run_id)
    WHERE state IN ('none', 'scheduled', 'queued', 'running', 'up_for_retry', 'deferred', 'restarting');
DROP INDEX task_instances_waiting;
DROP INDEX task_instances_dag_queued;
CREATE INDEX task_instances_dag_queued ON task_instances (dag_id) WHERE state = 'queued';
DROP INDEX task_instances_running;
CREATE INDEX task_instances_running ON task_instances (worker_id)
    WHERE state IN ('running', 'restarting');
