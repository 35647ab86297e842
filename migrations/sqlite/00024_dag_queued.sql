-- MaxActiveTasks reads, per capped DAG, whether it has a queued instance
-- and how many run. task_instances_dag_active (dag_id, state) over the
-- queued and running instances was written four times in a task's life
-- (queued; claimed: its key changes; finished); this index of the queued
-- instances by DAG is written twice (queued, claimed), and the running
-- ones are counted through task_instances_running, which holds only them
-- (at most the workers' slots). About 7 µs of CPU less per task in
-- BenchmarkWideFinishAndClaim (docs/benchmarks.md, "Session 6: sqlite").

-- +goose Up
CREATE INDEX task_instances_dag_queued ON task_instances (dag_id) WHERE state = 'queued';
DROP INDEX task_instances_dag_active;

-- +goose Down
CREATE INDEX task_instances_dag_active ON task_instances (dag_id, state)
    WHERE state IN ('queued', 'running', 'restarting');
DROP INDEX task_instances_dag_queued;
