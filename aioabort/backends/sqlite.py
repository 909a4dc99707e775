"""The embedded SQLite store (aiosqlite): one host, many processes.

This module is the driver only; the flow of every operation is :mod:`._sqlstore`'s and the
statements are ``sql/sqlite.sql``.

* WAL mode, ``synchronous=NORMAL``, ``busy_timeout``; every write transaction is
  ``BEGIN IMMEDIATE`` and short, run whole in aiosqlite's connection thread (a stalled event
  loop never holds the write lock), and a store still locked past the busy timeout is retried
  until a budget runs out (then :class:`StoreBusy`).
* Cross-process change detection: a small thread polls ``PRAGMA data_version`` on its own
  connection (a few microseconds a poll) and, only when it changed, reads the abort log by
  sequence number. Two statements at most per poll, however many scopes are open
  (:mod:`._sqlitewatch`).
* A file deleted or replaced under a running process fails every call with
  :class:`StoreUnavailable`, whatever SQLite made of it (often "disk I/O error"): a process
  never writes on into a file nobody else sees.
* ``sqlite:///:memory:`` keeps everything in one connection of one process (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import aiosqlite

from .._backend import ChangeCallback, StoreStatistics, WatchedIds
from .._backoff import Backoff
from .._errors import AppClosed, InvalidURL, StoreBusy, StoreError, StoreUnavailable
from . import _sql
from ._sqlitewatch import ChangePoller, Identity, connect_watcher, file_identity
from ._sqlstore import Connection, Row, SQLStore
from .sql import load_queries, rule_values

logger = logging.getLogger("aioabort.sqlite")

T = TypeVar("T")

#: SQLite's clock, in seconds since the epoch (millisecond resolution).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

QUERIES = load_queries(
    "sqlite",
    {
        **rule_values("json_object({})", "(NEW.error ->> '$.type')"),
        "now": _NOW,
        "qualified_columns": _sql.columns("aioabort_tasks"),
    },
)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def parse_path(url: str) -> str:
    """The file path in a ``sqlite:///path`` URL (``sqlite:////abs/path`` for an absolute one)."""
    if not url.lower().startswith("sqlite:///"):
        raise InvalidURL(
            f"a SQLite URL looks like sqlite:///relative/path.db or sqlite:////absolute/path.db, "
            f"got {url!r}"
        )
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path:
        raise InvalidURL(f"the SQLite URL {url!r} names no file")
    if "\x00" in path:
        raise InvalidURL("the SQLite path must not contain NUL characters")
    return path


