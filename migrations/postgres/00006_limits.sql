-- Concurrency limits (issue 13): Airflow pools, per-task MaxActive and
-- concurrency keys, enforced by the claim with counters instead of
-- counting running instances at claim time.
--
-- pools.running and concurrency_keys.running are the slots (pool) and
-- instances (key) of the running limited instances. The trigger below
-- keeps them in every transaction that moves a limited instance into or
-- out of running/restarting (claim, finish, zombie, put-back, marking by
-- hand), so no path can forget them. Instances are `limited` when they
-- run in a pool other than an unlimited default_pool or have a key: the
-- others never touch a counter and keep the claim's fast path.

-- +goose Up
CREATE TABLE pools (
    name        text    COLLATE "C" PRIMARY KEY,
    slots       integer NOT NULL CHECK (slots >= -1), -- -1 = unlimited
    description text    NOT NULL DEFAULT '',
    running     integer NOT NULL DEFAULT 0
);
INSERT INTO pools (name, slots, description) VALUES ('default_pool', -1, 'Default pool');

-- One row per concurrency key ("key:" + rendered key) and per task with
-- MaxActive ("task:" + dag id + "." + task id); lim is the latest
-- declared limit, queued the limited instances queued under it (an
-- instance with a concurrency key counts under that key only). The claim
-- looks for keyed instances through the keys that have both room and
-- queued instances, so a saturated key is never scanned.
CREATE TABLE concurrency_keys (
    key     text    COLLATE "C" PRIMARY KEY,
    lim     integer NOT NULL CHECK (lim >= 1),
    running integer NOT NULL DEFAULT 0,
    queued  integer NOT NULL DEFAULT 0
);
CREATE INDEX concurrency_keys_ready ON concurrency_keys (key) WHERE queued > 0 AND running < lim;

ALTER TABLE dags ADD COLUMN params jsonb NOT NULL DEFAULT '{}';

ALTER TABLE dag_version_tasks
    ADD COLUMN pool         text    COLLATE "C" NOT NULL DEFAULT 'default_pool',
    ADD COLUMN pool_slots   integer NOT NULL DEFAULT 1,
    ADD COLUMN max_active   integer NOT NULL DEFAULT 0,
    ADD COLUMN key_template text    NOT NULL DEFAULT '',
    ADD COLUMN key_limit    integer NOT NULL DEFAULT 0;

-- Run creation finds the tasks with a key or a cap of a structure.
CREATE INDEX dag_version_tasks_keyed ON dag_version_tasks (version_id)
    WHERE max_active > 0 OR key_template <> '';

ALTER TABLE task_instances
    ADD COLUMN pool       text    COLLATE "C" NOT NULL DEFAULT 'default_pool',
    ADD COLUMN pool_slots integer NOT NULL DEFAULT 1,
    ADD COLUMN task_key   text    COLLATE "C",
    ADD COLUMN limited    boolean NOT NULL DEFAULT false;
ALTER TABLE task_instances ALTER COLUMN concurrency_key TYPE text COLLATE "C";

-- The claim finds queued limited instances through the queue table of
-- migration 00008 (columns and indexes added by 00010).

-- +goose StatementBegin
CREATE FUNCTION trellis_count_limits() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dr integer := (NEW.state IN ('running', 'restarting'))::int - (OLD.state IN ('running', 'restarting'))::int;
    dq integer := (NEW.state = 'queued')::int - (OLD.state = 'queued')::int;
    lim integer;
    n integer;
BEGIN
    -- A slot freed where an instance like this one could not start
    -- (pool without room for it, cap or key at its limit) sets
    -- trellis.wake: the transaction wakes claimers once committed.
    IF dr <> 0 THEN
        UPDATE pools SET running = running + dr * NEW.pool_slots WHERE name = NEW.pool RETURNING slots, running INTO lim, n;
        IF dr < 0 AND lim >= 0 AND lim - n - NEW.pool_slots < NEW.pool_slots THEN
            PERFORM set_config('trellis.wake', 'on', true);
        END IF;
    END IF;
    IF NEW.task_key IS NOT NULL THEN
        UPDATE concurrency_keys SET running = running + dr,
            queued = queued + CASE WHEN NEW.concurrency_key IS NULL THEN dq ELSE 0 END
        WHERE key = NEW.task_key RETURNING concurrency_keys.lim, running INTO lim, n;
        IF dr < 0 AND n + 1 >= lim THEN
            PERFORM set_config('trellis.wake', 'on', true);
        END IF;
    END IF;
    IF NEW.concurrency_key IS NOT NULL THEN
        UPDATE concurrency_keys SET running = running + dr, queued = queued + dq WHERE key = NEW.concurrency_key
        RETURNING concurrency_keys.lim, running INTO lim, n;
        IF dr < 0 AND n + 1 >= lim THEN
            PERFORM set_config('trellis.wake', 'on', true);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- A claim (queued → running) counts what it takes itself, once per
-- counter and statement, not once per instance. Deferred: the counters
-- change at COMMIT (or where a transaction sets
-- the trigger IMMEDIATE, as the finishing transaction does just before
-- its claim), so a pool's hot row is locked only at the end of the
-- transactions that free or take its slots, not through them. A claim
-- locks the counters it reads until its own commit.
CREATE CONSTRAINT TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.limited AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND (
        (OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting'))
        OR ((OLD.state = 'queued') <> (NEW.state = 'queued')
            AND (NEW.task_key IS NOT NULL OR NEW.concurrency_key IS NOT NULL))))
    EXECUTE FUNCTION trellis_count_limits();

-- +goose Down
DROP TRIGGER task_instances_limits ON task_instances;
DROP FUNCTION trellis_count_limits();
DROP INDEX dag_version_tasks_keyed;
ALTER TABLE task_instances DROP COLUMN limited, DROP COLUMN task_key, DROP COLUMN pool_slots, DROP COLUMN pool;
ALTER TABLE dag_version_tasks DROP COLUMN key_limit, DROP COLUMN key_template, DROP COLUMN max_active,
    DROP COLUMN pool_slots, DROP COLUMN pool;
ALTER TABLE dags DROP COLUMN params;
DROP TABLE concurrency_keys;
DROP TABLE pools;
