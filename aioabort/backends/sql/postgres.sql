-- The PostgreSQL dialect of aioabort's store: every statement the SQL store runs, by name.
-- sqlite.sql has the same names with the same numbered parameters, so the two can be read
-- side by side, apart from the names each file declares as its own:
-- dialect-only: notify_ended, request_abort, beat_and_lease
-- (PostgresStore's named overrides, request_abort and heartbeat, each one statement where
-- the shared flow runs several; notify_ended is a fragment of this file's statements.)
-- {placeholders} are filled once at load time from aioabort._state (guards, the requeue
-- rule, the lost-task error), from the store (the schema and the channels, both checked
-- identifiers) or from a fragment named earlier in the file; never from input. Times come
-- from the server's clock. Lists are JSON arrays. Notifications commit with the write that
-- causes them (NOTIFY is sent at commit, and only then), inside the same statement: one
-- round trip. New work on a queue is notified on that queue's own channel ({queue_prefix}
-- and 20 hex digits of the md5 of "schema:queue", as PostgresStore.queue_channel computes
-- it), so only its workers hear it.

-- name: schema
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {schema}.tasks (
    id text PRIMARY KEY,
    name text,
    queue text,
    parent_id text,
    state text NOT NULL CHECK (state IN {all_states}),
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
    labels text,
    not_before timestamptz,
    expires_at timestamptz,
    time_limit double precision,
    key text
);
DROP INDEX IF EXISTS {schema}.tasks_pending;
CREATE INDEX IF NOT EXISTS tasks_due
    ON {schema}.tasks ((COALESCE(not_before, created_at))) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS tasks_expiring ON {schema}.tasks (expires_at)
    WHERE state = 'PENDING' AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_key ON {schema}.tasks (key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_state ON {schema}.tasks (state, created_at);
CREATE INDEX IF NOT EXISTS tasks_created ON {schema}.tasks (created_at DESC, id);
CREATE INDEX IF NOT EXISTS tasks_running_owner ON {schema}.tasks (owner)
    WHERE state IN {running};
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
CREATE TABLE IF NOT EXISTS {schema}.events (
    seq bigserial PRIMARY KEY,
    task_id text NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    actor text,
    detail text
);
CREATE INDEX IF NOT EXISTS events_task ON {schema}.events (task_id, seq);
-- The timeline's rows: what a record will not tell later (aioabort._timeline.stored_events).
CREATE OR REPLACE FUNCTION {schema}.timeline() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {schema}.events (task_id, at, kind, actor, detail)
        VALUES (NEW.id, NEW.updated_at, 'queued', NULL, NEW.queue);
    ELSE
        INSERT INTO {schema}.events (task_id, at, kind, actor, detail)
        SELECT NEW.id, e.at, e.kind, e.actor, e.detail FROM ({timeline_requeued}) AS e
        ORDER BY e.n;
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS timeline_queued ON {schema}.tasks;
CREATE TRIGGER timeline_queued AFTER INSERT ON {schema}.tasks
    FOR EACH ROW WHEN (NEW.state = 'PENDING') EXECUTE FUNCTION {schema}.timeline();
DROP TRIGGER IF EXISTS timeline_requeued ON {schema}.tasks;
CREATE TRIGGER timeline_requeued AFTER UPDATE OF state ON {schema}.tasks
    FOR EACH ROW WHEN (OLD.state IN {running} AND NEW.state = 'PENDING')
    EXECUTE FUNCTION {schema}.timeline();

-- name: columns
-- aioabort's tables and their columns: a store is judged by them, not only by its version.
SELECT '{schema}.' || table_name, column_name FROM information_schema.columns
WHERE table_schema = '{schema}';

-- name: lock_schema
-- One process creates the schema; the others wait here, then find it.
SELECT pg_advisory_xact_lock(hashtext('aioabort:{schema}'));

-- name: schema_exists
SELECT to_regclass('{schema}.meta') IS NOT NULL;

-- name: schema_version
SELECT value FROM {schema}.meta WHERE key = 'schema_version';

-- name: set_schema_version
INSERT INTO {schema}.meta (key, value) VALUES ('schema_version', $1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: get_task
SELECT {columns} FROM {schema}.tasks WHERE id = $1;

-- name: get_task_for_update
SELECT {columns} FROM {schema}.tasks WHERE id = $1 FOR UPDATE;

-- name: insert_pending
-- $7, $8: not_before and expires_at or NULL; $9: the time limit; $10: the key.
WITH ins AS (
    INSERT INTO {schema}.tasks (id, name, queue, parent_id, state, args, retryable,
        not_before, expires_at, time_limit, key)
    VALUES ($1, $2, $3, $4, 'PENDING', $5, $6, $7, $8, $9, $10)
    ON CONFLICT (id) DO NOTHING
    RETURNING {columns}
), notified AS (
    SELECT pg_notify('{queue_prefix}' || left(md5('{schema}:' || queue), 20), queue)
    FROM ins WHERE queue IS NOT NULL
)
SELECT ins.*, (SELECT count(*) FROM notified) AS notified FROM ins;

-- name: insert_pending_batch
-- $1: a JSON array of [id, name, queue, args, retryable, not_before, expires_at, time_limit,
-- key] (times in seconds since the epoch); one NOTIFY per queue with work.
WITH v AS (
    SELECT e ->> 0 AS id, e ->> 1 AS name, e ->> 2 AS queue, e ->> 3 AS args,
        (e ->> 4)::boolean AS retryable, to_timestamp((e ->> 5)::float8) AS not_before,
        to_timestamp((e ->> 6)::float8) AS expires_at, (e ->> 7)::float8 AS time_limit,
        e ->> 8 AS key, n
    FROM json_array_elements($1::json) WITH ORDINALITY AS x(e, n)
), ins AS (
    INSERT INTO {schema}.tasks (id, name, queue, state, args, retryable, created_at, updated_at,
        not_before, expires_at, time_limit, key)
    SELECT id, name, queue, 'PENDING', args, retryable, clock_timestamp(), clock_timestamp(),
        not_before, expires_at, time_limit, key
    FROM v ORDER BY n
    ON CONFLICT (id) DO NOTHING
    RETURNING {columns}
), notified AS (
    SELECT pg_notify('{queue_prefix}' || left(md5('{schema}:' || q.queue), 20), q.queue)
    FROM (SELECT DISTINCT queue FROM ins WHERE queue IS NOT NULL) AS q
)
SELECT ins.*, (SELECT count(*) FROM notified) AS notified FROM ins;

-- name: set_labels
-- $1: a JSON array of [id, {labels}] of records just created (never an existing one).
UPDATE {schema}.tasks AS t SET labels = v.labels
FROM (SELECT e ->> 0 AS id, (e -> 1)::text AS labels FROM json_array_elements($1::json) AS x(e))
    AS v
WHERE t.id = v.id;

-- name: insert_labels
INSERT INTO {schema}.task_labels (task_id, key, value)
SELECT e ->> 0, l.key, l.value
FROM json_array_elements($1::json) AS x(e), json_each_text(e -> 1) AS l;

-- name: insert_started
INSERT INTO {schema}.tasks (id, name, parent_id, state, owner, started_at, attempts)
VALUES ($1, $2, $3, 'STARTED', $4, clock_timestamp(), 1)
ON CONFLICT (id) DO NOTHING
RETURNING {columns};

-- name: start_pending
UPDATE {schema}.tasks SET state = 'STARTED', owner = $2, started_at = clock_timestamp(),
    updated_at = clock_timestamp(), name = COALESCE(name, $3), attempts = attempts + 1
WHERE id = $1 AND state = 'PENDING'
RETURNING {columns};

-- name: lock_key
-- Producers of one key queue one at a time: the second waits here until the first commits,
-- then sees its task (READ COMMITTED: each statement reads what was committed before it).
SELECT pg_advisory_xact_lock(hashtext('aioabort:{schema}:key:' || $1::text));

-- name: keyed_live
-- The unfinished tasks of the key $1 that a new task $2 supersedes (through the key index).
SELECT id FROM {schema}.tasks WHERE key = $1 AND state IN {abortable} AND id <> $2;

-- name: parent_abort
SELECT abort_code, abort_message, abort_by, abort_at FROM {schema}.tasks
WHERE id = $1 AND state IN {parent_aborted} AND abort_code NOT IN {non_cascading};

-- name: abort_state
-- A fragment, not a statement: what an abort request sets besides its reason (the state it
-- moves to; a task it ends at once, a queued one, is finished now).
state = {abort_case}, updated_at = clock_timestamp(),
    finished_at = CASE WHEN state IN {abort_ends} THEN clock_timestamp() ELSE finished_at END

-- name: abort_task
UPDATE {schema}.tasks SET {abort_state},
    abort_code = $2, abort_message = $3, abort_by = $4, abort_at = $5
WHERE id = $1 AND state IN {abortable}
RETURNING {columns};

-- name: abort_descendants
WITH RECURSIVE family(id) AS (
    SELECT id FROM {schema}.tasks WHERE parent_id = $1
    UNION SELECT t.id FROM {schema}.tasks AS t JOIN family AS f ON t.parent_id = f.id
)
UPDATE {schema}.tasks SET {abort_state},
    abort_code = $2, abort_message = $3, abort_by = $4, abort_at = $5
WHERE id IN (SELECT id FROM family) AND state IN {abortable}
RETURNING id, attempts;

-- name: abort_tasks
-- abort_task for many: $1 is a JSON array of ids (a batch of App.abort_many).
UPDATE {schema}.tasks SET {abort_state},
    abort_code = $2, abort_message = $3, abort_by = $4, abort_at = $5
WHERE id IN (SELECT json_array_elements_text($1::json)) AND state IN {abortable}
RETURNING {columns};

-- name: parents_among
-- Which of the ids (a JSON array) have children (through the parent index).
SELECT DISTINCT parent_id FROM {schema}.tasks
WHERE parent_id IN (SELECT json_array_elements_text($1::json));

-- name: log_aborts
-- $1: a JSON array of task ids, logged for every watcher and notified, in the order given.
WITH logged AS (
    INSERT INTO {schema}.abort_log (task_id)
    SELECT e FROM json_array_elements_text($1::json) WITH ORDINALITY AS x(e, n) ORDER BY n
    RETURNING task_id
)
SELECT count(pg_notify('{abort_channel}', json_build_object('id', task_id)::text)) FROM logged;

-- name: request_abort
-- The one-round-trip abort (PostgresStore.request_abort, a named exception to the generic
-- flow): the abort, every unfinished descendant's ($6, $7: their reason), their log rows and
-- notifications, in one statement and one commit.
WITH RECURSIVE family(id) AS (
    SELECT id FROM {schema}.tasks WHERE parent_id = $1
    UNION SELECT t.id FROM {schema}.tasks AS t JOIN family AS f ON t.parent_id = f.id
), root AS (
    UPDATE {schema}.tasks SET {abort_state},
        abort_code = $2, abort_message = $3, abort_by = $4, abort_at = $5
    WHERE id = $1 AND state IN {abortable}
    RETURNING {columns}
), kids AS (
    UPDATE {schema}.tasks SET {abort_state},
        abort_code = $6, abort_message = $7, abort_by = $4, abort_at = $5
    WHERE id IN (SELECT id FROM family) AND state IN {abortable}
        AND EXISTS (SELECT 1 FROM root) AND $2 NOT IN {non_cascading}
    RETURNING id, attempts
), logged AS (
    INSERT INTO {schema}.abort_log (task_id)
    SELECT id FROM root UNION ALL SELECT id FROM kids
    RETURNING task_id
), notified AS (
    -- The notice carries the reason (the listener trusts it and reads no row); one too long
    -- for NOTIFY's 8,000 bytes carries the id alone, and the listener reads the row.
    SELECT pg_notify('{abort_channel}', CASE WHEN octet_length(p.j) < 7900 THEN p.j
        ELSE json_build_object('id', n.id)::text END)
    FROM (
        SELECT id, attempts, abort_code, abort_message, abort_by, abort_at FROM root
        UNION ALL SELECT id, attempts, $6, $7, $4, $5 FROM kids
    ) AS n(id, attempts, code, message, by_, at),
    LATERAL (SELECT json_build_object('id', n.id, 'code', n.code, 'message', n.message,
        'by', n.by_, 'at', n.at, 'attempts', n.attempts)::text AS j) AS p
)
SELECT root.*, (SELECT count(*) FROM notified) AS notified,
    (SELECT json_agg(json_build_array(id, attempts)) FROM kids)::text AS kids
FROM root;

-- name: notify_ended
-- A fragment, not a statement: the CTE "notified" that announces the ids of a CTE "ended" on
-- the end channel, as JSON arrays of ids, as few as fit (guarantee G13: one notification per
-- group commit, not per task). An array holds ids until its JSON passes 7,000 bytes (an id's
-- JSON is at most 803, so a payload stays under NOTIFY's 8,000).
notified AS (
    SELECT pg_notify('{end_channel}', json_agg(id)::text) FROM (
        SELECT id, floor((sum(octet_length(to_json(id)::text) + 1) OVER (ORDER BY id)
            - octet_length(to_json(id)::text) - 1) / 7000) AS chunk
        FROM ended
    ) AS c GROUP BY chunk
)

-- name: finish_batch
-- $1: a JSON array of [id, owner, state, result, error]; the ids ended, coalesced into as few
-- notifications as fit (notify_ended).
WITH v AS (
    SELECT e ->> 0 AS id, e ->> 1 AS owner, e ->> 2 AS state, e ->> 3 AS result,
        e ->> 4 AS error
    FROM json_array_elements($1::json) AS x(e)
), ended AS (
    UPDATE {schema}.tasks AS t SET state = v.state, result = v.result, error = v.error,
        finished_at = clock_timestamp(), updated_at = clock_timestamp()
    FROM v
    WHERE t.id = v.id AND t.owner = v.owner AND t.state IN {running}
    RETURNING {qualified_columns}
), {notify_ended}
SELECT ended.*, (SELECT count(*) FROM notified) AS notified FROM ended;

-- name: due
-- A fragment, not a statement: a queued task a worker may claim now (past its not_before,
-- through the index on the due time; not expired). statement_timestamp(), not the volatile
-- clock_timestamp(): only a stable bound can be an index condition.
state = 'PENDING' AND COALESCE(not_before, created_at) <= statement_timestamp()
    AND (expires_at IS NULL OR expires_at > statement_timestamp())

-- name: claim
-- The earliest due first (by not_before, else by when they were queued).
UPDATE {schema}.tasks SET state = 'STARTED', owner = $1, started_at = clock_timestamp(),
    updated_at = clock_timestamp(), attempts = attempts + 1
WHERE id IN (
    SELECT id FROM {schema}.tasks
    WHERE {due} AND queue IN (SELECT json_array_elements_text($2::json))
        AND ($4::json IS NULL OR name IN (SELECT json_array_elements_text($4::json)))
    ORDER BY COALESCE(not_before, created_at) LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING {columns};

-- name: next_due
-- Seconds until the first task of the queues $1 (of the names $2, or NULL for any) may be
-- claimed, and until the first queued task of any queue expires (NULL: none): the first
-- entries of two indexes, however many tasks wait for later.
SELECT
    extract(epoch FROM (
        SELECT COALESCE(not_before, created_at) FROM {schema}.tasks
        WHERE state = 'PENDING' AND queue IN (SELECT json_array_elements_text($1::json))
            AND (expires_at IS NULL OR expires_at > statement_timestamp())
            AND ($2::json IS NULL OR name IN (SELECT json_array_elements_text($2::json)))
        ORDER BY COALESCE(not_before, created_at) LIMIT 1
    ) - statement_timestamp())::float8,
    extract(epoch FROM (SELECT min(expires_at) FROM {schema}.tasks
        WHERE state = 'PENDING' AND expires_at IS NOT NULL) - statement_timestamp())::float8;

-- name: expire_tasks
-- Queued tasks past their expires_at end ABORTED (code expired) and never run: those of $1
-- (a JSON array of ids), or any (NULL), the $3 that expired first; $2: who saw it.
UPDATE {schema}.tasks SET state = 'ABORTED', finished_at = clock_timestamp(),
    updated_at = clock_timestamp(), abort_code = {expired_code},
    abort_message = {expired_message}, abort_by = $2, abort_at = clock_timestamp()
WHERE id IN (
    SELECT id FROM {schema}.tasks
    WHERE state = 'PENDING' AND expires_at IS NOT NULL AND expires_at <= statement_timestamp()
        AND ($1::json IS NULL OR id IN (SELECT json_array_elements_text($1::json)))
    ORDER BY expires_at LIMIT $3
    FOR UPDATE SKIP LOCKED
) AND state = 'PENDING'
RETURNING id;

-- name: requeue
WITH back AS (
    UPDATE {schema}.tasks SET {requeue_reset}, updated_at = clock_timestamp()
    WHERE id = $1 AND owner = $2 AND state IN {running}
    RETURNING {columns}
)
-- (a record with no queue, started by a scope, has no queue's workers to wake)
SELECT back.*, CASE WHEN back.queue IS NOT NULL THEN
    pg_notify('{queue_prefix}' || left(md5('{schema}:' || back.queue), 20), back.queue)::text
END AS notified FROM back;

-- name: retry
-- Another attempt of a STARTED task (never an ABORTING one: an abort is never retried), not
-- before $3, with the attempt's error $4; its queue's workers are told (to set their timer).
WITH back AS (
    UPDATE {schema}.tasks SET {requeue_reset}, updated_at = clock_timestamp(),
        not_before = $3, error = $4
    WHERE id = $1 AND owner = $2 AND state = 'STARTED'
    RETURNING {columns}
)
SELECT back.*, pg_notify('{queue_prefix}' || left(md5('{schema}:' || back.queue), 20), back.queue)::text AS notified FROM back;

-- name: task_filter
-- A fragment, not a statement: the filters of list_tasks and list_ids. $1: a JSON array of
-- states, or NULL for every state; $2: a name, or NULL; $5: a JSON object of labels that
-- must all match (through the label index), or NULL; $6: the start of the id, or NULL; $7: a
-- key, or NULL.
($1::json IS NULL OR state IN (SELECT json_array_elements_text($1::json)))
    AND ($7::text IS NULL OR key = $7::text)
    AND ($2::text IS NULL OR name = $2::text)
    AND ($6::text IS NULL OR starts_with(id, $6::text))
    AND ($5::json IS NULL OR (id IN (
        -- The rarest label (counted up to 1,000) finds the candidates; each is checked
        -- against every label on its own row: a filter costs what its rarest label finds.
        SELECT l.task_id FROM {schema}.task_labels AS l
        JOIN (
            SELECT f.key, f.value FROM json_each_text($5::json) AS f
            ORDER BY CASE WHEN (SELECT count(*) FROM json_each_text($5::json)) = 1 THEN 0
                ELSE (SELECT count(*) FROM (
                    SELECT 1 FROM {schema}.task_labels AS c
                    WHERE c.key = f.key AND c.value = f.value LIMIT 1000
                ) AS capped) END
            LIMIT 1
        ) AS rarest ON l.key = rarest.key AND l.value = rarest.value
    ) AND ((SELECT count(*) FROM json_each_text($5::json)) = 1
        OR labels::jsonb @> $5::jsonb)))

-- name: list_tasks
-- A page of the records task_filter finds, newest first: $3 of them from the $4th.
SELECT {columns} FROM {schema}.tasks
WHERE {task_filter}
ORDER BY created_at DESC, id
LIMIT $3 OFFSET $4;

-- name: list_ids
-- The ids task_filter finds, in id order, the $3 after $4 ('': from the first): a cursor
-- that records changing or ending meanwhile cannot shift (App.abort_many reads by it). The
-- primary key's index finds the first after $4: each page costs a page.
SELECT id FROM {schema}.tasks
WHERE {task_filter} AND id > $4::text
ORDER BY id
LIMIT $3;

-- name: count_tasks
SELECT state, COUNT(*) FROM {schema}.tasks GROUP BY state;

-- name: mark_delivered
-- The abort reached the scope running $1 for owner $2 (once): a task still ABORTING long after
-- this ignores its abort.
UPDATE {schema}.tasks SET abort_delivered_at = clock_timestamp(), updated_at = clock_timestamp()
WHERE id = $1 AND owner = $2 AND state = 'ABORTING' AND abort_delivered_at IS NULL
RETURNING id;

-- name: note_event
-- An event $3 (abort_ignored, escalated) on the timeline of $1, while owner $2 runs it.
INSERT INTO {schema}.events (task_id, at, kind, actor, detail)
SELECT id, clock_timestamp(), $3, owner, $4 FROM {schema}.tasks
WHERE id = $1 AND owner = $2 AND state IN {running}
RETURNING task_id;

-- name: report
-- Progress is notified on the channel of task ends, which only processes with waiters
-- LISTEN to; a scope writes it at most once per progress interval.
WITH r AS (
    UPDATE {schema}.tasks SET progress = COALESCE($3, progress),
        message = COALESCE($4, message), updated_at = clock_timestamp()
    WHERE id = $1 AND owner = $2 AND state IN {running}
    RETURNING id
)
SELECT r.id, pg_notify('{end_channel}', json_build_array(r.id)::text)::text AS notified FROM r;

-- name: heartbeat
INSERT INTO {schema}.owners (id, host, pid, beats) VALUES ($1, $2, $3, 1)
ON CONFLICT (id) DO UPDATE SET last_seen = clock_timestamp(),
    beats = {schema}.owners.beats + 1;

-- name: take_lease
-- The fleet's reaper lease: $1 takes it when it is free or expired, or renews it, for $2
-- seconds; a row comes back only to its holder. (take_lease and quiet_owners are the shared
-- heartbeat flow's; PostgresStore runs beat_and_lease instead.)
INSERT INTO {schema}.leases (name, holder, expires)
VALUES ('reaper', $1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE {schema}.leases.holder = excluded.holder OR {schema}.leases.expires < clock_timestamp()
RETURNING holder;

-- name: quiet_owners
-- The reaper's input: owners whose last beat is older than $1 seconds (the dead, mostly),
-- with how many seconds ago that was.
SELECT id, beats, extract(epoch FROM clock_timestamp() - last_seen)::float8 FROM {schema}.owners
WHERE last_seen < clock_timestamp() - make_interval(secs => $1);

-- name: beat_and_lease
-- heartbeat, take_lease and (for the holder) quiet_owners in one statement: one per interval
-- for an idle App. $4: the lease's seconds; $5: quiet_owners' $1. The holder gets a row
-- with a NULL id, then the quiet owners; everyone else gets no row.
WITH beat AS (
    INSERT INTO {schema}.owners (id, host, pid, beats) VALUES ($1, $2, $3, 1)
    ON CONFLICT (id) DO UPDATE SET last_seen = clock_timestamp(),
        beats = {schema}.owners.beats + 1
    RETURNING id
), lease AS (
    INSERT INTO {schema}.leases (name, holder, expires)
    VALUES ('reaper', $1, clock_timestamp() + make_interval(secs => $4))
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
    WHERE {schema}.leases.holder = excluded.holder
        OR {schema}.leases.expires < clock_timestamp()
    RETURNING holder
)
SELECT NULL::text AS id, NULL::bigint AS beats, NULL::float8 AS quiet_for FROM lease
UNION ALL
SELECT o.id, o.beats, extract(epoch FROM clock_timestamp() - o.last_seen)::float8
FROM {schema}.owners AS o
WHERE EXISTS (SELECT 1 FROM lease)
    AND o.last_seen < clock_timestamp() - make_interval(secs => $5);

-- name: release_lease
DELETE FROM {schema}.leases WHERE holder = $1;

-- name: owner_beats
SELECT id, beats FROM {schema}.owners;

-- name: reap_requeue
-- $1: a JSON array of dead owners; a running task with no live owner is lost.
WITH back AS (
    UPDATE {schema}.tasks SET {requeue_reset}, updated_at = clock_timestamp()
    WHERE state IN {running} AND {requeue_when} AND (
        owner IS NULL OR owner IN (SELECT json_array_elements_text($1::json))
        OR NOT EXISTS (SELECT 1 FROM {schema}.owners AS o WHERE o.id = owner)
    )
    RETURNING id, queue
)
SELECT back.id, CASE WHEN back.queue IS NOT NULL THEN
    pg_notify('{queue_prefix}' || left(md5('{schema}:' || back.queue), 20), back.queue)::text
END AS notified FROM back;

-- name: reap_fail
WITH ended AS (
    UPDATE {schema}.tasks SET state = 'FAILURE', finished_at = clock_timestamp(),
        updated_at = clock_timestamp(), error = {reaped_error}
    WHERE state IN {running} AND (
        owner IS NULL OR owner IN (SELECT json_array_elements_text($1::json))
        OR NOT EXISTS (SELECT 1 FROM {schema}.owners AS o WHERE o.id = owner)
    )
    RETURNING id
), {notify_ended}
SELECT ended.id, (SELECT count(*) FROM notified) AS notified FROM ended;

-- name: forget_owners
DELETE FROM {schema}.owners WHERE id IN (SELECT json_array_elements_text($1::json));

-- name: forget_workers
DELETE FROM {schema}.workers WHERE owner IN (SELECT json_array_elements_text($1::json));

-- name: serve
-- A worker of owner $1 claims the names $3 from the queues $2 (JSON arrays).
INSERT INTO {schema}.workers (queue, name, owner)
SELECT q, n, $1::text FROM json_array_elements_text($2::json) AS q,
    json_array_elements_text($3::json) AS n
ON CONFLICT DO NOTHING;

-- name: unserve
DELETE FROM {schema}.workers
WHERE owner = $1 AND queue IN (SELECT json_array_elements_text($2::json));

-- name: unclaimed
-- Tasks queued over $1 seconds that no owner seen in the last $2 seconds serves, by queue and
-- name (the workers table has a row per queue, name and owner: a handful per worker). Only
-- queued work counts: a record with no queue (create()) waits for a scope, not a worker.
SELECT t.queue, t.name, count(*), min(t.created_at) FROM {schema}.tasks AS t
WHERE t.state = 'PENDING' AND t.queue IS NOT NULL
    AND t.created_at <= clock_timestamp() - make_interval(secs => $1)
    AND NOT EXISTS (
        SELECT 1 FROM {schema}.workers AS w JOIN {schema}.owners AS o ON o.id = w.owner
        WHERE w.queue = t.queue AND w.name = t.name
            AND o.last_seen >= clock_timestamp() - make_interval(secs => $2)
    )
GROUP BY t.queue, t.name
ORDER BY min(t.created_at), t.queue, t.name;

-- name: purge
-- Up to $2 finished records that ended $1 seconds ago or earlier, oldest first, and their
-- abort-log rows, labels and timelines, in one statement; never a running or queued one. The ids are
-- locked first (a materialized CTE), then deleted by id: a plan that ran the subquery per
-- row of the table (stale statistics) took seconds.
WITH doomed AS (
    SELECT id FROM {schema}.tasks
    WHERE finished_at IS NOT NULL AND state IN {terminal}
        AND finished_at <= clock_timestamp() - make_interval(secs => $1)
    ORDER BY finished_at LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {schema}.tasks AS t USING doomed AS d WHERE t.id = d.id RETURNING t.id
), logged AS (
    DELETE FROM {schema}.abort_log WHERE task_id IN (SELECT id FROM gone)
), unlabelled AS (
    DELETE FROM {schema}.task_labels WHERE task_id IN (SELECT id FROM gone)
), forgotten AS (
    DELETE FROM {schema}.events WHERE task_id IN (SELECT id FROM gone)
)
SELECT id FROM gone;

-- name: events
-- The timeline of $1, oldest first (the trigger of the schema writes it).
SELECT at, kind, actor, detail FROM {schema}.events WHERE task_id = $1 ORDER BY seq;

-- name: prune_abort_log
DELETE FROM {schema}.abort_log WHERE seq <= (SELECT MAX(seq) FROM {schema}.abort_log) - $1;

-- name: release_owner
WITH ended AS (
    UPDATE {schema}.tasks SET state = 'FAILURE', finished_at = clock_timestamp(),
        updated_at = clock_timestamp(), error = {released_error}
    WHERE owner = $1 AND state IN {running}
    RETURNING id
), {notify_ended}
SELECT ended.id, (SELECT count(*) FROM notified) AS notified FROM ended;

-- name: max_abort_seq
SELECT COALESCE(MAX(seq), 0) FROM {schema}.abort_log;

-- name: aborts_since
-- The watcher's poll: abort requests logged after $1, with the reason on each record now.
SELECT l.seq, l.task_id, t.abort_code, t.abort_message, t.abort_by, t.abort_at, t.attempts
FROM {schema}.abort_log AS l JOIN {schema}.tasks AS t ON t.id = l.task_id
WHERE l.seq > $1 ORDER BY l.seq;

-- name: aborts_of
-- $1: a JSON array of task ids (the ones watched here): their abort requests, if any.
SELECT id, abort_code, abort_message, abort_by, abort_at, attempts FROM {schema}.tasks
WHERE id IN (SELECT json_array_elements_text($1::json)) AND abort_code IS NOT NULL;

-- name: max_updated
SELECT COALESCE(MAX(updated_at), '-infinity'::timestamptz) FROM {schema}.tasks;

-- name: changed_since
-- Which records changed since $1 (inclusive: a change within the same instant is not
-- missed).
SELECT id, updated_at, state, progress, message, abort_code FROM {schema}.tasks
WHERE updated_at >= $1 ORDER BY updated_at;
