"""Cancellation that follows the call: a request sent inside a scope (httpx's ``propagate``
hook, aiohttp's ``propagation()``) names its task and the time left; a server with
``trust_parent=True`` makes the request that task's child and takes the time left as its time
limit. The header rules are written once (``aioabort.web._requests``): unit tests of them
first, then real servers in this process under both middlewares, on every store."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import aioabort
import aioabort.httpx
from aioabort import TaskState, abortable
from aioabort.web._requests import PARENT_HEADER, TIMEOUT_HEADER, Call, call_headers, read_call

from ._servers import in_process

# -- the headers, read (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("2", 2.0), ("1.875", 1.875), (" 0.001 ", 0.001), ("9999999.5", 9999999.5)],
)
def test_a_timeout_header_is_plain_positive_seconds(raw: str, seconds: float) -> None:
    assert read_call(None, raw, trusted=True) == Call(None, seconds)


@pytest.mark.parametrize(
    "raw",
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "infinity",
        "1e400",
        "-1",
        "+1",
        "0",
        "0.000",
        "1e3",
        "1_0",
        "0x10",
        "",
        "  ",
        "10000000",  # the longest time limit a task may have
        "9" * 300,
        "1.2.3",
        ".5",
        "2s",
        "٣",  # a digit, but not an ASCII one
    ],
)
def test_a_timeout_that_is_not_positive_finite_seconds_is_ignored(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="aioabort.web"):
        assert read_call(None, raw, trusted=True) is None
        assert read_call("caller-1", raw, trusted=True) == Call("caller-1", None)
    ignored = [r for r in caplog.records if getattr(r, "action", "") == "call_header_ignored"]
    assert len(ignored) == 2 and {r.levelno for r in ignored} == {logging.DEBUG}
    assert {getattr(r, "header", "") for r in ignored} == {TIMEOUT_HEADER}


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "a\x00b", "tab\there", "x" * 201, "naïve", "\udcff", "new\nline"],
    ids=["empty", "spaces", "nul", "tab", "too-long", "non-ascii", "surrogate", "newline"],
)
def test_a_parent_that_is_not_a_task_id_is_ignored(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="aioabort.web"):
        assert read_call(raw, None, trusted=True) is None
        assert read_call(raw, "3", trusted=True) == Call(None, 3.0)
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert len(caplog.records) == 2


def test_a_parent_header_is_a_task_id() -> None:
    assert read_call(" req:42/a+b=c@d ", None, trusted=True) == Call("req:42/a+b=c@d", None)
    assert read_call("with space", "1", trusted=True) == Call("with space", 1.0)
    assert read_call("x" * 200, None, trusted=True) == Call("x" * 200, None)


def test_untrusted_headers_are_ignored_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aioabort.web"):
        assert read_call("caller-1", "2", trusted=False) is None
        assert read_call(None, None, trusted=False) is None
        assert read_call(None, None, trusted=True) is None
    assert [(r.levelno, getattr(r, "header", "")) for r in caplog.records] == [
        (logging.DEBUG, PARENT_HEADER),
        (logging.DEBUG, TIMEOUT_HEADER),
    ]


# -- the headers, sent --------------------------------------------------------------------


async def test_call_headers_name_the_scope_and_its_time_left(store_url: str) -> None:
    assert call_headers() == {}  # outside any scope: nothing
    async with aioabort.App(store_url) as app:
        async with abortable("plain-1", app=app):
            plain = call_headers()
        async with abortable("limited-1", app=app, time_limit=30):
            limited = call_headers()
            async with abortable("inner-1", app=app, time_limit=60):
                inner = call_headers()
            async with abortable("inner-2", app=app, time_limit=5):
                tighter = call_headers()
        async with abortable("naïve-1", app=app, time_limit=30):
            unsendable = call_headers()
    assert plain == {PARENT_HEADER: "plain-1"}
    assert limited.keys() == {PARENT_HEADER, TIMEOUT_HEADER}
    assert limited[PARENT_HEADER] == "limited-1" and 0 < float(limited[TIMEOUT_HEADER]) <= 30
    # an enclosing scope's limit counts when it comes first
    assert inner[PARENT_HEADER] == "inner-1" and 0 < float(inner[TIMEOUT_HEADER]) <= 30
    assert 0 < float(tighter[TIMEOUT_HEADER]) <= 5
    assert unsendable.keys() == {TIMEOUT_HEADER}  # a header cannot carry that id as it is
    for headers in (limited, inner, tighter):  # what a server reads back
        assert read_call(headers[PARENT_HEADER], headers[TIMEOUT_HEADER], trusted=True)


# -- real servers, both middlewares ---------------------------------------------------------


@dataclass
class Site:
    """A server behind one of the middlewares: ``/slow`` waits to be stopped (setting an
    event per request id once it runs), ``/fast`` answers its scope's time left."""

    base: str
    aborts: aioabort.App
    entered: dict[str, asyncio.Event] = field(default_factory=dict)

    def running(self, request_id: str) -> asyncio.Event:
        return self.entered.setdefault(request_id, asyncio.Event())


