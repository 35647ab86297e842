-- Smaller WHEN clauses for the two row triggers that every UPDATE of
-- task_instances.state reaches (issue 13: `wide` since `fe24e8c`).
--
-- PostgreSQL reads a row trigger's WHEN clause from its stored node
-- string (pg_trigger.tgqual) and compiles it once per statement, before
-- any row is tested, whether or not the trigger then fires: the hot
-- path's claims, outcomes and increments, which keep the sets and the
-- counters themselves (trellis.sets, trellis.limits off), still paid for
-- reading 7,273 + 5,061 characters of node string and compiling them,
-- every statement. Here each clause keeps inline only its cheap tests
-- (the setting, NEW.limited, a claim) and moves the comparison of the old
-- and new rows into a plpgsql function, called only for the rows that
-- pass those tests: the stored clauses are 1,212 and 2,259 characters.
-- What fires, and when, is unchanged.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION trellis_set_moves(o task_instances, n task_instances) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- The instance enters or leaves queued or running (or restarting),
    -- or stays queued with other claim columns.
    RETURN ((o.state = 'queued') <> (n.state = 'queued'))
        OR ((o.state IN ('running', 'restarting')) <> (n.state IN ('running', 'restarting')))
        OR (n.state = 'queued' AND (o.dag_id, o.priority, o.queued_at, o.limited, o.pool, o.pool_slots,
                o.task_key, o.concurrency_key)
            IS DISTINCT FROM (n.dag_id, n.priority, n.queued_at, n.limited, n.pool, n.pool_slots,
                n.task_key, n.concurrency_key));
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION trellis_limits_move(o task_instances, n task_instances) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- A limited instance starts or stops holding its slots, or enters or
    -- leaves the queued count of its keys.
    RETURN (o.state IN ('running', 'restarting')) <> (n.state IN ('running', 'restarting'))
        OR ((o.state = 'queued') <> (n.state = 'queued')
            AND (n.task_key IS NOT NULL OR n.concurrency_key IS NOT NULL));
END $$;
-- +goose StatementEnd

DROP TRIGGER task_set_update ON task_instances;
CREATE TRIGGER task_set_update AFTER UPDATE ON task_instances
    FOR EACH ROW WHEN (current_setting('trellis.sets', true) IS DISTINCT FROM 'off' AND trellis_set_moves(OLD, NEW))
    EXECUTE FUNCTION task_set_update();

DROP TRIGGER task_instances_limits ON task_instances;
CREATE TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    FOR EACH ROW WHEN (NEW.limited AND current_setting('trellis.limits', true) IS DISTINCT FROM 'off'
        AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND trellis_limits_move(OLD, NEW))
    EXECUTE FUNCTION trellis_count_limits();

-- +goose Down
DROP TRIGGER task_set_update ON task_instances;
CREATE TRIGGER task_set_update AFTER UPDATE ON task_instances
    FOR EACH ROW WHEN (coalesce(current_setting('trellis.sets', true), '') <> 'off' AND (
        ((OLD.state = 'queued') <> (NEW.state = 'queued'))
        OR ((OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting')))
        OR (NEW.state = 'queued' AND (OLD.dag_id, OLD.priority, OLD.queued_at, OLD.limited, OLD.pool, OLD.pool_slots,
                OLD.task_key, OLD.concurrency_key)
            IS DISTINCT FROM (NEW.dag_id, NEW.priority, NEW.queued_at, NEW.limited, NEW.pool, NEW.pool_slots,
                NEW.task_key, NEW.concurrency_key))))
    EXECUTE FUNCTION task_set_update();

DROP TRIGGER task_instances_limits ON task_instances;
CREATE TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    FOR EACH ROW WHEN (NEW.limited AND coalesce(current_setting('trellis.limits', true), '') <> 'off'
        AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND (
        (OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting'))
        OR ((OLD.state = 'queued') <> (NEW.state = 'queued')
            AND (NEW.task_key IS NOT NULL OR NEW.concurrency_key IS NOT NULL))))
    EXECUTE FUNCTION trellis_count_limits();

DROP FUNCTION trellis_limits_move(task_instances, task_instances);
DROP FUNCTION trellis_set_moves(task_instances, task_instances);
