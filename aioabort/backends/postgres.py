"""The PostgreSQL store (asyncpg): aborts across machines, pushed by LISTEN/NOTIFY, polled for
truth.

This module is the driver only: the pool and its retries, the listener, URL parsing. The flow
of every operation is :mod:`._sqlstore`'s and the statements are ``sql/postgres.sql``; the
one-round-trip :meth:`PostgresStore.request_abort` is the named exception.

* Statements run on an asyncpg pool. The abort write, its abort-log row and its ``pg_notify``
  commit in one transaction; the payload carries the id and the reason (trusted: the
  listener reads no row), or the id alone when the reason is too long for NOTIFY.
* The watcher listens on a **dedicated** connection (a pooled one is UNLISTENed when it goes
  back to the pool). On every (re)connect it LISTENs first, then re-reads every watched id, so
  an abort sent while it was disconnected is still delivered.
* A poll of the abort log every ``poll_interval`` seconds is the safety net and the health
  check (bounded by a timeout). Sequence numbers are not commit-ordered in PostgreSQL: a poll
  keeps its cursor below any gap in the numbers it has seen until the gap fills or is older
  than ``gap_timeout``, so an abort whose transaction commits late is not skipped.
* No NOTIFY on heartbeats or progress (NOTIFY takes a global lock at commit).
* A listener hears only what its process needs (guarantee G13): abort requests always; task
  ends only while the process has waiters; new work only on the channels of the queues its
  workers claim from (one channel per queue).
* Tables live in their own schema, ``aioabort`` by default; choose another with
  ``postgresql://.../db?aioabort_schema=name``.
* Behind a transaction-pooling PgBouncer (``?aioabort_pooler=transaction``) nothing can
  LISTEN: the listener only polls (the abort log, and the records changed since its last poll
  while the process has waiters) every ``poll_interval`` (0.5 s by default there), and no
  statement is prepared by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .._backend import (
    AbortNotice,
    AbortOutcome,
    Change,
    ChangeCallback,
    OwnerInfo,
    QuietOwner,
    StoreStatistics,
    WatchedIds,
)
from .._errors import AioabortError, AppClosed, InvalidURL, StoreError, StoreUnavailable
from .._state import parent_reason
from .._types import AbortReason
from . import _sql, mangled_userinfo, redact
from ._seqcursor import SeqCursor
from ._sqlbase import nothing_changed
from ._sqlliveness import quiet_owners
from ._sqlstore import Connection, Row, SQLStore
from .sql import load_queries, rule_values

logger = logging.getLogger("aioabort.postgres")

T = TypeVar("T")

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCHEMA_PARAM = "aioabort_schema"
_POOLER_PARAM = "aioabort_pooler"
#: In poll-only mode, changed records are read again for this long after their change time
#: (a transaction commits after the time it wrote), and told apart by id and time.
_CHANGE_LAG = timedelta(seconds=2)
#: New work on a queue is notified on the channel of this prefix and a hash of schema and queue.
_QUEUE_PREFIX = "aioabort_q_"

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


def parse_url(url: str) -> tuple[str, str]:
    """Split ``url`` into the DSN asyncpg gets and the schema name aioabort uses.

    :raises InvalidURL: for a URL asyncpg would refuse or misread; the message never shows a
        password.
    """
    dsn, schema, _ = parse_options(url)
    return dsn, schema


def parse_options(url: str) -> tuple[str, str, bool]:
    """:func:`parse_url`, and whether the URL says it goes through a transaction pooler
    (``aioabort_pooler=transaction``; ``session``, the default, needs nothing special)."""
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
    schema, pooler = "aioabort", "session"
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key == _SCHEMA_PARAM:
            schema = value
        elif key == _POOLER_PARAM:
            pooler = value
        else:
            kept.append((key, value))
    if pooler not in ("session", "transaction"):
        raise InvalidURL(
            f"{_POOLER_PARAM} must be 'session' (the default: PostgreSQL itself, or a pooler in "
            f"session mode) or 'transaction' (a transaction-pooling PgBouncer), got {pooler!r}"
        )
    if not _SCHEMA_RE.fullmatch(schema):
        raise InvalidURL(
            f"{_SCHEMA_PARAM} must be a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 63 "
            f"characters), got {schema!r}"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(kept)))
    return dsn, schema, pooler == "transaction"


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
        self.cursor = SeqCursor(gap_timeout=store.gap_timeout)
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
        #: The channels LISTENed on the connection now.
        self.listening: set[str] = set()
        #: Poll-only mode: the newest change time read, and the changes read since it - lag.
        self.since: datetime | None = None
        self.seen: dict[tuple[str, datetime], None] = {}

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
            store.dsn,
            timeout=store.connect_timeout,
            command_timeout=store.command_timeout,
            **store.connect_options,
        )
        try:
            _set_keepalive(conn)
            self.lost.clear()
            conn.add_termination_listener(self._on_terminated)
            # LISTEN first, then re-read: nothing committed after this point can be missed.
            self.listening = set()
            await self._listen(conn)
            if not self.cursor.started:
                self.cursor.low_water = await conn.fetchval(store.queries["max_abort_seq"])
                self.statements += 1
            ids = list(self.watched())
            if ids:
                rows = await conn.fetch(store.queries["aborts_of"], json.dumps(ids))
                self.statements += 1
                self._deliver(rows)
        except BaseException:
            conn.terminate()
            raise
        self.conn = conn
        self.connected.set()

    def wanted(self) -> set[str]:
        """The channels this process needs now (none when nothing can LISTEN)."""
        store = self.store
        if store.poll_only:
            return set()
        channels = {store.abort_channel, *map(store.queue_channel, store.wanted_queues)}
        if store.wants_ends:
            channels.add(store.end_channel)
        return channels

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """LISTEN to the channels wanted and not yet listened to; UNLISTEN the others. (Poll-
        only: start reading changed records from now when waiters want ends, or stop.)"""
        if self.store.poll_only:
            if not self.store.wants_ends:
                self.since = None
            elif self.since is None:
                self.since = await conn.fetchval(self.store.queries["max_updated"])
                self.seen = {}
                self.statements += 1
            return
        wanted = self.wanted()
        for channel in sorted(wanted - self.listening):
            await conn.add_listener(channel, self._on_notify)
            self.listening.add(channel)
            self.statements += 1
        for channel in sorted(self.listening - wanted):
            await conn.remove_listener(channel, self._on_notify)
            self.listening.discard(channel)
            self.statements += 1

    async def subscribe(self) -> None:
        """Make the connection's LISTENs what the store wants now. When it is down, the
        reconnect listens (and wakes every waiter); when it fails here, so does it."""
        async with self.reading:
            conn = self.conn
            if conn is None or self.lost.is_set():
                return
            try:
                await self._listen(conn)
            except Exception:  # noqa: BLE001 - the reconnect listens again and wakes everyone
                self.lost.set()
                self.wake.set()

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self.conn:
            self.lost.set()
            self.wake.set()

    def _on_notify(self, conn: asyncpg.Connection, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        if channel == self.store.end_channel:  # a JSON array of the ids of ended tasks
            self.on_change(Change(ids=frozenset(json.loads(payload))))
            return
        if channel != self.store.abort_channel:  # a queue's channel: new work, no task changed
            self.on_change(Change(ids=frozenset()))
            return
        notice, task_id = _abort_notice(payload)
        if notice is not None:  # the push carries the reason: trusted, no row is read
            self.on_change(Change((notice,), ids=frozenset((task_id,))))
            return
        self.on_change(Change(ids=frozenset((task_id,))))
        if task_id in self.watched():
            # A notice without its reason (too long for NOTIFY): read the row. Ids notified
            # while a read is under way wait for the next one: one reader.
            self.to_read.add(task_id)
            if self.reader is None or self.reader.done():
                self.reader = self.store.spawn(self._read_notified())

    async def _read_notified(self) -> None:
        while self.to_read:
            ids, self.to_read = list(self.to_read), set()
            async with self.reading:
                conn = self.conn
                if conn is None:
                    self.wake.set()  # reconnecting: the re-read after it finds them
                    return
                try:
                    rows = await conn.fetch(self.store.queries["aborts_of"], json.dumps(ids))
                    self.statements += 1
                except Exception:  # noqa: BLE001 - a hint lost: the poll re-reads the truth
                    self.wake.set()  # the poll (or the reconnect's re-read) will catch it
                    return
            self._deliver(rows)

    def _deliver(self, rows: Sequence[Row]) -> None:
        """Rows of ``aborts_of`` (id, code, message, by, at, attempts) to the watcher."""
        self.on_change(Change(tuple(self.store.notices(rows)), ids=frozenset()))

    async def poll(self) -> None:
        """Read the abort log past the cursor; one statement however many scopes are open."""
        async with self.reading:
            conn = self.conn
            assert conn is not None
            rows = await self._poll_rows(conn)
            changed = await self._changed_rows(conn) if self.since is not None else None
        self.polls += 1
        self.statements += 1
        new = self.cursor.fresh((row[0] for row in rows), time.monotonic())
        fresh = [row for row in rows if row[0] in new]
        if fresh:
            self._deliver([row[1:] for row in fresh])
        if changed:
            self.on_change(Change(ids=frozenset(changed)))

    async def _changed_rows(self, conn: asyncpg.Connection) -> list[str]:
        """Poll-only mode: the ids of records changed since the last poll (read again for
        ``_CHANGE_LAG``, so a transaction that commits after its change time is not missed;
        a change already reported is told apart by id and time)."""
        since = self.since
        assert since is not None
        rows = await conn.fetch(
            self.store.queries["changed_since"],
            since - _CHANGE_LAG,
            timeout=self.store.command_timeout,
        )
        self.statements += 1
        ids = []
        for row in rows:
            key = (row[0], row[1])
            if key not in self.seen:
                self.seen[key] = None
                ids.append(row[0])
            since = max(since, row[1])
        self.since = since
        self.seen = {key: None for key in self.seen if key[1] >= since - _CHANGE_LAG}
        return ids

    async def _poll_rows(self, conn: asyncpg.Connection) -> list[Any]:
        rows: list[Any] = await conn.fetch(
            self.store.queries["aborts_since"],
            self.cursor.low_water,
            timeout=self.store.command_timeout,
        )
        return rows

    async def _run(self) -> None:
        store = self.store
        backoff = 0.1
        while True:
            try:
                if self.conn is None or self.conn.is_closed() or self.lost.is_set():
                    await self._close_conn()
                    await self._connect()
                    await self.subscribe()  # what was asked for while it connected
                    self.reconnects += 1
                    backoff = 0.1
                    self.on_change(Change())  # notifications may have been missed: wake all
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


def _abort_notice(payload: str) -> tuple[AbortNotice | None, str]:
    """An abort notification's payload: the notice, when it carries the reason, and the id."""
    data = json.loads(payload)
    task_id = str(data["id"])
    if data.get("code") is None:
        return None, task_id
    reason = _sql.reason_from(
        data["code"], data["message"], data["by"], datetime.fromisoformat(data["at"])
    )
    assert reason is not None
    return AbortNotice(task_id, reason, data.get("attempts")), task_id


