-- The SQLite dialect of aioabort's store: every statement the SQL store runs, by name.
-- postgres.sql has the same names with the same numbered parameters, so the two can be read
-- side by side, apart from the names each file declares as its own:
-- dialect-only: purge_abort_log, purge_labels, purge_events
-- (SQLiteStore's named override of purge: a SQLite DELETE reaches one table, so the purged
-- records' abort-log rows, labels and timelines go in three more statements of the same
-- transaction.)
-- {placeholders} are filled once at load time from aioabort._state (guards, the requeue
-- rule, the lost-task error), from the dialect ({now}) or from a fragment named earlier in
-- the file; never from input. Times are REAL seconds since the epoch, from SQLite's own
-- clock. Lists are JSON arrays.

-- name: schema
CREATE TABLE IF NOT EXISTS aioabort_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aioabort_tasks (
    id TEXT PRIMARY KEY,
    name TEXT,
    queue TEXT,
    parent_id TEXT,
    state TEXT NOT NULL CHECK (state IN {all_states}),
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
    labels TEXT,
    not_before REAL,
    expires_at REAL,
    time_limit REAL,
    key TEXT
);
DROP INDEX IF EXISTS aioabort_tasks_pending;
CREATE INDEX IF NOT EXISTS aioabort_tasks_due
    ON aioabort_tasks (COALESCE(not_before, created_at)) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS aioabort_tasks_expiring ON aioabort_tasks (expires_at)
    WHERE state = 'PENDING' AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS aioabort_tasks_key ON aioabort_tasks (key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS aioabort_tasks_state ON aioabort_tasks (state, created_at);
CREATE INDEX IF NOT EXISTS aioabort_tasks_created ON aioabort_tasks (created_at DESC, id);
CREATE INDEX IF NOT EXISTS aioabort_tasks_running_owner ON aioabort_tasks (owner)
    WHERE state IN {running};
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
CREATE TABLE IF NOT EXISTS aioabort_events (
    task_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS aioabort_events_task ON aioabort_events (task_id);
-- The timeline's rows: what a record will not tell later (aioabort._timeline.stored_events).
CREATE TRIGGER IF NOT EXISTS aioabort_timeline_queued AFTER INSERT ON aioabort_tasks
    WHEN NEW.state = 'PENDING'
BEGIN
    INSERT INTO aioabort_events (task_id, at, kind, actor, detail)
    VALUES (NEW.id, NEW.updated_at, 'queued', NULL, NEW.queue);
END;
CREATE TRIGGER IF NOT EXISTS aioabort_timeline_requeued AFTER UPDATE OF state ON aioabort_tasks
    WHEN OLD.state IN {running} AND NEW.state = 'PENDING'
BEGIN
    INSERT INTO aioabort_events (task_id, at, kind, actor, detail)
    SELECT NEW.id, e.at, e.kind, e.actor, e.detail FROM ({timeline_requeued}) AS e
    ORDER BY e.n;
END;

-- name: columns
-- aioabort's tables and their columns: a store is judged by them, not only by its version.
SELECT m.name, c.name FROM sqlite_master AS m, pragma_table_info(m.name) AS c
WHERE m.type = 'table' AND m.name LIKE 'aioabort\_%' ESCAPE '\';

-- name: lock_schema
-- BEGIN IMMEDIATE already holds the database's write lock.
SELECT 1;

-- name: schema_exists
SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'aioabort_meta');

-- name: schema_version
SELECT value FROM aioabort_meta WHERE key = 'schema_version';

-- name: set_schema_version
INSERT INTO aioabort_meta (key, value) VALUES ('schema_version', ?1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: get_task
SELECT {columns} FROM aioabort_tasks WHERE id = ?1;

-- name: get_task_for_update
-- BEGIN IMMEDIATE: no other writer can change it before the transaction ends.
SELECT {columns} FROM aioabort_tasks WHERE id = ?1;

-- name: insert_pending
-- ?7, ?8: not_before and expires_at (seconds since the epoch) or NULL; ?9: the time limit;
-- ?10: the key.
INSERT INTO aioabort_tasks (id, name, queue, parent_id, state, args, retryable, created_at,
    updated_at, not_before, expires_at, time_limit, key)
VALUES (?1, ?2, ?3, ?4, 'PENDING', ?5, ?6, {now}, {now}, ?7, ?8, ?9, ?10)
ON CONFLICT (id) DO NOTHING
RETURNING {columns};

-- name: insert_pending_batch
-- ?1: a JSON array of [id, name, queue, args, retryable, not_before, expires_at,
-- time_limit, key]; the rowid keeps their order.
INSERT INTO aioabort_tasks (id, name, queue, state, args, retryable, created_at, updated_at,
    not_before, expires_at, time_limit, key)
SELECT value ->> 0, value ->> 1, value ->> 2, 'PENDING', value ->> 3, value ->> 4, {now}, {now},
    value ->> 5, value ->> 6, value ->> 7, value ->> 8
FROM json_each(?1) WHERE true
ON CONFLICT (id) DO NOTHING
RETURNING {columns};

-- name: insert_started
INSERT INTO aioabort_tasks (id, name, parent_id, state, owner, created_at, started_at,
    updated_at, attempts)
VALUES (?1, ?2, ?3, 'STARTED', ?4, {now}, {now}, {now}, 1)
ON CONFLICT (id) DO NOTHING
RETURNING {columns};

-- name: set_labels
-- ?1: a JSON array of [id, {labels}] of records just created (never an existing one).
UPDATE aioabort_tasks SET labels = (
    SELECT e.value -> 1 FROM json_each(?1) AS e WHERE e.value ->> 0 = aioabort_tasks.id
)
WHERE id IN (SELECT value ->> 0 FROM json_each(?1));

-- name: insert_labels
INSERT INTO aioabort_task_labels (task_id, key, value)
SELECT e.value ->> 0, l.key, l.value FROM json_each(?1) AS e, json_each(e.value -> 1) AS l;

-- name: start_pending
UPDATE aioabort_tasks SET state = 'STARTED', owner = ?2, started_at = {now}, updated_at = {now},
    name = COALESCE(name, ?3), attempts = attempts + 1
WHERE id = ?1 AND state = 'PENDING'
RETURNING {columns};

-- name: lock_key
-- Producers of one key queue one at a time (BEGIN IMMEDIATE already holds the database's
-- write lock).
SELECT ?1;

-- name: keyed_live
-- The unfinished tasks of the key ?1 that a new task ?2 supersedes (through the key index).
SELECT id FROM aioabort_tasks WHERE key = ?1 AND +state IN {abortable} AND id <> ?2;

-- name: parent_abort
SELECT abort_code, abort_message, abort_by, abort_at FROM aioabort_tasks
WHERE id = ?1 AND state IN {parent_aborted} AND abort_code NOT IN {non_cascading};

-- name: abort_state
-- A fragment, not a statement: what an abort request sets besides its reason (the state it
-- moves to; a task it ends at once, a queued one, is finished now).
state = {abort_case}, updated_at = {now},
    finished_at = CASE WHEN state IN {abort_ends} THEN {now} ELSE finished_at END

-- name: abort_task
UPDATE aioabort_tasks SET {abort_state},
    abort_code = ?2, abort_message = ?3, abort_by = ?4, abort_at = ?5
WHERE id = ?1 AND state IN {abortable}
RETURNING {columns};

-- name: abort_descendants
WITH RECURSIVE family(id) AS (
    SELECT id FROM aioabort_tasks WHERE parent_id = ?1
    UNION SELECT t.id FROM aioabort_tasks AS t JOIN family AS f ON t.parent_id = f.id
)
UPDATE aioabort_tasks SET {abort_state},
    abort_code = ?2, abort_message = ?3, abort_by = ?4, abort_at = ?5
-- (+state: look the family up by id; the state index would scan every running task)
WHERE id IN (SELECT id FROM family) AND +state IN {abortable}
RETURNING id, attempts;

-- name: abort_tasks
-- abort_task for many: ?1 is a JSON array of ids (a batch of App.abort_many).
UPDATE aioabort_tasks SET {abort_state},
    abort_code = ?2, abort_message = ?3, abort_by = ?4, abort_at = ?5
-- (+state: look the ids up by the primary key, never through the state index)
WHERE id IN (SELECT value FROM json_each(?1)) AND +state IN {abortable}
RETURNING {columns};

-- name: parents_among
-- Which of the ids (a JSON array) have children (through the parent index).
SELECT DISTINCT parent_id FROM aioabort_tasks
WHERE parent_id IN (SELECT value FROM json_each(?1));

-- name: log_aborts
-- ?1: a JSON array of task ids, logged for every watcher in the order given.
INSERT INTO aioabort_abort_log (task_id, at) SELECT value, {now} FROM json_each(?1);

-- name: finish_batch
-- ?1: a JSON array of [id, owner, state, result, error]. Materialised, so each row is found
-- by its id (inlined, SQLite walked every running task through the state index per row).
WITH v(id, owner, state, result, error) AS MATERIALIZED (
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?1)
)
UPDATE aioabort_tasks SET state = v.state, result = v.result, error = v.error,
    finished_at = {now}, updated_at = {now}
FROM v
WHERE aioabort_tasks.id = v.id AND aioabort_tasks.owner = v.owner
    AND aioabort_tasks.state IN {running}
RETURNING {qualified_columns};

-- name: due
-- A fragment, not a statement: a queued task a worker may claim now (past its not_before,
-- through the index on the due time; not expired).
state = 'PENDING' AND COALESCE(not_before, created_at) <= {now}
    AND (expires_at IS NULL OR expires_at > {now})

-- name: claim
-- The earliest due first (by not_before, else by when they were queued).
UPDATE aioabort_tasks SET state = 'STARTED', owner = ?1, started_at = {now}, updated_at = {now},
    attempts = attempts + 1
WHERE id IN (
    -- (the due index: the state index would read every queued task, due or not)
    SELECT id FROM aioabort_tasks INDEXED BY aioabort_tasks_due
    WHERE {due} AND queue IN (SELECT value FROM json_each(?2))
        AND (?4 IS NULL OR name IN (SELECT value FROM json_each(?4)))
    ORDER BY COALESCE(not_before, created_at), rowid LIMIT ?3
) AND +state = 'PENDING'
RETURNING {columns};

-- name: next_due
-- Seconds until the first task of the queues ?1 (of the names ?2, or NULL for any) may be
-- claimed, and until the first queued task of any queue expires (NULL: none): the first
-- entries of two indexes, however many tasks wait for later (the indexes are named: without
-- statistics the planner would read the state index, every queued task).
SELECT
    (SELECT COALESCE(not_before, created_at) FROM aioabort_tasks INDEXED BY aioabort_tasks_due
        WHERE state = 'PENDING' AND queue IN (SELECT value FROM json_each(?1))
            AND (expires_at IS NULL OR expires_at > {now})
            AND (?2 IS NULL OR name IN (SELECT value FROM json_each(?2)))
        ORDER BY COALESCE(not_before, created_at) LIMIT 1) - {now},
    (SELECT MIN(expires_at) FROM aioabort_tasks INDEXED BY aioabort_tasks_expiring
        WHERE state = 'PENDING' AND expires_at IS NOT NULL) - {now};

-- name: expire_tasks
-- Queued tasks past their expires_at end ABORTED (code expired) and never run: those of ?1
-- (a JSON array of ids), or any (NULL), the ?3 that expired first; ?2: who saw it.
UPDATE aioabort_tasks SET state = 'ABORTED', finished_at = {now}, updated_at = {now},
    abort_code = {expired_code}, abort_message = {expired_message}, abort_by = ?2,
    abort_at = {now}
WHERE id IN (
    SELECT id FROM aioabort_tasks INDEXED BY aioabort_tasks_expiring
    WHERE state = 'PENDING' AND expires_at IS NOT NULL AND expires_at <= {now}
        AND (?1 IS NULL OR id IN (SELECT value FROM json_each(?1)))
    ORDER BY expires_at LIMIT ?3
) AND +state = 'PENDING'
RETURNING id;

-- name: requeue
UPDATE aioabort_tasks SET {requeue_reset}, updated_at = {now}
WHERE id = ?1 AND owner = ?2 AND state IN {running}
RETURNING {columns};

-- name: retry
-- Another attempt of a STARTED task (never an ABORTING one: an abort is never retried), not
-- before ?3, with the attempt's error ?4.
UPDATE aioabort_tasks SET {requeue_reset}, updated_at = {now}, not_before = ?3, error = ?4
WHERE id = ?1 AND owner = ?2 AND state = 'STARTED'
RETURNING {columns};

-- name: task_filter
-- A fragment, not a statement: the filters of list_tasks and list_ids. ?1: a JSON array of
-- states, or NULL for every state; ?2: a name, or NULL; ?5: a JSON object of labels that
-- must all match (through the label index), or NULL; ?6: the start of the id, or NULL (the
-- lower bound lets the primary key's index find it); ?7: a key, or NULL (through the key
-- index).
(?1 IS NULL OR state IN (SELECT value FROM json_each(?1)))
    AND (?7 IS NULL OR id IN (SELECT k.id FROM aioabort_tasks AS k WHERE k.key = ?7))
    AND (?2 IS NULL OR name = ?2)
    AND (?6 IS NULL OR (id >= ?6 AND substr(id, 1, length(?6)) = ?6))
    AND (?5 IS NULL OR id IN (
        -- The rarest label (counted up to 1,000) finds the candidates; the others are
        -- checked on each of them: a filter costs what its rarest label finds.
        SELECT l.task_id FROM aioabort_task_labels AS l
        JOIN (
            SELECT f.key, f.value FROM json_each(?5) AS f
            ORDER BY CASE WHEN (SELECT COUNT(*) FROM json_each(?5)) = 1 THEN 0
                ELSE (SELECT COUNT(*) FROM (
                    SELECT 1 FROM aioabort_task_labels AS c
                    WHERE c.key = f.key AND c.value = f.value LIMIT 1000
                )) END
            LIMIT 1
        ) AS rarest ON l.key = rarest.key AND l.value = rarest.value
        WHERE (SELECT COUNT(*) FROM json_each(?5)) = 1 OR NOT EXISTS (
            SELECT 1 FROM json_each(?5) AS f WHERE NOT EXISTS (
                SELECT 1 FROM aioabort_task_labels AS m
                WHERE m.task_id = l.task_id AND m.key = f.key AND m.value = f.value
            )
        )
    ))

-- name: list_tasks
-- A page of the records task_filter finds, newest first: ?3 of them from the ?4th.
SELECT {columns} FROM aioabort_tasks
WHERE {task_filter}
ORDER BY created_at DESC, id
LIMIT ?3 OFFSET ?4;

-- name: list_ids
-- The ids task_filter finds, in id order, the ?3 after ?4 ('': from the first): a cursor
-- that records changing or ending meanwhile cannot shift (App.abort_many reads by it). The
-- primary key's index finds the first after ?4: each page costs a page.
SELECT id FROM aioabort_tasks
WHERE {task_filter} AND id > ?4
ORDER BY id
LIMIT ?3;

-- name: count_tasks
SELECT state, COUNT(*) FROM aioabort_tasks GROUP BY state;

-- name: mark_delivered
-- The abort reached the scope running ?1 for owner ?2 (once): a task still ABORTING long after
-- this ignores its abort.
UPDATE aioabort_tasks SET abort_delivered_at = {now}, updated_at = {now}
WHERE id = ?1 AND owner = ?2 AND state = 'ABORTING' AND abort_delivered_at IS NULL
RETURNING id;

-- name: note_event
-- An event ?3 (abort_ignored, escalated) on the timeline of ?1, while owner ?2 runs it.
INSERT INTO aioabort_events (task_id, at, kind, actor, detail)
SELECT id, {now}, ?3, owner, ?4 FROM aioabort_tasks
WHERE id = ?1 AND owner = ?2 AND state IN {running}
RETURNING task_id;

-- name: report
UPDATE aioabort_tasks SET progress = COALESCE(?3, progress), message = COALESCE(?4, message),
    updated_at = {now}
WHERE id = ?1 AND owner = ?2 AND state IN {running}
RETURNING id;

-- name: heartbeat
INSERT INTO aioabort_owners (id, host, pid, started_at, last_seen, beats)
VALUES (?1, ?2, ?3, {now}, {now}, 1)
ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,
    beats = aioabort_owners.beats + 1;

-- name: take_lease
-- The fleet's reaper lease: ?1 takes it when it is free or expired, or renews it, for ?2
-- seconds; a row comes back only to its holder.
INSERT INTO aioabort_leases (name, holder, expires) VALUES ('reaper', ?1, {now} + ?2)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE aioabort_leases.holder = excluded.holder OR aioabort_leases.expires < {now}
RETURNING holder;

-- name: quiet_owners
-- The reaper's input: owners whose last beat is older than ?1 seconds (the dead, mostly),
-- with how many seconds ago that was.
SELECT id, beats, {now} - last_seen FROM aioabort_owners WHERE last_seen < {now} - ?1;

-- name: release_lease
DELETE FROM aioabort_leases WHERE holder = ?1;

-- name: owner_beats
SELECT id, beats FROM aioabort_owners;

-- name: reap_requeue
-- ?1: a JSON array of dead owners; a running task with no live owner is lost.
UPDATE aioabort_tasks SET {requeue_reset}, updated_at = {now}
WHERE state IN {running} AND {requeue_when} AND (
    owner IS NULL OR owner IN (SELECT value FROM json_each(?1))
    OR owner NOT IN (SELECT id FROM aioabort_owners)
)
RETURNING id;

-- name: reap_fail
UPDATE aioabort_tasks SET state = 'FAILURE', finished_at = {now}, updated_at = {now},
    error = {reaped_error}
WHERE state IN {running} AND (
    owner IS NULL OR owner IN (SELECT value FROM json_each(?1))
    OR owner NOT IN (SELECT id FROM aioabort_owners)
)
RETURNING id;

-- name: forget_owners
DELETE FROM aioabort_owners WHERE id IN (SELECT value FROM json_each(?1));

-- name: forget_workers
DELETE FROM aioabort_workers WHERE owner IN (SELECT value FROM json_each(?1));

-- name: serve
-- A worker of owner ?1 claims the names ?3 from the queues ?2 (JSON arrays).
INSERT INTO aioabort_workers (queue, name, owner)
SELECT q.value, n.value, ?1 FROM json_each(?2) AS q, json_each(?3) AS n WHERE true
ON CONFLICT DO NOTHING;

-- name: unserve
DELETE FROM aioabort_workers WHERE owner = ?1 AND queue IN (SELECT value FROM json_each(?2));

-- name: unclaimed
-- Tasks queued over ?1 seconds that no owner seen in the last ?2 seconds serves, by queue and
-- name (the workers table has a row per queue, name and owner: a handful per worker). Only
-- queued work counts: a record with no queue (create()) waits for a scope, not a worker.
SELECT t.queue, t.name, COUNT(*), MIN(t.created_at) FROM aioabort_tasks AS t
WHERE t.state = 'PENDING' AND t.queue IS NOT NULL AND t.created_at <= {now} - ?1
    AND NOT EXISTS (
        SELECT 1 FROM aioabort_workers AS w JOIN aioabort_owners AS o ON o.id = w.owner
        WHERE w.queue = t.queue AND w.name = t.name AND o.last_seen >= {now} - ?2
    )
GROUP BY t.queue, t.name
ORDER BY MIN(t.created_at), t.queue, t.name;

-- name: purge
-- Up to ?2 finished records that ended ?1 seconds ago or earlier, oldest first; never a running
-- or queued one. (Their abort-log rows and labels: purge_abort_log, purge_labels.)
DELETE FROM aioabort_tasks WHERE id IN (
    SELECT id FROM aioabort_tasks
    WHERE finished_at IS NOT NULL AND finished_at <= {now} - ?1 AND +state IN {terminal}
    ORDER BY finished_at LIMIT ?2
) AND +state IN {terminal}
RETURNING id;

-- name: purge_abort_log
DELETE FROM aioabort_abort_log WHERE task_id IN (SELECT value FROM json_each(?1));

-- name: purge_labels
DELETE FROM aioabort_task_labels WHERE task_id IN (SELECT value FROM json_each(?1));

-- name: purge_events
DELETE FROM aioabort_events WHERE task_id IN (SELECT value FROM json_each(?1));

-- name: events
-- The timeline of ?1, oldest first (the triggers of the schema write it).
SELECT at, kind, actor, detail FROM aioabort_events WHERE task_id = ?1 ORDER BY rowid;

-- name: prune_abort_log
DELETE FROM aioabort_abort_log WHERE seq <= (SELECT MAX(seq) FROM aioabort_abort_log) - ?1;

-- name: release_owner
UPDATE aioabort_tasks SET state = 'FAILURE', finished_at = {now}, updated_at = {now},
    error = {released_error}
WHERE owner = ?1 AND state IN {running}
RETURNING id;

-- name: max_abort_seq
SELECT COALESCE(MAX(seq), 0) FROM aioabort_abort_log;

-- name: aborts_since
-- The watcher's poll: abort requests logged after ?1, with the reason on each record now.
SELECT l.seq, l.task_id, t.abort_code, t.abort_message, t.abort_by, t.abort_at, t.attempts
FROM aioabort_abort_log AS l JOIN aioabort_tasks AS t ON t.id = l.task_id
WHERE l.seq > ?1 ORDER BY l.seq;

-- name: aborts_of
-- ?1: a JSON array of task ids (the ones watched here): their abort requests, if any.
SELECT id, abort_code, abort_message, abort_by, abort_at, attempts FROM aioabort_tasks
WHERE id IN (SELECT value FROM json_each(?1)) AND abort_code IS NOT NULL;

-- name: max_updated
SELECT COALESCE(MAX(updated_at), 0) FROM aioabort_tasks;

-- name: changed_since
-- Which records changed since ?1 (inclusive: writers are serialized, so a later commit
-- never carries an earlier time, and one within the same millisecond is not missed).
SELECT id, updated_at, state, progress, message, abort_code FROM aioabort_tasks
WHERE updated_at >= ?1 ORDER BY updated_at;
