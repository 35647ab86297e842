-- The hot statements keep task_queue and task_running themselves
-- (issue 17: the `wide` regression since the sets of 00008).
--
-- The row triggers of 00012 write the sets through plpgsql and SPI, one
-- call per instance entering or leaving a set: four per task (queued at
-- its release, claimed, finished). The claim, the outcome statement and
-- the release's increment now also write the sets themselves, in the
-- same statement, with data-modifying CTEs over their RETURNING rows
-- (one set-based write per set and statement); what they write is what
-- the trigger would, so running both is harmless.
--
-- Where the store sends them on its hot path it sets trellis.sets to
-- 'off' just before them and back to '' just after, in the same
-- transaction and round trip, and the update trigger does not fire
-- then. Every other writer (API, scheduler, clears, marks, waiting,
-- calls) runs with the setting unset and keeps its sets by the trigger.
-- A setting rather than a column: flipping a column at the end of the
-- row on every update made each HOT update's WAL record log the whole
-- tail of the row (+50–85 bytes per update).

-- +goose Up
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

-- +goose Down
DROP TRIGGER task_set_update ON task_instances;
CREATE TRIGGER task_set_update AFTER UPDATE ON task_instances
    FOR EACH ROW WHEN (
        ((OLD.state = 'queued') <> (NEW.state = 'queued'))
        OR ((OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting')))
        OR (NEW.state = 'queued' AND (OLD.dag_id, OLD.priority, OLD.queued_at, OLD.limited, OLD.pool, OLD.pool_slots,
                OLD.task_key, OLD.concurrency_key)
            IS DISTINCT FROM (NEW.dag_id, NEW.priority, NEW.queued_at, NEW.limited, NEW.pool, NEW.pool_slots,
                NEW.task_key, NEW.concurrency_key)))
    EXECUTE FUNCTION task_set_update();
