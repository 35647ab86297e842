-- Concurrency limits (00006) on the queue of 00008: the queue rows carry
-- what the claim needs to find limited instances (limited, pool, slots,
-- task cap and concurrency key), so that its indexes, not those of
-- task_instances, serve the claim, and task_instances keeps no index
-- over a column the hot path changes (its updates stay HOT). The rows
-- are inserted and deleted, never moved between these indexes, so their
-- predicates cost nothing to updates.

-- +goose Up
ALTER TABLE task_queue
    ADD COLUMN limited         boolean NOT NULL DEFAULT false,
    ADD COLUMN pool            text    COLLATE "C",
    ADD COLUMN pool_slots      integer NOT NULL DEFAULT 1,
    ADD COLUMN task_key        text    COLLATE "C",
    ADD COLUMN concurrency_key text    COLLATE "C";
UPDATE task_queue q SET limited = t.limited, pool = t.pool, pool_slots = t.pool_slots, task_key = t.task_key,
    concurrency_key = t.concurrency_key
FROM task_instances t WHERE t.id = q.ti_id AND t.limited;

-- Unlimited instances: the claim index as before. Limited ones: per pool
-- (no key, no cap), per concurrency key, per task cap (no key).
DROP INDEX task_queue_claim;
CREATE INDEX task_queue_claim ON task_queue (priority DESC, queued_at, ti_id) WHERE NOT limited;
CREATE INDEX task_queue_pool ON task_queue (pool, priority DESC, queued_at, ti_id)
    WHERE limited AND task_key IS NULL AND concurrency_key IS NULL;
CREATE INDEX task_queue_key ON task_queue (concurrency_key, priority DESC, queued_at, ti_id)
    WHERE limited AND concurrency_key IS NOT NULL;
CREATE INDEX task_queue_task ON task_queue (task_key, priority DESC, queued_at, ti_id)
    WHERE limited AND task_key IS NOT NULL AND concurrency_key IS NULL;
-- Whether any limited instance is queued at all: when none is, the claim
-- skips its limited part.
CREATE INDEX task_queue_limited ON task_queue (ti_id) WHERE limited;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION task_sets_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_queue SELECT n.id, n.dag_id, n.priority, n.queued_at, n.limited, n.pool, n.pool_slots,
        n.task_key, n.concurrency_key FROM new_rows n WHERE n.state = 'queued';
    INSERT INTO task_running SELECT n.id, n.dag_id FROM new_rows n WHERE n.state IN ('running', 'restarting');
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION task_sets_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- From the new versions alone (joining them to the old ones has no
    -- statistics to plan by): each set holds exactly the updated rows in
    -- its states. A queued instance made limited (default_pool sized)
    -- moves to the limited indexes.
    DELETE FROM task_queue q USING new_rows n WHERE q.ti_id = n.id AND n.state <> 'queued';
    INSERT INTO task_queue SELECT n.id, n.dag_id, n.priority, n.queued_at, n.limited, n.pool, n.pool_slots,
            n.task_key, n.concurrency_key
        FROM new_rows n WHERE n.state = 'queued'
        ON CONFLICT (ti_id) DO UPDATE SET priority = excluded.priority, queued_at = excluded.queued_at,
            limited = excluded.limited, pool = excluded.pool, pool_slots = excluded.pool_slots,
            task_key = excluded.task_key, concurrency_key = excluded.concurrency_key
        WHERE (task_queue.priority, task_queue.queued_at, task_queue.limited)
            IS DISTINCT FROM (excluded.priority, excluded.queued_at, excluded.limited);
    DELETE FROM task_running r USING new_rows n WHERE r.ti_id = n.id AND n.state NOT IN ('running', 'restarting');
    INSERT INTO task_running SELECT n.id, n.dag_id FROM new_rows n WHERE n.state IN ('running', 'restarting')
        ON CONFLICT (ti_id) DO NOTHING;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION task_sets_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_queue SELECT n.id, n.dag_id, n.priority, n.queued_at FROM new_rows n WHERE n.state = 'queued';
    INSERT INTO task_running SELECT n.id, n.dag_id FROM new_rows n WHERE n.state IN ('running', 'restarting');
    RETURN NULL;
END $$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION task_sets_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_queue q USING new_rows n WHERE q.ti_id = n.id AND n.state <> 'queued';
    INSERT INTO task_queue SELECT n.id, n.dag_id, n.priority, n.queued_at FROM new_rows n WHERE n.state = 'queued'
        ON CONFLICT (ti_id) DO UPDATE SET priority = excluded.priority, queued_at = excluded.queued_at
        WHERE (task_queue.priority, task_queue.queued_at) IS DISTINCT FROM (excluded.priority, excluded.queued_at);
    DELETE FROM task_running r USING new_rows n WHERE r.ti_id = n.id AND n.state NOT IN ('running', 'restarting');
    INSERT INTO task_running SELECT n.id, n.dag_id FROM new_rows n WHERE n.state IN ('running', 'restarting')
        ON CONFLICT (ti_id) DO NOTHING;
    RETURN NULL;
END $$;
-- +goose StatementEnd
DROP INDEX task_queue_limited;
DROP INDEX task_queue_task;
DROP INDEX task_queue_key;
DROP INDEX task_queue_pool;
DROP INDEX task_queue_claim;
CREATE INDEX task_queue_claim ON task_queue (priority DESC, queued_at, ti_id);
ALTER TABLE task_queue DROP COLUMN concurrency_key, DROP COLUMN task_key, DROP COLUMN pool_slots, DROP COLUMN pool,
    DROP COLUMN limited;
