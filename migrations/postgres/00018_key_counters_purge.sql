-- The counters of concurrency keys (concurrency_keys rows "key:…") are
-- deleted once nothing uses them: when a purge or a run deletion removes
-- the last instance naming a key and nothing runs or waits under it.
-- This index finds whether any instance still names a key. The column is
-- written when an instance is created and never changed afterwards, so
-- the index costs the state updates of the hot path nothing (they stay
-- HOT).

-- +goose Up
CREATE INDEX task_instances_concurrency_key ON task_instances (concurrency_key) WHERE concurrency_key IS NOT NULL;

-- +goose Down
DROP INDEX task_instances_concurrency_key;
