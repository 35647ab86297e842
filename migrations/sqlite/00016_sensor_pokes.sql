-- Sensor pokes without a try (see the PostgreSQL migration of the same
-- number). Instants are INTEGER unix microseconds, UTC.

-- +goose Up
CREATE TABLE sensor_pokes (
    ti_id      INTEGER NOT NULL PRIMARY KEY REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number INTEGER NOT NULL,
    due_at     INTEGER NOT NULL,
    lease      INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX sensor_pokes_due ON sensor_pokes (due_at);

-- +goose Down
DROP TABLE sensor_pokes;
