"""Escalation (G25): a task past its ``abort_grace`` is marked ignored (timeline, log line),
``scope.to_thread(..., interrupt=True)`` raises TaskAborted inside the thread, and a worker
with ``kill_stubborn`` gives up on a stubborn task, drains the rest and returns — on every
store."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest

import aioabort
from aioabort import TaskState, Worker

from .conftest import has_state, wait_until


def kinds(events: list[aioabort.TaskEvent]) -> list[str]:
    return [e.kind for e in events]


async def test_a_worker_gives_up_on_a_stubborn_task(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The task's ``abort_grace`` (0.2 s, not the App's 30 s) marks it ignored: an event, a
    warning naming the task, the reason and how long. ``kill_stubborn`` later the worker gives
    up on it: FAILURE (cause ``killed``) with ``escalated`` on its timeline, the other task
    drained (retryable: requeued), and ``run()`` returns by itself."""
    release = asyncio.Event()
    app = aioabort.App(store_url, ignored_abort_after=30)

    @app.task(abort_grace=0.2)
    async def stubborn() -> None:
        with anyio.CancelScope(shield=True):  # ignores its abort until released
            await release.wait()

    @app.task(retryable=True)
    async def patient() -> None:
        await asyncio.sleep(3600)

    async with app:
        worker = Worker(app, grace=0, kill_stubborn=1.0)
        running = asyncio.create_task(worker.run())
        held, other = await stubborn.delay(), await patient.delay()
        for task_id in (held.id, other.id):
            await wait_until(functools.partial(has_state, app, task_id, TaskState.STARTED))
        caplog.set_level(logging.WARNING, "aioabort")
        assert await held.abort("stop now", by="alice") is True
        await asyncio.wait_for(running, 15)  # gave up, drained, returned: nobody stopped it
        record = await held.record()
        assert record.state is TaskState.FAILURE, record
        assert record.error is not None and record.error.cause == "killed"
        events = await held.events()
        assert kinds(events)[-5:] == [
            "abort_requested",
            "abort_delivered",
            "abort_ignored",
            "escalated",
            "ended",
        ], events
        ignored = events[-3]
        assert ignored.by == app.owner and "0.2s" in (ignored.detail or "")
        assert "user: stop now" in (ignored.detail or "")
        warning = next(r for r in caplog.records if getattr(r, "action", "") == "abort_ignored")
        message = warning.getMessage()
        assert held.id in message and "user: stop now" in message and "0.2s" in message
        assert worker.stubborn == [held.id] and held.id in worker.abandoned
        assert await other.state() is TaskState.PENDING  # drained: back on the queue
        later = await patient.delay()
        assert await later.state() is TaskState.PENDING  # it claims nothing any more
        release.set()


async def test_an_obedient_task_is_never_marked(store_url: str) -> None:
    """A task that stops at its abort gets no ``abort_ignored`` and no escalation, though its
    grace and the worker's ``kill_stubborn`` are short."""
    app = aioabort.App(store_url)

    @app.task(abort_grace=0.05)
    async def obedient() -> None:
        await asyncio.sleep(3600)

    async with app:
        worker = Worker(app, kill_stubborn=0.1)
        running = asyncio.create_task(worker.run())
        handle = await obedient.delay()
        await wait_until(lambda: has_state(app, handle.id, TaskState.STARTED))
        await handle.abort("enough")
        assert (await handle.wait(timeout=10)).state is TaskState.ABORTED
        second = await obedient.delay()  # the worker still claims: no escalation happened
        await wait_until(lambda: has_state(app, second.id, TaskState.STARTED))
        worker.stop_now()
        await asyncio.wait_for(running, 10)
        assert "abort_ignored" not in kinds(await handle.events())
        assert worker.stubborn == [] and worker.abandoned == []


@pytest.mark.parametrize("grace", [0, -1, "10", True, float("nan")])
async def test_a_bad_abort_grace_is_refused(grace: Any) -> None:
    app = aioabort.App("memory://")
    with pytest.raises(aioabort.UsageError, match="abort_grace must be a positive number"):

        @app.task(abort_grace=grace)
        async def job() -> None: ...

    assert app.registry == {}


