-- A finish on the hot path gives its limited tries' slots back with
-- COMMIT (issue 13: `pool`), in the claim that follows it in the same
-- transaction, one write per counter: a pool's counter is then locked
-- from that statement to the commit, not from the outcome statement
-- through the release's hot rows. The outcome statement runs with
-- trellis.limits set to 'off' (reset right after it), which the counter
-- trigger now honours; every other writer keeps the trigger.
--
-- The claim a finish sends before the release (which may lock no
-- counter yet) takes only unlimited instances that rank above every
-- queued limited one: the highest priority among those, read through
-- task_queue_limited, now keyed by priority (its other use, whether any
-- limited instance is queued, takes any key).
--
-- task_running loses its index on dag_id: one index entry less per
-- claim (64 bytes of WAL per task in a serial replay of `wide`, within
-- the commit's flush). Only claims with MaxActiveTasks caps count a
-- DAG's running instances, by scanning this narrow table, which holds
-- the running instances and the dead rows since its last vacuum (every
-- 10,000 claimed instances, Options.QueueVacuumEvery).

-- +goose Up
DROP INDEX task_running_dag;
DROP TRIGGER task_instances_limits ON task_instances;
CREATE TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    FOR EACH ROW WHEN (NEW.limited AND coalesce(current_setting('trellis.limits', true), '') <> 'off'
        AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND (
        (OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting'))
        OR ((OLD.state = 'queued') <> (NEW.state = 'queued')
            AND (NEW.task_key IS NOT NULL OR NEW.concurrency_key IS NOT NULL))))
    EXECUTE FUNCTION trellis_count_limits();
DROP INDEX task_queue_limited;
CREATE INDEX task_queue_limited ON task_queue (priority) WHERE limited;

-- +goose Down
CREATE INDEX task_running_dag ON task_running (dag_id);
DROP INDEX task_queue_limited;
CREATE INDEX task_queue_limited ON task_queue (ti_id) WHERE limited;
DROP TRIGGER task_instances_limits ON task_instances;
CREATE TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    FOR EACH ROW WHEN (NEW.limited AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND (
        (OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting'))
        OR ((OLD.state = 'queued') <> (NEW.state = 'queued')
            AND (NEW.task_key IS NOT NULL OR NEW.concurrency_key IS NOT NULL))))
    EXECUTE FUNCTION trellis_count_limits();
