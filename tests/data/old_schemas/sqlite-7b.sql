-- aioabort's sqlite schema version 7 as commit 7863334 created it: the index on created_at
-- (state lists as today's code writes them).
-- Made from `git show 7863334:aioabort/backends/...`; test data, never edited.
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
    updated_at REAL NOT NULL,
    retryable INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    abort_delivered_at REAL,
    labels TEXT
);
CREATE INDEX IF NOT EXISTS aioabort_tasks_pending ON aioabort_tasks (queue, created_at)
    WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS aioabort_tasks_state ON aioabort_tasks (state, created_at);
CREATE INDEX IF NOT EXISTS aioabort_tasks_created ON aioabort_tasks (created_at DESC, id);
CREATE INDEX IF NOT EXISTS aioabort_tasks_running_owner ON aioabort_tasks (owner)
    WHERE state IN ('ABORTING', 'STARTED');
CREATE INDEX IF NOT EXISTS aioabort_tasks_parent ON aioabort_tasks (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS aioabort_tasks_updated ON aioabort_tasks (updated_at);
CREATE INDEX IF NOT EXISTS aioabort_tasks_finished ON aioabort_tasks (finished_at)
    WHERE finished_at IS NOT NULL;
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
    last_seen REAL NOT NULL,
    beats INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS aioabort_owners_last_seen ON aioabort_owners (last_seen);
CREATE TABLE IF NOT EXISTS aioabort_workers (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (queue, name, owner)
);
CREATE INDEX IF NOT EXISTS aioabort_workers_owner ON aioabort_workers (owner);
CREATE TABLE IF NOT EXISTS aioabort_task_labels (
    task_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (task_id, key)
);
CREATE INDEX IF NOT EXISTS aioabort_task_labels_value ON aioabort_task_labels (key, value);
CREATE TABLE IF NOT EXISTS aioabort_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL
);
INSERT INTO aioabort_meta (key, value) VALUES ('schema_version', '7');