class _PgConn:
    """A flow's connection inside a transaction: one asyncpg connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        rows: list[Row] = await self._conn.fetch(sql, *args)
        return rows


#: The default poll interval when nothing can LISTEN (``aioabort_pooler=transaction``).
POLL_ONLY_INTERVAL = 0.5


class PostgresStore(SQLStore):
    """The PostgreSQL store. Made by :class:`aioabort.App` from a ``postgresql://`` URL."""

    dialect = "postgres"
    #: Seconds between polls of the abort log (the safety net behind LISTEN, and the health
    #: check of the listener's connection; aborts and ends arrive by notification at once).
    poll_interval = 5.0
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
        super().__init__()
        self.display_url = redact(url)
        self.dsn, self.schema, self.poll_only = parse_options(url)
        if poll_interval is not None:
            self.poll_interval = poll_interval
        elif self.poll_only:
            self.poll_interval = POLL_ONLY_INTERVAL
        #: asyncpg options: behind a transaction pooler, no statement is prepared by name
        #: (the next transaction may run on another server connection).
        self.connect_options: dict[str, Any] = {"statement_cache_size": 0} if self.poll_only else {}
        self.abort_channel = f"{self.schema}.aborts"
        self.end_channel = f"{self.schema}.ends"
        #: What the watcher asked to hear besides aborts (see :meth:`subscribe`).
        self.wants_ends = False
        self.wanted_queues: frozenset[str] = frozenset()
        self.queries = load_queries(
            "postgres",
            {
                **rule_values("json_build_object({})::text"),
                "schema": self.schema,
                "abort_channel": self.abort_channel,
                "end_channel": self.end_channel,
                "queue_prefix": _QUEUE_PREFIX,
                "qualified_columns": _sql.columns("t"),
            },
        )
        self._pool: asyncpg.Pool | None = None
        self._listener: _Listener | None = None
        self._background: set[asyncio.Future[Any]] = set()

    def queue_channel(self, queue: str) -> str:
        """The channel new work on ``queue`` is notified on (as ``postgres.sql`` names it):
        short enough for any queue name, apart for each schema."""
        digest = hashlib.md5(f"{self.schema}:{queue}".encode(), usedforsecurity=False)
        return _QUEUE_PREFIX + digest.hexdigest()[:20]

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
                **self.connect_options,
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
        records how it ended across a restart, and for the reads of a bulk abort (one lost
        connection must not fail the whole call); other reads, creates and claims fail at
        once with :class:`StoreUnavailable` instead."""
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

    # -- the SQL store's driver --------------------------------------------------------------

    def _timestamp(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    async def _transaction(self, body: Callable[[Connection], Awaitable[T]], *, retry: bool) -> T:
        pool = self._require()

        async def attempt() -> T:
            async with pool.acquire() as conn, conn.transaction():
                return await body(_PgConn(conn))

        return await self._retrying(attempt, retry=retry)

    async def _statement(
        self, sql: str, args: Sequence[Any], *, write: bool, retry: bool
    ) -> list[Row]:
        """One statement in its own (implicit) transaction: one round trip, one commit."""
        pool = self._require()
        return list(await self._retrying(lambda: pool.fetch(sql, *args), retry=retry))

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        """A named exception to the generic flow: the abort, every unfinished descendant's,
        their log rows and their notifications in one statement (one round trip)."""
        child = parent_reason(task_id, reason)
        rows = await self._one(  # announced below, with the children
            "request_abort",
            task_id,
            reason.code,
            reason.message,
            reason.by,
            reason.at,
            child.code,
            child.message,
            write=True,
            retry=True,
            changed=lambda _: (),  # announced below, with the children
        )
        if not rows:
            current = await self.get(task_id)
            # Our own request, committed on a connection that died before replying.
            return AbortOutcome(current is not None and current.reason == reason, current)
        row = rows[0]
        kids = json.loads(row[-1]) if row[-1] is not None else []
        self._changed([task_id, *(kid for kid, _ in kids)])
        notices = tuple(AbortNotice(kid, child, attempts) for kid, attempts in kids)
        return AbortOutcome(True, self._record(row), notices)

    async def heartbeat(
        self, owner: OwnerInfo, *, lease: float | None = None, quiet: float = 0.0
    ) -> dict[str, QuietOwner] | None:
        """A named exception to the generic flow: with ``lease``, the beat, the lease and the
        quiet owners in one statement (``beat_and_lease``): one round trip per interval."""
        if lease is None:
            return await super().heartbeat(owner)
        rows = await self._one(
            "beat_and_lease",
            owner.id,
            owner.host,
            owner.pid,
            lease,
            quiet,
            write=True,
            retry=True,
            changed=nothing_changed,
        )
        # The holder gets a row with a NULL id first, then the quiet owners; others no row.
        return quiet_owners(row for row in rows if row[0] is not None) if rows else None

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

    async def subscribe(self, *, ends: bool, queues: frozenset[str]) -> None:
        self.wants_ends, self.wanted_queues = ends, queues
        if self._listener is not None:
            await self._listener.subscribe()

    def listening(self) -> frozenset[str]:
        """The channels the listener connection LISTENs to now (for tests and diagnostics)."""
        return frozenset(self._listener.listening) if self._listener is not None else frozenset()

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
