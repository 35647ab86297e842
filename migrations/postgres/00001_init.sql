-- Trellis schema for PostgreSQL.
--
-- Durations are bigint nanoseconds (Go's time.Duration). Times are
-- timestamptz (microsecond precision). Identifiers use the "C" collation:
-- byte order, as in SQLite, and the cheapest comparisons for the keys the
-- hot paths look up. Task and run states are Airflow's
-- names (CONTRACT §3), checked here so no writer can store another one.

-- +goose Up

-- One row per DAG id the binaries have registered; kept when the DAG goes
-- away (is_active = false) so its history stays readable.
CREATE TABLE dags (
    dag_id            text        COLLATE "C" PRIMARY KEY,
    fingerprint       text        NOT NULL,
    schedule          text        NOT NULL DEFAULT '',
    description       text        NOT NULL DEFAULT '',
    tags              text[]      NOT NULL DEFAULT '{}',
    max_active_runs   integer     NOT NULL DEFAULT 16,
    max_active_tasks  integer     NOT NULL DEFAULT 0,
    is_paused         boolean     NOT NULL DEFAULT false,
    is_active         boolean     NOT NULL DEFAULT true,
    last_interval_end timestamptz,
    next_due_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The scheduler looks for active, unpaused DAGs that are due.
CREATE INDEX dags_due ON dags (next_due_at) WHERE is_active AND NOT is_paused;

-- One row per distinct structure of a DAG. Fingerprints do not include the
-- DAG id, so two DAGs with identical structure get two versions.
CREATE TABLE dag_versions (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id      text        COLLATE "C" NOT NULL REFERENCES dags (dag_id),
    fingerprint text        COLLATE "C" NOT NULL,
    n_tasks     integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dag_id, fingerprint)
);

-- The tasks of one structure, stored once per version and never per run:
-- run creation copies them into task instances server-side, and finishing
-- a task follows `downstream` to release the next ones.
CREATE TABLE dag_version_tasks (
    version_id     bigint  NOT NULL REFERENCES dag_versions (id) ON DELETE CASCADE,
    task_id        text    COLLATE "C" NOT NULL,
    ord            integer NOT NULL, -- position in the spec; task instances are created in this order
    kind           text    NOT NULL,
    trigger_rule   text    NOT NULL,
    priority       integer NOT NULL,
    retries        integer NOT NULL,
    retry_delay_ns bigint  NOT NULL,
    max_backoff_ns bigint  NOT NULL,
    timeout_ns     bigint  NOT NULL,
    upstream       text[]  COLLATE "C" NOT NULL,
    downstream     text[]  COLLATE "C" NOT NULL,
    n_upstream     integer NOT NULL,
    is_leaf        boolean NOT NULL,
    PRIMARY KEY (version_id, task_id)
);

CREATE TABLE dag_runs (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id         text        COLLATE "C" NOT NULL REFERENCES dags (dag_id),
    run_id         text        COLLATE "C" NOT NULL,
    run_type       text        NOT NULL CHECK (run_type IN ('scheduled', 'manual', 'backfill')),
    logical_date   timestamptz NOT NULL,
    interval_start timestamptz NOT NULL,
    interval_end   timestamptz NOT NULL,
    state          text        NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed')),
    conf           jsonb       NOT NULL DEFAULT '{}',
    version_id     bigint      NOT NULL REFERENCES dag_versions (id),
    fingerprint    text        NOT NULL,
    note           text        NOT NULL DEFAULT '',
    -- How many of the run's task instances have not finished. Kept in the
    -- transactions that move instances in or out of a terminal state; the
    -- run is settled when it reaches 0, without scanning its instances.
    unfinished     integer     NOT NULL DEFAULT 0 CHECK (unfinished >= 0),
    queued_at      timestamptz NOT NULL,
    started_at     timestamptz,
    ended_at       timestamptz,
    UNIQUE (dag_id, run_id),
    UNIQUE (dag_id, logical_date)
);

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
--
-- run_id has no foreign key on purpose: its per-row check costs a third of
-- the time of creating a large run, and its KEY SHARE locks on the run row
-- would collide with the transactions that lock runs to settle them. Runs
-- and their instances are only created and deleted together, in
-- transactions of the store.
CREATE TABLE task_instances (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id             bigint      NOT NULL,
    dag_id             text        COLLATE "C" NOT NULL,
    task_id            text        COLLATE "C" NOT NULL,
    call_key           text        COLLATE "C" NOT NULL DEFAULT '',
    parent_ti_id       bigint,
    arguments          jsonb,
    concurrency_key    text,
    state              text        NOT NULL DEFAULT 'none' CHECK (state IN (
                           'none', 'scheduled', 'queued', 'running', 'success', 'failed',
                           'up_for_retry', 'skipped', 'upstream_failed', 'deferred',
                           'removed', 'restarting')),
    try_number         integer     NOT NULL DEFAULT 0,
    max_tries          integer     NOT NULL,
    retries            integer     NOT NULL,
    priority           integer     NOT NULL,
    trigger_rule       text        NOT NULL,
    retry_delay_ns     bigint      NOT NULL,
    max_backoff_ns     bigint      NOT NULL,
    timeout_ns         bigint      NOT NULL,
    n_upstream         integer     NOT NULL,
    up_success         integer     NOT NULL DEFAULT 0,
    up_failed          integer     NOT NULL DEFAULT 0,
    up_skipped         integer     NOT NULL DEFAULT 0,
    up_upstream_failed integer     NOT NULL DEFAULT 0,
    up_removed         integer     NOT NULL DEFAULT 0,
    queued_at          timestamptz,
    started_at         timestamptz,
    ended_at           timestamptz,
    next_retry_at      timestamptz,
    worker_id          text        NOT NULL DEFAULT '',
    hostname           text        NOT NULL DEFAULT '',
    pid                integer     NOT NULL DEFAULT 0,
    heartbeat_at       timestamptz,
    output             jsonb,
    error              text        NOT NULL DEFAULT '',
    UNIQUE (run_id, task_id, call_key)
) WITH (fillfactor = 85);

-- Claiming: highest priority first, then oldest; only queued rows are in it.
CREATE INDEX task_instances_claim ON task_instances (priority DESC, queued_at, id)
    WHERE state = 'queued';
-- Zombies and dead workers: the (few) running rows. Keyed by id, not by
-- heartbeat, so heartbeat updates stay HOT.
CREATE INDEX task_instances_running ON task_instances (id) WHERE state IN ('running', 'restarting');
-- Retries that become due.
CREATE INDEX task_instances_retry ON task_instances (next_retry_at) WHERE state = 'up_for_retry';

-- The log of one try: its size (capped) and how many bytes were dropped
-- beyond the cap. The bytes are in task_log_chunks, one row per append, so
-- appending never rewrites what is there.
CREATE TABLE task_logs (
    ti_id      bigint  NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    try_number integer NOT NULL,
    size       bigint  NOT NULL DEFAULT 0,
    dropped    bigint  NOT NULL DEFAULT 0,
    chunks     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (ti_id, try_number)
);

CREATE TABLE task_log_chunks (
    ti_id      bigint  NOT NULL,
    try_number integer NOT NULL,
    seq        integer NOT NULL,
    data       bytea   NOT NULL,
    PRIMARY KEY (ti_id, try_number, seq),
    FOREIGN KEY (ti_id, try_number) REFERENCES task_logs (ti_id, try_number) ON DELETE CASCADE
);

CREATE TABLE workers (
    id           text        COLLATE "C" PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    slots        integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE workers;
DROP TABLE task_log_chunks;
DROP TABLE task_logs;
DROP TABLE task_instances;
DROP TABLE dag_runs;
DROP TABLE dag_version_tasks;
DROP TABLE dag_versions;
DROP TABLE dags;
