"""aiohttp: setup() with cleanup_ctx and a typed AppKey; requests aborted from elsewhere.
A real aiohttp server on loopback (aiohttp's TestServer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import aioabort
from aioabort import TaskState
from aioabort.aiohttp import AIOABORT, SCOPE, setup


@pytest.fixture
async def served(
    store_url: str,
) -> AsyncIterator[
    tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]]
]:
    aborts = aioabort.App(store_url)
    entered: dict[str, asyncio.Event] = {}
    app = web.Application()
    setup(app, aborts)

    async def slow(request: web.Request) -> web.Response:
        scope = request[SCOPE]
        entered.setdefault(scope.id, asyncio.Event()).set()
        await asyncio.sleep(60)
        return web.json_response({"done": True})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"open": request.app[AIOABORT].is_open})

    async def export(request: web.Request) -> web.StreamResponse:
        rows, seconds = int(request.query["rows"]), float(request.query["seconds"])
        response = web.StreamResponse(headers={"content-type": "text/csv"})
        await response.prepare(request)
        await response.write(b"row,square\n")
        for row in range(rows):
            await asyncio.sleep(seconds)
            await response.write(f"{row},{row * row}\n".encode())
        await response.write_eof()
        return response

    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    app.router.add_get("/export", export)
    async with TestClient(TestServer(app)) as client:
        yield client, aborts, entered
    assert not aborts.is_open  # closed with the server (cleanup_ctx)


async def test_setup_opens_the_app_with_the_server(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
) -> None:
    client, aborts, _ = served
    response = await client.get("/fast")
    assert response.status == 200 and await response.json() == {"open": True}
    request_id = response.headers["X-Request-Id"]
    assert (await aborts.handle(request_id).record()).state is TaskState.SUCCESS


async def test_request_aborted_from_elsewhere(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
    store_url: str,
) -> None:
    client, aborts, entered = served
    request = asyncio.create_task(client.get("/slow", headers={"X-Request-Id": "aio-1"}))
    await asyncio.wait_for(entered.setdefault("aio-1", asyncio.Event()).wait(), 10)
    async with aioabort.App(store_url) as elsewhere:
        assert await elsewhere.handle("aio-1").abort("stop from another App") is True
    response = await asyncio.wait_for(request, 10)
    assert response.status == 499
    body = await response.json()
    assert body["error"] == "aborted" and body["reason"]["message"] == "stop from another App"
    assert (await aborts.handle("aio-1").record()).state is TaskState.ABORTED


@pytest.mark.parametrize("value", ["bad value", "x" * 300])
async def test_bad_request_ids(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
    value: str,
) -> None:
    client, aborts, _ = served
    response = await client.get("/fast", headers={"X-Request-Id": value})
    assert response.status == 400
    assert await aborts.tasks() == []


async def test_an_aborted_stream_looks_cut(
    served: tuple[TestClient[web.Request, web.Application], aioabort.App, dict[str, asyncio.Event]],
) -> None:
    """DESIGN rule 12, on the wire of a real aiohttp server, as under uvicorn: a complete
    export ends with the final chunk; an aborted one never does, and the connection closes."""
    from .conftest import raw_http, read_to_eof

    client, aborts, _ = served
    base = str(client.make_url("/")).rstrip("/")
    reader, writer, data = await raw_http(
        base, "/export?rows=3&seconds=0", {"X-Request-Id": "whole-1", "Connection": "close"}
    )
    whole = data + await read_to_eof(reader)
    writer.close()
    assert b"transfer-encoding: chunked" in whole.lower() and whole.endswith(b"0\r\n\r\n")

    reader, writer, data = await raw_http(
        base, "/export?rows=100000&seconds=0.01", {"X-Request-Id": "cut-1"}, until=b"\n5,25\n"
    )
    assert await aborts.handle("cut-1").abort("stop the export") is True
    cut = data + await read_to_eof(reader)
    writer.close()
    assert b" 200 " in cut.split(b"\r\n", 1)[0] and b"row,square" in cut
    assert not cut.endswith(b"0\r\n\r\n")
    assert (await aborts.handle("cut-1").wait(timeout=20)).state is TaskState.ABORTED
