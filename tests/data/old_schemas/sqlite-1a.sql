-- aioabort's sqlite schema version 1 as commit 027ee14 created it: the first schema (no retryable, attempts or beats columns)
-- (state lists as today's code writes them).
-- Made from `git show 027ee14:aioabort/backends/...`; test data, never edited.
CREATE TABLE IF NOT EXISTS aioabort_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aioabort_tasks (
    id TEXT PRIMARY KEY,
    name TEXT,
    queue TEXT,
    parent_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('ABORTED', 'ABORTING', 'FAILURE', 'PENDING', 'STARTED', 'SUCCESS')),
    args TEXT,
    result TEXT,
    error TEXT,
    abort_code TEXT,
    abort_message TEXT,
    abort_by TEXT,
    abort_at REAL,
    progress REAL,
    message TEXT,
    owner TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS aioabort_tasks_state ON aioabort_tasks (state, created_at);
CREATE INDEX IF NOT EXISTS aioabort_tasks_running_owner ON aioabort_tasks (owner)
    WHERE state IN ('ABORTING', 'STARTED');
CREATE INDEX IF NOT EXISTS aioabort_tasks_parent ON aioabort_tasks (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS aioabort_abort_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS aioabort_owners (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
INSERT INTO aioabort_meta (key, value) VALUES ('schema_version', '1');
