-- Tasks that wait without holding a worker, and events (see the
-- PostgreSQL migration of the same number for what each column means).
-- Instants are INTEGER unix microseconds, UTC; JSON is TEXT.

-- +goose Up
ALTER TABLE task_instances ADD COLUMN next_check_at INTEGER;
ALTER TABLE task_instances ADD COLUMN wait_event TEXT;
ALTER TABLE task_instances ADD COLUMN deferred_state TEXT;
ALTER TABLE task_instances ADD COLUMN trigger_timeout INTEGER;
ALTER TABLE task_instances ADD COLUMN resumed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_instances ADD COLUMN event_payload TEXT;
ALTER TABLE task_instances ADD COLUMN last_event_id INTEGER NOT NULL DEFAULT 0;

CREATE INDEX task_instances_deferred_due ON task_instances (next_check_at)
    WHERE next_check_at IS NOT NULL;
CREATE INDEX task_instances_deferred_event ON task_instances (wait_event)
    WHERE wait_event IS NOT NULL;

ALTER TABLE dags ADD COLUMN schedule_event TEXT NOT NULL DEFAULT '';
CREATE INDEX dags_schedule_event ON dags (schedule_event) WHERE schedule_event <> '';

CREATE TABLE events (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, -- ids never reused: consumers remember the last they saw
    key         TEXT    NOT NULL,
    payload     TEXT,
    dedupe_key  TEXT,
    received_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX events_dedupe ON events (dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX events_key ON events (key, id);
CREATE INDEX events_expiry ON events (expires_at);

-- +goose Down
DROP TABLE events;
DROP INDEX dags_schedule_event;
ALTER TABLE dags DROP COLUMN schedule_event;
DROP INDEX task_instances_deferred_event;
DROP INDEX task_instances_deferred_due;
ALTER TABLE task_instances DROP COLUMN next_check_at;
ALTER TABLE task_instances DROP COLUMN wait_event;
ALTER TABLE task_instances DROP COLUMN deferred_state;
ALTER TABLE task_instances DROP COLUMN trigger_timeout;
ALTER TABLE task_instances DROP COLUMN resumed;
ALTER TABLE task_instances DROP COLUMN event_payload;
ALTER TABLE task_instances DROP COLUMN last_event_id;
