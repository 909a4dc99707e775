-- aioabort's postgres schema version 3 as commit d78ffd3 created it: the reaper lease
-- (state lists as today's code writes them).
-- Made from `git show d78ffd3:aioabort/backends/...`; test data, never edited.
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
    attempts integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_pending ON {schema}.tasks (queue, created_at)
    WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS tasks_state ON {schema}.tasks (state, created_at);
CREATE INDEX IF NOT EXISTS tasks_running_owner ON {schema}.tasks (owner)
    WHERE state IN ('ABORTING', 'STARTED');
CREATE INDEX IF NOT EXISTS tasks_parent ON {schema}.tasks (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_updated ON {schema}.tasks (updated_at);
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
CREATE TABLE IF NOT EXISTS {schema}.leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires timestamptz NOT NULL
);
INSERT INTO {schema}.meta (key, value) VALUES ('schema_version', '3');
