"""The embedded SQLite store (aiosqlite): one host, many processes.

This module is the driver only; the flow of every operation is :mod:`._sqlstore`'s and the
statements are ``sql/sqlite.sql``.

* WAL mode, ``synchronous=NORMAL``, ``busy_timeout``; every write transaction is
  ``BEGIN IMMEDIATE`` and short, run whole in aiosqlite's connection thread (a stalled event
  loop never holds the write lock), and a store still locked past the busy timeout is retried
  until a budget runs out (then :class:`StoreBusy`).
* Cross-process change detection: a small thread polls ``PRAGMA data_version`` on its own
  connection (a few microseconds a poll) and, only when it changed, reads the abort log by
  sequence number. Two statements at most per poll, however many scopes are open.
* ``sqlite:///:memory:`` keeps everything in one connection of one process (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import aiosqlite

from .._backend import AbortNotice, Change, ChangeCallback, StoreStatistics, WatchedIds
from .._errors import AppClosed, InvalidURL, StoreBusy, StoreError, StoreUnavailable
from . import _sql
from ._sqlstore import Connection, Row, SQLStore
from .sql import load_queries, rule_values

logger = logging.getLogger("aioabort.sqlite")

T = TypeVar("T")

#: SQLite's clock, in seconds since the epoch (millisecond resolution).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

QUERIES = load_queries(
    "sqlite",
    {
        **rule_values("json_object({})"),
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


def _file_identity(path: str) -> tuple[int, int] | None:
    """The file's (device, inode), or ``None`` if there is no file at ``path``."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class _FileEvents:
    """Linux inotify on the database's directory: wakes the watcher when any process writes
    the WAL, so an idle watcher sleeps instead of polling. ``None`` where unavailable."""

    _IN_MODIFY = 0x00000002
    _IN_CREATE = 0x00000100
    _IN_MOVED_TO = 0x00000080
    _IN_MOVED_FROM = 0x00000040
    _IN_DELETE = 0x00000200

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()

    @classmethod
    def open(cls, directory: str) -> _FileEvents | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return None
            mask = (
                cls._IN_MODIFY
                | cls._IN_CREATE
                | cls._IN_MOVED_TO
                | cls._IN_MOVED_FROM
                | cls._IN_DELETE
            )
            if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
                os.close(fd)
                return None
        except (OSError, AttributeError):
            return None
        return cls(fd)

    def wait(self, timeout: float) -> bool:
        """Block until a file event (True), a wake-up, or ``timeout`` (False)."""
        ready, _, _ = select.select([self._fd, self._wake_r], [], [], timeout)
        if self._fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._fd, 65536):
                    pass
            return True
        return False

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class _ChangePoller(threading.Thread):
    """Checks ``PRAGMA data_version`` on its own connection; reads the abort log on change.

    On Linux it sleeps until inotify reports a write in the database's directory, then checks
    every ``interval`` seconds for :data:`_BURST` seconds (a commit's WAL write can be seen a
    moment before its index update), and otherwise every :data:`_SAFETY` seconds. Elsewhere it
    checks every ``interval`` seconds.
    """

    _BURST = 0.02
    _SAFETY = 0.25

    def __init__(
        self,
        path: str,
        interval: float,
        last_seq: int,
        since: float,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Change], None],
        on_lost: Callable[[], None],
    ) -> None:
        super().__init__(name="aioabort-sqlite-watcher", daemon=True)
        self._on_lost = on_lost
        self._identity = _file_identity(path)
        self._path = path
        self._interval = interval
        self._last_seq = last_seq
        #: Changes were reported up to this record time (inclusive: see _changed_ids), and
        #: the rows reported at exactly that time.
        self._since = since
        self._at_since: set[tuple[Any, ...]] = set()
        self._loop = loop
        self._deliver = deliver
        self._stopping = threading.Event()
        self._events = _FileEvents.open(os.path.dirname(os.path.abspath(path)))
        self.polls = 0
        self.statements = 0

    @property
    def event_driven(self) -> bool:
        return self._events is not None

    def stop(self) -> None:
        self._stopping.set()
        if self._events is not None:
            self._events.wake()

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error:
            logger.exception("the SQLite change watcher could not connect")
            return
        try:
            self._loop_forever(conn)
        finally:
            conn.close()
            if self._events is not None:
                self._events.close()

    def _sleep(self, burst_until: float) -> float:
        """Wait for the next check; returns the new end of the fast-check burst."""
        events = self._events
        if events is None:
            self._stopping.wait(self._interval)
            return burst_until
        now = time.monotonic()
        if now < burst_until:
            if events.wait(self._interval):
                return time.monotonic() + self._BURST
            return burst_until
        if events.wait(self._SAFETY):
            return time.monotonic() + self._BURST
        return burst_until

    def _loop_forever(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        self.statements += 1
        burst_until = 0.0
        while True:
            burst_until = self._sleep(burst_until)
            if self._stopping.is_set():
                return
            if _file_identity(self._path) != self._identity:
                # Deleted or replaced: say so now, even if this process is idle.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._on_lost)
                return
            self.polls += 1
            try:
                current = conn.execute("PRAGMA data_version").fetchone()[0]
                self.statements += 1
                if current == version:
                    continue
                rows = conn.execute(QUERIES["aborts_since"], (self._last_seq,)).fetchall()
                changed = conn.execute(QUERIES["changed_since"], (self._since,)).fetchall()
                self.statements += 2
            except sqlite3.Error as exc:
                logger.warning(
                    "SQLite change poll failed; retrying",
                    extra={"action": "poll_failed", "error": str(exc)},
                )
                continue
            version = current
            notices: list[AbortNotice] = []
            for seq, task_id, code, message, by, at, attempt in rows:
                self._last_seq = seq
                reason = _sql.reason_from(code, message, by, _ts(at))
                if reason is not None:
                    notices.append(AbortNotice(task_id, reason, attempt))
            ids = self._changed_ids(changed)
            try:
                self._loop.call_soon_threadsafe(self._deliver, Change(tuple(notices), ids=ids))
            except RuntimeError:  # the event loop is closed: nobody is left to tell
                return

    def _changed_ids(self, rows: list[tuple[Any, ...]]) -> frozenset[str]:
        """The ids of ``changed_since`` rows not reported before. A row at the very instant
        of the last read is read again and told apart by what a waiter sees (state, progress,
        message, abort), since a second change within one millisecond carries the same time."""
        fresh = set()
        for row in rows:
            at = row[1]
            if at > self._since:
                self._since, self._at_since = at, set()
            if at == self._since:
                if row in self._at_since:
                    continue
                self._at_since.add(row)
            fresh.add(row[0])
        return frozenset(fresh)


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
        self._poller: _ChangePoller | None = None
        self._identity: tuple[int, int] | None = None  # the file's (device, inode) once open
        self._lost_reported = False

    @classmethod
    def check_url(cls, url: str) -> None:
        parse_path(url)

    # -- connection --------------------------------------------------------------------------

    async def open(self) -> None:
        if not self._memory:
            self._check_location()
        try:
            conn = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self._path!r}: {exc}") from exc
        self._conn = conn
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self._memory:
                mode = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
                if str(next(iter(mode))[0]).lower() != "wal":
                    raise StoreUnavailable(f"the SQLite store {self._path!r} cannot use WAL mode")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await self._ensure_schema()
            if not self._memory:
                self._identity = _file_identity(self._path)
        except BaseException as exc:
            await conn.close()
            self._conn = None
            if isinstance(exc, StoreUnavailable) or not isinstance(exc, StoreError | sqlite3.Error):
                raise
            raise StoreUnavailable(f"cannot use the SQLite store {self._path!r}: {exc}") from exc

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
        if self._identity is not None and _file_identity(self._path) != self._identity:
            # Deleted or replaced under us: writes would go to a file nobody else sees (and
            # reads come from one), a silent split brain. Fail every call, loudly, instead.
            self._report_lost()
            raise StoreUnavailable(self._lost_message())
        return self._conn

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
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc
        return result

    @staticmethod
    def _run_read(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
        return conn.execute(sql, args).fetchall()

    def _run_transaction(
        self, conn: sqlite3.Connection, body: Callable[[Connection], Awaitable[T]]
    ) -> T:
        """The driver's thread: BEGIN IMMEDIATE (retried while another writer holds the lock,
        up to :attr:`write_budget`), the flow, COMMIT; ROLLBACK on any error."""
        deadline = time.monotonic() + self.write_budget
        delay = 0.005
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StoreBusy(
                        f"the SQLite store {self._path!r} stayed locked by another writer "
                        f"for more than {self.write_budget:g}s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            result = _run_to_end(body(_ThreadConn(conn)))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return result

    def _error(self, exc: sqlite3.OperationalError) -> StoreError:
        if _is_busy(exc):
            return StoreBusy(f"the SQLite store {self._path!r} is locked: {exc}")
        return StoreError(f"SQLite error: {exc}")

    async def purge(self, older_than: float, *, limit: int) -> list[str]:
        """A named exception to the generic flow: a SQLite ``DELETE`` reaches one table, so
        the purged records' abort-log rows and labels go in two more statements
        (``purge_abort_log``, ``purge_labels``) of the same transaction."""

        async def body(conn: Connection) -> list[str]:
            ids = [row[0] for row in await self._rows(conn, "purge", older_than, limit)]
            if ids:
                await self._rows(conn, "purge_abort_log", ids)
                await self._rows(conn, "purge_labels", ids)
            return ids

        return await self._write(body, retry=True, changed=lambda ids: ids)

    # -- watching ----------------------------------------------------------------------------

    async def start_watching(self, on_change: ChangeCallback, watched: WatchedIds) -> None:
        self._on_change = on_change
        if self._memory:
            return  # one connection, one process: every change is local
        rows = await self._one("max_abort_seq")
        since = await self._one("max_updated")
        poller = _ChangePoller(
            self._path,
            self.poll_interval,
            int(rows[0][0]),
            float(since[0][0]),
            asyncio.get_running_loop(),
            on_change,
            self._report_lost,
        )
        poller.start()
        self._poller = poller

    def statistics(self) -> StoreStatistics:
        poller = self._poller
        return StoreStatistics(
            statements=self._statements,
            watch_statements=0 if poller is None else poller.statements,
            watch_polls=0 if poller is None else poller.polls,
        )
