-- The counter trigger of 00006 fires at once (it was deferred to the
-- commit): the statement that ends limited tries locks their counters
-- first, in the claim's order (pools, then keys, by name), so the
-- trigger's row-by-row updates cannot deadlock with a claim or another
-- finish, and the finishing transaction reads the wake-up it sets
-- (trellis.wake) before its commit. Claims (queued → running) count what
-- they take themselves, once per counter and statement.

-- +goose Up
DROP TRIGGER task_instances_limits ON task_instances;
CREATE TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    FOR EACH ROW WHEN (NEW.limited AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND (
        (OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting'))
        OR ((OLD.state = 'queued') <> (NEW.state = 'queued')
            AND (NEW.task_key IS NOT NULL OR NEW.concurrency_key IS NOT NULL))))
    EXECUTE FUNCTION trellis_count_limits();

-- +goose Down
DROP TRIGGER task_instances_limits ON task_instances;
CREATE CONSTRAINT TRIGGER task_instances_limits AFTER UPDATE OF state ON task_instances
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.limited AND NOT (OLD.state = 'queued' AND NEW.state = 'running') AND (
        (OLD.state IN ('running', 'restarting')) <> (NEW.state IN ('running', 'restarting'))
        OR ((OLD.state = 'queued') <> (NEW.state = 'queued')
            AND (NEW.task_key IS NOT NULL OR NEW.concurrency_key IS NOT NULL))))
    EXECUTE FUNCTION trellis_count_limits();
