"""The producer side: a handle on a task id, usable from any process that reaches the store."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Generic, cast, final

import anyio

from . import _ending
from ._aborting import record_and_deliver
from ._errors import TaskAborted, TaskAlreadyExists, TaskFailed, TaskNotFound
from ._runtime import resolve
from ._state import TaskRecord, TaskState, is_expired
from ._timeline import TaskEvent
from ._types import AbortReason, JSONValue, check_task_id, coerce_reason, utcnow

if TYPE_CHECKING:
    # The default (PEP 696) matters to type checkers only: typing has it from Python 3.13,
    # and every type checker knows typing_extensions.
    from typing_extensions import TypeVar

    from ._runtime import Host, Runtime

    R = TypeVar("R", default=JSONValue)
else:
    from typing import TypeVar

    R = TypeVar("R")

#: How long a waiter waits for a change of its task before it reads again anyway: a safety
#: net only. Changes of the task wake it at once (and a watcher that may have missed some,
#: after a reconnect, wakes every waiter), so an idle waiter costs one read per interval.
_SAFETY_REREAD = 30.0


@final
class AbortHandle(Generic[R]):
    """A handle on the task ``id``: ask it to stop, read its state, wait for its end.

    Get one with :meth:`App.handle`. Holding a handle does no I/O; each method reads or writes
    the store once (``wait()`` re-reads when the watcher sees a change).

    It is generic in the task's result: ``Task.delay()``, ``spawn()`` and ``apply()`` of a task
    returning ``R`` give an ``AbortHandle[R]``, whose :meth:`result` is typed ``R``; a handle
    by id (``app.handle(id)``) is an ``AbortHandle[JSONValue]``.

    Example::

        handle = app.handle("report-42")
        if await handle.abort(reason="user pressed stop"):
            record = await handle.wait(timeout=10)
            print(record.state, record.reason)
    """

    __slots__ = ("_app", "id")

    def __init__(self, app: Host, task_id: str) -> None:
        self.id: str = check_task_id(task_id)
        self._app = app

    def __repr__(self) -> str:
        return f"<AbortHandle id={self.id!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbortHandle) and (other.id, other._app) == (self.id, self._app)

    def __hash__(self) -> int:
        return hash(self.id)

    def _runtime(self) -> Runtime:
        return resolve(self._app)

    async def abort(
        self,
        reason: str | AbortReason | None = None,
        *,
        by: str | None = None,
        create: bool = False,
    ) -> bool:
        """Ask the task to stop. The request is committed before anything is cancelled.

        A PENDING task becomes ABORTED at once and never runs; a running one becomes ABORTING
        and its scope, in whatever process, is cancelled at its next await. The first reason
        wins; later calls return False. Unfinished children (tasks started inside its scope)
        are aborted with it, with reason code ``parent``; a child's abort never reaches its
        parent.

        :param reason: a message (the reason's code is ``user``) or an :class:`AbortReason`.
        :param by: who asks; defaults to ``host:pid``.
        :param create: for an id with no record yet (a cancel that raced ahead of its work):
            record it aborted before it started, so a scope entering that id later stops at
            once with :class:`TaskAborted` (a web request with that id answers 499).
        :returns: whether this call recorded a new abort request. False for an id with no
            record (unless ``create``), a task already aborting, or a finished task; nothing
            is written then.
        :raises InvalidReason: for a bad reason (nothing is written).
        """
        abort_reason = coerce_reason(reason, by)
        runtime = self._runtime()
        outcome = await record_and_deliver(runtime, self.id, abort_reason)
        if outcome.record is None and create:
            with contextlib.suppress(TaskAlreadyExists):  # created meanwhile: abort that one
                await runtime.store.create(self.id, name=None)
            outcome = await record_and_deliver(runtime, self.id, abort_reason)
        return outcome.recorded

    async def record(self) -> TaskRecord:
        """The task's record. :raises TaskNotFound: if there is none."""
        record = await _read(self._runtime(), self.id)
        if record is None:
            raise TaskNotFound(self.id)
        return record

    async def events(self) -> list[TaskEvent]:
        """The task's timeline, oldest first: queued, started, abort requested (who, why),
        delivered, retried, expired, superseded, ended (see :class:`TaskEvent`). Each was
        written with the change it describes; a purge removes them with the record.

        :raises TaskNotFound: if there is no record.
        """
        runtime = self._runtime()
        events = await runtime.store.events(self.id)
        if not events and await runtime.store.get(self.id) is None:
            raise TaskNotFound(self.id)
        return events

    async def state(self) -> TaskState:
        """The task's :class:`TaskState`. :raises TaskNotFound: if there is no record."""
        return (await self.record()).state

    async def is_aborted(self) -> bool:
        """True once an abort was requested (Celery's meaning), whatever the task did next.
        False for an id with no record (as :meth:`abort` answers there)."""
        record = await _read(self._runtime(), self.id)
        return record is not None and record.reason is not None

    async def watch(
        self, *, every: float | None = None, reread: float | None = None
    ) -> AsyncGenerator[TaskRecord, None]:
        """The record now, then again each time it changes, until it is terminal (the last
        record yielded). Wakes on the changes of this task the watcher sees; waiters on one
        task in a process share one read per change.

        Example::

            async for record in app.handle("report-42").watch():
                print(record.state, record.progress)

        :param every: also yield the last record again after this many seconds without a
            change (a keep-alive for a stream; it reads nothing).
        :param reread: read the record again after this many seconds without a change (by
            default every 30 s: a safety net only, since every change of the task, progress
            included, wakes the watch).
        :raises TaskNotFound: if there is no record.
        """
        runtime = self._runtime()
        watcher = runtime.watcher
        net = _SAFETY_REREAD if reread is None else min(reread, _SAFETY_REREAD)
        last: TaskRecord | None = None
        with watcher.waiting(self.id) as next_change:
            await watcher.want_ends()  # the store pushes ends here before the first read
            while True:
                changed = next_change()  # taken before reading: no change is lost
                record = await watcher.shared_read(
                    self.id, changed, functools.partial(_read, runtime)
                )
                if record is None:
                    raise TaskNotFound(self.id)
                if record != last:
                    yield record
                    last = record
                if record.state.is_terminal:
                    return
                deadline = anyio.current_time() + _until_expiry(record, net)
                while not changed.is_set():
                    left = deadline - anyio.current_time()
                    if left <= 0:
                        break
                    with anyio.move_on_after(left if every is None else min(every, left)):
                        await changed.wait()
                    if every is not None and not changed.is_set():
                        yield record

    async def wait(self, timeout: float | None = None) -> TaskRecord:
        """Wait until the task has really stopped (a terminal state); return its record.

        Wakes on every change the watcher sees, so it returns within one change-detection
        interval of the final write.

        :raises TimeoutError: if ``timeout`` seconds pass first (naming the task, the timeout
            and the state it was in).
        :raises TaskNotFound: if there is no record.
        """
        last: TaskRecord | None = None
        with anyio.move_on_after(timeout):
            async with contextlib.aclosing(self.watch()) as records:
                async for last in records:
                    if last.state.is_terminal:
                        return last
        if timeout is None:  # pragma: no cover
            raise AssertionError("watch() ends with a terminal record")
        state = "" if last is None else f" (it is {last.state.value})"
        raise TimeoutError(f"task {self.id!r} has not ended after {timeout:g}s{state}")

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the task to end and return its stored result (the JSON form of what the
        task returned: a tuple comes back as a list).

        :raises TaskAborted: if it ended ABORTED (with the reason).
        :raises TaskFailed: if it ended FAILURE (with the error).
        :raises TimeoutError: if ``timeout`` seconds pass first.
        """
        record = await self.wait(timeout)
        if record.state is TaskState.ABORTED:
            raise TaskAborted(self.id, record.reason)
        if record.state is TaskState.FAILURE:
            raise TaskFailed(self.id, record.error)
        return cast(R, record.result)


async def _read(runtime: Runtime, task_id: str) -> TaskRecord | None:
    """The record of ``task_id``; a queued one found past its ``expires_at`` is ended first
    (code ``expired``: whichever process sees it first ends it, a waiter included)."""
    record = await runtime.store.get(task_id)
    expired = record is not None and is_expired(record, utcnow())
    if expired and await _ending.expire(runtime.store, runtime.owner, [task_id]):
        record = await runtime.store.get(task_id)
    return record


def _until_expiry(record: TaskRecord, longest: float) -> float:
    """Seconds a waiter sleeps before it reads ``record`` again: at most ``longest``, and no
    later than a queued record's expiry (which this waiter then writes, if nobody has; one
    that could not be written is tried again a second later)."""
    if record.state is not TaskState.PENDING or record.expires_at is None:
        return longest
    left = (record.expires_at - utcnow()).total_seconds()
    return min(longest, left if left > 0 else 1.0)
