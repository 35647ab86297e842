-- Concurrency limits (issue 13): Airflow pools, per-task MaxActive and
-- concurrency keys. pools.running and concurrency_keys.running are the
-- slots (pool) and instances (key) of the running limited instances,
-- kept by the trigger below in every transaction that moves a limited
-- instance into or out of running/restarting. See the PostgreSQL
-- migration of the same number.

-- +goose Up
CREATE TABLE pools (
    name        TEXT    NOT NULL PRIMARY KEY,
    slots       INTEGER NOT NULL CHECK (slots >= -1),
    description TEXT    NOT NULL DEFAULT '',
    running     INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO pools (name, slots, description) VALUES ('default_pool', -1, 'Default pool');

CREATE TABLE concurrency_keys (
    key     TEXT    NOT NULL PRIMARY KEY,
    lim     INTEGER NOT NULL CHECK (lim >= 1),
    running INTEGER NOT NULL DEFAULT 0,
    queued  INTEGER NOT NULL DEFAULT 0
) STRICT;

ALTER TABLE dags ADD COLUMN params TEXT NOT NULL DEFAULT '{}';

ALTER TABLE dag_version_tasks ADD COLUMN pool TEXT NOT NULL DEFAULT 'default_pool';
ALTER TABLE dag_version_tasks ADD COLUMN pool_slots INTEGER NOT NULL DEFAULT 1;
ALTER TABLE dag_version_tasks ADD COLUMN max_active INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dag_version_tasks ADD COLUMN key_template TEXT NOT NULL DEFAULT '';
ALTER TABLE dag_version_tasks ADD COLUMN key_limit INTEGER NOT NULL DEFAULT 0;

CREATE INDEX dag_version_tasks_keyed ON dag_version_tasks (version_id)
    WHERE max_active > 0 OR key_template <> '';

ALTER TABLE task_instances ADD COLUMN pool TEXT NOT NULL DEFAULT 'default_pool';
ALTER TABLE task_instances ADD COLUMN pool_slots INTEGER NOT NULL DEFAULT 1;
ALTER TABLE task_instances ADD COLUMN task_key TEXT;
ALTER TABLE task_instances ADD COLUMN limited INTEGER NOT NULL DEFAULT 0;

CREATE INDEX task_instances_claim_limited ON task_instances (pool, priority DESC, queued_at, id)
    WHERE state = 'queued' AND limited;

-- A claim (queued → running) counts what it takes itself, once per
-- counter and statement.
-- +goose StatementBegin
CREATE TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    WHEN NEW.limited AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND (
        (OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting'))
        OR ((OLD.state = 'queued') <> (NEW.state = 'queued')
            AND (NEW.task_key IS NOT NULL OR NEW.concurrency_key IS NOT NULL)))
BEGIN
    UPDATE pools SET running = running
        + ((NEW.state IN ('running', 'restarting')) - (OLD.state IN ('running', 'restarting'))) * NEW.pool_slots
        WHERE name = NEW.pool AND (NEW.state IN ('running', 'restarting')) <> (OLD.state IN ('running', 'restarting'));
    UPDATE concurrency_keys SET
        running = running + (NEW.state IN ('running', 'restarting')) - (OLD.state IN ('running', 'restarting')),
        queued = queued + CASE WHEN key = NEW.task_key AND NEW.concurrency_key IS NOT NULL THEN 0
            ELSE (NEW.state = 'queued') - (OLD.state = 'queued') END
        WHERE key IN (NEW.task_key, NEW.concurrency_key);
END;
-- +goose StatementEnd

-- +goose Down
DROP TRIGGER task_instances_limits;
DROP INDEX task_instances_claim_limited;
DROP INDEX dag_version_tasks_keyed;
ALTER TABLE task_instances DROP COLUMN limited;
ALTER TABLE task_instances DROP COLUMN task_key;
ALTER TABLE task_instances DROP COLUMN pool_slots;
ALTER TABLE task_instances DROP COLUMN pool;
ALTER TABLE dag_version_tasks DROP COLUMN key_limit;
ALTER TABLE dag_version_tasks DROP COLUMN key_template;
ALTER TABLE dag_version_tasks DROP COLUMN max_active;
ALTER TABLE dag_version_tasks DROP COLUMN pool_slots;
ALTER TABLE dag_version_tasks DROP COLUMN pool;
ALTER TABLE dags DROP COLUMN params;
DROP TABLE concurrency_keys;
DROP TABLE pools;
