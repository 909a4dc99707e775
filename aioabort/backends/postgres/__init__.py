"""The PostgreSQL store (asyncpg): aborts across machines, pushed by LISTEN/NOTIFY, polled for
truth.

This package is the driver only: the pool and its retries here, the listener in
:mod:`._listener`, what a URL asks for and what the driver's errors mean in :mod:`._options`.
The flow of every operation is the SQL store's and the statements are ``sql/postgres.sql``;
:meth:`PostgresStore.request_abort` (one round trip) and :meth:`PostgresStore.heartbeat` (one
statement) are the named exceptions.

* Statements run on an asyncpg pool. The abort write, its abort-log row and its ``pg_notify``
  commit in one transaction; the payload carries the id and the reason (trusted: the
  listener reads no row), or the id alone when the reason is too long for NOTIFY.
* No NOTIFY on heartbeats or progress (NOTIFY takes a global lock at commit).
* Tables live in their own schema, ``aioabort`` by default; choose another with
  ``postgresql://.../db?aioabort_schema=name``.
* Behind a transaction-pooling PgBouncer (``?aioabort_pooler=transaction``) nothing can
  LISTEN: the listener only polls (the abort log, and the records changed since its last poll
  while the process has waiters) every ``poll_interval`` (0.5 s by default there), and no
  statement is prepared by name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, LiteralString, TypeVar

import asyncpg

from ..._backend import (
    AbortNotice,
    AbortOutcome,
    ChangeCallback,
    OwnerInfo,
    QuietOwner,
    StoreStatistics,
    WatchedIds,
)
from ..._backoff import Backoff
from ..._errors import AioabortError, AppClosed
from ..._state import parent_reason
from ..._types import AbortReason
from .. import _sql
from .._sqlbase import nothing_changed
from .._sqlliveness import quiet_owners
from .._sqlstore import Connection, Row, SQLStore, abort_found
from ..sql import load_queries, rule_values
from ._listener import Listener, ListenerConfig
from ._options import (
    LISTENER_NAME,
    QUEUE_PREFIX,
    connection_unusable,
    mapped_errors,
    names_application,
    parse_options,
    parse_url,
    queue_channel,
    store_error,
)

__all__ = [
    "POLL_ONLY_INTERVAL",
    "PostgresStore",
    "connection_unusable",
    "parse_options",
    "parse_url",
]

logger = logging.getLogger("aioabort.postgres")

T = TypeVar("T")

#: The default poll interval when nothing can LISTEN (``aioabort_pooler=transaction``).
POLL_ONLY_INTERVAL = 0.5


def without_notify(queries: Mapping[str, LiteralString]) -> dict[str, LiteralString]:
    """The statements with every ``pg_notify(channel, payload)`` made a no-op of the same
    shape (``concat(channel, payload)``: a text, where the statements count or cast it)."""
    return {name: sql.replace("pg_notify(", "concat(") for name, sql in queries.items()}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to do.

    asyncpg's default reset (``UNLISTEN *; RESET ALL; CLOSE ALL; pg_advisory_unlock_all()``)
    costs a round trip per statement. aioabort's pooled connections never LISTEN, SET, open
    cursors or take session-level advisory locks, and asyncpg still rolls back a transaction
    left open, so there is no session state to reset.
    """


