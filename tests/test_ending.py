"""Every end of a run goes through one writer with one retry net: a store that fails the end
write once (scope exit, time limit, unknown task name, a stubborn task the worker gives up on,
a requeue at shutdown) still ends the record right, once the store takes writes again."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import aioabort
from aioabort import ErrorInfo, StoreUnavailable, TaskState
from aioabort._runner import fail_unknown

from .conftest import has_state, wait_until


class FailOnce:
    """Wraps one store method: its first call raises StoreUnavailable, the rest go through."""

    def __init__(self, method: Callable[..., Awaitable[Any]]) -> None:
        self.method = method
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise StoreUnavailable("injected: the store is down for this one write")
        return await self.method(*args, **kwargs)


def fail_once(monkeypatch: pytest.MonkeyPatch, app: aioabort.App, name: str = "finish") -> FailOnce:
    wrapper = FailOnce(getattr(app.store, name))
    monkeypatch.setattr(app.store, name, wrapper)
    return wrapper


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[aioabort.App]:
    async with aioabort.App(store_url, shutdown_grace=0.5) as opened:
        yield opened


@pytest.fixture
def stubborn(app: aioabort.App) -> Iterator[Callable[[bool], Stubborn]]:
    made: list[Stubborn] = []

    def make(retryable: bool) -> Stubborn:
        made.append(Stubborn(app, retryable=retryable))
        return made[-1]

    yield make
    for one in made:  # the test is over: the loop's teardown may cancel it for good
        one.released = True


async def test_a_scope_exit_whose_end_write_fails_still_ends(
    app: aioabort.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    finish = fail_once(monkeypatch, app)
    async with aioabort.abortable("exit"):
        await asyncio.sleep(0)
    assert finish.calls == 1 and app.redo.pending() == ["exit"]
    await wait_until(lambda: has_state(app, "exit", TaskState.SUCCESS), what="the retried end")
    await wait_until(lambda: app.redo.pending() == [], what="the redo list to let it go")
    assert finish.calls == 2


async def test_a_time_limit_whose_end_write_fails_still_ends_aborted(
    app: aioabort.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    finish = fail_once(monkeypatch, app)
    with pytest.raises(aioabort.TaskAborted) as caught:
        async with aioabort.abortable("slow", time_limit=0.05):
            await asyncio.sleep(60)
    assert caught.value.reason is not None and caught.value.reason.code == "timeout"
    await wait_until(lambda: has_state(app, "slow", TaskState.ABORTED), what="the retried end")
    record = await app.handle("slow").record()
    assert record.reason is not None and record.reason.code == "timeout"
    assert finish.calls == 2


async def test_an_unknown_task_whose_end_write_fails_still_ends(
    app: aioabort.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(name="known")
    async def known() -> None: ...

    await known.apply(task_id="renamed")
    runtime = app.runtime
    [claimed] = await runtime.store.claim(
        owner=runtime.owner, queues=["default"], limit=1, names=None
    )
    claimed = dataclasses.replace(claimed, name="gone.away")  # renamed in a newer version
    finish = fail_once(monkeypatch, app)
    await fail_unknown(runtime, claimed, ["known"])
    await wait_until(lambda: has_state(app, "renamed", TaskState.FAILURE), what="the retried end")
    record = await app.handle("renamed").record()
    assert record.error is not None and record.error.type == "UnknownTask"
    assert "gone.away" in record.error.message and finish.calls == 2


class Stubborn:
    """A task that ignores every cancellation (it swallows them) until released."""

    def __init__(self, app: aioabort.App, *, retryable: bool) -> None:
        self.entered = asyncio.Event()
        self.released = False

        @app.task(name="stubborn", retryable=retryable)
        async def stubborn() -> None:
            self.entered.set()
            while True:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    if self.released:
                        raise

        self.task = stubborn


async def test_a_task_the_worker_gives_up_on_still_ends_when_the_write_fails(
    app: aioabort.App, stubborn: Callable[[bool], Stubborn], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = stubborn(False)
    worker = aioabort.Worker(app, grace=0, kill_after=0.1)
    running = asyncio.create_task(worker.run())
    await task.task.apply(task_id="mule")
    await asyncio.wait_for(task.entered.wait(), 10)
    finish = fail_once(monkeypatch, app)
    worker.stop()
    await asyncio.wait_for(running, 20)
    assert worker.abandoned == ["mule"]
    await wait_until(lambda: has_state(app, "mule", TaskState.FAILURE), what="the retried end")
    record = await app.handle("mule").record()
    assert record.error is not None and record.error.cause == ErrorInfo.KILLED
    assert finish.calls >= 2


async def test_a_requeue_whose_write_fails_still_requeues(
    app: aioabort.App, stubborn: Callable[[bool], Stubborn], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = stubborn(True)
    worker = aioabort.Worker(app, grace=0, kill_after=0.1)
    running = asyncio.create_task(worker.run())
    await task.task.apply(task_id="again")
    await asyncio.wait_for(task.entered.wait(), 10)
    requeue = fail_once(monkeypatch, app, "requeue")
    worker.stop()
    await asyncio.wait_for(running, 20)
    await wait_until(lambda: has_state(app, "again", TaskState.PENDING), what="the retried requeue")
    assert requeue.calls >= 2


async def test_a_stubborn_retryable_task_a_user_aborted_is_not_requeued(
    app: aioabort.App,
    stubborn: Callable[[bool], Stubborn],
) -> None:
    """The requeue rule is the same wherever a run ends: only a retryable task stopped by its
    worker's shutdown goes back to the queue; one a user aborted first ends, even when the
    worker gives up on it."""
    task = stubborn(True)
    worker = aioabort.Worker(app, grace=0, kill_after=0.1)
    running = asyncio.create_task(worker.run())
    handle = await task.task.apply(task_id="user-stopped")
    await asyncio.wait_for(task.entered.wait(), 10)
    assert await handle.abort("the user asked") is True
    worker.stop()
    await asyncio.wait_for(running, 20)
    record = await handle.record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == ErrorInfo.KILLED
    assert record.reason is not None and record.reason.code == "user"


async def test_a_run_started_by_a_scope_goes_back_to_pending(app: aioabort.App) -> None:
    """A record a scope made has no queue: requeueing it wakes no queue's workers (on
    PostgreSQL there is no channel to notify) and the scope's own end then writes nothing."""
    from aioabort import _ending

    async with aioabort.abortable("no-queue", app=app):
        written = await _ending.requeue(app.runtime, "no-queue")
        assert written.landed and written.record is not None
        assert written.record.state is TaskState.PENDING
    assert await app.handle("no-queue").state() is TaskState.PENDING
