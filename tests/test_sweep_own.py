"""The abort sweep run over aioabort's own cleanup paths: scope.to_thread, scope.cleanup(),
the worker's task wrapper and the web middleware in each of its modes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

import aioabort
from aioabort._runner import execute, make_scope
from aioabort._sweep import sweep
from aioabort._sweep_asgi import AsgiRequest, Response
from aioabort._sweep_frames import CodeRule
from aioabort.testing import MemoryStore, SweepRun, abort_sweep, asgi_request
from aioabort.web import AbortMiddleware

# -- scope.to_thread ---------------------------------------------------------------------------


async def test_to_thread_under_a_native_timeout_waits_for_its_thread() -> None:
    """An outer asyncio cancellation (asyncio.timeout, wait_for, a TaskGroup) must not return
    from scope.to_thread while its thread runs: the scope would record its end before the
    thread's work was done."""
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.05)
        finished.set()

    async def body(scope: aioabort.AbortScope) -> None:
        finished.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await scope.to_thread(work)
        assert finished.is_set(), "scope.to_thread returned while its thread still ran"

    report = await abort_sweep(body)
    assert report.ok, str(report)


async def test_to_thread_waits_for_its_thread_when_its_task_is_cancelled() -> None:
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.05)
        finished.set()

    app = aioabort.App(store=MemoryStore())
    async with app, aioabort.abortable("thread-under-cancel", app=app) as scope:
        task = asyncio.create_task(scope.to_thread(work))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()


# -- helpers: aioabort's own frames count as the code under test ------------------------------

#: aioabort's own frames count as the code under test here: its tasks and its lines.
OWN = CodeRule(own=True)


@dataclass(frozen=True)
class _Body:
    body: Callable[[aioabort.AbortScope], Coroutine[Any, Any, object]]

    async def run(self, app: aioabort.App, task_id: str) -> None:
        async with aioabort.abortable(task_id, app=app, detached=True) as scope:
            await self.body(scope)

    def without_scope(self) -> str:
        return "no record"


# -- scope.cleanup() ---------------------------------------------------------------------------


class Connection:
    """A stand-in for a pooled connection: a transaction must be rolled back, the connection
    returned; each step awaits."""

    def __init__(self) -> None:
        self.in_transaction = False
        self.checked_out = False

    async def begin(self) -> None:
        await asyncio.sleep(0)
        self.checked_out = self.in_transaction = True

    async def execute(self) -> None:
        await asyncio.sleep(0)

    async def rollback(self) -> None:
        await asyncio.sleep(0)
        self.in_transaction = False

    async def release(self) -> None:
        await asyncio.sleep(0)
        self.checked_out = False

    def check(self, run: SweepRun) -> None:
        assert not self.in_transaction, "transaction left open"
        assert not self.checked_out, "connection not returned"


async def test_scope_cleanup_runs_its_awaits_to_the_end_wherever_the_abort_lands() -> None:
    conn = Connection()

    async def body(scope: aioabort.AbortScope) -> None:
        await conn.begin()
        try:
            await conn.execute()
            await conn.execute()
            await conn.rollback()
        finally:
            async with scope.cleanup(timeout=5):
                if conn.in_transaction:
                    await conn.rollback()
                await conn.release()

    report = await sweep(_Body(body), conn.check, None, 10.0, OWN)
    assert report.ok, str(report)


async def test_awaits_in_a_plain_finally_are_cancelled_again_and_the_sweep_says_where() -> None:
    """Without scope.cleanup(), the cleanup's own awaits meet the abort again (delivery is
    level-triggered): the connection is never returned."""
    conn = Connection()

    async def body(scope: aioabort.AbortScope) -> None:
        await conn.begin()
        try:
            await conn.execute()
        finally:
            await conn.rollback()
            await conn.release()

    report = await abort_sweep(body, check=conn.check)
    assert [run.point for run in report.failures] == [2, 3, 4]
    assert report.runs[1].error == "check() raised AssertionError: transaction left open"
    assert report.runs[3].error == "check() raised AssertionError: connection not returned"
    conn.in_transaction = conn.checked_out = False


# -- the worker's task wrapper ----------------------------------------------------------------


@dataclass(frozen=True)
class _Claimed:
    """A queued run of ``task``, claimed and executed as the worker does."""

    task: aioabort.Task[Any, Any]
    returned: dict[str, object] = field(default_factory=dict)

    async def run(self, app: aioabort.App, task_id: str) -> None:
        await self.task.apply((3,), task_id=task_id)
        runtime = app.runtime
        (record,) = await runtime.store.claim(
            owner=runtime.owner, queues=[self.task.queue], limit=1, names=[self.task.name]
        )
        scope = make_scope(app, self.task, record, claimed=True)
        self.returned[task_id] = await execute(scope, self.task, record)

    def without_scope(self) -> str:
        return "no record"


