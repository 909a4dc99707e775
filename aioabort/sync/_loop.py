"""One private event loop per process, on a thread of its own, for callers that do not await.

Sync code (a Django view, a script, a Celery worker) hands coroutines to the loop and blocks
until they are done. The loop belongs to the process that started it: a child made by
``fork()`` (Celery's prefork pool, gunicorn's workers) inherits a copy of the parent's memory
but none of its threads, so the first call in the child starts the child's own loop, and what
was opened on the parent's loop is left alone (never closed from the child: its connections'
sockets are the parent's too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .._errors import BlockingCallInEventLoop

T = TypeVar("T")


class LoopThread:
    """An event loop running forever on a daemon thread of this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="aioabort-sync-loop", daemon=True
        )
        self._thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    @property
    def thread_id(self) -> int | None:
        return self._thread.ident

    def run(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        """Run ``coro`` on the loop and return its result, blocking this thread until then.
        If this thread is interrupted (``KeyboardInterrupt``), the coroutine is cancelled.

        :raises BlockingCallInEventLoop: when called from a thread that runs an event loop.
        """
        try:
            check_not_in_loop(what)
        except BaseException:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


def check_not_in_loop(what: str) -> None:
    """:raises BlockingCallInEventLoop: when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise BlockingCallInEventLoop(
        f"{what} blocks until it is done, but it was called from inside a running event loop "
        "(it would stop that loop, or deadlock it): in async code use aioabort.App and await "
        "its methods, or run this call in a thread (asgiref's sync_to_async, "
        "asyncio.to_thread)"
    )


_lock = threading.Lock()
_current: LoopThread | None = None
#: What a forked child inherited from its parent's loop: kept referenced, never used or
#: closed (closing would act on the parent's connections; collecting would warn).
_inherited: list[object] = []


def loop_thread() -> LoopThread:
    """This process's loop thread, started on first use (again in a forked child)."""
    global _current
    current = _current
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            if _current is not None:
                _inherited.append(_current)
            _current = LoopThread()
        return _current


def fork_lock() -> threading.Lock:
    """The lock that orders this process's switch away from what it inherited."""
    return _lock


def inherit(obj: object) -> None:
    """Keep ``obj`` (made on the parent's loop) alive and untouched in a forked child."""
    _inherited.append(obj)


def _after_fork_in_child() -> None:
    # The child holds the lock's state as the forking thread saw it: a lock another thread
    # held at the fork would stay locked forever. A fresh one is free.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
