-- Scheduler heartbeats, so that a process apart from the scheduler (the
-- API alone) can report the scheduler's health. One row per scheduler
-- process (id hostname:pid); rows of schedulers silent for longer than
-- store.SchedulerRetention are removed by the next heartbeat. Instants are
-- INTEGER unix microseconds, UTC, as in 00001.

-- +goose Up
CREATE TABLE schedulers (
    id           TEXT    NOT NULL PRIMARY KEY,
    heartbeat_at INTEGER NOT NULL
) STRICT;

-- The latest heartbeat (max) and the removal of old rows.
CREATE INDEX schedulers_heartbeat ON schedulers (heartbeat_at);

-- +goose Down
DROP TABLE schedulers;
