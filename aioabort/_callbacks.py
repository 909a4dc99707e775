"""A scope's ``on_abort`` callbacks: scheduled on the event loop when the abort arrives (never
run inline by the watcher), each at most once; their exceptions are logged, not raised."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ._types import AbortReason

logger = logging.getLogger("aioabort.scope")


class _Registration:
    __slots__ = ("callback", "handle", "ran", "stopped")

    def __init__(self, callback: Callable[[AbortReason], object]) -> None:
        self.callback = callback
        self.handle: asyncio.Handle | None = None
        self.ran = False
        self.stopped = False


class Callbacks:
    """The callbacks of one scope (made on the first ``on_abort``: most scopes have none)."""

    __slots__ = ("_reason", "_registered", "_task_id")

    def __init__(self, task_id: str, reason: Callable[[], AbortReason]) -> None:
        self._task_id = task_id
        self._reason = reason
        self._registered: list[_Registration] = []

    def add(self, callback: Callable[[AbortReason], object], *, now: bool) -> Callable[[], bool]:
        """Register ``callback`` (scheduled at once when ``now``); returns its ``stop()``."""
        registration = _Registration(callback)
        self._registered.append(registration)
        if now:
            self._schedule(registration)

        def stop() -> bool:
            if registration.ran or registration.stopped:
                return False
            registration.stopped = True
            if registration.handle is not None:
                registration.handle.cancel()
            self._registered.remove(registration)
            return True

        return stop

    def fire(self) -> None:
        """The abort arrived: schedule every callback not scheduled yet."""
        for registration in self._registered:
            if registration.handle is None:
                self._schedule(registration)

    def _schedule(self, registration: _Registration) -> None:
        loop = asyncio.get_running_loop()
        registration.handle = loop.call_soon(self._run, registration)

    def _run(self, registration: _Registration) -> None:
        if registration.stopped:
            return
        registration.ran = True
        try:
            registration.callback(self._reason())
        except Exception:
            logger.exception(
                "on_abort callback failed",
                extra={"action": "callback_failed", "task_id": self._task_id},
            )
