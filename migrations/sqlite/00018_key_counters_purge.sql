-- The counters of concurrency keys are deleted once nothing uses them;
-- this index finds whether any instance still names a key. See the
-- PostgreSQL migration of the same number.

-- +goose Up
CREATE INDEX task_instances_concurrency_key ON task_instances (concurrency_key) WHERE concurrency_key IS NOT NULL;

-- +goose Down
DROP INDEX task_instances_concurrency_key;
