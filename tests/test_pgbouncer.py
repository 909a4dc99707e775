"""PostgreSQL behind a transaction-pooling PgBouncer (a real one): nothing can LISTEN, so the
store polls (``aioabort_pooler=transaction``), and every abort, end and task still arrives."""

from __future__ import annotations

import asyncio

import pytest

import aioabort
from aioabort import TaskState
from aioabort.backends.postgres import POLL_ONLY_INTERVAL

from .conftest import wait_until
from .test_cross_process import child, read_line
from .test_postgres import store_of

pytestmark = pytest.mark.postgres


async def test_poll_only_mode_listens_to_nothing(pgbouncer_url: str) -> None:
    async with aioabort.App(pgbouncer_url) as app:
        store = store_of(app)
        assert store.poll_only and store.poll_interval == POLL_ONLY_INTERVAL
        await app.create("waited")
        waiter = asyncio.create_task(app.handle("waited").wait(timeout=30))
        await wait_until(lambda: app.watcher.statistics().waited_ids == 1)
        await app.handle("waited").abort("stop")
        assert (await waiter).state is TaskState.ABORTED
        # The abort and the end were both notified, and neither was heard: the poll found them.
        assert app.watcher.statistics().notifications == 0


async def test_every_abort_from_another_process_is_delivered(pgbouncer_url: str) -> None:
    """Aborts sent through the pooler by another App reach every scope open here, by the poll
    alone; and a waiter here sees each of those tasks end."""
    count = 30
    async with aioabort.App(pgbouncer_url) as here, aioabort.App(pgbouncer_url) as there:
        entered = 0

        async def body(i: int) -> aioabort.AbortReason | None:
            nonlocal entered
            try:
                async with aioabort.abortable(f"s-{i}", app=here):
                    entered += 1
                    await asyncio.sleep(60)
            except aioabort.TaskAborted as exc:
                return exc.reason
            return None

        bodies = [asyncio.create_task(body(i)) for i in range(count)]
        await wait_until(lambda: entered == count)
        waiters = [
            asyncio.create_task(here.handle(f"s-{i}").wait(timeout=30)) for i in range(count)
        ]
        await asyncio.gather(*(there.handle(f"s-{i}").abort(f"no. {i}") for i in range(count)))
        reasons = await asyncio.wait_for(asyncio.gather(*bodies), 30)
        assert [r.message if r else None for r in reasons] == [f"no. {i}" for i in range(count)]
        records = await asyncio.gather(*waiters)
        assert {r.state for r in records} == {TaskState.ABORTED}
        assert here.watcher.statistics().notifications == 0


@pytest.mark.real_stores
async def test_an_abort_reaches_another_process_through_the_pooler(pgbouncer_url: str) -> None:
    async with aioabort.App(pgbouncer_url) as app:
        async with child(pgbouncer_url, "pooled") as proc:
            assert await read_line(proc) == "READY"
            assert await app.handle("pooled").abort("through pgbouncer") is True
            assert await read_line(proc) == "ABORTED user through pgbouncer"
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        record = await app.handle("pooled").wait(timeout=10)
    assert record.state is TaskState.ABORTED


async def test_a_worker_runs_queued_tasks_through_the_pooler(pgbouncer_url: str) -> None:
    """Many statements at once over three server connections: no statement is prepared by
    name, so none is missing when the next transaction lands on another connection."""
    async with aioabort.App(pgbouncer_url) as app:

        @app.task
        async def double(x: int) -> int:
            await asyncio.sleep(0)
            return 2 * x

        worker = aioabort.Worker(app, concurrency=10)
        running = asyncio.create_task(worker.run())
        handles = await asyncio.gather(*(double.delay(i) for i in range(40)))
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
        worker.stop()
        await running
    assert results == [2 * i for i in range(40)]


def test_an_unknown_pooler_mode_is_a_clear_error() -> None:
    with pytest.raises(aioabort.InvalidURL, match="aioabort_pooler must be 'session'"):
        aioabort.App("postgresql://u@h/db?aioabort_pooler=statement")
