"""Whether a task obeys its abort (guarantees G16, G25): when the abort reaches a running scope,
the store records when (``abort_delivered_at``); if the body still runs ``abort_grace`` seconds
later (the task's, else ``App(ignored_abort_after=)``) the task is marked ignored: an
``abort_ignored`` event on its timeline, the counter ``aioabort.aborts.ignored`` and a warning
naming the task, the reason and how long. A worker with ``kill_stubborn`` gives up on it later
still (:class:`Escalation`). Cost follows the work: one timer per abort delivered, none else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _telemetry
from ._errors import AioabortError
from ._shield import shielded
from ._types import reason_text

if TYPE_CHECKING:
    from ._runtime import Runtime
    from ._types import AbortReason

logger = logging.getLogger("aioabort.scope")

#: Store writes in flight (kept referenced until done).
_notes: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class Escalation:
    """What happens to a run that keeps running after its abort reached it.

    :ivar grace: seconds before it is marked ignored (``None``: the App's
        ``ignored_abort_after``); a task's ``abort_grace``.
    :ivar give_up_after: seconds (from the delivery) before ``give_up(task_id)`` is called,
        a worker's ``kill_stubborn``; ``None``: never.
    """

    grace: float | None = None
    give_up_after: float | None = None
    give_up: Callable[[str], None] | None = None


class Watch:
    """The timers of one delivered abort; :meth:`cancel` them when the body ends."""

    __slots__ = ("_timers",)

    def __init__(self, timers: list[asyncio.TimerHandle]) -> None:
        self._timers = timers

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def watch(
    runtime: Runtime,
    task_id: str,
    running: Callable[[], bool],
    reason: Callable[[], AbortReason | None],
    escalation: Escalation | None = None,
) -> Watch:
    """The abort reached the scope of ``task_id``: note it in the store; mark the task ignored
    if ``running()`` is still true after its grace, and give up on it after
    ``escalation.give_up_after``."""
    loop = asyncio.get_running_loop()
    _spawn(loop, _note_delivered(runtime, task_id))
    grace = runtime.ignored_abort_after
    if escalation is not None and escalation.grace is not None:
        grace = escalation.grace
    timers = [loop.call_later(grace, _ignored, runtime, task_id, grace, running, reason)]
    give_up_after = None if escalation is None else escalation.give_up_after
    if give_up_after is not None:
        timers.append(loop.call_later(give_up_after, _stubborn, task_id, running, escalation))
    return Watch(timers)


def _spawn(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
    note = loop.create_task(coro)
    _notes.add(note)
    note.add_done_callback(_notes.discard)


async def _note_delivered(runtime: Runtime, task_id: str) -> None:
    try:
        await shielded(runtime.store.mark_delivered(task_id, owner=runtime.owner))
    except AioabortError:
        logger.debug("could not record the abort's delivery", exc_info=True)


async def note(runtime: Runtime, task_id: str, kind: str, detail: str) -> None:
    """Put ``kind`` on the timeline of ``task_id`` (a run of this process); best effort."""
    try:
        await shielded(
            runtime.store.note_event(task_id, owner=runtime.owner, kind=kind, detail=detail)
        )
    except AioabortError:
        logger.debug("could not record %s on the timeline", kind, exc_info=True)


def _ignored(
    runtime: Runtime,
    task_id: str,
    after: float,
    running: Callable[[], bool],
    reason: Callable[[], AbortReason | None],
) -> None:
    if not running():
        return
    why = reason()
    code = why.code if why is not None else None
    logger.warning(
        "task %s ignores its abort (%s): still running %gs after it was delivered",
        task_id,
        reason_text(why),
        after,
        extra={"action": "abort_ignored", "task_id": task_id, "seconds": after, "code": code},
    )
    _telemetry.abort_ignored(code or "unknown")
    detail = f"still running {after:g}s after the abort reached it ({reason_text(why)})"
    _spawn(asyncio.get_running_loop(), note(runtime, task_id, "abort_ignored", detail))


def _stubborn(task_id: str, running: Callable[[], bool], escalation: Escalation | None) -> None:
    if running() and escalation is not None and escalation.give_up is not None:
        escalation.give_up(task_id)
