"""Whether a task obeys its abort (guarantee G16): when the abort reaches a running scope, the
store records when (``abort_delivered_at``), and a warning is logged if the body still runs
``ignored_abort_after`` seconds later."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._errors import AioabortError
from ._shield import shielded

if TYPE_CHECKING:
    from ._runtime import Runtime

logger = logging.getLogger("aioabort.scope")

#: Delivery notes in flight (kept referenced until done).
_notes: set[asyncio.Task[None]] = set()


def watch(
    runtime: Runtime,
    task_id: str,
    running: Callable[[], bool],
    code: Callable[[], str | None],
) -> asyncio.TimerHandle:
    """The abort reached the scope of ``task_id``: note it in the store, and warn later if
    ``running()`` is still true. Returns the warning's timer (cancel it when the body ends)."""
    loop = asyncio.get_running_loop()
    note = loop.create_task(_note_delivered(runtime, task_id))
    _notes.add(note)
    note.add_done_callback(_notes.discard)
    after = runtime.ignored_abort_after
    return loop.call_later(after, _warn_ignored, task_id, after, running, code)


async def _note_delivered(runtime: Runtime, task_id: str) -> None:
    try:
        await shielded(runtime.store.mark_delivered(task_id, owner=runtime.owner))
    except AioabortError:
        logger.debug("could not record the abort's delivery", exc_info=True)


def _warn_ignored(
    task_id: str, after: float, running: Callable[[], bool], code: Callable[[], str | None]
) -> None:
    if not running():
        return
    logger.warning(
        "task %s ignores its abort: still running %gs after it was delivered",
        task_id,
        after,
        extra={"action": "abort_ignored", "task_id": task_id, "seconds": after, "code": code()},
    )
