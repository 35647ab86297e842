-- Scheduler heartbeats, so that a process apart from the scheduler (the
-- API alone) can report the scheduler's health. One row per scheduler
-- process (id hostname:pid); rows of schedulers silent for longer than
-- store.SchedulerRetention are removed by the next heartbeat.

-- +goose Up
CREATE TABLE schedulers (
    id           text        COLLATE "C" PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);

-- The latest heartbeat (max) and the removal of old rows.
CREATE INDEX schedulers_heartbeat ON schedulers (heartbeat_at);

-- +goose Down
DROP TABLE schedulers;
