"""A request's scope answers the same under every framework: the ASGI middleware (behind
Starlette, on a uvicorn) and the aiohttp one (on aiohttp's server), both real servers on
loopback in this process. Each test runs on both and holds one expectation: the statuses, the
bodies, the echoed request id and the ``by`` of a disconnect (the rules are written once, in
``aioabort.web._requests``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

import aioabort
from aioabort import TaskState

from ._servers import in_process


@dataclass
class Site:
    """A server behind one of the middlewares: its base URL, its App, and an event per request
    id that its slow endpoint sets once it runs."""

    base: str
    aborts: aioabort.App
    entered: dict[str, asyncio.Event] = field(default_factory=dict)

    def running(self, request_id: str) -> asyncio.Event:
        return self.entered.setdefault(request_id, asyncio.Event())


@asynccontextmanager
async def starlette_site(store_url: str, *, abort_on_disconnect: bool) -> AsyncIterator[Site]:
    """Starlette behind ``AbortMiddleware`` on a uvicorn: ``/slow`` waits to be stopped,
    ``/fast`` answers at once."""
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
        return JSONResponse({"done": True})

    api = Starlette(
        lifespan=site.aborts.lifespan, routes=[Route("/slow", slow), Route("/fast", fast)]
    )
    asgi = AbortMiddleware(api, aborts=site.aborts, abort_on_disconnect=abort_on_disconnect)
    async with in_process(asgi) as base:
        site.base = base
        yield site


@asynccontextmanager
async def aiohttp_site(store_url: str, *, abort_on_disconnect: bool) -> AsyncIterator[Site]:
    """The same endpoints on aiohttp's server, with ``setup()``."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from aioabort.aiohttp import SCOPE, setup

    site = Site("", aioabort.App(store_url))

    async def slow(request: web.Request) -> web.Response:
        site.running(request[SCOPE].id).set()
        await asyncio.sleep(60)  # until the abort stops it
        return web.json_response({"done": True})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"done": True})

    app = web.Application()
    setup(app, site.aborts, abort_on_disconnect=abort_on_disconnect)
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    async with TestServer(app, host="127.0.0.1") as server:
        site.base = str(server.make_url("/")).rstrip("/")
        yield site


Serve = Callable[..., AbstractAsyncContextManager[Site]]


@pytest.fixture(params=[starlette_site, aiohttp_site], ids=["starlette", "aiohttp"])
def serve(request: pytest.FixtureRequest) -> Serve:
    """Starts a site under each framework in turn: ``async with serve(store_url) as site``."""
    sites: Serve = request.param

    def start(
        store_url: str, *, abort_on_disconnect: bool = False
    ) -> AbstractAsyncContextManager[Site]:
        return sites(store_url, abort_on_disconnect=abort_on_disconnect)

    return start


def client(site: Site) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=site.base, timeout=30)


async def test_the_request_id_is_echoed_or_generated(serve: Serve, store_url: str) -> None:
    async with serve(store_url) as site, client(site) as http:
        sent = await http.get("/fast", headers={"x-request-id": "echo-1"})
        generated = await http.get("/fast")
        ids = ["echo-1", generated.headers.get("x-request-id", "")]
        records = [await site.aborts.handle(i).wait(timeout=20) for i in ids]
    assert sent.status_code == 200 and sent.headers["x-request-id"] == "echo-1"
    assert generated.status_code == 200 and len(ids[1]) == 32 and int(ids[1], 16) >= 0
    assert [r.state for r in records] == [TaskState.SUCCESS] * 2
    assert [r.name for r in records] == ["GET /fast"] * 2


@pytest.mark.parametrize(
    "value", ["has space", "x" * 201, "semi;colon"], ids=["space", "too-long", "semicolon"]
)
async def test_a_bad_request_id_is_a_400(serve: Serve, store_url: str, value: str) -> None:
    async with serve(store_url) as site, client(site) as http:
        response = await http.get("/fast", headers={"x-request-id": value})
        written = await site.aborts.tasks()
    assert response.status_code == 400 and "x-request-id" not in response.headers
    assert response.json() == {
        "error": "invalid_request_id",
        "detail": "the x-request-id header must be 1-200 letters, digits or ._:@/+=- characters",
    }
    assert written == []


async def test_an_id_naming_an_existing_record_is_a_409(serve: Serve, store_url: str) -> None:
    """A queued job's id and a finished request's id: 409, the same detail, nothing written."""
    async with serve(store_url) as site, client(site) as http:
        await site.aborts.create("queued-1", name="export")
        assert (await http.get("/fast", headers={"x-request-id": "once-1"})).status_code == 200
        await site.aborts.handle("once-1").wait(timeout=20)
        answers = [
            await http.get("/fast", headers={"x-request-id": i}) for i in ("queued-1", "once-1")
        ]
        queued = await site.aborts.handle("queued-1").state()
    for answer, request_id in zip(answers, ("queued-1", "once-1"), strict=True):
        assert answer.status_code == 409 and answer.headers["x-request-id"] == request_id
        assert answer.json() == {
            "error": "request_id_in_use",
            "detail": f"the request id {request_id!r} was already used",
        }
    assert queued is TaskState.PENDING


def _aborted_body(response: httpx.Response, request_id: str, message: str) -> None:
    """The 499 of an aborted request: its id echoed, and the one body shape."""
    assert response.status_code == 499 and response.headers["x-request-id"] == request_id
    body: dict[str, Any] = response.json()
    assert body.keys() == {"error", "task_id", "reason"}
    assert body["error"] == "aborted" and body["task_id"] == request_id
    reason = body["reason"]
    assert reason.keys() == {"code", "message", "by", "at"}
    assert (reason["code"], reason["message"], reason["by"]) == ("user", message, "ops")
    assert datetime.fromisoformat(reason["at"]).tzinfo is not None


async def test_an_aborted_request_is_a_499(serve: Serve, store_url: str) -> None:
    """Aborted while it runs, and aborted before it came (the endpoint never runs)."""
    async with serve(store_url) as site, client(site) as http:
        request = asyncio.create_task(http.get("/slow", headers={"x-request-id": "slow-1"}))
        await asyncio.wait_for(site.running("slow-1").wait(), 20)
        assert await site.aborts.handle("slow-1").abort("stop it", by="ops") is True
        running = await asyncio.wait_for(request, 20)
        await site.aborts.handle("early-1").abort("before it came", by="ops", create=True)
        early = await http.get("/slow", headers={"x-request-id": "early-1"})
        record = await site.aborts.handle("slow-1").wait(timeout=20)
    _aborted_body(running, "slow-1", "stop it")
    _aborted_body(early, "early-1", "before it came")
    assert not site.running("early-1").is_set()
    assert record.state is TaskState.ABORTED


async def test_a_disconnect_aborts_by_the_same_name(serve: Serve, store_url: str) -> None:
    """``abort_on_disconnect``: the client goes away while its request runs; the record ends
    ABORTED, code ``disconnect``, by ``aioabort.web``, under both frameworks."""
    async with serve(store_url, abort_on_disconnect=True) as site:
        parts = urlsplit(site.base)
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Request-Id: gone-1\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(site.running("gone-1").wait(), 20)
        writer.close()  # the client goes away
        record = await site.aborts.handle("gone-1").wait(timeout=20)
    assert record.state is TaskState.ABORTED and record.reason is not None
    assert (record.reason.code, record.reason.by) == ("disconnect", "aioabort.web")
    assert record.reason.message == "the client disconnected"
