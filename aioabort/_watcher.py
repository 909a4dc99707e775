"""The per-process watcher: one per open App, delivering aborts to the scopes open here.

The store finds changes (SQLite: ``PRAGMA data_version`` and the abort log; PostgreSQL:
LISTEN/NOTIFY plus a poll) at a cost per poll that does not depend on how many scopes are open;
the watcher maps each abort notice to the scope with that id, on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from ._backend import Change, Store
from ._errors import ScopeAlreadyEntered
from ._pushed import PushedStore
from ._types import AbortReason
from .notifiers import NotifierStatistics

logger = logging.getLogger("aioabort.watcher")

T = TypeVar("T")

#: Seconds a process keeps hearing task ends after its last waiter left (so a request handler
#: that waits now and then does not LISTEN and UNLISTEN each time).
_ENDS_LINGER = 30.0

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
    :ivar wakeups: per-id wake-ups of waiters (``handle.wait()``, ``watch()``).
    :ivar waited_ids: ids with a waiter now.
    :ivar shared_reads: reads of a record that a waiter shared with another one.
    :ivar notifier: the notifier's counters (is it connected, its outages, messages sent and
        received), or ``None`` without a notifier.
    """

    open_scopes: int
    polls: int
    statements: int
    notifications: int
    changes: int
    notices: int
    deliveries: int
    reconnects: int
    wakeups: int = 0
    waited_ids: int = 0
    shared_reads: int = 0
    notifier: NotifierStatistics | None = None


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
        #: Per-id events of the waiters (handle.wait(), watch()) of this process.
        self._waiting: dict[str, asyncio.Event] = {}
        self._wait_counts: dict[str, int] = {}
        self._wakeups = 0
        #: Reads of a record under way for its waiters, with the event they were started under.
        self._reads: dict[str, tuple[asyncio.Event, asyncio.Future[object]]] = {}
        self._shared_reads = 0
        #: What the store is asked to push besides aborts (Store.subscribe).
        self._ends = False
        self._queue_counts: dict[str, int] = {}
        self._subscribing: asyncio.Future[None] | None = None
        self._ends_off: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._store.start_watching(self._on_change, self._scopes.keys)

    async def stop(self) -> None:
        """Wake every waiter one last time (the store stops watching when it closes), and end
        the subscriptions still under way: nothing of the watcher runs once the App closed."""
        if self._ends_off is not None:
            self._ends_off.cancel()
        self._pulse()
        pending: list[asyncio.Future[None]] = [*self._background]
        if self._subscribing is not None:
            pending.append(self._subscribing)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- what the store pushes ---------------------------------------------------------------

    async def want_ends(self) -> None:
        """Make sure the store pushes task ends here (a waiter is about to read): returns once
        an end committed from now on cannot be missed."""
        if self._ends_off is not None:
            self._ends_off.cancel()
            self._ends_off = None
        if not self._ends:
            self._ends = True
            self._subscribing = asyncio.ensure_future(self._subscribe())
        if self._subscribing is not None and not self._subscribing.done():
            await asyncio.shield(self._subscribing)

    async def want_queues(self, queues: Collection[str]) -> None:
        """A worker here claims from ``queues``: have the store push new work on them."""
        for queue in queues:
            self._queue_counts[queue] = self._queue_counts.get(queue, 0) + 1
        await self._subscribe()

    def drop_queues(self, queues: Collection[str]) -> None:
        """A worker stopped claiming from ``queues``."""
        for queue in queues:
            left = self._queue_counts.get(queue, 0) - 1
            if left > 0:
                self._queue_counts[queue] = left
            else:
                self._queue_counts.pop(queue, None)
        self._resubscribe()

    async def _subscribe(self) -> None:
        try:
            await self._store.subscribe(ends=self._ends, queues=frozenset(self._queue_counts))
        except Exception:  # a push not set up: the store's poll still sees every change
            logger.exception("subscribing failed", extra={"action": "subscribe_failed"})

    def _resubscribe(self) -> None:
        task = asyncio.get_running_loop().create_task(self._subscribe())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _no_more_waiters(self) -> None:
        self._ends_off = None
        if not self._wait_counts and self._ends:
            self._ends = False
            self._resubscribe()

    # -- scopes ------------------------------------------------------------------------------

    def register(self, target: AbortTarget) -> None:
        """Start delivering aborts for ``target.id``. One scope per id in a process."""
        if target.id in self._scopes:
            raise ScopeAlreadyEntered(
                f"a scope for task {target.id!r} is already open in this process"
            )
        self._scopes[target.id] = target
        if len(self._scopes) == 1:
            self._store.scopes_open(True)
        self._idle.clear()
        recent = self._recent.pop(target.id, None)
        if recent is not None and time.monotonic() - recent[2] < _RECENT_SECONDS:
            self._deliveries += 1
            target._deliver_abort(recent[0], recent[1])  # the scope judges whose run it was

    def forget(self, task_id: str) -> None:
        """Stop delivering aborts to the scope open here for ``task_id`` (a task its worker
        gave up on): the App's own shutdown leaves it alone then."""
        target = self._scopes.get(task_id)
        if target is not None:
            self.unregister(target)

    def unregister(self, target: AbortTarget) -> None:
        if self._scopes.get(target.id) is target:
            del self._scopes[target.id]
            if not self._scopes:
                self._store.scopes_open(False)
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
        self._pulse(change)

    def _pulse(self, change: Change | None = None) -> None:
        """Wake the listeners of every change, and the waiters of the ids ``change`` names
        (all of them when it names none it can tell: ``ids=None``)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        if not self._waiting:
            return
        if change is None or change.ids is None:
            woken = list(self._waiting)
        else:
            woken = [*change.ids, *(n.task_id for n in change.aborts)]
        for task_id in woken:
            waiting = self._waiting.pop(task_id, None)
            if waiting is not None:
                self._wakeups += 1
                waiting.set()

    def change_event(self) -> asyncio.Event:
        """An event set at the next change of anything: take it *before* reading, then wait
        on it. (To wait for one task, use :meth:`waiting`: other tasks' changes leave it be.)"""
        return self._changed

    @contextlib.contextmanager
    def waiting(self, task_id: str) -> Iterator[Callable[[], asyncio.Event]]:
        """While inside, ``next_change()`` gives an event set at the next change of
        ``task_id`` only ([G13](semantics.md#g13)): take it *before* reading, then wait on
        it. Waiters on one id share one event, dropped when the last of them leaves."""
        self._wait_counts[task_id] = self._wait_counts.get(task_id, 0) + 1

        def next_change() -> asyncio.Event:
            event = self._waiting.get(task_id)
            if event is None:
                event = self._waiting[task_id] = asyncio.Event()
            return event

        try:
            yield next_change
        finally:
            left = self._wait_counts[task_id] - 1
            if left:
                self._wait_counts[task_id] = left
            else:
                del self._wait_counts[task_id]
                self._waiting.pop(task_id, None)
                if not self._wait_counts and self._ends and self._ends_off is None:
                    self._ends_off = asyncio.get_running_loop().call_later(
                        _ENDS_LINGER, self._no_more_waiters
                    )

    async def shared_read(
        self, task_id: str, changed: asyncio.Event, read: Callable[[str], Awaitable[T]]
    ) -> T:
        """``read(task_id)``, shared by the waiters of ``task_id`` that hold the same
        ``changed`` event (from :meth:`waiting`): a read started under it reflects every
        change they have not yet been woken for, so one read serves them all. A waiter that
        is cancelled leaves the read to the others."""
        under = self._reads.get(task_id)
        if under is not None and under[0] is changed and not under[1].done():
            self._shared_reads += 1
            return cast(T, await asyncio.shield(under[1]))
        future: asyncio.Future[object] = asyncio.ensure_future(read(task_id))
        self._reads[task_id] = (changed, future)

        def forget(done: asyncio.Future[object]) -> None:
            if self._reads.get(task_id, (None, None))[1] is done:
                del self._reads[task_id]
            if not done.cancelled():
                done.exception()  # retrieved: a waiter that left does not leave it unheard

        future.add_done_callback(forget)
        return cast(T, await asyncio.shield(future))

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
            wakeups=self._wakeups,
            waited_ids=len(self._wait_counts),
            shared_reads=self._shared_reads,
            notifier=(
                self._store.notifier_statistics() if isinstance(self._store, PushedStore) else None
            ),
        )
