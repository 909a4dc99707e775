"""aioabort's own store calls run to completion, whatever cancels the caller (guarantee G5)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def shielded(call: Awaitable[T]) -> T:
    """Run one of aioabort's own store calls to completion, whatever cancels the caller.

    The call runs in its own task, so neither an anyio cancel scope (blocked by a shield) nor a
    native ``Task.cancel()`` (caught while waiting, re-raised afterwards) can interrupt it half
    way. The store bounds its own time (busy timeouts, command timeouts).

    A caller that must know what a write did even when it is cancelled (a scope whose start
    committed just as its entry was cancelled) passes a task it made itself and reads it after
    catching the cancellation.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(call)
    pending_cancel: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                pending_cancel = exc
    if pending_cancel is not None:
        if not task.cancelled():
            task.exception()  # retrieved, so a failed write does not warn unobserved
        raise pending_cancel
    return task.result()
