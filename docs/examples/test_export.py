"""Testing an application's abortable code with no database: App(store=MemoryStore()).

Run it with pytest (pytest-asyncio in auto mode, as aioabort's own suite uses):

    pytest docs/examples/test_export.py
"""

from __future__ import annotations

import asyncio

import pytest

import aioabort
from aioabort.testing import MemoryStore


async def export(rows: list[str], written: list[str]) -> None:
    """The application's code: writes rows until it is aborted."""
    scope = aioabort.current_scope()
    for i, row in enumerate(rows):
        written.append(row)
        await scope.report((i + 1) / len(rows))
        await asyncio.sleep(0.01)


async def test_an_export_stops_when_aborted() -> None:
    written: list[str] = []
    async with aioabort.App(store=MemoryStore()) as app:
        started = asyncio.Event()

        async def run() -> None:
            async with aioabort.abortable("export-1", app=app):
                started.set()
                await export([f"row {i}" for i in range(1000)], written)

        task = asyncio.create_task(run())
        await started.wait()
        assert await app.handle("export-1").abort(reason="user clicked cancel") is True
        with pytest.raises(aioabort.TaskAborted) as info:
            await task
        record = await app.handle("export-1").wait(timeout=5)

    assert info.value.reason is not None and info.value.reason.message == "user clicked cancel"
    assert record.state is aioabort.TaskState.ABORTED
    assert len(written) < 1000  # it stopped part way


async def test_a_queued_task_aborted_before_it_runs_never_runs() -> None:
    app = aioabort.App(store=MemoryStore())
    ran: list[int] = []

    @app.task
    async def job(n: int) -> int:
        ran.append(n)
        return n

    async with app:
        handle = await job.delay(7)
        await handle.abort("not needed any more")
        worker = aioabort.Worker(app)
        running = asyncio.create_task(worker.run())
        with pytest.raises(aioabort.TaskAborted):
            await handle.result(timeout=5)
        worker.stop()
        await running
    assert ran == []