@asynccontextmanager
async def starlette_site(store_url: str, *, trust_parent: bool) -> AsyncIterator[Site]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from aioabort.web import AbortMiddleware, request_scope

    site = Site("", aioabort.App(store_url))

    async def slow(request: Request) -> JSONResponse:
        site.running(request_scope(request).id).set()
        await asyncio.sleep(60)  # until the abort stops it
        return JSONResponse({"done": True})

    async def fast(request: Request) -> JSONResponse:
        return JSONResponse({"time_left": request_scope(request).time_left()})

    api = Starlette(
        lifespan=site.aborts.lifespan, routes=[Route("/slow", slow), Route("/fast", fast)]
    )
    asgi = AbortMiddleware(api, aborts=site.aborts, trust_parent=trust_parent)
    async with in_process(asgi) as base:
        site.base = base
        yield site


@asynccontextmanager
async def aiohttp_site(store_url: str, *, trust_parent: bool) -> AsyncIterator[Site]:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from aioabort.aiohttp import SCOPE, setup

    site = Site("", aioabort.App(store_url))

    async def slow(request: web.Request) -> web.Response:
        site.running(request[SCOPE].id).set()
        await asyncio.sleep(60)  # until the abort stops it
        return web.json_response({"done": True})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"time_left": request[SCOPE].time_left()})

    app = web.Application()
    setup(app, site.aborts, trust_parent=trust_parent)
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    async with TestServer(app, host="127.0.0.1") as server:
        site.base = str(server.make_url("/")).rstrip("/")
        yield site


Serve = Callable[..., AbstractAsyncContextManager[Site]]


@pytest.fixture(params=[starlette_site, aiohttp_site], ids=["starlette", "aiohttp"])
def serve(request: pytest.FixtureRequest) -> Serve:
    """``async with serve(store_url, trust_parent=...) as site`` under each framework."""
    sites: Serve = request.param

    def start(store_url: str, *, trust_parent: bool = True) -> AbstractAsyncContextManager[Site]:
        return sites(store_url, trust_parent=trust_parent)

    return start


def propagating(site: Site) -> httpx.AsyncClient:
    hooks = {"request": [aioabort.httpx.propagate], "response": [aioabort.httpx.propagate]}
    return httpx.AsyncClient(base_url=site.base, timeout=30, event_hooks=hooks)


async def _abort_the_caller(app: aioabort.App, how: str) -> None:
    if how == "caller":
        assert await app.handle("caller-1").abort("stop the caller", by="ops")
    elif how == "ancestor":
        assert await app.handle("root-1").abort("stop the caller", by="ops")
    else:
        assert await app.abort_many(labels={"user": "alice"}, reason="stop the caller") != []


@pytest.mark.parametrize("how", ["caller", "ancestor", "labels"])
async def test_aborting_the_caller_stops_the_call(serve: Serve, store_url: str, how: str) -> None:
    """The caller's task (or its parent, or ``abort_many`` on its labels) is aborted in
    another App: the call it made, running on the server, stops with a 499 naming it."""
    async with (
        serve(store_url) as site,
        aioabort.App(store_url) as caller_app,
        propagating(site) as http,
    ):
        root = abortable("root-1", app=caller_app, suppress=True)
        caller = abortable("caller-1", app=caller_app, suppress=True, labels={"user": "alice"})
        async with root, caller:
            call = asyncio.create_task(http.get("/slow", headers={"x-request-id": "call-1"}))
            await asyncio.wait_for(site.running("call-1").wait(), 20)
            await _abort_the_caller(site.aborts, how)
            await asyncio.sleep(60)  # until the abort stops the caller
        response = await asyncio.wait_for(call, 20)
        record = await site.aborts.handle("call-1").wait(timeout=20)
    assert response.status_code == 499 and response.json()["task_id"] == "call-1"
    reason = response.json()["reason"]
    named = "root-1" if how == "ancestor" else "caller-1"  # the task the abort was asked of
    assert reason["code"] == "parent" and reason["message"].startswith(f"parent {named} ")
    assert record.state is TaskState.ABORTED and record.parent_id == "caller-1"
    assert record.reason is not None and record.reason.code == "parent"