class _ThreadConn:
    """A flow's connection inside the driver's thread: each statement runs at once."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return self._conn.execute(sql, args).fetchall()


def _run_to_end(flow: Awaitable[T]) -> T:
    """Run a flow whose awaits never suspend (its statements run at once, in this thread)."""
    assert isinstance(flow, Coroutine), "a flow is an async def function's coroutine"
    try:
        flow.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    flow.close()
    raise RuntimeError("a SQLite flow awaited something other than its own statements")


class SQLiteStore(SQLStore):
    """The SQLite store. Made by :class:`aioabort.App` from a ``sqlite:///`` URL."""

    dialect = "sqlite"
    #: How often the change watcher checks ``PRAGMA data_version``, in seconds (on Linux: only
    #: for a moment after a write in the database's directory, which inotify reports).
    poll_interval = 0.005
    #: SQLite's own wait for a lock, per attempt, in seconds.
    busy_timeout = 5.0
    #: How long a write keeps retrying a locked database before raising StoreBusy.
    write_budget = 30.0

    def __init__(self, url: str, *, poll_interval: float | None = None) -> None:
        super().__init__(url, poll_interval=poll_interval)
        self.queries = QUERIES
        self._path = parse_path(url)
        self._memory = self._path == ":memory:"
        self._conn: aiosqlite.Connection | None = None
        self._poller: ChangePoller | None = None
        self._identity: Identity | None = None  # the file's, once open
        self._lost_reported = False

    @classmethod
    def check_url(cls, url: str) -> None:
        parse_path(url)

    # -- connection --------------------------------------------------------------------------

    async def open(self) -> None:
        if not self._memory:
            self._check_location()
        try:
            self._conn = conn = await aiosqlite.connect(self._path, isolation_level=None)
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self._memory:
                mode = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
                if str(next(iter(mode))[0]).lower() != "wal":
                    raise StoreUnavailable(f"the SQLite store {self._path!r} cannot use WAL mode")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await self._ensure_schema()
            if not self._memory:
                self._identity = file_identity(self._path)
        except BaseException as exc:
            opened, self._conn = self._conn, None
            if opened is not None:
                await opened.close()
            if isinstance(exc, StoreUnavailable) or not isinstance(exc, StoreError | sqlite3.Error):
                raise
            raise StoreUnavailable(f"cannot open the SQLite store {self._path!r}: {exc}") from exc

    def _check_location(self) -> None:
        path = os.path.abspath(self._path)
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise StoreUnavailable(
                f"cannot open the SQLite store {self._path!r}: directory {parent!r} does not exist"
            )
        if os.path.isdir(path):
            raise StoreUnavailable(
                f"cannot open the SQLite store {self._path!r}: it is a directory"
            )
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            raise StoreUnavailable(
                f"cannot open the SQLite store {self._path!r}: no permission to read and write it"
            )
        if not os.path.exists(path) and not os.access(parent, os.W_OK):
            raise StoreUnavailable(
                f"cannot create the SQLite store {self._path!r}: directory {parent!r} is not "
                "writable"
            )

    async def aclose(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.stop()
            await asyncio.to_thread(poller.join)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise AppClosed("the SQLite store is not open")
        if self._file_lost():
            # Deleted or replaced under us: writes would go to a file nobody else sees (and
            # reads come from one), a silent split brain. Fail every call, loudly, instead.
            self._report_lost()
            raise StoreUnavailable(self._lost_message())
        return self._conn

    def _file_lost(self) -> bool:
        """Whether the file at the store's path is no longer the one this process opened."""
        return self._identity is not None and file_identity(self._path) != self._identity

    def _lost_message(self) -> str:
        return (
            f"the SQLite store {self._path!r} was deleted or replaced while this process had "
            "it open; close the App and open it again (its records are in the old file, if any)"
        )

    def _report_lost(self) -> None:
        if not self._lost_reported:
            self._lost_reported = True
            logger.error(self._lost_message(), extra={"action": "store_file_lost"})

    # -- the SQL store's driver --------------------------------------------------------------

    def _timestamp(self, value: Any) -> datetime | None:
        return _ts(value)

    def _param(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return value.timestamp()
        return super()._param(value)

    async def _transaction(self, body: Callable[[Connection], Awaitable[T]], *, retry: bool) -> T:
        return await self._in_thread(self._run_transaction, body)

    async def _statement(
        self, sql: str, args: Sequence[Any], *, write: bool, retry: bool
    ) -> list[Row]:
        if write:

            async def body(conn: Connection) -> list[Row]:
                return list(await conn.fetch(sql, args))

            return await self._in_thread(self._run_transaction, body)
        return await self._in_thread(self._run_read, sql, args)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in aiosqlite's connection thread, as one unit."""
        conn = self._require()
        try:
            # aiosqlite runs each call in its connection's own thread; _execute is how its
            # public methods do it, and here it carries a whole transaction.
            result: T = await conn._execute(fn, conn._conn, *args)  # type: ignore[no-untyped-call]
        except sqlite3.Error as exc:
            raise self._store_error(exc) from exc
        return result

    def _store_error(self, exc: sqlite3.Error) -> StoreError:
        """The aioabort error that the driver's error ``exc`` means: :class:`StoreUnavailable`
        when the file was deleted or replaced meanwhile (whatever SQLite made of that, often
        "disk I/O error"), :class:`StoreBusy` for a lock held past the busy timeout,
        :class:`StoreError` otherwise."""
        if self._file_lost():
            self._report_lost()
            return StoreUnavailable(self._lost_message())
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return StoreBusy(f"the SQLite store {self._path!r} is locked: {exc}")
        return StoreError(f"SQLite error: {exc}")

    @staticmethod
    def _run_read(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
        return conn.execute(sql, args).fetchall()

    def _run_transaction(
        self, conn: sqlite3.Connection, body: Callable[[Connection], Awaitable[T]]
    ) -> T:
        """The driver's thread: BEGIN IMMEDIATE (retried while another writer holds the lock,
        up to :attr:`write_budget`), the flow, COMMIT; ROLLBACK on any error."""
        deadline = time.monotonic() + self.write_budget
        backoff = Backoff(0.005, 0.5)
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() + backoff.peek() > deadline:
                    raise StoreBusy(
                        f"the SQLite store {self._path!r} stayed locked by another writer "
                        f"for more than {self.write_budget:g}s"
                    ) from None
                time.sleep(backoff.next())
        try:
            result = _run_to_end(body(_ThreadConn(conn)))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return result

    async def purge(self, older_than: float, *, limit: int) -> list[str]:
        """A named exception to the generic flow: a SQLite ``DELETE`` reaches one table, so
        the purged records' abort-log rows, labels and timelines go in three more statements
        (``purge_abort_log``, ``purge_labels``, ``purge_events``) of the same transaction."""

        async def body(conn: Connection) -> list[str]:
            ids = [row[0] for row in await self._rows(conn, "purge", older_than, limit)]
            if ids:
                await self._rows(conn, "purge_abort_log", ids)
                await self._rows(conn, "purge_labels", ids)
                await self._rows(conn, "purge_events", ids)
            return ids

        return await self._write(body, retry=True, changed=lambda ids: ids)

    # -- watching ----------------------------------------------------------------------------

    async def start_watching(self, on_change: ChangeCallback, watched: WatchedIds) -> None:
        self._on_change = on_change
        if self._memory:
            return  # one connection, one process: every change is local
        identity = self._identity
        assert identity is not None  # set by open()
        # Its connection first: a commit after this data_version is seen by its first check.
        connected = await asyncio.to_thread(
            connect_watcher, self._path, identity, self._lost_message()
        )
        try:
            last_seq = int((await self._one("max_abort_seq"))[0][0])
            since = float((await self._one("max_updated"))[0][0])
        except BaseException:
            connected[0].close()
            raise
        poller = ChangePoller(
            connected,
            self._path,
            identity,
            interval=self.poll_interval,
            cursor=(last_seq, since),
            queries=self.queries,
            notices=self.notices,
            loop=asyncio.get_running_loop(),
            deliver=on_change,
            on_lost=self._report_lost,
        )
        poller.start()
        self._poller = poller

    def scopes_open(self, any_open: bool) -> None:
        if self._poller is not None:
            self._poller.want_scopes(any_open)

    async def subscribe(self, *, ends: bool, queues: frozenset[str]) -> None:
        # Ends: the ids of changed records are read while this process has waiters, from
        # the newest change time read now, before the first waiter reads its record.
        poller = self._poller
        if poller is None:
            return
        poller.want_queues(bool(queues))
        if not ends:
            poller.want_ids(None)
        elif not poller.ids_wanted:
            since = float((await self._one("max_updated"))[0][0])
            poller.want_ids(
                (since, [tuple(row) for row in await self._one("changed_since", since)])
            )

    def statistics(self) -> StoreStatistics:
        poller = self._poller
        return StoreStatistics(
            statements=self._statements,
            watch_statements=0 if poller is None else poller.statements,
            watch_polls=0 if poller is None else poller.polls,
        )
