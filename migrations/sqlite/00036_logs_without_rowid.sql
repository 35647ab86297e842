-- A try's log row and its chunks are keyed by their primary keys only:
-- as rowid tables each insert wrote the table and a second B-tree for the
-- primary key (every finished task inserts one of each). WITHOUT ROWID
-- tables are the primary key's B-tree alone. See docs/benchmarks.md,
-- "Session 7: sqlite".

-- +goose Up
CREATE TABLE task_logs_new (
    ti_id      INTEGER NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number INTEGER NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    dropped    INTEGER NOT NULL DEFAULT 0,
    chunks     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ti_id, try_number)
) STRICT, WITHOUT ROWID;
INSERT INTO task_logs_new (ti_id, try_number, size, dropped, chunks)
    SELECT ti_id, try_number, size, dropped, chunks FROM task_logs;
CREATE TABLE task_log_chunks_new (
    ti_id      INTEGER NOT NULL,
    try_number INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    PRIMARY KEY (ti_id, try_number, seq),
    FOREIGN KEY (ti_id, try_number) REFERENCES task_logs_new (ti_id, try_number) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
INSERT INTO task_log_chunks_new (ti_id, try_number, seq, data)
    SELECT ti_id, try_number, seq, data FROM task_log_chunks;
DROP TABLE task_log_chunks;
DROP TABLE task_logs;
ALTER TABLE task_logs_new RENAME TO task_logs;
ALTER TABLE task_log_chunks_new RENAME TO task_log_chunks;

-- +goose Down
CREATE TABLE task_logs_old (
    ti_id      INTEGER NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number INTEGER NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    dropped    INTEGER NOT NULL DEFAULT 0,
    chunks     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ti_id, try_number)
) STRICT;
INSERT INTO task_logs_old (ti_id, try_number, size, dropped, chunks)
    SELECT ti_id, try_number, size, dropped, chunks FROM task_logs;
CREATE TABLE task_log_chunks_old (
    ti_id      INTEGER NOT NULL,
    try_number INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    PRIMARY KEY (ti_id, try_number, seq),
    FOREIGN KEY (ti_id, try_number) REFERENCES task_logs_old (ti_id, try_number) ON DELETE CASCADE
) STRICT;
INSERT INTO task_log_chunks_old (ti_id, try_number, seq, data)
    SELECT ti_id, try_number, seq, data FROM task_log_chunks;
DROP TABLE task_log_chunks;
DROP TABLE task_logs;
ALTER TABLE task_logs_old RENAME TO task_logs;
ALTER TABLE task_log_chunks_old RENAME TO task_log_chunks;
