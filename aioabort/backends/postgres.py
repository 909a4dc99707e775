"""The PostgreSQL store (asyncpg): aborts across machines, pushed by LISTEN/NOTIFY, polled for
truth.

* Statements run on an asyncpg pool. The abort write, its abort-log row and its ``pg_notify``
  commit in one transaction; the payload is the task id, the reason lives in the row.
* The watcher listens on a **dedicated** connection (a pooled one is UNLISTENed when it goes
  back to the pool). On every (re)connect it LISTENs first, then re-reads every watched id, so
  an abort sent while it was disconnected is still delivered.
* A poll of the abort log every ``poll_interval`` seconds is the safety net and the health
  check (bounded by a timeout). Sequence numbers are not commit-ordered in PostgreSQL: a poll
  keeps its cursor below any gap in the numbers it has seen until the gap fills or is older
  than ``gap_timeout``, so an abort whose transaction commits late is not skipped.
* No NOTIFY on heartbeats or progress (NOTIFY takes a global lock at commit).
* Tables live in their own schema, ``aioabort`` by default; choose another with
  ``postgresql://.../db?aioabort_schema=name``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .._backend import (
    AbortNotice,
    AbortOutcome,
    Change,
    ChangeCallback,
    Finish,
    GroupCommit,
    NewTask,
    OwnerInfo,
    StartResult,
    Store,
    StoreStatistics,
    WatchedIds,
)
from .._errors import (
    AioabortError,
    AppClosed,
    InvalidURL,
    StoreError,
    StoreUnavailable,
    TaskAlreadyExists,
)
from .._state import StartDecision, TaskRecord, TaskState, decide_start, parent_reason
from .._types import AbortReason, TaskError
from . import _sql, mangled_userinfo, redact

logger = logging.getLogger("aioabort.postgres")

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCHEMA_PARAM = "aioabort_schema"

#: SQLSTATEs that mean the server ended the session: admin/crash shutdown, cannot connect now.
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


def connection_unusable(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (or the server) cannot be used any more, so the
    statement is worth retrying on a fresh one: decided by what the error means, not by a list
    of the driver's classes that a new release could outgrow.

    * the socket failed (``OSError``), or the driver says the connection is closed, busy or in
      a state it cannot leave (``InterfaceError``, ``InternalClientError``: "another operation
      is in progress" after the server's goodbye was read mid-statement);
    * the server answered with a connection exception (SQLSTATE class 08) or that it is
      shutting down or starting (57P01-57P03).

    A statement the server refused for what it says (a constraint, a syntax error) is not.
    """
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return sqlstate.startswith("08") or sqlstate in _SERVER_GONE
    return False


def _ts(value: datetime | None) -> datetime | None:
    return value


def record_from_row(row: Sequence[Any]) -> TaskRecord:
    return _sql.record_from_row(tuple(row), _ts)


def parse_url(url: str) -> tuple[str, str]:
    """Split ``url`` into the DSN asyncpg gets and the schema name aioabort uses.

    :raises InvalidURL: for a URL asyncpg would refuse or misread; the message never shows a
        password.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidURL(f"cannot parse the PostgreSQL URL {redact(url)!r}: {exc}") from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidURL(f"not a PostgreSQL URL: {redact(url)!r}")
    if mangled_userinfo(url):
        raise InvalidURL(
            "the PostgreSQL URL's user or password contains an unencoded '/', '?' or '#': "
            "percent-encode them (%2F, %3F, %23), e.g. with urllib.parse.quote(password, safe='')"
        )
    if "," not in parts.netloc:  # one host: its port must be a number (asyncpg: ValueError)
        try:
            parts.port  # noqa: B018 - urllib validates the port when it is read
        except ValueError:
            raise InvalidURL(
                f"the port in the PostgreSQL URL {redact(url)!r} is not a number from 0 to 65535"
            ) from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = "aioabort"
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key == _SCHEMA_PARAM:
            schema = value
        else:
            kept.append((key, value))
    if not _SCHEMA_RE.fullmatch(schema):
        raise InvalidURL(
            f"{_SCHEMA_PARAM} must be a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 63 "
            f"characters), got {schema!r}"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(kept)))
    return dsn, schema


def _schema_sql(s: str) -> list[str]:
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {s}.tasks (
            id text PRIMARY KEY,
            name text,
            queue text,
            parent_id text,
            state text NOT NULL CHECK (state IN {_sql.in_list(list(TaskState))}),
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
        )""",
        f"CREATE INDEX IF NOT EXISTS tasks_pending ON {s}.tasks (queue, created_at) WHERE state = 'PENDING'",
        f"CREATE INDEX IF NOT EXISTS tasks_state ON {s}.tasks (state, created_at)",
        f"CREATE INDEX IF NOT EXISTS tasks_running_owner ON {s}.tasks (owner) WHERE state IN {_sql.RUNNING}",
        f"CREATE INDEX IF NOT EXISTS tasks_parent ON {s}.tasks (parent_id) WHERE parent_id IS NOT NULL",
        f"""CREATE TABLE IF NOT EXISTS {s}.abort_log (
            seq bigserial PRIMARY KEY,
            task_id text NOT NULL,
            at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""",
        f"""CREATE TABLE IF NOT EXISTS {s}.owners (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            last_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
            beats bigint NOT NULL DEFAULT 0
        )""",
    ]


