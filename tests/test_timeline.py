"""The timeline: every request and what came of it, written in the transaction of the change
it describes, the same on every store, and purged with its record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

import aioabort
from aioabort import TaskEvent, TaskNotFound, TaskState

from .conftest import has_state, wait_until


class Lab:
    def __init__(self, url: str) -> None:
        self.app = aioabort.App(url, retention=None)
        self.calls = 0
        app = self.app

        @app.task(name="add")
        async def add(a: int, b: int) -> int:
            return a + b

        @app.task(name="wait")
        async def wait() -> None:
            await asyncio.sleep(3600)

        @app.task(name="flaky", retry_on=ConnectionError, max_retries=1, retry_backoff=0)
        async def flaky() -> str:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("blink")
            return "ok"

        self.add, self.wait, self.flaky = add, wait, flaky
        self.worker = aioabort.Worker(app)
        self._run: asyncio.Task[None] | None = None


@pytest.fixture
async def lab(store_url: str) -> AsyncIterator[Lab]:
    lab = Lab(store_url)
    async with lab.app:
        lab._run = asyncio.create_task(lab.worker.run())
        try:
            yield lab
        finally:
            lab.worker.stop_now()
            await asyncio.wait_for(lab._run, 30)


def kinds(events: list[TaskEvent]) -> list[str]:
    return [e.kind for e in events]


async def test_a_run_is_queued_started_and_ended(lab: Lab) -> None:
    handle = await lab.add.delay(1, 2)
    assert await handle.result(timeout=10) == 3
    events = await handle.events()
    assert kinds(events) == ["queued", "started", "ended"]
    queued, started, ended = events
    assert queued.detail == "default" and queued.by is None
    owner = lab.app.runtime.owner
    assert started.by == owner and ended.by == owner and ended.detail == "SUCCESS"
    assert queued.at <= started.at <= ended.at
    assert ended.to_dict()["kind"] == "ended"


async def test_an_abort_shows_who_asked_why_and_when_it_reached_the_code(lab: Lab) -> None:
    handle = await lab.wait.delay()
    await wait_until(lambda: has_state(lab.app, handle.id, TaskState.STARTED))
    assert await handle.abort("user pressed stop", by="alice")
    await handle.wait(timeout=10)
    events = await handle.events()
    # The delivery is noted beside the run, not before its end: a body that stops at once
    # may end first (then the end itself says the abort was obeyed).
    assert kinds(events) in (
        ["queued", "started", "abort_requested", "abort_delivered", "ended"],
        ["queued", "started", "abort_requested", "ended"],
    )
    requested = events[2]
    assert requested.by == "alice" and requested.detail == "user: user pressed stop"
    assert events[-1].detail == "ABORTED"


async def test_a_queued_abort_ends_at_once(lab: Lab) -> None:
    lab.worker.stop_now()
    handle = await lab.wait.apply(countdown=3600)
    await handle.abort("not needed")
    assert kinds(await handle.events()) == ["queued", "abort_requested", "ended"]


async def test_expiry_supersede_and_retry_are_on_the_timeline(lab: Lab) -> None:
    expired = await lab.wait.apply(expires=0.1, queue="nobody")  # no worker takes it
    await expired.wait(timeout=10)
    assert kinds(await expired.events()) == ["queued", "expired", "ended"]

    first = await lab.wait.apply(countdown=3600, key="k")
    second = await lab.wait.apply(countdown=3600, key="k", supersede=True)
    superseded = (await first.events())[1]
    assert superseded.kind == "superseded" and second.id in (superseded.detail or "")

    flaky = await lab.flaky.delay()
    assert await flaky.result(timeout=10) == "ok"
    events = await flaky.events()
    assert kinds(events) == ["queued", "started", "retried", "started", "ended"]
    assert events[2].detail == "ConnectionError"


async def test_the_timeline_is_purged_with_its_record(lab: Lab) -> None:
    handle = await lab.add.delay(2, 2)
    await handle.result(timeout=10)
    assert await lab.app.purge(older_than=timedelta(0)) >= 1
    with pytest.raises(TaskNotFound):
        await handle.events()
    assert await lab.app.runtime.store.events(handle.id) == []


async def test_a_scope_entered_by_hand_has_a_timeline_too(lab: Lab) -> None:
    async with aioabort.abortable("by-hand", app=lab.app):
        pass
    events = await lab.app.handle("by-hand").events()
    assert kinds(events) == ["started", "ended"]
