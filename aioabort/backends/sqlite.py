"""The embedded SQLite store (aiosqlite): one host, many processes.

* WAL mode, ``synchronous=NORMAL``, ``busy_timeout``; every write transaction is
  ``BEGIN IMMEDIATE`` and short, and a store still locked past the busy timeout is retried
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
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiosqlite

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
    AppClosed,
    InvalidURL,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    TaskAlreadyExists,
)
from .._state import StartDecision, TaskRecord, TaskState, decide_start, parent_reason
from .._types import AbortReason, TaskError
from . import _sql

logger = logging.getLogger("aioabort.sqlite")

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS aioabort_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aioabort_tasks (
    id TEXT PRIMARY KEY,
    name TEXT,
    queue TEXT,
    parent_id TEXT,
    state TEXT NOT NULL CHECK (state IN {_sql.in_list(list(TaskState))}),
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
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS aioabort_tasks_pending ON aioabort_tasks (queue, created_at)
    WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS aioabort_tasks_state ON aioabort_tasks (state, created_at);
CREATE INDEX IF NOT EXISTS aioabort_tasks_running_owner ON aioabort_tasks (owner)
    WHERE state IN {_sql.RUNNING};
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
    last_seen REAL NOT NULL,
    beats INTEGER NOT NULL DEFAULT 0
);
"""

#: How many abort log entries are kept (watchers only read entries newer than their start);
#: pruned by sequence number, so no clock is involved.
_ABORT_LOG_KEEP = 100_000

_SELECT_NOTICES = """
SELECT l.seq, l.task_id, t.abort_code, t.abort_message, t.abort_by, t.abort_at, t.attempts
FROM aioabort_abort_log AS l JOIN aioabort_tasks AS t ON t.id = l.task_id
WHERE l.seq > ? ORDER BY l.seq
"""


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def record_from_row(row: Sequence[Any]) -> TaskRecord:
    return _sql.record_from_row(row, _ts)


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
                rows = conn.execute(_SELECT_NOTICES, (self._last_seq,)).fetchall()
                self.statements += 1
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
            try:
                self._loop.call_soon_threadsafe(self._deliver, Change(tuple(notices)))
            except RuntimeError:  # the event loop is closed: nobody is left to tell
                return


