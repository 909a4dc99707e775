"""Rate-limited progress: a scope's ``report()`` writes at most once per interval, and the
last value reported inside an interval is written when it ends (or when the scope exits), so
it is never lost. A write wakes the task's waiters only (on PostgreSQL, a notification heard
by the processes that have waiters)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._errors import AioabortError, UsageError
from ._shield import shielded
from ._types import MAX_REASON_MESSAGE_LENGTH, check_text

if TYPE_CHECKING:
    from ._runtime import Runtime

logger = logging.getLogger("aioabort.scope")

#: Writes one report: ``write(progress, message)``.
Write = Callable[[float | None, str | None], Awaitable[object]]

#: Delayed writes in flight (kept referenced until done).
_background: set[asyncio.Task[None]] = set()


def check_report(progress: object, message: object) -> None:
    """:raises UsageError: for progress outside 0..1.
    :raises InvalidText: for a message over 2,000 characters or not text (NUL...)."""
    if progress is not None and (
        isinstance(progress, bool)
        or not isinstance(progress, int | float)
        or not 0.0 <= progress <= 1.0
    ):
        raise UsageError(f"progress must be a number within 0..1, got {progress!r}")
    if message is not None:
        check_text(message, "a progress message", MAX_REASON_MESSAGE_LENGTH)


class Progress:
    """One scope's progress writes, at most one per ``interval`` seconds."""

    __slots__ = ("_flush_handle", "_interval", "_last", "_pending", "_task_id", "_write")

    @classmethod
    def of(cls, runtime: Runtime, task_id: str, interval: float) -> Progress:
        """The progress of this process's run of ``task_id``, written to its store."""
        store, owner = runtime.store, runtime.owner

        def write(progress: float | None, message: str | None) -> Awaitable[bool]:
            return store.report(task_id, owner=owner, progress=progress, message=message)

        return cls(task_id, write, interval)

    def __init__(self, task_id: str, write: Write, interval: float) -> None:
        self._task_id = task_id
        self._write = write
        self._interval = interval
        self._last = float("-inf")
        self._pending: tuple[float | None, str | None] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None

    async def report(self, progress: float | None, message: str | None) -> None:
        now = time.monotonic()
        wait = self._last + self._interval - now
        if wait > 0:
            self._pending = (progress, message)
            if self._flush_handle is None:
                loop = asyncio.get_running_loop()
                self._flush_handle = loop.call_later(wait, self._flush_soon)
            return
        self._last = now
        self._pending = None
        await shielded(self._write(progress, message))

    def _flush_soon(self) -> None:
        self._flush_handle = None
        if self._pending is not None:
            task = asyncio.get_running_loop().create_task(self.flush())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def flush(self) -> None:
        """Write the report held back by the rate limit, if any (the scope's exit calls it)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._last = time.monotonic()
        try:
            await shielded(self._write(*pending))
        except AioabortError:
            logger.warning(
                "could not store progress",
                extra={"action": "report_failed", "task_id": self._task_id},
            )