async def test_a_call_under_an_aborted_caller_answers_499_at_once(
    serve: Serve, store_url: str
) -> None:
    async with serve(store_url) as site:
        await site.aborts.handle("gone-1").abort("already stopped", create=True)
        async with httpx.AsyncClient(base_url=site.base, timeout=30) as http:
            response = await http.get("/slow", headers={PARENT_HEADER: "gone-1"})
    assert response.status_code == 499 and "gone-1" in response.json()["reason"]["message"]
    assert not any(event.is_set() for event in site.entered.values())


async def test_the_callers_time_left_is_the_time_limit(serve: Serve, store_url: str) -> None:
    """A call made in a scope with a time limit: the server's scope has at most that much
    left. Run out, the request stops with code ``timeout``, the reason naming the parent."""
    async with serve(store_url) as site, propagating(site) as http:
        async with abortable("caller-2", app=site.aborts, time_limit=2):
            left = (await http.get("/fast")).json()["time_left"]
        headers = {PARENT_HEADER: "caller-2", TIMEOUT_HEADER: "0.2", "x-request-id": "call-2"}
        response = await http.get("/slow", headers=headers)
        record = await site.aborts.handle("call-2").wait(timeout=20)
    assert 0 < left <= 2
    assert response.status_code == 499
    assert response.json()["reason"]["code"] == "timeout"
    message = "the time left by its caller, task caller-2, ran out (0.2s)"
    assert response.json()["reason"]["message"] == message
    assert record.state is TaskState.ABORTED and record.parent_id == "caller-2"


async def test_untrusted_headers_change_nothing(serve: Serve, store_url: str) -> None:
    """Off by default: the headers name a real, running task and a short time left; the
    request is nobody's child and has no time limit, and aborting the named task leaves it
    running (an abort of its own is its first)."""
    async with serve(store_url, trust_parent=False) as site, propagating(site) as http:
        async with abortable("caller-3", app=site.aborts, suppress=True):
            fast = await http.get("/fast", headers={TIMEOUT_HEADER: "0.5"})
            call = asyncio.create_task(http.get("/slow", headers={"x-request-id": "call-3"}))
            await asyncio.wait_for(site.running("call-3").wait(), 20)
            await site.aborts.handle("caller-3").abort("stop the caller")
            await asyncio.sleep(60)  # until the abort stops the caller
        assert await site.aborts.handle("call-3").state() is TaskState.STARTED
        await site.aborts.handle("call-3").abort("its own abort", by="ops")
        response = await asyncio.wait_for(call, 20)
        record = await site.aborts.handle("call-3").wait(timeout=20)
    assert fast.status_code == 200 and fast.json() == {"time_left": None}
    assert response.status_code == 499 and response.json()["reason"]["code"] == "user"
    assert record.parent_id is None