async def test_the_worker_task_wrapper_records_every_abort() -> None:
    app = aioabort.App(store=MemoryStore())
    released: list[int] = []

    @app.task(queue="swept")
    async def job(n: int) -> int:
        scope = aioabort.current_scope()
        try:
            for i in range(n):
                await scope.report((i + 1) / n)
                await asyncio.sleep(0)
        finally:
            released.append(n)
        return n

    target = _Claimed(job)

    async def check(run: SweepRun) -> None:
        scope = target.returned.pop(run.task_id)
        assert isinstance(scope, aioabort.AbortScope), scope
        record = await app.handle(run.task_id).record()
        assert scope.record is not None and scope.record.state is record.state
        assert scope.aborted is (record.state is aioabort.TaskState.ABORTED)
        assert record.result == (3 if record.state is aioabort.TaskState.SUCCESS else None)
        assert released.pop() == 3, "the task's finally did not run"

    report = await sweep(target, check, app, 10.0, OWN)
    assert report.ok, str(report)
    assert report.points >= 3


# -- the web middleware, in each of its modes --------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """``asgi_request`` that keeps each run's response for the check."""

    request: AsgiRequest
    responses: dict[str, Response] = field(default_factory=dict)

    async def run(self, app: aioabort.App, task_id: str) -> None:
        self.responses[task_id] = await self.request.run(app, task_id)

    def without_scope(self) -> str:
        return self.request.without_scope()


def raw_app(held: set[str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        held.add("lock")
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            held.discard("lock")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


@pytest.mark.parametrize(
    "mode",
    [{}, {"abort_on_disconnect": True}, {"abort_as_disconnect": True}],
    ids=["plain", "abort_on_disconnect", "abort_as_disconnect"],
)
async def test_the_middleware_answers_every_aborted_request_as_aborted(
    mode: dict[str, Any],
) -> None:
    """Wherever the abort lands, the application's cleanup ran, the client got a whole
    answer, and the answer agrees with the record: 200 for SUCCESS (the abort came too late
    to stop anything), 499 for ABORTED — never a complete 200 recorded ABORTED."""
    aborts = aioabort.App(store=MemoryStore())
    held: set[str] = set()
    api = AbortMiddleware(raw_app(held), aborts=aborts, **mode)
    target = _Request(asgi_request(api, "POST", "/report"))

    async def check(run: SweepRun) -> None:
        response = target.responses.pop(run.task_id)
        assert not held, "the application's lock is still held"
        assert response.complete, "the response was left incomplete"
        state = (await aborts.handle(run.task_id).record()).state
        expected = 200 if state is aioabort.TaskState.SUCCESS else 499
        assert response.status == expected, f"{state.value} answered {response.status}"

    report = await sweep(target, check, aborts, 10.0, OWN)
    assert report.ok, str(report)


# -- the aiohttp middleware ---------------------------------------------------------------------


@dataclass(frozen=True)
class _AiohttpRequest:
    """A request through ``aioabort.aiohttp.abort_middleware``, called as aiohttp does."""

    handler: Callable[[Any], Coroutine[Any, Any, Any]]
    statuses: dict[str, int] = field(default_factory=dict)

    async def run(self, app: aioabort.App, task_id: str) -> None:
        from aiohttp.test_utils import make_mocked_request

        from aioabort.aiohttp import abort_middleware

        middleware = abort_middleware(app)
        request = make_mocked_request("POST", "/report", headers={"X-Request-Id": task_id})
        response = await middleware(request, self.handler)
        self.statuses[task_id] = response.status

    def without_scope(self) -> str:
        return "no record"


async def test_the_aiohttp_middleware_answers_every_aborted_request_as_aborted() -> None:
    from aiohttp import web

    aborts = aioabort.App(store=MemoryStore())
    held: set[str] = set()

    async def handler(request: Any) -> Any:
        held.add("lock")
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            held.discard("lock")
        return web.json_response({"done": True})

    target = _AiohttpRequest(handler)

    async def check(run: SweepRun) -> None:
        status = target.statuses.pop(run.task_id)
        assert not held, "the handler's lock is still held"
        state = (await aborts.handle(run.task_id).record()).state
        assert status == (200 if state is aioabort.TaskState.SUCCESS else 499), (state, status)

    report = await sweep(target, check, aborts, 10.0, OWN)
    assert report.ok, str(report)
    assert report.points == 2