class _PgConn:
    """A flow's connection inside a transaction: one asyncpg connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        rows: list[Row] = await self._conn.fetch(sql, *args)
        return rows


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
        super().__init__(url, poll_interval=poll_interval)
        self.dsn, self.schema, self.poll_only = parse_options(url)
        if poll_interval is None and self.poll_only:
            self.poll_interval = POLL_ONLY_INTERVAL
        #: asyncpg options: behind a transaction pooler, no statement is prepared by name
        #: (the next transaction may run on another server connection).
        self.connect_options: dict[str, Any] = {"statement_cache_size": 0} if self.poll_only else {}
        self.abort_channel = f"{self.schema}.aborts"
        self.end_channel = f"{self.schema}.ends"
        self.queries = load_queries(
            "postgres",
            {
                **rule_values("json_build_object({})::text", "(NEW.error::json ->> 'type')"),
                "schema": self.schema,
                "abort_channel": self.abort_channel,
                "end_channel": self.end_channel,
                "queue_prefix": QUEUE_PREFIX,
                "qualified_columns": _sql.columns("t"),
            },
        )
        #: Whether writes NOTIFY (no: a notifier carries the pushes, :meth:`push_elsewhere`).
        self.notifies = True
        self._pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None
        #: What the watcher asked to hear besides aborts (see :meth:`subscribe`).
        self._wants: tuple[bool, frozenset[str]] = (False, frozenset())

    def queue_channel(self, queue: str) -> str:
        """The channel new work on ``queue`` is notified on (as ``postgres.sql`` names it)."""
        return queue_channel(self.schema, queue)

    @classmethod
    def check_url(cls, url: str) -> None:
        parse_url(url)

    # -- connection --------------------------------------------------------------------------

    async def open(self) -> None:
        with mapped_errors(self.display_url, connecting=True):
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                reset=_keep_session,
                **self.connect_options,
            )
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

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, retry: bool) -> T:
        """Run ``attempt``; if the connection or the server went away (a restart, a failover),
        try again on a fresh connection with backoff for up to :attr:`reconnect_budget`
        seconds. Used for writes that are safe to repeat (compare-and-set), so a task still
        records how it ended across a restart, and for the reads of a bulk abort (one lost
        connection must not fail the whole call); other reads, creates and claims fail at
        once with :class:`StoreUnavailable` instead."""
        self._require()
        deadline = time.monotonic() + (self.reconnect_budget if retry else 0)
        backoff = Backoff(0.05, 1.0)
        while True:
            try:
                return await attempt()
            except AioabortError:
                raise
            except Exception as exc:
                # Every error that leaves the store is an AioabortError raised from the
                # driver's; only a connection that cannot be used any more is retried.
                gone = connection_unusable(exc)
                if not gone or time.monotonic() + backoff.peek() > deadline or self._pool is None:
                    raise store_error(exc, self.display_url) from exc
                logger.warning(
                    "PostgreSQL connection lost; retrying",
                    extra={"action": "store_retry", "error": f"{type(exc).__name__}: {exc}"},
                )
                await self._pool.expire_connections()  # the others are as dead: replace them all
                await asyncio.sleep(backoff.next())

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

    # -- named exceptions to the shared flows ------------------------------------------------

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        """The abort, every unfinished descendant's, their log rows and their notifications in
        one statement (``request_abort``: one round trip)."""
        child = parent_reason(task_id, reason)
        rows = await self._one(
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
            changed=nothing_changed,  # announced below, with the children
        )
        if not rows:
            return abort_found(await self.get(task_id), reason)
        row = rows[0]
        kids = json.loads(row[-1]) if row[-1] is not None else []
        self._changed([task_id, *(kid for kid, _ in kids)])
        notices = tuple(AbortNotice(kid, child, attempts) for kid, attempts in kids)
        return AbortOutcome(True, self._record(row), notices)

    async def heartbeat(
        self, owner: OwnerInfo, *, lease: float | None = None, quiet: float = 0.0
    ) -> dict[str, QuietOwner] | None:
        """With ``lease``: the beat, the lease and the quiet owners in one statement
        (``beat_and_lease``): one round trip per interval."""
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
        ends, queues = self._wants
        listener = Listener(self._listener_config(), on_change, watched, ends=ends, queues=queues)
        self._listener = listener
        try:
            with mapped_errors(self.display_url, connecting=True):
                await listener.start()
        except BaseException:
            self._listener = None
            raise

    def _listener_config(self) -> ListenerConfig:
        options = dict(self.connect_options)
        if not names_application(self.dsn):
            options["server_settings"] = {"application_name": LISTENER_NAME}
        return ListenerConfig(
            dsn=self.dsn,
            display_url=self.display_url,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            connect_options=options,
            poll_interval=self.poll_interval,
            gap_timeout=self.gap_timeout,
            poll_only=self.poll_only or not self.notifies,
            abort_channel=self.abort_channel,
            end_channel=self.end_channel,
            queue_channel=self.queue_channel,
            queries=self.queries,
            notices=self.notices,
        )

    def push_elsewhere(self) -> None:
        """No NOTIFY (so no commit waits for PostgreSQL's notification lock) and no LISTEN:
        the listener polls, as behind a transaction pooler."""
        self.notifies = False
        self.queries = without_notify(self.queries)

    def poll_now(self) -> None:
        if self._listener is not None:
            self._listener.wake.set()

    async def subscribe(self, *, ends: bool, queues: frozenset[str]) -> None:
        self._wants = (ends, queues)
        if self._listener is not None:
            await self._listener.subscribe(ends=ends, queues=queues)

    def statistics(self) -> StoreStatistics:
        listener = self._listener
        if listener is None:
            return super().statistics()
        return StoreStatistics(
            statements=self._statements,
            watch_statements=listener.statements,
            watch_polls=listener.polls,
            notifications=listener.notifications,
            reconnects=listener.reconnects,
        )
