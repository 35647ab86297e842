-- Trellis schema for SQLite (the same shape as the PostgreSQL schema).
--
-- Instants are INTEGER unix microseconds, UTC (timestamptz precision).
-- Durations are INTEGER nanoseconds (Go's time.Duration). JSON documents are
-- TEXT, lists of ids JSON arrays, booleans INTEGER 0/1. Task and run states
-- are Airflow's names (CONTRACT §3), checked here so no writer can store
-- another one.

-- +goose Up

-- One row per DAG id the binaries have registered; kept when the DAG goes
-- away (is_active = 0) so its history stays readable.
CREATE TABLE dags (
    dag_id            TEXT    NOT NULL PRIMARY KEY,
    fingerprint       TEXT    NOT NULL,
    schedule          TEXT    NOT NULL DEFAULT '',
    description       TEXT    NOT NULL DEFAULT '',
    tags              TEXT    NOT NULL DEFAULT '[]',
    max_active_runs   INTEGER NOT NULL DEFAULT 16,
    max_active_tasks  INTEGER NOT NULL DEFAULT 0,
    is_paused         INTEGER NOT NULL DEFAULT 0,
    is_active         INTEGER NOT NULL DEFAULT 1,
    last_interval_end INTEGER,
    next_due_at       INTEGER,
    updated_at        INTEGER NOT NULL
) STRICT;

-- The scheduler looks for active, unpaused DAGs that are due.
CREATE INDEX dags_due ON dags (next_due_at) WHERE is_active AND NOT is_paused;

-- One row per distinct structure of a DAG. Fingerprints do not include the
-- DAG id, so two DAGs with identical structure get two versions.
CREATE TABLE dag_versions (
    id          INTEGER NOT NULL PRIMARY KEY,
    dag_id      TEXT    NOT NULL REFERENCES dags (dag_id),
    fingerprint TEXT    NOT NULL,
    n_tasks     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (dag_id, fingerprint)
) STRICT;

-- The tasks of one structure, stored once per version and never per run:
-- run creation copies them into task instances with one INSERT … SELECT,
-- and finishing a task follows `downstream` to release the next ones.
CREATE TABLE dag_version_tasks (
    version_id     INTEGER NOT NULL REFERENCES dag_versions (id) ON DELETE CASCADE,
    task_id        TEXT    NOT NULL,
    ord            INTEGER NOT NULL, -- position in the spec; instances are created in this order
    kind           TEXT    NOT NULL,
    trigger_rule   TEXT    NOT NULL,
    priority       INTEGER NOT NULL,
    retries        INTEGER NOT NULL,
    retry_delay_ns INTEGER NOT NULL,
    max_backoff_ns INTEGER NOT NULL,
    timeout_ns     INTEGER NOT NULL,
    upstream       TEXT    NOT NULL, -- JSON array of direct upstream task ids
    downstream     TEXT    NOT NULL, -- JSON array of direct downstream task ids
    n_upstream     INTEGER NOT NULL,
    is_leaf        INTEGER NOT NULL,
    PRIMARY KEY (version_id, task_id)
) STRICT;

CREATE TABLE dag_runs (
    id             INTEGER NOT NULL PRIMARY KEY,
    dag_id         TEXT    NOT NULL REFERENCES dags (dag_id),
    run_id         TEXT    NOT NULL,
    run_type       TEXT    NOT NULL CHECK (run_type IN ('scheduled', 'manual', 'backfill')),
    logical_date   INTEGER NOT NULL,
    interval_start INTEGER NOT NULL,
    interval_end   INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed')),
    conf           TEXT    NOT NULL DEFAULT '{}',
    version_id     INTEGER NOT NULL REFERENCES dag_versions (id),
    fingerprint    TEXT    NOT NULL,
    note           TEXT    NOT NULL DEFAULT '',
    queued_at      INTEGER NOT NULL,
    started_at     INTEGER,
    ended_at       INTEGER,
    UNIQUE (dag_id, run_id),
    UNIQUE (dag_id, logical_date)
) STRICT;

-- StartRuns counts running runs and picks the oldest queued ones per DAG.
CREATE INDEX dag_runs_dag_state ON dag_runs (dag_id, state, logical_date);
-- PurgeRuns finds finished runs by end time.
CREATE INDEX dag_runs_finished ON dag_runs (ended_at) WHERE state IN ('success', 'failed');

-- One row per task of a run (and, later, per task created at run time:
-- call_key tells such calls of one task apart; parent_ti_id records the
-- caller; arguments its input; concurrency_key its concurrency group).
-- The trigger rule and retry policy are copied from the version so that
-- tasks created at run time can carry their own.
--
-- up_* count the direct upstream instances that reached each terminal
-- state; finishing a task increments them on its downstream instances, so
-- deciding a trigger rule never reads the upstream rows.
CREATE TABLE task_instances (
    id                 INTEGER NOT NULL PRIMARY KEY,
    run_id             INTEGER NOT NULL REFERENCES dag_runs (id) ON DELETE CASCADE,
    dag_id             TEXT    NOT NULL,
    task_id            TEXT    NOT NULL,
    call_key           TEXT    NOT NULL DEFAULT '',
    parent_ti_id       INTEGER,
    arguments          TEXT,
    concurrency_key    TEXT,
    state              TEXT    NOT NULL DEFAULT 'none' CHECK (state IN (
                           'none', 'scheduled', 'queued', 'running', 'success', 'failed',
                           'up_for_retry', 'skipped', 'upstream_failed', 'deferred',
                           'removed', 'restarting')),
    try_number         INTEGER NOT NULL DEFAULT 0,
    max_tries          INTEGER NOT NULL,
    retries            INTEGER NOT NULL,
    priority           INTEGER NOT NULL,
    trigger_rule       TEXT    NOT NULL,
    retry_delay_ns     INTEGER NOT NULL,
    max_backoff_ns     INTEGER NOT NULL,
    timeout_ns         INTEGER NOT NULL,
    n_upstream         INTEGER NOT NULL,
    up_success         INTEGER NOT NULL DEFAULT 0,
    up_failed          INTEGER NOT NULL DEFAULT 0,
    up_skipped         INTEGER NOT NULL DEFAULT 0,
    up_upstream_failed INTEGER NOT NULL DEFAULT 0,
    up_removed         INTEGER NOT NULL DEFAULT 0,
    queued_at          INTEGER,
    started_at         INTEGER,
    ended_at           INTEGER,
    next_retry_at      INTEGER,
    worker_id          TEXT    NOT NULL DEFAULT '',
    hostname           TEXT    NOT NULL DEFAULT '',
    pid                INTEGER NOT NULL DEFAULT 0,
    heartbeat_at       INTEGER,
    output             TEXT,
    error              TEXT    NOT NULL DEFAULT '',
    UNIQUE (run_id, task_id, call_key)
) STRICT;

-- Claiming: highest priority first, then oldest; only queued rows are in it.
CREATE INDEX task_instances_claim ON task_instances (priority DESC, queued_at, id)
    WHERE state = 'queued';
-- Settling a run: does it still have an unfinished instance?
CREATE INDEX task_instances_unfinished ON task_instances (run_id)
    WHERE state IN ('none', 'scheduled', 'queued', 'running', 'up_for_retry', 'deferred', 'restarting');
-- Zombies and dead workers: the (few) running rows, by worker. The
-- heartbeat is not indexed, so heartbeats touch no index.
CREATE INDEX task_instances_running ON task_instances (worker_id)
    WHERE state IN ('running', 'restarting');
-- Retries that become due.
CREATE INDEX task_instances_retry ON task_instances (next_retry_at) WHERE state = 'up_for_retry';
-- MaxActiveTasks: the queued and running instances of one DAG (queries
-- repeat the IN list so the partial index applies).
CREATE INDEX task_instances_dag_active ON task_instances (dag_id, state)
    WHERE state IN ('queued', 'running', 'restarting');

-- The log of one try: its size (capped) and how many bytes were dropped
-- beyond the cap. The bytes are in task_log_chunks, one row per append, so
-- appending never rewrites what is there.
CREATE TABLE task_logs (
    ti_id      INTEGER NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number INTEGER NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    dropped    INTEGER NOT NULL DEFAULT 0,
    chunks     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ti_id, try_number)
) STRICT;

