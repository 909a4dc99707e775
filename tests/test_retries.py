"""Retries on exception: ``@app.task(retry_on=..., max_retries=..., retry_backoff=...)``
requeues the same record (``not_before`` = now + backoff, one more attempt) on every store;
an abort is never retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aioabort
from aioabort import TaskState, UsageError

from .conftest import has_state, wait_until


class Flaky:
    """An App whose tasks fail as told; ``calls`` counts the runs of each."""

    def __init__(self, url: str) -> None:
        self.app = aioabort.App(url)
        self.calls: dict[str, int] = {}
        self.entered = asyncio.Event()
        app, calls = self.app, self.calls

        def count(name: str) -> int:
            calls[name] = calls.get(name, 0) + 1
            return calls[name]

        @app.task(name="flaky", retry_on=(ConnectionError,), max_retries=3, retry_backoff=0.05)
        async def flaky(fail_times: int) -> str:
            if count("flaky") <= fail_times:
                raise ConnectionError("the network blinked")
            return "done"

        @app.task(name="wrong", retry_on=ConnectionError, max_retries=3, retry_backoff=0)
        async def wrong() -> None:
            count("wrong")
            raise ValueError("not a network error")

        @app.task(name="stubborn", retry_on=ConnectionError, max_retries=3, retry_backoff=0)
        async def stubborn() -> None:
            count("stubborn")
            self.entered.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise ConnectionError("raised on the way out of an abort") from None

        @app.task(name="limited", retry_on=Exception, retry_backoff=0, time_limit=0.1)
        async def limited() -> None:
            count("limited")
            await asyncio.sleep(3600)

        self.flaky, self.wrong, self.stubborn, self.limited = flaky, wrong, stubborn, limited
        self.worker = aioabort.Worker(app)
        self._run: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._run = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        if self._run is not None:
            self.worker.stop_now()
            await asyncio.wait_for(self._run, 30)


@pytest.fixture
async def flaky(store_url: str) -> AsyncIterator[Flaky]:
    lab = Flaky(store_url)
    async with lab.app:
        lab.start()
        try:
            yield lab
        finally:
            await lab.stop()


async def test_a_retried_run_is_the_same_record_again_after_its_backoff(flaky: Flaky) -> None:
    handle = await flaky.flaky.delay(2)
    assert await handle.result(timeout=20) == "done"
    record = await handle.record()
    assert record.attempts == 3 and flaky.calls["flaky"] == 3
    assert record.error is None and record.not_before is not None
    assert record.started_at is not None and record.started_at >= record.not_before
    assert [r.id for r in await flaky.app.tasks()] == [handle.id]  # one record, not three


async def test_the_last_failure_ends_failure(flaky: Flaky) -> None:
    handle = await flaky.flaky.delay(10)
    record = await handle.wait(timeout=20)
    assert record.state is TaskState.FAILURE and record.attempts == 4  # 1 + max_retries
    assert record.error is not None and record.error.type == "ConnectionError"
    assert flaky.calls["flaky"] == 4


async def test_other_exceptions_are_not_retried(flaky: Flaky) -> None:
    record = await (await flaky.wrong.delay()).wait(timeout=10)
    assert record.state is TaskState.FAILURE and record.attempts == 1
    assert flaky.calls["wrong"] == 1


async def test_an_abort_is_never_retried(flaky: Flaky) -> None:
    handle = await flaky.stubborn.delay()
    await wait_until(lambda: has_state(flaky.app, handle.id, TaskState.STARTED))
    await asyncio.wait_for(flaky.entered.wait(), 10)
    assert await handle.abort("stop it")
    record = await handle.wait(timeout=10)
    assert record.is_finished and record.attempts == 1 and flaky.calls["stubborn"] == 1
    assert record.reason is not None and record.reason.code == "user"


async def test_a_time_limit_is_never_retried(flaky: Flaky) -> None:
    record = await (await flaky.limited.delay()).wait(timeout=10)
    assert record.state is TaskState.ABORTED and record.attempts == 1
    assert record.reason is not None and record.reason.code == "timeout"


async def test_a_spawned_run_is_not_retried(flaky: Flaky) -> None:
    record = await (await flaky.flaky.spawn(1)).wait(timeout=10)
    assert record.state is TaskState.FAILURE and record.attempts == 1


BAD_RETRIES: list[dict[str, Any]] = [
    {"retry_on": 5},
    {"retry_on": (ValueError, "x")},
    {"retry_on": BaseException},
    {"retry_on": ValueError, "max_retries": -1},
    {"retry_on": ValueError, "max_retries": 1.5},
    {"retry_on": ValueError, "max_retries": True},
    {"retry_on": ValueError, "retry_backoff": -1},
    {"retry_on": ValueError, "retry_backoff": float("inf")},
]


@pytest.mark.parametrize("options", BAD_RETRIES, ids=repr)
def test_bad_retry_settings_are_refused_at_registration(options: dict[str, Any]) -> None:
    app = aioabort.App("memory://retries")

    async def job() -> None:
        return None

    with pytest.raises(UsageError):
        app.task(name="job", **options)(job)
    assert "job" not in app.registry
