"""The SQLite store's change watcher: a thread with a connection of its own.

It checks ``PRAGMA data_version`` (a few microseconds) and, only when another connection
committed, reads the abort log by sequence number and which records changed: two statements
at most per check, however many scopes are open. On Linux it sleeps until inotify reports a
write in the database's directory. It also checks that the file is still the one the store
opened, so a file deleted or replaced under an idle process is reported at once.

The watcher's connection is opened, and its file checked, before watching starts
(:func:`connect_watcher`, on the event loop's side): a thread that first ran after the file
was deleted would otherwise create an empty file at its path, or die on SQLite's "disk I/O
error" with nobody told.
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from .._backend import AbortNotice, Change
from .._errors import StoreUnavailable

logger = logging.getLogger("aioabort.sqlite")

#: A file's (device, inode): what tells it from another file at the same path.
Identity = tuple[int, int]


def file_identity(path: str) -> Identity | None:
    """The file's (device, inode), or ``None`` if there is no file at ``path``."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def connect_watcher(path: str, identity: Identity, lost: str) -> tuple[sqlite3.Connection, int]:
    """The watcher's own connection to the file the store opened, and its ``data_version``.

    Opened read-write without creating anything (``mode=rw``): a file deleted meanwhile is
    not made again, empty. A file that is gone or not the one the store opened is refused.

    :param lost: the message of the :class:`StoreUnavailable` raised then.
    """
    uri = f"file:{quote(os.path.abspath(path))}?mode=rw"
    conn, problem = None, None
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if file_identity(path) == identity:
            return conn, int(conn.execute("PRAGMA data_version").fetchone()[0])
    except sqlite3.Error as exc:
        problem = exc
    if conn is not None:
        conn.close()
    if problem is None or file_identity(path) != identity:
        raise StoreUnavailable(lost) from problem
    raise StoreUnavailable(f"cannot watch the SQLite store {path!r}: {problem}") from problem


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
        os.set_blocking(self._wake_r, False)

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
        if self._wake_r in ready:  # drained, or every wait after would return at once
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
        if self._fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._fd, 65536):
                    pass
            return True
        return False

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def idle(self, timeout: float) -> None:
        """Block until a wake-up or ``timeout``, leaving the file events queued: a watcher
        with nothing to tell reads them only once it has (one wake-up then, not one per
        write)."""
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class ChangePoller(threading.Thread):
    """Checks ``PRAGMA data_version`` on its own connection; reads the abort log on change,
    and the ids of changed records only while this process has waiters (:meth:`want_ids`):
    a worker or a producer that waits on nothing reads no rows of other processes' writes.

    On Linux it sleeps until inotify reports a write in the database's directory, then checks
    every ``interval`` seconds for :data:`_BURST` seconds (a commit's WAL write can be seen a
    moment before its index update), and otherwise every :data:`_SAFETY` seconds. Elsewhere it
    checks every ``interval`` seconds.
    """

    _BURST = 0.02
    _SAFETY = 0.25
    _SETTLE = 0.0002

    def __init__(
        self,
        connected: tuple[sqlite3.Connection, int],
        path: str,
        identity: Identity,
        *,
        interval: float,
        cursor: tuple[int, float],
        queries: Mapping[str, str],
        notices: Callable[[Sequence[Sequence[Any]]], list[AbortNotice]],
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Change], None],
        on_lost: Callable[[], None],
    ) -> None:
        """:param connected: :func:`connect_watcher`'s connection and data version.
        :param cursor: the abort log's last sequence number and the newest change time, read
            when watching started."""
        super().__init__(name="aioabort-sqlite-watcher", daemon=True)
        self._conn, self._version = connected
        self._path, self._identity = path, identity
        self._interval = interval
        #: Changes were reported up to this record time (inclusive: see _changed_ids), and
        #: the rows reported at exactly that time.
        self._last_seq, self._since = cursor
        self._at_since: set[tuple[Any, ...]] = set()
        #: Whether changed ids are read; and a new start for them, handed over by want_ids().
        self._ids_wanted = False
        self._ids_from: tuple[float, list[tuple[Any, ...]]] | None = None
        #: Whether a worker here claims from a queue (every change wakes it), and whether a
        #: scope is open here (aborts are delivered to it).
        self._queues_wanted = self._scopes_open = False
        self._resume = threading.Event()  # where there are no file events to wake it
        self._handover = threading.Lock()
        self._queries, self._notices = queries, notices
        self._loop, self._deliver, self._on_lost = loop, deliver, on_lost
        self._stopping = threading.Event()
        self._events = _FileEvents.open(os.path.dirname(os.path.abspath(path)))
        #: When the file's identity is due to be looked at again.
        self._identity_due = 0.0
        self.polls = 0
        self.statements = 1  # the data_version read when it connected

    def want_ids(self, start: tuple[float, list[tuple[Any, ...]]] | None) -> None:
        """Read the ids of changed records from ``start`` on, or stop reading them (``None``).
        ``start`` is the store's newest change time and its ``changed_since`` rows from it,
        read before this process's first waiter reads its record: what they show is known
        to the waiter, and what comes after is read here. Any thread."""
        idle = not self._interested()
        with self._handover:
            if start is None:
                self._ids_wanted, self._ids_from = False, None
            elif not self._ids_wanted:  # already reading: its place in the changes stays
                self._ids_wanted, self._ids_from = True, start
        self._wake(idle)

    @property
    def ids_wanted(self) -> bool:
        return self._ids_wanted

    def want_queues(self, wanted: bool) -> None:
        """A worker here claims from a queue (``True``), or none does any more. Any thread."""
        idle = not self._interested()
        self._queues_wanted = wanted
        self._wake(idle)

    def want_scopes(self, any_open: bool) -> None:
        """A scope is open here (``True``: its aborts are read from now on), or none is any
        more. Called before the first scope's start is written. Any thread."""
        idle = not self._interested()
        self._scopes_open = any_open
        self._wake(idle)

    def _wake(self, was_idle: bool) -> None:
        """Wake the thread from its idle sleep, if it was idle and now has something to tell
        (once: a busy watcher is not woken, it waits on the file's events)."""
        if was_idle and self._interested():
            self._resume.set()
            if self._events is not None:
                self._events.wake()

    def _interested(self) -> bool:
        """Whether anything here is told of a change: a scope (aborts), a waiter (ends), a
        worker (new work). A process with none (a producer that only queues) sleeps through
        other processes' commits and reads none of them: once it has something to tell, it
        reads on from where it left off (the abort log's sequence, the data version), so
        nothing is missed."""
        return self._ids_wanted or self._queues_wanted or self._scopes_open

    def stop(self) -> None:
        self._stopping.set()
        self._resume.set()  # an idle watcher without file events sleeps on it
        if self._events is not None:
            self._events.wake()

    def run(self) -> None:
        try:
            self._loop_forever()
        finally:
            self._conn.close()
            if self._events is not None:
                self._events.close()

    def _sleep(self, burst_until: float) -> float:
        """Wait for the next check; returns the new end of the fast-check burst. A file event
        is checked :data:`_SETTLE` seconds later, with the events that came meanwhile: one
        commit writes the WAL and its index in several events, and each had a check of its own
        (1,871 checks for 3,000 tasks queued in 30 commits; 71 since). Spacing the checks by the
        poll interval instead cost an abort from another process 2 ms."""
        events = self._events
        if events is None:
            self._stopping.wait(self._interval)
            return burst_until
        bursting = time.monotonic() < burst_until
        if not events.wait(self._interval if bursting else self._SAFETY):
            return burst_until
        time.sleep(self._SETTLE)
        events.wait(0)  # the rest of the commit's events: this check covers them
        return time.monotonic() + self._BURST

    def _idle(self) -> None:
        """Nothing to tell: sleep until there is (or the file's identity is due)."""
        if self._events is not None:
            self._events.idle(self._SAFETY)
        else:
            self._resume.wait(self._SAFETY)
        self._resume.clear()

    def _loop_forever(self) -> None:
        burst_until = 0.0
        while True:
            if self._interested():
                burst_until = self._sleep(burst_until)
            else:
                self._idle()
            if self._stopping.is_set():
                return
            if self._lost():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._on_lost)
                return
            if not self._interested():
                continue
            self.polls += 1
            try:
                change = self._check()
            except sqlite3.Error as exc:  # the next check says whether the file went away
                self._identity_due = 0.0
                logger.warning(
                    "SQLite change poll failed; retrying",
                    extra={"action": "poll_failed", "error": str(exc)},
                )
                continue
            if change is None:
                continue
            try:
                self._loop.call_soon_threadsafe(self._deliver, change)
            except RuntimeError:  # the event loop is closed: nobody is left to tell
                return

    def _lost(self) -> bool:
        """Whether the file was deleted or replaced: looked at every :data:`_SAFETY` seconds
        (a busy store is checked far more often), so an idle process says so too."""
        now = time.monotonic()
        if now < self._identity_due:
            return False
        self._identity_due = now + self._SAFETY
        return file_identity(self._path) != self._identity

    def _check(self) -> Change | None:
        """What other connections committed since the last check (``None``: nothing)."""
        current = self._conn.execute("PRAGMA data_version").fetchone()[0]
        self.statements += 1
        if current == self._version:
            return None
        rows = self._conn.execute(self._queries["aborts_since"], (self._last_seq,)).fetchall()
        self.statements += 1
        self._version = current
        if rows:
            self._last_seq = rows[-1][0]
        notices = self._notices([row[1:] for row in rows])
        return Change(tuple(notices), ids=self._read_changed_ids())

    def _read_changed_ids(self) -> frozenset[str]:
        """The ids changed since the last read, when this process waits on any (else none)."""
        with self._handover:
            wanted, start, self._ids_from = self._ids_wanted, self._ids_from, None
        if not wanted:
            return frozenset()
        if start is not None:
            self._since, self._at_since = start[0], set()
            self._changed_ids(start[1])  # seen by the waiters' own first reads
        changed = self._conn.execute(self._queries["changed_since"], (self._since,)).fetchall()
        self.statements += 1
        return self._changed_ids(changed)

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
