-- HOT updates of task_instances (issue 17).
--
-- PostgreSQL updates a row in place (a heap-only tuple: no new entry in
-- any index, and the old version pruned from its page without VACUUM)
-- only when no indexed column changes, and the columns of partial-index
-- predicates count. The claim, running and retry indexes all had `state`
-- in their predicate, so every state change of an instance (queued,
-- running, success) wrote a new entry into every index of the table: 1-3 %
-- of the updates were HOT, and three 100,000-task runs left a million dead
-- versions that slowed each run down (autovacuum off or lagging).
--
-- The queue and the running set move to narrow tables of their own, which
-- statement triggers keep in step with task_instances: whatever writes
-- task_instances.state (release, claim, finish, retries, clearing, marking
-- runs, purging) keeps doing so, and the rows of task_queue and
-- task_running follow in the same statement. No index of task_instances
-- mentions a column the hot path changes any more: the retry index is
-- keyed by next_retry_at, which only retries set.
--
-- A claim locks its task_queue rows, then the task_instances rows, both
-- with SKIP LOCKED: a transaction that changes an instance's state holds
-- its task_instances row before its trigger touches the queue row, so
-- neither waits for the other in the opposite order.

-- +goose Up
CREATE TABLE task_queue (
    ti_id     bigint      PRIMARY KEY,
    dag_id    text        COLLATE "C" NOT NULL,
    priority  integer     NOT NULL,
    queued_at timestamptz
);
-- Claiming: highest priority first, then oldest (as task_instances_claim was).
CREATE INDEX task_queue_claim ON task_queue (priority DESC, queued_at, ti_id);

CREATE TABLE task_running (
    ti_id  bigint PRIMARY KEY,
    dag_id text   COLLATE "C" NOT NULL
);
CREATE INDEX task_running_dag ON task_running (dag_id);

INSERT INTO task_queue SELECT id, dag_id, priority, queued_at FROM task_instances WHERE state = 'queued';
INSERT INTO task_running SELECT id, dag_id FROM task_instances WHERE state IN ('running', 'restarting');

DROP INDEX IF EXISTS task_instances_claim;
DROP INDEX IF EXISTS task_instances_running;
DROP INDEX task_instances_retry;
CREATE INDEX task_instances_retry ON task_instances (next_retry_at) WHERE next_retry_at IS NOT NULL;
-- Room on each page for two new versions of every row on it: releasing a
-- wide fan-out queues all the rows of a page in one statement, and the
-- claims follow before the page is pruned. At 70 % then 45 % only 61 % and
-- 75 % of the updates were HOT; at 30 %, 98 % (docs/benchmarks.md, scale).
ALTER TABLE task_instances SET (fillfactor = 30);

-- +goose StatementBegin
CREATE FUNCTION task_sets_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_queue SELECT n.id, n.dag_id, n.priority, n.queued_at FROM new_rows n WHERE n.state = 'queued';
    INSERT INTO task_running SELECT n.id, n.dag_id FROM new_rows n WHERE n.state IN ('running', 'restarting');
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION task_sets_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- From the new versions alone (joining them to the old ones has no
    -- statistics to plan by): each set holds exactly the updated rows in
    -- its states.
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

-- +goose Down
DROP TRIGGER task_sets_insert ON task_instances;
DROP TRIGGER task_sets_update ON task_instances;
DROP TRIGGER task_sets_delete ON task_instances;
DROP FUNCTION task_sets_insert();
DROP FUNCTION task_sets_update();
DROP FUNCTION task_sets_delete();
DROP INDEX task_instances_retry;
CREATE INDEX task_instances_claim ON task_instances (priority DESC, queued_at, id) WHERE state = 'queued';
CREATE INDEX task_instances_running ON task_instances (id) WHERE state IN ('running', 'restarting');
CREATE INDEX task_instances_retry ON task_instances (next_retry_at) WHERE state = 'up_for_retry';
ALTER TABLE task_instances SET (fillfactor = 85);
DROP TABLE task_running;
DROP TABLE task_queue;
