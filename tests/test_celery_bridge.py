"""The Celery bridge's run of a task, in this process (no worker): what the task's thread
sees and what the store records, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading

import pytest

import aioabort
from aioabort import TaskState
from aioabort.celery._bridge import Bridge, Run

from .conftest import has_state, wait_until

pytestmark = pytest.mark.real_stores


@pytest.fixture
def bridge(store_url: str) -> Bridge:
    return Bridge(store_url, {})


async def begin(bridge: Bridge, task_id: str) -> Run:
    return await asyncio.to_thread(bridge.begin, task_id, "proj.tasks.export", "celery")


async def test_is_aborted_reads_no_store_and_turns_true_by_push(
    bridge: Bridge, app: aioabort.App
) -> None:
    try:
        run = await begin(bridge, "bridge-1")
        record = await app.handle("bridge-1").record()
        assert (record.state, record.name, record.labels) == (
            TaskState.STARTED,
            "proj.tasks.export",
            {"celery_queue": "celery"},
        )
        store = bridge.app._opened()
        assert store is not None
        before = store.store.statistics().statements
        assert not any(run.is_aborted() for _ in range(10_000))
        assert store.store.statistics().statements == before  # a local read, every time
        assert await app.handle("bridge-1").abort(reason="stop")
        await wait_until(run.is_aborted, timeout=10, what="the pushed abort")
        await asyncio.to_thread(bridge.end, run, aioabort.TaskAborted("bridge-1", None))
        record = await app.handle("bridge-1").wait(timeout=10)
        assert record.state is TaskState.ABORTED
        assert record.reason is not None and record.reason.message == "stop"
    finally:
        await asyncio.to_thread(bridge.close)


async def test_the_outcome_decides_the_end(bridge: Bridge, app: aioabort.App) -> None:
    try:
        returned = await begin(bridge, "returned")
        await app.handle("returned").abort(reason="please")
        await wait_until(returned.is_aborted, timeout=10)
        await asyncio.to_thread(bridge.end, returned, None)  # it returned all the same
        record = await app.handle("returned").wait(timeout=10)
        assert record.state is TaskState.SUCCESS and record.reason is not None

        failed = await begin(bridge, "failed")
        await asyncio.to_thread(bridge.end, failed, KeyError("gone"))
        record = await app.handle("failed").wait(timeout=10)
        assert record.state is TaskState.FAILURE
        assert record.error is not None and record.error.type == "KeyError"

        retried = await begin(bridge, "retried")
        await asyncio.to_thread(bridge.end, retried, None, retry=True)
        await wait_until(lambda: has_state(app, "retried", TaskState.PENDING), timeout=10)
        again = await begin(bridge, "retried")  # the next attempt, under the same id
        assert (await app.handle("retried").state()) is TaskState.STARTED
        await asyncio.to_thread(bridge.end, again, None)
        assert (await app.handle("retried").wait(timeout=10)).state is TaskState.SUCCESS

        await app.handle("early").abort(reason="before it started", create=True)
        with pytest.raises(aioabort.TaskAborted):
            await begin(bridge, "early")
    finally:
        await asyncio.to_thread(bridge.close)


async def test_runs_of_many_threads_share_one_app(bridge: Bridge, app: aioabort.App) -> None:
    runs: list[Run] = []

    def task(i: int) -> None:
        run = bridge.begin(f"thread-{i}", "proj.tasks.export", None)
        runs.append(run)
        bridge.end(run, None)

    try:
        threads = [threading.Thread(target=task, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        assert len(runs) == 8 and all(run.scope is not None for run in runs)
        for i in range(8):
            assert (await app.handle(f"thread-{i}").wait(timeout=10)).state is TaskState.SUCCESS
    finally:
        await asyncio.to_thread(bridge.close)