@pytest.mark.parametrize(
    "headers",
    [
        {PARENT_HEADER: "no-such-task"},
        {PARENT_HEADER: "no-such-task", TIMEOUT_HEADER: "nan"},
        {PARENT_HEADER: "bad\tid", TIMEOUT_HEADER: "-3"},
        {TIMEOUT_HEADER: "inf"},
        {PARENT_HEADER: "call-4"},  # its own id: not a record yet
    ],
    ids=["unknown", "unknown-nan", "bad-negative", "inf", "itself"],
)
async def test_bad_headers_are_ignored(
    serve: Serve, store_url: str, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Never an error, never a record of the named parent, never a link."""
    async with serve(store_url) as site:
        async with httpx.AsyncClient(base_url=site.base, timeout=30) as http:
            with caplog.at_level(logging.DEBUG, logger="aioabort.web"):
                response = await http.get("/fast", headers={**headers, "x-request-id": "call-4"})
        record = await site.aborts.handle("call-4").wait(timeout=20)
        ids = {task.id for task in await site.aborts.tasks()}
    assert response.status_code == 200 and response.json() == {"time_left": None}
    assert record.state is TaskState.SUCCESS and record.parent_id is None
    assert ids == {"call-4"}
    assert not [r for r in caplog.records if r.levelno > logging.INFO]


async def test_a_caller_on_another_store_sends_its_time_left_only(
    serve: Serve, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's scope is in another store: its time left is the request's time limit,
    the parent link is skipped, and that is said once in the log."""
    async with (
        serve(store_url) as site,
        aioabort.App(f"memory://elsewhere-{id(site)}") as elsewhere,
        propagating(site) as http,
    ):
        with caplog.at_level(logging.INFO, logger="aioabort.web"):
            async with abortable("far-1", app=elsewhere, time_limit=30):
                answers = [
                    await http.get("/fast", headers={"x-request-id": f"call-5{n}"})
                    for n in range(3)
                ]
        records = [await site.aborts.handle(f"call-5{n}").wait(timeout=20) for n in range(3)]
    assert all(0 < a.json()["time_left"] <= 30 for a in answers)
    assert [r.parent_id for r in records] == [None] * 3
    told = [r for r in caplog.records if getattr(r, "action", "") == "call_parent_unknown"]
    assert len(told) == 1 and told[0].levelno == logging.INFO and "far-1" in told[0].message


async def test_aiohttp_clients_propagate_too(store_url: str) -> None:
    """``aioabort.aiohttp.propagation()``: the same headers from an aiohttp client."""
    from aiohttp import ClientSession

    from aioabort.aiohttp import propagation

    async with starlette_site(store_url, trust_parent=True) as site:
        async with ClientSession(trace_configs=[propagation()]) as session:
            async with session.get(f"{site.base}/fast") as outside:
                assert (await outside.json()) == {"time_left": None}
            async with (
                abortable("caller-6", app=site.aborts, time_limit=10),
                session.get(f"{site.base}/fast", headers={"x-request-id": "call-6"}) as inside,
            ):
                left: Any = (await inside.json())["time_left"]
        record = await site.aborts.handle("call-6").wait(timeout=20)
    assert 0 < left <= 10 and record.parent_id == "caller-6"


async def _get_with_aiohttp(site: Site, path: str, headers: dict[str, str]) -> object:
    from aiohttp import ClientSession

    from aioabort.aiohttp import propagation

    async with (
        ClientSession(site.base, trace_configs=[propagation()]) as session,
        session.get(path, headers=headers) as answer,
    ):
        return answer.status


async def _get_with_httpx(site: Site, path: str, headers: dict[str, str]) -> object:
    async with propagating(site) as http:
        return (await http.get(path, headers=headers)).status_code


@pytest.mark.parametrize("get", [_get_with_httpx, _get_with_aiohttp], ids=["httpx", "aiohttp"])
async def test_a_caller_that_hears_of_its_abort_last_stops_at_the_answer(
    get: Callable[[Site, str, dict[str, str]], Any],
) -> None:
    """The called service can hear of the caller's abort first (the store aborts the family
    in one write; each process hears of it in its own time). Here the caller's App hears of
    no change at all: the 499 answer makes it read its records (the call is made in a scope
    inside the aborted one), so both stop where the call was awaited, ABORTED, and the
    caller's code never sees that answer."""
    store_url = f"memory://deaf-{uuid.uuid4().hex}"
    async with starlette_site(store_url, trust_parent=True) as site:
        caller_app = aioabort.App(store_url)
        async with caller_app:
            store: Any = caller_app.runtime.store
            store.db.watchers.remove(store._watching)  # deaf: only the answer can tell it

            async def abort_the_caller() -> None:
                await site.running("call-7").wait()
                await site.aborts.handle("caller-7").abort("stop the caller", by="ops")

            aborter = asyncio.create_task(abort_the_caller())
            answers = []
            async with (
                abortable("caller-7", app=caller_app, suppress=True) as caller,
                abortable("inner-7", app=caller_app),
            ):
                answers.append(await get(site, "/slow", {"x-request-id": "call-7"}))
            await asyncio.wait_for(aborter, 20)
            records = [await caller_app.handle(i).record() for i in ("caller-7", "inner-7")]
    assert answers == []
    assert caller.aborted and caller.reason is not None
    assert caller.reason.message == "stop the caller"
    assert [r.state for r in records] == [TaskState.ABORTED] * 2
