"""A notifier beside the store (Redis, NATS): real servers of the test's own, real processes.

The store stays the truth: what a notifier carries is a hint that arrives at once. The tests
prove it arrives through the notifier (on PostgreSQL the App then sends no NOTIFY, and the
poll is set far beyond the test's bounds), that it goes only to the process that owns the
task (counted per process), and that an outage costs at most the poll interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import aioabort
from aioabort import notifiers
from aioabort._pushed import owner_subject
from aioabort.notifiers import NotifierStatistics

from . import _processes
from ._brokers import Broker
from .conftest import has_state, wait_until

#: Far beyond every bound below: what arrives in time came through the notifier.
NO_POLL = 60.0


@pytest.fixture(params=["redis", "nats"])
def notifier(request: pytest.FixtureRequest) -> Broker:
    server: Broker = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture(params=["sqlite", "postgres"])
def real_store(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("postgres_url")
    return url


def stats(app: aioabort.App) -> NotifierStatistics:
    found = app.watcher.statistics().notifier
    assert found is not None
    return found


@asynccontextmanager
async def child(
    store: str, server: Broker, prefix: str, count: int = 1, poll: float = NO_POLL, expect: int = 0
) -> AsyncIterator[_processes.Process]:
    """The child reports its statistics once its notifier received ``expect`` messages."""
    command = _processes.module(
        "tests.notified_child", store, server.url, prefix, str(count), str(poll), str(expect)
    )
    async with _processes.started(command) as proc:
        await proc.said("READY")
        yield proc


async def child_stats(proc: _processes.Process) -> dict[str, Any]:
    assert await proc.stop() == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("STATS "))
    found: dict[str, Any] = json.loads(line.removeprefix("STATS "))
    return found


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["kafka://host:9092", "redis", "redis://", "nats://host:port", "", "//host"]
)
def test_a_bad_notifier_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(aioabort.InvalidURL):
        aioabort.App("sqlite:///never.db", notifier=url)


def test_a_missing_driver_names_the_extra() -> None:
    notifiers.register_scheme(
        "gone", "aioabort.notifiers.redis:RedisNotifier", extra="gone", driver="no_such_driver_x"
    )
    with pytest.raises(aioabort.MissingDriver, match=r'pip install "aioabort\[gone\]"'):
        aioabort.App("sqlite:///never.db", notifier="gone://host")


def test_the_cli_refuses_an_unknown_notifier(tmp_path: Any) -> None:
    done = _processes.run(
        _processes.cli("--notifier", "kafka://h:1", "--db", f"sqlite:///{tmp_path}/x.db", "tasks")
    )
    assert done.returncode == 2, done.stderr
    assert "unknown notifier URL scheme 'kafka'" in done.stderr


# -- across processes --------------------------------------------------------------------------


async def test_an_abort_reaches_another_process_through_the_notifier(
    real_store: str, notifier: Broker
) -> None:
    prefix = f"x-{uuid.uuid4().hex[:8]}"
    async with (
        child(real_store, notifier, prefix, expect=1) as proc,
        aioabort.App(real_store, notifier=notifier.url, poll_interval=NO_POLL) as app,
    ):
        assert await app.handle(f"{prefix}-0").abort("through the notifier")
        await proc.said("ABORTED 0\n", timeout=20)
        seen = await child_stats(proc)
        assert stats(app).published >= 1
    assert seen["notifier"]["received"] >= 1
    if real_store.startswith("postgresql"):
        assert seen["notifications"] == 0  # no NOTIFY: the notifier carried it


async def test_an_abort_wakes_only_the_process_that_owns_the_task(
    real_store: str, notifier: Broker
) -> None:
    prefix = f"o-{uuid.uuid4().hex[:8]}"
    async with (
        child(real_store, notifier, f"{prefix}-a", expect=1) as owner,
        child(real_store, notifier, f"{prefix}-b") as other,
        child(real_store, notifier, f"{prefix}-c") as third,
        aioabort.App(real_store, notifier=notifier.url, poll_interval=NO_POLL) as app,
    ):
        assert await app.handle(f"{prefix}-a-0").abort()
        await owner.said("ABORTED 0\n", timeout=20)
        seen = [await child_stats(proc) for proc in (owner, other, third)]
    assert [s["notifier"]["received"] for s in seen] == [1, 0, 0]
    if real_store.startswith("postgresql"):  # nothing else told them either
        assert [s["notices"] for s in seen[1:]] == [0, 0]


async def test_a_notifier_killed_mid_storm_loses_no_abort(
    real_store: str, notifier: Broker
) -> None:
    count, poll = 150, 0.3
    prefix = f"s-{uuid.uuid4().hex[:8]}"
    async with (
        child(real_store, notifier, prefix, count, poll) as proc,
        aioabort.App(real_store, notifier=notifier.url, poll_interval=poll) as app,
    ):
        for i in range(count):
            if i == count // 3:
                notifier.kill()
                await wait_until(lambda: not stats(app).connected, what="the outage seen")
            if i == 2 * count // 3:
                notifier.start()
            assert await app.handle(f"{prefix}-{i}").abort("storm")
        for i in range(count):
            await proc.said(f"ABORTED {i}\n", timeout=30)
        await wait_until(lambda: stats(app).connected, timeout=20, what="the producer back")
        seen = await child_stats(proc)
        mine = stats(app)
    assert seen["notifier"]["outages"] == 1 and seen["notifier"]["reconnects"] == 1
    assert mine.outages == 1 and mine.reconnects == 1 and mine.dropped > 0
    async with aioabort.App(real_store) as reader:
        for i in range(count):
            record = await reader.handle(f"{prefix}-{i}").record()
            assert record.state is aioabort.TaskState.ABORTED


# -- outages at start, and messages that are not ours ------------------------------------------


async def test_a_notifier_down_at_start_opens_polls_and_says_so(
    store_url: str, redis_server: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.kill()
    caplog.set_level(logging.WARNING, logger="aioabort.notifier")
    async with (
        aioabort.App(store_url, notifier=redis_server.url, poll_interval=0.2) as app,
        aioabort.App(store_url, notifier=redis_server.url, poll_interval=0.2) as other,
    ):
        assert not stats(app).connected and stats(app).outages == 1
        assert "notifier unreachable" in caplog.text
        async with aioabort.abortable("polled", app=app, suppress=True) as scope:
            assert await other.handle("polled").abort()  # the write is not held up
            await asyncio.sleep(20)  # bounded: a poll that never delivers fails below
        assert scope.aborted, "the abort did not arrive by the store's poll within 20 s"
        redis_server.start()
        await wait_until(lambda: stats(app).connected, timeout=20, what="connected")
        assert stats(app).reconnects == 1 and stats(app).outages == 1


async def test_a_notifier_that_never_answers_does_not_hold_up_open(store_url: str) -> None:
    with socket.socket() as silent:  # accepts connections, says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}"
        async with aioabort.App(store_url, notifier=url) as app:
            assert not stats(app).connected and stats(app).outages == 1
            assert await app.handle("x").abort() is False  # the store answers


async def test_an_abort_message_for_a_task_not_ours_is_ignored(
    store_url: str, redis_server: Broker
) -> None:
    import redis.asyncio as aioredis

    async with (
        aioabort.App(store_url, notifier=redis_server.url) as app,
        aioabort.App(store_url, notifier=redis_server.url) as other,
        aioabort.abortable("theirs", app=other) as theirs,
        aioabort.abortable("mine", app=app) as mine,
    ):
        forged = {"id": "theirs", "code": "user", "message": "x", "by": None, "attempt": 1}
        forged["at"] = "2026-01-01T00:00:00+00:00"
        client = aioredis.Redis.from_url(redis_server.url)
        try:  # addressed to this App, about a task that the other one runs
            await client.publish(owner_subject(app.owner), json.dumps(forged))
        finally:
            await client.aclose()
        await wait_until(lambda: stats(app).ignored == 1, what="the message judged")
        assert not mine.aborted and app.watcher.statistics().deliveries == 0
        assert not theirs.aborted


async def test_ends_are_published_only_while_some_process_waits(
    postgres_url: str, notifier: Broker
) -> None:
    async with (
        aioabort.App(postgres_url, notifier=notifier.url, poll_interval=NO_POLL) as app,
        aioabort.App(postgres_url, notifier=notifier.url, poll_interval=NO_POLL) as other,
    ):
        async with aioabort.abortable("unwatched", app=app):
            pass
        await wait_until(lambda: stats(app).held_back == 1, what="the end held back")
        async with aioabort.abortable("watched", app=app):
            waiting = asyncio.ensure_future(other.handle("watched").wait(timeout=20))
            listening = app.runtime.store.interest.listening  # type: ignore[attr-defined]
            await wait_until(lambda: listening("aioabort.ends"), what="the waiter known")
        assert (await waiting).state is aioabort.TaskState.SUCCESS  # through the notifier
        assert stats(app).held_back == 1 and stats(other).received >= 1


# -- a transaction pooler ----------------------------------------------------------------------


async def test_behind_pgbouncer_a_notifier_brings_push_back(
    pgbouncer_url: str, notifier: Broker
) -> None:
    async with (
        aioabort.App(pgbouncer_url, notifier=notifier.url, poll_interval=NO_POLL) as app,
        aioabort.App(pgbouncer_url, notifier=notifier.url, poll_interval=NO_POLL) as other,
    ):
        async with aioabort.abortable("pooled", app=app, suppress=True) as scope:
            assert await other.handle("pooled").abort()
            await asyncio.sleep(3600)
        assert scope.aborted
        # and a task's end reaches a waiter in the other App
        async with aioabort.abortable("ends", app=app):
            waiting = asyncio.ensure_future(other.handle("ends").wait(timeout=20))
            await wait_until(lambda: other.watcher.statistics().waited_ids == 1)
        record = await waiting
        assert record.state is aioabort.TaskState.SUCCESS
        assert await has_state(other, "ends", aioabort.TaskState.SUCCESS)


# -- new work, and the outage counter ---------------------------------------------------------


async def test_new_work_wakes_a_worker_of_another_process_through_the_notifier(
    postgres_url: str, notifier: Broker
) -> None:
    ran = asyncio.Event()

    async def job() -> None:
        ran.set()

    worker_app = aioabort.App(postgres_url, notifier=notifier.url, poll_interval=NO_POLL)
    producer = aioabort.App(postgres_url, notifier=notifier.url, poll_interval=NO_POLL)
    worker_app.task(job)
    queued = producer.task(job)
    async with worker_app, producer:
        worker = aioabort.Worker(worker_app, poll_interval=NO_POLL)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.started.wait(), 20)
            handle = await queued.delay()
            await asyncio.wait_for(ran.wait(), 20)  # long before the worker's own poll
            record = await handle.wait(timeout=20)  # and its end reached the producer
            assert record.state is aioabort.TaskState.SUCCESS
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)


async def test_an_outage_is_counted_in_opentelemetry(store_url: str, redis_server: Broker) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from aioabort import _telemetry

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("aioabort")
    counter = meter.create_counter("aioabort.notifier.outages")
    assert _telemetry._INSTRUMENTS is not None
    original, _telemetry._INSTRUMENTS.outages = _telemetry._INSTRUMENTS.outages, counter
    try:
        async with aioabort.App(store_url, notifier=redis_server.url) as app:
            redis_server.kill()
            await wait_until(lambda: stats(app).outages == 1, what="the outage seen")
    finally:
        _telemetry._INSTRUMENTS.outages = original
    data = reader.get_metrics_data()
    assert data is not None
    points: list[Any] = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "aioabort.notifier.outages"
        for point in metric.data.data_points
    ]
    assert [(p.value, dict(p.attributes or {})) for p in points] == [
        (1, {"notifier": redis_server.url})
    ]


async def test_a_superseded_run_hears_of_it_through_the_notifier(
    postgres_url: str, notifier: Broker
) -> None:
    """On PostgreSQL with a notifier nothing is NOTIFYed and the poll is a minute away: the
    run that a new task of its key supersedes stops because the producer told its owner."""
    key = f"report:{uuid.uuid4().hex[:8]}"
    runner = aioabort.App(postgres_url, notifier=notifier.url, poll_interval=NO_POLL)

    @runner.task(name="tests.superseded_report")
    async def report() -> None:
        await asyncio.Event().wait()

    async with (
        runner,
        aioabort.App(postgres_url, notifier=notifier.url, poll_interval=NO_POLL) as producer,
    ):
        running = await report.apply(key=key, spawn=True)
        await wait_until(
            lambda: has_state(runner, running.id, aioabort.TaskState.STARTED), what="the run"
        )
        newer = await producer.send_task("tests.superseded_report", key=key, supersede=True)
        record = await running.wait(timeout=20)
        assert stats(runner).received >= 1
    assert record.state is aioabort.TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "superseded"
    assert newer.id in record.reason.message
