"""The PostgreSQL store's watcher side: a dedicated connection with LISTEN, a bounded poll of
the abort log, and reconnects.

* The connection is its own (a pooled one is UNLISTENed when it goes back to the pool). On
  every (re)connect it LISTENs first, then re-reads every watched id, so an abort sent while
  it was disconnected is still delivered.
* A poll of the abort log every ``poll_interval`` seconds is the safety net and the health
  check (bounded by a timeout). Sequence numbers are not commit-ordered in PostgreSQL: the
  poll keeps its cursor below any gap until the gap fills or is older than ``gap_timeout``
  (:class:`~aioabort.backends._seqcursor.SeqCursor`).
* It hears only what its process needs (guarantee G13): abort requests always; task ends
  only while the process has waiters; new work only on the channels of the queues its
  workers claim from. Poll-only (behind a transaction pooler) it LISTENs to nothing and
  reads the records changed since its last poll while the process has waiters.

It knows the store only through a :class:`ListenerConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, LiteralString

import asyncpg

from ..._backend import AbortNotice, Change, ChangeCallback, WatchedIds
from ..._backoff import Backoff
from .. import _sql
from .._seqcursor import SeqCursor
from .._sqlbase import Row
from ._options import connection_unusable

logger = logging.getLogger("aioabort.postgres")

#: In poll-only mode, changed records are read again for this long after their change time
#: (a transaction commits after the time it wrote), and told apart by id and time.
_CHANGE_LAG = timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """What the listener needs of its store: where to connect, what to run, what to hear.

    :ivar connect_options: asyncpg's keyword arguments for the listener's connection.
    :ivar queries: the store's named queries (the listener runs ``max_abort_seq``,
        ``aborts_since``, ``aborts_of``, ``max_updated`` and ``changed_since``).
    :ivar notices: rows of ``aborts_of`` as abort notices (the store's reading of them).
    :ivar queue_channel: the channel of a queue's new work.
    :ivar poll_only: nothing can LISTEN (a transaction pooler): poll only.
    """

    dsn: str
    display_url: str
    connect_timeout: float
    command_timeout: float
    connect_options: Mapping[str, Any]
    poll_interval: float
    gap_timeout: float
    poll_only: bool
    abort_channel: str
    end_channel: str
    queue_channel: Callable[[str], str]
    queries: Mapping[str, LiteralString]
    notices: Callable[[Sequence[Row]], list[AbortNotice]]


class Listener:
    """The watcher side: a dedicated connection with LISTEN, a bounded poll, reconnects."""

    def __init__(
        self,
        config: ListenerConfig,
        on_change: ChangeCallback,
        watched: WatchedIds,
        *,
        ends: bool = False,
        queues: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        self.on_change = on_change
        self.watched = watched
        #: What the process asked to hear besides aborts (see :meth:`subscribe`).
        self.wants_ends, self.wanted_queues = ends, queues
        self.conn: asyncpg.Connection | None = None
        self.cursor = SeqCursor(gap_timeout=config.gap_timeout)
        self.task: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        self.wake = asyncio.Event()
        self.polls = 0
        self.statements = 0
        self.notifications = 0
        self.reconnects = 0
        #: One statement at a time on the listener's connection (the poll, notified reads).
        self.reading = asyncio.Lock()
        self.to_read: set[str] = set()
        self.reader: asyncio.Task[None] | None = None
        #: The channels LISTENed on the connection now.
        self.listening: set[str] = set()
        #: Poll-only mode: the newest change time read, and the changes read since it - lag.
        self.since: datetime | None = None
        self.seen: dict[tuple[str, datetime], None] = {}

    async def start(self) -> None:
        await self._connect()
        await self.subscribe(ends=self.wants_ends, queues=self.wanted_queues)  # asked meanwhile
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name="aioabort-postgres-listener"
        )

    async def stop(self) -> None:
        tasks = [task for task in (self.task, self.reader) if task is not None]
        self.task = self.reader = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_conn()

    async def _close_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing: force it
                conn.terminate()

    async def _connect(self) -> None:
        config = self.config
        conn: asyncpg.Connection = await asyncpg.connect(
            config.dsn,
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            **config.connect_options,
        )
        try:
            _set_keepalive(conn)
            self.lost.clear()
            conn.add_termination_listener(self._on_terminated)
            # LISTEN first, then re-read: nothing committed after this point can be missed.
            self.listening = set()
            await self._listen(conn)
            if not self.cursor.started:
                self.cursor.low_water = await conn.fetchval(config.queries["max_abort_seq"])
                self.statements += 1
            ids = list(self.watched())
            if ids:
                rows = await conn.fetch(config.queries["aborts_of"], json.dumps(ids))
                self.statements += 1
                self._deliver(rows)
        except BaseException:
            conn.terminate()
            raise
        self.conn = conn

    def wanted(self) -> set[str]:
        """The channels this process needs now (none when nothing can LISTEN)."""
        config = self.config
        if config.poll_only:
            return set()
        channels = {config.abort_channel, *map(config.queue_channel, self.wanted_queues)}
        if self.wants_ends:
            channels.add(config.end_channel)
        return channels

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """LISTEN to the channels wanted and not yet listened to; UNLISTEN the others. (Poll-
        only: start reading changed records from now when waiters want ends, or stop.)"""
        if self.config.poll_only:
            if not self.wants_ends:
                self.since = None
            elif self.since is None:
                self.since = await conn.fetchval(self.config.queries["max_updated"])
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

    async def subscribe(self, *, ends: bool, queues: frozenset[str]) -> None:
        """Make the connection's LISTENs what the process wants now. When it is down, the
        reconnect listens (and wakes every waiter); when it fails here, so does it."""
        self.wants_ends, self.wanted_queues = ends, queues
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
        if channel == self.config.end_channel:  # a JSON array of the ids of ended tasks
            self.on_change(Change(ids=frozenset(json.loads(payload))))
            return
        if channel != self.config.abort_channel:  # a queue's channel: new work, no task changed
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
                self.reader = asyncio.get_running_loop().create_task(self._read_notified())

    async def _read_notified(self) -> None:
        while self.to_read:
            ids, self.to_read = list(self.to_read), set()
            async with self.reading:
                conn = self.conn
                if conn is None:
                    self.wake.set()  # reconnecting: the re-read after it finds them
                    return
                try:
                    rows = await conn.fetch(self.config.queries["aborts_of"], json.dumps(ids))
                    self.statements += 1
                except Exception:  # noqa: BLE001 - a hint lost: the poll re-reads the truth
                    self.wake.set()  # the poll (or the reconnect's re-read) will catch it
                    return
            self._deliver(rows)

    def _deliver(self, rows: Sequence[Row]) -> None:
        """Rows of ``aborts_of`` (id, code, message, by, at, attempts) to the watcher."""
        self.on_change(Change(tuple(self.config.notices(rows)), ids=frozenset()))

    async def poll(self) -> None:
        """Read the abort log past the cursor; one statement however many scopes are open."""
        async with self.reading:
            conn = self.conn
            assert conn is not None
            rows = await conn.fetch(
                self.config.queries["aborts_since"],
                self.cursor.low_water,
                timeout=self.config.command_timeout,
            )
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
            self.config.queries["changed_since"],
            since - _CHANGE_LAG,
            timeout=self.config.command_timeout,
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

    async def _run(self) -> None:
        """A supervisor: whatever the driver (or a bug) raises, the listener reconnects and
        re-reads; it never dies while the App is open."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                if self.conn is None or self.conn.is_closed() or self.lost.is_set():
                    await self._reconnect()
                    backoff.reset()
                await self.poll()
            except Exception as exc:
                logger.warning(
                    "listener connection failed; reconnecting",
                    exc_info=not connection_unusable(exc),  # a traceback only for surprises
                    extra={
                        "action": "listener_failed",
                        "error": f"{type(exc).__name__}: {exc}",
                        "url": self.config.display_url,
                    },
                )
                await self._close_conn()
                await asyncio.sleep(backoff.next())
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.config.poll_interval)

    async def _reconnect(self) -> None:
        await self._close_conn()
        await self._connect()
        await self.subscribe(ends=self.wants_ends, queues=self.wanted_queues)  # asked meanwhile
        self.reconnects += 1
        self.on_change(Change())  # notifications may have been missed: wake all
        logger.info("listener reconnected", extra={"action": "listener_reconnected"})


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
