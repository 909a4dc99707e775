"""Record an abort, then deliver it here and to the children, in one place.

The request commits before anything is cancelled, so the record never lags the body. Then
the scope open in this process for that id (if any) and the scopes of every unfinished child
the store aborted with it are cancelled at once, without waiting for the watcher to see the
change. Used by :meth:`AbortHandle.abort`, a scope's time limit, the worker's and the App's
shutdown. :func:`catch_up` delivers an abort that another process heard of first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._backend import AbortOutcome
from ._errors import AioabortError
from ._shield import shielded
from ._state import TaskState
from ._telemetry import abort_requested
from ._types import AbortReason
from ._watcher import Watcher

if TYPE_CHECKING:
    from ._runtime import Runtime
    from ._scope import AbortScope

logger = logging.getLogger("aioabort")


async def record_and_deliver(runtime: Runtime, task_id: str, reason: AbortReason) -> AbortOutcome:
    """Record an abort of ``task_id`` (shielded), then deliver it to the scopes open here.

    ``runtime`` stays usable while its App closes: an App that starts closing while the
    request commits does not turn a recorded abort into an error (its own shutdown stops its
    scopes; the delivery finds none left, or one already stopping).

    :raises StoreError: when the request cannot be recorded (nothing is delivered then).
    """
    store, watcher = runtime.store, runtime.watcher
    outcome = await shielded(store.request_abort(task_id, reason))
    if outcome.recorded:
        abort_requested(reason.code)
        _deliver(watcher, task_id, reason, outcome)
    return outcome


async def record_and_deliver_many(
    runtime: Runtime, task_ids: Sequence[str], reason: AbortReason
) -> list[str]:
    """:func:`record_and_deliver` for a batch (the store records it in one go); returns the
    ids whose abort this call recorded."""
    store, watcher = runtime.store, runtime.watcher
    outcomes = await shielded(store.request_aborts(task_ids, reason))
    recorded = []
    for task_id, outcome in zip(task_ids, outcomes, strict=True):
        if outcome.recorded:
            abort_requested(reason.code)
            _deliver(watcher, task_id, reason, outcome)
            recorded.append(task_id)
    return recorded


async def abort_matching(
    runtime: Runtime,
    *,
    states: Sequence[TaskState],
    name: str | None,
    labels: dict[str, str],
    reason: AbortReason,
    dry_run: bool,
    batch: int,
) -> list[str]:
    """Abort every task in ``states`` with that name and labels, ``batch`` at a time; returns
    the ids aborted (with ``dry_run``, that would be), in id order.

    The ids are read first (aborting changes states), page after page by id: a task that ends
    meanwhile shifts no page, so every task that matched all along is found.
    """
    matching: list[str] = []
    while states:
        page = await runtime.store.list_ids(
            states=states,
            name=name,
            labels=labels or None,
            after=matching[-1] if matching else None,
            limit=batch,
        )
        matching += page
        if len(page) < batch:
            break
    if dry_run:
        return matching
    aborted: list[str] = []
    for start in range(0, len(matching), batch):
        aborted += await record_and_deliver_many(runtime, matching[start : start + batch], reason)
    return aborted


async def stop_here(runtime: Runtime, task_id: str, reason: AbortReason) -> None:
    """An abort that must stop this process's scope for ``task_id`` even when the store cannot
    record it (a time limit, a shutdown): the failure is logged and the scope is stopped with
    ``reason`` all the same; a task already aborting is stopped with its first reason."""
    store, watcher = runtime.store, runtime.watcher
    try:
        outcome = await shielded(store.request_abort(task_id, reason))
    except AioabortError:
        logger.exception(
            "could not record the abort; stopping the task here all the same",
            extra={"action": "abort_failed", "task_id": task_id, "code": reason.code},
        )
        watcher.deliver(task_id, reason)
        return
    if outcome.recorded:
        abort_requested(reason.code)
    _deliver(watcher, task_id, reason, outcome)


async def catch_up(scope: AbortScope | None) -> None:
    """Deliver to ``scope``, and to the scopes around it, an abort already recorded on their
    tasks, without waiting for the watcher to see it: for when another process told of it
    first (a called service answered that the abort stopped it). One read per scope not yet
    aborted, up to the first whose task has no abort (an abort reaches the children)."""
    while scope is not None:
        runtime = scope._runtime
        if runtime is not None and not scope.is_aborted():
            record = await shielded(runtime.store.get(scope.id))
            if record is None or record.reason is None or record.state.is_terminal:
                return
            runtime.watcher.deliver(scope.id, record.reason, record.attempts)
        scope = scope._enclosing


def _deliver(watcher: Watcher, task_id: str, reason: AbortReason, outcome: AbortOutcome) -> None:
    record = outcome.record
    first = record.reason if record is not None and record.reason is not None else reason
    watcher.deliver(task_id, first, record.attempts if record is not None else None)
    for child in outcome.children:
        watcher.deliver(child.task_id, child.reason, child.attempt)
