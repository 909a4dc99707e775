"""The per-process watcher: one per open App, delivering aborts to the scopes open here.

The store finds changes (SQLite: ``PRAGMA data_version`` and the abort log; PostgreSQL:
LISTEN/NOTIFY plus a poll) at a cost per poll that does not depend on how many scopes are open;
the watcher maps each abort notice to the scope with that id, on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from ._backend import Change, Store
from ._errors import ScopeAlreadyEntered
from ._types import AbortReason

logger = logging.getLogger("aioabort.watcher")

#: How long, and how many, abort notices for ids with no open scope are remembered: a worker
#: that claimed a task registers its scope a moment later, and an abort that arrived in
#: between must still reach it.
_RECENT_SECONDS = 120.0
_RECENT_MAX = 10_000


class AbortTarget(Protocol):
    """What the watcher delivers to: an open scope."""

    @property
    def id(self) -> str: ...

    def _deliver_abort(self, reason: AbortReason, attempt: int | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class WatcherStatistics:
    """A snapshot of the watcher's counters.

    :ivar open_scopes: scopes open in this process under this App.
    :ivar polls: change polls the store ran.
    :ivar statements: SQL statements the store's change detection ran.
    :ivar notifications: push notifications received (PostgreSQL).
    :ivar changes: changes seen (any commit by another connection, or a local write).
    :ivar notices: abort notices seen, for any task.
    :ivar deliveries: aborts delivered to a scope open here.
    :ivar reconnects: reconnections of the store's change watcher.
    """

    open_scopes: int
    polls: int
    statements: int
    notifications: int
    changes: int
    notices: int
    deliveries: int
    reconnects: int


class Watcher:
    """Delivers abort requests to the scopes open in this process. Created by the App."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._scopes: dict[str, AbortTarget] = {}
        self._changed = asyncio.Event()
        self._changes = 0
        self._notices = 0
        self._deliveries = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._recent: OrderedDict[str, tuple[AbortReason, int | None, float]] = OrderedDict()

    async def start(self) -> None:
        await self._store.start_watching(self._on_change, self._scopes.keys)

    def stop(self) -> None:
        """Wake every waiter one last time (the store stops watching when it closes)."""
        self._pulse()

    # -- scopes ------------------------------------------------------------------------------

    def register(self, target: AbortTarget) -> None:
        """Start delivering aborts for ``target.id``. One scope per id in a process."""
        if target.id in self._scopes:
            raise ScopeAlreadyEntered(
                f"a scope for task {target.id!r} is already open in this process"
            )
        self._scopes[target.id] = target
        self._idle.clear()
        recent = self._recent.pop(target.id, None)
        if recent is not None and time.monotonic() - recent[2] < _RECENT_SECONDS:
            self._deliveries += 1
            target._deliver_abort(recent[0], recent[1])  # the scope judges whose run it was

    def unregister(self, target: AbortTarget) -> None:
        if self._scopes.get(target.id) is target:
            del self._scopes[target.id]
            if not self._scopes:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no scope is open in this process."""
        await self._idle.wait()

    def scopes(self) -> list[AbortTarget]:
        """The scopes open now."""
        return list(self._scopes.values())

    def deliver(self, task_id: str, reason: AbortReason, attempt: int | None = None) -> bool:
        """Deliver an abort to the scope open here for ``task_id``, if any. Loop thread only.

        :param attempt: the run the abort was meant for (see :class:`AbortNotice`).
        """
        target = self._scopes.get(task_id)
        if target is None:
            self._remember(task_id, reason, attempt)
            return False
        self._deliveries += 1
        target._deliver_abort(reason, attempt)
        return True

    def _remember(self, task_id: str, reason: AbortReason, attempt: int | None) -> None:
        self._recent[task_id] = (reason, attempt, time.monotonic())
        self._recent.move_to_end(task_id)
        while len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)

    # -- changes -----------------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        self._changes += 1
        for notice in change.aborts:
            self._notices += 1
            if self.deliver(notice.task_id, notice.reason, notice.attempt):
                logger.debug(
                    "abort delivered",
                    extra={"action": "abort_delivered", "task_id": notice.task_id},
                )
        self._pulse()

    def _pulse(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def change_event(self) -> asyncio.Event:
        """An event set at the next change: take it *before* reading, then wait on it."""
        return self._changed

    def statistics(self) -> WatcherStatistics:
        """Counters, to see what the watcher costs and does."""
        store = self._store.statistics()
        return WatcherStatistics(
            open_scopes=len(self._scopes),
            polls=store.watch_polls,
            statements=store.watch_statements,
            notifications=store.notifications,
            changes=self._changes,
            notices=self._notices,
            deliveries=self._deliveries,
            reconnects=store.reconnects,
        )
