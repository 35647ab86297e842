-- task_queue and task_running (00008, 00010) kept by row triggers that
-- fire only where an instance enters or leaves a set, instead of
-- statement triggers that ran four statements over a transition table
-- after every UPDATE of task_instances.
--
-- Most updates of the hot path change no set: a fan-in's join is
-- incremented by every finish (and held locked from that write to the
-- commit, so whatever runs after it serialises the finishes), and
-- heartbeats rewrite running instances. The statement triggers ran
-- their four statements for these too; a row trigger's WHEN clause is
-- evaluated without calling the function, so they now cost nothing.
-- Where a set does change (release, claim, finish), one single-row write
-- per change costs less than the four joins with the transition table.
--
-- What each trigger keeps is unchanged: task_queue holds the queued
-- instances with their claim columns, task_running the running and
-- restarting ones. The lock order is unchanged too: a row trigger runs
-- after its statement has locked and written the task_instances row.

-- +goose Up
DROP TRIGGER task_sets_insert ON task_instances;
DROP TRIGGER task_sets_update ON task_instances;
DROP TRIGGER task_sets_delete ON task_instances;
DROP FUNCTION task_sets_insert();
DROP FUNCTION task_sets_update();
DROP FUNCTION task_sets_delete();

-- +goose StatementBegin
CREATE FUNCTION task_set_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'queued' THEN
        INSERT INTO task_queue (ti_id, dag_id, priority, queued_at, limited, pool, pool_slots, task_key, concurrency_key)
        VALUES (NEW.id, NEW.dag_id, NEW.priority, NEW.queued_at, NEW.limited, NEW.pool, NEW.pool_slots, NEW.task_key,
            NEW.concurrency_key);
    ELSE
        INSERT INTO task_running (ti_id, dag_id) VALUES (NEW.id, NEW.dag_id);
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION task_set_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_running boolean := OLD.state IN ('running', 'restarting');
    is_running  boolean := NEW.state IN ('running', 'restarting');
BEGIN
    IF OLD.state = 'queued' AND NEW.state = 'queued' THEN
        -- Still queued, with other claim columns (a pool sized, a key
        -- given, requeued): the claim reads them from the queue row.
        UPDATE task_queue SET dag_id = NEW.dag_id, priority = NEW.priority, queued_at = NEW.queued_at,
            limited = NEW.limited, pool = NEW.pool, pool_slots = NEW.pool_slots, task_key = NEW.task_key,
            concurrency_key = NEW.concurrency_key
        WHERE ti_id = NEW.id;
        RETURN NULL;
    END IF;
    IF OLD.state = 'queued' THEN
        DELETE FROM task_queue WHERE ti_id = OLD.id;
    ELSIF NEW.state = 'queued' THEN
        INSERT INTO task_queue (ti_id, dag_id, priority, queued_at, limited, pool, pool_slots, task_key, concurrency_key)
        VALUES (NEW.id, NEW.dag_id, NEW.priority, NEW.queued_at, NEW.limited, NEW.pool, NEW.pool_slots, NEW.task_key,
            NEW.concurrency_key)
        ON CONFLICT (ti_id) DO NOTHING;
    END IF;
    IF was_running AND NOT is_running THEN
        DELETE FROM task_running WHERE ti_id = OLD.id;
    ELSIF is_running AND NOT was_running THEN
        INSERT INTO task_running (ti_id, dag_id) VALUES (NEW.id, NEW.dag_id) ON CONFLICT (ti_id) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION task_set_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'queued' THEN
        DELETE FROM task_queue WHERE ti_id = OLD.id;
    ELSE
        DELETE FROM task_running WHERE ti_id = OLD.id;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER task_set_insert AFTER INSERT ON task_instances
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'running', 'restarting'))
    EXECUTE FUNCTION task_set_insert();
-- Fires where the instance enters or leaves queued or running (or
-- restarting), or stays queued with other claim columns.
CREATE TRIGGER task_set_update AFTER UPDATE ON task_instances
    FOR EACH ROW WHEN (
        ((OLD.state = 'queued') <> (NEW.state = 'queued'))
        OR ((OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting')))
        OR (NEW.state = 'queued' AND (OLD.dag_id, OLD.priority, OLD.queued_at, OLD.limited, OLD.pool, OLD.pool_slots,
                OLD.task_key, OLD.concurrency_key)
            IS DISTINCT FROM (NEW.dag_id, NEW.priority, NEW.queued_at, NEW.limited, NEW.pool, NEW.pool_slots,
                NEW.task_key, NEW.concurrency_key)))
    EXECUTE FUNCTION task_set_update();
CREATE TRIGGER task_set_delete AFTER DELETE ON task_instances
    FOR EACH ROW WHEN (OLD.state IN ('queued', 'running', 'restarting'))
    EXECUTE FUNCTION task_set_delete();

-- +goose Down
DROP TRIGGER task_set_insert ON task_instances;
DROP TRIGGER task_set_update ON task_instances;
DROP TRIGGER task_set_delete ON task_instances;
DROP FUNCTION task_set_insert();
DROP FUNCTION task_set_update();
DROP FUNCTION task_set_delete();

-- +goose StatementBegin
CREATE FUNCTION task_sets_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_queue SELECT n.id, n.dag_id, n.priority, n.queued_at, n.limited, n.pool, n.pool_slots,
        n.task_key, n.concurrency_key FROM new_rows n WHERE n.state = 'queued';
    INSERT INTO task_running SELECT n.id, n.dag_id FROM new_rows n WHERE n.state IN ('running', 'restarting');
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION task_sets_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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

-- +goose StatementBegin
CREATE FUNCTION task_sets_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_queue q USING old_rows o WHERE q.ti_id = o.id AND o.state = 'queued';
    DELETE FROM task_running r USING old_rows o WHERE r.ti_id = o.id AND o.state IN ('running', 'restarting');
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER task_sets_insert AFTER INSERT ON task_instances
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_sets_insert();
CREATE TRIGGER task_sets_update AFTER UPDATE ON task_instances
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_sets_update();
CREATE TRIGGER task_sets_delete AFTER DELETE ON task_instances
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION task_sets_delete();
