"""The Celery bridge with a real ``celery worker`` (prefork and threads pools), a real Redis
broker of the test's own, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import aioabort
from aioabort import TaskState
from aioabort.celery import ABORTED, AbortableAsyncResult, _bridge

from ._brokers import Broker
from ._processes import Process, cli, environment, module, run, started
from .celery_app import producer
from .conftest import Cluster, has_state, wait_until

pytestmark = [
    pytest.mark.real_stores,
    pytest.mark.slow,
    # Celery's Redis result backend calls a redis-py method that redis-py deprecates.
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]

POOLS = ["prefork", "threads", "solo"]


@dataclass
class Lab:
    """A Redis broker, a store, a producer's Celery app and the progress file the tasks
    write to."""

    store_url: str
    broker_url: str
    progress: Path
    celery: Celery

    def env(self, **extra: str) -> dict[str, str]:
        return environment(
            self.store_url,
            CELERY_BROKER=self.broker_url,
            CELERY_PROGRESS=str(self.progress),
            **extra,
        )

    def said(self, line: str) -> bool:
        return self.progress.exists() and line in self.progress.read_text().splitlines()

    def send(self, name: str, *args: Any, **options: Any) -> AbortableAsyncResult:
        sent = self.celery.send_task(f"tests.celery_app.{name}", args=args, **options)
        return AbortableAsyncResult(sent.id, app=self.celery)

    async def started(self, result: AbortableAsyncResult) -> None:
        await wait_until(lambda: self.said(f"started {result.id}"), timeout=30, what="the task")

    async def celery_state(self, result: AbortableAsyncResult, state: str) -> None:
        await wait_until(
            lambda: result.backend.get_task_meta(result.id)["status"] == state,
            timeout=30,
            what=f"Celery's state {state}",
        )


@pytest.fixture
def lab(store_url: str, redis_server: Broker, tmp_path: Path) -> Iterator[Lab]:
    url = f"{redis_server.url}/0"
    own = Lab(store_url, url, tmp_path / "progress", producer(url, store_url))
    try:
        yield own
    finally:
        _bridge.close_all()
        own.celery.close()


@asynccontextmanager
async def worker(lab: Lab, pool: str = "prefork", concurrency: int = 2) -> AsyncIterator[Process]:
    command = module(
        "celery",
        *("-A", "tests.celery_app", "worker", "-P", pool, "-c", str(concurrency)),
        *("--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO"),
    )
    async with started(command, env=lab.env(), name=f"celery worker -P {pool}") as process:
        await process.said(" ready.")
        yield process
        await process.stop()


@pytest.mark.parametrize("pool", POOLS)
async def test_an_abort_stops_a_running_task(lab: Lab, app: aioabort.App, pool: str) -> None:
    async with worker(lab, pool):
        result = lab.send("steps", 100_000)
        await lab.started(result)
        assert not await asyncio.to_thread(result.is_aborted)
        assert await asyncio.to_thread(result.abort, "the user cancelled", by="alice")
        await lab.celery_state(result, ABORTED)
        assert await asyncio.to_thread(result.is_aborted)
        with pytest.raises(aioabort.TaskAborted) as stopped:
            await asyncio.to_thread(result.get, timeout=30)
        assert stopped.value.reason is not None and stopped.value.reason.by == "alice"
        meta = result.backend.get_task_meta(result.id)["result"]
        assert (meta["code"], meta["message"], meta["by"]) == (
            "user",
            "the user cancelled",
            "alice",
        )
        record = await app.handle(result.id).wait(timeout=30)
        assert record.state is TaskState.ABORTED
        assert record.name == "tests.celery_app.steps"
        assert record.labels == {"celery_queue": "celery"}
        assert record.reason is not None and record.reason.message == "the user cancelled"
        assert not await asyncio.to_thread(result.abort, "again")  # it has ended


async def test_a_task_that_returns_after_its_abort_ends_success(
    lab: Lab, app: aioabort.App
) -> None:
    async with worker(lab):
        result = lab.send("returns_when_aborted", 100_000)
        await lab.started(result)
        assert await app.handle(result.id).abort(reason="stop please")  # the async producer
        steps = await asyncio.to_thread(result.get, timeout=30)
        assert steps < 100_000 and result.state == "SUCCESS"
        record = await app.handle(result.id).wait(timeout=30)
        assert record.state is TaskState.SUCCESS  # it did not stop: never reported ABORTED
        assert record.reason is not None and record.reason.message == "stop please"


async def test_a_task_aborted_before_it_started_never_runs(lab: Lab, app: aioabort.App) -> None:
    early = lab.send("steps", 10)
    assert await asyncio.to_thread(early.abort, "changed my mind")
    assert early.state == ABORTED  # at once: it can never run now
    async with worker(lab, concurrency=1):
        after = lab.send("steps", 1)  # one queue, one process: runs after the first is handled
        assert await asyncio.to_thread(after.get, timeout=30) == 1
        assert not lab.said(f"started {early.id}")
        assert early.state == ABORTED
        assert await app.handle(early.id).state() is TaskState.ABORTED


async def test_a_failure_a_retry_and_a_plain_task(lab: Lab, app: aioabort.App) -> None:
    async with worker(lab):
        boom = lab.send("boom")
        with pytest.raises(ValueError, match="boom"):
            await asyncio.to_thread(boom.get, timeout=30)
        record = await app.handle(boom.id).wait(timeout=30)
        assert record.state is TaskState.FAILURE
        assert record.error is not None and (record.error.type, record.error.message) == (
            "ValueError",
            "boom",
        )
        retried = lab.send("retried")  # its second attempt runs under the same record
        await wait_until(lambda: lab.said(f"attempt {retried.id} 1"), timeout=30)
        handle = app.handle(retried.id)
        await wait_until(lambda: has_state(app, retried.id, TaskState.STARTED), timeout=30)
        assert await handle.abort(reason="no more")
        assert (await handle.wait(timeout=30)).state is TaskState.ABORTED
        await lab.celery_state(retried, ABORTED)
        plain = lab.celery.send_task("tests.celery_app.plain", args=[21])
        assert await asyncio.to_thread(plain.get, timeout=30) == 42
        with pytest.raises(aioabort.TaskNotFound):  # not abortable: no record
            await app.handle(plain.id).record()


async def test_the_cli_aborts_a_celery_task(lab: Lab, app: aioabort.App) -> None:
    async with worker(lab, "threads"):
        result = lab.send("steps", 100_000)
        await lab.started(result)
        done = await asyncio.to_thread(
            run, cli("--db", lab.store_url, "abort", result.id, "--reason", "ops", "--yes")
        )
        assert done.returncode == 0, done.stderr
        await lab.celery_state(result, ABORTED)
        assert (await app.handle(result.id).wait(timeout=30)).state is TaskState.ABORTED


async def test_revoke_still_works(lab: Lab, app: aioabort.App) -> None:
    async with worker(lab, concurrency=1):
        running = lab.send("steps", 100_000)
        await lab.started(running)
        queued = lab.send("steps", 10)  # behind the running one
        await asyncio.to_thread(lab.celery.control.revoke, queued.id)
        await asyncio.to_thread(
            lab.celery.control.revoke, running.id, terminate=True, signal="SIGKILL"
        )
        await lab.celery_state(running, "REVOKED")
        await lab.celery_state(queued, "REVOKED")
        after = lab.send("steps", 1)
        assert await asyncio.to_thread(after.get, timeout=30) == 1
        assert not lab.said(f"started {queued.id}")

        # the killed run's process died with it: its record ends FAILURE (lost) once the
        # process's heartbeat stops
        async with aioabort.App(lab.store_url, heartbeat_interval=0.5, stale_after=2.0) as reaper:

            async def reaped() -> bool:
                await reaper.reap()
                return await has_state(app, running.id, TaskState.FAILURE)

            await wait_until(reaped, timeout=30, what="the killed run to be reaped")
        record = await app.handle(running.id).record()
        assert record.error is not None and record.error.cause == "lost"


def test_a_worker_without_setup_refuses_to_start(lab: Lab) -> None:
    command = module("celery", "-A", "tests.celery_app", "worker", "-P", "solo", "-l", "INFO")
    done = run(command, env=lab.env(AIOABORT_URL=""), timeout=60)
    assert done.returncode != 0
    assert "aioabort.celery.setup(celery_app, url)" in done.stderr + done.stdout


def test_an_id_celery_accepts_and_aioabort_refuses(lab: Lab) -> None:
    from .celery_app import steps

    for bad in ("", "x" * 300, "tab\there"):
        with pytest.raises(aioabort.InvalidTaskId):
            steps.apply_async((1,), task_id=bad)
    assert steps.run.__name__ == "steps"
    assert steps.is_aborted() is False  # not running in a worker: nothing can abort it
    steps.raise_if_aborted()


@pytest.mark.postgres
async def test_a_store_down_never_fails_a_task(
    cluster: Cluster, redis_server: Broker, tmp_path: Path
) -> None:
    url, broker_url = cluster.url, f"{redis_server.url}/0"
    lab = Lab(url, broker_url, tmp_path / "progress", producer(broker_url, url))
    try:
        async with worker(lab, concurrency=1) as process:
            first = lab.send("steps", 1)
            assert await asyncio.to_thread(first.get, timeout=30) == 1  # the store is up
            await asyncio.to_thread(cluster.stop)
            result = lab.send("steps", 3)
            assert (
                await asyncio.to_thread(result.get, timeout=60) == 3
            )  # down: it runs all the same
            await process.said("runs without its aioabort record")
            await asyncio.to_thread(cluster.start)
            async with aioabort.App(url) as app:
                await wait_until(  # it caught up
                    lambda: has_state(app, result.id, TaskState.SUCCESS), timeout=60
                )
            await process.said("its aioabort record caught up")
    finally:
        _bridge.close_all()
        lab.celery.close()


@pytest.mark.postgres
async def test_a_worker_starts_and_runs_tasks_while_the_store_is_down(
    cluster: Cluster, redis_server: Broker, tmp_path: Path
) -> None:
    url, broker_url = cluster.url, f"{redis_server.url}/0"
    lab = Lab(url, broker_url, tmp_path / "progress", producer(broker_url, url))
    await asyncio.to_thread(cluster.stop)
    try:
        async with worker(lab, concurrency=2) as process:
            result = lab.send("steps", 2)
            assert await asyncio.to_thread(result.get, timeout=60) == 2
            await asyncio.to_thread(cluster.start)
            async with aioabort.App(url) as app:
                await wait_until(lambda: has_state(app, result.id, TaskState.SUCCESS), timeout=60)
            await process.said("its aioabort record caught up")
            later = lab.send("steps", 100_000)  # and aborts reach the tasks again
            await lab.started(later)
            async with aioabort.App(url) as app:
                await wait_until(lambda: has_state(app, later.id, TaskState.STARTED), timeout=60)
                assert await app.handle(later.id).abort(reason="store is back")
            await lab.celery_state(later, ABORTED)
    finally:
        _bridge.close_all()
        lab.celery.close()
