"""The Celery flow across real processes: ``aioabort worker`` in a subprocess, the producer
here; real signals for shutdown, kill -9 for a dead worker."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest

import aioabort
from aioabort import TaskAborted, TaskState

from . import worker_app
from ._processes import Process, cli, run, worker
from .conftest import has_state, wait_until

pytestmark = pytest.mark.real_stores  # they start other processes


def worker_process(
    url: str, *options: str, started: bool = True
) -> AbstractAsyncContextManager[Process]:
    """:func:`tests._processes.worker` under the name tests/test_postgres_restart.py imports."""
    return worker(url, *options, ready=started)


@pytest.fixture
async def producer(store_url: str) -> AsyncIterator[aioabort.App]:
    """The test's App: the worker module's tasks, on the same store, opened here."""
    os.environ["AIOABORT_URL"] = store_url
    app = worker_app.app
    try:
        async with app:
            yield app
    finally:
        del os.environ["AIOABORT_URL"]


async def test_celery_flow_across_processes(producer: aioabort.App, store_url: str) -> None:
    async with worker(store_url):
        assert await (await worker_app.add.delay(20, 22)).result(timeout=30) == 42
        handle = await worker_app.count.delay(10_000)

        async def reporting() -> bool:
            return (await handle.record()).progress is not None

        await wait_until(reporting, timeout=30)
        assert await handle.abort(reason="user clicked cancel") is True
        with pytest.raises(TaskAborted) as info:
            await handle.result(timeout=30)
        assert info.value.reason is not None and info.value.reason.message == "user clicked cancel"
        record = await handle.record()
        assert record.state is TaskState.ABORTED and record.owner != producer.owner
        assert record.progress is not None and 0 < record.progress < 1


async def test_abort_while_pending_across_processes(producer: aioabort.App, store_url: str) -> None:
    handle = await worker_app.count.delay(3)
    assert await handle.abort("too late to start") is True
    async with worker(store_url):
        follow = await worker_app.add.delay(1, 2)
        assert await follow.result(timeout=30) == 3
    record = await handle.record()
    assert record.state is TaskState.ABORTED and record.started_at is None


async def test_abort_racing_completion_across_processes(
    producer: aioabort.App, store_url: str
) -> None:
    async with worker(store_url, "--concurrency", "20"):
        handles = [await worker_app.count.delay(1, step=0.001 * (i % 7)) for i in range(40)]
        recorded = await asyncio.gather(*(h.abort("race") for h in handles))
        records = [await h.wait(timeout=30) for h in handles]
    for was_recorded, record in zip(recorded, records, strict=True):
        assert record.state in (TaskState.SUCCESS, TaskState.ABORTED)
        if not was_recorded:
            assert record.state is TaskState.SUCCESS and record.reason is None
        if record.state is TaskState.ABORTED:
            assert was_recorded


async def test_swallowed_abort_across_processes(producer: aioabort.App, store_url: str) -> None:
    async with worker(store_url):
        handle = await worker_app.stubborn.delay()
        await wait_until(lambda: has_state(producer, handle.id, TaskState.STARTED), timeout=30)
        await asyncio.sleep(0.1)
        await handle.abort("stop")
        assert await handle.result(timeout=30) == "finished anyway"
        record = await handle.record()
        assert record.state is TaskState.SUCCESS and record.reason is not None


async def test_sigterm_aborts_running_tasks_after_the_grace(
    producer: aioabort.App, store_url: str
) -> None:
    async with worker(store_url, "--grace", "0.3") as proc:
        plain = await worker_app.count.delay(10_000)
        retry = await worker_app.retryable_count.delay(10_000)
        await wait_until(lambda: has_state(producer, plain.id, TaskState.STARTED), timeout=30)
        await wait_until(lambda: has_state(producer, retry.id, TaskState.STARTED), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert await proc.exit_code() == 0, proc.stderr
    assert "1 aborted, 1 requeued" in proc.stderr, proc.stderr
    record = await plain.record()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "shutdown"
    again = await retry.record()
    assert again.state is TaskState.PENDING and again.owner is None
    await retry.abort()


async def test_second_sigint_stops_at_once(producer: aioabort.App, store_url: str) -> None:
    async with worker(store_url, "--grace", "3600", "--log-level", "info") as proc:
        handle = await worker_app.count.delay(10_000)
        await wait_until(lambda: has_state(producer, handle.id, TaskState.STARTED), timeout=30)
        proc.send_signal(signal.SIGINT)
        await proc.said("waiting for running tasks")
        assert proc.returncode is None  # draining: the grace is an hour
        proc.send_signal(signal.SIGINT)
        assert await proc.exit_code() == 0, proc.stderr
    record = await handle.record()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "shutdown"


async def test_kill_9_ends_the_task_lost_or_requeues_it(
    producer: aioabort.App, store_url: str
) -> None:
    async with worker(store_url) as proc:
        plain = await worker_app.count.delay(10_000)
        retry = await worker_app.retryable_count.delay(10_000)
        await wait_until(lambda: has_state(producer, plain.id, TaskState.STARTED), timeout=30)
        await wait_until(lambda: has_state(producer, retry.id, TaskState.STARTED), timeout=30)
        proc.send_signal(signal.SIGKILL)
        await proc.exit_code()
    # The producer's App heartbeats and reaps (stale_after=2 s in tests/worker_app.py).
    record = await plain.wait(timeout=30)
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "lost"
    await wait_until(
        lambda: has_state(producer, retry.id, TaskState.PENDING), timeout=30, what="requeue"
    )
    await retry.abort()


async def test_parent_abort_reaches_children_on_another_worker(
    producer: aioabort.App, store_url: str
) -> None:
    async with worker(store_url, "--concurrency", "5"):
        parent = await worker_app.parent.delay(2)

        async def children() -> list[aioabort.TaskRecord]:
            return [r for r in await producer.tasks() if r.parent_id == parent.id]

        async def both_running() -> bool:
            kids = await children()
            return len(kids) == 2 and all(k.state is TaskState.STARTED for k in kids)

        await wait_until(both_running, timeout=30)
        await parent.abort("stop the fan-out")
        for kid in await children():
            with pytest.raises(TaskAborted) as info:
                await producer.handle(kid.id).result(timeout=30)
            assert info.value.reason is not None and info.value.reason.code == "parent"


def test_worker_cli_errors() -> None:
    def run_worker(*args: str) -> subprocess.CompletedProcess[str]:
        return run(cli("--db", "sqlite:///:memory:", "worker", *args), timeout=60)

    out = run_worker("no_such_module:app")
    assert out.returncode == 2 and "cannot import" in out.stderr
    out = run_worker("tests.worker_app:nothing")
    assert out.returncode == 2 and "no attribute" in out.stderr
    out = run_worker("tests.worker_app:add")
    assert out.returncode == 2 and "not an aioabort.App" in out.stderr
    out = run_worker("tests.worker_app")
    assert out.returncode == 2 and "MODULE:APP" in out.stderr


async def test_a_second_signal_frees_a_worker_held_hostage(
    producer: aioabort.App, store_url: str
) -> None:
    """DESIGN rule 16, with real signals: tasks that swallow every cancellation. After the
    first SIGTERM they are aborted (``shutdown``) and ignore it; the second SIGTERM makes the
    worker give up on them and exit within seconds, recording them (FAILURE, cause
    ``killed``; the retryable one back on the queue): nothing is left STARTED or ABORTING."""
    async with worker(store_url, "--grace", "0.5", "--kill-after", "600") as proc:
        held = await worker_app.hostage.delay()
        retried = await worker_app.retryable_hostage.delay()
        for task_id in (held.id, retried.id):
            await wait_until(functools.partial(has_state, producer, task_id, TaskState.STARTED))
        proc.send_signal(signal.SIGTERM)
        for task_id in (held.id, retried.id):  # aborted after the grace, and ignoring it
            await wait_until(functools.partial(has_state, producer, task_id, TaskState.ABORTING))
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await proc.exit_code(timeout=30)
        took = time.monotonic() - started
    assert code == 130, proc.stderr
    assert took < 10, took
    record = await held.record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "killed"
    assert record.reason is not None and record.reason.code == "shutdown"
    assert (await retried.state()) is TaskState.PENDING
    assert "gave up on 2 task(s)" in proc.stderr


async def test_kill_after_frees_the_worker_without_a_second_signal(
    producer: aioabort.App, store_url: str
) -> None:
    async with worker(store_url, "--grace", "0", "--kill-after", "1") as proc:
        held = await worker_app.hostage.delay()
        await wait_until(lambda: has_state(producer, held.id, TaskState.STARTED))
        proc.send_signal(signal.SIGTERM)
        code = await proc.exit_code(timeout=30)
    assert code == 1, proc.stderr
    record = await held.record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "killed"


async def test_kill_stubborn_gives_up_drains_and_exits_75(
    producer: aioabort.App, store_url: str
) -> None:
    """``--kill-stubborn``: a task still running 1.5 s after its abort reached it is given up
    on with no signal sent: FAILURE (cause ``killed``), ``escalated`` on its timeline; the
    retryable task beside it is drained back to the queue; exit 75 (EX_TEMPFAIL)."""
    async with worker(store_url, "--grace", "0", "--kill-stubborn", "1.5") as proc:
        held = await worker_app.deaf.delay()
        beside = await worker_app.retryable_count.delay(100_000)
        for task_id in (held.id, beside.id):
            await wait_until(functools.partial(has_state, producer, task_id, TaskState.STARTED))
        await held.abort("stop it", by="ops")
        code = await proc.exit_code(timeout=30)
    assert code == 75, proc.stderr
    record = await held.record()
    assert record.state is TaskState.FAILURE, record
    assert record.error is not None and record.error.cause == "killed"
    assert [e.kind for e in await held.events()][-4:] == [
        "abort_delivered",
        "abort_ignored",
        "escalated",
        "ended",
    ]
    assert await beside.state() is TaskState.PENDING
    assert f"task {held.id} ignores its abort (user: stop it)" in proc.stderr
    assert f"task {held.id} ignored its abort (user: stop it) for 1.5s" in proc.stderr


async def test_the_worker_logs_each_task_with_its_id_and_name(
    producer: aioabort.App, store_url: str
) -> None:
    """The banner shows the store's URL as given; each task's end is one line with its id and
    name, an abort's reason and who asked, and a requeue said as such (not "ended PENDING")."""
    async with worker(store_url, "--log-level", "info", "--grace", "0") as proc:
        await proc.said(f"aioabort worker: {store_url}, queues default,")
        handle = await worker_app.add.delay(1, 2)
        assert await handle.result(timeout=30) == 3
        await proc.said(f"task {handle.id} ({worker_app.add.name}) ended SUCCESS")
        stopped = await worker_app.count.delay(100_000)
        await wait_until(lambda: has_state(producer, stopped.id, TaskState.STARTED))
        await stopped.abort("enough of it", by="alice")
        await proc.said(
            f"task {stopped.id} ({worker_app.count.name}) ended ABORTED: "
            "user: enough of it (by alice)"
        )
        again = await worker_app.retryable_count.delay(100_000)
        await wait_until(lambda: has_state(producer, again.id, TaskState.STARTED))
        proc.send_signal(signal.SIGTERM)  # --grace 0: aborted at once, then requeued
        assert await proc.exit_code() == 0
    assert await again.state() is TaskState.PENDING
    assert f"task {again.id} ({worker_app.retryable_count.name}) requeued: shutdown" in (
        proc.stderr
    ), proc.stderr
    assert "ended PENDING" not in proc.stderr
