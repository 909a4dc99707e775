"""Writes of this process's own records that failed, retried until they land.

A scope that cannot record how its task ended (a full disk, a lock held past the write budget,
a database restart longer than the store's own retries) must not leave the record STARTED for
the life of the process: the heartbeat keeps the owner alive, so nothing would ever reap it.
The write is kept here and retried with backoff until it lands or the App closes. Only writes
that are safe to repeat come here: compare-and-sets guarded by owner and state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ._backoff import Backoff
from ._errors import AioabortError
from ._shield import shielded

logger = logging.getLogger("aioabort.redo")

#: Makes one attempt at a write.
Write = Callable[[], Awaitable[object]]


class Redo:
    """The failed writes of one open App, keyed by task id (a later write replaces an earlier
    one for the same task). Created by the App; scopes hand it what they could not record."""

    #: First and longest wait between two rounds of retries, in seconds.
    first_delay = 0.1
    max_delay = 5.0

    def __init__(self) -> None:
        self._writes: dict[str, Write] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.retries = 0

    def __len__(self) -> int:
        return len(self._writes)

    def pending(self) -> list[str]:
        """The task ids whose write has not landed yet."""
        return list(self._writes)

    def add(self, task_id: str, write: Write) -> None:
        """Keep ``write`` and retry it in the background until it lands."""
        if self._closed:  # the App closed: its release (or another App's reaper) ends it
            return
        self._writes[task_id] = write
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._retry_forever(), name="aioabort-redo"
            )

    async def _retry_forever(self) -> None:
        backoff = Backoff(self.first_delay, self.max_delay)
        while self._writes:
            await asyncio.sleep(backoff.next())
            if not await self._round():
                backoff.reset()

    async def _round(self) -> int:
        """One attempt at every kept write; returns how many failed again."""
        failed = 0
        for task_id, write in list(self._writes.items()):
            self.retries += 1
            try:
                await shielded(write())
            except AioabortError:
                failed += 1
                continue
            if self._writes.get(task_id) is write:
                del self._writes[task_id]
            logger.info(
                "a write that had failed was recorded on retry",
                extra={"action": "redo_landed", "task_id": task_id},
            )
        return failed

    async def aclose(self) -> list[str]:
        """Stop retrying after one last attempt at each write; returns the ids still unsent
        (the store's release of this owner then ends those tasks as lost)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writes:
            await self._round()
        left = list(self._writes)
        self._writes.clear()
        return left