def _set_keepalive(conn: asyncpg.Connection) -> None:
    """TCP keepalives on the listener's socket, so a half-open connection is noticed by the
    kernel too (the bounded poll notices it first)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to do.

    asyncpg's default reset (``UNLISTEN *; RESET ALL; CLOSE ALL; pg_advisory_unlock_all()``)
    costs a round trip per statement. aioabort's pooled connections never LISTEN, SET, open
    cursors or take session-level advisory locks, and asyncpg still rolls back a transaction
    left open, so there is no session state to reset.
    """


class _Listener:
    """The watcher side: a dedicated connection with LISTEN, a bounded poll, reconnects."""

    def __init__(self, store: PostgresStore, on_change: ChangeCallback, watched: WatchedIds):
        self.store = store
        self.on_change = on_change
        self.watched = watched
        self.conn: asyncpg.Connection | None = None
        self.low_water = 0  # every seq <= low_water has been seen (or given up on)
        self.seen: set[int] = set()  # seqs above low_water already delivered
        self.gaps_since: dict[int, float] = {}  # missing seq -> when we first noticed it
        self.task: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        self.wake = asyncio.Event()
        self.polls = 0
        self.statements = 0
        self.notifications = 0
        self.reconnects = 0
        self.connected = asyncio.Event()
        #: One statement at a time on the listener's connection (the poll, notified reads).
        self.reading = asyncio.Lock()
        self.to_read: set[str] = set()
        self.reader: asyncio.Future[None] | None = None

    async def start(self) -> None:
        await self._connect()
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name="aioabort-postgres-listener"
        )

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_conn()

    async def _close_conn(self) -> None:
        conn, self.conn = self.conn, None
        self.connected.clear()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing: force it
                conn.terminate()

    async def _connect(self) -> None:
        store = self.store
        conn: asyncpg.Connection = await asyncpg.connect(
            store.dsn, timeout=store.connect_timeout, command_timeout=store.command_timeout
        )
        try:
            _set_keepalive(conn)
            self.lost.clear()
            conn.add_termination_listener(self._on_terminated)
            # LISTEN first, then re-read: nothing committed after this point can be missed.
            await conn.add_listener(store.abort_channel, self._on_notify)
            await conn.add_listener(store.end_channel, self._on_notify)
            await conn.add_listener(store.queue_channel, self._on_notify)
            self.statements += 3
            if self.low_water == 0 and not self.seen:
                self.low_water = await conn.fetchval(
                    f"SELECT COALESCE(MAX(seq), 0) FROM {store.schema}.abort_log"
                )
                self.statements += 1
            ids = list(self.watched())
            if ids:
                rows = await conn.fetch(
                    f"SELECT id, abort_code, abort_message, abort_by, abort_at, attempts "
                    f"FROM {store.schema}.tasks WHERE id = ANY($1::text[]) "
                    "AND abort_code IS NOT NULL",
                    ids,
                )
                self.statements += 1
                self._deliver(rows)
        except BaseException:
            conn.terminate()
            raise
        self.conn = conn
        self.connected.set()

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self.conn:
            self.lost.set()
            self.wake.set()

    def _on_notify(self, conn: asyncpg.Connection, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        if channel == self.store.abort_channel and payload in self.watched():
            # Only aborts for scopes open here cost a read; the reason lives in the row.
            # Ids notified while a read is under way wait for the next one: one reader.
            self.to_read.add(payload)
            if self.reader is None or self.reader.done():
                self.reader = self.store.spawn(self._read_notified())
        else:
            self.on_change(Change())

    async def _read_notified(self) -> None:
        while self.to_read:
            ids, self.to_read = list(self.to_read), set()
            async with self.reading:
                conn = self.conn
                if conn is None:
                    self.wake.set()  # reconnecting: the re-read after it finds them
                    return
                try:
                    rows = await conn.fetch(
                        f"SELECT id, abort_code, abort_message, abort_by, abort_at, attempts "
                        f"FROM {self.store.schema}.tasks WHERE id = ANY($1::text[]) "
                        "AND abort_code IS NOT NULL",
                        ids,
                    )
                    self.statements += 1
                except Exception:  # noqa: BLE001 - a hint lost: the poll re-reads the truth
                    self.wake.set()  # the poll (or the reconnect's re-read) will catch it
                    return
            self._deliver(rows)

    def _deliver(self, rows: Sequence[Any]) -> None:
        notices = []
        for row in rows:
            reason = _sql.reason_from(row[1], row[2], row[3], row[4])
            if reason is not None:
                notices.append(AbortNotice(row[0], reason, row[5]))
        self.on_change(Change(tuple(notices)))

    async def poll(self) -> None:
        """Read the abort log past ``low_water``; one statement however many scopes are open."""
        async with self.reading:
            conn = self.conn
            assert conn is not None
            rows = await self._poll_rows(conn)
        self.polls += 1
        self.statements += 1
        fresh = [row for row in rows if row[0] not in self.seen]
        for row in rows:
            self.seen.add(row[0])
        self._advance()
        if fresh:
            self._deliver([row[1:] for row in fresh])

    async def _poll_rows(self, conn: asyncpg.Connection) -> list[Any]:
        rows: list[Any] = await conn.fetch(
            f"SELECT l.seq, t.id, t.abort_code, t.abort_message, t.abort_by, t.abort_at, "
            "t.attempts "
            f"FROM {self.store.schema}.abort_log AS l "
            f"JOIN {self.store.schema}.tasks AS t ON t.id = l.task_id "
            "WHERE l.seq > $1 ORDER BY l.seq",
            self.low_water,
            timeout=self.store.command_timeout,
        )
        return rows

    def _advance(self) -> None:
        now = time.monotonic()
        top = max(self.seen, default=self.low_water)
        for seq in range(self.low_water + 1, top):
            if seq not in self.seen:
                self.gaps_since.setdefault(seq, now)
        while True:
            nxt = self.low_water + 1
            if nxt in self.seen:
                self.seen.discard(nxt)
                self.gaps_since.pop(nxt, None)
                self.low_water = nxt
            elif nxt in self.gaps_since and now - self.gaps_since[nxt] > self.store.gap_timeout:
                del self.gaps_since[nxt]  # a rolled-back (or very late) transaction: give up
                self.low_water = nxt
            else:
                break

    async def _run(self) -> None:
        store = self.store
        backoff = 0.1
        while True:
            try:
                if self.conn is None or self.conn.is_closed() or self.lost.is_set():
                    await self._close_conn()
                    await self._connect()
                    self.reconnects += 1
                    backoff = 0.1
                    logger.info("listener reconnected", extra={"action": "listener_reconnected"})
                await self.poll()
            except Exception as exc:
                # A supervisor: whatever the driver (or a bug) raised, the listener reconnects
                # and re-reads; it never dies while the App is open.
                logger.warning(
                    "listener connection failed; reconnecting",
                    exc_info=not connection_unusable(exc),  # a traceback only for surprises
                    extra={
                        "action": "listener_failed",
                        "error": f"{type(exc).__name__}: {exc}",
                        "url": store.display_url,
                    },
                )
                await self._close_conn()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), store.poll_interval)


