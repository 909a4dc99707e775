"""The consumer side: an abort scope around a body of code, tied to a task id.

In flight an abort is cancellation: the body sees ``CancelledError`` at its next await, and again
at every await until it leaves (an anyio cancel scope, level-triggered). At the boundary it is
data: the scope records how the body ended and raises :class:`TaskAborted` with the reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final

import anyio
import anyio.lowlevel
import anyio.to_thread

from . import _ending, _obedience, _runtime
from ._aborting import stop_here
from ._backend import StartResult
from ._callbacks import Callbacks
from ._errors import TaskAborted, TaskStateError, UsageError
from ._progress import Progress, check_report
from ._retry import RetryPolicy
from ._settings import check_time_limit
from ._shield import shielded
from ._state import StartDecision, TaskRecord, TaskState, refuse_start
from ._telemetry import TaskSpan
from ._threads import Interruptible, thread_calls
from ._types import AbortReason, check_labels, check_name, check_task_id

T = TypeVar("T")

if TYPE_CHECKING:
    from ._runtime import Host, Runtime

logger = logging.getLogger("aioabort.scope")

#: Progress flushes in flight (kept referenced until done).
_background: set[asyncio.Task[None]] = set()

_current_scope: contextvars.ContextVar[AbortScope | None] = contextvars.ContextVar(
    "aioabort_current_scope", default=None
)


def _parent_scope() -> AbortScope | None:
    return _current_scope.get()


def _enclosing_aborted(scope: AbortScope | None) -> bool:
    """Whether an abort scope around this one was aborted (its cancellation explains ours)."""
    while scope is not None:
        if scope.is_aborted():
            return True
        scope = scope._enclosing
    return False


@final
class AbortScope:
    """An abortable block of code, tied to a task id; see :func:`abortable`.

    Example::

        async with aioabort.abortable("report-42") as scope:
            for chunk in chunks:
                await process(chunk)          # cancelled here once aborted
        # raises TaskAborted("report-42", reason) if an abort stopped the body

    :ivar id: the task id.
    :ivar aborted: True once the body was actually stopped by an abort.
    :ivar reason: the first abort reason seen, or ``None``; set even if the body was not stopped.
    :ivar record: the task's record as the scope last wrote or read it.
    """

    __slots__ = (
        "_adopt",
        "_app",
        "_body_running",
        "_callbacks",
        "_cancel_scope",
        "_claimed",
        "_detached",
        "_early",
        "_enclosing",
        "_escalation",
        "_ignored",
        "_labels",
        "_limit_message",
        "_loop",
        "_name",
        "_parent_id",
        "_preaborted",
        "_progress",
        "_requested",
        "_result_json",
        "_retry",
        "_retryable",
        "_runtime",
        "_suppress",
        "_telemetry",
        "_time_limit",
        "_timer",
        "_token",
        "aborted",
        "id",
        "reason",
        "record",
        "requeued",
    )

    def __init__(
        self,
        task_id: str,
        *,
        app: Host | None = None,
        suppress: bool = False,
        name: str | None = None,
        detached: bool = False,
        time_limit: float | None = None,
        adopt: bool = True,
        labels: dict[str, str] | None = None,
        _claimed: TaskRecord | None = None,
        _retryable: bool = False,
        _retry: RetryPolicy | None = None,
        _parent_id: str | None = None,
        _limit_message: str | None = None,
        _escalation: _obedience.Escalation | None = None,
    ) -> None:
        self.id: str = check_task_id(task_id)
        time_limit = check_time_limit(time_limit)
        self.aborted = False
        self.reason: AbortReason | None = None
        self.record: TaskRecord | None = None
        #: True when a retryable task cut off by shutdown went back to PENDING.
        self.requeued = False
        self._app = app
        self._time_limit = time_limit
        self._adopt = adopt
        self._labels = check_labels(labels)
        self._telemetry = TaskSpan()
        self._timer: asyncio.TimerHandle | None = None
        self._ignored: _obedience.Watch | None = None
        self._escalation = _escalation
        self._claimed = _claimed
        self._result_json: str | None = None
        self._retryable = _retryable or (_claimed is not None and _claimed.retryable)
        self._retry = _retry
        self._suppress = suppress
        self._name = None if name is None else check_name(name)
        self._detached = detached
        self._parent_id = _parent_id  # a detached scope's parent named by id (a caller's task)
        self._limit_message = _limit_message  # what its time limit's abort says, if not the usual
        self._requested = False
        self._early: list[tuple[AbortReason, int]] = []
        self._enclosing: AbortScope | None = None
        self._preaborted = False
        self._body_running = False
        self._cancel_scope: anyio.CancelScope | None = None
        self._callbacks: Callbacks | None = None
        self._runtime: Runtime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: contextvars.Token[AbortScope | None] | None = None
        self._progress: Progress | None = None

    def __repr__(self) -> str:
        return f"<AbortScope id={self.id!r} aborted={self.aborted} requested={self._requested}>"

    # -- reading the abort -------------------------------------------------------------------

    def is_aborted(self) -> bool:
        """Whether an abort was requested. A local read: cheap, and safe from any thread."""
        return self._requested

    async def checkpoint(self) -> None:
        """An await point for loops that have none: raises ``CancelledError`` once aborted."""
        await anyio.lowlevel.checkpoint()

    def time_left(self) -> float | None:
        """Seconds left before a time limit stops this block (its own or an enclosing
        scope's, whichever comes first), or ``None`` when no limit runs."""
        scope: AbortScope | None = self
        left: float | None = None
        while scope is not None:
            if scope._timer is not None and scope._loop is not None:
                ahead = max(0.0, scope._timer.when() - scope._loop.time())
                left = ahead if left is None else min(left, ahead)
            scope = scope._enclosing
        return left

    def raise_if_aborted(self) -> None:
        """Raise :class:`TaskAborted` once an abort was requested: for code that cannot await
        (a thread, a blocking loop). Sync and thread-safe. Raised out of the body, it ends the
        task ABORTED, as a cancellation would."""
        if self._requested:
            raise TaskAborted(self.id, self.reason)

    async def to_thread(
        self, fn: Callable[..., T], /, *args: Any, interrupt: bool = False, **kwargs: Any
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker thread and return its result.

        The thread sees this scope (:func:`current_scope` works there). This call waits for
        ``fn`` to return, whatever happens meanwhile (an abort, ``asyncio.timeout``, a
        TaskGroup), and the cancellation arrives at the body's next await after it: the record
        never says ABORTED while the thread runs (``asyncio.to_thread`` would leave it running).

        With ``interrupt=True`` the abort raises :class:`TaskAborted` inside the thread, at
        the next line of Python it runs (a blocking C call, such as a socket read, returns
        first); an abort requested before the call raises it as the thread starts.
        """
        call = functools.partial(fn, *args, **kwargs)
        interruptible = Interruptible(self.id) if interrupt else None
        if interruptible is not None:
            call = interruptible.wrap(call)  # type: ignore[assignment]
        stop = None if interruptible is None else self.on_abort(interruptible.interrupt)
        track = thread_calls.get()
        try:  # in a task of its own, waited for: a shield alone holds off no Task.cancel()
            return await shielded(anyio.to_thread.run_sync(call if track is None else track(call)))
        finally:
            if stop is not None:
                stop()

    def on_abort(self, callback: Callable[[AbortReason], object]) -> Callable[[], bool]:
        """Run ``callback(reason)`` on the event loop when an abort arrives.

        It is scheduled with ``loop.call_soon``, never run inline by the watcher; if the scope is
        already aborted it is scheduled at once. Exceptions are logged, not raised.

        :returns: ``stop()``, which unregisters the callback and returns True if that prevented
            it from running.
        """
        if self._callbacks is None:
            self._callbacks = Callbacks(self.id, lambda: self.reason or AbortReason())
        return self._callbacks.add(callback, now=self._requested)

    async def report(self, progress: float | None = None, message: str | None = None) -> None:
        """Store progress (0..1) and a short message on the task's record.

        Writes are rate-limited to one per :attr:`report_interval` seconds; a report inside the
        interval is kept and written when the interval ends (or when the scope exits), so the
        last value is never lost. Each write wakes the task's waiters (an SSE stream, a
        ``show --follow``), in any process that has some.

        :raises UsageError: for progress outside 0..1 or a message over 2,000 characters.
        """
        check_report(progress, message)
        runtime = self._runtime
        if runtime is None or not self._body_running:
            raise UsageError("report() is only allowed inside the scope's body")
        if self._progress is None:  # made on first use: most scopes never report
            self._progress = Progress.of(runtime, self.id, self.report_interval)
        await self._progress.report(progress, message)

    #: The shortest time between two progress writes, in seconds.
    report_interval = 0.25

    @asynccontextmanager
    async def cleanup(self, timeout: float = 5.0) -> AsyncIterator[anyio.CancelScope]:
        """Shielded, time-bounded cleanup after an abort::

            except BaseException:
                async with scope.cleanup(timeout=2):
                    await release_resources()
                raise

        The block is shielded from the abort (and other anyio cancellation) but stops after
        ``timeout`` seconds.
        """
        with anyio.move_on_after(timeout, shield=True) as cancel_scope:
            yield cancel_scope

    # -- delivery (event loop thread) --------------------------------------------------------

    def _deliver_abort(self, reason: AbortReason, attempt: int | None = None) -> None:
        if attempt is not None:
            if self.record is None:  # still starting: judged once the start is known
                self._early.append((reason, attempt))
                return
            if attempt != self.record.attempts:
                return  # meant for another run of this id (a retryable task's earlier run)
        if self.reason is None:
            self.reason = reason
        if self._requested:
            return
        self._requested = True
        self._telemetry.aborted(self.reason.code, self.reason.message)
        if not self._preaborted and self._runtime is not None and self._loop is not None:
            self._ignored = _obedience.watch(
                self._runtime,
                self.id,
                lambda: self._body_running,
                lambda: self.reason,
                self._escalation,
            )
        if self._body_running and self._cancel_scope is not None:
            self._cancel_scope.cancel(f"aioabort: task {self.id!r} aborted: {self.reason}")
        if self._callbacks is not None:
            self._callbacks.fire()

    # -- the block ---------------------------------------------------------------------------

    async def __aenter__(self) -> AbortScope:
        _runtime.require_asyncio("abortable()")
        # Keep the parts, not the App: the exit must still record the end while the App closes.
        runtime = self._runtime = _runtime.resolve(self._app)
        self._loop = asyncio.get_running_loop()
        self.record = self._claimed
        runtime.watcher.register(self)
        started = await self._start(runtime)
        self.record = started.record
        early, self._early = self._early, []
        for reason, attempt in early:
            self._deliver_abort(reason, attempt)
        try:
            refuse_start(self.id, started.decision, started.record)
        except TaskStateError:
            runtime.watcher.unregister(self)
            raise
        cancel_scope = self._cancel_scope = anyio.CancelScope()
        if started.decision is StartDecision.ABORTED_BEFORE_START:
            self._preaborted = True
            self._deliver_abort(started.record.reason or AbortReason())
            if not self._suppress:
                # The body never runs, not even up to its first await; the record already
                # says ABORTED, so there is nothing to write.
                runtime.watcher.unregister(self)
                self.aborted = True
                raise TaskAborted(self.id, self.reason)
        else:
            if started.record.reason is not None:  # started under an aborting parent
                self._deliver_abort(started.record.reason)
            if self._time_limit is not None:
                self._timer = self._loop.call_later(self._time_limit, self._time_up)
            self._telemetry.start(self.id, started.record.name)
        cancel_scope.__enter__()
        self._body_running = True
        if self._requested:
            cancel_scope.cancel(f"aioabort: task {self.id!r} aborted: {self.reason}")
        self._enclosing = _current_scope.get()
        self._token = _current_scope.set(self)
        return self

    async def _start(self, runtime: Runtime) -> StartResult:
        """Start the record (a worker's claim already did), or create it."""
        if self._claimed is not None:  # a worker already moved it PENDING -> STARTED for us
            return StartResult(StartDecision.START, self._claimed)
        parent = None if self._detached else _parent_scope()
        starting = asyncio.ensure_future(
            runtime.store.start(
                self.id,
                owner=runtime.owner,
                name=self._name,
                parent_id=parent.id if parent is not None else self._parent_id,
                adopt=self._adopt,
                labels=self._labels or None,
            )
        )
        try:
            return await shielded(starting)
        except BaseException:
            runtime.watcher.unregister(self)
            # Cancelled while the start committed: the body never runs and __aexit__ never
            # comes, so the end is recorded here (an outer cancellation).
            wrote = (
                not starting.cancelled()
                and starting.exception() is None
                and starting.result().decision in (StartDecision.CREATE, StartDecision.START)
            )
            if wrote:
                error = _ending.cancelled("cancelled while entering the scope")
                written = await _ending.finish(runtime, self.id, TaskState.FAILURE, error=error)
                self._settle(TaskState.FAILURE, written)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        runtime = self._runtime
        cancel_scope = self._cancel_scope
        assert runtime is not None and cancel_scope is not None, "scope was never entered"
        self._body_running = False
        if self._token is not None:
            _current_scope.reset(self._token)
            self._token = None
        self._telemetry.leave()
        swallowed = bool(cancel_scope.__exit__(exc_type, exc, tb))
        # raise_if_aborted() raised out of the body: stopped by the abort too.
        own = isinstance(exc, TaskAborted) and exc.task_id == self.id and self._requested
        stopped = self._stopped_by_abort(exc, swallowed, own)
        self._stop_timers()
        try:
            if self._progress is not None:
                await self._progress.flush()
            if self._preaborted:
                # Aborted while PENDING: the record is already ABORTED; nothing to write.
                self.aborted = True
            elif await self._record_end(runtime, exc, stopped, failed=not (swallowed or own)):
                return swallowed  # requeued: the run did not end
        finally:
            runtime.watcher.unregister(self)
        if own:
            return self._suppress  # its own TaskAborted goes on, unless suppressed
        if self.aborted and (exc is None or swallowed):
            if self._suppress:
                return True
            raise TaskAborted(self.id, self.reason) from None
        return swallowed

    def _stopped_by_abort(self, exc: BaseException | None, swallowed: bool, own: bool) -> bool:
        """Our scope caught its own cancellation, or an abort was asked and the body ended by
        a cancellation that an enclosing aborted scope must see. A cancellation from outside
        (a timeout, a TaskGroup) that is still under way wins even if an abort came too: it
        propagates, so the record must say the same."""
        assert self._cancel_scope is not None
        cancelled = isinstance(exc, asyncio.CancelledError) and not swallowed
        outer = cancelled and not _enclosing_aborted(self._enclosing)
        return not outer and (
            self._cancel_scope.cancelled_caught or (self._requested and cancelled) or own
        )

    def _stop_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ignored is not None:
            self._ignored.cancel()
            self._ignored = None

    async def _record_end(
        self, runtime: Runtime, exc: BaseException | None, stopped: bool, *, failed: bool
    ) -> bool:
        """Record how the body ended (through ``_ending``); returns True if it was requeued."""
        state, written = await _ending.end_of_body(
            runtime,
            self.id,
            exc if failed else None,
            stopped_by_abort=stopped,
            retryable=self._retryable,
            reason_code=self.reason.code if self.reason is not None else None,
            result_json=self._result_json,
            retry=self._retry,
            attempts=self.record.attempts if self.record is not None else 0,
        )
        if written.requeued:
            self.requeued = True
            self.aborted = False
            self.record = written.record
            self._telemetry.end(TaskState.PENDING.value, stopped_at_request=None, code=None)
            return True
        self._settle(state, written)
        by_abort = self.reason if stopped else None
        self._telemetry.end(
            state.value,
            stopped_at_request=by_abort.at if by_abort else None,
            code=by_abort.code if by_abort else None,
        )
        return False

    def _settle(self, state: TaskState, written: _ending.Written) -> None:
        """Take in what the end write gave back: the record, and the abort it names."""
        if not written.landed:  # kept and retried: the end it will write is ours
            self.aborted = state is TaskState.ABORTED
            return
        record = self.record = written.record
        if record is not None and record.state is TaskState.ABORTED and state is TaskState.ABORTED:
            self.aborted = True
            if self.reason is None:
                self.reason = record.reason
        elif record is not None and self.reason is None and record.reason is not None:
            self.reason = record.reason

    def _set_result(self, result_json: str) -> None:
        """The runner's seam: the task's JSON result, stored with a SUCCESS end."""
        self._result_json = result_json

    def _time_up(self) -> None:
        self._timer = None
        runtime = self._runtime
        if runtime is None or not self._body_running or self._requested:
            return
        reason = AbortReason(
            AbortReason.TIMEOUT,
            self._limit_message or f"time limit of {self._time_limit:g}s exceeded",
            by=f"time_limit@{runtime.owner}",
        )
        task = asyncio.get_running_loop().create_task(stop_here(runtime, self.id, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)
