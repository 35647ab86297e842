-- Tasks that wait without holding a worker, and events.
--
-- A deferred task instance records what it waits for: next_check_at (the
-- scheduler's due sweep queues it then: its poll time or its deadline,
-- whichever is first), wait_event (the key of the event that queues it),
-- deferred_state (JSON saved by the task for its next step) and
-- trigger_timeout (the deadline, shown by the API). resumed marks a
-- queued instance whose next claim continues a deferral, with
-- event_payload the payload that continued it; last_event_id is the
-- newest event it consumed, so an event continues an instance once.

-- +goose Up
ALTER TABLE task_instances
    ADD COLUMN next_check_at   timestamptz,
    ADD COLUMN wait_event      text COLLATE "C",
    ADD COLUMN deferred_state  jsonb,
    ADD COLUMN trigger_timeout timestamptz,
    ADD COLUMN resumed         boolean NOT NULL DEFAULT false,
    ADD COLUMN event_payload   jsonb,
    ADD COLUMN last_event_id   bigint  NOT NULL DEFAULT 0;

-- The due sweep and the next wake-up read deferred instances by time; an
-- event finds its waiters by key. Only deferred rows are in them: every
-- way out of deferred clears next_check_at and wait_event (an index
-- naming state would stop HOT updates on the hot path).
CREATE INDEX task_instances_deferred_due ON task_instances (next_check_at)
    WHERE next_check_at IS NOT NULL;
CREATE INDEX task_instances_deferred_event ON task_instances (wait_event)
    WHERE wait_event IS NOT NULL;

-- ScheduleOnEvent: the event key that creates a run of the DAG.
ALTER TABLE dags ADD COLUMN schedule_event text COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX dags_schedule_event ON dags (schedule_event) WHERE schedule_event <> '';

-- Events received through the API, kept until expires_at so that a task
-- deferring after its event arrived still gets it. A dedupe_key is unique
-- while its event is kept.
CREATE TABLE events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text        COLLATE "C" NOT NULL,
    payload     jsonb,
    dedupe_key  text        COLLATE "C",
    received_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE UNIQUE INDEX events_dedupe ON events (dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX events_key ON events (key, id);
CREATE INDEX events_expiry ON events (expires_at);

-- +goose Down
DROP TABLE events;
DROP INDEX dags_schedule_event;
ALTER TABLE dags DROP COLUMN schedule_event;
DROP INDEX task_instances_deferred_event;
DROP INDEX task_instances_deferred_due;
ALTER TABLE task_instances
    DROP COLUMN next_check_at, DROP COLUMN wait_event, DROP COLUMN deferred_state,
    DROP COLUMN trigger_timeout, DROP COLUMN resumed, DROP COLUMN event_payload,
    DROP COLUMN last_event_id;
