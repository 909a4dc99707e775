"""How a run ends: the one writer of every end and every requeue of a run of this process,
and of the expiry of queued tasks.

A scope's exit, a task name this worker does not know, a task the worker gives up on: each
decides here whether the run goes back to the queue (:func:`_state.should_requeue`, here only)
and writes its end through :func:`_write`, shielded (a cancelled caller still records it). A
write the store cannot take now is kept on the App's redo list and retried until it lands: a
live owner's record must not stay running. Ends of runs owned by a process that died are the
reaper's (``_liveness``), written by the store in one statement. A queued task past its
``expires_at`` is ended here (:func:`expire`) by whichever process sees it first: a worker
whose timer found it, the fleet's reaper, a waiter on that task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

from ._errors import AioabortError
from ._retry import RetryPolicy
from ._shield import shielded
from ._state import TaskRecord, TaskState, end_state, should_requeue
from ._types import MAX_REASON_MESSAGE_LENGTH, ErrorInfo, utcnow

if TYPE_CHECKING:
    from ._backend import Store
    from ._runtime import Runtime

logger = logging.getLogger("aioabort")


class Written(NamedTuple):
    """What became of an end write.

    :ivar landed: the store took it now (else it is kept and retried in the background).
    :ivar record: the record after the write; ``None`` when it did not land, or when the
        record was no longer this owner's running one (reaped meanwhile).
    :ivar requeued: the run went back to PENDING instead of ending.
    """

    landed: bool
    record: TaskRecord | None
    requeued: bool = False


def cancelled(detail: str, kind: str = "CancelledError") -> ErrorInfo:
    """The error of a run stopped by a cancellation that was not its abort."""
    return ErrorInfo(ErrorInfo.CANCELLED, kind, detail)


def unknown_task(name: str | None, known: Sequence[str]) -> ErrorInfo:
    """The error of a claimed run whose task name this worker does not know."""
    names = ", ".join(sorted(known)) or "none"
    message = f"no task named {name!r} is registered in this worker (it knows: {names})"
    return ErrorInfo(ErrorInfo.EXCEPTION, "UnknownTask", message[:MAX_REASON_MESSAGE_LENGTH])


#: The error of a run the worker gave up on: it did not stop after its abort.
KILLED = ErrorInfo(
    ErrorInfo.KILLED,
    "",
    "the worker exited while the task still ran: it did not stop after its abort",
)


async def finish(
    runtime: Runtime,
    task_id: str,
    state: TaskState,
    *,
    error: ErrorInfo | None = None,
    result_json: str | None = None,
) -> Written:
    """Record that this process's run of ``task_id`` ended in ``state``."""
    store, owner = runtime.store, runtime.owner

    def write() -> Awaitable[TaskRecord | None]:
        return store.finish(task_id, owner=owner, state=state, result_json=result_json, error=error)

    return await _write(runtime, task_id, write, "finish_failed")


async def requeue(runtime: Runtime, task_id: str) -> Written:
    """Put this process's run of ``task_id`` back on its queue (PENDING, a fresh run)."""
    store, owner = runtime.store, runtime.owner

    def write() -> Awaitable[TaskRecord | None]:
        return store.requeue(task_id, owner=owner)

    written = await _write(runtime, task_id, write, "requeue_failed")
    return written._replace(requeued=True)


async def retry(runtime: Runtime, task_id: str, delay: float, error: ErrorInfo) -> Written:
    """Put this process's run of ``task_id`` back on its queue for another attempt in
    ``delay`` seconds (``not_before``), keeping ``error``, the attempt's. Only a run with no
    abort request goes back: one that got an abort meanwhile ends FAILURE instead."""
    store, owner = runtime.store, runtime.owner
    not_before = utcnow() + timedelta(seconds=delay)

    def write() -> Awaitable[TaskRecord | None]:
        return store.retry(task_id, owner=owner, not_before=not_before, error=error)

    written = await _write(runtime, task_id, write, "retry_failed")
    if written.landed and (written.record is None or written.record.state is not TaskState.PENDING):
        return await finish(runtime, task_id, TaskState.FAILURE, error=error)
    return written._replace(requeued=True)


async def conclude(
    runtime: Runtime,
    task_id: str,
    state: TaskState,
    *,
    retryable: bool,
    stopped_by_abort: bool,
    reason_code: str | None,
    error: ErrorInfo | None = None,
    result_json: str | None = None,
    retry_after: float | None = None,
) -> Written:
    """End a run in ``state``, or requeue it where the requeue rule says so (a retryable
    task stopped by its worker's shutdown), or retry it in ``retry_after`` seconds (a run
    that raised an exception its task retries on, with retries left: :mod:`._retry`)."""
    if should_requeue(
        retryable=retryable, stopped_by_abort=stopped_by_abort, reason_code=reason_code
    ):
        return await requeue(runtime, task_id)
    if retry_after is not None and error is not None:
        return await retry(runtime, task_id, retry_after, error)
    return await finish(runtime, task_id, state, error=error, result_json=result_json)


async def end_of_body(
    runtime: Runtime,
    task_id: str,
    exc: BaseException | None,
    *,
    stopped_by_abort: bool,
    retryable: bool,
    reason_code: str | None,
    result_json: str | None,
    retry: RetryPolicy | None = None,
    attempts: int = 0,
) -> tuple[TaskState, Written]:
    """Record how a scope's body ended: stopped by its abort (ABORTED), raised ``exc`` (or was
    cancelled from outside: FAILURE), else SUCCESS with ``result_json``; or requeue it (the
    requeue rule), or retry it (``retry``'s rule, for attempt number ``attempts``)."""
    state = end_state(stopped_by_abort=stopped_by_abort, failed=exc is not None)
    error = None
    if state is TaskState.FAILURE and exc is not None:
        error = (
            cancelled("cancelled from outside the scope", type(exc).__qualname__)
            if isinstance(exc, asyncio.CancelledError)
            else ErrorInfo.from_exception(exc)
        )
    written = await conclude(
        runtime,
        task_id,
        state,
        retryable=retryable,
        stopped_by_abort=stopped_by_abort,
        reason_code=reason_code,
        error=error,
        result_json=result_json if state is TaskState.SUCCESS else None,
        retry_after=retry.delay(attempts)
        if retry is not None
        and retry.retries(
            exc, attempts=attempts, aborted=stopped_by_abort or reason_code is not None
        )
        else None,
    )
    return state, written


async def expire(store: Store, owner: str, task_ids: Sequence[str] | None = None) -> list[str]:
    """End queued tasks past their ``expires_at`` (``task_ids``, or any): ABORTED, code
    ``expired``; they never run. A compare-and-set, safe for any number of processes at once;
    a store that cannot take it now is asked again by the next one to look."""
    try:
        ids = await shielded(store.expire(task_ids, by=f"expiry@{owner}"))
    except AioabortError:
        logger.warning(
            "could not end expired tasks; they are ended at the next look",
            exc_info=True,
            extra={"action": "expire_failed"},
        )
        return []
    if ids:
        logger.info(
            "%d queued task(s) expired before they started",
            len(ids),
            extra={"action": "tasks_expired", "task_ids": ids},
        )
    return ids


async def _write(
    runtime: Runtime,
    task_id: str,
    write: Callable[[], Awaitable[TaskRecord | None]],
    action: str,
) -> Written:
    try:
        return Written(True, await shielded(write()))
    except AioabortError:
        logger.warning(
            "could not record how task %s ended; retrying in the background",
            task_id,
            exc_info=True,
            extra={"action": action, "task_id": task_id},
        )
        runtime.redo.add(task_id, write)
        return Written(False, None)