async def test_an_unknown_task_setting_is_a_type_error() -> None:
    app = aioabort.App("memory://")
    with pytest.raises(TypeError, match="abort_grce"):

        @app.task(abort_grce=10)  # type: ignore[call-overload, untyped-decorator]
        async def job() -> None: ...


@pytest.mark.parametrize("value", [0, -5, "1", True])
async def test_a_bad_kill_stubborn_is_refused(value: Any) -> None:
    with pytest.raises(aioabort.UsageError, match="kill_stubborn must be a positive number"):
        Worker(aioabort.App("memory://"), kill_stubborn=value)


def _crunch(seen: list[object], started: threading.Event) -> None:
    """Pure Python that never looks at its scope."""
    started.set()
    try:
        while True:
            pass
    except aioabort.TaskAborted as exc:
        seen.append(exc)
        raise
    finally:
        seen.append("finally")


async def test_interrupt_raises_task_aborted_inside_the_thread(store_url: str) -> None:
    seen: list[object] = []
    started = threading.Event()
    async with aioabort.App(store_url) as app:

        async def body() -> None:
            async with aioabort.abortable("crunch", app=app) as scope:
                await scope.to_thread(_crunch, seen, started, interrupt=True)

        task = asyncio.create_task(body())
        await wait_until(started.is_set, what="the thread to start")
        await app.handle("crunch").abort("enough crunching")
        with pytest.raises(aioabort.TaskAborted):
            await asyncio.wait_for(task, 10)
        assert (await app.handle("crunch").state()) is TaskState.ABORTED
    exc = seen[0]
    assert isinstance(exc, aioabort.TaskAborted) and exc.task_id == "crunch"
    assert exc.reason is not None and exc.reason.message == "enough crunching"
    assert seen[1] == "finally"


async def test_an_abort_before_the_call_stops_the_thread_as_it_starts() -> None:
    ran = threading.Event()
    app = aioabort.App("memory://")
    async with app, aioabort.abortable("early", app=app, suppress=True) as scope:
        await app.handle("early").abort("before the thread")
        with anyio.CancelScope(shield=True):  # the body's own awaits are not cancelled
            await wait_until(scope.is_aborted)
            with pytest.raises(aioabort.TaskAborted):
                await scope.to_thread(ran.set, interrupt=True)
    assert not ran.is_set()


async def test_without_interrupt_the_thread_runs_to_its_end() -> None:
    app = aioabort.App("memory://")
    async with app, aioabort.abortable("plain", app=app, suppress=True) as scope:
        await app.handle("plain").abort("too late for the thread")
        with anyio.CancelScope(shield=True):
            await wait_until(scope.is_aborted)
            assert await scope.to_thread(sum, [1, 2]) == 3


def _spin(seconds: float) -> str:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "done"


async def test_an_interrupt_never_reaches_the_thread_after_its_call() -> None:
    """Aborts that race the end of the call (200 rounds, the abort within a millisecond of
    it): each call returns or raises TaskAborted, and no interrupt is left pending in a pool
    thread, where it would raise in the next, unrelated call."""
    rng = random.Random(7)
    outcomes: dict[str, int] = {"done": 0, "aborted": 0}
    async with aioabort.App("memory://") as app:
        for n in range(200):
            task_id = f"race-{n}"

            async def body(task_id: str = task_id) -> None:
                async with aioabort.abortable(task_id, app=app, suppress=True) as scope:
                    with anyio.CancelScope(shield=True):
                        try:
                            outcomes[await scope.to_thread(_spin, 0.001, interrupt=True)] += 1
                        except aioabort.TaskAborted:
                            outcomes["aborted"] += 1

            async def abort_soon(task_id: str = task_id) -> None:
                await asyncio.sleep(rng.uniform(0, 0.002))
                await app.handle(task_id).abort("race")

            await asyncio.gather(body(), abort_soon())
            for _ in range(3):  # the pool's threads: nothing left to raise in them
                assert await anyio.to_thread.run_sync(_spin, 0.0005) == "done"
    assert sum(outcomes.values()) == 200, outcomes