class PostgresStore(Store):
    """The PostgreSQL store. Made by :class:`aioabort.App` from a ``postgresql://`` URL."""

    #: Seconds between polls of the abort log (the safety net, and the health check).
    poll_interval = 1.0
    #: Seconds a gap in abort-log sequence numbers is waited for before it is given up.
    gap_timeout = 30.0
    #: Seconds allowed for connecting.
    connect_timeout = 10.0
    #: Seconds allowed for one statement.
    command_timeout = 10.0
    #: Pool size.
    pool_max_size = 10
    #: How long a write that is safe to repeat keeps retrying after losing its connection.
    reconnect_budget = 30.0

    def __init__(self, url: str, *, poll_interval: float | None = None) -> None:
        if poll_interval is not None:
            self.poll_interval = poll_interval
        self.display_url = redact(url)
        self.dsn, self.schema = parse_url(url)
        self.abort_channel = f"{self.schema}.aborts"
        self.end_channel = f"{self.schema}.ends"
        self.queue_channel = f"{self.schema}.queued"
        self._pool: asyncpg.Pool | None = None
        self._listener: _Listener | None = None
        self._statements = 0
        self._on_change: ChangeCallback | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._finishes = GroupCommit(self._finish_batch)
        self._creates = GroupCommit(self._create_batch)

    @classmethod
    def from_url(cls, url: str, *, poll_interval: float | None = None) -> PostgresStore:
        return cls(url, poll_interval=poll_interval)

    @classmethod
    def check_url(cls, url: str) -> None:
        parse_url(url)

    def spawn(self, coro: Awaitable[T]) -> asyncio.Future[T]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- connection --------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                reset=_keep_session,
            )
        except Exception as exc:  # whatever the driver raised: one clear error, from it
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL store {self.display_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            await self._ensure_schema()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    async def _ensure_schema(self) -> None:
        async def body(conn: asyncpg.Connection) -> None:
            # One process creates the schema; others wait here, then find it.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"aioabort:{self.schema}"
            )
            exists = await conn.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{self.schema}.meta"
            )
            if exists:
                version = await conn.fetchval(
                    f"SELECT value FROM {self.schema}.meta WHERE key = 'schema_version'"
                )
                version = int(version or 0)
                if version > SCHEMA_VERSION:
                    raise StoreUnavailable(
                        f"the PostgreSQL store {self.display_url} (schema {self.schema}) has "
                        f"schema version {version}, newer than this aioabort supports "
                        f"({SCHEMA_VERSION}): upgrade aioabort"
                    )
                if version == SCHEMA_VERSION:
                    return
            for statement in _schema_sql(self.schema):
                await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {self.schema}.meta (key, value) VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(SCHEMA_VERSION),
            )

        await self._transaction(body, notify=False)

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing: force it
                pool.terminate()

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise AppClosed("the PostgreSQL store is not open")
        return self._pool

    def _wrap(self, exc: BaseException) -> StoreError:
        if isinstance(exc, asyncio.TimeoutError) or connection_unusable(exc):
            return StoreUnavailable(
                f"the PostgreSQL store {self.display_url} is unreachable: "
                f"{type(exc).__name__}: {exc}"
            )
        return StoreError(f"PostgreSQL error: {type(exc).__name__}: {exc}")

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, retry: bool) -> T:
        """Run ``attempt``; if the connection or the server went away (a restart, a failover),
        try again on a fresh connection with backoff for up to :attr:`reconnect_budget`
        seconds. Used for writes that are safe to repeat (compare-and-set), so a task still
        records how it ended across a restart; reads, creates and claims fail at once with
        :class:`StoreUnavailable` instead."""
        self._require()
        deadline = time.monotonic() + (self.reconnect_budget if retry else 0)
        delay = 0.05
        while True:
            try:
                return await attempt()
            except AioabortError:
                raise
            except Exception as exc:
                # Every error that leaves the store is an AioabortError raised from the
                # driver's; only a connection that cannot be used any more is retried.
                if not connection_unusable(exc):
                    raise self._wrap(exc) from exc
                if time.monotonic() + delay > deadline or self._pool is None:
                    raise self._wrap(exc) from exc
                logger.warning(
                    "PostgreSQL connection lost; retrying",
                    extra={"action": "store_retry", "error": f"{type(exc).__name__}: {exc}"},
                )
                await self._pool.expire_connections()  # the others are as dead: replace them all
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _transaction(
        self,
        body: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        notify: bool = True,
        retry: bool = True,
    ) -> T:
        pool = self._require()

        async def attempt() -> T:
            async with pool.acquire() as conn, conn.transaction():
                return await body(conn)

        result = await self._retrying(attempt, retry=retry)
        if notify:
            self._changed()
        return result

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(Change())

    async def _fetchrow(self, sql: str, *args: Any, retry: bool = True) -> Any:
        """One statement in its own (implicit) transaction: one round trip, one commit."""
        pool = self._require()
        self._statements += 1
        return await self._retrying(lambda: pool.fetchrow(sql, *args), retry=retry)

    async def _fetch(self, sql: str, *args: Any, retry: bool = True) -> list[Any]:
        pool = self._require()
        self._statements += 1
        return list(await self._retrying(lambda: pool.fetch(sql, *args), retry=retry))

    # -- records -----------------------------------------------------------------------------

    async def create(
        self,
        task_id: str,
        *,
        name: str | None,
        queue: str | None = None,
        args_json: str | None = None,
        parent_id: str | None = None,
        retryable: bool = False,
    ) -> TaskRecord:
        if parent_id is None:
            return await self._creates(NewTask(task_id, name, queue, args_json, retryable))

        async def body(conn: asyncpg.Connection) -> TaskRecord:
            parent = await self._aborted_parent(conn, parent_id)
            self._statements += 1
            row = await conn.fetchrow(
                f"INSERT INTO {self.schema}.tasks (id, name, queue, parent_id, state, args, "
                "retryable) VALUES ($1, $2, $3, $4, 'PENDING', $5, $6) "
                f"ON CONFLICT (id) DO NOTHING RETURNING {_sql.COLUMNS}",
                task_id,
                name,
                queue,
                parent_id,
                args_json,
                retryable,
            )
            if row is None:
                raise TaskAlreadyExists(task_id)
            if parent is not None:  # born into an aborted family: never runs
                aborted = await self._abort_one(conn, task_id, parent)
                return aborted or record_from_row(row)
            if queue is not None:
                self._statements += 1
                await conn.execute("SELECT pg_notify($1, $2)", self.queue_channel, queue)
            return record_from_row(row)

        return await self._transaction(body, retry=False)

    async def _create_batch(self, items: list[NewTask]) -> list[TaskRecord | BaseException]:
        # One statement: the rows, and one NOTIFY per queue that got work, commit together.
        rows = await self._fetch(
            f"WITH ins AS (INSERT INTO {self.schema}.tasks (id, name, queue, state, args, "
            "retryable, created_at, updated_at) SELECT v.id, v.name, v.queue, 'PENDING', v.args, "
            "v.retryable, clock_timestamp(), clock_timestamp() FROM unnest($1::text[], "
            "$2::text[], $3::text[], $4::text[], $5::boolean[]) WITH ORDINALITY "
            "AS v(id, name, queue, args, retryable, n) ORDER BY v.n "
            f"ON CONFLICT (id) DO NOTHING RETURNING {_sql.COLUMNS}), "
            "notified AS (SELECT pg_notify($6, q.queue) FROM "
            "(SELECT DISTINCT queue FROM ins WHERE queue IS NOT NULL) AS q) "
            "SELECT ins.*, (SELECT count(*) FROM notified) AS notified FROM ins",
            [i.task_id for i in items],
            [i.name for i in items],
            [i.queue for i in items],
            [i.args_json for i in items],
            [i.retryable for i in items],
            self.queue_channel,
            retry=False,  # a lost reply could hide a commit: the caller gets a clear error
        )
        if rows:
            self._changed()
        made = {row[0]: record_from_row(tuple(row)[:-1]) for row in rows}
        results: list[TaskRecord | BaseException] = []
        for item in items:
            record = made.pop(item.task_id, None)
            results.append(record if record is not None else TaskAlreadyExists(item.task_id))
        return results

    async def _aborted_parent(
        self, conn: asyncpg.Connection, parent_id: str | None
    ) -> AbortReason | None:
        if parent_id is None:
            return None
        self._statements += 1
        row = await conn.fetchrow(
            f"SELECT abort_code, abort_message, abort_by, abort_at FROM {self.schema}.tasks "
            f"WHERE id = $1 AND state IN {_sql.PARENT_ABORTED}",
            parent_id,
        )
        if row is None:
            return None
        reason = _sql.reason_from(row[0], row[1], row[2], row[3])
        return None if reason is None else parent_reason(parent_id, reason)

    async def _abort_one(
        self, conn: asyncpg.Connection, task_id: str, reason: AbortReason
    ) -> TaskRecord | None:
        self._statements += 1
        row = await conn.fetchrow(
            f"WITH upd AS (UPDATE {self.schema}.tasks SET state = {_sql.abort_case()}, "
            "abort_code = $2, abort_message = $3, abort_by = $4, abort_at = $5, "
            "updated_at = clock_timestamp(), finished_at = CASE WHEN state = 'PENDING' "
            "THEN clock_timestamp() ELSE finished_at END "
            f"WHERE id = $1 AND state IN {_sql.ABORTABLE} RETURNING {_sql.COLUMNS}), "
            f"logged AS (INSERT INTO {self.schema}.abort_log (task_id) "
            "SELECT id FROM upd RETURNING task_id), "
            "notified AS (SELECT pg_notify($6, task_id) FROM logged) "
            "SELECT upd.*, (SELECT count(*) FROM notified) AS notified FROM upd",
            task_id,
            reason.code,
            reason.message,
            reason.by,
            reason.at,
            self.abort_channel,
        )
        return None if row is None else record_from_row(tuple(row)[:-1])

    async def start(
        self, task_id: str, *, owner: str, name: str | None, parent_id: str | None = None
    ) -> StartResult:
        calls: list[None] = []  # more than one: a retry after a lost connection

        async def body(conn: asyncpg.Connection) -> StartResult:
            self._statements += 1
            row = await conn.fetchrow(
                f"SELECT {_sql.COLUMNS} FROM {self.schema}.tasks WHERE id = $1 FOR UPDATE",
                task_id,
            )
            current = record_from_row(row) if row is not None else None
            decision = decide_start(
                None if current is None else current.state,
                ever_started=current is not None and current.started_at is not None,
            )
            calls.append(None)
            if (
                len(calls) > 1
                and decision is StartDecision.ALREADY_STARTED
                and current is not None
                and current.owner == owner
            ):
                # A retry: started by this very call on a connection that died before
                # replying.
                return StartResult(StartDecision.START, current)
            if decision is StartDecision.CREATE:
                parent = await self._aborted_parent(conn, parent_id)
                self._statements += 1
                row = await conn.fetchrow(
                    f"INSERT INTO {self.schema}.tasks (id, name, parent_id, state, owner, "
                    "started_at, attempts) VALUES ($1, $2, $3, 'STARTED', $4, clock_timestamp(), "
                    f"1) ON CONFLICT (id) DO NOTHING RETURNING {_sql.COLUMNS}",
                    task_id,
                    name,
                    parent_id,
                    owner,
                )
                if row is None:  # created by someone else since our read: look again
                    self._statements += 1
                    row = await conn.fetchrow(
                        f"SELECT {_sql.COLUMNS} FROM {self.schema}.tasks WHERE id = $1",
                        task_id,
                    )
                    assert row is not None
                    other = record_from_row(row)
                    return StartResult(
                        decide_start(other.state, ever_started=other.started_at is not None),
                        other,
                    )
                record = record_from_row(row)
                if parent is not None:  # started under an aborting parent: aborting already
                    record = await self._abort_one(conn, task_id, parent) or record
                return StartResult(decision, record)
            assert current is not None
            if decision is StartDecision.START:
                self._statements += 1
                row = await conn.fetchrow(
                    f"UPDATE {self.schema}.tasks SET state = 'STARTED', owner = $2, "
                    "started_at = clock_timestamp(), updated_at = clock_timestamp(), "
                    "name = COALESCE(name, $3), attempts = attempts + 1 "
                    f"WHERE id = $1 AND state = 'PENDING' RETURNING {_sql.COLUMNS}",
                    task_id,
                    owner,
                    name,
                )
                assert row is not None  # the row is locked FOR UPDATE
                return StartResult(decision, record_from_row(row))
            return StartResult(decision, current)

        return await self._transaction(body)

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        child = parent_reason(task_id, reason)
        # One statement, so one round trip and one commit: the abort, the aborts of every
        # unfinished descendant, their log rows and their notifications commit together.
        row = await self._fetchrow(
            "WITH RECURSIVE family(id) AS ("
            f"SELECT id FROM {self.schema}.tasks WHERE parent_id = $1 "
            f"UNION SELECT t.id FROM {self.schema}.tasks AS t JOIN family AS f "
            "ON t.parent_id = f.id), "
            f"root AS (UPDATE {self.schema}.tasks SET state = {_sql.abort_case()}, "
            "abort_code = $2, abort_message = $3, abort_by = $4, abort_at = $5, "
            "updated_at = clock_timestamp(), finished_at = CASE WHEN state = 'PENDING' "
            "THEN clock_timestamp() ELSE finished_at END "
            f"WHERE id = $1 AND state IN {_sql.ABORTABLE} RETURNING {_sql.COLUMNS}), "
            f"kids AS (UPDATE {self.schema}.tasks SET state = {_sql.abort_case()}, "
            "abort_code = $7, abort_message = $8, abort_by = $4, abort_at = $5, "
            "updated_at = clock_timestamp(), finished_at = CASE WHEN state = 'PENDING' "
            "THEN clock_timestamp() ELSE finished_at END "
            f"WHERE id IN (SELECT id FROM family) AND state IN {_sql.ABORTABLE} "
            "AND EXISTS (SELECT 1 FROM root) RETURNING id), "
            f"logged AS (INSERT INTO {self.schema}.abort_log (task_id) "
            "SELECT id FROM root UNION ALL SELECT id FROM kids RETURNING task_id), "
            "notified AS (SELECT pg_notify($6, task_id) FROM logged) "
            "SELECT root.*, (SELECT count(*) FROM notified) AS notified, "
            "(SELECT array_agg(id) FROM kids) AS kids FROM root",
            task_id,
            reason.code,
            reason.message,
            reason.by,
            reason.at,
            self.abort_channel,
            child.code,
            child.message,
        )
        if row is None:
            current = await self.get(task_id)
            if current is not None and current.reason == reason:
                # Our own request, committed on a connection that died before replying.
                return AbortOutcome(True, current)
            return AbortOutcome(False, current)
        self._changed()
        values = tuple(row)
        children = tuple(AbortNotice(kid, child) for kid in (values[-1] or ()))
        return AbortOutcome(True, record_from_row(values[:-2]), children)

    async def finish(
        self,
        task_id: str,
        *,
        owner: str,
        state: TaskState,
        result_json: str | None = None,
        error: TaskError | None = None,
    ) -> TaskRecord | None:
        error_json = None if error is None else error.to_json()
        return await self._finishes(Finish(task_id, owner, state, result_json, error_json))

    async def _finish_batch(self, items: list[Finish]) -> list[TaskRecord | BaseException | None]:
        # One statement for the batch: one round trip, one commit, one NOTIFY per task ended.
        rows = await self._fetch(
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
            "$5::text[]) AS v(id, owner, state, result, error)), "
            f"done AS (UPDATE {self.schema}.tasks AS t SET state = v.state, result = v.result, "
            "error = v.error, finished_at = clock_timestamp(), updated_at = clock_timestamp() "
            f"FROM v WHERE t.id = v.id AND t.owner = v.owner AND t.state IN {_sql.RUNNING} "
            f"RETURNING {_sql.columns('t')}) "
            "SELECT done.*, pg_notify($6, done.id)::text AS notified FROM done",
            [i.task_id for i in items],
            [i.owner for i in items],
            [i.state.value for i in items],
            [i.result_json for i in items],
            [i.error_json for i in items],
            self.end_channel,
        )
        if rows:
            self._changed()
        done = {row[0]: record_from_row(tuple(row)[:-1]) for row in rows}
        results: list[TaskRecord | BaseException | None] = []
        for item in items:
            record = done.get(item.task_id)
            results.append(record if record is not None else await self.get(item.task_id))
        return results

    async def claim(self, *, owner: str, queues: Collection[str], limit: int) -> list[TaskRecord]:
        rows = await self._fetch(
            f"UPDATE {self.schema}.tasks SET state = 'STARTED', owner = $1, "
            "started_at = clock_timestamp(), updated_at = clock_timestamp(), "
            "attempts = attempts + 1 WHERE id IN (SELECT id FROM "
            f"{self.schema}.tasks WHERE state = 'PENDING' AND queue = ANY($2::text[]) "
            "ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_sql.COLUMNS}",
            owner,
            list(queues),
            limit,
            retry=False,  # a lost reply could hide a claim: the worker claims again later
        )
        if rows:
            self._changed()
        return sorted((record_from_row(row) for row in rows), key=lambda r: r.created_at)

    async def has_pending(self, queues: Collection[str]) -> bool:
        rows = await self._fetch(
            f"SELECT EXISTS (SELECT 1 FROM {self.schema}.tasks WHERE state = 'PENDING' "
            "AND queue = ANY($1::text[]))",
            list(queues),
            retry=False,
        )
        return bool(rows[0][0])

    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        row = await self._fetchrow(
            f"WITH back AS (UPDATE {self.schema}.tasks SET state = 'PENDING', owner = NULL, "
            "started_at = NULL, abort_code = NULL, abort_message = NULL, abort_by = NULL, "
            "abort_at = NULL, progress = NULL, message = NULL, updated_at = clock_timestamp() "
            f"WHERE id = $1 AND owner = $2 AND state IN {_sql.RUNNING} "
            f"RETURNING {_sql.COLUMNS}) "
            "SELECT back.*, pg_notify($3, back.queue)::text AS notified FROM back",
            task_id,
            owner,
            self.queue_channel,
        )
        if row is None:
            return await self.get(task_id)
        self._changed()
        return record_from_row(tuple(row)[:-1])

    async def get(self, task_id: str) -> TaskRecord | None:
        rows = await self._fetch(
            f"SELECT {_sql.COLUMNS} FROM {self.schema}.tasks WHERE id = $1", task_id, retry=False
        )
        return record_from_row(rows[0]) if rows else None

    async def list_tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        where: list[str] = []
        args: list[Any] = []
        if states:
            args.append([TaskState(s).value for s in states])
            where.append(f"state = ANY(${len(args)}::text[])")
        if name is not None:
            args.append(name)
            where.append(f"name = ${len(args)}")
        sql = f"SELECT {_sql.COLUMNS} FROM {self.schema}.tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args += [limit, offset]
        sql += f" ORDER BY created_at DESC, id LIMIT ${len(args) - 1} OFFSET ${len(args)}"
        return [record_from_row(row) for row in await self._fetch(sql, *args, retry=False)]

    async def count_tasks(self) -> dict[TaskState, int]:
        rows = await self._fetch(
            f"SELECT state, COUNT(*) FROM {self.schema}.tasks GROUP BY state", retry=False
        )
        return {TaskState(state): int(n) for state, n in rows}

    async def report(
        self, task_id: str, *, owner: str, progress: float | None, message: str | None
    ) -> bool:
        row = await self._fetchrow(
            f"UPDATE {self.schema}.tasks SET progress = COALESCE($3, progress), "
            "message = COALESCE($4, message), updated_at = clock_timestamp() "
            f"WHERE id = $1 AND owner = $2 AND state IN {_sql.RUNNING} RETURNING id",
            task_id,
            owner,
            progress,
            message,
        )
        return row is not None

    # -- liveness ----------------------------------------------------------------------------

    async def heartbeat(self, owner: OwnerInfo) -> None:
        await self._fetchrow(
            f"INSERT INTO {self.schema}.owners (id, host, pid, beats) VALUES ($1, $2, $3, 1) "
            "ON CONFLICT (id) DO UPDATE SET last_seen = clock_timestamp(), "
            f"beats = {self.schema}.owners.beats + 1 RETURNING id",
            owner.id,
            owner.host,
            owner.pid,
        )

    async def owner_beats(self) -> dict[str, int]:
        rows = await self._fetch(f"SELECT id, beats FROM {self.schema}.owners", retry=False)
        return {owner: int(beats) for owner, beats in rows}

    async def reap(self, dead: Collection[str]) -> list[str]:
        lost = (
            f"state IN {_sql.RUNNING} AND (owner IS NULL OR owner = ANY($1::text[]) "
            f"OR NOT EXISTS (SELECT 1 FROM {self.schema}.owners o WHERE o.id = owner))"
        )
        dead = list(dead)

        async def body(conn: asyncpg.Connection) -> list[str]:
            self._statements += 4
            requeued = await conn.fetch(
                f"UPDATE {self.schema}.tasks SET state = 'PENDING', owner = NULL, "
                "started_at = NULL, abort_code = NULL, abort_message = NULL, abort_by = NULL, "
                "abort_at = NULL, progress = NULL, message = NULL, "
                f"updated_at = clock_timestamp() WHERE {lost} AND retryable "
                "AND COALESCE(abort_code, 'shutdown') = 'shutdown' RETURNING id, queue",
                dead,
            )
            for row in requeued:
                await conn.execute("SELECT pg_notify($1, $2)", self.queue_channel, row[1])
            rows = await conn.fetch(
                f"UPDATE {self.schema}.tasks SET state = 'FAILURE', "
                "finished_at = clock_timestamp(), updated_at = clock_timestamp(), "
                "error = json_build_object('cause', 'lost', 'type', '', 'message', "
                "'owner ' || COALESCE(owner, '?') || ' stopped heartbeating')::text "
                f"WHERE {lost} RETURNING id",
                dead,
            )
            if dead:
                await conn.execute(
                    f"DELETE FROM {self.schema}.owners WHERE id = ANY($1::text[])", dead
                )
            await conn.execute(
                f"DELETE FROM {self.schema}.abort_log WHERE seq <= "
                f"(SELECT MAX(seq) FROM {self.schema}.abort_log) - 100000"
            )
            for row in rows:
                await conn.execute("SELECT pg_notify($1, $2)", self.end_channel, row[0])
            return [row[0] for row in requeued] + [row[0] for row in rows]

        return await self._transaction(body, notify=False)

    async def release_owner(self, owner: str) -> list[str]:
        async def body(conn: asyncpg.Connection) -> list[str]:
            self._statements += 2
            rows = await conn.fetch(
                f"UPDATE {self.schema}.tasks SET state = 'FAILURE', "
                "finished_at = clock_timestamp(), updated_at = clock_timestamp(), "
                "error = json_build_object('cause', 'lost', 'type', '', 'message', "
                "'owner ' || owner || ' closed while the task was running')::text "
                f"WHERE owner = $1 AND state IN {_sql.RUNNING} RETURNING id",
                owner,
            )
            await conn.execute(f"DELETE FROM {self.schema}.owners WHERE id = $1", owner)
            return [row[0] for row in rows]

        return await self._transaction(body)

    # -- watching ----------------------------------------------------------------------------

    async def start_watching(self, on_change: ChangeCallback, watched: WatchedIds) -> None:
        self._on_change = on_change
        listener = _Listener(self, on_change, watched)
        try:
            await listener.start()
        except Exception as exc:
            raise StoreUnavailable(
                f"cannot open the listener connection to {self.display_url}: {exc}"
            ) from exc
        self._listener = listener

    def statistics(self) -> StoreStatistics:
        listener = self._listener
        if listener is None:
            return StoreStatistics(statements=self._statements)
        return StoreStatistics(
            statements=self._statements,
            watch_statements=listener.statements,
            watch_polls=listener.polls,
            notifications=listener.notifications,
            reconnects=listener.reconnects,
        )

    def listener_pid(self) -> int | None:
        """The server process id of the listener connection (for tests and diagnostics)."""
        listener = self._listener
        if listener is None or listener.conn is None:
            return None
        pid: int = listener.conn.get_server_pid()
        return pid
