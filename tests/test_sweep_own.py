"""The abort sweep run over aioabort's own cleanup paths: scope.to_thread, scope.cleanup(),
the worker's task wrapper and the web middleware in each of its modes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

import aioabort
from aioabort.testing import MemoryStore, abort_sweep

# -- scope.to_thread ---------------------------------------------------------------------------


async def test_to_thread_under_a_native_timeout_waits_for_its_thread() -> None:
    """An outer asyncio cancellation (asyncio.timeout, wait_for, a TaskGroup) must not return
    from scope.to_thread while its thread runs: the scope would record its end before the
    thread's work was done."""
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.05)
        finished.set()

    async def body(scope: aioabort.AbortScope) -> None:
        finished.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await scope.to_thread(work)
        assert finished.is_set(), "scope.to_thread returned while its thread still ran"

    report = await abort_sweep(body)
    assert report.ok, str(report)


async def test_to_thread_waits_for_its_thread_when_its_task_is_cancelled() -> None:
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.05)
        finished.set()

    app = aioabort.App(store=MemoryStore())
    async with app, aioabort.abortable("thread-under-cancel", app=app) as scope:
        task = asyncio.create_task(scope.to_thread(work))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()