CREATE TABLE task_log_chunks (
    ti_id      INTEGER NOT NULL,
    try_number INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    PRIMARY KEY (ti_id, try_number, seq),
    FOREIGN KEY (ti_id, try_number) REFERENCES task_logs (ti_id, try_number) ON DELETE CASCADE
) STRICT;

CREATE TABLE workers (
    id           TEXT    NOT NULL PRIMARY KEY,
    hostname     TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    slots        INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
) STRICT;

-- Wake-up sequence numbers (SQLite has no LISTEN/NOTIFY): every writing
-- transaction that should wake listeners bumps its topics here; other
-- processes notice the commit through PRAGMA data_version and compare
-- these numbers to learn which topics changed.
CREATE TABLE wakeups (
    topic TEXT    NOT NULL PRIMARY KEY,
    seq   INTEGER NOT NULL DEFAULT 0
) STRICT;

INSERT INTO wakeups (topic, seq) VALUES ('trellis_tasks_ready', 0), ('trellis_runs_changed', 0);

-- +goose Down
DROP TABLE wakeups;
DROP TABLE workers;
DROP TABLE task_log_chunks;
DROP TABLE task_logs;
DROP TABLE task_instances;
DROP TABLE dag_runs;
DROP TABLE dag_version_tasks;
DROP TABLE dag_versions;
DROP TABLE dags;
