-- aioabort's postgres schema version 7 as commit 7863334 created it: the index on created_at
-- (state lists as today's code writes them).
-- Made from `git show 7863334:aioabort/backends/...`; test data, never edited.
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {schema}.tasks (
    id text PRIMARY KEY,
    name text,
    queue text,
    parent_id text,
    state text NOT NULL CHECK (state IN ('ABORTED', 'ABORTING', 'FAILURE', 'PENDING', 'STARTED', 'SUCCESS')),
    args text,
    result text,
    error text,
    abort_code text,
    abort_message text,
    abort_by text,
    abort_at timestamptz,
    progress double precision,
    message text,
    owner text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    retryable boolean NOT NULL DEFAULT false,
    attempts integer NOT NULL DEFAULT 0,
    abort_delivered_at timestamptz,
    labels text
);
CREATE INDEX IF NOT EXISTS tasks_pending ON {schema}.tasks (queue, created_at)
    WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS tasks_state ON {schema}.tasks (state, created_at);
CREATE INDEX IF NOT EXISTS tasks_created ON {schema}.tasks (created_at DESC, id);
CREATE INDEX IF NOT EXISTS tasks_running_owner ON {schema}.tasks (owner)
    WHERE state IN ('ABORTING', 'STARTED');
CREATE INDEX IF NOT EXISTS tasks_parent ON {schema}.tasks (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_updated ON {schema}.tasks (updated_at);
CREATE INDEX IF NOT EXISTS tasks_finished ON {schema}.tasks (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {schema}.abort_log (
    seq bigserial PRIMARY KEY,
    task_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS {schema}.owners (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
    beats bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS owners_last_seen ON {schema}.owners (last_seen);
CREATE TABLE IF NOT EXISTS {schema}.workers (
    queue text NOT NULL,
    name text NOT NULL,
    owner text NOT NULL,
    PRIMARY KEY (queue, name, owner)
);
CREATE INDEX IF NOT EXISTS workers_owner ON {schema}.workers (owner);
CREATE TABLE IF NOT EXISTS {schema}.task_labels (
    task_id text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (task_id, key)
);
CREATE INDEX IF NOT EXISTS task_labels_value ON {schema}.task_labels (key, value);
CREATE TABLE IF NOT EXISTS {schema}.leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires timestamptz NOT NULL
);
INSERT INTO {schema}.meta (key, value) VALUES ('schema_version', '7');
