"""PostgreSQL restarted mid-run: a throwaway cluster this test owns (initdb + pg_ctl as the
``postgres`` user), never the machine's server. Scopes keep running while it is down; an
abort sent after it comes back is delivered; every record ends as it should."""

from __future__ import annotations

import asyncio
import signal

import pytest

import aioabort
from aioabort import TaskState

from .conftest import Cluster

pytestmark = pytest.mark.postgres


async def test_server_restart_mid_run_loses_nothing(cluster: Cluster) -> None:
    async with (
        aioabort.App(cluster.url, poll_interval=0.2) as consumer,
        aioabort.App(cluster.url, poll_interval=0.2) as producer,
    ):
        entered = {name: asyncio.Event() for name in ("to-abort", "to-finish")}
        finish = asyncio.Event()

        async def body(name: str) -> aioabort.AbortScope:
            async with aioabort.abortable(name, app=consumer, suppress=True) as scope:
                entered[name].set()
                await finish.wait() if name == "to-finish" else await asyncio.sleep(3600)
            return scope

        tasks = {name: asyncio.create_task(body(name)) for name in entered}
        for event in entered.values():
            await event.wait()

        await asyncio.to_thread(cluster.stop)
        # While the server is down the scopes keep running, and a producer gets a clear error.
        with pytest.raises(aioabort.StoreUnavailable):
            await producer.store.get("to-abort")  # reads do not wait for the server
        assert not any(t.done() for t in tasks.values())
        await asyncio.to_thread(cluster.start)

        # Back up: an abort is recorded (the pool reconnects) and delivered (the listener
        # reconnects and re-reads every watched id)...
        assert await producer.handle("to-abort").abort("after the restart") is True
        scope = await asyncio.wait_for(tasks["to-abort"], 30)
        assert scope.aborted
        # ...and a task that finishes writes its end through a fresh connection.
        finish.set()
        await asyncio.wait_for(tasks["to-finish"], 30)
        assert consumer.watcher.statistics().reconnects >= 1
        aborted = await producer.handle("to-abort").wait(timeout=30)
        finished = await producer.handle("to-finish").wait(timeout=30)
    assert aborted.state is TaskState.ABORTED
    assert aborted.reason is not None and aborted.reason.message == "after the restart"
    assert finished.state is TaskState.SUCCESS


async def test_abort_sent_while_the_listener_reconnects_is_delivered(cluster: Cluster) -> None:
    async with aioabort.App(cluster.url, poll_interval=30) as consumer:
        entered = asyncio.Event()

        async def body() -> aioabort.AbortScope:
            async with aioabort.abortable("late", app=consumer, suppress=True) as scope:
                entered.set()
                await asyncio.sleep(3600)
            return scope

        task = asyncio.create_task(body())
        await entered.wait()
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(cluster.start)
        async with aioabort.App(cluster.url) as producer:
            assert await producer.handle("late").abort("sent around the reconnect") is True
        scope = await asyncio.wait_for(task, 30)  # no 30 s poll needed: the re-read finds it
        assert scope.aborted


async def test_restart_while_the_event_loop_is_busy_loses_no_abort(cluster: Cluster) -> None:
    """The server restarts while this process's event loop is blocked, so pooled connections
    and the listener see the server's goodbye only afterwards, all at once, under load. Every
    abort must still be recorded and delivered, every record end, and every error that leaves
    aioabort be an AioabortError."""
    count = 40
    async with (
        aioabort.App(cluster.url, poll_interval=0.2) as consumer,
        aioabort.App(cluster.url, poll_interval=0.2) as producer,
    ):
        entered = [asyncio.Event() for _ in range(count)]

        async def body(i: int) -> aioabort.AbortScope:
            async with aioabort.abortable(f"busy-{i}", app=consumer, suppress=True) as scope:
                entered[i].set()
                await asyncio.sleep(3600)
            return scope

        tasks = [asyncio.create_task(body(i)) for i in range(count)]
        for event in entered:
            await event.wait()
        # Fill both pools with connections that the restart will kill.
        await asyncio.gather(*(producer.handle(f"busy-{i}").state() for i in range(count)))
        await asyncio.gather(*(consumer.handle(f"busy-{i}").state() for i in range(count)))

        cluster.stop()  # blocking on purpose: the loop is busy through the whole restart
        cluster.start()

        results = await asyncio.gather(
            *(producer.handle(f"busy-{i}").abort("after a busy restart") for i in range(count)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(e, aioabort.AioabortError) for e in errors), errors
        # A write that is safe to repeat retries on a fresh connection: none fails here.
        assert results == [True] * count
        scopes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert all(scope.aborted for scope in scopes)
        for i in range(count):
            record = await producer.handle(f"busy-{i}").wait(timeout=30)
            assert record.state is TaskState.ABORTED, record


async def test_a_worker_started_while_the_server_is_down_waits_for_it(cluster: Cluster) -> None:
    import os

    from . import worker_app
    from .test_worker_process import worker_process

    url = f"{cluster.url}?aioabort_schema=late"
    async with aioabort.App(url):
        pass  # the schema exists; the worker will only need the server
    await asyncio.to_thread(cluster.stop)
    async with worker_process(url, started=False) as worker:
        await worker.said("the store is unreachable; retrying")
        await asyncio.to_thread(cluster.start)
        await worker.said("aioabort worker:")
        os.environ["AIOABORT_URL"] = url
        try:
            async with worker_app.app:
                assert await (await worker_app.add.delay(2, 3)).result(timeout=30) == 5
        finally:
            del os.environ["AIOABORT_URL"]
        worker.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0, worker.stderr