class _Tx:
    """The statements of one write transaction, run in the driver's thread."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SQLiteStore(Store):
    """The SQLite store. Made by :class:`aioabort.App` from a ``sqlite:///`` URL."""

    #: How often the change watcher checks ``PRAGMA data_version``, in seconds (on Linux: only
    #: for a moment after a write in the database's directory, which inotify reports).
    poll_interval = 0.005
    #: SQLite's own wait for a lock, per attempt, in seconds.
    busy_timeout = 5.0
    #: How long a write keeps retrying a locked database before raising StoreBusy.
    write_budget = 30.0

    def __init__(self, url: str, *, poll_interval: float | None = None) -> None:
        if poll_interval is not None:
            self.poll_interval = poll_interval
        self.display_url = url
        self._path = parse_path(url)
        self._memory = self._path == ":memory:"
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._statements = 0
        self._on_change: ChangeCallback | None = None
        self._poller: _ChangePoller | None = None
        self._closed = False
        self._identity: tuple[int, int] | None = None  # the file's (device, inode) once open
        self._lost_reported = False
        self._finishes = GroupCommit(self._finish_batch)
        self._creates = GroupCommit(self._create_batch)

    @classmethod
    def from_url(cls, url: str, *, poll_interval: float | None = None) -> SQLiteStore:
        return cls(url, poll_interval=poll_interval)

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
            await conn.set_trace_callback(self._count_statement)
            await self._exec(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self._memory:
                mode = await self._exec("PRAGMA journal_mode = WAL")
                if str(mode[0][0]).lower() != "wal":
                    raise StoreUnavailable(
                        f"the SQLite store {self._path!r} cannot use WAL mode (got {mode[0][0]})"
                    )
            await self._exec("PRAGMA synchronous = NORMAL")
            await self._ensure_schema()
            if not self._memory:
                self._identity = _file_identity(self._path)
        except BaseException as exc:
            await conn.close()
            self._conn = None
            if isinstance(exc, StoreUnavailable) or not isinstance(exc, StoreError):
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

    async def _ensure_schema(self) -> None:
        def body(tx: _Tx) -> None:
            rows = tx.fetch(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'aioabort_meta'"
            )
            if rows:
                version_rows = tx.fetch(
                    "SELECT value FROM aioabort_meta WHERE key = 'schema_version'"
                )
                version = int(version_rows[0][0]) if version_rows else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"the SQLite store {self._path!r} has schema version {version}, newer "
                        f"than this aioabort supports ({SCHEMA_VERSION}): upgrade aioabort"
                    )
                if version == SCHEMA_VERSION:
                    return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    tx.fetch(statement)
            tx.fetch(
                "INSERT INTO aioabort_meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

        await self._write(body, notify=False)

    async def aclose(self) -> None:
        self._closed = True
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.stop()
            await asyncio.to_thread(poller.join)
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock:
                await conn.close()

    def _count_statement(self, _sql_text: str) -> None:
        self._statements += 1

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

    async def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._require()
        try:
            return list(await conn.execute_fetchall(sql, params))
        except sqlite3.IntegrityError:
            raise
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc

    async def _write(self, body: Callable[[_Tx], T], *, notify: bool = True) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction, retrying while locked.

        The whole transaction (BEGIN, the statements, COMMIT) runs in the driver's thread as
        one unit, so a stalled event loop in this process never holds the database's write
        lock against every other process: it is held for the statements' time alone.
        """
        conn = self._require()
        async with self._lock:
            try:
                # aiosqlite runs each call in its connection's own thread; _execute is how its
                # public methods do it, and here it carries a whole transaction.
                result: T = await conn._execute(  # type: ignore[no-untyped-call]
                    self._transaction, conn._conn, body
                )
            except sqlite3.OperationalError as exc:
                raise self._error(exc) from exc
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error: {exc}") from exc
        if notify and self._on_change is not None:
            self._on_change(Change())
        return result

    def _transaction(self, conn: sqlite3.Connection, body: Callable[[_Tx], T]) -> T:
        """The driver's thread: BEGIN IMMEDIATE (retried while another writer holds the lock,
        up to :attr:`write_budget`), the body, COMMIT; ROLLBACK on any error."""
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
            result = body(_Tx(conn))
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
        now = time.time()

        def body(tx: _Tx) -> TaskRecord:
            parent = self._aborted_parent(tx, parent_id)
            try:
                rows = tx.fetch(
                    "INSERT INTO aioabort_tasks (id, name, queue, parent_id, state, args, "
                    "retryable, created_at, updated_at) VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?, ?) "
                    f"RETURNING {_sql.COLUMNS}",
                    (task_id, name, queue, parent_id, args_json, int(retryable), now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise TaskAlreadyExists(task_id) from exc
            if parent is not None:  # born into an aborted family: never runs
                return self._abort_unlocked(tx, task_id, parent, now) or record_from_row(rows[0])
            return record_from_row(rows[0])

        return await self._write(body)

    async def _create_batch(self, items: list[NewTask]) -> list[TaskRecord | BaseException]:
        now = time.time()
        values = ", ".join("(?, ?, ?, NULL, 'PENDING', ?, ?, ?, ?)" for _ in items)
        params: list[Any] = []
        for i, item in enumerate(items):
            at = now + i * 1e-6  # keeps submission order for the claim's ORDER BY created_at
            params += [
                item.task_id,
                item.name,
                item.queue,
                item.args_json,
                int(item.retryable),
                at,
                at,
            ]

        def body(tx: _Tx) -> list[TaskRecord | BaseException]:
            rows = tx.fetch(
                "INSERT INTO aioabort_tasks (id, name, queue, parent_id, state, args, retryable, "
                f"created_at, updated_at) VALUES {values} ON CONFLICT (id) DO NOTHING "
                f"RETURNING {_sql.COLUMNS}",
                params,
            )
            made = {row[0]: record_from_row(row) for row in rows}
            results: list[TaskRecord | BaseException] = []
            for item in items:
                record = made.pop(item.task_id, None)
                results.append(record if record is not None else TaskAlreadyExists(item.task_id))
            return results

        return await self._write(body)

    def _aborted_parent(self, tx: _Tx, parent_id: str | None) -> AbortReason | None:
        """The reason a child of ``parent_id`` is born aborted with, if the parent is aborting."""
        if parent_id is None:
            return None
        rows = tx.fetch(
            "SELECT abort_code, abort_message, abort_by, abort_at FROM aioabort_tasks "
            f"WHERE id = ? AND state IN {_sql.PARENT_ABORTED}",
            (parent_id,),
        )
        if not rows:
            return None
        reason = _sql.reason_from(rows[0][0], rows[0][1], rows[0][2], _ts(rows[0][3]))
        return None if reason is None else parent_reason(parent_id, reason)

    def _abort_unlocked(
        self, tx: _Tx, task_id: str, reason: AbortReason, now: float
    ) -> TaskRecord | None:
        rows = tx.fetch(
            f"UPDATE aioabort_tasks SET state = {_sql.abort_case()}, abort_code = ?, "
            "abort_message = ?, abort_by = ?, abort_at = ?, updated_at = ?, "
            "finished_at = CASE WHEN state = 'PENDING' THEN ? ELSE finished_at END "
            f"WHERE id = ? AND state IN {_sql.ABORTABLE} RETURNING {_sql.COLUMNS}",
            (reason.code, reason.message, reason.by, reason.at.timestamp(), now, now, task_id),
        )
        if not rows:
            return None
        tx.fetch("INSERT INTO aioabort_abort_log (task_id, at) VALUES (?, ?)", (task_id, now))
        return record_from_row(rows[0])

    async def start(
        self, task_id: str, *, owner: str, name: str | None, parent_id: str | None = None
    ) -> StartResult:
        now = time.time()

        def body(tx: _Tx) -> StartResult:
            rows = tx.fetch(f"SELECT {_sql.COLUMNS} FROM aioabort_tasks WHERE id = ?", (task_id,))
            current = record_from_row(rows[0]) if rows else None
            decision = decide_start(
                None if current is None else current.state,
                ever_started=current is not None and current.started_at is not None,
            )
            if decision is StartDecision.CREATE:
                parent = self._aborted_parent(tx, parent_id)
                rows = tx.fetch(
                    "INSERT INTO aioabort_tasks (id, name, parent_id, state, owner, created_at, "
                    "started_at, updated_at, attempts) VALUES (?, ?, ?, 'STARTED', ?, ?, ?, ?, 1) "
                    f"RETURNING {_sql.COLUMNS}",
                    (task_id, name, parent_id, owner, now, now, now),
                )
                record = record_from_row(rows[0])
                if parent is not None:  # started under an aborting parent: aborting already
                    record = self._abort_unlocked(tx, task_id, parent, now) or record
                return StartResult(decision, record)
            assert current is not None
            if decision is StartDecision.START:
                rows = tx.fetch(
                    "UPDATE aioabort_tasks SET state = 'STARTED', owner = ?, started_at = ?, "
                    "updated_at = ?, name = COALESCE(name, ?), attempts = attempts + 1 "
                    f"WHERE id = ? AND state = 'PENDING' RETURNING {_sql.COLUMNS}",
                    (owner, now, now, name, task_id),
                )
                return StartResult(decision, record_from_row(rows[0]))
            return StartResult(decision, current)

        return await self._write(body)

    async def request_abort(self, task_id: str, reason: AbortReason) -> AbortOutcome:
        now = time.time()

        def body(tx: _Tx) -> AbortOutcome:
            record = self._abort_unlocked(tx, task_id, reason, now)
            if record is None:
                return AbortOutcome(False, self._get(tx, task_id))
            child_reason = parent_reason(task_id, reason)
            rows = tx.fetch(
                "WITH RECURSIVE family(id) AS ("
                "SELECT id FROM aioabort_tasks WHERE parent_id = ? "
                "UNION SELECT t.id FROM aioabort_tasks AS t JOIN family AS f "
                "ON t.parent_id = f.id) "
                f"UPDATE aioabort_tasks SET state = {_sql.abort_case()}, abort_code = ?, "
                "abort_message = ?, abort_by = ?, abort_at = ?, updated_at = ?, "
                "finished_at = CASE WHEN state = 'PENDING' THEN ? ELSE finished_at END "
                f"WHERE id IN (SELECT id FROM family) AND state IN {_sql.ABORTABLE} "
                "RETURNING id",
                (
                    task_id,
                    child_reason.code,
                    child_reason.message,
                    child_reason.by,
                    child_reason.at.timestamp(),
                    now,
                    now,
                ),
            )
            if rows:
                tx.executemany(
                    "INSERT INTO aioabort_abort_log (task_id, at) VALUES (?, ?)",
                    [(row[0], now) for row in rows],
                )
            children = tuple(AbortNotice(row[0], child_reason) for row in rows)
            return AbortOutcome(True, record, children)

        return await self._write(body)

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
        now = time.time()
        values = ", ".join("(?, ?, ?, ?, ?)" for _ in items)
        params: list[Any] = []
        for item in items:
            params += [
                item.task_id,
                item.owner,
                item.state.value,
                item.result_json,
                item.error_json,
            ]

        def body(tx: _Tx) -> list[TaskRecord | BaseException | None]:
            rows = tx.fetch(
                f"WITH v(id, owner, state, result, error) AS (VALUES {values}) "
                "UPDATE aioabort_tasks SET state = v.state, result = v.result, error = v.error, "
                "finished_at = ?, updated_at = ? FROM v WHERE aioabort_tasks.id = v.id "
                "AND aioabort_tasks.owner = v.owner "
                f"AND aioabort_tasks.state IN {_sql.RUNNING} "
                f"RETURNING {_sql.columns('aioabort_tasks')}",
                (*params, now, now),
            )
            done = {row[0]: record_from_row(row) for row in rows}
            results: list[TaskRecord | BaseException | None] = []
            for item in items:
                record = done.get(item.task_id)
                results.append(record if record is not None else self._get(tx, item.task_id))
            return results

        return await self._write(body)

    async def claim(self, *, owner: str, queues: Collection[str], limit: int) -> list[TaskRecord]:
        now = time.time()
        marks = ", ".join("?" for _ in queues)

        def body(tx: _Tx) -> list[TaskRecord]:
            rows = tx.fetch(
                "UPDATE aioabort_tasks SET state = 'STARTED', owner = ?, started_at = ?, "
                "updated_at = ?, attempts = attempts + 1 WHERE id IN (SELECT id FROM "
                f"aioabort_tasks WHERE state = 'PENDING' AND queue IN ({marks}) "
                f"ORDER BY created_at LIMIT ?) AND state = 'PENDING' RETURNING {_sql.COLUMNS}",
                (owner, now, now, *queues, limit),
            )
            return sorted((record_from_row(row) for row in rows), key=lambda r: r.created_at)

        return await self._write(body)

    async def has_pending(self, queues: Collection[str]) -> bool:
        marks = ", ".join("?" for _ in queues)
        async with self._lock:
            rows = await self._exec(
                "SELECT EXISTS (SELECT 1 FROM aioabort_tasks WHERE state = 'PENDING' "
                f"AND queue IN ({marks}))",
                tuple(queues),
            )
        return bool(rows[0][0])

    async def requeue(self, task_id: str, *, owner: str) -> TaskRecord | None:
        now = time.time()

        def body(tx: _Tx) -> TaskRecord | None:
            rows = tx.fetch(
                "UPDATE aioabort_tasks SET state = 'PENDING', owner = NULL, started_at = NULL, "
                "abort_code = NULL, abort_message = NULL, abort_by = NULL, abort_at = NULL, "
                "progress = NULL, message = NULL, updated_at = ? "
                f"WHERE id = ? AND owner = ? AND state IN {_sql.RUNNING} "
                f"RETURNING {_sql.COLUMNS}",
                (now, task_id, owner),
            )
            if rows:
                return record_from_row(rows[0])
            return self._get(tx, task_id)

        return await self._write(body)

    @staticmethod
    def _get(tx: _Tx, task_id: str) -> TaskRecord | None:
        rows = tx.fetch(f"SELECT {_sql.COLUMNS} FROM aioabort_tasks WHERE id = ?", (task_id,))
        return record_from_row(rows[0]) if rows else None

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._lock:
            rows = await self._exec(
                f"SELECT {_sql.COLUMNS} FROM aioabort_tasks WHERE id = ?", (task_id,)
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
        params: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(TaskState(s).value for s in states)
        if name is not None:
            where.append("name = ?")
            params.append(name)
        sql = f"SELECT {_sql.COLUMNS} FROM aioabort_tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        params += [limit, offset]
        async with self._lock:
            rows = await self._exec(sql, params)
        return [record_from_row(row) for row in rows]

    async def count_tasks(self) -> dict[TaskState, int]:
        async with self._lock:
            rows = await self._exec("SELECT state, COUNT(*) FROM aioabort_tasks GROUP BY state")
        return {TaskState(state): int(n) for state, n in rows}

    async def report(
        self, task_id: str, *, owner: str, progress: float | None, message: str | None
    ) -> bool:
        now = time.time()

        def body(tx: _Tx) -> bool:
            rows = tx.fetch(
                "UPDATE aioabort_tasks SET progress = COALESCE(?, progress), "
                "message = COALESCE(?, message), updated_at = ? "
                f"WHERE id = ? AND owner = ? AND state IN {_sql.RUNNING} RETURNING id",
                (progress, message, now, task_id, owner),
            )
            return bool(rows)

        return await self._write(body)

    # -- liveness ----------------------------------------------------------------------------

    async def heartbeat(self, owner: OwnerInfo) -> None:
        now = time.time()

        def body(tx: _Tx) -> None:
            tx.fetch(
                "INSERT INTO aioabort_owners (id, host, pid, started_at, last_seen, beats) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (id) DO UPDATE SET "
                "last_seen = excluded.last_seen, beats = aioabort_owners.beats + 1",
                (owner.id, owner.host, owner.pid, now, now),
            )

        await self._write(body, notify=False)

    async def owner_beats(self) -> dict[str, int]:
        async with self._lock:
            rows = await self._exec("SELECT id, beats FROM aioabort_owners")
        return {owner: int(beats) for owner, beats in rows}

    async def reap(self, dead: Collection[str]) -> list[str]:
        now = time.time()
        dead = list(dead)
        marks = ", ".join("?" for _ in dead) or "NULL"
        lost = (
            f"state IN {_sql.RUNNING} AND (owner IS NULL OR owner IN ({marks}) "
            "OR owner NOT IN (SELECT id FROM aioabort_owners))"
        )

        def body(tx: _Tx) -> list[str]:
            requeued = tx.fetch(
                "UPDATE aioabort_tasks SET state = 'PENDING', owner = NULL, started_at = NULL, "
                "abort_code = NULL, abort_message = NULL, abort_by = NULL, abort_at = NULL, "
                "progress = NULL, message = NULL, updated_at = ? "
                f"WHERE {lost} AND retryable = 1 AND COALESCE(abort_code, 'shutdown') = "
                "'shutdown' RETURNING id",
                (now, *dead),
            )
            rows = tx.fetch(
                "UPDATE aioabort_tasks SET state = 'FAILURE', finished_at = ?, updated_at = ?, "
                "error = json_object('cause', 'lost', 'type', '', 'message', "
                "'owner ' || COALESCE(owner, '?') || ' stopped heartbeating') "
                f"WHERE {lost} RETURNING id",
                (now, now, *dead),
            )
            if dead:
                tx.fetch(f"DELETE FROM aioabort_owners WHERE id IN ({marks})", dead)
            tx.fetch(
                "DELETE FROM aioabort_abort_log WHERE seq <= "
                "(SELECT MAX(seq) FROM aioabort_abort_log) - ?",
                (_ABORT_LOG_KEEP,),
            )
            return [row[0] for row in requeued + rows]

        ids = await self._write(body, notify=False)
        if ids and self._on_change is not None:
            self._on_change(Change())
        return ids

    async def release_owner(self, owner: str) -> list[str]:
        now = time.time()

        def body(tx: _Tx) -> list[str]:
            rows = tx.fetch(
                "UPDATE aioabort_tasks SET state = 'FAILURE', finished_at = ?, updated_at = ?, "
                "error = json_object('cause', 'lost', 'type', '', 'message', "
                "'owner ' || owner || ' closed while the task was running') "
                f"WHERE owner = ? AND state IN {_sql.RUNNING} RETURNING id",
                (now, now, owner),
            )
            tx.fetch("DELETE FROM aioabort_owners WHERE id = ?", (owner,))
            return [row[0] for row in rows]

        return await self._write(body)

    # -- watching ----------------------------------------------------------------------------

    async def start_watching(self, on_change: ChangeCallback, watched: WatchedIds) -> None:
        self._on_change = on_change
        if self._memory:
            return  # one connection, one process: every change is local
        async with self._lock:
            rows = await self._exec("SELECT COALESCE(MAX(seq), 0) FROM aioabort_abort_log")
        poller = _ChangePoller(
            self._path,
            self.poll_interval,
            int(rows[0][0]),
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
