-- The leaf tasks of a structure: settling a run reads the states of its
-- leaf instances, and a DAG of many tasks has few leaves (a fan-in has
-- one); without this index every run's end read every task of the
-- structure.

-- +goose Up
CREATE INDEX dag_version_tasks_leaves ON dag_version_tasks (version_id, task_id) WHERE is_leaf;

-- +goose Down
DROP INDEX dag_version_tasks_leaves;
